"""The distributional value model of RECAP (π*0.6): V(o, l) over 201 bins of the normalized return.

Returns (π*0.6): reward -1 per step and 0 on the step that succeeds; an episode that fails or times out
costs `failure_penalty` episode-length caps more. Each task's returns are divided by cap · (1 +
failure_penalty), with the cap the longest episode of the task in the replay (a timed-out episode is exactly
that long), so every task's values lie in [-1, 0]: a success in k more steps is -k / (cap (1 + p)) ∈
[-1/(1+p), 0], a failure is below that. Aborted episodes (no outcome) have no return and are not trained on.

The network is the diffusion policy's observation encoder (`sop.policies.observation_encoders`, the same
state MLP, image CNN and instruction conditioner, built from the policy's config so it reads the same
observations and instructions) followed by an MLP to `num_bins` logits. Trained by cross-entropy on
two-hot targets (the return split between its two neighbouring bins, so the expectation is exact);
V = Σ p(b) v(b).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sop.data.episode_store import EpisodeStore
from sop.episode import IMAGE_PREFIX, STATE, Outcome
from sop.normalization import NormalizationMode, NormalizationStats, Normalizer
from sop.policies.configuration_diffusion import DiffusionPolicyConfig
from sop.policies.modeling_diffusion import instruction_input
from sop.policies.observation_encoders import ObservationEncoder, global_condition_dim

# Outcomes with a return; an aborted episode (robot stopped, no verdict) has none.
TERMINAL_OUTCOMES = (Outcome.SUCCESS.value, Outcome.FAILURE.value, Outcome.TIMEOUT.value)


@dataclass(frozen=True)
class ValueModelConfig:
    """The value model and how one (re)training runs; every default is a value we run."""

    num_bins: int = field(default=201, metadata={"help": "bins over the normalized return range [-1, 0]"})
    hidden_dim: int = field(
        default=256, metadata={"help": "width of the MLP head on the observation features"}
    )
    failure_penalty: float = field(
        default=1.0, metadata={"help": "extra cost of a failure or timeout, in episode-length caps"}
    )
    train_steps: int = field(default=200, metadata={"help": "gradient steps per value (re)training"})
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            raise ValueError(f"value.num_bins must be >= 2, got {self.num_bins}")
        for name in ("hidden_dim", "train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"value.{name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.failure_penalty) or self.failure_penalty < 0:
            raise ValueError(f"value.failure_penalty must be finite and >= 0, got {self.failure_penalty}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(
                f"value.lr must be > 0 and value.weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )


def episode_length_caps(store: EpisodeStore) -> dict[str, int]:
    """Each task's episode-length cap: its longest episode in the store (timeouts run to the cap)."""
    caps: dict[str, int] = {}
    for info in store.list():
        caps[info.task] = max(caps.get(info.task, 1), info.num_steps)
    return caps


def step_reward(cap: int, failure_penalty: float) -> float:
    """The normalized reward of one step (-1 step over the task's scale)."""
    return -1.0 / (cap * (1.0 + failure_penalty))


def normalized_returns(
    frame_index: np.ndarray | int,
    episode_length: np.ndarray | int,
    outcome: Sequence[str] | str,
    cap: np.ndarray | int,
    failure_penalty: float,
) -> np.ndarray:
    """Return-to-go of each frame in [-1, 0] (NaN for aborted episodes, which have none)."""
    t = np.asarray(frame_index, np.float64)
    length = np.asarray(episode_length, np.float64)
    caps = np.asarray(cap, np.float64)
    outcomes = np.broadcast_to(np.asarray(outcome, dtype=object), np.broadcast(t, length, caps).shape)
    success = outcomes == Outcome.SUCCESS.value
    terminal = np.isin(outcomes.astype(str), TERMINAL_OUTCOMES)
    steps = np.where(success, length - 1 - t, length - t + failure_penalty * caps)
    returns = np.clip(-steps / (caps * (1.0 + failure_penalty)), -1.0, 0.0)
    return np.where(terminal, returns, np.nan)


