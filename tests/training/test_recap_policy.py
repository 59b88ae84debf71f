"""The advantage-conditioned diffusion policy (RECAP): training with indicator dropout, checkpoints that
record the conditioning, classifier-free guidance through every sampler, and unconditioned checkpoints that
behave exactly as before the feature existed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from sop.checkpoint import load_checkpoint
from sop.config import config_from_dict
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import (
    DDIMSamplerConfig,
    DDPMSamplerConfig,
    DiffusionPolicyConfig,
    InstructionEncoderKind,
    RTISamplerConfig,
    SamplerConfig,
)
from sop.policies.modeling_diffusion import (
    ADVANTAGE_CONDITION,
    ADVANTAGE_NEGATIVE,
    ADVANTAGE_POSITIVE,
    ADVANTAGE_UNKNOWN,
    DiffusionPolicy,
    advantage_condition,
)

OBSERVATION = {"state": np.linspace(-1, 1, 6, dtype=np.float32), "task": "b"}


def stats() -> NormalizationStats:
    rng = np.random.default_rng(0)
    return NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(50, 6)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(50, 3)).astype(np.float32)],
        }
    )


def config(**overrides: object) -> DiffusionPolicyConfig:
    values: dict[str, object] = dict(
        state_dim=6,
        action_dim=3,
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=("a", "b"),
        state_hidden_dim=16,
        state_feature_dim=8,
        instruction_feature_dim=4,
        down_dims=(8, 16),
        timestep_embed_dim=8,
        gripper_index=None,
        gripper_mode="none",
    )
    values.update(overrides)
    return DiffusionPolicyConfig(**values)  # type: ignore[arg-type]


def plain_policy(sampler: SamplerConfig) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(config(), stats(), sampler)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_an_unconditioned_checkpoint_predicts_bit_for_bit_as_before(tmp_path: Path) -> None:
    """Digests recorded with the policy code before advantage conditioning existed (same seeds, this
    torch build): a plain policy's DDIM chunk and RTI warm-started chunk must not move by one bit."""
    policy = plain_policy(DDIMSamplerConfig(steps=5, seed=3))
    assert digest(policy.predict_chunk(OBSERVATION).actions) == (
        "b577f3fc5d318ce0cb0b0885cf9e0498ae06572a100eac747a603d23f0c0d65a"
    )
    policy.set_sampler(RTISamplerConfig(seed=3))
    first = policy.predict_chunk(OBSERVATION)
    assert first.trajectory is not None
    second = policy.predict_chunk(OBSERVATION, warm_start=first.trajectory[None])
    assert second.denoiser_calls == 3
    assert digest(second.actions) == "842b00a1e00d7b3ce5a37e9ac3d7d4a06e7575059d5ebbdbde6fa7a49375b9b1"
    # Its checkpoint holds no indicator weights and says it expects none.
    checkpoint = load_checkpoint(policy.save(tmp_path / "plain"))
    assert not any(name.startswith("advantage") for name in checkpoint.tensors)
    assert checkpoint.manifest.policy_config["advantage_conditioning"] is False
    # A manifest written before the fields existed reads as the same, unconditioned, config.
    older = {
        k: v
        for k, v in checkpoint.manifest.policy_config.items()
        if k not in ("advantage_conditioning", "guidance_beta")
    }
    assert config_from_dict(DiffusionPolicyConfig, older) == policy.config


def test_a_plain_policy_refuses_a_batch_with_an_indicator() -> None:
    policy = plain_policy(DDIMSamplerConfig(steps=2))
    batch = training_batch(4)
    batch[ADVANTAGE_CONDITION] = np.full(4, ADVANTAGE_POSITIVE)
    with pytest.raises(ValueError, match="advantage_conditioning"):
        policy.compute_loss(batch)


def test_guidance_beta_needs_the_conditioning() -> None:
    with pytest.raises(ValueError, match="guidance_beta"):
        config(guidance_beta=2.0)


