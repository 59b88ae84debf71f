"""The HG-DAgger gate: who controls the robot this step, what it executes, and what is recorded.

While the operator drives, the executed action is the operator's and the policy keeps proposing; both are
recorded (`action` and `policy_action`) with `intervention=True`, so every intervention frame is an expert
label for the state the policy actually reached, and the learner can still see what the policy would have
done. When control returns to the policy, its RTI warm start (the previous chunk shifted by the executed
steps) describes a trajectory the robot did not follow: the gate reports the hand-back and the control loop
calls `policy.continue_from_actions(executed)`, which drops the queue and warm-starts the next chunk from the
actions the robot executed (no solve from noise inside the control grid).

No command reaches the robot unchecked. An operator action or a policy output of the wrong shape, with a
NaN or an Inf, or a policy that raised instead of answering, is refused: the robot executes its safe
action (`Robot.safe_action`: Meta-World holds the hand and keeps the gripper as it was), the refusal is
counted (`sop_robot_commands_refused{source,reason}`, `sop_robot_safe_action_steps`) and logged at most
every few seconds per kind. The control loop keeps its rate; one bad input never ends it.

What a held step records, and why:

- `action`: the safe action, because that is what the robot executed (the record is what happened).
- `policy_action`: the policy's output when it was usable, else the safe action. A refused output has no
  value that fits the column (wrong length) or that the learner may train on (NaN); the count of refused
  outputs is in the metrics, not in the episode.
- `intervention`: unchanged by the refusal. A step held under the policy stays `False`: the safe action is
  not an expert's choice and must not become an expert label. A step held while the operator has control
  stays `True`, as a step without a fresh teleop action already is: the operator is in charge and chose,
  by sending nothing usable, that the robot waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np

from robot_client.metrics import RobotMetrics
from robot_client.operators import OperatorDecision
from robot_client.robots import Observation
from sop.safe_logging import RateLimitedLog

log = logging.getLogger(__name__)

# Refusal reasons (the `reason` label of sop_robot_commands_refused).
WRONG_SHAPE: Final = "wrong_shape"
NON_FINITE: Final = "non_finite"
POLICY_ERROR: Final = "policy_error"


@dataclass(frozen=True)
class PolicyProposal:
    action: np.ndarray  # the policy's output, or the robot's safe action when the output was refused
    refused: bool


@dataclass(frozen=True)
class GateOutput:
    action: np.ndarray  # what the robot executes this step
    intervening: bool
    took_over: bool  # control passed to the operator at this step
    handed_back: bool  # control returned to the policy at this step
    # What goes into the `policy_action` column: the policy's output, or the safe action when it was refused.
    policy_action: np.ndarray | None = None
    # The executed action is the robot's safe action because the command in control was refused.
    held: bool = False
    # The policy's output was refused this step (its queued chunk must not be used any more).
    policy_refused: bool = False


class InterventionGate:
    def __init__(
        self,
        hold_action: Callable[[Observation], np.ndarray],
        action_dim: int,
        safe_action: Callable[[Observation], np.ndarray] | None = None,
        metrics: RobotMetrics | None = None,
        log_interval_s: float = 5.0,
    ) -> None:
        self.hold_action = hold_action
        self.safe_action = safe_action or hold_action
        self.action_dim = action_dim
        self.metrics = metrics
        self.intervening = False
        self.throttled = RateLimitedLog(log, interval_s=log_interval_s)
        self._last_executed: np.ndarray | None = None

    def reset(self) -> None:
        """A new episode starts with the policy in control."""
        self.intervening = False

    # Checks -------------------------------------------------------------------------------------------------

    def _checked(self, source: str, action: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
        """(the action as float32 (action_dim,), None) or (None, why it is refused)."""
        if action is None:
            return None, POLICY_ERROR
        try:
            values = np.asarray(action, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            return None, WRONG_SHAPE
        if values.shape != (self.action_dim,):
            self.throttled.warning(
                f"{source}-{WRONG_SHAPE}",
                "%s action has %d values, the robot takes %d: refused, the robot executes its safe action",
                source,
                values.size,
                self.action_dim,
            )
            return None, WRONG_SHAPE
        if not np.isfinite(values).all():
            self.throttled.warning(
                f"{source}-{NON_FINITE}",
                "%s action %s is not finite: refused, the robot executes its safe action",
                source,
                np.array2string(values[:8], precision=3),
            )
            return None, NON_FINITE
        return values, None

    def _refused(self, source: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.commands_refused.labels(source, reason).inc()

    def _robot_action(self, which: str, observation: Observation) -> np.ndarray:
        """The robot's hold or safe action; should the plug-in's own be unusable, the last executed action
        (zeros before the first): a bug in a plug-in must not end the control loop either."""
        make = self.hold_action if which == "hold" else self.safe_action
        try:
            values = np.asarray(make(observation), dtype=np.float32).reshape(-1)
            usable = values.shape == (self.action_dim,) and bool(np.isfinite(values).all())
        except Exception as exc:  # a plug-in's bug: logged with its type, then the fallback below
            self.throttled.warning(
                f"{which}-action-error", "the robot's %s action raised %s: %s", which, type(exc).__name__, exc
            )
            usable = False
        if usable:
            return values
        self.throttled.warning(
            f"{which}-action-unusable",
            "the robot's %s action is unusable; repeating the last executed action instead",
            which,
        )
        last = self._last_executed
        return last.copy() if last is not None else np.zeros(self.action_dim, dtype=np.float32)

    # Deciding -----------------------------------------------------------------------------------------------

    def check_policy(self, observation: Observation, policy_action: np.ndarray | None) -> PolicyProposal:
        """The policy's output if it may run, else the robot's safe action (refusal counted and logged).
        `policy_action` None: the policy raised instead of answering (the caller logged why). Operators
        are shown the checked proposal, never a NaN or a vector of the wrong length."""
        proposed, problem = self._checked("policy", policy_action)
        if proposed is not None:
            return PolicyProposal(proposed, refused=False)
        assert problem is not None
        self._refused("policy", problem)
        return PolicyProposal(self._robot_action("safe", observation), refused=True)

    def hold_proposal(self, observation: Observation) -> PolicyProposal:
        """The robot's hold action in the policy's place, for a tick the policy has no action for yet
        (asynchronous inference running late): not a refusal, the policy did nothing wrong."""
        return PolicyProposal(self._robot_action("hold", observation), refused=False)

    def count_policy_error(self) -> None:
        """The policy raised outside `check_policy` (on the inference thread): counted as a refusal."""
        self._refused("policy", POLICY_ERROR)

    def decide(
        self,
        observation: Observation,
        proposal: PolicyProposal | np.ndarray | None,
        decision: OperatorDecision,
    ) -> GateOutput:
        """Who drives this step and with what. `proposal`: from `check_policy` (a raw policy output is
        checked here)."""
        if not isinstance(proposal, PolicyProposal):
            proposal = self.check_policy(observation, proposal)
        was = self.intervening
        self.intervening = decision.intervening
        held = False
        if decision.intervening and decision.action is None:
            action = self._robot_action("hold", observation)  # the operator holds control silently
        elif decision.intervening:
            checked, problem = self._checked("operator", decision.action)
            if checked is not None:
                action = checked
            else:
                assert problem is not None
                self._refused("operator", problem)
                action, held = self._robot_action("safe", observation), True
        else:
            action, held = proposal.action, proposal.refused
        if held and self.metrics is not None:
            self.metrics.safe_action_steps.inc()
        self._last_executed = action
        return GateOutput(
            action=action,
            intervening=decision.intervening,
            took_over=decision.intervening and not was,
            handed_back=was and not decision.intervening,
            policy_action=proposal.action,
            held=held,
            policy_refused=proposal.refused,
        )
