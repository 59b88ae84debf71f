"""Robots the daemon can drive, behind one small interface.

`Robot` is what the control loop needs from a body: start an episode, apply one action, say what a
"hold still" action is and what its safe action is (what runs instead of a command that must not: a
teleop action of the wrong length, a policy output with a NaN).

`make_robot` builds the robot kind that `robot.type` names, looked up in `robot_client.kinds` (this module
never imports a simulator or a driver it does not need). Two kinds are robot_client's own:

- `lerobot`: any arm lerobot supports, through lerobot's `Robot` (`get_observation` / `send_action`);
  state and action vectors are the robot's float features in lerobot's order.
- `factory`: anything else, through a `module:function` that returns a `Robot`.

Other packages provide more (`fleet_harness` provides `metaworld`, a simulated Meta-World task of `sim/`:
`fleet_harness/robot_plugins.py`).
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_client.config import ControlConfig, RobotPluginConfig
from robot_client.kinds import ROBOT_KINDS


@dataclass
class Observation:
    """What the robot sees at one step (its policy-input and episode-key spellings: `sop.policies.base`)."""

    state: np.ndarray  # float32 (state_dim,)
    instruction: str
    task: str
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint8 (H, W, 3)

    def policy_input(self) -> dict[str, Any]:
        """The observation dict of the `sop.policies` interface: state, instruction, task, optional image."""
        observation: dict[str, Any] = {
            "state": self.state,
            "instruction": self.instruction,
            "task": self.task,
        }
        if self.images:
            observation["image"] = next(iter(self.images.values()))
        return observation


@dataclass
class StepResult:
    observation: Observation
    reward: float = 0.0
    # The task was achieved at this step (simulator success test; a real arm does not know).
    success: bool = False
    # The robot ended the episode (simulator terminated or truncated).
    done: bool = False
    # The action actually applied when the robot changed it (safety clipping); None: as sent.
    applied_action: np.ndarray | None = None


class Robot(abc.ABC):
    """A body the control loop drives at a fixed rate."""

    task: str
    state_dim: int
    action_dim: int
    cameras: tuple[str, ...] = ()

    @abc.abstractmethod
    def start_episode(self) -> Observation:
        """Bring the robot to the start of an episode and return the first observation."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action and return what followed."""

    @abc.abstractmethod
    def hold_action(self, observation: Observation) -> np.ndarray:
        """An action that keeps the robot where it is (used while an operator holds control silently)."""

    def safe_action(self, observation: Observation) -> np.ndarray:
        """What the robot executes in place of a command that must not run (wrong shape, NaN / Inf, a
        policy that raised): by default its hold action. A robot type for which holding is not the safest
        thing to do (a balancing robot, a conveyor that must keep moving) overrides this. It must return
        finite values of shape (action_dim,); the control loop falls back to the last executed action
        (zeros before the first) when it does not."""
        return self.hold_action(observation)

    def close(self) -> None:  # noqa: B027 (optional hook: most robots hold nothing to release)
        """Release the hardware or the simulator."""


