"""The task table: names, instructions, experts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from metaworld.policies import SawyerPushV3Policy
from metaworld.policies.policy import Policy

import sim
from sim.scripted_experts import EXPERT_POLICIES, CorrectedPushPolicy, ScriptedExpert
from sim.tasks import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH, get_task, parse_task_list


@pytest.mark.parametrize("task", sim.TASK_NAMES)
def test_every_task_has_distinct_paraphrases_in_the_text_charset_and_an_expert(task: str) -> None:
    spec = get_task(task)
    assert len(set(spec.instructions)) >= 3
    for instruction in spec.instructions:
        assert 0 < len(instruction) <= MAX_INSTRUCTION_LENGTH
        assert set(instruction) <= set(INSTRUCTION_CHARSET), instruction
    assert task in EXPERT_POLICIES


def test_tasks_are_found_by_name_or_gymnasium_id() -> None:
    assert get_task("sop/push-v3") is get_task("push-v3")
    assert parse_task_list("reach-v3, push-v3") == ["reach-v3", "push-v3"]
    with pytest.raises(ValueError, match="empty"):
        parse_task_list(" , ")
    with pytest.raises(sim.UnknownTaskError, match="'push-v2'"):
        parse_task_list(["reach-v3", "push-v2"])
    with pytest.raises(sim.UnknownTaskError):
        get_task(None)  # type: ignore[arg-type]


def test_expert_does_not_modify_the_state_it_is_given() -> None:
    # Meta-World's door-open policy edits a slice of its input in place; the wrapper must copy.
    expert = ScriptedExpert("door-open-v3")
    env = sim.make_env("door-open-v3")
    try:
        state = env.reset(seed=0)[0]["state"]
    finally:
        env.close()
    before = state.copy()
    action = expert.act(state)
    assert (state == before).all()
    assert action.shape == (4,) and action.dtype.name == "float32"
    with pytest.raises(ValueError, match=r"shape \(39,\)"):
        expert.act(state[:10])


def fingers_closed_on_top_of_the_puck(env: sim.MetaWorldEnv, seed: int) -> dict[str, Any]:
    """What a half-trained push policy does: hand over the puck, fingers closed early, pressing down."""
    observation = env.reset(seed=seed)[0]
    for _ in range(45):
        state = observation["state"]
        target = state[4:7] + (0.0 if np.linalg.norm(state[:2] - state[4:6]) < 0.015 else [0.0, 0.0, 0.15])
        action = np.append(np.clip(10.0 * (target - state[:3]), -1.0, 1.0), 1.0).astype(np.float32)
        observation = env.step(action)[0]
    return observation


def expert_success_step(env: sim.MetaWorldEnv, expert: Policy, observation: dict[str, Any]) -> int | None:
    """Let `expert` drive from `observation` for up to 150 steps; the step it succeeds at, or None."""
    for step in range(150):
        action = np.clip(expert.get_action(observation["state"]), -1.0, 1.0).astype(np.float32)
        observation, _, _, _, info = env.step(action)
        if info["success"]:
            return step
    return None


# Meta-World's `move` warns whenever its proportional gain saturates (ScriptedExpert silences it the same way).
EXPERT_GAIN_WARNING = "ignore:Constant\\(s\\) may be too high"


@pytest.mark.filterwarnings(EXPERT_GAIN_WARNING)
def test_push_expert_recovers_from_fingers_a_policy_closed_above_the_puck() -> None:
    env = sim.make_env("push-v3")
    try:
        stuck = fingers_closed_on_top_of_the_puck(env, seed=2000)
        assert stuck["state"][3] < 0.4 and stuck["state"][2] - stuck["state"][6] > 0.05  # closed, hand up
        # Meta-World's own expert stays stuck there for the rest of the episode.
        assert expert_success_step(env, SawyerPushV3Policy(), stuck) is None
        recovered = [
            expert_success_step(env, CorrectedPushPolicy(), fingers_closed_on_top_of_the_puck(env, seed))
            for seed in (2000, 2001, 2002)
        ]
    finally:
        env.close()
    assert all(step is not None for step in recovered), recovered


@pytest.mark.filterwarnings(EXPERT_GAIN_WARNING)
def test_corrected_push_expert_acts_like_the_stock_one_from_a_fresh_reset() -> None:
    env = sim.make_env("push-v3")
    corrected, stock = CorrectedPushPolicy(), SawyerPushV3Policy()
    try:
        observation = env.reset(seed=5)[0]
        for _ in range(80):
            action = corrected.get_action(observation["state"])
            np.testing.assert_array_equal(action, stock.get_action(observation["state"]))
            observation, _, _, _, info = env.step(np.clip(action, -1.0, 1.0).astype(np.float32))
            if info["success"]:
                break
    finally:
        env.close()
    assert info["success"]