def training_batch(size: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    return {
        STATE: rng.normal(size=(size, 2, 6)).astype(np.float32),
        ACTION: rng.uniform(-1, 1, size=(size, 16, 3)).astype(np.float32),
        "task": ["a", "b"] * (size // 2),
    }


def test_indicator_dropout_replaces_the_configured_share_with_unknown() -> None:
    positive = np.arange(10_000) % 3 == 0
    indices = advantage_condition(positive, 0.3, np.random.default_rng(0))
    assert (indices == ADVANTAGE_UNKNOWN).mean() == pytest.approx(0.3, abs=0.02)
    kept = indices != ADVANTAGE_UNKNOWN
    assert np.array_equal(indices[kept] == ADVANTAGE_POSITIVE, positive[kept])
    assert set(np.unique(indices[kept & ~positive])) == {ADVANTAGE_NEGATIVE}
    assert (advantage_condition(positive, 0.0, np.random.default_rng(0)) != ADVANTAGE_UNKNOWN).all()


def test_conditioned_loss_trains_the_indicator_embedding_with_dropout() -> None:
    policy = plain_policy(DDIMSamplerConfig(steps=2)).with_advantage_conditioning()
    batch = training_batch(64)
    positive = np.arange(64) % 2 == 0
    batch[ADVANTAGE_CONDITION] = advantage_condition(positive, 0.3, np.random.default_rng(0))
    loss = policy.compute_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    grad = policy.network.advantage.weight.grad
    assert grad is not None
    assert all(grad[i].abs().sum() > 0 for i in (ADVANTAGE_UNKNOWN, ADVANTAGE_NEGATIVE, ADVANTAGE_POSITIVE))
    # The indicator changes the condition: another index, another loss (same noise).
    with torch.no_grad():
        policy.network.advantage.weight.normal_()
    losses = []
    for index in (ADVANTAGE_NEGATIVE, ADVANTAGE_POSITIVE):
        torch.manual_seed(5)
        losses.append(
            float(policy.compute_loss(dict(batch, **{ADVANTAGE_CONDITION: np.full(64, index)})).detach())
        )
    assert losses[0] != losses[1]


def conditioned_policy(beta: float, sampler: SamplerConfig) -> DiffusionPolicy:
    policy = plain_policy(sampler).with_advantage_conditioning(beta)
    with torch.no_grad():  # a trained indicator: "good" and "unknown" lead to different noise predictions
        policy.network.advantage.weight.copy_(torch.randn(policy.network.advantage.weight.shape) * 2)
    return policy


def test_a_conditioned_checkpoint_round_trips_and_records_its_conditioning(tmp_path: Path) -> None:
    policy = conditioned_policy(1.7, DDIMSamplerConfig(steps=4, seed=2))
    path = policy.save(tmp_path / "recap")
    manifest = load_checkpoint(path).manifest
    assert manifest.policy_config["advantage_conditioning"] is True
    assert manifest.policy_config["guidance_beta"] == 1.7
    loaded = DiffusionPolicy.load(path, DDIMSamplerConfig(steps=4, seed=2))
    assert loaded.config.advantage_conditioning and loaded.config.guidance_beta == 1.7
    assert torch.equal(loaded.network.advantage.weight, policy.network.advantage.weight)
    assert np.array_equal(
        loaded.predict_chunk(OBSERVATION).actions, policy.predict_chunk(OBSERVATION).actions
    )
    # The wire blob too (what robots load), and in-place swaps only between like checkpoints.
    assert DiffusionPolicy.from_bytes(policy.to_bytes()).config.advantage_conditioning
    assert not plain_policy(DDIMSamplerConfig(steps=4)).load_weights_in_place(policy.to_bytes())


def test_conversion_from_a_plain_base_predicts_what_the_base_did() -> None:
    base = plain_policy(DDIMSamplerConfig(steps=5, seed=3))
    converted = base.with_advantage_conditioning()
    assert torch.count_nonzero(converted.network.advantage.weight) == 0
    assert np.array_equal(
        converted.predict_chunk(OBSERVATION).actions, base.predict_chunk(OBSERVATION).actions
    )


class CountingUnet:
    """The eager U-Net, counting calls and the batch size of each."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        self.unet = policy.network.unet
        self.batches: list[int] = []

    def __call__(self, sample: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
        self.batches.append(sample.shape[0])
        out: Tensor = self.unet(sample, timesteps, cond)
        return out


def count_calls(policy: DiffusionPolicy) -> CountingUnet:
    counter = CountingUnet(policy)
    policy._inference_unet = lambda sample, timesteps, cond: counter  # type: ignore[method-assign]
    return counter


def reference_chunk(policy: DiffusionPolicy, beta: float, sampler: SamplerConfig) -> Tensor:
    """The guided sample written out by hand: eps_unknown + beta (eps_good - eps_unknown)."""
    state = torch.as_tensor(np.stack([OBSERVATION["state"]] * 2)[None])
    good, unknown = (
        policy._condition(state, {}, ["b"], ["b"], torch.tensor([index]))
        for index in (ADVANTAGE_POSITIVE, ADVANTAGE_UNKNOWN)
    )

    def denoise(sample: Tensor, timesteps: Tensor) -> Tensor:
        eps_good = policy.network.unet(sample, timesteps, good)
        eps_unknown = policy.network.unet(sample, timesteps, unknown)
        out: Tensor = eps_unknown + beta * (eps_good - eps_unknown)
        return out

    generator = torch.Generator().manual_seed(sampler.seed)
    with torch.no_grad():
        result = sampler.build(policy.config).sample(denoise, (1, 16, 3), generator, torch.device("cpu"))
    return result.trajectory[0]


@pytest.mark.parametrize("sampler", [DDIMSamplerConfig(steps=4, seed=1), DDPMSamplerConfig(steps=6, seed=1)])
def test_beta_one_is_plain_conditioning_in_one_call_per_step(sampler: SamplerConfig) -> None:
    policy = conditioned_policy(1.0, sampler)
    counter = count_calls(policy)
    chunk = policy.predict_chunk(OBSERVATION)
    assert counter.batches == [1] * chunk.denoiser_calls  # one single-sample U-Net pass per step
    assert chunk.trajectory is not None
    assert torch.allclose(chunk.trajectory, reference_chunk(policy, 1.0, sampler), atol=1e-5)


@pytest.mark.parametrize("sampler", [DDIMSamplerConfig(steps=4, seed=1), DDPMSamplerConfig(steps=6, seed=1)])
def test_guidance_with_beta_other_than_one_follows_the_cfg_formula(sampler: SamplerConfig) -> None:
    policy = conditioned_policy(2.0, sampler)
    counter = count_calls(policy)
    chunk = policy.predict_chunk(OBSERVATION)
    assert counter.batches == [2] * chunk.denoiser_calls  # both halves in one batched pass per step
    assert chunk.trajectory is not None
    guided = reference_chunk(policy, 2.0, sampler)
    assert torch.allclose(chunk.trajectory, guided, atol=1e-5)
    assert not torch.allclose(guided, reference_chunk(policy, 1.0, sampler), atol=1e-3)


def test_rti_warm_starts_the_guided_denoiser() -> None:
    plain = conditioned_policy(1.0, RTISamplerConfig(seed=1))
    guided = conditioned_policy(2.0, RTISamplerConfig(seed=1))
    first = guided.predict_chunk(OBSERVATION)
    assert first.trajectory is not None
    counter = count_calls(guided)
    second = guided.predict_chunk(OBSERVATION, warm_start=first.trajectory[None])
    assert second.warm_started and second.denoiser_calls == 3 and counter.batches == [2, 2, 2]
    unguided = plain.predict_chunk(OBSERVATION, warm_start=first.trajectory[None])
    assert not np.allclose(second.actions, unguided.actions)
