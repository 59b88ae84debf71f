"""The task table: names, instructions, experts."""

from __future__ import annotations

import pytest

import sim
from sim.scripted_experts import EXPERT_POLICIES, ScriptedExpert
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
