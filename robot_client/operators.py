"""Operator inputs: who may take control from the policy, and with which actions.

Sources, one interface (`OperatorInput.step -> OperatorDecision`):

- A local input of the kind `operator.type` names, looked up in `robot_client.kinds`: robot_client's own
  are `none`, `lerobot_teleop` and `factory` (a `module:function`); other packages provide more
  (`fleet_harness` provides `simulated`, the simulator's scripted expert acting like a person:
  `fleet_harness/robot_plugins.py`).
- `LeRobotTeleopInput`: a lerobot `Teleoperator` (leader arm, gamepad, keyboard). Devices that report
  intervention events (`get_teleop_events`, e.g. the gamepad's intervention button) gate control
  themselves; a leader arm without events drives only while the console has taken over (or always, when
  configured so).
- `RemoteCommands`: take-over / hand-back / teleop actions / outcome labels from the web console,
  arriving over `Operator.Session` (see `operator_session.py`).

`OperatorPanel` combines a local input with the remote console: the console wins while it has taken over.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from robot_client.config import OperatorConfig, RobotPluginConfig
from robot_client.kinds import OPERATOR_KINDS
from robot_client.robots import LeRobotRobot, Observation, Robot, load_factory, load_lerobot_device_config
from sop.episode import OPERATOR_ID_PATTERN, Outcome
from sop.safe_logging import client_str

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorDecision:
    """What an operator input says about the current step."""

    # The operator is in control this step: the executed action is the operator's, not the policy's.
    intervening: bool
    # The operator's action (None while intervening: hold still). A device may offer an action while not
    # intervening; it is used when another input (the console) hands control to the operator.
    action: np.ndarray | None = None
    # Free text for the logs ("stalled", "take over: wrong object", ...).
    event: str | None = None
    # An outcome label for the running episode; overrides the simulator's verdict.
    outcome: Outcome | None = None
    # End the episode after this step (an operator's "done" / "terminate").
    end_episode: bool = False
    # Who is in control while intervening: the console user's name, or the local input's `local:<kind>`
    # (recorded per frame range in the episode: `sop.episode.OPERATOR_FRAMES`).
    operator_id: str = ""


AUTONOMOUS = OperatorDecision(intervening=False)


class OperatorInput(abc.ABC):
    """One source of operator decisions, asked once per control step."""

    def begin_episode(self, episode_id: str, observation: Observation) -> None:  # noqa: B027 (optional hook)
        """A new episode starts with this observation."""

    @abc.abstractmethod
    def step(self, observation: Observation, policy_action: np.ndarray, success: bool) -> OperatorDecision:
        """Decide for this step, having seen the policy's proposal and whether the task is achieved."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the device."""


class LeRobotTeleopInput(OperatorInput):
    """Adapter for a lerobot `Teleoperator`: its action dict is mapped onto the robot's action keys."""

    def __init__(
        self, teleop: Any, action_keys: Sequence[str], always_intervenes: bool = False, connect: bool = True
    ) -> None:
        self.teleop = teleop
        self.action_keys = list(action_keys)
        missing = [k for k in self.action_keys if k not in teleop.action_features]
        if missing:
            raise ValueError(f"teleoperator {teleop} has no action keys {missing} that the robot needs")
        self.always_intervenes = always_intervenes
        self.has_events = callable(getattr(teleop, "get_teleop_events", None))
        if connect and not teleop.is_connected:
            teleop.connect()

    def step(self, observation: Observation, policy_action: np.ndarray, success: bool) -> OperatorDecision:
        raw = self.teleop.get_action()
        action = np.asarray([float(raw[k]) for k in self.action_keys], dtype=np.float32)
        if not self.has_events:
            return OperatorDecision(intervening=self.always_intervenes, action=action)
        from lerobot.teleoperators.utils import TeleopEvents

        events = self.teleop.get_teleop_events()
        outcome = None
        if events.get(TeleopEvents.SUCCESS):
            outcome = Outcome.SUCCESS
        elif events.get(TeleopEvents.FAILURE):
            outcome = Outcome.FAILURE
        return OperatorDecision(
            intervening=bool(events.get(TeleopEvents.IS_INTERVENTION, False)),
            action=action,
            outcome=outcome,
            end_episode=bool(events.get(TeleopEvents.TERMINATE_EPISODE, False)) or outcome is not None,
        )

    def close(self) -> None:
        if self.teleop.is_connected:
            self.teleop.disconnect()


@dataclass(frozen=True)
class RemoteState:
    intervening: bool
    action: np.ndarray | None  # the newest teleop action, when fresh
    event: str | None
    operator_id: str = ""  # who took over (the console user), while intervening


