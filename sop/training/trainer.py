"""One behaviour-cloning update, reusable by the offline `sop train bc` loop and the cloud learner.

`BCTrainer.step(batch)` runs AdamW on `DiffusionPolicy.compute_loss(batch)` (per-sample weights included),
steps the cosine learning-rate schedule and the EMA of the weights, and returns plain float metrics. The
learner feeds it its own mixed online/offline batches; the offline loop feeds it window-sampler batches.

`training_state()` / `load_training_state()` turn everything a resumed run needs (weights, EMA, optimizer
moments, schedule position, RNG states) into safetensors tensors plus JSON. No pickle. Where that state lives
on disk, for `sop train bc` and the cloud learner alike: `sop.training.resume_state`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers.optimization import get_scheduler

from sop.policies.base import Policy


class TrainablePolicy(Protocol):
    """What the trainer needs: SOP's DiffusionPolicy and the lerobot adapter both provide it."""

    @property
    def network(self) -> torch.nn.Module: ...

    @property
    def device(self) -> torch.device: ...

    def compute_loss(self, batch: Mapping[str, Any], mask_padding: bool = False) -> torch.Tensor: ...

    def with_weights(self, state_dict: Mapping[str, torch.Tensor], version: int | None = None) -> Policy: ...


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + cosine schedule + EMA, Diffusion Policy's recipe; every value is one a user would run."""

    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-6
    schedule: str = field(
        default="cosine", metadata={"help": "a diffusers schedule name: cosine, constant, ..."}
    )
    warmup_steps: int = 500
    grad_clip_norm: float = field(default=10.0, metadata={"help": "0 disables clipping"})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warm-up: decay = 1 - (1 + step) ** -power"})
    ema_max_decay: float = 0.9999
    mask_padding: bool = field(default=False, metadata={"help": "exclude padded actions from the loss"})

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
        if self.ema_power <= 0:
            raise ValueError(f"ema_power must be positive, got {self.ema_power}")
        if not 0 <= self.ema_max_decay < 1:
            raise ValueError(f"ema_max_decay must be in [0, 1), got {self.ema_max_decay}")


class ExponentialMovingAverage:
    """An EMA of a module's weights with Diffusion Policy's warm-up (early steps follow the model closely)."""

    def __init__(self, module: torch.nn.Module, power: float, max_decay: float) -> None:
        self.power = power
        self.max_decay = max_decay
        self.updates = 0
        self.shadow = {name: value.detach().clone() for name, value in module.state_dict().items()}

    def decay(self) -> float:
        return min(self.max_decay, max(0.0, 1.0 - (1.0 + self.updates) ** -self.power))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> float:
        decay = self.decay()
        for name, value in module.state_dict().items():
            shadow = self.shadow[name]
            if value.dtype.is_floating_point:
                shadow.mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                shadow.copy_(value)
        self.updates += 1
        return decay

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


class BCTrainer:
    """AdamW + cosine LR + EMA around `policy.compute_loss`; `step(batch)` is one update."""

    def __init__(self, policy: TrainablePolicy, config: OptimizerConfig, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.policy = policy
        self.config = config
        self.total_steps = total_steps
        self.optimizer = torch.optim.AdamW(
            policy.network.parameters(),
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.lr_scheduler = get_scheduler(
            config.schedule,
            optimizer=self.optimizer,
            num_warmup_steps=min(config.warmup_steps, total_steps),
            num_training_steps=total_steps,
        )
        self.ema = ExponentialMovingAverage(policy.network, config.ema_power, config.ema_max_decay)
        self.step_count = 0

    def step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One update on `batch` (window-sampler layout, numpy or torch); returns loss, lr, grad norm, EMA decay."""
        self.policy.network.train()
        loss = self.policy.compute_loss(batch, mask_padding=self.config.mask_padding)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step_count}; lower optim.lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip_norm if self.config.grad_clip_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.network.parameters(), max_norm)
        self.optimizer.step()
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        decay = self.ema.update(self.policy.network)
        self.step_count += 1
        return {
            "loss": float(loss.detach()),
            "lr": float(lr),
            "grad_norm": float(grad_norm),
            "ema_decay": decay,
        }

    def ema_policy(self, version: int | None = None) -> Policy:
        """A separate policy holding the EMA weights: what gets evaluated and published."""
        return self.policy.with_weights(self.ema.shadow, version)

    # ---- resumable state ---------------------------------------------------------------------------------

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in self.policy.network.state_dict().items()
        }
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.shadow.items()})
        optimizer_tensors, optimizer_meta = _optimizer_tensors(self.optimizer)
        tensors.update(optimizer_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "step": self.step_count,
            "total_steps": self.total_steps,
            "ema_updates": self.ema.updates,
            "optimizer": optimizer_meta,
            "lr_scheduler": self.lr_scheduler.state_dict(),
        }
        return tensors, meta

    def load_training_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.policy.network.load_state_dict(model)
        for name in self.ema.shadow:
            self.ema.shadow[name] = tensors[f"ema.{name}"].to(self.policy.device).clone()
        self.ema.updates = int(meta["ema_updates"])
        _restore_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.lr_scheduler.load_state_dict(dict(meta["lr_scheduler"]))
        torch.set_rng_state(tensors["rng.torch"])
        self.step_count = int(meta["step"])
