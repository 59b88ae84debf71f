"""The whole suite: all 50 Meta-World v3 tasks registered, and the committed fitness table still true.

`benchmarks/results/suite_fitness.json` (made by `python -m benchmarks.suite_fitness`, 10 seeds x 4
drivers x 50 tasks, ~20 min on 2 cores) says which tasks the scripted expert and the simulated operator
solve under nominal conditions, and so which are fit for the demo. Re-running it here would take that
long, so these tests check a sample: for every task marked fit, one seeded episode the table records as
solved within the demo's horizon, with the expert driving and again with the operator driving (and the
expert's actions pointing at its sub-goal all the way, which the operator's judgement rests on); for
every task marked unfit, one seeded episode of the driver that made it unfit still fails as recorded. A
table gone stale either way (a fit task now failing, a broken expert now working) fails here. One
episode per task and claim, not the table's ten, keeps the file under a minute on a slow, busy 2-core
machine (55 s measured at a load average of 6).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

import sim
from benchmarks.suite_fitness import expert_episode, operator_episode, watched_episode
from sim.operator import SimulatedOperator, SimulatedOperatorConfig
from sim.scripted_experts import EXPERT_POLICIES, ScriptedExpert
from sim.tasks import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH, MT10_TASKS, MT50_TASKS, get_task

FITNESS_TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "suite_fitness.json"
TABLE: dict[str, Any] = json.loads(FITNESS_TABLE.read_text())
FIT_HORIZON: int = TABLE["fit_horizon"]
EXPERT_GAIN_WARNING = "ignore:Constant\\(s\\) may be too high"


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[str, sim.MetaWorldEnv]]:
    """One env per task for the whole module: building one takes about as long as an episode."""
    made: dict[str, sim.MetaWorldEnv] = {}
    yield made
    for env in made.values():
        env.close()


def env_for(envs: dict[str, sim.MetaWorldEnv], task: str) -> sim.MetaWorldEnv:
    if task not in envs:
        envs[task] = sim.make_env(task, sim.EnvConfig(max_episode_steps=FIT_HORIZON))
    return envs[task]


def test_every_meta_world_v3_task_is_registered_with_instructions_and_an_expert() -> None:
    assert set(MT50_TASKS) == set(ALL_V3_ENVIRONMENTS) and len(MT50_TASKS) == 50
    # The demo, the benchmarks and the per-task tests keep MT10, in the order they always had.
    assert MT50_TASKS[:10] == MT10_TASKS == sim.TASK_NAMES
    for task in MT50_TASKS:
        spec = get_task(task)
        assert spec.env_id == f"sop/{task}" and spec.env_id in gymnasium.registry
        assert len(set(spec.instructions)) >= 4, task
        for instruction in spec.instructions:
            assert 0 < len(instruction) <= MAX_INSTRUCTION_LENGTH
            assert set(instruction) <= set(INSTRUCTION_CHARSET), instruction
        assert task in EXPERT_POLICIES
    assert get_task("reach-wall-v3").progress is sim.tasks.ProgressMeasure.HAND_TO_GOAL


@pytest.mark.filterwarnings(EXPERT_GAIN_WARNING)
@pytest.mark.parametrize("task", MT50_TASKS)
def test_every_task_makes_an_env_its_expert_and_operator_can_act_in(
    envs: dict[str, sim.MetaWorldEnv], task: str
) -> None:
    env = env_for(envs, task)
    observation, info = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    assert observation["instruction"] in get_task(task).instructions
    operator = SimulatedOperator(task, SimulatedOperatorConfig(), seed=0)
    operator.reset(observation)
    expert = ScriptedExpert(task)
    subgoal = expert.subgoal(observation["state"])
    assert subgoal.shape == (3,) and np.isfinite(subgoal).all()
    action = expert.act(observation["state"])
    decision = operator.step(observation, action, info)
    observation, _, _, _, info = env.step(action if decision.action is None else decision.action)
    assert env.observation_space.contains(observation)


def test_the_fitness_table_covers_the_suite_and_applies_its_criterion() -> None:
    assert list(TABLE["tasks"]) == list(MT50_TASKS)
    assert set(TABLE["fit"]) | set(TABLE["unfit"]) == set(MT50_TASKS)
    n = len(TABLE["seeds"])
    for task, row in TABLE["tasks"].items():
        fit = (
            row["expert"]["solved"][str(FIT_HORIZON)] >= 0.9 * n
            and row["operator"]["solved"][str(FIT_HORIZON)] >= 0.9 * n
            and row["operator_watching_expert"]["taken_over"] == 0
        )
        assert row["fit_for_demo"] is fit and (task in TABLE["fit"]) is fit, task


def _solved_seed(task: str, driver: str) -> int:
    """The first seed the table records `driver` as solving `task` on within the demo's horizon."""
    steps = TABLE["tasks"][task][driver]["success_steps"]
    return next(
        seed
        for seed, step in zip(TABLE["seeds"], steps, strict=True)
        if step is not None and step <= FIT_HORIZON
    )


