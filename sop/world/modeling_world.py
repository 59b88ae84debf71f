"""The world model's networks and the world-model folder (`sop world train --out W`).

Three models are trained on the same transitions and travel together in one checkpoint:

- `TransitionDenoiser`: the diffusion world model. Given the last k states, the two-hot encoded action and
  the task, it denoises the *state delta* s_{t+1} - s_t, z-scored per dimension. Why the delta and not the
  next state: most of Meta-World's 39 numbers (goal, untouched objects, the zero padding) do not move in a
  step, so the delta is zero there and a sampling error cannot drift a static dimension away; the z-score
  gives a hand that moves 1 cm and an object that moves 1 mm the same weight in the loss, which predicting
  the next state itself (dominated by its large, static part) does not.
- `MLPDynamics`: the deterministic baseline the issue asks for: the same inputs and target, regressed with MSE.
- `SuccessClassifier`: p(task solved | state, task), World4RL's reward model; refinement scores imagined
  rollouts with it.

On disk a world-model folder is an SOP checkpoint (`sop.checkpoint`: safetensors + JSON manifest, never a
pickle) of policy type `world4rl_world_model`, so it cannot be mistaken for a policy (`sop sim eval` refuses
it by type), plus the training state while it trains. The manifest's `extra` names the store it was trained
on and its held-out episodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sop.checkpoint import CheckpointError, build_checkpoint, load_checkpoint, save_checkpoint
from sop.config import ConfigError, config_from_dict, config_to_dict
from sop.world.configuration_world import WorldModelConfig
from sop.world.edm import EDMPreconditioning
from sop.world.two_hot import two_hot_encode

WORLD_MODEL_TYPE: Final = "world4rl_world_model"
# Floors of the per-dimension scales: a dimension that never moves in the data (zero padding, a fixed goal)
# must not turn a tiny difference into a huge normalized input.
MIN_STATE_STD: Final = 1e-2
MIN_DELTA_STD: Final = 1e-4


class WorldModelError(ValueError):
    """A world-model folder or its data that cannot be used; the message names the problem and the fix."""


def _sinusoidal(values: Tensor, dim: int) -> Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=values.device) / max(half - 1, 1))
    angles = values[:, None] * frequencies[None] * 10.0
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, cond_width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.first = nn.Linear(width, width)
        self.cond = nn.Linear(cond_width, width) if cond_width else None
        self.second = nn.Linear(width, width)

    def forward(self, hidden: Tensor, cond: Tensor | None = None) -> Tensor:
        inner = self.first(self.norm(hidden))
        if self.cond is not None and cond is not None:
            inner = inner + self.cond(cond)
        return hidden + self.second(F.silu(inner))


class TransitionDenoiser(nn.Module):
    """F(c_in x, c_noise | history, action, task) for EDM; x is the z-scored state delta."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        condition_dim = config.history * config.state_dim + config.action_dim * config.action_bins
        self.task_embedding = nn.Embedding(max(1, len(config.tasks)), config.task_embed_dim)
        self.noise = nn.Sequential(
            nn.Linear(config.noise_embed_dim, config.hidden_dim),
            nn.SiLU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
        )
        self.input = nn.Linear(config.state_dim + condition_dim + config.task_embed_dim, config.hidden_dim)
        self.blocks = nn.ModuleList(
            _ResidualBlock(config.hidden_dim, config.hidden_dim) for _ in range(config.num_blocks)
        )
        self.output = nn.Sequential(
            nn.LayerNorm(config.hidden_dim), nn.Linear(config.hidden_dim, config.state_dim)
        )

    def forward(self, scaled: Tensor, c_noise: Tensor, condition: Tensor, task: Tensor) -> Tensor:
        noise = self.noise(_sinusoidal(c_noise, self.config.noise_embed_dim))
        hidden = self.input(torch.cat([scaled, condition, self.task_embedding(task)], dim=-1))
        for block in self.blocks:
            hidden = block(hidden, noise)
        out: Tensor = self.output(hidden)
        return out


