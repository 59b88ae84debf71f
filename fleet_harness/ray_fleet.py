"""A simulated fleet on a Ray cluster (`sop demo --backend ray`, `sop bench fleet --fleet.backend ray`).

Each child of a fleet run (the learner, every robot daemon) is the same `python -m sop.cli ...` process as
with the local backend, started by a small Ray actor (`ProcessHost`) on whichever node Ray places it: the
learner on the node the harness runs on, robots spread over the cluster's nodes (`SPREAD`), so the fleet's
size is no longer bounded by one machine's cores. The host actor runs the child through
`fleet_harness.processes.FleetProcesses` on its node, so the same guarantees hold there: its own session,
SIGTERM then SIGKILL of its process group on stop, and PR_SET_PDEATHSIG, so a child dies with its host
actor, and the host actor (owned by the harness, Ray's default) with the harness.

`RayFleetProcesses` has `FleetProcesses`'s interface (start, stop_all, dead, tail), which is all the demo
uses. The learner joins the same cluster (`learner_ray_flags`), so with `backend: ray` its trainer workers
run there too.

What a run across machines also needs (not done here): `run_dir` on storage every node mounts (robots
write their episode logs and spools under it), and a learner address and TLS certificate the other nodes
can reach (the demo listens on 127.0.0.1, which is right for several Ray nodes on one machine, as in the
tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet_harness.processes import FleetProcesses, ManagedProcess

log = logging.getLogger(__name__)

LEARNER = "learner"


@dataclass(frozen=True)
class RayFleetConfig:
    """Where the fleet's processes run with `backend: ray`."""

    address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join ('auto', host:6379); null: start one on this machine"},
    )
    num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs of the cluster started here (null: what Ray detects)"}
    )
    # Ray's bookkeeping of CPUs (not a limit): small, so that on one machine the learner's training workers
    # (trainer.num_workers x its ray.cpus_per_train_worker) still fit beside the robots.
    cpus_per_robot: float = field(default=0.25, metadata={"help": "CPUs reserved per robot daemon"})
    cpus_learner: float = field(default=0.25, metadata={"help": "CPUs reserved for the learner process"})

    def __post_init__(self) -> None:
        if self.cpus_per_robot < 0 or self.cpus_learner < 0:
            raise ValueError("ray.cpus_per_robot and ray.cpus_learner must be >= 0")


class ProcessHost:
    """A Ray actor that runs one fleet child on its node and answers for it."""

    def __init__(self, log_dir: str) -> None:
        self.processes = FleetProcesses(Path(log_dir))
        self.child: ManagedProcess | None = None

    def start(self, name: str, args: Sequence[str], env: dict[str, str], niceness: int) -> str:
        import ray

        # The child's niceness is relative to the harness (0), not to this Ray worker (Ray starts its workers
        # at a low priority): back to 0 where allowed, else the child gets what is left of `niceness`.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        niceness = max(0, niceness - os.getpriority(os.PRIO_PROCESS, 0))
        self.child = self.processes.start(name, args, env, niceness)
        return str(ray.util.get_node_ip_address())

    def poll(self) -> int | None:
        return None if self.child is None else self.child.process.poll()

    def tail(self, lines: int) -> str:
        return "" if self.child is None else self.processes.tail(self.child, lines)

    def stop(self, timeout_s: float) -> int | None:
        return None if self.child is None else self.processes.stop(self.child, timeout_s)


class RemoteProcess:
    """The part of `subprocess.Popen` the harness reads (`poll`, `returncode`, `args`), for a child on Ray."""

    def __init__(self, host: Any, args: Sequence[str]) -> None:
        self.host = host
        self.args = list(args)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import ray

        if self.returncode is None:
            try:
                self.returncode = ray.get(self.host.poll.remote(), timeout=30)
            except ray.exceptions.RayActorError:  # the host (and with it the child) is gone: its node died
                self.returncode = -9
        return self.returncode


@dataclass
class RayChild:
    name: str
    process: RemoteProcess
    node_ip: str

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class RayFleetProcesses:
    """`FleetProcesses` for a fleet on Ray: the same calls, children placed on the cluster's nodes."""

    def __init__(self, log_dir: Path, config: RayFleetConfig) -> None:
        import ray

        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.owned = not ray.is_initialized()
        if self.owned:
            options: dict[str, Any] = {"namespace": "sop-fleet", "log_to_driver": False}
            if config.address is None:
                options.update(num_cpus=config.num_cpus, include_dashboard=False)
            else:
                options["address"] = config.address
            ray.init(**options)
        self.address = str(ray.get_runtime_context().gcs_address)
        self.children: list[RayChild] = []

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None, niceness: int = 0
    ) -> RayChild:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if name == LEARNER:  # beside the harness: robots reach it at the address the harness waits on
            strategy: Any = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            )
            cpus = self.config.cpus_learner
        else:
            strategy, cpus = "SPREAD", self.config.cpus_per_robot
        actor: Any = ray.remote(ProcessHost)  # untyped: Ray's stubs do not know the actor's methods
        host = actor.options(num_cpus=cpus, scheduling_strategy=strategy).remote(str(self.log_dir))
        node_ip = str(ray.get(host.start.remote(name, list(args), dict(env or {}), niceness)))
        child = RayChild(name, RemoteProcess(host, args), node_ip)
        self.children.append(child)
        log.info("%s runs on node %s", name, node_ip)
        return child

    def learner_ray_flags(self) -> list[str]:
        """The learner's flags to train on this cluster (`backend: ray`, joining it by address)."""
        return ["--backend", "ray", "--ray.address", self.address]

    def stop(self, child: RayChild, timeout_s: float = 20.0) -> int | None:
        import ray

        try:
            code = ray.get(child.process.host.stop.remote(timeout_s), timeout=timeout_s + 15)
            child.process.returncode = code
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            code = child.process.returncode
        ray.kill(child.process.host)
        return code

    def stop_all(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """Robots first, then the learner (reverse start order); then leave the cluster (stopping it when
        this harness started it)."""
        import ray

        codes = {child.name: self.stop(child, timeout_s) for child in reversed(self.children)}
        if self.owned:
            ray.shutdown()
            self.owned = False
        return codes

    def dead(self) -> list[RayChild]:
        return [c for c in self.children if not c.alive]

    def tail(self, child: RayChild, lines: int = 20) -> str:
        import ray

        try:
            return str(ray.get(child.process.host.tail.remote(lines), timeout=30))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            log_path = self.log_dir / f"{child.name}.log"  # the host is gone; the log may still be here
            try:
                return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                return ""
