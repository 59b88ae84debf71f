"""Bounded shutdown of `sop robot run`, as a real process: SIGTERM ends it within `shutdown_grace_s` + 10 s
against a learner that never answers (a socket that accepts and stays silent; a gRPC learner on which
registration, the upload, the operator session and the policy watch all hang), even when the robot's
driver hangs on release; a second signal ends it at once; the spool stays consistent (what was recorded
is there, or recoverable by the partial-episode recovery)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_learner import HangingLearner, SilentLearner
from robot_fakes import write_tiny_diffusion_checkpoint

from robot_client.config import RobotConfig
from robot_client.daemon import spawn_daemon_process
from robot_client.metrics import RobotMetrics
from robot_client.recorder import Spool
from sop.data.episode_store import MARKER_FILE, EpisodeStore
from sop.episode import Outcome

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow  # a real daemon process each (a few seconds of start-up)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_diffusion_checkpoint(tmp_path_factory.mktemp("checkpoint") / "v1", version=1)


Learner = SilentLearner | HangingLearner


@pytest.fixture
def silent_learner() -> Iterator[SilentLearner]:
    server = SilentLearner()
    yield server
    server.close()


@pytest.fixture
def hanging_learner() -> Iterator[HangingLearner]:
    server = HangingLearner()
    yield server
    server.close()


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, f"the daemon exited early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting; daemon log:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def start_daemon(
    tmp_path: Path, checkpoint: Path, learner: Learner, robot_factory: str, grace_s: float
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    log = tmp_path / "daemon.log"
    closing = tmp_path / "closing"
    env = {
        **os.environ,
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SOP_TEST_CLOSING": str(closing),
    }
    args = [
        "--config",
        "configs/robot.yaml",
        "--robot_id",
        "robot-1",
        "--data_dir",
        str(tmp_path),
        "--learner.address",
        learner.address,
        # Deadlines far beyond the bound: only the shutdown itself may end these calls.
        "--learner.rpc_timeout_s",
        "300",
        "--learner.upload_timeout_s",
        "300",
        "--learner.fetch_timeout_s",
        "300",
        "--robot.type",
        "factory",
        "--robot.factory",
        robot_factory,
        "--policy.base_checkpoint",
        str(checkpoint),
        "--control.rate_hz",
        "100",
        "--control.max_episode_steps",
        "30",
        "--spool.flush_every_steps",
        "5",
        "--metrics.log_interval_s",
        "0",
        "--shutdown_grace_s",
        str(grace_s),
    ]
    process = spawn_daemon_process(args, env=env, log_file=log)
    spool_dir = RobotConfig(robot_id="robot-1", data_dir=str(tmp_path)).spool_dir

    def recorded_an_episode() -> bool:
        # An episode committed to the spool (so an upload to the silent learner is hanging) and the next
        # one being recorded.
        if not (spool_dir / MARKER_FILE).exists():
            return False
        store = EpisodeStore(spool_dir, create=False)
        return len(store) >= 1 and any(p.num_steps_flushed >= 5 for p in store.partial_episodes())

    wait_until(recorded_an_episode, 60, process, log)
    return process, log, closing


def spool_episodes(tmp_path: Path) -> list[tuple[Outcome, int]]:
    """(outcome, steps) of every episode in the spool after a restart's partial-episode recovery."""
    config = RobotConfig(robot_id="robot-1", data_dir=str(tmp_path))
    spool = Spool(config.spool_dir, config.quarantine_dir, config.spool, RobotMetrics("check"))
    spool.recover_partials()
    return [(info.outcome, info.num_steps) for info in spool.pending()]


def sigterm_within_grace(
    tmp_path: Path, checkpoint: Path, learner: Learner, ready: Callable[[], bool]
) -> None:
    grace = 3.0
    process, log, _ = start_daemon(tmp_path, checkpoint, learner, "robot_fakes:make_fake_robot", grace)
    wait_until(ready, 30, process, log)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        returncode = process.wait(grace + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"SIGTERM took more than {grace + 10} s:\n{log.read_text()[-3000:]}")
    elapsed = time.monotonic() - sent
    text = log.read_text()
    assert returncode == 0, text[-3000:]  # an orderly stop, not the watchdog
    assert elapsed < grace + 10
    # The stop itself took less than its grace: closing the channel cancelled every stuck call and none
    # waited out a deadline (grace + 10 s bounds what cannot be cancelled: see the stuck-robot test).
    stopped = re.search(r"stopped in (\d+\.\d+) s", text)
    assert stopped is not None and float(stopped.group(1)) < grace, text[-3000:]
    episodes = spool_episodes(tmp_path)
    # The committed episode(s), and the one in progress ended as aborted (nothing left half-written).
    assert episodes[-1][0] is Outcome.ABORTED and episodes[-1][1] >= 5
    assert all(outcome is not Outcome.ABORTED for outcome, _ in episodes[:-1])
    assert all(steps == 30 for _, steps in episodes[:-1])


def test_sigterm_ends_the_daemon_within_its_grace_against_a_silent_socket(
    tmp_path: Path, checkpoint: Path, silent_learner: SilentLearner
) -> None:
    sigterm_within_grace(tmp_path, checkpoint, silent_learner, lambda: bool(silent_learner.connections))


def test_sigterm_ends_the_daemon_within_its_grace_while_every_call_hangs(
    tmp_path: Path, checkpoint: Path, hanging_learner: HangingLearner
) -> None:
    stuck = {"Register", "UploadEpisode", "Session", "WatchPolicy"}
    sigterm_within_grace(tmp_path, checkpoint, hanging_learner, lambda: stuck <= set(hanging_learner.calls))


def test_a_robot_stuck_on_release_cannot_hold_the_process_past_its_bound(
    tmp_path: Path, checkpoint: Path, silent_learner: SilentLearner
) -> None:
    grace = 2.0
    process, log, closing = start_daemon(
        tmp_path, checkpoint, silent_learner, "robot_fakes:make_stuck_robot", grace
    )
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        returncode = process.wait(grace + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"SIGTERM took more than {grace + 10} s:\n{log.read_text()[-3000:]}")
    assert time.monotonic() - sent < grace + 10
    assert closing.exists(), "the robot's close() was never reached"
    assert returncode == 1  # the watchdog's forced exit
    text = log.read_text()
    assert "Timeout" in text and "close" in text  # the stuck thread's traceback says where it hung
    outcomes = [outcome for outcome, _ in spool_episodes(tmp_path)]
    assert outcomes and outcomes[-1] is Outcome.ABORTED


def test_a_second_signal_ends_the_daemon_at_once(
    tmp_path: Path, checkpoint: Path, silent_learner: SilentLearner
) -> None:
    grace = 120.0  # the first signal alone would wait two minutes for the stuck robot
    process, log, closing = start_daemon(
        tmp_path, checkpoint, silent_learner, "robot_fakes:make_stuck_robot", grace
    )
    process.send_signal(signal.SIGTERM)
    wait_until(closing.exists, 30, process, log)  # shutdown has reached the robot, which hangs there
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        returncode = process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"a second signal did not end the daemon:\n{log.read_text()[-3000:]}")
    assert returncode == 128 + signal.SIGINT
    assert time.monotonic() - sent < 5
    outcomes = [outcome for outcome, _ in spool_episodes(tmp_path)]
    assert outcomes and outcomes[-1] is Outcome.ABORTED