def _is_image_feature(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 3


class LeRobotRobot(Robot):
    """Adapter for a lerobot `Robot`: flat feature dicts in, flat feature dicts out.

    The state vector is the robot's scalar observation features in lerobot's declared order, images are
    its (H, W, 3) features, and the action vector maps one to one onto `action_features`. Holding still
    means commanding the current reading of every action key the robot also observes (position control);
    that is also its safe action (an action key it does not observe is commanded 0).
    """

    def __init__(self, robot: Any, task: str, instruction: str = "", connect: bool = True) -> None:
        self.robot = robot
        self.task = task
        self.instruction = instruction or task
        observation_features: dict[str, Any] = dict(robot.observation_features)
        self.state_keys = [k for k, v in observation_features.items() if not _is_image_feature(v)]
        self.cameras = tuple(k for k, v in observation_features.items() if _is_image_feature(v))
        self.action_keys = list(robot.action_features)
        self.state_dim = len(self.state_keys)
        self.action_dim = len(self.action_keys)
        if self.action_dim == 0:
            raise ValueError(f"lerobot robot {robot}: action_features is empty; nothing to drive")
        if connect and not robot.is_connected:
            robot.connect()

    def _observation(self, raw: dict[str, Any]) -> Observation:
        missing = [k for k in self.state_keys if k not in raw]
        if missing:
            raise ValueError(f"lerobot robot {self.robot}: observation lacks {missing[:4]}")
        state = np.asarray([float(raw[k]) for k in self.state_keys], dtype=np.float32)
        images = {
            name: np.ascontiguousarray(raw[name], dtype=np.uint8) for name in self.cameras if name in raw
        }
        return Observation(state, self.instruction, self.task, images)

    def start_episode(self) -> Observation:
        return self._observation(self.robot.get_observation())

    def step(self, action: np.ndarray) -> StepResult:
        values = np.asarray(action, dtype=np.float32).reshape(-1)
        if values.size != self.action_dim:
            raise ValueError(
                f"action has {values.size} values, the robot takes {self.action_dim}: {self.action_keys}"
            )
        sent = self.robot.send_action({k: float(v) for k, v in zip(self.action_keys, values, strict=True)})
        applied = None
        if isinstance(sent, dict) and all(k in sent for k in self.action_keys):
            applied = np.asarray([float(sent[k]) for k in self.action_keys], dtype=np.float32)
        return StepResult(observation=self._observation(self.robot.get_observation()), applied_action=applied)

    def hold_action(self, observation: Observation) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.state_keys)}
        return np.asarray(
            [observation.state[index[k]] if k in index else 0.0 for k in self.action_keys], dtype=np.float32
        )

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()


def _import_plugin_modules(package_name: str) -> None:
    """Import every submodule of a lerobot device package, so its config types register with draccus.
    A module whose optional hardware SDK is missing is skipped; its type then stays unknown."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg:
            try:
                importlib.import_module(f"{package_name}.{module.name}")
            except ImportError:
                continue


def load_lerobot_device_config(base: type, package_name: str, path: str | Path) -> Any:
    """A lerobot RobotConfig / TeleoperatorConfig from a YAML file with its `type` key."""
    import draccus

    _import_plugin_modules(package_name)
    with open(path) as handle, draccus.config_type("yaml"):
        return draccus.load(base, handle)


def load_factory(path: str) -> Callable[..., Any]:
    """`package.module:function` -> the function."""
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"factory {path!r}: module {module_name} has no {attribute!r}") from None
    if not callable(factory):
        raise ValueError(f"factory {path!r} is not callable")
    return factory


def make_lerobot_robot(config: RobotPluginConfig, control: ControlConfig) -> Robot:
    """The `lerobot` robot kind: the arm described by the lerobot RobotConfig file `robot.lerobot_config`."""
    from lerobot.robots import RobotConfig as LeRobotConfig
    from lerobot.robots import make_robot_from_config

    assert config.lerobot_config is not None
    device_config = load_lerobot_device_config(LeRobotConfig, "lerobot.robots", config.lerobot_config)
    return LeRobotRobot(make_robot_from_config(device_config), config.task, config.instruction)


def make_factory_robot(config: RobotPluginConfig, control: ControlConfig) -> Robot:
    """The `factory` robot kind: `robot.factory` ("package.module:function") builds the robot."""
    assert config.factory is not None
    robot = load_factory(config.factory)(config, control)
    if not isinstance(robot, Robot):
        raise ValueError(f"robot.factory {config.factory!r} returned {type(robot).__name__}, not a Robot")
    return robot


def make_robot(config: RobotPluginConfig, control: ControlConfig) -> Robot:
    """The robot the config names: the factory of kind `robot.type` (see `robot_client.kinds`)."""
    robot = ROBOT_KINDS.load(config.type)(config, control)
    if not isinstance(robot, Robot):
        raise ValueError(f"robot.type {config.type!r} built a {type(robot).__name__}, not a Robot")
    return robot
