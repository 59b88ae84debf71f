"""The lerobot adapter: a tiny randomly initialised lerobot DiffusionPolicy behind SOP's Policy interface."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sop.policies import load_policy
from sop.policies.lerobot_adapter import LeRobotPolicyAdapter


@pytest.fixture(scope="module")
def lerobot_policy() -> Any:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    config = DiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (39,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (39,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        pretrained_backbone_weights=None,
        num_inference_steps=4,
        device="cpu",
    )
    return DiffusionPolicy(config)


def test_adapter_acts_with_the_right_shapes_and_counts_denoiser_calls(
    lerobot_policy: Any, stats_factory: Any, obs_factory: Any
) -> None:
    adapter = LeRobotPolicyAdapter(lerobot_policy, stats_factory(), version=2, tasks=("reach-v3",))
    adapter.reset(seed=0)
    actions = np.stack([adapter.act(obs_factory(step)) for step in range(9)])
    assert actions.shape == (9, 4) and actions.dtype == np.float32
    assert np.isfinite(actions).all()
    assert adapter.chunks_predicted == 2  # 8 actions per chunk
    assert adapter.last_denoiser_calls == 4  # num_inference_steps, counted on the U-Net
    chunk = adapter.predict_chunk(obs_factory(0))
    assert chunk.actions.shape == (8, 4) and chunk.trajectory is None
    with pytest.raises(ValueError, match="warm_start"):
        adapter.predict_chunk(obs_factory(0), warm_start=torch.zeros(16, 4))


def test_adapter_checkpoint_round_trip(
    tmp_path: Path, lerobot_policy: Any, stats_factory: Any, obs_factory: Any
) -> None:
    adapter = LeRobotPolicyAdapter(lerobot_policy, stats_factory(), version=5, tasks=("reach-v3",))
    directory = adapter.save(tmp_path / "ckpt")
    loaded = load_policy(directory)
    assert isinstance(loaded, LeRobotPolicyAdapter)
    assert loaded.version == 5 and loaded.tasks == ("reach-v3",)
    actions = []
    for policy in (adapter, loaded):  # lerobot draws noise from torch's global generator: one at a time
        policy.reset(seed=3)
        actions.append(policy.act(obs_factory(0)))
    np.testing.assert_allclose(actions[0], actions[1], atol=1e-6)


def test_adapter_trains_through_the_sop_trainer(lerobot_policy: Any, stats_factory: Any) -> None:
    from sop.training.trainer import BCTrainer, OptimizerConfig

    adapter = LeRobotPolicyAdapter(copy.deepcopy(lerobot_policy), stats_factory())
    rng = np.random.default_rng(0)
    batch = {
        "observation.state": rng.normal(size=(4, 2, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(4, 16, 4)).astype(np.float32),
        "action_is_pad": np.zeros((4, 16), bool),
        "instruction": ["reach"] * 4,
        "weight": np.ones(4, np.float32),
    }
    trainer = BCTrainer(adapter, OptimizerConfig(lr=1e-3, warmup_steps=0), total_steps=2)
    before = {k: v.clone() for k, v in adapter.network.state_dict().items()}
    metrics = trainer.step(batch)
    assert np.isfinite(metrics["loss"])
    assert any(not torch.equal(before[k], v) for k, v in adapter.network.state_dict().items())
    assert isinstance(trainer.ema_policy(), LeRobotPolicyAdapter)
    with pytest.raises(ValueError, match="uniform weights"):
        adapter.compute_loss(dict(batch, weight=np.array([1, 0, 1, 1], np.float32)))
