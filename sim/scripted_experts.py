"""The scripted expert of every task: Meta-World's hand-written policies, behind one small interface.

All 50 tasks use Meta-World's own policy (`metaworld.policies.ENV_POLICY_MAP`), two of them corrected as
below. Whether a stock policy solves its task is measured, not assumed:
`benchmarks/results/suite_fitness.json` lists, per task, how often it does, and the tasks where it does
not are left as Meta-World wrote them (a policy reworked until the numbers look right would hide the
problem).

The simulated operator drives with these, and the offline demonstrations are recorded with them. They
read only the 39-dim state (the goal must be visible in it, which `MetaWorldEnv` guarantees).

Two stock policies are corrected here. Meta-World's peg-insert-side expert solves 86 % of seeded layouts
within 200 steps (80 % of seeds 0-19): two thresholds in it are a millimetre off. It keeps pressing down
on a peg that it has already grasped when the peg rests 25-26 mm below the hand's lowest reachable point,
and it steers the hand (not the peg, which hangs ~3 cm lower) to the hole's height, so the peg can stop
just outside the 3 cm alignment radius. `CorrectedPegInsertionSidePolicy` treats a closed gripper at the
peg's height as a grasp and steers the peg itself; it solves 200 of 200 seeded layouts in 200 steps.

Meta-World's push expert only works from states it produces itself. It lowers the open hand over the
puck and closes the fingers on the way down; if a policy closed the fingers before the operator took
over, the closed fingers rest on top of the puck, the hand stays 6 cm up, and the expert keeps pressing
down with the gripper closed until the episode ends (85 of the 89 push episodes of one fleet demo run
ended so, the operator driving). `CorrectedPushPolicy` notices closed fingers above the puck, lifts the
hand and opens them, then hands on to the stock expert.

Every expert is a sequence of phases (above the object, down to it, to the goal), and in each it moves
the hand toward one point, its *sub-goal* (`ScriptedExpert.subgoal`). The simulated operator judges a
policy against that point, the way a person judges a robot by what it should be doing next rather than by
how far the task is from done. Meta-World's policies compute it in `_desired_pos` and move the hand
toward it in `get_action`, all but reach and drawer-open, which compute it inline in `get_action`; their
two are restated here (`_INLINE_SUBGOALS`), and tests check that every expert's action points at its
sub-goal.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from metaworld.policies import (
    ENV_POLICY_MAP,
    SawyerDrawerOpenV3Policy,
    SawyerPegInsertionSideV3Policy,
    SawyerPushV3Policy,
    SawyerReachV3Policy,
)
from metaworld.policies.policy import Policy, move

from sim.metaworld_env import ACTION_DIM, STATE_DIM
from sim.tasks import MT50_TASKS, get_task

# Gripper opening (state[3], 1 = fully open) below which the fingers have closed on the peg.
_PEG_GRIPPER_CLOSED: Final = 0.4
# Hand-to-peg height difference that still counts as holding the peg once the gripper has closed.
_PEG_HOLD_HEIGHT: Final = 0.03


class CorrectedPegInsertionSidePolicy(SawyerPegInsertionSideV3Policy):
    """Meta-World's peg-insert-side expert with the grasp and alignment tests fixed (see module doc)."""

    @staticmethod
    def _desired_pos(o_d: dict[str, npt.NDArray[np.float64]]) -> npt.NDArray[Any]:
        pos_curr = o_d["hand_pos"]
        pos_peg = o_d["peg_pos"]
        # Side insertion: the hole is at x = -0.35 (overshooting is harmless), at the goal's y, z = 0.16.
        pos_hole = np.array([-0.35, o_d["goal_pos"][1], 0.16])
        grasped = (
            float(o_d["gripper_distance_apart"]) < _PEG_GRIPPER_CLOSED
            and abs(pos_curr[2] - pos_peg[2]) < _PEG_HOLD_HEIGHT
        )
        hand_from_peg = pos_curr - pos_peg

        if np.linalg.norm(pos_curr[:2] - pos_peg[:2]) > 0.04:
            return pos_peg + np.array([0.0, 0.0, 0.3])
        if abs(pos_curr[2] - pos_peg[2]) > 0.025 and not grasped:
            return pos_peg
        if np.linalg.norm(pos_peg[1:] - pos_hole[1:]) > 0.03:
            return pos_hole + np.array([0.4, 0.0, 0.0]) + hand_from_peg
        return pos_hole + hand_from_peg


# Gripper opening below which the fingers have closed: the push expert descends with the opening >= 0.78.
_PUSH_FINGERS_CLOSED: Final = 0.6
# Gripper opening of fingers opened again (they rest at 1.0).
_PUSH_FINGERS_OPEN: Final = 0.95
# Height above the puck at which the push expert's descent starts closing the fingers (its 0.10) + margin.
_PUSH_REOPEN_HEIGHT: Final = 0.12


