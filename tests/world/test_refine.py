"""`sop world refine`: a policy refined in imagination is an ordinary checkpoint that records its steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from sop.checkpoint import read_manifest
from sop.policies import load_policy
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, GripperMode
from sop.training.bc import TrainBCConfig, train_bc
from sop.training.trainer import OptimizerConfig
from sop.world.modeling_world import WorldModelError
from sop.world.refine import RefineConfig, refine

TINY_POLICY = DiffusionPolicyConfig(
    instruction_encoder="task",  # type: ignore[arg-type]
    down_dims=(16, 32),
    state_hidden_dim=32,
    state_feature_dim=16,
    instruction_feature_dim=8,
    timestep_embed_dim=16,
    gripper_mode=GripperMode.NONE,
)


@pytest.fixture(scope="module")
def base_checkpoint(point_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refine") / "base"
    train_bc(
        TrainBCConfig(
            store=str(point_store),
            out=str(out),
            steps=4,
            batch_size=16,
            save_every=4,
            progress=False,
            threads=1,
            device="cpu",
            policy=TINY_POLICY,
            optim=OptimizerConfig(lr=1e-3, warmup_steps=1),
        )
    )
    return out


def _config(world: Path, checkpoint: Path, out: Path, **changes: object) -> RefineConfig:
    values: dict[str, object] = {
        "world": str(world),
        "checkpoint": str(checkpoint),
        "out": str(out),
        "rounds": 2,
        "rollouts_per_task": 3,
        "horizon": 12,
        "sampler_steps": 2,
        "bc_steps": 2,
        "batch_size": 8,
        "threshold": 0.3,
    }
    values.update(changes)
    return RefineConfig(**values)  # type: ignore[arg-type]


def test_refine_writes_a_loadable_checkpoint_with_zero_real_steps(
    trained: Path, base_checkpoint: Path, tmp_path: Path
) -> None:
    result = refine(_config(trained, base_checkpoint, tmp_path / "refined"))
    policy = load_policy(tmp_path / "refined")  # where `sop sim eval --checkpoint` loads it
    base = read_manifest(base_checkpoint)
    manifest = read_manifest(tmp_path / "refined")
    assert policy.version == base.version + 1 and manifest.parent_version == base.version
    extra = manifest.extra
    assert extra["real_env_steps"] == 0
    assert extra["imagined_steps"] == result.extra["imagined_steps"] > 0
    assert extra["imagined_steps"] <= 2 * 2 * 3 * 12  # rounds x tasks x rollouts x horizon
    assert len(extra["refine_rounds"]) == 2 and extra["refined_by"] == "sop.world.refine"
    assert extra["tasks"] == base.extra["tasks"]


def test_refine_refuses_bad_inputs(trained: Path, base_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(WorldModelError, match="not a world model"):
        refine(_config(base_checkpoint, base_checkpoint, tmp_path / "x"))  # a policy passed as the world
    with pytest.raises(ValueError, match="exploration_std"):
        _config(trained, base_checkpoint, tmp_path / "x", exploration_std=2.0)
    with pytest.raises(WorldModelError, match="not ones this world model"):
        refine(_config(trained, base_checkpoint, tmp_path / "x", tasks=["drawer-open-v3"]))
