"""The robot daemon: one robot, its policy, its operators, its spool, its link to the learner.

    sop robot run --config configs/robot.yaml --learner.address HOST:PORT --robot_id ID --learner.token_file FILE
    sop robot run ... --drain_timeout_s 600       # no robot: upload the spool, exit 0 when empty (3 if not)

Threads: the control loop (fixed rate, its own thread), the spool writer, the uploader, PolicySync (watch
+ fetch/verify/load), fleet membership (register + heartbeats), the operator session, and a metrics
logger. Only the control thread touches the robot and the running policy; everything else reaches it
through a queue (recorder), a slot (new policies) or a lock-protected command state (console).

Python API (what the fleet harness uses):

    daemon = RobotDaemon(config)            # or RobotDaemon(config, robot=..., operator=..., policy_loader=...)
    daemon.start(max_episodes=10)           # returns at once; the control loop runs on its own thread
    daemon.start(run_robot=False)           # spool, uploader and learner link only (draining)
    daemon.wait(timeout_s)                  # until the episodes are done (or the control loop failed)
    daemon.wait_for_uploads(timeout_s)      # until the spool is empty
    daemon.stop()                           # an episode in progress ends as `aborted` and is kept
                                            # (within config.shutdown_grace_s, whatever the learner does)
    summaries = daemon.run(max_episodes=10) # start + wait + stop

    process = spawn_daemon_process(["--config", "configs/robot.yaml", "--robot_id", "r1", ...])

Shutdown is bounded. SIGTERM or SIGINT asks the control loop to end its episode as `aborted`; `stop()`
then asks every thread to stop, closes the channel (which cancels every call in flight, a stuck upload or
a learner that never answers included) and waits for each part only until `shutdown_grace_s` has passed.
Should anything still hang (a robot driver, an operator device, the interpreter's exit), a watchdog that
needs neither the GIL nor the main thread (`faulthandler`) prints every thread's traceback and exits the
process `FORCED_EXIT_MARGIN_S` later. A second signal exits at once. Either way the spool stays
consistent: it is written as a crash-safe store, and an episode left half-written is committed as
`aborted` by the partial-episode recovery at the next start, exactly as after a kill -9.

The policy in control at start is dry-run first (`dry_run.py`): a last good checkpoint that no longer
fits this robot is not run (counted, logged, reported in heartbeats); the daemon falls back to the base
checkpoint, else waits for the learner's, instead of failing at every restart.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robot_client.config import PolicyConfig, RobotConfig
from robot_client.control_loop import ControlLoop, EpisodeSummary
from robot_client.dry_run import DryRunFailed, PolicyCheck
from robot_client.fleet_membership import FleetMembership, client_version
from robot_client.learner_channel import LearnerChannel
from robot_client.metrics import RobotMetrics
from robot_client.operator_session import OperatorSession
from robot_client.operators import OperatorInput, OperatorPanel, RemoteCommands, make_local_operator
from robot_client.policy_sync import (
    LastGoodCheckpoint,
    LoadedPolicy,
    Policy,
    PolicyLoader,
    PolicySlot,
    PolicySync,
    read_checkpoint_blob,
)
from robot_client.recorder import EpisodeRecorder, Spool
from robot_client.robots import Robot, make_robot
from robot_client.uploader import Uploader
from sop.bounded_shutdown import ShutdownSignals
from sop.checkpoint import CheckpointError, read_manifest_from_bytes
from sop.config import parse_config
from sop.hashing import sha256_hex
from sop.safe_logging import client_str
from sop.v1 import fleet_pb2

log = logging.getLogger(__name__)

# After a signal, the process exits at the latest this long after `shutdown_grace_s` (see the docstring).
FORCED_EXIT_MARGIN_S = 5.0
# `sop robot run --drain_timeout_s S`: the spool was not empty when the drain ended.
EXIT_NOT_DRAINED = 3


def make_policy_loader(config: PolicyConfig) -> PolicyLoader:
    """Checkpoint blob -> a ready `sop.policies` policy with the configured sampler (RTI by default)."""

    def load(blob: bytes, expected_sha256: str | None) -> Policy:
        from sop.policies import load_policy

        return load_policy(blob, config.sampler, config.device, expected_sha256)

    return load


class RobotDaemon:
    """See the module docstring. `robot`, `operator` and `policy_loader` override what the config names
    (tests and the fleet harness inject their own); `base_policy` is used when no checkpoint is on disk."""

    def __init__(
        self,
        config: RobotConfig,
        *,
        robot: Robot | None = None,
        operator: OperatorInput | None = None,
        policy_loader: PolicyLoader | None = None,
        base_policy: Policy | None = None,
    ) -> None:
        self.config = config
        self.metrics = RobotMetrics(config.robot_id, window=config.metrics.window)
        self.policy_loader = policy_loader or make_policy_loader(config.policy)
        self._robot = robot
        self._operator = operator
        self._base_policy = base_policy
        self.slot = PolicySlot()
        self.spool: Spool | None = None
        self.recorder: EpisodeRecorder | None = None
        self.link: LearnerChannel | None = None
        self.uploader: Uploader | None = None
        self.policy_sync: PolicySync | None = None
        self.membership: FleetMembership | None = None
        self.session: OperatorSession | None = None
        self.remote: RemoteCommands | None = None
        self.loop: ControlLoop | None = None
        self.recovered: list[str] = []
        self.error: BaseException | None = None
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._control_thread: threading.Thread | None = None
        self._logger_thread: threading.Thread | None = None
        self._started = False
        self.check: PolicyCheck | None = None
        # (version, sha256) of checkpoints refused at start: PolicySync does not fetch them again.
        self._refused_at_start: set[tuple[int, str]] = set()
        # The blob and sha256 the initial policy was loaded from (a spare is built from it).
        self._initial_blob: tuple[bytes, str] | None = None

    # Policies ---------------------------------------------------------------------------------------------

    def _initial_policy(self) -> LoadedPolicy | None:
        """The newest policy on disk that loads and passes its dry run: the last good checkpoint, else the
        base checkpoint, else `base_policy` (the caller's object, not dry-run); None: wait for the learner."""
        base_blob: bytes | None = None
        base_version = -1
        if self.config.policy.base_checkpoint is not None:
            base_blob = read_checkpoint_blob(self.config.policy.base_checkpoint)
            base_version = read_manifest_from_bytes(base_blob, self.config.policy.base_checkpoint).version
        last_good = LastGoodCheckpoint(self.config.policy_dir).load()
        if last_good is not None and last_good[1] >= base_version:
            blob, version, digest = last_good
            try:
                policy = self.policy_loader(blob, digest)
            except (CheckpointError, ValueError, RuntimeError) as exc:
                self.metrics.checkpoints_rejected.labels("last_good_unloadable").inc()
                log.error(
                    "last good checkpoint v%d cannot be loaded (%s); falling back to the base", version, exc
                )
            else:
                if self._passes_dry_run(policy, version, digest, "last good checkpoint"):
                    log.info("running the last good checkpoint v%d from %s", version, self.config.policy_dir)
                    self._initial_blob = (blob, digest)
                    return LoadedPolicy(policy, version, digest, "last_good")
        if base_blob is not None:
            digest = sha256_hex(base_blob)
            policy = self.policy_loader(base_blob, digest)
            if self._passes_dry_run(policy, int(policy.version), digest, "base checkpoint"):
                log.info(
                    "running the base checkpoint v%d (%s)", policy.version, self.config.policy.base_checkpoint
                )
                self._initial_blob = (base_blob, digest)
                return LoadedPolicy(policy, int(policy.version), digest, "base")
        if self._base_policy is not None:
            return LoadedPolicy(
                self._base_policy, int(self._base_policy.version), "", "base", refillable=False
            )
        return None

    def _warm_up_policies(self, initial: LoadedPolicy | None, swaps_expected: bool) -> None:
        """Before the control loop starts: the initial policy does its once-per-network work (tracing), and,
        when checkpoints will arrive, a second copy is built, warmed up and kept as the slot's spare, so
        that every later checkpoint of the same network is loaded into it in place (`load_weights_in_place`)
        and nothing is traced while the robot runs: tracing holds the GIL for up to a few hundred
        milliseconds, long enough to stall the control thread whatever thread it runs on."""
        if initial is None:
            return
        initial.policy.warm_up()
        if not swaps_expected or not initial.refillable or self._initial_blob is None:
            return
        blob, digest = self._initial_blob
        try:
            spare = self.policy_loader(blob, digest)
            spare.warm_up()
        except Exception as exc:  # an optimisation: without a spare the first checkpoint is built afresh
            log.warning("no warmed-up spare policy: %s: %s", type(exc).__name__, client_str(exc, 200))
            return
        self.slot.retire(spare)

    def _passes_dry_run(self, policy: Policy, version: int, digest: str, what: str) -> bool:
        """True unless the dry run refuses the policy (then counted, logged and remembered as refused)."""
        assert self.check is not None
        try:
            self.check.run(policy, f"{what} v{version}")
        except DryRunFailed as exc:
            self.metrics.checkpoints_rejected.labels(f"dry_run_{exc.reason}").inc()
            self.metrics.last_rejected_checkpoint_version.set(version)
            self._refused_at_start.add((version, digest))
            log.error(
                "%s v%d failed its dry run on this robot (%s: %s); not running it. Falling back to "
                "the base checkpoint if there is one, else to the learner's next checkpoint",
                what,
                version,
                exc.reason,
                exc,
            )
            return False
        return True

    @property
    def policy_version(self) -> int:
        return self.loop.policy_version if self.loop is not None else 0

    def _wanted_version(self) -> int:
        return max(self.policy_version, self.slot.pending_version or 0)

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self, max_episodes: int | None = None, *, run_robot: bool = True) -> None:
        """Bring everything up and start the control loop on its own thread; returns at once. With
        `run_robot=False` only the spool, the uploader and the learner link run (draining the spool)."""
        if self._started:
            raise RuntimeError("RobotDaemon.start() called twice; make a new daemon to run again")
        self._started = True
        config = self.config
        sys.setswitchinterval(config.control.gil_switch_interval_s)
        config.robot_dir.mkdir(parents=True, exist_ok=True)

        self.spool = Spool(config.spool_dir, config.quarantine_dir, config.spool, self.metrics)
        self.recovered = self.spool.recover_partials()
        robot = self._robot if self._robot is not None else make_robot(config.robot, config.control)
        self._robot = robot
        self.check = PolicyCheck(
            robot.action_dim,
            config.policy.dry_run_timeout_s,
            config.policy_dir,
            lambda: self.loop.latest_observation if self.loop is not None else None,
            self.spool,
        )
        initial = self._initial_policy()
        self._warm_up_policies(initial, swaps_expected=config.learner.address is not None)

        if config.learner.address is not None:
            self.link = LearnerChannel(config.learner, config.robot_id)
            self.uploader = Uploader(config, self.link, self.spool, self.metrics)
            self.membership = FleetMembership(
                config, self.link, self.metrics, self._capabilities(robot), lambda: self.policy_version
            )
            self.uploader.limits = self.membership.limits
            self.policy_sync = PolicySync(
                config,
                self.link,
                self.policy_loader,
                self.slot,
                self.metrics,
                self._wanted_version,
                check=self.check,
            )
            self.policy_sync.rejected |= self._refused_at_start
            if config.operator.remote:
                self.remote = RemoteCommands(config.operator.teleop_timeout_s)
                self.session = OperatorSession(config, self.link, self.remote, self.metrics)
        else:
            log.warning("learner.address is not set: running offline, episodes stay in %s", config.spool_dir)

        self.recorder = EpisodeRecorder(
            self.spool,
            config.spool,
            self.metrics,
            on_committed=self.uploader.wake if self.uploader is not None else (lambda episode_id: None),
            busy=self.uploader.busy if self.uploader is not None else set,
            wait_when_full=config.control.free_running,  # no deadline to keep: never drop a step
        )
        local = self._operator
        if local is None:
            local = make_local_operator(config.operator, config.robot, robot)
        # Frames the local input drives are attributed to `local:<kind>` (the console's to its user).
        local_id = f"local:{config.operator.type}" if self._operator is None else "local"
        self.loop = ControlLoop(
            config,
            robot,
            OperatorPanel(local, self.remote, local_id),
            self.recorder,
            self.slot,
            self.metrics,
            initial,
            telemetry=self.session.publish if self.session is not None else None,
        )

        self.recorder.start()
        for part in (self.uploader, self.membership, self.policy_sync, self.session):
            if part is not None:
                part.start()
        if config.metrics.http_port is not None:
            self.metrics_port = self.metrics.serve_http(config.metrics.http_port, config.metrics.http_host)
            log.info(
                "Prometheus metrics on http://%s:%d/metrics", config.metrics.http_host, self.metrics_port
            )
        if config.metrics.log_interval_s > 0:
            self._logger_thread = threading.Thread(
                target=self._log_metrics, name=f"{config.robot_id}-metrics", daemon=True
            )
            self._logger_thread.start()
        if not run_robot:
            return
        episodes = config.control.max_episodes if max_episodes is None else max_episodes
        self._control_thread = threading.Thread(
            target=self._control, args=(episodes,), name=f"{config.robot_id}-control", daemon=True
        )
        self._control_thread.start()

    def _capabilities(self, robot: Robot) -> fleet_pb2.RobotCapabilities:
        return fleet_pb2.RobotCapabilities(
            tasks=[robot.task],
            state_dim=robot.state_dim,
            action_dim=robot.action_dim,
            cameras=list(robot.cameras),
            client_version=client_version(),
        )

    def _control(self, max_episodes: int) -> None:
        assert self.loop is not None
        try:
            self.loop.run(self._stop, max_episodes)
        except BaseException as exc:  # reported by wait()/run(); the daemon must not die silently
            self.error = exc
            log.exception("control loop failed")

    def _log_metrics(self) -> None:
        while not self._stop.wait(self.config.metrics.log_interval_s):
            log.info("%s | %s", self.config.robot_id, self.metrics.snapshot().log_line())

    def request_stop(self) -> None:
        """Ask the control loop to end (signal handlers call this); `stop()` does the rest."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the control loop to finish its episodes; True when it has."""
        if self._control_thread is None:
            return True
        self._control_thread.join(timeout_s)
        return not self._control_thread.is_alive()

    def wait_for_uploads(self, timeout_s: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every recorded episode has been committed by the learner (or quarantined); gives up
        after `timeout_s` or once `until()` holds."""
        deadline = time.monotonic() + timeout_s
        if self.recorder is not None:
            self.recorder.drain(timeout_s)
        while time.monotonic() < deadline and not until():
            if self.spool is not None and not self.spool.pending():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop everything within `timeout_s` (default `shutdown_grace_s`). An episode in progress ends as
        `aborted` and stays in the spool for upload; a part that does not stop in time is left behind (its
        thread is a daemon thread) and logged, and the robot and the metrics endpoint are closed anyway."""
        grace = self.config.shutdown_grace_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self._stop.set()
        network = [
            p for p in (self.session, self.policy_sync, self.membership, self.uploader) if p is not None
        ]
        for part in network:  # flags set and streams cancelled first; nobody waits on anybody yet
            part.stop(0.0)
        settle = time.monotonic() + min(0.5, left())
        for part in network:  # a thread that is not inside a call ends now, before the channel goes
            part.stop(max(0.0, settle - time.monotonic()))
        if self.link is not None:
            self.link.close()  # cancels every call still in flight: a unary call to a silent learner
        if not self.wait(left()):
            log.error("the control loop did not end within %.1f s (robot or policy stuck)", grace)
        if self.recorder is not None and not self.recorder.stop(left()):
            log.error(
                "the spool writer did not finish within %.1f s; the episode stays partial and is "
                "recovered at the next start",
                grace,
            )
        for part in network:
            part.stop(left())
        prefix = f"{self.config.robot_id}-"
        stuck = sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive())
        stuck = [name for name in stuck if name != f"{prefix}metrics"]
        if stuck:
            log.warning("left behind after %.1f s of shutdown: %s", grace, ", ".join(stuck))
        if self._logger_thread is not None:
            self._logger_thread.join(min(1.0, left()))
        if self.loop is not None:
            self.loop.panel.close()
        if self._robot is not None:
            self._robot.close()
        self.metrics.close()

    def run(self, max_episodes: int | None = None) -> list[EpisodeSummary]:
        """start + wait + stop; raises what made the control loop fail."""
        self.start(max_episodes)
        try:
            self.wait()
        finally:
            self.stop()
        if self.error is not None:
            raise self.error
        return self.summaries

    @property
    def summaries(self) -> list[EpisodeSummary]:
        return self.loop.summaries if self.loop is not None else []


