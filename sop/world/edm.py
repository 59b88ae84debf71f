"""EDM (Karras et al. 2022) for the world model: preconditioning for training, diffusers' Euler sampler.

The denoiser D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)) is what keeps one
small network well conditioned at every noise level: its input has unit variance (c_in), its target has unit
variance (the training target below), and at low noise D leans on the input (c_skip -> 1), at high noise on
F. World4RL (like DIAMOND) uses exactly this, because with few sampling steps (3-5 here) the early steps
happen at large sigma where an epsilon-predicting network's x0 estimate is poor.

The formulas are EDM's with prediction_type "epsilon" as diffusers' `EDMEulerScheduler` implements them, so
training here and sampling there agree (tests/world/test_edm.py checks the two against each other):

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = log(sigma) / 4

Training draws ln(sigma) ~ N(p_mean, p_std^2) and regresses F onto (x0 - c_skip x) / c_out, which is EDM's
loss weighting lambda(sigma) = 1 / c_out^2 written as a plain MSE on F.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_edm_euler import EDMEulerScheduler
from torch import Tensor

# (scaled noisy sample (B, D), c_noise (B,)) -> raw network output F (B, D); the condition is bound inside.
RawDenoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class EDMPreconditioning:
    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 5.0
    p_mean: float = -0.4
    p_std: float = 1.2

    def c_skip(self, sigma: Tensor) -> Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Tensor) -> Tensor:
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: Tensor) -> Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        return 0.25 * sigma.log()

    def sample_sigmas(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        normal = torch.randn(batch, generator=generator, device=device)
        return (self.p_mean + self.p_std * normal).exp()

    def training_pair(self, x0: Tensor, sigma: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(network input c_in * x, c_noise, target for F) for clean samples x0 (B, D) at noise `sigma` (B,)."""
        s = sigma[:, None]
        noisy = x0 + s * noise
        target = (x0 - self.c_skip(s) * noisy) / self.c_out(s)
        return self.c_in(s) * noisy, self.c_noise(sigma), target

    def denoised(self, noisy: Tensor, sigma: Tensor, raw: Tensor) -> Tensor:
        """D(x; sigma) from the network's raw output F."""
        s = sigma[:, None]
        return self.c_skip(s) * noisy + self.c_out(s) * raw

    def scheduler(self, num_steps: int) -> EDMEulerScheduler:
        """A diffusers Euler scheduler over a Karras schedule with these constants, set to `num_steps`."""
        scheduler = EDMEulerScheduler(
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            sigma_data=self.sigma_data,
            sigma_schedule="karras",
            prediction_type="epsilon",
        )
        scheduler.set_timesteps(num_steps)
        return scheduler

    def sample(
        self,
        raw_denoiser: RawDenoiser,
        shape: tuple[int, int],
        num_steps: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        """Draw x0 (B, D) with `num_steps` deterministic Euler steps (diffusers' EDMEulerScheduler)."""
        scheduler = self.scheduler(num_steps)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        sample = torch.randn(shape, generator=generator, device=gen_device).to(device)
        sample = sample * float(scheduler.init_noise_sigma)
        for timestep in scheduler.timesteps:
            scaled = scheduler.scale_model_input(sample, timestep)
            c_noise = torch.full((shape[0],), float(timestep), device=device)
            raw = raw_denoiser(scaled, c_noise)
            sample = scheduler.step(raw, timestep, sample, return_dict=False)[0]
        return sample
