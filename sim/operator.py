"""A simulated person who watches the robot's policy and takes over when it goes wrong.

Human-gated data (HG-DAgger, RECAP's interventions) needs someone who takes control when the policy gets
stuck or heads the wrong way, drives for a while, and hands control back. This operator does that with
the task's scripted expert as its hands, and behaves like a person in two ways: it reacts only
`reaction_delay` steps after it notices a problem, and its actions carry Gaussian noise.

It judges the policy the way a person does: against what the robot should be doing next, not against how
far the task is from done. A plain task distance is unfair to any policy that follows a plan: the
drawer-open expert first rises above the handle, which a "distance has not shrunk for 20 steps" rule read
as a stall (the expert itself was taken over at step 23-24 on every seed; 94 of 200 expert episodes over
the ten tasks). So the operator asks its own expert (a second, watching instance of the scripted expert,
fed every observation, so watching never changes how the hands will act) for its current *sub-goal*
(`ScriptedExpert.subgoal`): the point the expert's current phase moves the hand toward.

Over the last `stall_window` steps, any of these is progress:

- a new phase: the sub-goal jumped more than `phase_jump` from every sub-goal of the window (a policy
  flipping between two phases at a threshold does not count, its sub-goals repeat);
- the hand closed in on the sub-goal by `min_progress` metres, or by `progress_fraction` of its distance
  (the experts' proportional final approach slows down);
- the task distance (`progress_distance`: hand to goal for reach, hand to object plus object to goal for
  the others) shrank by `min_progress`: pulling a drawer moves the sub-goal along with the handle;
- the hand waits at the sub-goal (within `subgoal_tolerance`), for at most `max_settle_steps` steps: a
  gripper closing before the lift.

Three rules, each switchable, decide that something is wrong:

- stalled: no progress over a full window;
- away from goal: the hand got `away_margin` farther from the sub-goal than its best in the window (only
  steps with the same sub-goal compare) while the policy's proposed motion does not point toward it (the
  arm's momentum after a phase change is not the policy's fault); or, with the hand within `NEAR_OBJECT`
  of the object, the object got `away_margin` farther from the goal than its best in the window;
- disagreement: for `disagreement_steps` steps in a row the policy's proposal disagreed with what the
  expert would do: its hand motion pointed against the expert's (cosine below `disagreement_cosine`), or
  its gripper command differed from the expert's by more than `gripper_tolerance` (a hand closing on
  the way to the puck, long before it is there). A proposal shorter than `min_action`, or an expert
  already at its sub-goal, has no direction to judge; the gripper is judged on every step. Without the
  gripper in the rule, a push policy that closes its hand 4-10 cm before the puck (the failures of one
  demo's final policy: 36-190 of their steps with the gripper against the expert's, against 1-6 in
  the solved episodes) was taken over only later, far from the mistake, and the corrections never
  showed the hand staying open on the way in.
  A motion that goes another way than the expert's is not a mistake while the task gets done by it: a
  run of motion disagreement over which the object got `min_progress` closer to its goal (the hand, for
  reach) is let be, as a person lets a robot that closes the drawer by another path finish (in one demo
  run a drawer-close policy that scored 1.00 held-out was taken over 155 times for its path alone). The
  gripper is not let be: a hand closing on its way to the puck still gets closer to it.

With the scripted expert driving, 100 seeded episodes per task, none of the 995 it solves is taken over;
the 5 door-open episodes where its hand wedges against the door and stays there are, as stalled.

While it drives it hands back when the task succeeds, or after at least `min_control_steps` once the robot
is past the part where it went wrong: the task distance has shrunk by `recovery_fraction` of its value at
take-over (and by at least `min_progress`), or the expert's plan has reached `recovery_phases` new
phases (0 turns that off). Two, not one: handed back at the first new phase, a policy that failed one phase mostly fails the
next at once (a biased expert on push then succeeded in 1 of 20 episodes, against 18 with two). It also
hands back after `max_control_steps` whatever happened (a person gives the policy another chance rather
than drive forever). After a hand-back the rules need a fresh window of observations before they can
fire again.

    op = SimulatedOperator("push-v3", SimulatedOperatorConfig(reaction_delay=3), seed=0)
    op.reset(obs)
    decision = op.step(obs, policy_action, info)   # info: from the step that produced obs
    action = decision.action if decision.action is not None else policy_action
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sim.metaworld_env import ACTION_DIM, STATE_DIM
from sim.scripted_experts import ScriptedExpert
from sim.tasks import ProgressMeasure, get_task

# Slices of the 39-dim Meta-World state the progress distance reads.
HAND = slice(0, 3)
OBJECT = slice(4, 7)
GOAL = slice(36, 39)
# Metres from hand to object within which an object moving off its goal is the robot's doing. Objects
# also move untouched: a swinging door, and the windows, whose reset observation shows them elsewhere.
NEAR_OBJECT: Final = 0.1


class TakeOverReason(enum.StrEnum):
    STALLED = "stalled"
    AWAY_FROM_GOAL = "away_from_goal"  # away from the expert's sub-goal, or the object pushed off the goal
    DISAGREEMENT = "disagreement"


class HandBackReason(enum.StrEnum):
    TASK_SUCCEEDED = "task_succeeded"
    RECOVERED = "recovered"
    CONTROL_TIME_LIMIT = "control_time_limit"


@dataclass(frozen=True)
class TakeOver:
    """The operator took control at `step` (it had noticed the problem at `noticed_at`)."""

    step: int
    reason: TakeOverReason
    noticed_at: int
    distance: float


@dataclass(frozen=True)
class HandBack:
    """The operator gave control back to the policy at `step` after driving for `control_steps`."""

    step: int
    reason: HandBackReason
    control_steps: int
    distance: float


OperatorEvent = TakeOver | HandBack


@dataclass(frozen=True)
class OperatorDecision:
    """What happens at this step: `action` is the operator's action, or None when the policy drives."""

    action: np.ndarray | None
    intervening: bool
    event: OperatorEvent | None = None


