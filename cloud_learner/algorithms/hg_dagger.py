"""HG-DAgger (Kelly et al., 2019) on a fleet: behaviour cloning on demonstrations and operator corrections.

The operator gates control; only the frames the operator drove are expert labels. Each learner step is one
behaviour-cloning update of the diffusion policy (`sop.training.trainer.BCTrainer`: AdamW, schedule, EMA)
on a batch the replay draws from offline demonstrations and online intervention frames (SOP's per-task
mix). Autonomous online frames are excluded as window anchors (`autonomous_frame_weight`, 0 by default)
and, inside a window that starts under intervention, the action steps after the operator handed back are
masked out of the loss (`mask_autonomous_actions`): what the policy did on its own is never a label.

Per-sample losses, which SOP's mixing needs, come for free from the weighted loss: with
L = sum_i w_i l_i / sum_i w_i, dL/dw_i = (l_i - L) / sum_i w_i, so l_i = L + sum(w) * dL/dw_i, read off
the same backward pass that computes the parameter gradients (the weights are a leaf that requires grad).

Every hyperparameter is in `HGDaggerConfig` (the optimiser's in its `optimizer` block). The published
weights are the EMA of the trained ones, as in Diffusion Policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from cloud_learner.algorithms.base import Algorithm, AlgorithmConfig, FrameSelection, UpdateResult
from sop.episode import INTERVENTION, Source
from sop.training.trainer import BCTrainer, OptimizerConfig, TrainablePolicy

if TYPE_CHECKING:
    from sop.policies.base import Policy

# The learner trains until it is stopped; the schedule needs a horizon, and a constant one ignores it.
UNBOUNDED_STEPS = 1_000_000_000


def _online_optimizer() -> OptimizerConfig:
    """Post-training from a trained base: a constant rate after a short warm-up (fresh Adam moments)."""
    return OptimizerConfig(lr=1e-4, schedule="constant_with_warmup", warmup_steps=50)


@AlgorithmConfig.register_subclass("hg_dagger")
@dataclass
class HGDaggerConfig(AlgorithmConfig):
    # Sampling weight of an online frame the policy drove, relative to one the operator drove (HG-DAgger: 0).
    autonomous_frame_weight: float = 0.0
    # Mask the policy-driven action steps inside windows that start under intervention.
    mask_autonomous_actions: bool = True
    optimizer: OptimizerConfig = field(default_factory=_online_optimizer)

    def __post_init__(self) -> None:
        if not np.isfinite(self.autonomous_frame_weight) or self.autonomous_frame_weight < 0:
            raise ValueError(
                f"algorithm.autonomous_frame_weight must be finite and >= 0, got {self.autonomous_frame_weight}"
            )

    def build(self, policy: Policy) -> HGDagger:
        return HGDagger(self, policy)


class HGDagger(Algorithm):
    config: HGDaggerConfig

    def __init__(self, config: HGDaggerConfig, policy: Policy) -> None:
        self.config = config
        self.policy = cast(TrainablePolicy, policy)  # compute_loss + network: any SOP-trainable policy
        # Masking goes through compute_loss's padding mask; which steps count as "padding" is decided per
        # batch below, so real end-of-episode padding stays trained on unless optimizer.mask_padding says not.
        self.mask_real_padding = config.optimizer.mask_padding
        optimizer = dataclasses.replace(config.optimizer, mask_padding=True)
        self.bc = BCTrainer(self.policy, optimizer, total_steps=UNBOUNDED_STEPS)

    def frame_selection(self) -> FrameSelection:
        return FrameSelection(autonomous_frame_weight=self.config.autonomous_frame_weight)

    def make_policy_condition(self, batch: dict[str, Any]) -> dict[str, Tensor] | None:
        return None  # plain behaviour cloning: the policy takes no extra condition

    def loss_mask(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, Tp) True for the action steps left out of the loss."""
        is_pad = np.asarray(batch["action_is_pad"], dtype=bool)
        masked = is_pad.copy() if self.mask_real_padding else np.zeros_like(is_pad)
        if self.config.mask_autonomous_actions and INTERVENTION in batch:
            online = np.asarray(batch["source"]) == Source.ONLINE.value
            masked |= ~np.asarray(batch[INTERVENTION], dtype=bool) & online[:, None]
        return masked

    def update(self, batch: dict[str, Any]) -> UpdateResult:
        return weighted_bc_update(self.bc, batch, self.loss_mask(batch))

    def publishable_policy(self) -> Policy:
        return self.bc.ema_policy()

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return self.bc.training_state()

    def load_training_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.bc.load_training_state(tensors, meta)


def weighted_bc_update(bc: BCTrainer, batch: dict[str, Any], loss_mask: np.ndarray) -> UpdateResult:
    """One BC step on `batch` with `loss_mask` (B, Tp) steps left out; per-sample losses read off the
    gradient of the per-sample weights (module docstring), and the loss per source for the logs. Shared by
    every algorithm whose update is weighted behaviour cloning (HG-DAgger, RECAP)."""
    batch_size = len(batch["task"])
    weights = torch.as_tensor(
        np.asarray(batch.get("weight", np.ones(batch_size)), np.float32), dtype=torch.float32
    ).requires_grad_(True)
    metrics = bc.step(dict(batch, weight=weights, action_is_pad=loss_mask))
    loss = torch.tensor(metrics["loss"])
    if weights.grad is None:  # a loss that ignores the weights: every sample gets the batch loss
        sample_losses = loss.expand(batch_size).clone()
    else:
        sample_losses = loss + weights.grad * weights.detach().sum()
    sources = np.asarray(batch["source"])
    for source in (Source.ONLINE.value, Source.OFFLINE.value):
        chosen = sources == source
        metrics[f"fraction_{source}"] = float(chosen.mean())
        if chosen.any():
            metrics[f"loss_{source}"] = float(sample_losses[torch.as_tensor(chosen)].mean())
    return UpdateResult(metrics=metrics, sample_losses=sample_losses.detach())
