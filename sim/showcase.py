"""`sop sim showcase`: a deliberately weak policy, the simulated operator watching it, a table of results.

It shows in seconds what the fleet relies on: the weak policy alone rarely finishes a task, the operator
notices when it stalls or wanders, takes over, and the episode ends in success; every frame the operator
drove is an expert label for HG-DAgger. The same seeded layouts are run with and without the operator so
the two success columns compare like with like.

    sop sim showcase
    sop sim showcase --policy random --tasks reach-v3,push-v3 --episodes 5 --operator.reaction_delay 8
"""

from __future__ import annotations

import enum
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.table import Table

from sim.metaworld_env import ACTION_DIM, EnvConfig, MetaWorldEnv
from sim.operator import HandBack, SimulatedOperator, SimulatedOperatorConfig, TakeOver
from sim.scripted_experts import ScriptedExpert
from sim.tasks import parse_task_list
from sop.config import parse_config


class WeakPolicy(enum.StrEnum):
    """Stand-ins for an undertrained policy."""

    ZERO = "zero"  # never moves: the operator must notice a stall
    RANDOM = "random"  # uniform random actions: wanders, mostly stalls
    NOISY_EXPERT = "noisy_expert"  # the expert drowned in noise: roughly right, often stuck or off course
    BIASED_EXPERT = "biased_expert"  # the expert plus a per-episode constant offset: settles next to the goal


@dataclass(frozen=True)
class ShowcaseConfig:
    """`sop sim showcase`: which tasks, how weak the policy, and how the operator behaves."""

    tasks: list[str] = field(
        default_factory=lambda: ["reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3"]
    )
    episodes: int = field(default=3, metadata={"help": "seeded episodes per task"})
    seed: int = 0
    policy: WeakPolicy = field(
        default=WeakPolicy.BIASED_EXPERT, metadata={"help": "zero | random | noisy_expert | biased_expert"}
    )
    policy_noise: float = field(default=0.3, metadata={"help": "per-step noise std of the *_expert policies"})
    policy_bias: float = field(
        default=0.5, metadata={"help": "std of the per-episode action offset of biased_expert"}
    )
    env: EnvConfig = field(default_factory=lambda: EnvConfig(max_episode_steps=150))
    operator: SimulatedOperatorConfig = field(default_factory=SimulatedOperatorConfig)

    def __post_init__(self) -> None:
        parse_task_list(self.tasks)
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        for name in ("policy_noise", "policy_bias"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TaskResult:
    task: str
    episodes: int
    policy_successes: int  # the weak policy alone
    assisted_successes: int  # the weak policy with the operator
    takeovers: int
    intervention_frames: int
    frames: int
    handbacks_by_reason: dict[str, int]


class WeakPolicyRunner:
    """Produces the weak policy's actions for one task (seeded, so runs repeat)."""

    def __init__(self, task: str, kind: WeakPolicy, noise: float, bias: float, seed: int) -> None:
        self.kind = kind
        self.noise = noise
        self._expert = ScriptedExpert(task)
        self._rng = np.random.default_rng(seed)
        self._bias = np.zeros(ACTION_DIM)
        if kind is WeakPolicy.BIASED_EXPERT:
            self._bias[:3] = self._rng.normal(0.0, bias, size=3)

    def act(self, state: np.ndarray) -> np.ndarray:
        if self.kind is WeakPolicy.ZERO:
            return np.zeros(ACTION_DIM, dtype=np.float32)
        if self.kind is WeakPolicy.RANDOM:
            return self._rng.uniform(-1.0, 1.0, size=ACTION_DIM).astype(np.float32)
        noisy = self._expert.act(state) + self._bias + self._rng.normal(0.0, self.noise, size=ACTION_DIM)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def _episode_seeds(config: ShowcaseConfig, task_index: int) -> list[int]:
    return [config.seed * 1000 + task_index * 100 + i for i in range(config.episodes)]


def run_task(task: str, task_index: int, config: ShowcaseConfig) -> TaskResult:
    """The weak policy alone, then with the operator, on the same seeded layouts."""
    env = MetaWorldEnv(task, config.env)
    policy_successes = assisted_successes = takeovers = intervention_frames = frames = 0
    handbacks: dict[str, int] = {}
    try:
        for seed in _episode_seeds(config, task_index):
            # Alone.
            policy = WeakPolicyRunner(task, config.policy, config.policy_noise, config.policy_bias, seed)
            observation, info = env.reset(seed=seed)
            while True:
                observation, _, terminated, truncated, info = env.step(policy.act(observation["state"]))
                if info["success"] or terminated or truncated:
                    break
            policy_successes += bool(info["success"])

            # With the operator: same layout, same policy noise stream.
            policy = WeakPolicyRunner(task, config.policy, config.policy_noise, config.policy_bias, seed)
            operator = SimulatedOperator(task, config.operator, seed=seed)
            observation, info = env.reset(seed=seed)
            operator.reset(observation)
            while True:
                proposal = policy.act(observation["state"])
                decision = operator.step(observation, proposal, info)
                action = decision.action if decision.action is not None else proposal
                observation, _, terminated, truncated, info = env.step(action)
                frames += 1
                if info["success"] or terminated or truncated:
                    break
            assisted_successes += bool(info["success"])
            takeovers += sum(isinstance(event, TakeOver) for event in operator.events)
            intervention_frames += operator.intervention_steps
            for event in operator.events:
                if isinstance(event, HandBack):
                    handbacks[event.reason.value] = handbacks.get(event.reason.value, 0) + 1
    finally:
        env.close()
    return TaskResult(
        task,
        config.episodes,
        policy_successes,
        assisted_successes,
        takeovers,
        intervention_frames,
        frames,
        handbacks,
    )


def run_showcase(config: ShowcaseConfig) -> list[TaskResult]:
    return [run_task(task, index, config) for index, task in enumerate(parse_task_list(config.tasks))]


def results_table(results: list[TaskResult], config: ShowcaseConfig) -> Table:
    table = Table(
        title=f"weak policy '{config.policy.value}' with the simulated operator: successes, interventions "
        f"({config.episodes} seeded episodes per task, {config.env.max_episode_steps} steps max)"
    )
    table.add_column("task", no_wrap=True)
    for column in ("alone", "with operator", "take-overs", "operator frames"):
        table.add_column(column, justify="right")
    table.add_column("hand-backs", justify="left")
    for r in results:
        share = r.intervention_frames / r.frames if r.frames else 0.0
        handbacks = ", ".join(f"{reason} {count}" for reason, count in sorted(r.handbacks_by_reason.items()))
        table.add_row(
            r.task,
            f"{r.policy_successes}/{r.episodes}",
            f"{r.assisted_successes}/{r.episodes}",
            str(r.takeovers),
            f"{r.intervention_frames}/{r.frames} ({share:.0%})",
            handbacks or "-",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(ShowcaseConfig, args, default_config="sim_showcase.yaml")
    started = time.perf_counter()
    results = run_showcase(config)
    console = Console()
    console.print(results_table(results, config))
    console.print(f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