@dataclass(frozen=True)
class SimulatedOperatorConfig:
    """How the simulated operator judges the policy and how it behaves when it drives.

    Not the robot's `robot_client.config.OperatorConfig` (which operator kind may take over, the YAML
    `operator:` section); the daemon's `simulated` kind builds this one with its defaults.
    """

    stall_window: int = field(default=20, metadata={"help": "steps over which progress is judged"})
    min_progress: float = field(
        default=0.01,
        metadata={
            "help": "metres the task distance, or the hand's distance to the sub-goal, must shrink over the "
            "window to count as progress"
        },
    )
    away_margin: float = field(
        default=0.05, metadata={"help": "metres above the window's best distance that mean 'moving away'"}
    )
    take_over_on_stall: bool = True
    take_over_when_moving_away: bool = True
    reaction_delay: int = field(default=3, metadata={"help": "steps between noticing and taking over"})
    action_noise_std: float = field(
        default=0.05, metadata={"help": "Gaussian noise on the operator's actions"}
    )
    min_control_steps: int = field(
        default=20, metadata={"help": "drive at least this long before a recovery hand-back"}
    )
    recovery_fraction: float = field(
        default=0.75,
        metadata={
            "help": "recovered = the distance at take-over has shrunk by this fraction (and by min_progress)"
        },
    )
    max_control_steps: int = field(
        default=100, metadata={"help": "hand back after this long whatever happened"}
    )
    recovery_phases: int = field(
        default=2,
        metadata={
            "help": "recovered = also the expert's plan has advanced this many phases since take-over "
            "(0: only the distance rule)"
        },
    )
    progress_fraction: float = field(
        default=0.2,
        metadata={
            "help": "the hand closing this fraction of its distance to the sub-goal over the window is "
            "progress too (a slow final approach); 0: only min_progress counts"
        },
    )
    subgoal_tolerance: float = field(
        default=0.02,
        metadata={"help": "metres from the expert's sub-goal at which the hand counts as arrived"},
    )
    max_settle_steps: int = field(
        default=10,
        metadata={"help": "steps an arrived hand may wait (a gripper closing) and still count as progress"},
    )
    phase_jump: float = field(
        default=0.03,
        metadata={
            "help": "metres the sub-goal must jump from every sub-goal of the window to be a new phase"
        },
    )
    take_over_on_disagreement: bool = True
    disagreement_steps: int = field(
        default=10,
        metadata={"help": "consecutive steps the proposal disagrees with the expert's before taking over"},
    )
    disagreement_cosine: float = field(
        default=0.0,
        metadata={"help": "the hand's motion 'disagrees' below this cosine with the expert's action"},
    )
    gripper_tolerance: float | None = field(
        default=0.3,
        metadata={
            "help": "a gripper command further than this from the expert's disagrees (command units, "
            "the action range is [-1, 1]); null: the gripper is not judged"
        },
    )
    min_action: float = field(
        default=0.2,
        metadata={
            "help": "a policy action whose xyz norm is below this has no direction to judge (1 = 1 cm)"
        },
    )

    def __post_init__(self) -> None:
        for name in (
            "stall_window",
            "min_control_steps",
            "max_control_steps",
            "max_settle_steps",
            "disagreement_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("reaction_delay", "recovery_phases"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name in (
            "min_progress",
            "away_margin",
            "action_noise_std",
            "subgoal_tolerance",
            "phase_jump",
            "min_action",
        ):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.recovery_fraction <= 1.0:
            raise ValueError(f"recovery_fraction must be in [0, 1], got {self.recovery_fraction!r}")
        if not 0.0 <= self.progress_fraction <= 1.0:
            raise ValueError(f"progress_fraction must be in [0, 1], got {self.progress_fraction!r}")
        if self.gripper_tolerance is not None and not (
            np.isfinite(self.gripper_tolerance) and self.gripper_tolerance >= 0
        ):
            raise ValueError(
                f"gripper_tolerance must be a finite number >= 0 or null, got {self.gripper_tolerance!r}"
            )
        if not -1.0 <= self.disagreement_cosine <= 1.0:
            raise ValueError(f"disagreement_cosine must be in [-1, 1], got {self.disagreement_cosine!r}")
        if self.max_control_steps < self.min_control_steps:
            raise ValueError(
                f"max_control_steps ({self.max_control_steps}) must be >= min_control_steps ({self.min_control_steps})"
            )


