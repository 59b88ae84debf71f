"""The simulator's daemon plug-ins: `robot.type: metaworld` and `operator.type: simulated` are found by name
(through the entry points of fleet_harness/robot_plugins.py) and drive a real daemon episode."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fleet_harness.robot_plugins import MetaWorldRobot, SimulatedOperatorInput
from robot_client.config import (
    ControlConfig,
    MetricsConfig,
    OperatorConfig,
    RobotConfig,
    RobotPluginConfig,
    SpoolConfig,
)
from robot_client.daemon import RobotDaemon
from robot_client.operators import make_local_operator
from robot_client.robots import make_robot
from sop.episode import ACTION, INTERVENTION, POLICY_ACTION

ROBOT_FAKES = Path(__file__).resolve().parents[1] / "robot_client"


def test_metaworld_and_simulated_kinds_are_the_sim_plugins() -> None:
    config = RobotPluginConfig(type="metaworld", task="reach-v3", seed=2)
    robot = make_robot(config, ControlConfig(max_episode_steps=5))
    try:
        assert isinstance(robot, MetaWorldRobot)
        observation = robot.start_episode()
        assert observation.state.shape == (robot.state_dim,) and robot.action_dim == 4
        # The safe action holds the hand still and keeps the gripper as it is.
        assert np.array_equal(robot.safe_action(observation), robot.hold_action(observation))
        assert np.allclose(robot.safe_action(observation)[:3], 0.0)
        operator = make_local_operator(OperatorConfig(type="simulated", seed=1), config, robot)
        assert isinstance(operator, SimulatedOperatorInput)
    finally:
        robot.close()


def test_simulated_operator_drives_a_metaworld_robot(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROBOT_FAKES))
    from robot_fakes import FakePolicy

    config = RobotConfig(
        robot_id="robot-1",
        data_dir=str(tmp_path / "robots"),
        control=ControlConfig(free_running=True, max_episode_steps=80),
        robot=RobotPluginConfig(type="metaworld", task="push-v3", seed=3),
        operator=OperatorConfig(type="simulated", remote=False, seed=1),
        spool=SpoolConfig(durable=False, flush_every_steps=4),
        metrics=MetricsConfig(log_interval_s=0.0),
    )
    daemon = RobotDaemon(config, base_policy=FakePolicy(1, action_dim=4))
    (summary,) = daemon.run(max_episodes=1)
    assert daemon.spool is not None
    episode = daemon.spool.read(daemon.spool.pending()[0].episode_id)
    flags = episode.steps[INTERVENTION]
    assert summary.intervention_steps == int(flags.sum()) > 0, "the stalled policy was never taken over"
    assert episode.steps["observation.state"].shape == (summary.steps, 39)
    assert not np.allclose(episode.steps[ACTION][flags], episode.steps[POLICY_ACTION][flags])
    assert np.allclose(episode.steps[ACTION][~flags], 0.01)


def test_a_metaworld_robot_runs_under_its_deployment_preset() -> None:
    from sim.deployment import DeploymentConfig, load_deployment
    from sop.config import ConfigError

    robot = make_robot(RobotPluginConfig(task="push-v3", deployment="latency"), ControlConfig())
    nominal = make_robot(RobotPluginConfig(task="push-v3"), ControlConfig())
    try:
        assert isinstance(robot, MetaWorldRobot) and isinstance(nominal, MetaWorldRobot)
        assert robot.env.config.deployment == load_deployment("latency")
        assert nominal.env.config.deployment == DeploymentConfig()
        start = robot.start_episode().state[:3]
        assert np.array_equal(start, nominal.start_episode().state[:3])
        right = np.array([1.0, 0.0, 0.0, -1.0], dtype=np.float32)
        for _ in range(3):
            late, now = robot.step(right).observation.state[:3], nominal.step(right).observation.state[:3]
        # The commanded motion reaches the arm 3 steps later: after 3 steps it has not moved yet.
        assert np.allclose(late, start, atol=1e-3) and now[0] - start[0] > 5e-3
    finally:
        robot.close()
        nominal.close()
    with pytest.raises(ConfigError, match=r"'\.\./\.\./etc/x' is not a preset"):
        make_robot(RobotPluginConfig(task="push-v3", deployment="../../etc/x"), ControlConfig())
