"""The robot never dies of one bad input: a teleop action of the wrong length, a policy that answers NaN or
raises, a checkpoint that does not fit this robot (refused by the dry run before it runs or becomes last
good), and a restart on a last good checkpoint that no longer fits."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from fake_learner import FakeLearner
from robot_fakes import (
    ACTION_DIM,
    ConfigFactory,
    FakePolicy,
    FakeRobot,
    FaultyPolicy,
    fake_blob,
    fake_policy_loader,
)

from robot_client.config import ControlConfig, InferenceMode, PolicyConfig
from robot_client.daemon import RobotDaemon
from robot_client.policy_sync import LastGoodCheckpoint
from sop.data.codec import encode_tensor
from sop.episode import ACTION, INTERVENTION, POLICY_ACTION
from sop.v1 import operator_pb2


def counts(daemon: RobotDaemon, metric: str) -> dict[tuple[str, ...], float]:
    family = getattr(daemon.metrics, metric)
    return {
        tuple(sample.labels.values()): sample.value
        for collected in family.collect()
        for sample in collected.samples
        if sample.name.endswith("_total")
    }


def test_a_teleop_action_of_the_wrong_length_holds_the_robot_and_the_loop_goes_on(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(
        learner.address, control=ControlConfig(rate_hz=100.0, max_episode_steps=150, telemetry_hz=20)
    )
    robot = FakeRobot()
    daemon = RobotDaemon(config, robot=robot, policy_loader=fake_policy_loader, base_policy=FakePolicy(1))
    daemon.start(max_episodes=2)
    assert learner.wait_for(lambda: any(t.episode_id for t in learner.state.telemetry))
    robot_id = config.robot_id
    learner.send_command(
        robot_id,
        operator_pb2.OperatorCommand(operator_id="ana", take_over=operator_pb2.TakeOver(reason="test")),
    )
    assert learner.wait_for(lambda: any(t.intervening for t in learner.state.telemetry))
    wrong = encode_tensor(np.full(ACTION_DIM + 1, 0.3, dtype=np.float32))
    refused = lambda: counts(daemon, "commands_refused").get(("operator", "wrong_shape"), 0)  # noqa: E731
    deadline = time.monotonic() + 10
    while refused() < 3 and time.monotonic() < deadline:  # a console streaming a malformed action
        learner.send_command(
            robot_id, operator_pb2.OperatorCommand(teleop_action=operator_pb2.TeleopAction(action=wrong))
        )
        learner.wait_for(lambda: refused() >= 1, timeout_s=0.05)
    assert refused() >= 3
    learner.send_command(robot_id, operator_pb2.OperatorCommand(hand_back=operator_pb2.HandBack(reason="ok")))
    assert daemon.wait(15), "the control loop did not finish its episodes"
    assert daemon.wait_for_uploads(10)
    daemon.stop()
    assert daemon.error is None
    assert len(daemon.summaries) == 2 and all(s.steps == 150 for s in daemon.summaries)
    assert daemon.metrics.snapshot()["safe_action_steps"] >= 3
    # The robot only ever received actions of its own length, and held still (zeros) while refusing.
    assert all(a.shape == (ACTION_DIM,) for a in robot.actions)
    episode = next(e for e in learner.state.committed.values() if e.steps[INTERVENTION].any())
    flags = episode.steps[INTERVENTION]
    assert np.allclose(episode.steps[ACTION][flags], 0.0)  # held under the operator: still intervention
    # The policy drove every other frame, except the ticks right after the hand-back, which the robot held
    # (counted as late) while the inference thread warm-started the next chunk from the executed actions.
    policy_frames = episode.steps[POLICY_ACTION][~flags]
    held = ~np.isclose(policy_frames, 0.01).all(axis=1)
    assert np.allclose(policy_frames[held], 0.0)
    assert 0 < held.sum() <= daemon.metrics.snapshot()["inference_late_steps"]
    assert np.allclose(episode.steps[ACTION][~flags], policy_frames)
    assert np.allclose(episode.steps[POLICY_ACTION][flags], 0.01)  # the policy's own proposals, untouched


@pytest.mark.parametrize(
    ("fault", "reason"), [("nan", "non_finite"), ("long", "wrong_shape"), ("raise", "policy_error")]
)
def test_a_bad_policy_output_holds_the_robot_for_that_step_only(
    fault: str, reason: str, robot_config: ConfigFactory
) -> None:
    policy = FaultyPolicy(1, fault, bad_chunks={1})  # chunks of 4: steps 0-3 fine, step 4 bad
    robot = FakeRobot()
    # Step-exact: chunks computed in the tick (test_async_inference.py has the asynchronous counterpart).
    config = robot_config(None, policy=PolicyConfig(inference=InferenceMode.SYNC))
    daemon = RobotDaemon(config, robot=robot, base_policy=policy)
    (summary,) = daemon.run(max_episodes=1)
    assert summary.steps == 12
    executed = np.stack(robot.actions)
    assert np.allclose(executed[4], 0.0), "the robot did not hold at the bad step"
    assert np.allclose(np.delete(executed, 4, axis=0), 0.01)  # the next step solved a fresh chunk
    assert counts(daemon, "commands_refused") == {("policy", reason): 1.0}
    assert daemon.metrics.snapshot()["safe_action_steps"] == 1
    assert daemon.spool is not None
    episode = daemon.spool.read(daemon.spool.pending()[0].episode_id)
    assert not episode.steps[INTERVENTION].any()  # a held step is not an expert label
    assert np.allclose(episode.steps[ACTION][4], 0.0) and np.allclose(episode.steps[POLICY_ACTION][4], 0.0)
    assert np.isfinite(episode.steps[POLICY_ACTION]).all()


def test_checkpoints_that_do_not_fit_the_robot_are_refused_by_the_dry_run(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=20))
    daemon = RobotDaemon(
        config, robot=FakeRobot(), policy_loader=fake_policy_loader, base_policy=FakePolicy(1)
    )
    daemon.start(max_episodes=0)
    assert learner.wait_for(lambda: len(daemon.summaries) >= 1)
    rejected = lambda: counts(daemon, "checkpoints_rejected")  # noqa: E731
    # Verified and loadable, but three actions for a robot that takes two.
    learner.publish(2, fake_blob(2, action_dim=ACTION_DIM + 1))
    assert learner.wait_for(lambda: rejected().get(("dry_run_wrong_action_shape",)) == 1)
    # Verified and loadable, but its weights answer NaN.
    learner.publish(3, FaultyPolicy(3, "nan").to_bytes())
    assert learner.wait_for(lambda: rejected().get(("dry_run_non_finite",)) == 1)
    assert LastGoodCheckpoint(config.policy_dir).load() is None, "a refused checkpoint became last good"
    # The learner hears of it in the heartbeats.
    assert learner.wait_for(
        lambda: any(
            h.metrics.get("checkpoints_failed_dry_run") == 2
            and h.metrics.get("last_rejected_checkpoint_version") == 3
            for h in learner.state.heartbeats
        )
    )
    episodes_before = len(daemon.summaries)
    assert learner.wait_for(lambda: len(daemon.summaries) >= episodes_before + 2)
    assert daemon.policy_version == 1 and all(set(s.policy_versions) <= {1} for s in daemon.summaries)
    assert daemon.metrics.snapshot()["safe_action_steps"] == 0
    # A checkpoint that fits is taken and kept.
    learner.publish(4, fake_blob(4))
    assert learner.wait_for(lambda: daemon.policy_version == 4)
    daemon.stop()
    assert daemon.error is None
    last_good = LastGoodCheckpoint(config.policy_dir).load()
    assert last_good is not None and last_good[1] == 4


def test_a_restart_on_a_last_good_checkpoint_that_no_longer_fits_fetches_from_the_learner(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(learner.address, control=ControlConfig(rate_hz=200.0, max_episode_steps=10))
    # A first run leaves an episode (observations of this robot) in the spool; the learner is not there.
    learner.stop()
    first = RobotDaemon(config, robot=FakeRobot(), base_policy=FakePolicy(1))
    first.run(max_episodes=1)
    # Then a last good checkpoint for another robot appears (an older daemon kept it, a disk was copied).
    bad = fake_blob(5, action_dim=ACTION_DIM + 1)
    LastGoodCheckpoint(config.policy_dir).save(bad, 5, hashlib.sha256(bad).hexdigest())

    learner.start()
    learner.publish(6, fake_blob(6))
    restarted = RobotDaemon(config, robot=FakeRobot(), policy_loader=fake_policy_loader)
    restarted.start(max_episodes=2)
    assert restarted.wait(20), "the restarted daemon did not run its episodes"
    restarted.stop()
    assert restarted.error is None
    assert [set(s.policy_versions) for s in restarted.summaries] == [{6}, {6}]
    assert counts(restarted, "checkpoints_rejected") == {("dry_run_wrong_action_shape",): 1.0}
    assert restarted.metrics.snapshot()["safe_action_steps"] == 0
    last_good = LastGoodCheckpoint(config.policy_dir).load()
    assert last_good is not None and last_good[1] == 6
