"""The HG-DAgger gate: who controls the robot this step, and what is recorded.

While the operator drives, the executed action is the operator's and the policy keeps proposing; both are
recorded (`action` and `policy_action`) with `intervention=True`, so every intervention frame is an expert
label for the state the policy actually reached, and the learner can still see what the policy would have
done. When control returns to the policy, its RTI warm start (the previous chunk shifted by the executed
steps) describes a trajectory the robot did not follow, so the next chunk must come from a full solve:
the gate reports the hand-back and the control loop calls `policy.invalidate_warm_start()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_client.operators import OperatorDecision
from robot_client.robots import Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateOutput:
    action: np.ndarray  # what the robot executes this step
    intervening: bool
    took_over: bool  # control passed to the operator at this step
    handed_back: bool  # control returned to the policy at this step


class InterventionGate:
    def __init__(self, hold_action: Callable[[Observation], np.ndarray], action_dim: int) -> None:
        self.hold_action = hold_action
        self.action_dim = action_dim
        self.intervening = False

    def reset(self) -> None:
        """A new episode starts with the policy in control."""
        self.intervening = False

    def _operator_action(self, observation: Observation, decision: OperatorDecision) -> np.ndarray:
        if decision.action is None:
            return np.asarray(self.hold_action(observation), dtype=np.float32)
        action = np.asarray(decision.action, dtype=np.float32).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"operator action has shape {action.shape}, the robot takes ({self.action_dim},)"
            )
        if not np.isfinite(action).all():
            log.error("operator action %s is not finite; holding still instead", action.tolist())
            return np.asarray(self.hold_action(observation), dtype=np.float32)
        return action

    def decide(
        self, observation: Observation, policy_action: np.ndarray, decision: OperatorDecision
    ) -> GateOutput:
        was = self.intervening
        self.intervening = decision.intervening
        if decision.intervening:
            action = self._operator_action(observation, decision)
        else:
            action = np.asarray(policy_action, dtype=np.float32).reshape(-1)
        return GateOutput(
            action=action,
            intervening=decision.intervening,
            took_over=decision.intervening and not was,
            handed_back=was and not decision.intervening,
        )
