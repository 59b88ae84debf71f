"""EDM preconditioning: the formulas, agreement with diffusers' EDMEulerScheduler, and sampling a known x0."""

from __future__ import annotations

import math

import torch

from sop.world.edm import EDMPreconditioning


def test_coefficients_match_the_edm_formulas_and_the_diffusers_scheduler() -> None:
    edm = EDMPreconditioning(sigma_data=0.7)
    sigma = torch.tensor([0.01, 0.5, 3.0, 40.0])
    sd = 0.7
    torch.testing.assert_close(edm.c_skip(sigma), sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(edm.c_out(sigma), sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(edm.c_in(sigma), 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(edm.c_noise(sigma), sigma.log() / 4)
    scheduler = edm.scheduler(4)
    x = torch.randn(3, 5)
    raw = torch.randn(3, 5)
    for value in (0.01, 0.5, 3.0):
        s = torch.tensor(value)
        torch.testing.assert_close(scheduler.precondition_inputs(x, s), edm.c_in(s) * x)
        torch.testing.assert_close(scheduler.precondition_noise(s), edm.c_noise(s))
        torch.testing.assert_close(
            scheduler.precondition_outputs(x, raw, s), edm.denoised(x, torch.full((3,), value), raw)
        )


def test_the_training_target_makes_the_denoiser_exact() -> None:
    """F = target  <=>  D(x; sigma) = x0 at every noise level (EDM's loss is that regression)."""
    edm = EDMPreconditioning()
    x0, noise = torch.randn(8, 6), torch.randn(8, 6)
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
    scaled, c_noise, target = edm.training_pair(x0, sigma, noise)
    noisy = x0 + sigma[:, None] * noise
    torch.testing.assert_close(scaled, noisy / (sigma[:, None] ** 2 + 1).sqrt())
    torch.testing.assert_close(c_noise, 0.25 * sigma.log())
    torch.testing.assert_close(edm.denoised(noisy, sigma, target), x0, atol=1e-5, rtol=1e-5)
    log_sigma = edm.sample_sigmas(20_000, torch.Generator().manual_seed(0), torch.device("cpu")).log()
    assert abs(log_sigma.mean().item() - edm.p_mean) < 0.05 and abs(log_sigma.std().item() - edm.p_std) < 0.05


def test_sampling_with_an_ideal_denoiser_lands_on_the_data_point() -> None:
    """For data that is a single point c, the ideal D is c; 4 Euler steps through diffusers must return c."""
    edm = EDMPreconditioning()
    point = torch.tensor([0.3, -1.2, 2.0])

    def ideal(scaled: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = torch.exp(4 * c_noise)[:, None]
        noisy = scaled * (sigma**2 + 1).sqrt()
        return (point - edm.c_skip(sigma) * noisy) / edm.c_out(sigma)

    sample = edm.sample(ideal, (5, 3), 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.testing.assert_close(sample, point.expand(5, 3), atol=1e-4, rtol=0)
    assert math.isclose(float(edm.scheduler(4).sigmas[0]), edm.sigma_max, rel_tol=1e-5)