def two_hot(values: Tensor, num_bins: int) -> Tensor:
    """(B,) returns in [-1, 0] -> (B, num_bins) target distributions on the bin centres (expectation exact)."""
    position = (values.clamp(-1.0, 0.0) + 1.0) * (num_bins - 1)
    low = position.floor().long().clamp(0, num_bins - 1)
    high = (low + 1).clamp(max=num_bins - 1)
    upper = position - low.to(position.dtype)
    target = torch.zeros(values.shape[0], num_bins, device=values.device)
    target.scatter_add_(1, low[:, None], (1.0 - upper)[:, None])
    target.scatter_add_(1, high[:, None], upper[:, None])
    return target


class ValueModel(nn.Module):
    """V(o, l): the policy's observation encoder, an MLP head, `num_bins` logits over [-1, 0]."""

    def __init__(
        self,
        policy_config: DiffusionPolicyConfig,
        stats: NormalizationStats,
        config: ValueModelConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = config or ValueModelConfig()
        self.policy_config = policy_config
        self.device = torch.device(device)
        self.encoder = ObservationEncoder(policy_config)
        self.head = nn.Sequential(
            nn.Linear(global_condition_dim(policy_config), self.config.hidden_dim),
            nn.Mish(),
            nn.Linear(self.config.hidden_dim, self.config.hidden_dim),
            nn.Mish(),
            nn.Linear(self.config.hidden_dim, self.config.num_bins),
        )
        self.normalizer = Normalizer(
            stats, {STATE: NormalizationMode(policy_config.state_normalization.value)}
        )
        self.bin_values: Tensor
        self.register_buffer("bin_values", torch.linspace(-1.0, 0.0, self.config.num_bins), persistent=False)
        self.to(self.device)
        self.normalizer.to(self.device)

    def logits(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, num_bins) from a window batch: "observation.state" (B, To, D), "task", "instruction", images."""
        state = torch.as_tensor(np.asarray(batch[STATE]), dtype=torch.float32, device=self.device)
        images = {
            camera: torch.as_tensor(
                np.asarray(batch[IMAGE_PREFIX + camera]), dtype=torch.uint8, device=self.device
            )
            for camera in self.policy_config.cameras
        }
        tasks = list(batch["task"])
        instructions = list(batch.get("instruction") or tasks)
        features = self.encoder(
            self.normalizer.normalize(STATE, state),
            images,
            instruction_input(self.policy_config, tasks, instructions, self.device),
        )
        out: Tensor = self.head(features)
        return out

    def values(self, batch: Mapping[str, Any]) -> Tensor:
        """(B,) expected normalized return Σ p(b) v(b)."""
        return (self.logits(batch).softmax(-1) * self.bin_values).sum(-1)

    def loss(self, batch: Mapping[str, Any], returns: Tensor) -> Tensor:
        """Cross-entropy against the two-hot encoding of `returns` (B,)."""
        target = two_hot(returns.to(self.device, torch.float32), self.config.num_bins)
        return -(target * F.log_softmax(self.logits(batch), dim=-1)).sum(-1).mean()


class ValueTrainer:
    """AdamW on `ValueModel.loss` over windows of every episode with an outcome (online and offline)."""

    def __init__(self, model: ValueModel) -> None:
        self.model = model
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=model.config.lr, weight_decay=model.config.weight_decay
        )

    def step(self, batch: Mapping[str, Any], caps: Mapping[str, int]) -> dict[str, float]:
        """One update on a window batch (needs "frame_index", "episode_length", "outcome", "task");
        returns the loss and the mean absolute error of V against the empirical return (calibration)."""
        config = self.model.config
        cap = np.array([caps[task] for task in batch["task"]], np.float64)
        returns = normalized_returns(
            batch["frame_index"], batch["episode_length"], batch["outcome"], cap, config.failure_penalty
        )
        keep = np.flatnonzero(np.isfinite(returns))
        if len(keep) == 0:
            return {}
        if len(keep) < len(returns):
            batch = _select(batch, keep)
        target = torch.as_tensor(returns[keep], dtype=torch.float32, device=self.model.device)
        self.model.train()
        loss = self.model.loss(batch, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            error = (self.model.values(batch) - target).abs().mean()
        return {"value_loss": float(loss.detach()), "value_abs_error": float(error)}


def _select(batch: Mapping[str, Any], rows: np.ndarray) -> dict[str, Any]:
    selected: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, list):
            selected[key] = [value[i] for i in rows]
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            selected[key] = value[rows]
        else:
            selected[key] = value
    return selected
