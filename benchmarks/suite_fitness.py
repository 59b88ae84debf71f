"""Which of Meta-World's 50 tasks the scripted expert and the simulated operator solve: the suite's fitness.

Every task of the suite is registered, but a task only belongs in a demo when its scripted expert solves
it (the offline demonstrations are recorded with it) and the simulated operator, whose hands are that
expert plus noise, solves it too. This measures both, per task, over seeded episodes under nominal
conditions (the env's defaults: Meta-World's own object and goal ranges, no shift), with four drivers:

- `expert`: the noise-free scripted expert drives from the start;
- `operator`: the operator drives from the start (`SimulatedOperator.drive`: the expert plus its noise);
- `operator_rescuing_random`: a uniformly random policy drives and the default operator watches it,
  takes over when it judges the policy wrong, and hands back (a weak policy at its weakest);
- `operator_watching_expert`: the noise-free expert drives and the operator watches; a fair operator
  never takes over a policy on its way to success (`taken_over` counts the episodes where it did).

An episode runs to the longest horizon and records the step it first succeeds at, so one run gives the
success count at every shorter horizon too (neither the experts nor the operator know the time limit).
A task is fit for the demo when the expert and the operator each solve at least `fit_fraction` of the
episodes within `fit_horizon` steps (the demo's 150) and the operator took over none of the expert's
successful episodes. `tests/sim/test_suite.py` checks the committed table against a fresh run of a
sample of it.

    .venv/bin/python -m benchmarks.suite_fitness --workers 2   # all 50 tasks, 10 seeds: ~20 min on 2 cores
    .venv/bin/python -m benchmarks.suite_fitness --tasks reach-v3,push-v3 --seeds 2 --output ''
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.reporting import command_line, markdown_table, write_report
from sim.metaworld_env import ACTION_DIM, EnvConfig, MetaWorldEnv
from sim.operator import SimulatedOperator, SimulatedOperatorConfig
from sim.scripted_experts import ScriptedExpert
from sim.tasks import MT50_TASKS, parse_task_list
from sop.config import parse_config

DRIVERS: Final = ("expert", "operator", "operator_rescuing_random", "operator_watching_expert")


@dataclass(frozen=True)
class SuiteFitnessConfig:
    """Which tasks, how many seeded episodes, which horizons, where the table goes."""

    tasks: list[str] = field(default_factory=lambda: list(MT50_TASKS))
    seeds: int = field(default=10, metadata={"help": "seeded episodes per task and driver"})
    first_seed: int = field(default=0, metadata={"help": "episodes use seeds first_seed, first_seed+1, ..."})
    horizons: list[int] = field(
        default_factory=lambda: [150, 500], metadata={"help": "step limits the success counts are given at"}
    )
    fit_horizon: int = field(default=150, metadata={"help": "the demo's max_episode_steps"})
    fit_fraction: float = field(
        default=0.9, metadata={"help": "share of episodes expert and operator must each solve to be fit"}
    )
    workers: int = field(default=1, metadata={"help": "processes, one task at a time each"})
    output: str = field(
        default="benchmarks/results/suite_fitness.json", metadata={"help": "JSON file; '' prints only"}
    )

    def __post_init__(self) -> None:
        parse_task_list(self.tasks)
        if self.seeds < 1 or self.workers < 1:
            raise ValueError(f"seeds and workers must be >= 1, got {self.seeds} and {self.workers}")
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError(f"horizons must be positive step counts, got {self.horizons}")
        if self.fit_horizon not in self.horizons:
            raise ValueError(f"fit_horizon {self.fit_horizon} must be one of horizons {self.horizons}")
        if not 0.0 < self.fit_fraction <= 1.0:
            raise ValueError(f"fit_fraction must be in (0, 1], got {self.fit_fraction}")


@dataclass(frozen=True)
class Episode:
    """One seeded episode: the step count at the first success (None: never), and the take-overs."""

    success_step: int | None
    takeovers: int = 0


Policy = Callable[[np.ndarray], np.ndarray]


def expert_episode(env: MetaWorldEnv, seed: int, steps: int) -> Episode:
    """The noise-free scripted expert drives from the start."""
    expert = ScriptedExpert(env.task)
    observation, _ = env.reset(seed=seed)
    for step in range(1, steps + 1):
        observation, _, _, _, info = env.step(expert.act(observation["state"]))
        if info["success"]:
            return Episode(step)
    return Episode(None)


def operator_episode(env: MetaWorldEnv, seed: int, steps: int) -> Episode:
    """The operator drives from the start with its noisy hands."""
    operator = SimulatedOperator(env.task, SimulatedOperatorConfig(), seed=seed)
    observation, _ = env.reset(seed=seed)
    for step in range(1, steps + 1):
        observation, _, _, _, info = env.step(operator.drive(observation))
        if info["success"]:
            return Episode(step)
    return Episode(None)


def watched_episode(env: MetaWorldEnv, seed: int, steps: int, policy: Policy) -> Episode:
    """`policy` drives with the default operator watching, taking over and handing back."""
    operator = SimulatedOperator(env.task, SimulatedOperatorConfig(), seed=seed)
    observation, info = env.reset(seed=seed)
    operator.reset(observation)
    for step in range(1, steps + 1):
        proposal = policy(observation["state"])
        decision = operator.step(observation, proposal, info)
        action = decision.action if decision.action is not None else proposal
        observation, _, _, _, info = env.step(action)
        if info["success"]:
            return Episode(step, operator.takeovers)
    return Episode(None, operator.takeovers)


def random_policy(seed: int) -> Policy:
    """Uniform random actions, seeded per episode."""
    rng = np.random.default_rng(seed)
    return lambda state: rng.uniform(-1.0, 1.0, size=ACTION_DIM).astype(np.float32)


def measure_task(task: str, seeds: Sequence[int], steps: int) -> dict[str, list[Episode]]:
    """Every driver's episodes on `task`, one env reused across them (a seed fixes the layout)."""
    env = MetaWorldEnv(task, EnvConfig(max_episode_steps=steps))
    episodes: dict[str, list[Episode]] = {driver: [] for driver in DRIVERS}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            for seed in seeds:
                episodes["expert"].append(expert_episode(env, seed, steps))
                episodes["operator"].append(operator_episode(env, seed, steps))
                episodes["operator_rescuing_random"].append(
                    watched_episode(env, seed, steps, random_policy(seed))
                )
                episodes["operator_watching_expert"].append(
                    watched_episode(env, seed, steps, ScriptedExpert(task).act)
                )
    finally:
        env.close()
    return episodes