def main(argv: list[str] | None = None) -> int:
    config = parse_config(RobotConfig, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import torch

    torch.set_num_threads(config.policy.num_threads)
    daemon = RobotDaemon(config)
    signals = ShutdownSignals(daemon.request_stop, config.shutdown_grace_s + FORCED_EXIT_MARGIN_S)
    signals.install()
    drained = True
    try:
        if config.drain_timeout_s > 0:
            daemon.start(run_robot=False)
            drained = daemon.wait_for_uploads(config.drain_timeout_s, until=lambda: daemon.stop_requested)
            log.info("drain: the spool is %s", "empty" if drained else "not empty (stopped or timed out)")
        else:
            daemon.start()
            while not daemon.wait(0.5) and not daemon.stop_requested:
                pass
    except OSError as exc:  # the one port the daemon listens on; the front door prints this as one line
        if exc.errno != errno.EADDRINUSE or config.metrics.http_port is None:
            raise
        raise OSError(
            errno.EADDRINUSE,
            f"metrics.http_port {config.metrics.http_port} is in use; stop that process or pass another "
            "--metrics.http_port",
        ) from None
    finally:
        stopping = time.monotonic()
        daemon.stop()
        signals.uninstall()
        log.info("stopped in %.2f s", time.monotonic() - stopping)
    if daemon.error is not None:
        log.error("robot daemon failed: %s", daemon.error)
        return 1
    return 0 if drained else EXIT_NOT_DRAINED


def spawn_daemon_process(
    args: Sequence[str], env: dict[str, str] | None = None, log_file: str | Path | None = None
) -> subprocess.Popen[bytes]:
    """Run `sop robot run ARGS` as a child process (the fleet harness, the crash-recovery test)."""
    environment = dict(os.environ if env is None else env)
    environment.setdefault("OMP_NUM_THREADS", "1")
    output: Any = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "robot_client.daemon", *args],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_file is not None:
            output.close()


if __name__ == "__main__":
    sys.exit(main())
