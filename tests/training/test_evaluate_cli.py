"""`sop sim eval`: a checkpoint evaluated on seeded held-out Meta-World episodes, results as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sim.evaluate import EVAL_SEED_OFFSET, main
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import DiffusionPolicyConfig
from sop.policies.modeling_diffusion import DiffusionPolicy


def test_eval_command_writes_per_task_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(32, 39)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(32, 4)).astype(np.float32)],
        }
    )
    config = DiffusionPolicyConfig(instruction_encoder="task", tasks=("reach-v3",), down_dims=(16, 32))  # type: ignore[arg-type]
    DiffusionPolicy(config, stats).save(tmp_path / "ckpt")
    out = tmp_path / "eval.json"
    argv = [
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--episodes",
        "2",
        "--sampler.type",
        "ddim",
        "--sampler.steps",
        "2",
    ]
    assert main([*argv, "--max_steps", "10", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    row = results["tasks"]["reach-v3"]  # the checkpoint's tasks by default
    assert row["episodes"] == 2 and 0.0 <= row["success_rate"] <= 1.0
    assert row["mean_steps"] <= 10
    assert row["denoiser_calls_per_chunk_median"] == 2
    assert results["seeds"] == {"first": EVAL_SEED_OFFSET, "last": EVAL_SEED_OFFSET + 1}
