"""The simulated operator: its take-over / hand-back rule on synthetic states, and its expert on real tasks."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from sim.operator import (
    HandBack,
    HandBackReason,
    SimulatedOperator,
    SimulatedOperatorConfig,
    TakeOver,
    TakeOverReason,
    progress_distance,
)
from sim.tasks import ProgressMeasure

GOAL = np.array([0.0, 0.8, 0.2])


def near(value: float) -> float:
    """`pytest.approx` typed as the float it stands in for (event fields are floats)."""
    return pytest.approx(value)  # type: ignore[return-value]


def reach_state(hand_to_goal: float) -> np.ndarray:
    """A reach-v3 state with the hand `hand_to_goal` metres from the goal along -y."""
    state = np.zeros(39)
    state[0:3] = GOAL - np.array([0.0, hand_to_goal, 0.0])
    state[4:7] = [0.1, 0.6, 0.02]  # the puck, which reach ignores
    state[36:39] = GOAL
    return state


def quiet_config(**overrides: object) -> SimulatedOperatorConfig:
    values: dict[str, object] = {
        "stall_window": 5,
        "min_progress": 0.01,
        "away_margin": 0.05,
        "reaction_delay": 2,
        "action_noise_std": 0.0,
        "min_control_steps": 3,
        "recovery_fraction": 0.5,
        "max_control_steps": 10,
    }
    values.update(overrides)
    return SimulatedOperatorConfig(**values)  # type: ignore[arg-type]


def run(operator: SimulatedOperator, distances: list[float], success_at: int | None = None) -> list:
    decisions = []
    for step, distance in enumerate(distances):
        info = {"success": success_at is not None and step >= success_at}
        decisions.append(operator.step(reach_state(distance), np.zeros(4, dtype=np.float32), info))
    return decisions


def test_progress_distance_reads_hand_object_and_goal_from_the_documented_indices() -> None:
    state = np.zeros(39)
    state[0:3] = [0.0, 0.0, 0.3]  # hand
    state[4:7] = [0.0, 0.4, 0.0]  # object
    state[36:39] = [0.3, 0.4, 0.0]  # goal
    assert progress_distance(state, ProgressMeasure.HAND_TO_GOAL) == pytest.approx(
        np.sqrt(0.09 + 0.16 + 0.09)
    )
    assert progress_distance(state, ProgressMeasure.HAND_TO_OBJECT_TO_GOAL) == pytest.approx(0.5 + 0.3)


def test_a_stalled_policy_is_taken_over_after_the_window_plus_the_reaction_delay() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(), seed=0)
    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3] * 12)
    # Window of 5 steps is full at step 5 (6 distances): noticed at 5, taken over 2 steps later.
    assert [d.intervening for d in decisions[:7]] == [False] * 7
    assert all(d.action is None for d in decisions[:7])
    takeover = decisions[7].event
    assert takeover == TakeOver(step=7, reason=TakeOverReason.STALLED, noticed_at=5, distance=near(0.3))
    assert decisions[7].intervening
    assert decisions[7].action is not None
    np.testing.assert_allclose(decisions[7].action, operator.expert_action(reach_state(0.3)))
    assert all(d.event is None for d in decisions[8:])
    assert operator.takeovers == 1


def test_a_policy_making_progress_is_left_alone() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(), seed=0)
    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3 - 0.01 * i for i in range(25)])
    assert not any(d.intervening for d in decisions)
    assert operator.events == []


def test_moving_away_from_the_goal_triggers_a_take_over_before_the_window_is_full() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(reaction_delay=0), seed=0)
    operator.reset(reach_state(0.2))
    decisions = run(operator, [0.2, 0.22, 0.24, 0.26, 0.28])
    # 0.26 - 0.20 > 0.05 at step 3; no delay, so control changes at once.
    assert [d.intervening for d in decisions] == [False, False, False, True, True]
    assert decisions[3].event == TakeOver(3, TakeOverReason.AWAY_FROM_GOAL, 3, near(0.26))


def test_hand_back_after_recovery_and_a_fresh_window_before_the_next_take_over() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(), seed=0)
    operator.reset(reach_state(0.3))
    stalled = [0.3] * 8  # take-over at step 7
    recovering = [0.25, 0.2, 0.14]  # steps 8-10: 0.14 <= 0.5 * 0.3 at step 10 (3 control steps)
    stalled_again = [0.14] * 11  # steps 11-21
    decisions = run(operator, stalled + recovering + stalled_again)
    handback = decisions[10].event
    assert handback == HandBack(10, HandBackReason.RECOVERED, 3, near(0.14))
    assert [d.intervening for d in decisions[7:11]] == [True, True, True, False]
    # The window restarts at the hand-back (step 10): full at step 15, noticed there, taken over at 17.
    assert not any(d.intervening for d in decisions[10:17])
    assert decisions[17].event == TakeOver(17, TakeOverReason.STALLED, 15, near(0.14))
    assert [type(e) for e in operator.events] == [TakeOver, HandBack, TakeOver]
    assert operator.intervention_steps == 3 + 5  # steps 7-9 and 17-21


def test_no_hand_back_before_min_control_steps_even_when_recovered() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(min_control_steps=5), seed=0)
    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3] * 8 + [0.01] * 6)
    assert [d.intervening for d in decisions[7:14]] == [True] * 5 + [False] * 2
    assert decisions[12].event == HandBack(12, HandBackReason.RECOVERED, 5, near(0.01))


def test_hand_back_on_success_and_after_the_control_time_limit() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(), seed=0)
    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3] * 10, success_at=9)
    assert decisions[9].event == HandBack(9, HandBackReason.TASK_SUCCEEDED, 2, near(0.3))

    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3] * 20)
    assert decisions[17].event == HandBack(17, HandBackReason.CONTROL_TIME_LIMIT, 10, near(0.3))
    assert sum(d.intervening for d in decisions) == 10


def test_no_take_over_once_the_task_succeeded_even_if_it_had_been_noticed() -> None:
    operator = SimulatedOperator("reach-v3", quiet_config(reaction_delay=4), seed=0)
    operator.reset(reach_state(0.04))
    decisions = run(operator, [0.04] * 15, success_at=6)  # noticed at 5, success before the delay ends
    assert not any(d.intervening for d in decisions)
    assert operator.events == []


def test_rules_can_be_switched_off() -> None:
    operator = SimulatedOperator(
        "reach-v3", quiet_config(take_over_on_stall=False, take_over_when_moving_away=False), seed=0
    )
    operator.reset(reach_state(0.3))
    decisions = run(operator, [0.3] * 10 + [0.3 + 0.05 * i for i in range(10)])
    assert not any(d.intervening for d in decisions)


def test_operator_noise_is_gaussian_seeded_and_clipped() -> None:
    state = reach_state(0.3)
    first = SimulatedOperator("reach-v3", SimulatedOperatorConfig(action_noise_std=0.2), seed=5)
    second = SimulatedOperator("reach-v3", SimulatedOperatorConfig(action_noise_std=0.2), seed=5)
    actions = np.stack([first.drive(state) for _ in range(200)])
    np.testing.assert_array_equal(actions, np.stack([second.drive(state) for _ in range(200)]))
    expert = first.expert_action(state)
    assert np.all(np.abs(actions) <= 1.0)
    # Reach's gripper command is 0: well inside [-1, 1], so its noise is unclipped and measurable.
    assert expert[3] == 0.0
    assert actions[:, 3].std() == pytest.approx(0.2, rel=0.2)
    assert not np.allclose(actions[0], expert)


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"stall_window": 0}, "stall_window"),
        ({"reaction_delay": -1}, "reaction_delay"),
        ({"action_noise_std": float("nan")}, "action_noise_std"),
        ({"recovery_fraction": 1.5}, "recovery_fraction"),
        ({"min_control_steps": 50, "max_control_steps": 10}, "max_control_steps"),
    ],
)
def test_bad_operator_config_names_the_field(overrides: dict[str, object], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        SimulatedOperatorConfig(**overrides)  # type: ignore[arg-type]


def test_bad_operator_input_is_a_clear_error() -> None:
    operator = SimulatedOperator("reach-v3", seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        operator.step(reach_state(0.3), np.zeros(4), {})
    with pytest.raises(ValueError, match=r"shape \(39,\)"):
        operator.reset(np.zeros(10))
    operator.reset(reach_state(0.3))
    with pytest.raises(ValueError, match="policy_action"):
        operator.step(reach_state(0.3), np.zeros(7), {})
    with pytest.raises(sim.UnknownTaskError):
        SimulatedOperator("fly-v3")


def test_operator_rescues_a_frozen_policy_on_the_real_task() -> None:
    env = sim.make_env("reach-v3", sim.EnvConfig(max_episode_steps=150))
    operator = SimulatedOperator("reach-v3", SimulatedOperatorConfig(), seed=0)
    try:
        observation, info = env.reset(seed=0)
        operator.reset(observation)
        for _ in range(150):
            decision = operator.step(observation, np.zeros(4, dtype=np.float32), info)
            action = decision.action if decision.action is not None else np.zeros(4, dtype=np.float32)
            observation, _, _, truncated, info = env.step(action)
            if info["success"] or truncated:
                break
    finally:
        env.close()
    assert info["success"]
    first = operator.events[0]
    assert isinstance(first, TakeOver) and first.reason is TakeOverReason.STALLED
    assert first.step == SimulatedOperatorConfig().stall_window + SimulatedOperatorConfig().reaction_delay


@pytest.mark.slow
@pytest.mark.parametrize("task", sim.MT10_TASKS)
def test_operator_driving_all_the_time_solves_each_task_in_at_least_90_percent(task: str) -> None:
    env = sim.make_env(task, sim.EnvConfig(max_episode_steps=200))
    operator = SimulatedOperator(task, SimulatedOperatorConfig(), seed=0)
    successes = 0
    try:
        for seed in range(20):
            observation, _ = env.reset(seed=seed)
            truncated = False
            while not truncated:
                observation, _, _, truncated, info = env.step(operator.drive(observation))
                if info["success"]:
                    successes += 1
                    break
    finally:
        env.close()
    assert successes >= 18, f"{task}: the operator's expert solved {successes}/20 seeded episodes"