def _expert_success_step(env: sim.MetaWorldEnv, seed: int, check_subgoal: bool) -> int | None:
    expert = ScriptedExpert(env.task)
    observation, _ = env.reset(seed=seed)
    for step in range(1, FIT_HORIZON + 1):
        state = observation["state"]
        action = expert.act(state)
        if check_subgoal:
            error = expert.subgoal(state) - state[:3]
            clear = np.abs(error) > 0.002
            np.testing.assert_array_equal(np.sign(action[:3][clear]), np.sign(error[clear]))
        observation, _, _, _, info = env.step(action)
        if info["success"]:
            return step
    return None


@pytest.mark.parametrize("task", TABLE["fit"])
def test_tasks_marked_fit_are_solved_by_the_expert_and_by_the_operator(
    envs: dict[str, sim.MetaWorldEnv], task: str
) -> None:
    env = env_for(envs, task)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
        expert_seed = _solved_seed(task, "expert")
        expert_step = _expert_success_step(env, expert_seed, check_subgoal=True)
        operator_seed = _solved_seed(task, "operator")
        operator = operator_episode(env, operator_seed, FIT_HORIZON)
    assert expert_step is not None, f"{task}: the expert no longer solves seed {expert_seed}"
    assert operator.success_step is not None, f"{task}: the operator no longer solves seed {operator_seed}"


def _unfit_because(task: str) -> tuple[str, int]:
    """The driver that makes `task` unfit and one seed the table records it failing on."""
    row, n = TABLE["tasks"][task], len(TABLE["seeds"])
    for driver in ("expert", "operator"):
        if row[driver]["solved"][str(FIT_HORIZON)] < 0.9 * n:
            steps = row[driver]["success_steps"]
            failed = (
                s for s, step in zip(TABLE["seeds"], steps, strict=True) if step is None or step > FIT_HORIZON
            )
            return driver, next(failed)
    watched = row["operator_watching_expert"]
    taken = zip(TABLE["seeds"], watched["success_steps"], watched["takeovers"], strict=True)
    return "operator_watching_expert", next(s for s, step, count in taken if step is not None and count > 0)


@pytest.mark.parametrize("task", TABLE["unfit"])
def test_tasks_marked_unfit_still_fail_as_the_table_says(
    envs: dict[str, sim.MetaWorldEnv], task: str
) -> None:
    driver, seed = _unfit_because(task)
    env = env_for(envs, task)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
        if driver == "expert":
            episode = expert_episode(env, seed, FIT_HORIZON)
        elif driver == "operator":
            episode = operator_episode(env, seed, FIT_HORIZON)
        else:
            episode = watched_episode(env, seed, FIT_HORIZON, ScriptedExpert(task).act)
    stale = (
        f"{task}: the {driver} on seed {seed} no longer fails as recorded; re-run benchmarks.suite_fitness"
    )
    if driver == "operator_watching_expert":
        assert episode.takeovers > 0, stale
    else:
        assert episode.success_step is None, stale
