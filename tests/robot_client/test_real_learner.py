"""The robot daemon against the real learner service (cloud_learner) over 127.0.0.1: the two sides meet
only through protos/, so this is where a disagreement about the wire contract shows up."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from robot_fakes import ConfigFactory, FakePolicy, FakeRobot, fake_blob, fake_policy_loader

from cloud_learner.config import AuthConfig, LearnerConfig, ServerConfig, TrainerConfig
from cloud_learner.service import LearnerService
from robot_client.config import ControlConfig
from robot_client.daemon import RobotDaemon
from sop.credentials import TokenRegistry
from sop.episode import POLICY_VERSION, Outcome


def start_learner(tmp_path: Path) -> LearnerService:
    registry = TokenRegistry({})
    registry.add("robot-1", "token-of-robot-1")
    registry.write(tmp_path / "token_hashes.json")
    config = LearnerConfig(
        run_dir=str(tmp_path / "learner"),
        server=ServerConfig(
            address="127.0.0.1:0",
            max_workers=32,
            stream_idle_timeout_s=3.0,
            watch_check_interval_s=0.1,
            shutdown_grace_s=0.2,
        ),
        auth=AuthConfig(token_hashes_file=str(tmp_path / "token_hashes.json")),
        trainer=TrainerConfig(enabled=False),
    )
    service = LearnerService(config)
    service.start()
    return service


def test_upload_swap_and_console_with_the_real_learner(tmp_path: Path, robot_config: ConfigFactory) -> None:
    service = start_learner(tmp_path)
    try:
        token = tmp_path / "robot.token"
        token.write_text("token-of-robot-1")
        config = robot_config(
            f"127.0.0.1:{service.port}", control=ControlConfig(rate_hz=200.0, max_episode_steps=30)
        )
        config = replace(config, learner=replace(config.learner, token_file=str(token)))
        daemon = RobotDaemon(
            config, robot=FakeRobot(), policy_loader=fake_policy_loader, base_policy=FakePolicy(1)
        )
        daemon.start(max_episodes=6)
        blob = fake_blob(2)
        service.publisher.announce(service.checkpoints.publish(blob, train_step=1), blob)
        assert daemon.wait(20)
        assert daemon.wait_for_uploads(15)
        daemon.stop()

        recorded = {s.episode_id: s for s in daemon.summaries}
        stored = {info.episode_id: info for info in service.store.list()}
        assert set(stored) == set(recorded)
        for episode_id, summary in recorded.items():
            episode = service.store.get(episode_id)
            assert episode.robot_id == "robot-1" and episode.outcome is Outcome.TIMEOUT
            assert episode.steps[POLICY_VERSION].tolist() == summary.policy_versions
        assert daemon.summaries[-1].policy_versions[0] == 2, "the published checkpoint never ran"
        assert all(len(set(s.policy_versions)) == 1 for s in daemon.summaries)
        assert daemon.metrics.snapshot()["uploads_quarantined"] == 0
        assert np.isfinite(daemon.metrics.snapshot()["loop_period_p99_ms"])
    finally:
        service.stop()
