"""Evaluate a policy on seeded Meta-World episodes that training never saw.

    sop sim eval --checkpoint runs/bc --tasks reach-v3,push-v3 --episodes 50 --sampler.type rti --json eval.json

Seeds: episode i of every task resets with seed `seed_offset + i`, and `seed_offset` defaults to
EVAL_SEED_OFFSET = 1_000_000. Demonstrations (`sim.demonstrations`) reset with 32-bit words drawn from
`SeedSequence([seed, crc32(task)])`, and the fleet's online episodes use their own streams, so an
evaluation layout coincides with a training one only by a ~1e-6 chance per episode pair; keep evaluation
offsets at or above 1_000_000 and never train on seeds in [offset, offset + episodes).

Per task: success rate (an episode succeeds at its first successful step, which ends it), mean steps,
milliseconds per control step (the policy's `act`, amortized over chunk and non-chunk steps; p99 too,
which is what a 30 Hz loop feels), the median milliseconds of a step that predicts a chunk, and denoiser calls per chunk (mean and median: RTI's first chunk of an
episode is a full solve, every later one runs K' steps). `evaluate_policy` is the same function the fleet
demo calls on its policies.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from sim.metaworld_env import EnvConfig, make_env
from sim.tasks import parse_task_list
from sop.config import ConfigError, config_to_dict, parse_config
from sop.policies import Policy, RTISamplerConfig, SamplerConfig, load_policy

EVAL_SEED_OFFSET: Final = 1_000_000


def evaluate_policy(
    policy: Policy,
    tasks: list[str],
    episodes: int,
    seed_offset: int = EVAL_SEED_OFFSET,
    env_config: EnvConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run `episodes` seeded episodes per task and return per-task and overall figures (JSON-ready)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    config = env_config or EnvConfig()
    per_task: dict[str, dict[str, Any]] = {}
    all_step_ms: list[float] = []
    all_chunk_ms: list[float] = []
    all_calls: list[int] = []
    for task in tasks:
        env = make_env(task, config)
        step_ms: list[float] = []
        chunk_ms: list[float] = []
        chunk_calls: list[int] = []
        successes = 0
        steps_taken: list[int] = []
        try:
            for index in range(episodes):
                seed = seed_offset + index
                observation, _ = env.reset(seed=seed)
                policy.reset(seed=seed)
                success = False
                steps = 0
                while True:
                    observation = dict(observation, task=task)
                    chunks_before = policy.chunks_predicted
                    started = time.perf_counter()
                    action = policy.act(observation)
                    step_ms.append((time.perf_counter() - started) * 1e3)
                    if policy.chunks_predicted != chunks_before:
                        chunk_calls.append(policy.last_denoiser_calls)
                        chunk_ms.append(step_ms[-1])
                    observation, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    if info["success"]:
                        success = True
                        break
                    if terminated or truncated:
                        break
                successes += int(success)
                steps_taken.append(steps)
                if progress:
                    print(
                        f"{task} episode {index + 1}/{episodes}: {'success' if success else 'failure'}",
                        flush=True,
                    )
        finally:
            env.close()
        per_task[task] = {
            "episodes": episodes,
            "successes": successes,
            "success_rate": successes / episodes,
            "mean_steps": float(np.mean(steps_taken)),
            "ms_per_step_mean": float(np.mean(step_ms)),
            "ms_per_step_p99": float(np.percentile(step_ms, 99)),
            "ms_per_chunk_median": float(np.median(chunk_ms)),
            "denoiser_calls_per_chunk_mean": float(np.mean(chunk_calls)),
            "denoiser_calls_per_chunk_median": float(np.median(chunk_calls)),
            "chunks": len(chunk_calls),
        }
        all_step_ms += step_ms
        all_chunk_ms += chunk_ms
        all_calls += chunk_calls
    return {
        "tasks": per_task,
        "success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "ms_per_step_mean": float(np.mean(all_step_ms)),
        "ms_per_step_p99": float(np.percentile(all_step_ms, 99)),
        "ms_per_chunk_median": float(np.median(all_chunk_ms)),
        "denoiser_calls_per_chunk_mean": float(np.mean(all_calls)),
        "denoiser_calls_per_chunk_median": float(np.median(all_calls)),
        "episodes_per_task": episodes,
        "seeds": {"first": seed_offset, "last": seed_offset + episodes - 1},
        "policy_version": policy.version,
    }


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
        if self.tasks:
            parse_task_list(self.tasks)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(EvalConfig, args)
    torch.set_num_threads(config.threads)
    policy = load_policy(config.checkpoint, config.sampler, device=config.device)
    tasks = parse_task_list(config.tasks) if config.tasks else list(policy.tasks)
    if not tasks:
        raise ConfigError(f"tasks: the checkpoint {config.checkpoint} names no tasks; pass --tasks")
    cameras = tuple(getattr(getattr(policy, "config", None), "cameras", ()))
    env_config = EnvConfig(max_episode_steps=config.max_steps)
    if cameras:  # an image-conditioned policy: render the camera it was trained on
        env_config = EnvConfig(max_episode_steps=config.max_steps, image=True, camera=cameras[0])
    results = evaluate_policy(
        policy, tasks, config.episodes, config.seed_offset, env_config, progress=config.progress
    )
    results["checkpoint"] = str(config.checkpoint)
    results["sampler"] = config_to_dict(config.sampler)
    for task, row in results["tasks"].items():
        print(
            f"{task:24s} success {row['success_rate']:.2f} ({row['successes']}/{row['episodes']})  "
            f"{row['ms_per_step_mean']:.2f} ms/step  {row['denoiser_calls_per_chunk_mean']:.1f} calls/chunk"
        )
    print(f"{'mean':24s} success {results['success_rate']:.2f}")
    if config.json:
        path = Path(config.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    return 0
