"""The demo's held-out evaluation: successes counted per task (so the report can give intervals), the same
counts whether one process or several evaluate, from a checkpoint's bytes as the learner publishes them."""

from __future__ import annotations

import numpy as np
import torch

from fleet_harness.demo import FleetDemoConfig, evaluate_checkpoint, evaluation_workers
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies import DDIMSamplerConfig
from sop.policies.configuration_diffusion import DiffusionPolicyConfig
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.success_rate import SuccessCount


def _blob(tasks: tuple[str, ...]) -> bytes:
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(32, 39)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(32, 4)).astype(np.float32)],
        }
    )
    torch.manual_seed(0)
    config = DiffusionPolicyConfig(instruction_encoder="task", tasks=tasks, down_dims=(16, 32))  # type: ignore[arg-type]
    return DiffusionPolicy(config, stats).to_bytes()


def test_evaluate_checkpoint_counts_successes_per_task() -> None:
    tasks = ["reach-v3", "push-v3"]
    config = FleetDemoConfig(
        tasks=tasks, eval_episodes=3, max_episode_steps=5, sampler=DDIMSamplerConfig(steps=2), live=False
    )
    blob = _blob(tuple(tasks))
    counts = evaluate_checkpoint(blob, config, workers=2)  # the published blob goes to both processes
    assert list(counts) == tasks
    assert all(isinstance(c, SuccessCount) and c.episodes == 3 for c in counts.values())
    assert evaluate_checkpoint(blob, config, workers=1) == counts
    assert evaluation_workers() >= 1