class CorrectedPushPolicy(SawyerPushV3Policy):
    """Meta-World's push expert that first reopens fingers a policy closed above the puck (module doc).

    Reopening is latched: once the fingers are found closed above the puck, the hand rises above the
    height where the stock expert starts closing them and opens them fully before the stock expert
    descends again (without the latch the two would alternate at the threshold). The latch clears itself
    once the hand is open and high, or no longer over the puck, so one instance serves many episodes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reopening = False

    def get_action(self, obs: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        if self._update_reopening(obs):
            delta = move(obs[:3], to_xyz=self._reopen_point(obs), p=10.0)
            return np.append(np.clip(delta, -1.0, 1.0), -1.0).astype(np.float32)
        return super().get_action(obs)

    def subgoal(self, obs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Where `get_action` moves the hand: the reopen point while reopening, else the stock target.

        It updates the latch exactly as `get_action` does, and a second call on the same state (or
        `get_action` after `subgoal`) leaves it as the first did, so asking for both is harmless.
        """
        if self._update_reopening(obs):
            return self._reopen_point(obs)
        return np.asarray(self._desired_pos(self._parse_obs(obs)), dtype=np.float64)

    def _update_reopening(self, obs: npt.NDArray[np.float64]) -> bool:
        hand, opening, puck = obs[:3], float(obs[3]), obs[4:7]
        above_puck = bool(np.linalg.norm(hand[:2] - puck[:2] - np.array([-0.005, 0.0])) <= 0.02)
        height = float(hand[2] - puck[2])
        if above_puck and height > 0.04 and opening < _PUSH_FINGERS_CLOSED:
            self._reopening = True
        if not above_puck or (opening >= _PUSH_FINGERS_OPEN and height >= _PUSH_REOPEN_HEIGHT - 0.01):
            self._reopening = False
        return self._reopening

    @staticmethod
    def _reopen_point(obs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(obs[4:7] + np.array([0.0, 0.0, _PUSH_REOPEN_HEIGHT]), dtype=np.float64)


def _reach_subgoal(state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return state[36:39]


def _drawer_open_subgoal(state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # SawyerDrawerOpenV3Policy.get_action's three targets (it changes its gain per phase, hence inline).
    hand, handle = state[:3], state[4:7] + np.array([0.0, 0.0, -0.02])
    if np.linalg.norm(hand[:2] - handle[:2]) > 0.06:
        return handle + np.array([0.0, 0.0, 0.3])
    if abs(hand[2] - handle[2]) > 0.04:
        return handle
    return handle + np.array([0.0, -0.06, 0.0])


# Sub-goals of the stock policies that have no `_desired_pos`.
_INLINE_SUBGOALS: Final[dict[type[Policy], Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]]] = {
    SawyerReachV3Policy: _reach_subgoal,
    SawyerDrawerOpenV3Policy: _drawer_open_subgoal,
}


# Meta-World's policies, corrected where a stock one has a bug (module doc).
_CORRECTED_POLICIES: Final[dict[str, type[Policy]]] = {
    "push-v3": CorrectedPushPolicy,
    "peg-insert-side-v3": CorrectedPegInsertionSidePolicy,
}
EXPERT_POLICIES: Final[dict[str, type[Policy]]] = {
    task: _CORRECTED_POLICIES[task] if task in _CORRECTED_POLICIES else ENV_POLICY_MAP[task]
    for task in MT50_TASKS
}


class ScriptedExpert:
    """A task's scripted policy: state in, clipped float32 action out."""

    def __init__(self, task: str) -> None:
        self.task = get_task(task).name
        self._policy = EXPERT_POLICIES[self.task]()

    def act(self, state: npt.ArrayLike) -> np.ndarray:
        """The expert's action for a 39-dim state, in [-1, 1]."""
        array = self._state_copy(state)
        with warnings.catch_warnings():
            # Meta-World's `move` warns whenever a proportional gain saturates, i.e. on most steps.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = self._policy.get_action(array)
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        assert action.shape == (ACTION_DIM,)
        return action

    def subgoal(self, state: npt.ArrayLike) -> np.ndarray:
        """Where the expert moves the hand from this state (xyz, metres): its current phase's target.

        Stateful experts (push's reopening latch) update their state here exactly as `act` would on the
        same state, so an operator that only watches must use an expert instance of its own.
        """
        array = self._state_copy(state)
        policy = self._policy
        if isinstance(policy, CorrectedPushPolicy):
            target = policy.subgoal(array)
        elif type(policy) in _INLINE_SUBGOALS:
            target = _INLINE_SUBGOALS[type(policy)](array)
        else:
            # A staticmethod or a plain method alike, called on the instance.
            target = policy._desired_pos(policy._parse_obs(array))  # type: ignore[attr-defined]
        return np.array(target, dtype=np.float64)

    @staticmethod
    def _state_copy(state: npt.ArrayLike) -> npt.NDArray[np.float64]:
        # A copy: some Meta-World policies edit slices of their input in place (door-open does).
        array = np.array(state, dtype=np.float64)
        if array.shape != (STATE_DIM,):
            raise ValueError(f"state must have shape ({STATE_DIM},), got {array.shape}")
        return array
