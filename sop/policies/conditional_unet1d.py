"""The denoiser: a temporal 1-D U-Net with FiLM conditioning (Diffusion Policy's ConditionalUnet1D design).

Convolutions run along the action chunk's time axis; every residual block is modulated (FiLM: per-channel
scale and bias) by the diffusion timestep embedding concatenated with the observation features. Written
here rather than imported so the network is small, typed and owned: the default (64, 128, 256) channels
keep a denoiser call under 5 ms on one CPU core.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn


class SinusoidalTimestepEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"timestep embedding dim must be even, got {dim}")
        half = dim // 2
        self.frequencies: Tensor
        frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, timesteps: Tensor) -> Tensor:
        angles = timesteps.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(num_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return out


class ConditionalResidualBlock1d(nn.Module):
    """Two conv blocks with FiLM (scale and bias from the condition) between them, plus a residual path."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, num_groups: int
    ) -> None:
        super().__init__()
        self.first = Conv1dBlock(in_channels, out_channels, kernel_size, num_groups)
        self.second = Conv1dBlock(out_channels, out_channels, kernel_size, num_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.out_channels = out_channels
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        out = self.first(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.second(scale * out + bias)
        residual: Tensor = self.residual(x)
        return out + residual


class UnetLevel(nn.ModuleList):
    """Two conditional residual blocks and a resampling layer (down: stride-2 conv, up: transposed conv).

    A ModuleList underneath, so parameter names stay `down.<level>.<0|1|2>.*` as in Diffusion Policy."""

    def __init__(
        self, first: ConditionalResidualBlock1d, second: ConditionalResidualBlock1d, resample: nn.Module
    ) -> None:
        super().__init__([first, second, resample])

    def blocks(self, x: Tensor, cond: Tensor) -> Tensor:
        out: Tensor = self[1](self[0](x, cond), cond)
        return out

    def resample(self, x: Tensor) -> Tensor:
        out: Tensor = self[2](x)
        return out


class ConditionalUnet1d(nn.Module):
    """Predicts the noise in a (B, T, action_dim) chunk given the timestep and a (B, cond_dim) condition."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        num_groups: int = 8,
        timestep_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        self.timestep_encoder = nn.Sequential(
            SinusoidalTimestepEmbedding(timestep_embed_dim),
            nn.Linear(timestep_embed_dim, 4 * timestep_embed_dim),
            nn.Mish(),
            nn.Linear(4 * timestep_embed_dim, timestep_embed_dim),
        )
        cond_dim = timestep_embed_dim + global_cond_dim
        levels = list(itertools.pairwise([action_dim, *down_dims]))

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1d:
            return ConditionalResidualBlock1d(c_in, c_out, cond_dim, kernel_size, num_groups)

        self.down = nn.ModuleList()
        for index, (c_in, c_out) in enumerate(levels):
            last = index == len(levels) - 1
            downsample: nn.Module = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(UnetLevel(block(c_in, c_out), block(c_out, c_out), downsample))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        # As in Diffusion Policy, every up level upsamples and the finest skip connection goes unused.
        for c_in, c_out in reversed(levels[1:]):
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(UnetLevel(block(2 * c_out, c_in), block(c_in, c_in), upsample))
        self.head = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, num_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, sample: Tensor, timesteps: Tensor, global_cond: Tensor) -> Tensor:
        """sample (B, T, A), timesteps (B,) or scalar, global_cond (B, G) -> predicted noise (B, T, A)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        cond = torch.cat([self.timestep_encoder(timesteps), global_cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for level in self.down:
            assert isinstance(level, UnetLevel)
            x = level.blocks(x, cond)
            skips.append(x)
            x = level.resample(x)
        for mid_block in self.mid:
            x = mid_block(x, cond)
        for level in self.up:
            assert isinstance(level, UnetLevel)
            x = level.resample(level.blocks(torch.cat([x, skips.pop()], dim=1), cond))
        out: Tensor = self.head(x)
        return out.transpose(1, 2)