class RemoteCommands:
    """The console's commands as they arrive from `Operator.Session`, read by the control loop each step.

    Written by the session thread, read by the control thread: everything goes through one lock and the
    control thread only copies a few fields.
    """

    def __init__(self, teleop_timeout_s: float = 0.5) -> None:
        self.teleop_timeout_s = teleop_timeout_s
        self._lock = threading.Lock()
        self._intervening = False
        self._operator_id = ""
        self._action: np.ndarray | None = None
        self._action_at = 0.0
        self._events: list[str] = []
        self._labels: dict[str, Outcome] = {}

    @property
    def intervening(self) -> bool:
        with self._lock:
            return self._intervening

    def take_over(self, operator_id: str, reason: str) -> None:
        with self._lock:
            self._intervening = True
            # The relay sends the console user's name; anything else is attributed to no one by name.
            self._operator_id = operator_id if OPERATOR_ID_PATTERN.fullmatch(operator_id) else "console"
            self._action = None
            self._events.append(
                f"console take-over by {client_str(operator_id or 'operator')}: {client_str(reason)}"
            )

    def hand_back(self, operator_id: str, reason: str) -> None:
        with self._lock:
            self._intervening = False
            self._operator_id = ""
            self._action = None
            self._events.append(
                f"console hand-back by {client_str(operator_id or 'operator')}: {client_str(reason)}"
            )

    def teleop(self, action: np.ndarray, now: float | None = None) -> None:
        """A teleop action counts only while the console has taken over; one sent before is ignored."""
        with self._lock:
            if self._intervening:
                self._action = np.asarray(action, dtype=np.float32).copy()
                self._action_at = time.monotonic() if now is None else now

    def label(self, episode_id: str, outcome: Outcome) -> None:
        with self._lock:
            self._labels[episode_id] = outcome

    def take_label(self, episode_id: str) -> Outcome | None:
        with self._lock:
            return self._labels.pop(episode_id, None)

    def drain_labels(self) -> dict[str, Outcome]:
        with self._lock:
            labels, self._labels = self._labels, {}
            return labels

    def poll(self, now: float | None = None) -> RemoteState:
        now = time.monotonic() if now is None else now
        with self._lock:
            fresh = self._action is not None and now - self._action_at <= self.teleop_timeout_s
            event = "; ".join(self._events) if self._events else None
            self._events.clear()
            return RemoteState(self._intervening, self._action if fresh else None, event, self._operator_id)


class OperatorPanel:
    """Everything that may take control, merged into one decision per step.

    Precedence: the console (when it has taken over) > the local input. While the console drives, its fresh
    teleop action is executed; without one, the local device's action (a leader arm the console put in
    charge); without either, the robot holds still (the gate asks the robot for a hold action).
    """

    def __init__(
        self, local: OperatorInput | None, remote: RemoteCommands | None, local_operator_id: str = "local"
    ) -> None:
        self.local = local
        self.remote = remote
        self.local_operator_id = local_operator_id
        self.episode_id = ""

    def begin_episode(self, episode_id: str, observation: Observation) -> None:
        self.episode_id = episode_id
        if self.local is not None:
            self.local.begin_episode(episode_id, observation)

    def step(self, observation: Observation, policy_action: np.ndarray, success: bool) -> OperatorDecision:
        local = self.local.step(observation, policy_action, success) if self.local is not None else AUTONOMOUS
        if local.intervening and not local.operator_id:
            local = replace(local, operator_id=self.local_operator_id)
        if self.remote is None:
            return local
        remote = self.remote.poll()
        label = self.remote.take_label(self.episode_id) if self.episode_id else None
        outcome = label if label is not None else local.outcome
        end = local.end_episode or label is not None
        events = "; ".join(e for e in (remote.event, local.event) if e) or None
        if remote.intervening:
            action = remote.action if remote.action is not None else local.action
            return OperatorDecision(True, action, events, outcome, end, remote.operator_id or "console")
        return OperatorDecision(local.intervening, local.action, events, outcome, end, local.operator_id)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()


def make_no_operator(config: OperatorConfig, robot_config: RobotPluginConfig, robot: Robot) -> None:
    """The `none` operator kind: no local operator (the remote console may still take over)."""
    return None


def make_lerobot_teleop(
    config: OperatorConfig, robot_config: RobotPluginConfig, robot: Robot
) -> LeRobotTeleopInput:
    """The `lerobot_teleop` operator kind: the teleoperator of the lerobot config file `operator.teleop_config`,
    mapped onto the action keys of a `lerobot` robot."""
    from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config

    if not isinstance(robot, LeRobotRobot):
        raise ValueError(
            "operator.type lerobot_teleop needs a robot with named action keys (robot.type lerobot)"
        )
    assert config.teleop_config is not None
    device_config = load_lerobot_device_config(
        TeleoperatorConfig, "lerobot.teleoperators", config.teleop_config
    )
    return LeRobotTeleopInput(
        make_teleoperator_from_config(device_config), robot.action_keys, config.teleop_always_intervenes
    )


def make_factory_operator(
    config: OperatorConfig, robot_config: RobotPluginConfig, robot: Robot
) -> OperatorInput:
    """The `factory` operator kind: `operator.factory` ("package.module:function") builds the input from
    (operator config, robot config)."""
    assert config.factory is not None
    operator = load_factory(config.factory)(config, robot_config)
    if not isinstance(operator, OperatorInput):
        raise ValueError(
            f"operator.factory {config.factory!r} returned {type(operator).__name__}, not an OperatorInput"
        )
    return operator


def make_local_operator(
    config: OperatorConfig, robot_config: RobotPluginConfig, robot: Robot
) -> OperatorInput | None:
    """The local operator input of kind `operator.type` (see `robot_client.kinds`) for this robot; None
    when the kind provides none (`none`)."""
    operator = OPERATOR_KINDS.load(config.type)(config, robot_config, robot)
    if operator is not None and not isinstance(operator, OperatorInput):
        raise ValueError(
            f"operator.type {config.type!r} built a {type(operator).__name__}, not an OperatorInput"
        )
    return operator
