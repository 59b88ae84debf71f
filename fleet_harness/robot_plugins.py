"""The simulator as robot-daemon plug-ins: the `metaworld` robot kind and the `simulated` operator kind.

They live in the harness, not in `sim/`, because they join two packages that otherwise stay apart: `sim`
(environments, the simulated operator) knows nothing of the daemon, and `robot_client` never imports this
module (a daemon on a real arm must not need MuJoCo or Meta-World). The daemon finds the two kinds by name
through the entry points declared in pyproject.toml

    [project.entry-points."sop.robot_kinds"]
    metaworld = "fleet_harness.robot_plugins:make_metaworld_robot"

    [project.entry-points."sop.operator_kinds"]
    simulated = "fleet_harness.robot_plugins:make_simulated_operator"

and imports it only when a config asks for one of them (`robot.type: metaworld`, `operator.type: simulated`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robot_client.config import ControlConfig, OperatorConfig, RobotPluginConfig
from robot_client.operators import OperatorDecision, OperatorInput
from robot_client.robots import Observation, Robot, StepResult
from sim.deployment import load_deployment
from sim.metaworld_env import ACTION_DIM, STATE_DIM, EnvConfig, make_env
from sim.operator import SimulatedOperator, SimulatedOperatorConfig


class MetaWorldRobot(Robot):
    """A Meta-World task of `sim/` as a robot (the CI harness and the demo), under the deployment conditions
    `robot.deployment` names (its latency, sensing noise and moved layouts act inside the environment, so
    the daemon, its policy and its operator see the deployed world as a real robot's would)."""

    def __init__(self, config: RobotPluginConfig, control: ControlConfig) -> None:
        self.deployment = load_deployment(config.deployment)
        self.env = make_env(
            config.task,
            EnvConfig(
                max_episode_steps=control.max_episode_steps,
                image=config.image,
                camera=config.camera,
                image_height=config.image_size,
                image_width=config.image_size,
                deployment=self.deployment,
            ),
            seed=config.seed,
        )
        self.task = config.task
        self.state_dim = int(STATE_DIM)
        self.action_dim = int(ACTION_DIM)
        self.cameras = (config.camera,) if config.image else ()
        self._instruction_override = config.instruction

    def _observation(self, raw: dict[str, Any]) -> Observation:
        images = {self.cameras[0]: raw["image"]} if self.cameras and "image" in raw else {}
        instruction = self._instruction_override or str(raw["instruction"])
        return Observation(np.asarray(raw["state"], dtype=np.float32), instruction, self.task, images)

    def start_episode(self) -> Observation:
        raw, _info = self.env.reset()
        return self._observation(raw)

    def step(self, action: np.ndarray) -> StepResult:
        raw, reward, terminated, truncated, info = self.env.step(action)
        return StepResult(
            observation=self._observation(raw),
            reward=float(reward),
            success=bool(info.get("success", False)),
            done=bool(terminated or truncated),
        )

    def hold_action(self, observation: Observation) -> np.ndarray:
        # Meta-World actions are hand displacements: zero displacement holds; keep the gripper as it is
        # (observation.state[3] is the opening, the action's last entry is the closing effort).
        hold = np.zeros(self.action_dim, dtype=np.float32)
        hold[-1] = np.float32(1.0 if observation.state[3] < 0.5 else -1.0)
        return hold

    def safe_action(self, observation: Observation) -> np.ndarray:
        # Zero hand motion with the gripper kept as it was: an object in the gripper is not dropped and
        # an open gripper does not close on something it should not hold. That is the hold action.
        return self.hold_action(observation)

    def close(self) -> None:
        self.env.close()


class SimulatedOperatorInput(OperatorInput):
    """The simulated operator of `sim/operator.py` (the scripted expert acting like a person: reaction
    delay, noise) as the daemon's local operator input."""

    def __init__(self, task: str, seed: int = 0) -> None:
        self.operator = SimulatedOperator(task, SimulatedOperatorConfig(), seed=seed)

    @staticmethod
    def _raw(observation: Observation) -> dict[str, Any]:
        return observation.policy_input()

    def begin_episode(self, episode_id: str, observation: Observation) -> None:
        self.operator.reset(self._raw(observation))

    def step(self, observation: Observation, policy_action: np.ndarray, success: bool) -> OperatorDecision:
        decision = self.operator.step(self._raw(observation), policy_action, {"success": success})
        action = None if decision.action is None else np.asarray(decision.action, dtype=np.float32)
        event = decision.event
        text = (
            None
            if event is None
            else f"simulated operator {type(event).__name__}: {getattr(event, 'reason', event)}"
        )
        return OperatorDecision(intervening=bool(decision.intervening), action=action, event=text)


def make_metaworld_robot(config: RobotPluginConfig, control: ControlConfig) -> MetaWorldRobot:
    """The `metaworld` robot kind: `robot.task` is a Meta-World task id of `sim/tasks.py`."""
    return MetaWorldRobot(config, control)


def make_simulated_operator(
    config: OperatorConfig, robot_config: RobotPluginConfig, robot: Robot
) -> SimulatedOperatorInput:
    """The `simulated` operator kind: the scripted expert of the robot's task, seeded by `operator.seed`."""
    return SimulatedOperatorInput(robot_config.task, seed=config.seed)
