"""Evaluate a policy on seeded Meta-World episodes that training never saw.

    sop sim eval --checkpoint runs/bc --tasks reach-v3,push-v3 --episodes 50 --sampler.type rti --json eval.json
    sop sim eval --checkpoint runs/bc --episodes 50 --workers 2      # the same figures, on two processes
    sop sim eval --checkpoint runs/bc --deployment shifted-objects  # under a deployment shift (sim/deployment.py)

Episodes run under `EnvConfig.deployment` (nominal by default; `--deployment NAME` picks a preset of
configs/deployments/): a policy is judged in the conditions it is deployed into, not those it was shown. The
results name the deployment and what it shifts.

Seeds: episode i of every task resets with seed `seed_offset + i`, and `seed_offset` defaults to
EVAL_SEED_OFFSET = 1_000_000. Demonstrations (`sim.demonstrations`) reset with 32-bit words drawn from
`SeedSequence([seed, crc32(task)])`, and the fleet's online episodes use their own streams, so an
evaluation layout coincides with a training one only by a ~1e-6 chance per episode pair; keep evaluation
offsets at or above 1_000_000 and never train on seeds in [offset, offset + episodes).

Per task: successes out of episodes, the success rate and its Wilson 95 % interval (`sop.success_rate`; an
episode succeeds at its first successful step, which ends it), each episode's outcome, steps and summed env
reward in seed order (the reward tells weak policies apart where success does not), mean steps, milliseconds
per control step (the policy's `act`, amortized over chunk and non-chunk steps; p99 too, which is what a
30 Hz loop feels), the median milliseconds of a step that predicts a chunk, and denoiser calls per chunk (mean
and median: RTI's first chunk of an episode is a full solve, every later one runs K' steps). Overall: the
mean success over tasks and, since every task runs the same number of episodes, the pooled Wilson interval
over all of them as the mean's interval. `evaluate_policy` is the same function the fleet demo calls on its
policies.

Parallel evaluation (`evaluate_checkpoint_parallel`, `--workers N`) splits each task's episodes into ranges
that N spawned processes run, each loading the policy itself from the checkpoint (a policy object is never
pickled) with one torch thread. Every episode resets the environment and the policy's sampling with its own
seed, so its outcome does not depend on which process ran it or what ran before: the merged figures are those
of the sequential evaluation of the same seeds, except the timings, which are taken over all steps of all
processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from sim.deployment import NOMINAL, load_deployment
from sim.metaworld_env import EnvConfig, make_env
from sim.tasks import parse_task_list
from sop.config import ConfigError, config_from_dict, config_to_dict, parse_config
from sop.policies import Policy, RTISamplerConfig, SamplerConfig, load_policy
from sop.success_rate import SuccessCount, format_success, pooled

EVAL_SEED_OFFSET: Final = 1_000_000
# Episode ranges per worker process: several, so a process that drew short (successful) episodes takes
# another range instead of idling while another runs out the step limit on a failing task; a range costs
# one environment construction (~0.3 s), so the last range left running is short (50 episodes x 4 tasks on
# 2 workers: ranges of 12-13 episodes).
RANGES_PER_WORKER: Final = 8


@dataclass
class EpisodeRecords:
    """What episodes `first, first + 1, ...` of one task produced, before any summary: ranges run by
    different processes concatenate, in episode order, into exactly what one process would have recorded."""

    task: str
    first: int
    success: list[bool] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)
    chunk_calls: list[int] = field(default_factory=list)
    policy_version: int = 0

    @classmethod
    def concatenate(cls, task: str, parts: Sequence[EpisodeRecords]) -> EpisodeRecords:
        """The parts of one task, in episode order; refuses gaps and overlaps (a lost or doubled range)."""
        ordered = sorted(parts, key=lambda part: part.first)
        merged = cls(task, ordered[0].first if ordered else 0)
        for part in ordered:
            expected = merged.first + len(merged.success)
            if part.task != task or part.first != expected:
                raise RuntimeError(
                    f"evaluation of {task}: got episodes from {part.first} of {part.task}, expected {expected}"
                )
            merged.success += part.success
            merged.steps += part.steps
            merged.returns += part.returns
            merged.step_ms += part.step_ms
            merged.chunk_ms += part.chunk_ms
            merged.chunk_calls += part.chunk_calls
            merged.policy_version = part.policy_version
        return merged


def run_episodes(
    policy: Policy,
    task: str,
    first: int,
    stop: int,
    seed_offset: int,
    env_config: EnvConfig,
    progress: bool = False,
    episodes: int | None = None,
) -> EpisodeRecords:
    """Episodes `first .. stop - 1` of `task` (reset seeds `seed_offset + index`) on one environment."""
    records = EpisodeRecords(task, first, policy_version=policy.version)
    env = make_env(task, env_config)
    try:
        for index in range(first, stop):
            seed = seed_offset + index
            observation, _ = env.reset(seed=seed)
            policy.reset(seed=seed)
            success = False
            steps = 0
            episode_return = 0.0
            while True:
                observation = dict(observation, task=task)
                chunks_before = policy.chunks_predicted
                started = time.perf_counter()
                action = policy.act(observation)
                records.step_ms.append((time.perf_counter() - started) * 1e3)
                if policy.chunks_predicted != chunks_before:
                    records.chunk_calls.append(policy.last_denoiser_calls)
                    records.chunk_ms.append(records.step_ms[-1])
                observation, reward, terminated, truncated, info = env.step(action)
                episode_return += float(reward)
                steps += 1
                if info["success"]:
                    success = True
                    break
                if terminated or truncated:
                    break
            records.success.append(success)
            records.steps.append(steps)
            records.returns.append(episode_return)
            if progress:
                print(
                    f"{task} episode {index + 1}/{episodes or stop}: {'success' if success else 'failure'}",
                    flush=True,
                )
    finally:
        env.close()
    return records


def _timing(step_ms: list[float], chunk_ms: list[float], chunk_calls: list[int]) -> dict[str, float]:
    return {
        "ms_per_step_mean": float(np.mean(step_ms)),
        "ms_per_step_p99": float(np.percentile(step_ms, 99)),
        "ms_per_chunk_median": float(np.median(chunk_ms)),
        "denoiser_calls_per_chunk_mean": float(np.mean(chunk_calls)),
        "denoiser_calls_per_chunk_median": float(np.median(chunk_calls)),
    }


def summarize_records(
    records: Mapping[str, EpisodeRecords], episodes: int, seed_offset: int, policy_version: int
) -> dict[str, Any]:
    """The JSON-ready results of `evaluate_policy` from each task's records (tasks in `records`' order)."""
    per_task: dict[str, dict[str, Any]] = {}
    counts = []
    for task, r in records.items():
        count = SuccessCount(sum(r.success), len(r.success))
        counts.append(count)
        per_task[task] = {
            "episodes": count.episodes,
            "successes": count.successes,
            "success_rate": count.rate,
            "ci95": list(count.ci95),
            "episode_success": list(r.success),
            "episode_steps": list(r.steps),
            "episode_return": list(r.returns),
            "mean_steps": float(np.mean(r.steps)),
            **_timing(r.step_ms, r.chunk_ms, r.chunk_calls),
            "chunks": len(r.chunk_calls),
        }
    total = pooled(counts)
    return {
        "tasks": per_task,
        "success_rate": float(np.mean([c.rate for c in counts])),
        "successes": total.successes,
        "episodes": total.episodes,
        "ci95": list(total.ci95),
        **_timing(
            [ms for r in records.values() for ms in r.step_ms],
            [ms for r in records.values() for ms in r.chunk_ms],
            [calls for r in records.values() for calls in r.chunk_calls],
        ),
        "episodes_per_task": episodes,
        "seeds": {"first": seed_offset, "last": seed_offset + episodes - 1},
        "policy_version": policy_version,
    }


def _check_request(tasks: Sequence[str], episodes: int) -> None:
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not tasks:
        raise ValueError("tasks: name at least one task to evaluate on")


def evaluate_policy(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    seed_offset: int = EVAL_SEED_OFFSET,
    env_config: EnvConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run `episodes` seeded episodes per task and return per-task and overall figures (JSON-ready).

    Per task `ci95` is the Wilson 95 % interval of its success rate. Overall `success_rate` is the mean over
    tasks; every task ran the same number of episodes, so that mean is the pooled rate and its `ci95` is the
    pooled Wilson interval over all `successes` / `episodes` (slightly conservative for a mean of tasks with
    different rates: `sop.success_rate`)."""
    _check_request(tasks, episodes)
    config = env_config or EnvConfig()
    records = {
        task: run_episodes(policy, task, 0, episodes, seed_offset, config, progress, episodes)
        for task in tasks
    }
    return _with_deployment(summarize_records(records, episodes, seed_offset, policy.version), config)