class MLPDynamics(nn.Module):
    """The deterministic baseline: (history, action, task) -> z-scored state delta."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        condition_dim = config.history * config.state_dim + config.action_dim * config.action_bins
        self.task_embedding = nn.Embedding(max(1, len(config.tasks)), config.task_embed_dim)
        self.input = nn.Linear(condition_dim + config.task_embed_dim, config.hidden_dim)
        self.blocks = nn.ModuleList(_ResidualBlock(config.hidden_dim, 0) for _ in range(config.num_blocks))
        self.output = nn.Sequential(
            nn.LayerNorm(config.hidden_dim), nn.Linear(config.hidden_dim, config.state_dim)
        )

    def forward(self, condition: Tensor, task: Tensor) -> Tensor:
        hidden = self.input(torch.cat([condition, self.task_embedding(task)], dim=-1))
        for block in self.blocks:
            hidden = block(hidden)
        out: Tensor = self.output(hidden)
        return out


class SuccessClassifier(nn.Module):
    """(z-scored state, task) -> logit of "the task is solved in this state"."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.task_embedding = nn.Embedding(max(1, len(config.tasks)), config.task_embed_dim)
        width = config.success_hidden_dim
        self.net = nn.Sequential(
            nn.Linear(config.state_dim + config.task_embed_dim, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, state: Tensor, task: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([state, self.task_embedding(task)], dim=-1)).squeeze(-1)
        return out


class WorldModel(nn.Module):
    """The three networks, the data's normalization, and the sampling of next states.

    All inputs are in environment units: `history` (B, k, D) oldest first, `action` (B, A), `task` (B,) task
    indices (`task_indices`). The normalization lives in buffers, so it is saved with the weights.
    """

    state_mean: Tensor
    state_std: Tensor
    delta_mean: Tensor
    delta_std: Tensor

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        self.edm = EDMPreconditioning(
            sigma_data=config.sigma_data,
            sigma_min=config.sigma_min,
            sigma_max=config.sigma_max,
            p_mean=config.p_mean,
            p_std=config.p_std,
        )
        self.denoiser = TransitionDenoiser(config)
        self.baseline = MLPDynamics(config)
        self.success = SuccessClassifier(config)
        dim = config.state_dim
        self.register_buffer("state_mean", torch.zeros(dim))
        self.register_buffer("state_std", torch.ones(dim))
        self.register_buffer("delta_mean", torch.zeros(dim))
        self.register_buffer("delta_std", torch.ones(dim))

    # ---- normalization -----------------------------------------------------------------------------------

    def set_normalization(self, states: Tensor, deltas: Tensor) -> None:
        """Per-dimension mean and (floored) std of the training states and deltas."""
        self.state_mean.copy_(states.mean(0))
        self.state_std.copy_(states.std(0).clamp_min(MIN_STATE_STD))
        self.delta_mean.copy_(deltas.mean(0))
        self.delta_std.copy_(deltas.std(0).clamp_min(MIN_DELTA_STD))

    def normalize_state(self, state: Tensor) -> Tensor:
        return (state - self.state_mean) / self.state_std

    def task_indices(self, tasks: Sequence[str]) -> Tensor:
        known = self.config.tasks
        if not known:
            return torch.zeros(len(tasks), dtype=torch.long)
        missing = sorted(set(tasks) - set(known))
        if missing:
            raise WorldModelError(
                f"tasks {missing} are not ones this world model was trained on ({list(known)})"
            )
        return torch.as_tensor([known.index(task) for task in tasks], dtype=torch.long)

    def condition(self, history: Tensor, action: Tensor) -> Tensor:
        config = self.config
        if history.ndim != 3 or history.shape[1:] != (config.history, config.state_dim):
            raise WorldModelError(
                f"history has shape {tuple(history.shape)}, this world model takes (B, {config.history}, "
                f"{config.state_dim}): states of another robot or task family?"
            )
        if action.shape[-1] != config.action_dim:
            raise WorldModelError(
                f"action has {action.shape[-1]} dimensions, the world model {config.action_dim}"
            )
        codes = two_hot_encode(action, config.action_bins, config.action_low, config.action_high)
        return torch.cat([self.normalize_state(history).flatten(1), codes], dim=-1)

    def _target(self, history: Tensor, next_state: Tensor) -> Tensor:
        return (next_state - history[:, -1] - self.delta_mean) / self.delta_std

    def _from_target(self, history: Tensor, target: Tensor) -> Tensor:
        return history[:, -1] + target * self.delta_std + self.delta_mean

    # ---- losses ------------------------------------------------------------------------------------------

    def losses(
        self,
        history: Tensor,
        action: Tensor,
        next_state: Tensor,
        task: Tensor,
        success: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The three training losses on one batch of transitions (`success` (B,) 0/1 labels of next_state)."""
        condition = self.condition(history, action)
        target = self._target(history, next_state)
        sigma = self.edm.sample_sigmas(target.shape[0], generator, target.device)
        noise = torch.randn(target.shape, generator=generator, device=target.device)
        scaled, c_noise, raw_target = self.edm.training_pair(target, sigma, noise)
        diffusion = F.mse_loss(self.denoiser(scaled, c_noise, condition, task), raw_target)
        baseline = F.mse_loss(self.baseline(condition, task), target)
        positives = success.float().mean().clamp(0.02, 0.98)
        logits = self.success(self.normalize_state(next_state), task)
        weights = torch.where(success > 0.5, 0.5 / positives, 0.5 / (1 - positives))  # balanced classes
        success_loss = F.binary_cross_entropy_with_logits(logits, success.float(), weight=weights)
        return {"diffusion": diffusion, "baseline": baseline, "success": success_loss}

    # ---- prediction --------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_next(
        self, history: Tensor, action: Tensor, task: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """A sample of s_{t+1} (B, D) from the diffusion model, with `config.sampling_steps` Euler steps."""
        condition = self.condition(history, action)

        def raw(scaled: Tensor, c_noise: Tensor) -> Tensor:
            out: Tensor = self.denoiser(scaled, c_noise, condition, task)
            return out

        target = self.edm.sample(
            raw,
            (history.shape[0], self.config.state_dim),
            self.config.sampling_steps,
            generator,
            history.device,
        )
        return self._from_target(history, target)

    @torch.no_grad()
    def predict_next_baseline(self, history: Tensor, action: Tensor, task: Tensor) -> Tensor:
        return self._from_target(history, self.baseline(self.condition(history, action), task))

    @torch.no_grad()
    def success_probability(self, state: Tensor, task: Tensor) -> Tensor:
        return torch.sigmoid(self.success(self.normalize_state(state), task))

    # ---- the folder --------------------------------------------------------------------------------------

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        checkpoint = build_checkpoint(
            self.state_dict(),
            policy_type=WORLD_MODEL_TYPE,
            version=0,
            parent_version=None,
            policy_config=config_to_dict(self.config),
            normalization={},
            extra=extra,
        )
        return save_checkpoint(checkpoint, path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[WorldModel, dict[str, Any]]:
        """The model in a world-model folder and its manifest's `extra`."""
        location = Path(path)
        if not location.exists():
            raise WorldModelError(f"{location}: no such world-model folder; make one with `sop world train`")
        try:
            checkpoint = load_checkpoint(location)
        except CheckpointError as exc:
            raise WorldModelError(
                f"{location} is not a world-model folder ({exc}); make one with `sop world train --out {location}`"
            ) from None
        manifest = checkpoint.manifest
        if manifest.policy_type != WORLD_MODEL_TYPE:
            raise WorldModelError(
                f"{location} holds a {manifest.policy_type!r} checkpoint, not a world model: pass the folder "
                "`sop world train --out` wrote (a policy goes to --checkpoint)"
            )
        try:
            config = config_from_dict(WorldModelConfig, manifest.policy_config)
        except ConfigError as exc:
            raise WorldModelError(f"{location}: its world-model config does not load ({exc})") from None
        model = cls(config)
        missing, unexpected = model.load_state_dict(checkpoint.tensors, strict=False)
        if missing or unexpected:
            raise WorldModelError(
                f"{location}: weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        return model, dict(manifest.extra)
