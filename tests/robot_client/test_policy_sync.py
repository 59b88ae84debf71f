"""PolicySync over real gRPC: swaps only at boundaries, tampered checkpoints refused while the old policy
keeps running, fetches that resume from their offset, the last good checkpoint surviving a restart."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_learner import FakeLearner
from robot_fakes import (
    ConfigFactory,
    FakePolicy,
    FakeRobot,
    RefillableFakePolicy,
    fake_blob,
    fake_policy_loader,
    tamper,
)

from cloud_learner.config import AuthConfig, LearnerConfig, ServerConfig, TrainerConfig
from cloud_learner.service import LearnerService
from robot_client.config import ControlConfig, InferenceMode, PolicyConfig, SwapPoint
from robot_client.daemon import RobotDaemon
from sop.episode import ACTION, POLICY_VERSION
from sop.fleet_trust import FleetTrust, create_fleet_trust


def make_daemon(config: object, base_version: int = 1) -> RobotDaemon:
    return RobotDaemon(
        config,  # type: ignore[arg-type]
        robot=FakeRobot(),
        policy_loader=fake_policy_loader,
        base_policy=FakePolicy(base_version),
    )


def refillable_loader(blob: bytes, expected_sha256: str | None) -> FakePolicy:
    return RefillableFakePolicy(fake_policy_loader(blob, expected_sha256).version)


def test_a_retired_policy_is_refilled_with_the_next_checkpoint(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    # Each swap retires the policy it replaced; the next checkpoint's weights go into it instead of into a
    # newly built one (a diffusion policy would otherwise trace its U-Net again for every checkpoint).
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=30))
    daemon = RobotDaemon(
        config,  # type: ignore[arg-type]
        robot=FakeRobot(),
        policy_loader=refillable_loader,
        base_policy=FakePolicy(1),  # the caller's object: never refilled
    )
    daemon.start(max_episodes=12)
    assert learner.wait_for(lambda: len(daemon.summaries) >= 1)
    for version in (2, 3, 4):
        learner.publish(version, fake_blob(version))
        assert learner.wait_for(lambda v=version: daemon.policy_version == v)  # type: ignore[misc]
    assert daemon.wait(15)
    daemon.stop()
    sync = daemon.policy_sync
    assert sync is not None
    # v2 is built (only the caller's v1 was retired); v3 is built too (v2 still runs), v4 refills v2.
    assert sync.loaded_in_place == 1
    versions = [s.policy_versions[0] for s in daemon.summaries]
    assert versions == sorted(versions) and versions[-1] == 4
    for episode in learner.state.committed.values():  # every action still says which version acted
        version = set(episode.steps[POLICY_VERSION].tolist())
        assert len(version) == 1
        assert abs(float(episode.steps[ACTION][0, 0]) - version.pop() / 100) < 1e-6


def test_a_warmed_up_spare_takes_the_first_checkpoint_so_nothing_is_built_while_the_robot_runs(
    learner: FakeLearner, robot_config: ConfigFactory, tmp_path: Path
) -> None:
    # Building a diffusion policy traces its U-Net, which holds the GIL long enough to stall the control
    # thread: the daemon builds and warms a spare from the base checkpoint before its loop starts.
    built: list[FakePolicy] = []

    def loader(blob: bytes, expected_sha256: str | None) -> FakePolicy:
        built.append(refillable_loader(blob, expected_sha256))
        return built[-1]

    base = tmp_path / "base.safetensors"
    base.write_bytes(fake_blob(1))
    config = robot_config(
        learner.address,
        control=ControlConfig(rate_hz=200.0, max_episode_steps=30),
        policy=PolicyConfig(base_checkpoint=str(base)),
    )
    daemon = RobotDaemon(config, robot=FakeRobot(), policy_loader=loader)  # type: ignore[arg-type]
    daemon.start(max_episodes=0)
    assert learner.wait_for(lambda: len(daemon.summaries) >= 1)
    assert len(built) == 2 and [p.warm_ups for p in built] == [1, 1]  # the running policy and its spare
    learner.publish(2, fake_blob(2))
    assert learner.wait_for(lambda: daemon.policy_version == 2)
    daemon.stop()
    assert daemon.policy_sync is not None and daemon.policy_sync.loaded_in_place == 1
    assert len(built) == 2, "a policy was built while the robot ran"


def rejected(daemon: RobotDaemon) -> dict[str, float]:
    return {
        sample.labels["reason"]: sample.value
        for family in daemon.metrics.checkpoints_rejected.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_swaps_happen_only_at_episode_boundaries(learner: FakeLearner, robot_config: ConfigFactory) -> None:
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=40))
    daemon = make_daemon(config)
    daemon.start(max_episodes=8)
    assert learner.wait_for(lambda: len(daemon.summaries) >= 1)
    learner.publish(2, fake_blob(2))
    assert learner.wait_for(lambda: daemon.policy_version == 2)
    learner.publish(3, fake_blob(3))
    assert daemon.wait(15)
    assert daemon.wait_for_uploads(10)
    daemon.stop()

    versions = [s.policy_versions for s in daemon.summaries]
    assert all(len(set(v)) == 1 for v in versions), "a policy changed within an episode"
    per_episode = [v[0] for v in versions]
    assert per_episode == sorted(per_episode) and per_episode[0] == 1 and per_episode[-1] == 3
    # The recorded frames agree: the version column is constant per episode and matches the actions.
    for episode in learner.state.committed.values():
        version = set(episode.steps[POLICY_VERSION].tolist())
        assert len(version) == 1
        assert abs(float(episode.steps[ACTION][0, 0]) - version.pop() / 100) < 1e-6
    assert daemon.metrics.snapshot()["policy_swaps"] == 2


@pytest.mark.parametrize("inference", [InferenceMode.SYNC, InferenceMode.ASYNC])
def test_chunk_boundary_swaps_land_on_chunk_starts(
    inference: InferenceMode, learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(
        learner.address,
        control=ControlConfig(rate_hz=200.0, max_episode_steps=300),
        policy=PolicyConfig(swap_at=SwapPoint.CHUNK, inference=inference),
    )
    robot = FakeRobot()
    daemon = RobotDaemon(config, robot=robot, policy_loader=fake_policy_loader, base_policy=FakePolicy(1))
    daemon.start(max_episodes=1)
    assert learner.wait_for(lambda: daemon.loop is not None and daemon.metrics.snapshot()["steps"] > 10)
    learner.publish(2, fake_blob(2, execution_horizon=4))
    assert daemon.wait(15)
    daemon.stop()
    (summary,) = daemon.summaries
    changes = [
        i for i in range(1, summary.steps) if summary.policy_versions[i] != summary.policy_versions[i - 1]
    ]
    assert len(changes) == 1, "v2 did not arrive within the episode"
    assert summary.policy_versions[-1] == 2
    # Every step records the version whose action ran (FakePolicy acts version / 100); asynchronous, v1's
    # chunk runs on after the swap until v2's first chunk arrives, and those steps still say v1.
    executed = np.stack(robot.actions)[:, 0]
    ran = executed != 0.0  # not a held (late) tick
    assert np.allclose(executed[ran], np.asarray(summary.policy_versions)[ran] / 100)
    if inference is InferenceMode.SYNC:
        # v1 predicted chunks of 4 from step 0, so chunk boundaries are multiples of 4.
        assert changes[0] % 4 == 0


def test_tampered_checkpoints_are_refused_and_the_old_policy_keeps_running(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=20))
    daemon = make_daemon(config)
    daemon.start(max_episodes=0)
    good2 = fake_blob(2)
    # Bytes altered in transit: they do not hash to the announced sha256.
    learner.publish(2, tamper(good2), announced_sha256=hashlib.sha256(good2).hexdigest())
    assert learner.wait_for(lambda: rejected(daemon).get("sha256_mismatch") == 1)
    # A learner that announces the hash of altered bytes: the weights no longer match the manifest.
    learner.publish(3, tamper(fake_blob(3)))
    assert learner.wait_for(lambda: rejected(daemon).get("load_failed") == 1)
    episodes_before = len(daemon.summaries)
    assert learner.wait_for(lambda: len(daemon.summaries) >= episodes_before + 2)
    assert daemon.policy_version == 1
    assert all(set(s.policy_versions) <= {1} for s in daemon.summaries)
    # A good checkpoint after the bad ones is taken.
    learner.publish(4, fake_blob(4))
    assert learner.wait_for(lambda: daemon.policy_version == 4)
    daemon.stop()
    assert rejected(daemon) == {"sha256_mismatch": 1.0, "load_failed": 1.0}
    # Each bad checkpoint was fetched once, not again and again.
    assert daemon.policy_sync is not None and len(daemon.policy_sync.rejected) == 2


def test_fetch_resumes_from_its_offset_after_a_cut(learner: FakeLearner, robot_config: ConfigFactory) -> None:
    blob = fake_blob(2, weight_elems=40_000)  # 160 KB: ten 16 KiB chunks
    learner.state.fetch_cut_after_bytes = 48 * 1024
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=10))
    daemon = make_daemon(config)
    daemon.start(max_episodes=0)
    learner.publish(2, blob)
    assert learner.wait_for(lambda: daemon.policy_version == 2)
    daemon.stop()
    offsets = learner.state.fetch_offsets
    assert offsets[0] == 0 and offsets[1] == 48 * 1024, offsets
    assert daemon.metrics.snapshot()["checkpoints_rejected"] == 0


def test_a_restart_without_the_learner_runs_the_last_good_checkpoint(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=10))
    daemon = make_daemon(config)
    daemon.start(max_episodes=0)
    learner.publish(5, fake_blob(5))
    assert learner.wait_for(lambda: daemon.policy_version == 5)
    daemon.stop()
    learner.stop()

    offline = replace(config, learner=replace(config.learner, address=None))
    restarted = make_daemon(offline, base_version=1)
    summaries = restarted.run(max_episodes=1)
    assert summaries[0].policy_versions == [5] * 10


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def start_real_learner(run_dir: Path, trust: FleetTrust, signing_key: Path | None) -> LearnerService:
    config = LearnerConfig(
        run_dir=str(run_dir),
        server=ServerConfig(address="127.0.0.1:0", watch_check_interval_s=0.1, shutdown_grace_s=0.2),
        auth=AuthConfig(token_hashes_file=str(trust.token_hashes)),
        trainer=TrainerConfig(
            enabled=False, signing_key_file=None if signing_key is None else str(signing_key)
        ),
    )
    service = LearnerService(config)
    service.start()
    blob = fake_blob(2)
    service.publisher.announce(service.checkpoints.publish(blob, train_step=1), blob)
    return service


def run_robot_against(
    service: LearnerService, trust: FleetTrust, public_key: Path, data_dir: Path, robot_config: ConfigFactory
) -> RobotDaemon:
    """A robot holding `public_key` runs against `service` (which announces v2) until it took v2 or refused it."""
    config = robot_config(
        f"127.0.0.1:{service.port}", control=ControlConfig(rate_hz=200.0, max_episode_steps=10)
    )
    config = replace(
        config,
        data_dir=str(data_dir),
        learner=replace(config.learner, token_file=str(trust.robots["robot-1"].token)),
        policy=replace(config.policy, checkpoint_public_key_file=str(public_key)),
    )
    daemon = make_daemon(config)
    daemon.start(max_episodes=0)
    assert wait_for(lambda: daemon.policy_version == 2 or bool(rejected(daemon))), (
        "v2 neither taken nor refused"
    )
    episodes = len(daemon.summaries)
    assert wait_for(lambda: len(daemon.summaries) >= episodes + 2), "the robot stopped running episodes"
    daemon.stop()
    return daemon


def test_signed_checkpoints_run_and_unsigned_or_foreign_ones_are_refused(
    tmp_path: Path, robot_config: ConfigFactory
) -> None:
    trust = create_fleet_trust(tmp_path / "fleet", ["robot-1"])
    foreign = create_fleet_trust(tmp_path / "foreign", ["robot-1"])
    learner_key = trust.robots["robot-1"].checkpoint_public_key

    signed = start_real_learner(tmp_path / "signed", trust, trust.signing_key)
    try:
        good = run_robot_against(signed, trust, learner_key, tmp_path / "a", robot_config)
        assert good.policy_version == 2 and rejected(good) == {}
        # A robot that trusts another key refuses the learner's checkpoint and keeps running its policy.
        other = run_robot_against(
            signed, trust, foreign.robots["robot-1"].checkpoint_public_key, tmp_path / "b", robot_config
        )
        assert rejected(other) == {"bad_signature": 1.0}
        assert other.policy_version == 1 and all(set(s.policy_versions) <= {1} for s in other.summaries)
    finally:
        signed.stop()

    unsigned = start_real_learner(tmp_path / "unsigned", trust, None)
    try:
        refused = run_robot_against(unsigned, trust, learner_key, tmp_path / "c", robot_config)
        assert rejected(refused) == {"unsigned": 1.0}
        assert refused.policy_version == 1 and all(set(s.policy_versions) <= {1} for s in refused.summaries)
        # Nothing refused was kept as the last good checkpoint for a restart.
        assert not (tmp_path / "c" / "robot-1" / "policy" / "current.json").exists()
    finally:
        unsigned.stop()
