"""Operators and the HG-DAgger gate: local and remote take-overs, what gets recorded, RTI restarts, and the
lerobot adapters (robot and teleoperator) on minimal lerobot devices."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_learner import FakeLearner
from robot_fakes import ACTION_DIM, ConfigFactory, FakePolicy, FakeRobot, ScriptedOperator, fake_policy_loader

from robot_client.config import ControlConfig, InferenceMode, OperatorConfig, PolicyConfig
from robot_client.daemon import RobotDaemon
from robot_client.intervention_gate import InterventionGate
from robot_client.operators import LeRobotTeleopInput, OperatorDecision, OperatorPanel, RemoteCommands
from robot_client.robots import LeRobotRobot, Observation
from sop.data.codec import encode_tensor
from sop.episode import ACTION, INTERVENTION, POLICY_ACTION, Outcome, operator_frames
from sop.v1 import operator_pb2


def test_intervention_frames_keep_both_actions_and_hand_back_continues_from_executed_actions(
    robot_config: ConfigFactory,
) -> None:
    policy = FakePolicy(1, execution_horizon=4)
    # Step-exact chunk counts: chunks computed in the tick (test_async_inference.py: the asynchronous hand-back).
    config = robot_config(None, policy=PolicyConfig(inference=InferenceMode.SYNC))
    episode_log = Path(config.data_dir) / "episodes.jsonl"
    config = replace(config, metrics=replace(config.metrics, episode_log=str(episode_log)))
    daemon = RobotDaemon(
        config, robot=FakeRobot(), operator=ScriptedOperator(3, 6, action=0.5), base_policy=policy
    )
    (summary,) = daemon.run(max_episodes=1)
    assert daemon.spool is not None
    (info,) = daemon.spool.pending()
    episode = daemon.spool.read(info.episode_id)
    flags = episode.steps[INTERVENTION]
    assert flags.tolist() == [False] * 3 + [True] * 3 + [False] * 6
    # The frames say who drove them: the daemon's own operator input.
    assert operator_frames(episode.extra, episode.num_steps, flags) == {"local": [(3, 6)]}
    assert np.allclose(episode.steps[ACTION][3:6], 0.5)  # the operator's action was executed
    assert np.allclose(episode.steps[POLICY_ACTION], 0.01)  # the policy kept proposing throughout
    assert np.allclose(episode.steps[ACTION][6:], 0.01)
    assert summary.intervention_steps == 3
    # Chunks at steps 0, 4, then the hand-back at 6 drops the queue and restarts (7, 11): 4 chunks, not 3.
    assert policy.chunks_predicted == 4
    assert policy.invalidations >= 2  # reset() at the episode start + the hand-back
    # The hand-back passed what the robot executed: the operator's actions, then the policy's at step 6.
    (handoff,) = policy.handoffs
    assert np.allclose(handoff[-4:-1], 0.5) and np.allclose(handoff[-1], 0.01)
    assert daemon.metrics.snapshot()["takeovers"] == 1
    (logged,) = [json.loads(line) for line in episode_log.read_text().splitlines()]
    assert logged["episode_id"] == info.episode_id
    assert (logged["num_steps"], logged["intervention_frames"], logged["take_overs"]) == (12, 3, 1)
    assert logged["outcome"] == str(summary.outcome) and logged["policy_version"] == 1


def test_console_takes_over_teleoperates_hands_back_and_labels(
    learner: FakeLearner, robot_config: ConfigFactory
) -> None:
    config = robot_config(
        learner.address, control=ControlConfig(rate_hz=100.0, max_episode_steps=150, telemetry_hz=20)
    )
    daemon = RobotDaemon(
        config, robot=FakeRobot(), policy_loader=fake_policy_loader, base_policy=FakePolicy(1)
    )
    daemon.start(max_episodes=1)
    assert learner.wait_for(lambda: any(t.episode_id for t in learner.state.telemetry))
    episode_id = next(t.episode_id for t in learner.state.telemetry if t.episode_id)
    robot_id = config.robot_id
    learner.send_command(
        robot_id,
        operator_pb2.OperatorCommand(operator_id="ana", take_over=operator_pb2.TakeOver(reason="test")),
    )
    assert learner.wait_for(lambda: any(t.intervening for t in learner.state.telemetry))
    teleop = encode_tensor(np.full(ACTION_DIM, 0.3, dtype=np.float32))
    for _ in range(5):  # a person's teleop stream: a command every 30 ms, ticks every 10 ms
        learner.send_command(
            robot_id, operator_pb2.OperatorCommand(teleop_action=operator_pb2.TeleopAction(action=teleop))
        )
        time.sleep(0.03)
    learner.send_command(
        robot_id, operator_pb2.OperatorCommand(hand_back=operator_pb2.HandBack(reason="done"))
    )
    learner.send_command(
        robot_id,
        operator_pb2.OperatorCommand(
            outcome_label=operator_pb2.OutcomeLabel(episode_id=episode_id, outcome="failure")
        ),
    )
    assert daemon.wait(10)
    assert daemon.wait_for_uploads(10)
    daemon.stop()
    episode = learner.state.committed[episode_id]
    assert episode.outcome is Outcome.FAILURE
    flags = episode.steps[INTERVENTION]
    assert flags.any() and not flags[-1]
    # Every intervention frame is attributed to the console user who took over, in one range.
    (driven,) = operator_frames(episode.extra, episode.num_steps, flags)["ana"]
    assert flags[driven[0] : driven[1]].all() and flags.sum() == driven[1] - driven[0]
    executed = episode.steps[ACTION][flags]
    # While the console drove, the robot executed teleop actions (or held still before the first arrived).
    assert np.isclose(executed, 0.3).all(axis=1).any()
    assert np.logical_or(np.isclose(executed, 0.3), np.isclose(executed, 0.0)).all()
    # The policy's proposals throughout, except ticks it had none ready (after the hand-back, while the
    # inference thread warm-started from the executed actions): the hold action there, counted as late.
    proposals = episode.steps[POLICY_ACTION]
    late = ~np.isclose(proposals, 0.01).all(axis=1)
    assert (
        np.allclose(proposals[late], 0.0) and late.sum() <= daemon.metrics.snapshot()["inference_late_steps"]
    )
    assert any(t.outcome == "failure" for t in learner.state.telemetry)


def test_gate_holds_still_on_a_missing_or_broken_operator_action() -> None:
    observation = Observation(np.zeros(4, np.float32), "i", "t")
    gate = InterventionGate(lambda obs: np.full(2, 7.0, np.float32), action_dim=2)
    policy_action = np.zeros(2, np.float32)
    assert np.allclose(gate.decide(observation, policy_action, OperatorDecision(True)).action, 7.0)
    nan = OperatorDecision(True, np.array([np.nan, 0.0], np.float32))
    assert np.allclose(gate.decide(observation, policy_action, nan).action, 7.0)
    wrong_length = gate.decide(observation, policy_action, OperatorDecision(True, np.zeros(3, np.float32)))
    assert wrong_length.held and np.allclose(wrong_length.action, 7.0)
    out = gate.decide(observation, policy_action, OperatorDecision(False))
    assert out.handed_back and not out.intervening


def test_remote_console_outranks_the_local_operator() -> None:
    observation = Observation(np.zeros(4, np.float32), "i", "t")
    remote = RemoteCommands(teleop_timeout_s=0.2)
    panel = OperatorPanel(ScriptedOperator(100, 200), remote)
    panel.begin_episode("e1", observation)
    assert not panel.step(observation, np.zeros(2, np.float32), False).intervening
    remote.teleop(np.ones(2))  # before a take-over: ignored
    remote.take_over("ana", "look")
    decision = panel.step(observation, np.zeros(2, np.float32), False)
    assert decision.intervening and decision.action is None  # no fresh teleop action: hold still
    remote.teleop(np.ones(2), now=0.0)  # stale by the time it is read
    assert panel.step(observation, np.zeros(2, np.float32), False).action is None
    remote.teleop(np.full(2, 0.25))
    fresh = panel.step(observation, np.zeros(2, np.float32), False).action
    assert fresh is not None and np.allclose(fresh, 0.25)
    remote.label("e1", Outcome.SUCCESS)
    labelled = panel.step(observation, np.zeros(2, np.float32), False)
    assert labelled.outcome is Outcome.SUCCESS and labelled.end_episode
    remote.hand_back("ana", "ok")
    assert not panel.step(observation, np.zeros(2, np.float32), False).intervening


# ---- lerobot adapters ----------------------------------------------------------------------------------


def make_lerobot_arm(tmp_path: Path) -> Any:
    """A minimal `lerobot.robots.Robot` subclass: two position-controlled joints and one camera."""
    from lerobot.robots import Robot, RobotConfig

    @RobotConfig.register_subclass("sop_test_arm")
    @dataclass(kw_only=True)
    class ArmConfig(RobotConfig):
        pass

    class Arm(Robot):
        config_class = ArmConfig
        name = "sop_test_arm"

        def __init__(self, config: ArmConfig) -> None:
            super().__init__(config)
            self.positions = {"shoulder.pos": 0.2, "elbow.pos": -0.4}
            self.connected = False
            self.sent: list[dict[str, float]] = []

        @cached_property
        def observation_features(self) -> dict:
            return {"shoulder.pos": float, "elbow.pos": float, "front": (4, 6, 3)}

        @cached_property
        def action_features(self) -> dict:
            return {"shoulder.pos": float, "elbow.pos": float}

        @property
        def is_connected(self) -> bool:
            return self.connected

        def connect(self, calibrate: bool = True) -> None:
            self.connected = True

        @property
        def is_calibrated(self) -> bool:
            return True

        def calibrate(self) -> None:
            pass

        def configure(self) -> None:
            pass

        def get_observation(self) -> dict[str, Any]:
            return {**self.positions, "front": np.zeros((4, 6, 3), np.uint8)}

        def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
            clipped = {k: float(np.clip(v, -1.0, 1.0)) for k, v in action.items()}
            self.sent.append(clipped)
            self.positions.update(clipped)
            return clipped

        def disconnect(self) -> None:
            self.connected = False

    return Arm(ArmConfig(id="arm", calibration_dir=tmp_path / "calibration"))


def test_lerobot_robot_adapter_maps_features_to_vectors(tmp_path: Path) -> None:
    arm = make_lerobot_arm(tmp_path)
    robot = LeRobotRobot(arm, task="pick", instruction="pick it up")
    assert arm.is_connected
    assert (robot.state_dim, robot.action_dim, robot.cameras) == (2, 2, ("front",))
    first = robot.start_episode()
    assert np.allclose(first.state, [0.2, -0.4]) and first.images["front"].shape == (4, 6, 3)
    assert first.policy_input()["instruction"] == "pick it up"
    assert np.allclose(robot.hold_action(first), [0.2, -0.4])  # position control: hold = where it is
    result = robot.step(np.array([0.5, -3.0], np.float32))
    assert arm.sent[-1] == {"shoulder.pos": 0.5, "elbow.pos": -1.0}
    assert result.applied_action is not None and np.allclose(result.applied_action, [0.5, -1.0])
    assert np.allclose(result.observation.state, [0.5, -1.0])
    robot.close()
    assert not arm.is_connected


def test_lerobot_teleoperator_adapter_reads_actions_and_intervention_events() -> None:
    from lerobot.teleoperators.utils import TeleopEvents

    class Gamepad:
        action_features = {"shoulder.pos": float, "elbow.pos": float, "extra": float}
        is_connected = True

        def __init__(self) -> None:
            self.events: dict[Any, bool] = {}

        def get_action(self) -> dict[str, float]:
            return {"elbow.pos": 0.7, "shoulder.pos": 0.1, "extra": 9.0}

        def get_teleop_events(self) -> dict[Any, bool]:
            return self.events

    pad = Gamepad()
    device = LeRobotTeleopInput(pad, ["shoulder.pos", "elbow.pos"])
    observation = Observation(np.zeros(2, np.float32), "i", "t")
    idle = device.step(observation, np.zeros(2, np.float32), False)
    assert not idle.intervening and idle.action is not None and np.allclose(idle.action, [0.1, 0.7])
    pad.events = {TeleopEvents.IS_INTERVENTION: True}
    assert device.step(observation, np.zeros(2, np.float32), False).intervening
    pad.events = {TeleopEvents.SUCCESS: True}
    done = device.step(observation, np.zeros(2, np.float32), False)
    assert done.outcome is Outcome.SUCCESS and done.end_episode
    with pytest.raises(ValueError, match=r"wrist\.pos"):
        LeRobotTeleopInput(pad, ["wrist.pos"])

    class LeaderArm:  # no intervention events: it drives when the console hands it control
        action_features = {"shoulder.pos": float, "elbow.pos": float}
        is_connected = True

        def get_action(self) -> dict[str, float]:
            return {"shoulder.pos": -0.2, "elbow.pos": 0.3}

    remote = RemoteCommands()
    panel = OperatorPanel(LeRobotTeleopInput(LeaderArm(), ["shoulder.pos", "elbow.pos"]), remote)
    assert not panel.step(observation, np.zeros(2, np.float32), False).intervening
    remote.take_over("ana", "leader arm")
    driven = panel.step(observation, np.zeros(2, np.float32), False)
    assert driven.intervening and driven.action is not None and np.allclose(driven.action, [-0.2, 0.3])


def test_operator_config_names_the_missing_field() -> None:
    with pytest.raises(ValueError, match=r"operator\.teleop_config"):
        OperatorConfig(type="lerobot_teleop")
    with pytest.raises(ValueError, match=r"operator\.factory"):
        OperatorConfig(type="factory", factory="no_colon")
    assert replace(OperatorConfig(), type="simulated").type == "simulated"
