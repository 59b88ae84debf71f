"""Samplers: shapes, call counts, determinism, and the RTI warm start (shift, gripper snapping)."""

from __future__ import annotations

import pytest
import torch

from sop.policies.configuration_diffusion import DiffusionPolicyConfig, SamplerConfig, SamplerKind
from sop.policies.samplers import (
    DDIMSampler,
    DDPMSampler,
    RTISampler,
    make_sampler,
    rti_warm_start,
    shift_chunk,
    snap_gripper,
)

CONFIG = DiffusionPolicyConfig()
SHAPE = (1, CONFIG.prediction_horizon, CONFIG.action_dim)


class RecordingDenoiser:
    """Predicts a fixed fraction of the sample as noise and records every call."""

    def __init__(self) -> None:
        self.timesteps: list[int] = []
        self.inputs: list[torch.Tensor] = []

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(int(timesteps[0]))
        self.inputs.append(sample.clone())
        return 0.1 * sample


@pytest.mark.parametrize(
    ("sampler", "calls"),
    [
        (DDPMSampler(CONFIG), 100),
        (DDIMSampler(CONFIG, 10), 10),
        (DDIMSampler(CONFIG, 3), 3),
        (RTISampler(CONFIG, (2, 1, 0)), 100),
    ],
)
def test_cold_start_shapes_and_calls(sampler: DDPMSampler | DDIMSampler | RTISampler, calls: int) -> None:
    denoiser = RecordingDenoiser()
    result = sampler.sample(denoiser, SHAPE, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert result.trajectory.shape == SHAPE
    assert result.denoiser_calls == calls == len(denoiser.timesteps)
    assert not result.warm_started
    assert torch.isfinite(result.trajectory).all()
    assert denoiser.timesteps == sorted(denoiser.timesteps, reverse=True)
    assert denoiser.timesteps[-1] == 0


@pytest.mark.parametrize("kind", list(SamplerKind))
def test_same_seed_same_chunk(kind: SamplerKind) -> None:
    sampler = make_sampler(CONFIG, SamplerConfig(kind=kind, ddim_steps=5))
    runs = [
        sampler.sample(
            RecordingDenoiser(), SHAPE, torch.Generator().manual_seed(seed), torch.device("cpu")
        ).trajectory
        for seed in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_rti_runs_only_the_listed_timesteps_from_the_warm_start_itself() -> None:
    warm_start = torch.linspace(-0.5, 0.5, SHAPE[1] * SHAPE[2]).reshape(SHAPE)
    denoiser = RecordingDenoiser()
    result = RTISampler(CONFIG, (3, 1, 0)).sample(
        denoiser, SHAPE, torch.Generator().manual_seed(0), torch.device("cpu"), warm_start=warm_start
    )
    assert denoiser.timesteps == [3, 1, 0]
    assert result.denoiser_calls == 3 and result.warm_started
    # No re-noising: the first denoiser input is exactly the warm start.
    assert torch.equal(denoiser.inputs[0], warm_start)


def test_rti_warm_start_stays_close_to_a_consistent_guess() -> None:
    """With a denoiser that predicts zero noise, the last steps leave a clean guess (nearly) where it is."""
    warm_start = torch.full(SHAPE, 0.3)
    result = RTISampler(CONFIG, (2, 1, 0)).sample(
        lambda sample, t: torch.zeros_like(sample),
        SHAPE,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        warm_start,
    )
    assert torch.allclose(result.trajectory, warm_start, atol=0.1)


def test_cold_samplers_refuse_a_warm_start() -> None:
    with pytest.raises(ValueError, match="starts from noise"):
        DDPMSampler(CONFIG).sample(
            RecordingDenoiser(), SHAPE, None, torch.device("cpu"), warm_start=torch.zeros(SHAPE)
        )


def test_shift_chunk_moves_forward_and_repeats_the_last_action() -> None:
    chunk = torch.arange(6 * 2, dtype=torch.float32).reshape(6, 2)
    shifted = shift_chunk(chunk, 2)
    assert torch.equal(shifted[:4], chunk[2:])
    assert torch.equal(shifted[4:], chunk[-1:].repeat(2, 1))
    assert torch.equal(shift_chunk(chunk, 0), chunk)
    assert torch.equal(shift_chunk(chunk, 6), chunk[-1:].repeat(6, 1))
    with pytest.raises(ValueError, match="executed_steps"):
        shift_chunk(chunk, 7)


def test_clip_variant_snaps_the_gripper_of_the_warm_start() -> None:
    chunk = torch.tensor([[0.2, 0.9], [0.1, -0.4], [0.3, 0.0], [0.4, 0.7]])
    guess = rti_warm_start(chunk, 1, gripper_index=1, clip_gripper_to=0.1)
    assert torch.equal(guess[:, 0], torch.tensor([0.1, 0.3, 0.4, 0.4]))
    assert torch.allclose(guess[:, 1], torch.tensor([-0.1, -0.1, 0.1, 0.1]))
    assert torch.equal(snap_gripper(chunk, 1, 1.0)[:, 1], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    # Without the clip variant the warm start is the shifted chunk, untouched.
    assert torch.equal(rti_warm_start(chunk, 1), shift_chunk(chunk, 1))


def test_sampler_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="rti_timesteps must be strictly decreasing"):
        SamplerConfig(rti_timesteps=(0, 1, 2))
    with pytest.raises(ValueError, match="kind is 'fast'"):
        SamplerConfig(kind="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rti_timesteps must lie in"):
        RTISampler(CONFIG, (100, 0))