def _with_deployment(results: dict[str, Any], config: EnvConfig) -> dict[str, Any]:
    results["deployment"] = {"name": config.deployment.name, "shifts": config.deployment.shifts()}
    return results


# Parallel evaluation ------------------------------------------------------------------------------------------


def sampler_as_dict(sampler: SamplerConfig | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A sampler config as the plain dict a worker process receives (`config_to_dict`'s form)."""
    if sampler is None:
        return None
    return dict(sampler) if isinstance(sampler, Mapping) else config_to_dict(sampler)


def sampler_from_dict(sampler: Mapping[str, Any] | None) -> SamplerConfig | None:
    return None if sampler is None else config_from_dict(SamplerConfig, sampler)  # type: ignore[type-abstract]


# A worker process's checkpoint (set when it starts) and the policy it loads from it on its first range; the
# load happens inside a task, not in the pool's initializer, so a bad checkpoint raises its own error here.
_worker_state: dict[str, Any] = {}


def _start_worker(source: str | bytes, sampler: dict[str, Any] | None, device: str) -> None:
    torch.set_num_threads(1)
    _worker_state.update(source=source, sampler=sampler, device=device)


def _worker_policy() -> Policy:
    if "policy" not in _worker_state:
        sampler = sampler_from_dict(_worker_state["sampler"])
        _worker_state["policy"] = load_policy(
            _worker_state["source"], sampler, device=_worker_state["device"]
        )
    policy: Policy = _worker_state["policy"]
    return policy


def _run_range(
    task: str,
    first: int,
    stop: int,
    seed_offset: int,
    env_config: dict[str, Any],
    progress: bool,
    episodes: int,
) -> EpisodeRecords:
    return run_episodes(
        _worker_policy(), task, first, stop, seed_offset, EnvConfig(**env_config), progress, episodes
    )


def episode_ranges(tasks: Sequence[str], episodes: int, workers: int) -> list[tuple[str, int, int]]:
    """(task, first, stop) ranges covering every task's episodes 0 .. episodes - 1, about
    RANGES_PER_WORKER per worker in all, each task split into near-equal consecutive ranges."""
    pieces = min(episodes, max(1, math.ceil(RANGES_PER_WORKER * workers / max(1, len(tasks)))))
    bounds = [round(i * episodes / pieces) for i in range(pieces + 1)]
    return [(task, lo, hi) for task in tasks for lo, hi in itertools.pairwise(bounds) if hi > lo]


def evaluate_checkpoint_parallel(
    source: bytes | str | Path,
    sampler: SamplerConfig | Mapping[str, Any] | None,
    tasks: list[str],
    episodes: int,
    seed_offset: int = EVAL_SEED_OFFSET,
    env_config: EnvConfig | None = None,
    workers: int = 1,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """`evaluate_policy` of the checkpoint `source` (a checkpoint's bytes, file or directory) with `sampler`
    (a config or its `config_to_dict` form), its episode ranges spread over `workers` spawned processes.

    Each process loads its own policy from `source` (one torch thread each); only bytes, paths and plain
    dicts cross the process boundary. The results equal `evaluate_policy`'s for the same seeds, episode for
    episode; timing figures are taken over the steps of all processes. `workers=1` evaluates in this process
    (with this process's torch threads)."""
    if isinstance(source, Policy):
        raise TypeError(
            "source: pass the checkpoint (its bytes, file or directory), not a policy object: every worker "
            "process loads its own policy from it"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_request(tasks, episodes)
    config = env_config or EnvConfig()
    sampler_dict = sampler_as_dict(sampler)
    source_arg = source if isinstance(source, bytes) else str(source)
    if workers == 1:
        policy = load_policy(source_arg, sampler_from_dict(sampler_dict), device=device)
        return evaluate_policy(policy, list(tasks), episodes, seed_offset, config, progress)

    ranges = episode_ranges(tasks, episodes, workers)
    env_dict = dataclasses.asdict(config)
    parts: dict[str, list[EpisodeRecords]] = {task: [] for task in tasks}
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(ranges)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(source_arg, sampler_dict, device),
    )
    try:
        futures: list[Future[EpisodeRecords]] = [
            executor.submit(_run_range, task, lo, hi, seed_offset, env_dict, progress, episodes)
            for task, lo, hi in ranges
        ]
        for future in futures:
            part = future.result()
            parts[part.task].append(part)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    records = {task: EpisodeRecords.concatenate(task, parts[task]) for task in tasks}
    for task, merged in records.items():
        if len(merged.success) != episodes or merged.first != 0:
            raise RuntimeError(
                f"evaluation of {task}: {len(merged.success)} of {episodes} episodes came back"
            )
    version = next(iter(records.values())).policy_version
    return _with_deployment(summarize_records(records, episodes, seed_offset, version), config)


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = field(default="", metadata={"help": "checkpoint directory or file"})
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "tasks; empty: those the checkpoint names"}
    )
    episodes: int = 20
    sampler: SamplerConfig = field(
        default_factory=RTISamplerConfig,
        metadata={"help": "the policy's sampler: --sampler.type rti|ddim|ddpm and that kind's keys"},
    )
    seed_offset: int = field(default=EVAL_SEED_OFFSET, metadata={"help": "first reset seed (>= 1_000_000)"})
    max_steps: int = field(default=200, metadata={"help": "episode step limit"})
    device: str = "cpu"
    threads: int = 1
    workers: int = field(
        default=1,
        metadata={"help": "processes that run episodes in parallel (one torch thread each); 1: this one"},
    )
    deployment: str = field(
        default=NOMINAL,
        metadata={"help": "deployment preset the episodes run under (configs/deployments/<name>.yaml)"},
    )
    json: str = field(default="", metadata={"help": "write the results to this JSON file"})
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint: name the checkpoint to evaluate (--checkpoint DIR)")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.tasks:
            parse_task_list(self.tasks)
        load_deployment(self.deployment)  # an unknown preset stops here, with the list of presets


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(EvalConfig, args)
    torch.set_num_threads(config.threads)
    policy = load_policy(config.checkpoint, config.sampler, device=config.device)
    tasks = parse_task_list(config.tasks) if config.tasks else list(policy.tasks)
    if not tasks:
        raise ConfigError(f"tasks: the checkpoint {config.checkpoint} names no tasks; pass --tasks")
    cameras = tuple(getattr(getattr(policy, "config", None), "cameras", ()))
    deployment = load_deployment(config.deployment)
    env_config = EnvConfig(max_episode_steps=config.max_steps, deployment=deployment)
    if cameras:  # an image-conditioned policy: render the camera it was trained on
        env_config = EnvConfig(
            max_episode_steps=config.max_steps, image=True, camera=cameras[0], deployment=deployment
        )
    if config.workers > 1:
        results = evaluate_checkpoint_parallel(
            config.checkpoint,
            config.sampler,
            tasks,
            config.episodes,
            config.seed_offset,
            env_config,
            workers=config.workers,
            device=config.device,
            progress=config.progress,
        )
    else:
        results = evaluate_policy(
            policy, tasks, config.episodes, config.seed_offset, env_config, progress=config.progress
        )
    results["checkpoint"] = str(config.checkpoint)
    results["sampler"] = config_to_dict(config.sampler)
    for task, row in results["tasks"].items():
        print(
            f"{task:24s} success {format_success(row['successes'], row['episodes'])}  "
            f"{row['ms_per_step_mean']:.2f} ms/step  {row['denoiser_calls_per_chunk_mean']:.1f} calls/chunk"
        )
    print(f"{'mean':24s} success {format_success(results['successes'], results['episodes'])}")
    print(f"deployment: {deployment.name} {deployment.shifts() or ''}".rstrip())
    if config.json:
        path = Path(config.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    return 0
