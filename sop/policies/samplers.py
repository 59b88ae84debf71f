"""Samplers: how a chunk is drawn from the denoiser. Each one does one thing.

- `DDPMSampler`: the full ancestral schedule from Gaussian noise (100 steps by default).
- `DDIMSampler`: k deterministic DDIM steps from Gaussian noise (cold start).
- `RTISampler` (RTI-DP): the first chunk from noise with its cold-start sampler (the config's default is
  DDIM-10, a short stall; RTI-DP's full DDPM schedule is an option); every later chunk starts from the
  previous chunk shifted by the executed steps (last action repeated; `rti_warm_start`), or after an
  operator's hand-back from the executed actions, used directly as the sample at the first listed timestep
  (no re-noising, as in RTI-DP's public code), and runs only K' listed timesteps in the DDPM index space,
  each DDPM step going to the next listed timestep. A warm start of None means "solve from noise": after
  reset() or a policy swap.

  Which timesteps: RTI-DP's (2, 1, 0) start where the noise level is sigma = 0.06 (squared cosine, 100
  steps); a denoiser there can only move the warm start by about that much, so a chunk can never turn
  away from the previous plan (the tail of which is the last action repeated; tests/policies/
  test_samplers.py shows it on an exact Gaussian denoiser). The default (20, 10, 0) starts at sigma = 0.33,
  where the denoiser re-plans and the warm start still carries the plan, with the same 3 denoiser calls
  per step. On policies retrained for 2 000 and 4 850 learner steps the two tie (button-press 1.00 both,
  BENCHMARKS.md "Issue 12 (session 8)").

Schedules come from diffusers (`DDPMScheduler`/`DDIMScheduler`, squared cosine, epsilon prediction); each
sampler owns its scheduler instance because `set_timesteps` mutates it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import Tensor

from sop.policies.configuration_diffusion import DiffusionPolicyConfig, SamplerConfig

# (noisy sample (B, T, A), timesteps (B,) long) -> predicted noise (B, T, A); the condition is bound inside.
Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SampleResult:
    trajectory: Tensor  # (B, T, A) in the network's (normalized) action space
    denoiser_calls: int
    warm_started: bool


class Sampler(Protocol):
    name: str
    uses_warm_start: bool

    def sample(
        self,
        denoise: Denoiser,
        shape: tuple[int, int, int],
        generator: torch.Generator | None,
        device: torch.device,
        warm_start: Tensor | None = None,
    ) -> SampleResult: ...


def make_ddpm_scheduler(config: DiffusionPolicyConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="epsilon",
        clip_sample=config.clip_sample,
        clip_sample_range=1.0,
    )


def _denoise_loop(
    scheduler: DDPMScheduler | DDIMScheduler,
    denoise: Denoiser,
    sample: Tensor,
    timesteps: Sequence[int],
    generator: torch.Generator | None,
) -> Tensor:
    batch = sample.shape[0]
    for t in timesteps:
        t_batch = torch.full((batch,), int(t), dtype=torch.long, device=sample.device)
        noise_prediction = denoise(sample, t_batch)
        output = scheduler.step(noise_prediction, int(t), sample, generator=generator)
        sample = output[0] if isinstance(output, tuple) else output.prev_sample
    return sample


def _initial_noise(
    shape: tuple[int, int, int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    # Drawn on the generator's device (CPU by default) so a seed gives the same chunk on any device.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class _ColdStartSampler:
    """Pure noise through every timestep of `self.timesteps`; DDPM and DDIM differ only in their scheduler."""

    name: str
    uses_warm_start = False
    scheduler: Any
    timesteps: list[int]

    def sample(
        self,
        denoise: Denoiser,
        shape: tuple[int, int, int],
        generator: torch.Generator | None,
        device: torch.device,
        warm_start: Tensor | None = None,
    ) -> SampleResult:
        if warm_start is not None:
            raise ValueError(
                f"the {self.name.upper()} sampler always starts from noise; pass warm_start=None"
            )
        sample = _initial_noise(shape, generator, device)
        trajectory = _denoise_loop(self.scheduler, denoise, sample, self.timesteps, generator)
        return SampleResult(trajectory, len(self.timesteps), warm_started=False)


class DDPMSampler(_ColdStartSampler):
    name = "ddpm"

    def __init__(self, config: DiffusionPolicyConfig, num_steps: int | None = None) -> None:
        self.scheduler = make_ddpm_scheduler(config)
        self.num_steps = num_steps or config.num_train_timesteps
        if not 1 <= self.num_steps <= config.num_train_timesteps:
            raise ValueError(f"DDPM steps must be in [1, {config.num_train_timesteps}], got {self.num_steps}")
        self.scheduler.set_timesteps(self.num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]


class DDIMSampler(_ColdStartSampler):
    name = "ddim"

    def __init__(self, config: DiffusionPolicyConfig, num_steps: int) -> None:
        if not 1 <= num_steps <= config.num_train_timesteps:
            raise ValueError(f"DDIM steps must be in [1, {config.num_train_timesteps}], got {num_steps}")
        self.scheduler = DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type="epsilon",
            clip_sample=config.clip_sample,
            clip_sample_range=1.0,
        )
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]


class RTISampler:
    name = "rti"
    uses_warm_start = True

    def __init__(
        self,
        config: DiffusionPolicyConfig,
        timesteps: Sequence[int],
        cold_start: DDPMSampler | DDIMSampler | None = None,
    ) -> None:
        if not timesteps or max(timesteps) >= config.num_train_timesteps:
            raise ValueError(
                f"RTI timesteps must lie in [0, {config.num_train_timesteps}), got {tuple(timesteps)}"
            )
        if list(timesteps) != sorted(set(timesteps), reverse=True):
            raise ValueError(f"RTI timesteps must be strictly decreasing, got {tuple(timesteps)}")
        self.cold_start = cold_start or DDIMSampler(config, 10)
        self.timesteps = [int(t) for t in timesteps]
        # DDPM steps from each listed timestep to the next listed one (the last to 0): consecutive timesteps,
        # RTI-DP's (2, 1, 0), step t -> t-1; spaced ones, the default (20, 10, 0), jump as DDPM does at
        # fewer inference steps.
        self.scheduler = make_ddpm_scheduler(config)
        self.scheduler.set_timesteps(timesteps=self.timesteps)

    def sample(
        self,
        denoise: Denoiser,
        shape: tuple[int, int, int],
        generator: torch.Generator | None,
        device: torch.device,
        warm_start: Tensor | None = None,
    ) -> SampleResult:
        if warm_start is None:
            return self.cold_start.sample(denoise, shape, generator, device)
        if tuple(warm_start.shape) != tuple(shape):
            raise ValueError(f"warm_start has shape {tuple(warm_start.shape)}, expected {shape}")
        trajectory = _denoise_loop(
            self.scheduler, denoise, warm_start.to(device).clone(), self.timesteps, generator
        )
        return SampleResult(trajectory, len(self.timesteps), warm_started=True)


def shift_chunk(trajectory: Tensor, executed_steps: int) -> Tensor:
    """The previous chunk moved forward by the executed steps along time (axis -2), last action repeated."""
    horizon = trajectory.shape[-2]
    if not 0 <= executed_steps <= horizon:
        raise ValueError(f"executed_steps must be in [0, {horizon}], got {executed_steps}")
    if executed_steps == 0:
        return trajectory.clone()
    kept = trajectory[..., executed_steps:, :]
    last = trajectory[..., -1:, :]
    repeats = [1] * trajectory.ndim
    repeats[-2] = executed_steps
    return torch.cat([kept, last.repeat(*repeats)], dim=-2)


def snap_gripper(trajectory: Tensor, index: int, magnitude: float, cut: float = 0.0) -> Tensor:
    """RTI-DP's "clip" variant: the gripper dimension set to cut ± magnitude by its side of the cut (> cut: +).

    The cut is where the task's "closed" starts in the sampler's space (0, the sign, without per-task levels).
    """
    snapped = trajectory.clone()
    column = snapped[..., index]
    snapped[..., index] = torch.where(column > cut, cut + magnitude, cut - magnitude).to(snapped.dtype)
    return snapped


def rti_warm_start(
    previous: Tensor,
    executed_steps: int,
    gripper_index: int | None = None,
    clip_gripper_to: float | None = None,
    gripper_cut: float = 0.0,
) -> Tensor:
    """The initial guess for the next chunk: shifted previous chunk, gripper snapped in the "clip" variant."""
    guess = shift_chunk(previous, executed_steps)
    if gripper_index is not None and clip_gripper_to is not None:
        guess = snap_gripper(guess, gripper_index, clip_gripper_to, gripper_cut)
    return guess


def make_sampler(
    config: DiffusionPolicyConfig, sampler: SamplerConfig
) -> DDPMSampler | DDIMSampler | RTISampler:
    """The sampler a config describes: each kind's config builds its own (`SamplerConfig.build`)."""
    return sampler.build(config)
