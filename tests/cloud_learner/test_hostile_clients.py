"""A real `sop learner serve` process against a robot with a valid token that behaves as an attacker would.

Each scenario checks four things: the bad call is refused with a status and a message that names the
problem; the learner process is still alive; other robots' calls are answered within their deadline; and
nothing is written outside the learner's run directory. The learner trains (a tiny base policy), so a
scenario that would stop the trainer shows up as a dead trainer thread or a refused restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from learner_fixtures import ROBOTS, HeldStream, auth, chunks_of, wait_for, write_base_checkpoint

from sop.credentials import TokenRegistry
from sop.data.codec import encode_episode
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import split_into_chunks
from sop.episode import IMAGE_PREFIX, STATE, Episode, Source
from sop.v1 import fleet_pb2, fleet_pb2_grpc, operator_pb2, operator_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 1.0


class LearnerProcess:
    """`python -m sop.cli learner serve` with its stderr in a file (the log a hostile string must not forge)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.config_path = root / "learner.yaml"
        self.log_path = root / "learner.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        endpoint = self.run_dir / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sop.cli", "learner", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        log.close()
        deadline = time.monotonic() + 90
        while not endpoint.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"learner exited at start:\n{self.log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError("learner did not start in 90 s")
            time.sleep(0.05)
        self.address = json.loads(endpoint.read_text())["address"]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"learner did not exit within {timeout_s} s of SIGTERM") from None
        return time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def base_episodes() -> list[Episode]:
    return [make_episode(40, seed=seed, cameras=(), source=Source.OFFLINE) for seed in range(3)]


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LearnerProcess]:
    root = tmp_path_factory.mktemp("hostile")
    registry = TokenRegistry({})
    for robot_id, token in ROBOTS.items():
        registry.add(robot_id, token)
    registry.write(root / "token_hashes.json")
    base = write_base_checkpoint(root / "base", base_episodes())
    demos = EpisodeStore(root / "demos")
    for episode in base_episodes():
        demos.append(episode)
    process = LearnerProcess(root)
    process.config_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(process.run_dir),
                "log_level": "INFO",
                "server": {
                    "address": "127.0.0.1:0",
                    "shutdown_grace_s": GRACE_S,
                    "max_workers": 64,
                    "watch_check_interval_s": 0.2,
                },
                "auth": {"token_hashes_file": str(root / "token_hashes.json")},
                "replay": {"offline_stores": [str(root / "demos")]},
                "trainer": {
                    "base_checkpoint": str(base),
                    "batch_size": 8,
                    "publish_every_steps": 1000,
                    "idle_sleep_s": 0.2,
                },
            }
        )
    )
    process.start()
    yield process
    if process.alive():
        process.stop()


@pytest.fixture
def fleet(learner: LearnerProcess) -> Iterator[fleet_pb2_grpc.FleetStub]:
    channel = grpc.insecure_channel(learner.address)
    yield fleet_pb2_grpc.FleetStub(channel)
    channel.close()


def hostile_chunks(episode: Episode) -> list[fleet_pb2.EpisodeChunk]:
    """Chunks of `episode` serialized without the robot-side schema check (what a hostile client sends)."""
    return split_into_chunks(episode.episode_id, encode_episode(episode, validate=False), 1 << 20)


def upload_error(
    stub: fleet_pb2_grpc.FleetStub, episode: Episode, robot_id: str = "robot-1"
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        stub.UploadEpisode(iter(hostile_chunks(episode)), metadata=auth(robot_id), timeout=20)
    return raised.value


def others_are_served(learner: LearnerProcess, stub: fleet_pb2_grpc.FleetStub) -> None:
    assert learner.alive(), learner.log()[-4000:]
    response = stub.Heartbeat(
        fleet_pb2.HeartbeatRequest(robot_id="robot-2"), metadata=auth("robot-2"), timeout=5
    )
    assert response.server_time > 0
    good = make_episode(20, seed=int(time.time() * 1000) % 100_000, robot_id="robot-2", cameras=())
    assert stub.UploadEpisode(iter(chunks_of(good)), metadata=auth("robot-2"), timeout=20).committed


def files_outside(root: Path, run_dir: Path) -> list[Path]:
    """Files under `root` that the learner may not have written (anything outside run_dir and the inputs)."""
    allowed = {run_dir, root / "demos", root / "base"}
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(path.is_relative_to(a) for a in allowed)
        and path.name not in ("learner.yaml", "learner.log", "token_hashes.json")
    ]


