"""Uploads over real gRPC on 127.0.0.1: resume after a kill, nothing lost or duplicated, back-off on load
shedding, quarantine of refused episodes, and a robot that starts while its learner is down."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace

import grpc
import numpy as np
from fake_learner import FakeLearner
from robot_fakes import ConfigFactory, FakePolicy, FakeRobot, fake_policy_loader

from robot_client.config import ControlConfig, UploadConfig
from robot_client.daemon import RobotDaemon
from sop.data.codec import decode_episode, encode_episode
from sop.data.synthetic_episodes import make_episode
from sop.episode import INTERVENTION, POLICY_VERSION


def make_daemon(config: object) -> RobotDaemon:
    return RobotDaemon(
        config,  # type: ignore[arg-type]
        robot=FakeRobot(cameras=("wrist",)),
        policy_loader=fake_policy_loader,
        base_policy=FakePolicy(1),
    )


def test_upload_resumes_after_the_learner_is_killed_mid_stream(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    learner.state.max_chunk_bytes = 256
    learner.state.kill_after_chunks = 5
    config = robot_config(learner.address)
    config = replace(config, upload=replace(config.upload, max_chunk_bytes=256))
    daemon = make_daemon(config)
    daemon.start(max_episodes=3)
    assert learner.wait_for(lambda: learner.server is None, 10), "the learner was never killed"
    assert daemon.wait(10)
    learner.start()  # same port, same staged chunks
    assert daemon.wait_for_uploads(15)
    daemon.stop()

    recorded = {s.episode_id for s in daemon.summaries}
    assert set(learner.state.committed) == recorded  # nothing lost
    assert all(count == 1 for count in learner.state.commits.values())  # nothing committed twice
    # The chunks the learner held before the kill were not sent again: the upload resumed.
    assert all(count == 1 for count in learner.state.chunk_receipts.values())
    snapshot = daemon.metrics.snapshot()
    assert daemon.metrics._value(daemon.metrics.upload_chunks_skipped) >= 4
    assert snapshot["upload_retries"] >= 1
    assert snapshot["uploads_ok"] == 3
    assert daemon.spool is not None and not daemon.spool.pending()
    # What arrived is what the robot did: 12 steps each, with the camera.
    for episode in learner.state.committed.values():
        assert episode.num_steps == 12
        assert episode.camera_names == ["wrist"]


def test_robot_runs_its_base_policy_and_spools_while_the_learner_is_down(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    learner.stop()  # the port is known, nothing listens on it
    daemon = make_daemon(robot_config(learner.address))
    daemon.start(max_episodes=3)
    assert daemon.wait(10)
    assert daemon.recorder is not None and daemon.recorder.drain(5)
    assert daemon.spool is not None and len(daemon.spool.pending()) == 3
    assert all(set(s.policy_versions) <= {1} for s in daemon.summaries)
    assert daemon.metrics.snapshot()["learner_connected"] == 0

    learner.start()
    assert daemon.wait_for_uploads(15)
    daemon.stop()
    assert set(learner.state.committed) == {s.episode_id for s in daemon.summaries}
    for episode in learner.state.committed.values():
        assert set(episode.steps[POLICY_VERSION].tolist()) == {1}
        assert not episode.steps[INTERVENTION].any()


def test_resource_exhausted_backs_off_then_succeeds(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    learner.state.refuse_uploads_with = grpc.StatusCode.RESOURCE_EXHAUSTED
    learner.state.refuse_uploads_times = 2
    config = robot_config(learner.address)
    config = replace(
        config, upload=UploadConfig(backoff_initial_s=0.01, backoff_max_s=0.05, resource_exhausted_min_s=0.3)
    )
    daemon = make_daemon(config)
    daemon.start(max_episodes=1)
    assert daemon.wait(10)
    assert daemon.wait_for_uploads(10)
    daemon.stop()
    assert len(learner.state.committed) == 1
    retries = {
        sample.labels["code"]: sample.value
        for family in daemon.metrics.upload_retries.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert retries == {"RESOURCE_EXHAUSTED": 2.0}


def test_invalid_episode_is_quarantined_not_retried_not_dropped(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    learner.state.refuse_uploads_with = grpc.StatusCode.INVALID_ARGUMENT
    learner.state.refuse_uploads_times = 1
    daemon = make_daemon(robot_config(learner.address))
    daemon.start(max_episodes=2)
    assert daemon.wait(10)
    assert daemon.wait_for_uploads(10)
    daemon.stop()
    assert daemon.spool is not None
    quarantined = daemon.spool.quarantined()
    assert len(quarantined) == 1
    assert len(learner.state.committed) == 1
    assert set(quarantined) | set(learner.state.committed) == {s.episode_id for s in daemon.summaries}
    reason = (daemon.config.quarantine_dir / quarantined[0] / "reason.json").read_text()
    assert "INVALID_ARGUMENT" in reason
    assert (daemon.config.quarantine_dir / quarantined[0] / "episode.zarr" / "zarr.json").is_file()
    assert daemon.metrics.snapshot()["uploads_quarantined"] == 1


def test_serialization_is_the_same_in_another_process() -> None:
    """A resumed upload after a daemon restart must produce the bytes whose chunks the learner holds."""
    episode = make_episode(num_steps=5, cameras=("top", "wrist"), image_size=(4, 4))
    payload = encode_episode(episode)
    assert decode_episode(payload).episode_id == episode.episode_id
    script = (
        "import sys, hashlib\n"
        "from sop.data.codec import decode_episode\n"
        "from sop.data.codec import encode_episode\n"
        "data = sys.stdin.buffer.read()\n"
        "print(hashlib.sha256(encode_episode(decode_episode(data))).hexdigest())\n"
    )
    digest = (
        subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, check=True)
        .stdout.decode()
        .strip()
    )
    assert digest == hashlib.sha256(payload).hexdigest()
    assert np.array_equal(decode_episode(payload).steps["action"], episode.steps["action"])


def test_free_running_mode_records_as_fast_as_it_can(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(learner.address, control=ControlConfig(free_running=True, max_episode_steps=50))
    daemon = make_daemon(config)
    daemon.start(max_episodes=2)
    assert daemon.wait(10)
    assert daemon.wait_for_uploads(10)
    daemon.stop()
    assert [s.steps for s in daemon.summaries] == [50, 50]
    assert daemon.metrics.snapshot()["deadline_misses"] == 0