def progress_distance(state: npt.ArrayLike, measure: ProgressMeasure) -> float:
    """How far the task is from done, in metres, from the state alone (smaller is closer)."""
    s = np.asarray(state, dtype=np.float64)
    hand_to_goal = float(np.linalg.norm(s[HAND] - s[GOAL]))
    if measure is ProgressMeasure.HAND_TO_GOAL:
        return hand_to_goal
    return float(np.linalg.norm(s[HAND] - s[OBJECT]) + np.linalg.norm(s[OBJECT] - s[GOAL]))


@dataclass(frozen=True)
class _Seen:
    """What the operator saw at one step."""

    hand: np.ndarray
    subgoal: np.ndarray
    to_subgoal: float  # hand to the expert's sub-goal, metres
    distance: float  # `progress_distance`
    object_to_goal: float
    hand_to_object: float
    steers_toward: bool  # the policy's proposed motion has a component toward the sub-goal
    new_phase: bool  # the sub-goal jumped away from every sub-goal seen before it in the window
    settled: bool  # the hand waits at the sub-goal, and has not waited longer than max_settle_steps


class SimulatedOperator:
    """Watches a policy on one task; takes over, drives with the noisy scripted expert, hands back."""

    def __init__(
        self, task: str, config: SimulatedOperatorConfig | None = None, seed: int | None = None
    ) -> None:
        self.task_spec = get_task(task)
        self.config = config if config is not None else SimulatedOperatorConfig()
        self._expert = ScriptedExpert(self.task_spec.name)  # the operator's hands
        # Its eyes: a second instance, fed every observation, so a stateful expert (push's reopening
        # latch) sees the same stream whether the operator watches or drives, and watching never
        # changes how the hands will act.
        self._watcher = ScriptedExpert(self.task_spec.name)
        self._rng = np.random.default_rng(seed)
        self._history: deque[_Seen] = deque(maxlen=self.config.stall_window + 1)
        self._settle_streak = 0
        self._disagree_streak = 0  # steps in a row the proposal disagreed, by its motion or its gripper
        self._grip_disagree_streak = 0  # steps in a row its gripper disagreed
        self._step = 0
        self._intervening = False
        self._pending: tuple[int, TakeOverReason] | None = None  # (noticed_at, reason)
        self._takeover_step = 0
        self._takeover_distance = 0.0
        self._phases_since_takeover = 0
        self.events: list[OperatorEvent] = []
        self.intervention_steps = 0
        self._started = False

    @property
    def intervening(self) -> bool:
        return self._intervening

    @property
    def takeovers(self) -> int:
        """Take-overs in the current episode."""
        return sum(isinstance(event, TakeOver) for event in self.events)

    def reset(self, observation: dict[str, Any] | npt.ArrayLike) -> None:
        """Start watching a new episode (the policy drives first)."""
        self._state_of(observation)
        self._forget()
        self._step = 0
        self._intervening = False
        self._pending = None
        self.events = []
        self.intervention_steps = 0
        self._started = True

    def expert_action(self, observation: dict[str, Any] | npt.ArrayLike) -> np.ndarray:
        """The scripted expert's action for this observation, without the operator's noise."""
        return self._expert.act(self._state_of(observation))

    def step(
        self,
        observation: dict[str, Any] | npt.ArrayLike,
        policy_action: npt.ArrayLike | None,
        info: dict[str, Any] | None = None,
    ) -> OperatorDecision:
        """Decide who drives this step.

        `info` is from the env step that produced `observation` (its `success` flag). `policy_action`,
        what the policy proposes here, is what a real operator console shows: its hand motion is
        compared with the expert's (disagreement, and whether it steers toward the sub-goal); progress
        is judged on the motion the robot actually makes. Without a proposal (None) there is no
        disagreement to judge, and moving away is judged on the distance alone.
        """
        if not self._started:
            raise RuntimeError("SimulatedOperator.step() before reset(); call reset(first_observation)")
        state = self._state_of(observation)
        if policy_action is not None and np.asarray(policy_action).shape != (ACTION_DIM,):
            raise ValueError(
                f"policy_action must have shape ({ACTION_DIM},), got {np.asarray(policy_action).shape}"
            )
        success = bool((info or {}).get("success", False))
        proposal = None if policy_action is None else np.asarray(policy_action, dtype=np.float64)
        seen = self._see(state, proposal)
        step = self._step
        self._step += 1
        event: OperatorEvent | None = None

        if self._intervening:
            self._phases_since_takeover += seen.new_phase
            control_steps = step - self._takeover_step
            reason = self._hand_back_reason(success, seen.distance, control_steps)
            if reason is not None:
                event = HandBack(step, reason, control_steps, seen.distance)
                self._intervening = False
                self._forget()  # a fresh window: the policy is judged from here on
                self._see(state, proposal)
        else:
            if self._pending is None and not success:
                noticed = self._problem()
                if noticed is not None:
                    self._pending = (step, noticed)
            if self._pending is not None and success:
                self._pending = None  # the policy finished before the operator reached for the controls
            if self._pending is not None and step - self._pending[0] >= self.config.reaction_delay:
                noticed_at, reason_seen = self._pending
                event = TakeOver(step, reason_seen, noticed_at, seen.distance)
                self._pending = None
                self._intervening = True
                self._takeover_step = step
                self._takeover_distance = seen.distance
                self._phases_since_takeover = 0

        if event is not None:
            self.events.append(event)
        if not self._intervening:
            return OperatorDecision(action=None, intervening=False, event=event)
        self.intervention_steps += 1
        return OperatorDecision(action=self.drive(state), intervening=True, event=event)

    def _forget(self) -> None:
        self._history.clear()
        self._settle_streak = 0
        self._disagree_streak = 0
        self._grip_disagree_streak = 0

    def _see(self, state: np.ndarray, proposal: np.ndarray | None) -> _Seen:
        """Record this step: where the hand is, the expert's sub-goal, and whether the policy agrees."""
        config = self.config
        hand = state[HAND].copy()
        subgoal = self._watcher.subgoal(state)
        expert_action = self._watcher.act(state)
        to_subgoal = float(np.linalg.norm(subgoal - hand))
        new_phase = bool(self._history) and all(
            np.linalg.norm(subgoal - earlier.subgoal) > config.phase_jump for earlier in self._history
        )
        self._settle_streak = self._settle_streak + 1 if to_subgoal <= config.subgoal_tolerance else 0
        if new_phase:
            self._settle_streak = min(self._settle_streak, 1)
        settled = 0 < self._settle_streak <= config.max_settle_steps

        distance = progress_distance(state, self.task_spec.progress)
        steers_toward = False  # unknown without a proposal: the away rule then goes by distance alone
        if proposal is not None:
            proposed = proposal[:3]
            steers_toward = float(proposed @ (subgoal - hand)) > 0
            wanted = expert_action[:3].astype(np.float64)
            judgeable = (
                np.linalg.norm(proposed) >= config.min_action
                and to_subgoal > config.subgoal_tolerance
                and np.linalg.norm(wanted) > 0
            )
            tolerance = config.gripper_tolerance
            grip_disagrees = (
                tolerance is not None and abs(float(proposal[3]) - float(expert_action[3])) > tolerance
            )
            disagrees = grip_disagrees
            if judgeable:
                cosine = float(proposed @ wanted / (np.linalg.norm(proposed) * np.linalg.norm(wanted)))
                disagrees = disagrees or cosine < config.disagreement_cosine
            if judgeable or tolerance is not None:
                self._disagree_streak = self._disagree_streak + 1 if disagrees else 0
                self._grip_disagree_streak = self._grip_disagree_streak + 1 if grip_disagrees else 0

        seen = _Seen(
            hand=hand,
            subgoal=subgoal,
            to_subgoal=to_subgoal,
            distance=distance,
            object_to_goal=float(np.linalg.norm(state[OBJECT] - state[GOAL])),
            hand_to_object=float(np.linalg.norm(state[OBJECT] - hand)),
            steers_toward=steers_toward,
            new_phase=new_phase,
            settled=settled,
        )
        self._history.append(seen)
        return seen

    def _problem(self) -> TakeOverReason | None:
        config = self.config
        history = self._history
        if len(history) < 2:
            return None
        now = history[-1]
        if config.take_over_when_moving_away:
            # Only steps that had the same sub-goal compare: a new phase may well start farther away.
            same_subgoal = [
                seen.to_subgoal
                for seen in history
                if np.linalg.norm(seen.subgoal - now.subgoal) <= config.subgoal_tolerance
            ]
            if not now.steers_toward and now.to_subgoal - min(same_subgoal) > config.away_margin:
                return TakeOverReason.AWAY_FROM_GOAL
            moves_an_object = self.task_spec.progress is ProgressMeasure.HAND_TO_OBJECT_TO_GOAL
            best_object_to_goal = min(seen.object_to_goal for seen in history)
            if (
                moves_an_object
                and now.hand_to_object <= NEAR_OBJECT
                and now.object_to_goal - best_object_to_goal > config.away_margin
            ):
                return TakeOverReason.AWAY_FROM_GOAL
        if config.take_over_on_disagreement and self._disagreement_sustained():
            return TakeOverReason.DISAGREEMENT
        if config.take_over_on_stall and len(history) == history.maxlen and not self._progressed():
            return TakeOverReason.STALLED
        return None

    def _disagreement_sustained(self) -> bool:
        """A gripper against the expert's for `disagreement_steps` in a row, or a proposal against the
        expert's for as long while the task itself did not advance over those steps (another path that
        gets the task done is let be)."""
        steps = self.config.disagreement_steps
        if self._grip_disagree_streak >= steps:
            return True
        if self._disagree_streak < steps:
            return False
        history = self._history
        then, now = history[max(0, len(history) - 1 - steps)], history[-1]
        return self._task_remaining(then) - self._task_remaining(now) < self.config.min_progress

    def _task_remaining(self, seen: _Seen) -> float:
        """What is left of the task itself: the object's distance to its goal, or the hand's for reach.
        Not the hand's distance to the object: a hand heading down and away from the puck gets closer to it
        for a few steps."""
        if self.task_spec.progress is ProgressMeasure.HAND_TO_OBJECT_TO_GOAL:
            return seen.object_to_goal
        return seen.distance

    def _progressed(self) -> bool:
        """Whether anything over the window counts as getting on with the task (module docstring)."""
        config = self.config
        first, *rest = self._history
        if any(seen.new_phase or seen.settled for seen in rest):
            return True
        if first.distance - min(seen.distance for seen in rest) >= config.min_progress:
            return True
        if first.to_subgoal <= config.subgoal_tolerance:
            return False  # arrived: only waiting there counts (settled), and only for a while
        approached = first.to_subgoal - min(seen.to_subgoal for seen in rest)
        fraction = config.progress_fraction * first.to_subgoal
        return approached >= config.min_progress or (fraction > 0 and approached >= fraction)

    def _hand_back_reason(self, success: bool, distance: float, control_steps: int) -> HandBackReason | None:
        if success:
            return HandBackReason.TASK_SUCCEEDED
        if control_steps >= self.config.max_control_steps:
            return HandBackReason.CONTROL_TIME_LIMIT
        gained = self._takeover_distance - distance
        closer = (
            gained >= self.config.min_progress
            and gained >= self.config.recovery_fraction * self._takeover_distance
        )
        advanced = 0 < self.config.recovery_phases <= self._phases_since_takeover
        if control_steps >= self.config.min_control_steps and (closer or advanced):
            return HandBackReason.RECOVERED
        return None

    def drive(self, observation: dict[str, Any] | npt.ArrayLike) -> np.ndarray:
        """The operator's own action: the expert's plus the operator's noise (what it does when it drives)."""
        action = self._expert.act(self._state_of(observation))
        if self.config.action_noise_std > 0:
            action = action + self._rng.normal(0.0, self.config.action_noise_std, size=ACTION_DIM)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    @staticmethod
    def _state_of(observation: dict[str, Any] | npt.ArrayLike) -> np.ndarray:
        raw = observation["state"] if isinstance(observation, dict) else observation
        state = np.asarray(raw, dtype=np.float64)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"observation state must have shape ({STATE_DIM},), got {state.shape}")
        if not np.isfinite(state).all():
            raise ValueError("observation state contains NaN or infinite values")
        return state
