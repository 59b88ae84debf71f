"""Two-hot action encoding (World4RL: 21 bins per dimension beat one-hot, linear, FAST and VQ-VAE).

A value between two bin centres puts weight on both, in proportion to its distance from each, so the code is
exact (decoding returns the value) yet every input a network sees lies on a fixed, bounded simplex: a
continuous action cannot fall between learned features the way a one-hot bin index does. Values outside
[low, high] are clipped to the range first (Meta-World's actions are in [-1, 1]).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bin_centres(num_bins: int, low: float, high: float, device: torch.device | None = None) -> Tensor:
    if num_bins < 2:
        raise ValueError(f"two-hot encoding needs at least 2 bins, got {num_bins}")
    if not high > low:
        raise ValueError(f"the action range must have high > low, got [{low}, {high}]")
    return torch.linspace(low, high, num_bins, device=device)


def two_hot_encode(actions: Tensor, num_bins: int, low: float = -1.0, high: float = 1.0) -> Tensor:
    """(..., A) values -> (..., A * num_bins) codes; each dimension's block sums to 1."""
    bin_centres(num_bins, low, high)  # checks the arguments
    position = (actions.clamp(low, high) - low) / (high - low) * (num_bins - 1)
    lower = position.floor().clamp(0, num_bins - 2)
    upper_weight = position - lower
    codes = torch.zeros(*actions.shape, num_bins, dtype=actions.dtype, device=actions.device)
    codes.scatter_(-1, lower.long().unsqueeze(-1), (1.0 - upper_weight).unsqueeze(-1))
    codes.scatter_add_(-1, (lower.long() + 1).unsqueeze(-1), upper_weight.unsqueeze(-1))
    return codes.reshape(*actions.shape[:-1], actions.shape[-1] * num_bins)


def two_hot_decode(codes: Tensor, num_bins: int, low: float = -1.0, high: float = 1.0) -> Tensor:
    """(..., A * num_bins) codes -> (..., A) values: the expectation over bin centres."""
    if codes.shape[-1] % num_bins:
        raise ValueError(f"codes of width {codes.shape[-1]} are not a whole number of {num_bins}-bin blocks")
    blocks = codes.reshape(*codes.shape[:-1], codes.shape[-1] // num_bins, num_bins)
    centres = bin_centres(num_bins, low, high, codes.device).to(codes.dtype)
    return (blocks * centres).sum(-1)
