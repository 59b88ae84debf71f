"""kill -9 of a real `sop learner serve` process mid-upload, then a restart: nothing committed is lost,
nothing is committed twice, and robots finish their uploads by resuming or re-sending."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from learner_fixtures import HeldStream, auth, chunks_of

from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import Episode
from sop.v1 import fleet_pb2, fleet_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def start_learner_process(config_path: Path, run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    endpoint = run_dir / "endpoint.json"
    endpoint.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "sop.cli", "learner", "serve", "--config", str(config_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"learner exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("learner did not start in 60 s")
        time.sleep(0.05)
    return process, json.loads(endpoint.read_text())["address"]


@pytest.mark.slow
def test_kill_9_mid_upload_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path, token_hashes_file: Path
) -> None:
    run_dir = tmp_path / "run"
    config_path = tmp_path / "learner.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(run_dir),
                "log_level": "WARNING",
                "server": {"address": "127.0.0.1:0", "shutdown_grace_s": 0.1},
                "auth": {"token_hashes_file": str(token_hashes_file)},
                "ingest": {"min_chunk_bytes": 1024},  # the small chunks below resume at finer grain
                "trainer": {"enabled": False},
            }
        )
    )
    process, address = start_learner_process(config_path, run_dir)
    channel = grpc.insecure_channel(address)
    stub = fleet_pb2_grpc.FleetStub(channel)

    # An upload that was cut before the crash (staged on disk), and one in flight when the learner dies.
    staged = make_episode(50, seed=100)
    staged_chunks = chunks_of(staged, 1024)
    assert not stub.UploadEpisode(iter(staged_chunks[:4]), metadata=auth(), timeout=10).committed
    in_flight = make_episode(50, seed=101)
    in_flight_chunks = chunks_of(in_flight, 1024)
    held = HeldStream(in_flight_chunks[:3])
    held_call = stub.UploadEpisode.future(iter(held), metadata=auth(), timeout=30)
    assert held.sent.wait(10)

    # Three robots upload continuously; the learner is killed while they do.
    episodes: dict[str, Episode] = {}
    receipted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def robot(robot_id: str, seed0: int) -> None:
        seed = seed0
        while not stop.is_set():
            episode = make_episode(30, seed=seed, robot_id=robot_id, cameras=("top",), image_size=(16, 16))
            seed += 1
            with lock:
                episodes[episode.episode_id] = episode
            try:
                receipt = stub.UploadEpisode(
                    iter(chunks_of(episode, 4096)), metadata=auth(robot_id), timeout=10
                )
            except grpc.RpcError:
                return  # the learner died under this upload
            if receipt.committed:
                with lock:
                    receipted.add(episode.episode_id)

    threads = [threading.Thread(target=robot, args=(f"robot-{i}", 1000 * i)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    held.release.set()
    channel.close()
    assert len(receipted) > 3, "the robots should have committed some episodes before the crash"

    # Every receipted episode is durable, whatever moment the kill hit.
    survived = EpisodeStore(run_dir / "replay", create=False)
    assert receipted <= {info.episode_id for info in survived.list()}

    process, address = start_learner_process(config_path, run_dir)
    try:
        channel = grpc.insecure_channel(address)
        stub = fleet_pb2_grpc.FleetStub(channel)
        # Robots re-send what they hold no receipt for; the learner answers "duplicate" where it was committed.
        for episode_id, episode in episodes.items():
            if episode_id in receipted:
                continue
            receipt = stub.UploadEpisode(
                iter(chunks_of(episode, 4096)), metadata=auth(episode.robot_id), timeout=10
            )
            assert receipt.committed
        # The staged upload resumes with only its missing chunks.
        query = stub.QueryUpload(
            fleet_pb2.QueryUploadRequest(episode_id=staged.episode_id), metadata=auth(), timeout=5
        )
        assert list(query.received_seqs) == [0, 1, 2, 3]
        rest = [c for c in staged_chunks if c.seq >= 4]
        assert stub.UploadEpisode(iter(rest), metadata=auth(), timeout=10).committed
        # The in-flight upload's chunks died with the process: the robot sees them missing and re-sends.
        query = stub.QueryUpload(
            fleet_pb2.QueryUploadRequest(episode_id=in_flight.episode_id), metadata=auth(), timeout=5
        )
        missing = [c for c in in_flight_chunks if c.seq not in set(query.received_seqs)]
        assert stub.UploadEpisode(iter(missing), metadata=auth(), timeout=10).committed
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    final = EpisodeStore(run_dir / "replay", create=False)
    ids = [info.episode_id for info in final.list()]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(episodes) | {staged.episode_id, in_flight.episode_id}
    with contextlib.suppress(grpc.RpcError):
        held_call.result(timeout=1)
