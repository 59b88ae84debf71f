"""Samplers: shapes, call counts, determinism, the RTI warm start (shift, gripper snapping), and the sampler
configs (a choice per kind, each building its sampler; the older flat spelling still loads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from sop.config import ConfigError, config_from_dict, config_to_dict
from sop.policies.configuration_diffusion import (
    DDIMColdStartConfig,
    DDIMSamplerConfig,
    DDPMColdStartConfig,
    DDPMSamplerConfig,
    DiffusionPolicyConfig,
    RTISamplerConfig,
    SamplerConfig,
    SamplerKind,
)
from sop.policies.samplers import (
    DDIMSampler,
    DDPMSampler,
    RTISampler,
    make_ddpm_scheduler,
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
        (RTISampler(CONFIG, (2, 1, 0)), 10),  # DDIM-10 unless given another cold start
        (RTISampler(CONFIG, (2, 1, 0), DDPMSampler(CONFIG)), 100),
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


@pytest.mark.parametrize(
    "sampler_config", [DDPMSamplerConfig(), DDIMSamplerConfig(steps=5), RTISamplerConfig()], ids=str
)
def test_same_seed_same_chunk(sampler_config: SamplerConfig) -> None:
    sampler = make_sampler(CONFIG, sampler_config)
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


def gaussian_data_denoiser(
    mean: float, std: float, config: DiffusionPolicyConfig
) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact noise prediction for data drawn from N(mean, std^2) per entry: a trained denoiser's behaviour
    in miniature (at low noise it trusts its input, at higher noise it pulls toward the data)."""
    alphas_cumprod = make_ddpm_scheduler(config).alphas_cumprod

    def denoise(sample: Tensor, timesteps: Tensor) -> Tensor:
        alpha_bar = alphas_cumprod[int(timesteps[0])]
        gain = alpha_bar.sqrt() * std**2 / (alpha_bar * std**2 + 1 - alpha_bar)
        clean = mean + gain * (sample - alpha_bar.sqrt() * mean)
        return (sample - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()

    return denoise


def test_rti_from_timestep_20_turns_a_plan_that_rti_dps_last_timesteps_cannot() -> None:
    """A warm start 1.0 away from everything the data holds (a previous plan the new observation contradicts):
    RTI-DP's (2, 1, 0), at noise levels up to 0.06, leave it nearly where it was; the default (20, 10, 0)
    brings it to the data. This is why a trained button-press policy with (2, 1, 0) drove past the button."""
    denoise = gaussian_data_denoiser(mean=-0.5, std=0.1, config=CONFIG)
    warm_start = torch.full(SHAPE, 0.5)

    def final(timesteps: tuple[int, ...]) -> Tensor:
        sampler = RTISampler(CONFIG, timesteps)
        generator = torch.Generator().manual_seed(0)
        return sampler.sample(denoise, SHAPE, generator, torch.device("cpu"), warm_start).trajectory

    assert make_sampler(CONFIG, RTISamplerConfig()).timesteps == [20, 10, 0]
    assert (final((2, 1, 0)) - 0.5).abs().mean() < 0.25  # barely moved from the old plan
    assert (final((20, 10, 0)) + 0.5).abs().mean() < 0.15  # at the data


def test_rti_steps_go_from_each_listed_timestep_to_the_next() -> None:
    """Consecutive timesteps are RTI-DP's t -> t-1 steps exactly; spaced ones step between listed timesteps
    (with t -> t-1 steps, (20, 10, 0) would hand the denoiser a sample at 19 and call it 10)."""
    denoise = gaussian_data_denoiser(mean=0.2, std=0.3, config=CONFIG)
    warm_start = torch.linspace(-0.5, 0.5, SHAPE[1] * SHAPE[2]).reshape(SHAPE)

    def by_hand(timesteps: list[int]) -> Tensor:
        scheduler = make_ddpm_scheduler(CONFIG)
        scheduler.set_timesteps(CONFIG.num_train_timesteps)  # RTI-DP's stepping: t -> t-1
        sample, generator = warm_start.clone(), torch.Generator().manual_seed(3)
        for t in timesteps:
            noise = denoise(sample, torch.full((1,), t))
            sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
        return sample

    def rti(timesteps: tuple[int, ...]) -> Tensor:
        generator = torch.Generator().manual_seed(3)
        return (
            RTISampler(CONFIG, timesteps)
            .sample(denoise, SHAPE, generator, torch.device("cpu"), warm_start)
            .trajectory
        )

    assert torch.allclose(rti((2, 1, 0)), by_hand([2, 1, 0]))
    assert torch.allclose(rti((3, 2, 1, 0)), by_hand([3, 2, 1, 0]))
    assert not torch.allclose(rti((20, 10, 0)), by_hand([20, 10, 0]), atol=1e-3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        RTISampler(CONFIG, (1, 2, 0))


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
    with pytest.raises(ValueError, match="timesteps must be strictly decreasing"):
        RTISamplerConfig(timesteps=(0, 1, 2))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        DDIMSamplerConfig(steps=0)
    with pytest.raises(ValueError, match="sampler type is 'fast'"):
        SamplerConfig.of_kind("fast")
    with pytest.raises(ConfigError, match="fast"):
        config_from_dict(DiffusionSamplerHolder, {"sampler": {"type": "fast"}})
    with pytest.raises(ValueError, match="RTI timesteps must lie in"):
        RTISampler(CONFIG, (100, 0))


@dataclasses.dataclass(frozen=True)
class DiffusionSamplerHolder:
    """A config with a sampler section, as the robot's, the evaluation's and the fleet harness's have."""

    sampler: SamplerConfig = dataclasses.field(default_factory=RTISamplerConfig)


def test_each_sampler_config_builds_its_own_sampler() -> None:
    assert isinstance(make_sampler(CONFIG, DDPMSamplerConfig()), DDPMSampler)
    ddim = make_sampler(CONFIG, DDIMSamplerConfig(steps=4))
    assert isinstance(ddim, DDIMSampler) and len(ddim.timesteps) == 4
    rti = make_sampler(CONFIG, RTISamplerConfig(timesteps=(1, 0), cold_start=DDIMColdStartConfig(steps=3)))
    assert isinstance(rti, RTISampler) and rti.timesteps == [1, 0]
    assert isinstance(rti.cold_start, DDIMSampler) and len(rti.cold_start.timesteps) == 3
    default = RTISamplerConfig()  # (20, 10, 0) of 100 on warm starts and Ta 1; DDIM-10 from noise
    assert make_sampler(CONFIG, default).timesteps == [20, 10, 0]
    short = dataclasses.replace(CONFIG, num_train_timesteps=10)
    assert make_sampler(short, default).timesteps == [2, 1, 0]
    assert (default.timesteps, default.cold_start, default.execution_horizon) == (
        None,
        DDIMColdStartConfig(steps=10),
        1,
    )
    assert isinstance(
        make_sampler(CONFIG, RTISamplerConfig(cold_start=DDPMColdStartConfig())).cold_start, DDPMSampler
    )
    assert [SamplerConfig.of_kind(kind).type for kind in SamplerKind] == ["ddpm", "ddim", "rti"]
    assert SamplerConfig.of_kind("ddim") == DDIMSamplerConfig(steps=10)


def test_sampler_configs_round_trip_with_their_type() -> None:
    for sampler in (DDPMSamplerConfig(steps=50), DDIMSamplerConfig(steps=3, seed=2), RTISamplerConfig()):
        encoded = config_to_dict(sampler)
        assert encoded["type"] == sampler.type
        assert config_from_dict(DiffusionSamplerHolder, {"sampler": encoded}).sampler == sampler
    assert config_from_dict(DiffusionSamplerHolder, {}).sampler == RTISamplerConfig()
    assert config_from_dict(DiffusionSamplerHolder, {"sampler": {"seed": 3}}).sampler == RTISamplerConfig(
        seed=3
    )


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        # the fleet harness's `sampler: ddim` (run folders' config.json) -> that kind's defaults
        ("ddim", DDIMSamplerConfig()),
        # the flat form robot.yaml had, with every kind's fields
        (
            {
                "kind": "rti",
                "ddpm_steps": None,
                "ddim_steps": 10,
                "rti_timesteps": [2, 1, 0],
                "rti_execution_horizon": 1,
                "rti_cold_start": "ddpm",
                "execution_horizon": None,
                "seed": 0,
            },
            RTISamplerConfig(timesteps=(2, 1, 0), cold_start=DDPMColdStartConfig()),
        ),
        (
            {"kind": "rti", "rti_timesteps": [3, 1, 0], "rti_cold_start": "ddim", "ddim_steps": 4},
            RTISamplerConfig(timesteps=(3, 1, 0), cold_start=DDIMColdStartConfig(steps=4)),
        ),
        (  # an explicit execution_horizon overrode RTI's own
            {"kind": "rti", "execution_horizon": 8, "rti_execution_horizon": 2},
            RTISamplerConfig(execution_horizon=8, cold_start=DDPMColdStartConfig()),
        ),
        (  # the flat form's cold start was DDPM unless it said otherwise
            {"kind": "rti", "rti_execution_horizon": 2},
            RTISamplerConfig(execution_horizon=2, cold_start=DDPMColdStartConfig()),
        ),
        (
            {"kind": "ddim", "ddim_steps": 4, "rti_timesteps": [2, 1, 0], "seed": 5},
            DDIMSamplerConfig(steps=4, seed=5),
        ),
        (
            {"kind": "ddpm", "ddpm_steps": 50, "execution_horizon": 4},
            DDPMSamplerConfig(steps=50, execution_horizon=4),
        ),
    ],
)
def test_a_sampler_stored_in_the_older_spelling_still_loads(stored: object, expected: SamplerConfig) -> None:
    assert config_from_dict(DiffusionSamplerHolder, {"sampler": stored}).sampler == expected


def test_an_older_flat_sampler_in_a_config_file_still_loads(tmp_path: Path) -> None:
    from sop.config import parse_config

    path = tmp_path / "old.yaml"
    path.write_text("sampler:\n  kind: ddim\n  ddim_steps: 4\n  rti_timesteps: [2, 1, 0]\n")
    assert parse_config(DiffusionSamplerHolder, ["--config", str(path)]).sampler == DDIMSamplerConfig(steps=4)
    switched = parse_config(DiffusionSamplerHolder, ["--config", str(path), "--sampler.type", "rti"])
    assert switched.sampler == RTISamplerConfig()