def solved_within(episodes: Sequence[Episode], horizon: int) -> int:
    return sum(e.success_step is not None and e.success_step <= horizon for e in episodes)


def task_row(episodes: dict[str, list[Episode]], config: SuiteFitnessConfig) -> dict[str, Any]:
    """The JSON row of one task: per driver, successes at each horizon and each episode's success step."""
    row: dict[str, Any] = {}
    for driver, runs in episodes.items():
        entry: dict[str, Any] = {
            "solved": {str(h): solved_within(runs, h) for h in config.horizons},
            "success_steps": [e.success_step for e in runs],
        }
        if driver.startswith("operator_"):
            entry["takeovers"] = [e.takeovers for e in runs]
        if driver == "operator_watching_expert":
            entry["taken_over"] = sum(e.takeovers > 0 and e.success_step is not None for e in runs)
        row[driver] = entry
    needed = config.fit_fraction * config.seeds
    h = str(config.fit_horizon)
    row["fit_for_demo"] = bool(
        row["expert"]["solved"][h] >= needed
        and row["operator"]["solved"][h] >= needed
        and row["operator_watching_expert"]["taken_over"] == 0
    )
    return row


def _measure(args: tuple[str, list[int], int]) -> tuple[str, dict[str, list[Episode]], float]:
    start = time.perf_counter()
    task, seeds, steps = args
    return task, measure_task(task, seeds, steps), time.perf_counter() - start


