"""Fleet membership: `Register` (retried with back-off until the learner answers) and periodic
`Heartbeat`s carrying the robot's health figures.

The robot never waits for this before it runs: a learner that is down at start only delays the upload of
the spool. Until registration succeeds the uploader uses the protocol's default limits.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable

import grpc

from robot_client.config import RobotConfig
from robot_client.learner_channel import Backoff, LearnerChannel, rpc_code, rpc_details
from robot_client.metrics import RobotMetrics
from robot_client.uploader import LearnerLimits
from sop.v1 import fleet_pb2

log = logging.getLogger(__name__)


class FleetMembership:
    def __init__(
        self,
        config: RobotConfig,
        link: LearnerChannel,
        metrics: RobotMetrics,
        capabilities: fleet_pb2.RobotCapabilities,
        policy_version: Callable[[], int],
    ) -> None:
        self.config = config
        self.link = link
        self.metrics = metrics
        self.capabilities = capabilities
        self.policy_version = policy_version
        self.session_id = ""
        self.heartbeat_interval_s = config.metrics.heartbeat_interval_s or 5.0
        self.latest_policy_version = 0
        self.registered = threading.Event()
        self._limits = LearnerLimits()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def limits(self) -> LearnerLimits:
        return self._limits

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.config.robot_id}-fleet", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():  # else a later stop() (the daemon's second pass) waits again
                self._thread = None

    def register(self) -> None:
        response = self.link.unary(
            self.link.fleet.Register,
            fleet_pb2.RegisterRequest(robot_id=self.config.robot_id, capabilities=self.capabilities),
        )
        self.session_id = response.session_id
        self.latest_policy_version = int(response.current_policy_version)
        max_chunk = int(response.max_chunk_bytes) or LearnerLimits.max_chunk_bytes
        max_episode = int(response.max_episode_bytes) or LearnerLimits.max_episode_bytes
        self._limits = LearnerLimits(max_chunk_bytes=min(max_chunk, 1 << 20), max_episode_bytes=max_episode)
        if self.config.metrics.heartbeat_interval_s is None and response.heartbeat_interval_s > 0:
            self.heartbeat_interval_s = float(response.heartbeat_interval_s)
        self.registered.set()
        self.metrics.learner_connected.set(1)
        log.info(
            "registered with the learner at %s (session %s, latest policy v%d)",
            self.config.learner.address,
            self.session_id,
            self.latest_policy_version,
        )

    def heartbeat(self) -> None:
        snapshot = self.metrics.heartbeat_figures()
        response = self.link.unary(
            self.link.fleet.Heartbeat,
            fleet_pb2.HeartbeatRequest(
                robot_id=self.config.robot_id,
                session_id=self.session_id,
                policy_version=self.policy_version(),
                spool_depth=int(snapshot.get("spool_depth", 0)),
                metrics=snapshot,
            ),
        )
        self.latest_policy_version = int(response.latest_policy_version)

    def _run(self) -> None:
        backoff = Backoff(self.config.learner.reconnect_initial_s, self.config.learner.reconnect_max_s)
        while not self._stop.is_set():
            try:
                if not self.registered.is_set():
                    self.register()
                    backoff.reset()
                self._stop.wait(self.heartbeat_interval_s)
                if self._stop.is_set():
                    return
                self.heartbeat()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return  # the daemon is stopping and closed the channel under this call
                code = rpc_code(exc)
                rpc = "Heartbeat" if self.registered.is_set() else "Register"
                self.metrics.rpc_errors.labels(rpc, code.name).inc()
                self.metrics.learner_connected.set(0)
                # The learner may have restarted and lost our session: register again.
                self.registered.clear()
                delay = backoff.next_delay()
                # Refusals a retry will not cure (wrong credentials, a robot that does not fit the learner's
                # policy) are errors for the person who configured this robot; the rest are transient.
                level = logging.ERROR if code in REFUSALS_NEEDING_A_PERSON else logging.WARNING
                log.log(
                    level, "%s failed (%s: %s); retrying in %.1f s", rpc, code.name, rpc_details(exc), delay
                )
                self._stop.wait(delay)


REFUSALS_NEEDING_A_PERSON = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def client_version() -> str:
    """The installed SOP version, sent in RobotCapabilities for the learner's compatibility checks."""
    try:
        return importlib.metadata.version("sop")
    except importlib.metadata.PackageNotFoundError:
        return "0"
