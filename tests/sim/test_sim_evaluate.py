"""`sim.evaluate`: success with its Wilson interval, and parallel evaluation that gives the sequential figures
episode for episode (every episode resets the environment and the policy's sampling with its own seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sim.evaluate import (
    EVAL_SEED_OFFSET,
    RANGES_PER_WORKER,
    episode_ranges,
    evaluate_checkpoint_parallel,
    evaluate_policy,
    main,
)
from sim.metaworld_env import EnvConfig
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies import DDIMSamplerConfig, load_policy
from sop.policies.configuration_diffusion import DiffusionPolicyConfig
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.success_rate import wilson_interval

TASKS = ["reach-v3", "push-v3"]
TIMING = {"ms_per_step_mean", "ms_per_step_p99", "ms_per_chunk_median"}


def _save_tiny_policy(path: Path) -> Path:
    """A randomly initialised diffusion policy: it fails, but each episode's summed reward depends on the
    layout (the reset seed) and the sampling noise (the policy's seed), so it fingerprints the episode."""
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(32, 39)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(32, 4)).astype(np.float32)],
        }
    )
    torch.manual_seed(0)
    config = DiffusionPolicyConfig(instruction_encoder="task", tasks=tuple(TASKS), down_dims=(16, 32))  # type: ignore[arg-type]
    DiffusionPolicy(config, stats).save(path)
    return path


def _without_timing(results: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in results.items() if k not in TIMING}
    kept["tasks"] = {
        t: {k: v for k, v in row.items() if k not in TIMING} for t, row in results["tasks"].items()
    }
    return kept


def test_parallel_workers_give_the_sequential_results_episode_for_episode(tmp_path: Path) -> None:
    checkpoint = _save_tiny_policy(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(checkpoint), "--tasks", "[reach-v3,push-v3]", "--episodes", "5"]
    argv += ["--sampler.type", "ddim", "--sampler.steps", "2", "--max_steps", "15", "--workers", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    parallel = json.loads(out.read_text())

    policy = load_policy(checkpoint, DDIMSamplerConfig(steps=2))
    sequential = evaluate_policy(policy, TASKS, 5, env_config=EnvConfig(max_episode_steps=15))

    # 2 workers took 8 ranges of 1-2 episodes of either task, in whatever order they came.
    assert json.loads(json.dumps(_without_timing(sequential))) == {
        k: v for k, v in _without_timing(parallel).items() if k not in ("checkpoint", "sampler")
    }
    for task in TASKS:
        returns = parallel["tasks"][task]["episode_return"]
        assert len(set(returns)) == 5  # every episode distinct: a wrong seed anywhere would show
        assert parallel["tasks"][task]["episode_steps"] == [15] * 5
        assert parallel["tasks"][task]["ms_per_step_mean"] > 0
    assert parallel["sampler"]["type"] == "ddim"


def test_results_carry_counts_and_wilson_intervals(tmp_path: Path) -> None:
    policy = load_policy(_save_tiny_policy(tmp_path / "ckpt"), DDIMSamplerConfig(steps=2))
    results = evaluate_policy(policy, TASKS, 3, env_config=EnvConfig(max_episode_steps=5))
    for row in results["tasks"].values():
        assert (row["successes"], row["episodes"]) == (sum(row["episode_success"]), 3)
        assert row["ci95"] == list(wilson_interval(row["successes"], 3))
    total = sum(row["successes"] for row in results["tasks"].values())
    assert (results["successes"], results["episodes"]) == (total, 6)
    assert results["ci95"] == list(wilson_interval(total, 6))  # the mean's interval: pooled over all episodes
    assert results["seeds"] == {"first": EVAL_SEED_OFFSET, "last": EVAL_SEED_OFFSET + 2}


@pytest.mark.parametrize(("tasks", "episodes", "workers"), [(4, 50, 2), (1, 3, 8), (3, 7, 1), (2, 1, 4)])
def test_episode_ranges_cover_every_episode_once(tasks: int, episodes: int, workers: int) -> None:
    names = [f"task-{i}" for i in range(tasks)]
    ranges = episode_ranges(names, episodes, workers)
    for name in names:
        mine = [(lo, hi) for task, lo, hi in ranges if task == name]
        assert [lo for lo, _ in mine] == [0] + [hi for _, hi in mine[:-1]] and mine[-1][1] == episodes
        assert all(hi > lo for lo, hi in mine)
    assert len(ranges) <= max(tasks, RANGES_PER_WORKER * workers + tasks)
    sizes = [hi - lo for _, lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1  # near-equal shares, so no range holds up the others


def test_parallel_evaluation_takes_a_checkpoint_not_a_policy(tmp_path: Path) -> None:
    checkpoint = _save_tiny_policy(tmp_path / "ckpt")
    with pytest.raises(TypeError, match="not a policy object"):
        evaluate_checkpoint_parallel(load_policy(checkpoint), None, TASKS, 2, workers=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        evaluate_checkpoint_parallel(checkpoint, None, TASKS, 2, workers=0)
    with pytest.raises(ValueError, match="name at least one task"):
        evaluate_checkpoint_parallel(checkpoint, None, [], 2, workers=2)
