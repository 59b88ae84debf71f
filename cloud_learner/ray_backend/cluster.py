"""Joining the Ray cluster the learner's actors run on (`ray.address`), or starting one on this machine.

The learner process is the Ray driver: the actors it creates are owned by it, so they end when the learner
ends (or when its connection to the cluster does), whichever cluster they run on. A cluster the learner
started itself (`ray.address: null`) is stopped with it; one it joined is left running.
"""

from __future__ import annotations

import logging
from typing import Any

from cloud_learner.config import RayConfig

logger = logging.getLogger(__name__)


class RayConnection:
    """This process's connection to a Ray cluster; `close()` undoes what `open()` did, nothing more."""

    def __init__(self, owned: bool) -> None:
        self.owned = owned

    @classmethod
    def open(cls, config: RayConfig) -> RayConnection:
        """Join `config.address`, or start a local cluster; reuse a connection the caller already made
        (a test's cluster, a notebook) and leave it open on close."""
        import ray

        if ray.is_initialized():
            return cls(owned=False)
        options: dict[str, Any] = {"namespace": config.namespace, "log_to_driver": True}
        if config.address is None:
            options.update(num_cpus=config.num_cpus, num_gpus=config.num_gpus, include_dashboard=False)
        else:
            options["address"] = config.address
        try:
            context = ray.init(**options)
        except ConnectionError as exc:
            raise ConnectionError(
                f"cannot join the Ray cluster at ray.address {config.address!r} ({exc}): start it "
                "(`ray start --head`), fix the address, or set ray.address: null to start one here"
            ) from exc
        logger.info(
            "ray: %s cluster %s (%s)",
            "joined" if config.address else "started a local",
            getattr(context, "address_info", {}).get("address", "?"),
            ray.cluster_resources(),
        )
        return cls(owned=True)

    def close(self) -> None:
        if not self.owned:
            return
        import ray

        ray.shutdown()
        self.owned = False