def run(config: SuiteFitnessConfig, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Measure every task and return the table (written to `config.output` unless it is '')."""
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    steps = max(config.horizons)
    jobs = [(task, seeds, steps) for task in config.tasks]
    rows: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")  # MuJoCo and EGL do not survive a fork
    with context.Pool(config.workers) if config.workers > 1 else _Serial() as pool:
        for task, episodes, seconds in pool.imap_unordered(_measure, jobs):
            rows[task] = task_row(episodes, config)
            print(f"{task}: {_summary(rows[task], config)} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    table = {
        "command": command_line(".venv/bin/python -m benchmarks.suite_fitness", argv),
        "machine": describe_machine().summary(),
        "conditions": "nominal: EnvConfig defaults, Meta-World's own object and goal ranges, no shift",
        "criterion": (
            f"fit_for_demo: expert and operator (driving from the start) each solve >= {config.fit_fraction} "
            f"of the episodes within {config.fit_horizon} steps, and the operator watching the expert took "
            "over none of its successful episodes"
        ),
        "seeds": seeds,
        "horizons": config.horizons,
        "fit_horizon": config.fit_horizon,
        "operator_config": asdict(SimulatedOperatorConfig()),
        "fit": [task for task in config.tasks if rows[task]["fit_for_demo"]],
        "unfit": [task for task in config.tasks if not rows[task]["fit_for_demo"]],
        "tasks": {task: rows[task] for task in config.tasks},
    }
    if config.output:
        path = write_report(config.output, json.dumps(table, indent=1) + "\n")
        section = write_report(Path(config.output).with_suffix(".md"), report(table))
        print(f"wrote {path} and {section}", file=sys.stderr)
    return table


class _Serial:
    """`Pool.imap_unordered` in this process (one worker needs no children)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(
        function: Callable[[tuple[str, list[int], int]], Any], jobs: list[tuple[str, list[int], int]]
    ) -> Any:
        return map(function, jobs)


def _summary(row: dict[str, Any], config: SuiteFitnessConfig) -> str:
    parts = []
    for driver in DRIVERS:
        solved = row[driver]["solved"]
        parts.append(f"{driver} " + " ".join(f"{solved[str(h)]}@{h}" for h in config.horizons))
    return ", ".join(parts) + (" fit" if row["fit_for_demo"] else " UNFIT")


def markdown(table: dict[str, Any]) -> list[str]:
    """The table as markdown rows: successes out of n per driver at each horizon."""
    horizons = table["horizons"]
    n = len(table["seeds"])
    header = ["task", *[f"{d} @{h}" for d in DRIVERS[:3] for h in horizons], "taken over", "fit"]
    rows = []
    for task, row in table["tasks"].items():
        cells = [f"{row[d]['solved'][str(h)]}/{n}" for d in DRIVERS[:3] for h in horizons]
        rows.append(
            [
                task,
                *cells,
                row["operator_watching_expert"]["taken_over"],
                "yes" if row["fit_for_demo"] else "no",
            ]
        )
    return markdown_table(header, rows, align="l" + "r" * (len(header) - 1))


def report(table: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: the command, the criterion, the fit and unfit tasks, the whole table."""
    machine = table.get("machine", "the project's 2-core development machine")
    lines = [
        "## The task suite: which Meta-World tasks the expert and the simulated operator solve",
        "",
        f"`{table['command']}` — {len(table['seeds'])} seeded episodes per task and driver, {table['conditions']}; "
        f"{machine}.",
        "",
        f"Criterion: {table['criterion']}. **Fit ({len(table['fit'])}):** {', '.join(table['fit'])}. "
        f"**Not fit ({len(table['unfit'])}):** {', '.join(table['unfit'])}.",
        "",
        "Successes out of n within each horizon; `taken over`: episodes of the working expert the watching "
        "operator took over anyway.",
        "",
        *markdown(table),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(SuiteFitnessConfig, args)
    table = run(config, args)
    print("\n".join(markdown(table)))


if __name__ == "__main__":
    main()