@pytest.mark.parametrize(
    "camera",
    ["x/../../../../outside", "../episodes/zz", "..", "a b", "x\ny", "\u202eevil", "c" * 65],
)
def test_camera_names_that_could_become_paths_are_refused(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub, camera: str
) -> None:
    episode = make_episode(10, seed=1, cameras=("top",))
    episode.steps[IMAGE_PREFIX + camera] = episode.steps.pop(IMAGE_PREFIX + "top")
    error = upload_error(fleet, episode)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "observation.images" in (error.details() or "")
    assert episode.episode_id not in EpisodeStore(learner.run_dir / "replay", create=False)
    assert files_outside(learner.root, learner.run_dir) == []
    others_are_served(learner, fleet)


def test_an_episode_that_does_not_fit_the_policy_is_refused_naming_key_and_shapes(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub
) -> None:
    episode = make_episode(10, seed=2, state_dim=5, cameras=())
    error = upload_error(fleet, episode)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert STATE in details and "39" in details and "5" in details
    others_are_served(learner, fleet)


def test_a_made_up_task_is_refused(learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub) -> None:
    error = upload_error(fleet, make_episode(10, seed=3, task="my-own-task-v9", cameras=()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task" in (error.details() or "")
    others_are_served(learner, fleet)


def test_a_robot_cannot_upload_demonstrations(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub
) -> None:
    episode = make_episode(10, seed=4, cameras=(), source=Source.OFFLINE)
    error = upload_error(fleet, episode)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "demonstrator" in (error.details() or "")
    others_are_served(learner, fleet)


def test_register_refuses_a_robot_that_does_not_fit_and_names_why(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub
) -> None:
    def register(**capabilities: object) -> grpc.RpcError:
        request = fleet_pb2.RegisterRequest(
            robot_id="robot-1", capabilities=fleet_pb2.RobotCapabilities(**capabilities)
        )
        with pytest.raises(grpc.RpcError) as raised:
            fleet.Register(request, metadata=auth(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        return raised.value

    assert "state_dim" in (register(tasks=["reach-v3"], state_dim=5, action_dim=4).details() or "")
    assert "action_dim" in (register(tasks=["reach-v3"], state_dim=39, action_dim=7).details() or "")
    assert "tasks" in (register(tasks=["no-such-task"], state_dim=39, action_dim=4).details() or "")
    forged = "reach-v3\n2026-01-01 00:00:00 ERROR FORGED log line"
    details = register(tasks=[forged], state_dim=39, action_dim=4).details() or ""
    assert "\n" not in details
    ok = fleet.Register(
        fleet_pb2.RegisterRequest(
            robot_id="robot-1",
            capabilities=fleet_pb2.RobotCapabilities(tasks=["reach-v3"], state_dim=39, action_dim=4),
        ),
        metadata=auth(),
        timeout=5,
    )
    assert ok.session_id
    assert not any(line.startswith("2026-01-01 00:00:00 ERROR FORGED") for line in learner.log().splitlines())


def test_a_flood_of_watch_streams_is_capped_and_others_keep_their_deadlines(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub
) -> None:
    channel = grpc.insecure_channel(learner.address)
    flood_stub = fleet_pb2_grpc.FleetStub(channel)
    calls = [
        flood_stub.WatchPolicy(fleet_pb2.WatchPolicyRequest(), metadata=auth("robot-3"), timeout=60)
        for _ in range(300)
    ]
    refused: list[str] = []
    held = 0

    def drain(call: grpc.Call) -> None:
        nonlocal held
        try:
            next(iter(call))  # type: ignore[call-overload]
            held += 1
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused.append(error.details() or "")

    threads = [threading.Thread(target=drain, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: held + len(refused) >= 300, timeout=60)
        assert held <= 2, f"robot-3 holds {held} watch streams"
        assert refused and "server.stream_limits.watch" in refused[0]
        # Another robot is served at once: its unary calls, and its own watch stream.
        others_are_served(learner, fleet)
        watch = fleet.WatchPolicy(fleet_pb2.WatchPolicyRequest(), metadata=auth("robot-2"), timeout=10)
        assert next(iter(watch)).version >= 1  # type: ignore[call-overload]
        watch.cancel()
    finally:
        for call in calls:
            call.cancel()
        channel.close()


def test_control_characters_in_client_strings_never_reach_the_log_raw(
    learner: LearnerProcess, fleet: fleet_pb2_grpc.FleetStub
) -> None:
    episode = make_episode(10, seed=5, cameras=(), task="reach-v3\n1999-01-01 INFO FORGED\u202e")
    upload_error(fleet, episode)
    log = learner.log()
    assert "\u202e" not in log
    assert not any(line.startswith("1999-01-01 INFO FORGED") for line in log.splitlines())


def test_a_bad_episode_already_in_the_replay_is_quarantined_and_the_learner_restarts(
    learner: LearnerProcess,
) -> None:
    """What an older learner let in (5-dim state, unknown task) must not stop training or the restart."""
    learner.stop()
    replay = EpisodeStore(learner.run_dir / "replay", create=False)
    misfits = [
        make_episode(30, seed=6, state_dim=5, cameras=(), intervention=np.ones(30, bool)),
        make_episode(30, seed=7, task="unknown-task-v1", cameras=(), intervention=np.ones(30, bool)),
    ]
    for episode in misfits:
        replay.append(episode)
    learner.start()
    channel = grpc.insecure_channel(learner.address)  # the restarted learner listens on a new port
    stub = fleet_pb2_grpc.FleetStub(channel)
    others_are_served(learner, stub)
    wait_for(lambda: all(e.episode_id not in _store(learner) for e in misfits), timeout=60)
    assert (learner.run_dir / "replay" / "quarantine").is_dir()
    others_are_served(learner, stub)
    channel.close()


def _store(learner: LearnerProcess) -> EpisodeStore:
    return EpisodeStore(learner.run_dir / "replay", create=False)


def test_sigterm_ends_the_learner_within_its_bound_after_a_burst_of_abandoned_calls(
    learner: LearnerProcess,
) -> None:
    channel = grpc.insecure_channel(learner.address)
    stub = fleet_pb2_grpc.FleetStub(channel)
    operator = operator_pb2_grpc.OperatorStub(channel)
    held_streams: list[HeldStream] = []
    calls: list[grpc.Future] = []
    for index, robot_id in enumerate(("robot-1", "robot-2", "robot-3", "robot-4")):
        calls.append(stub.WatchPolicy(fleet_pb2.WatchPolicyRequest(), metadata=auth(robot_id), timeout=120))
        telemetry = HeldStream([operator_pb2.RobotTelemetry(robot_id=robot_id)])
        held_streams.append(telemetry)
        calls.append(operator.Session(iter(telemetry), metadata=auth(robot_id), timeout=120))
        half = HeldStream(chunks_of(make_episode(200, seed=50 + index, robot_id=robot_id), 64 * 1024)[:1])
        held_streams.append(half)
        calls.append(stub.UploadEpisode.future(iter(half), metadata=auth(robot_id), timeout=120))
    wait_for(lambda: all(h.sent.is_set() for h in held_streams), timeout=20)
    took = learner.stop(timeout_s=GRACE_S + 10 + 20)
    for stream in held_streams:
        stream.release.set()
    channel.close()
    assert took <= GRACE_S + 10, f"learner took {took:.1f} s to exit after SIGTERM"
    # ...and it restarts on the same run directory.
    learner.start()


BLOCKED_STOP = textwrap.dedent(
    """
    import logging, sys, threading
    from sop.bounded_shutdown import ShutdownSignals

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # A worker that never returns (keeps the interpreter from exiting), and a stop request nobody acts on.
    threading.Thread(target=threading.Event().wait, name="stuck-worker").start()
    signals = ShutdownSignals(lambda: None, bound_s=float(sys.argv[1]))
    signals.install()
    print("ready", flush=True)
    threading.Event().wait()
    """
)


def _blocked_process() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_STOP, "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


def test_a_stop_that_never_finishes_still_ends_the_process_at_the_deadline() -> None:
    """The bound does not depend on luck: here nothing stops, deterministically."""
    process = _blocked_process()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(20)
    took = time.monotonic() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert 1.5 <= took <= 6, f"exited after {took:.1f} s with a 2 s bound"
    assert code == 1
    assert "forced exit in 2 s" in stderr and "most recent call first" in stderr  # what was stuck


def test_a_second_signal_ends_the_process_at_once() -> None:
    process = _blocked_process()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(20)
    assert time.monotonic() - started < 1.5
    assert code == 128 + signal.SIGINT
