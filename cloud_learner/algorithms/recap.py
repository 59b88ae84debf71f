"""RECAP (π*0.6, arXiv 2511.14759) on a fleet: learn from every episode, not only from interventions.

Each learner step is one behaviour-cloning update of an advantage-conditioned diffusion policy on SOP's mixed
batch of every online frame (autonomous ones included) and the offline demonstrations. What makes a frame a
good example is a binary indicator I, an extra condition of the policy (an embedding in its FiLM condition):

1. A distributional value model (`sop.values`, 201 bins over the normalized return, -1 per step, a penalty
   on failure or timeout, scaled per task by its episode-length cap) is trained on every episode with an
   outcome in the replay, online and offline: every `value_every_steps` learner steps, for `value.train_steps`
   steps, either from the same fresh initialisation each time (`value_retrain: from_base`, the paper's "each
   round from the pre-trained checkpoint") or continuing the previous one (`continue`).
2. After each value training every frame is relabelled: n-step advantage (`advantage_steps`), per-task
   threshold at the (1 - `positive_fraction`) quantile, operator-driven frames always positive. Episodes
   that arrive between two relabels are labelled on first use with the current model and thresholds.
3. The batch carries each sample's indicator (of its anchor frame), replaced by "unknown" with probability
   `indicator_dropout`, so one network learns both π(a | I, o, l) and π(a | o, l).
4. The published policy records the conditioning (`advantage_conditioning`) and `guidance_beta`: robots
   sample conditioned on "good", with classifier-free guidance when β ≠ 1 (β = 1: plain conditioning).

The trainer's base checkpoint is usually a plain (unconditioned) policy: `build` converts it, adding the
indicator embedding at zero so the first published version acts exactly as the base did.

Logged with the trainer's scalars (train.jsonl, TensorBoard): `value_loss` and `value_abs_error` (the last
value training's final loss and mean |V - return|, its calibration), `positive_fraction/<task>` (share of
the task's frames labelled good at the last relabel), `positive_fraction_batch`, `guidance_beta`.

A resumed learner keeps its value model (saved with the training state beside each checkpoint) and its
place in the value schedule; it relabels from the restored model on first use. Not yet: relabelling reads every episode of the replay (O(frames) per round) and
blocks the trainer thread meanwhile; the value model's window sampler holds its own copy of the replay's
low-dimensional columns; frames are not importance-weighted for staleness (PAPERS.md: none is needed).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cloud_learner.algorithms.base import Algorithm, AlgorithmConfig, FrameSelection, UpdateResult
from cloud_learner.algorithms.hg_dagger import UNBOUNDED_STEPS, weighted_bc_update
from sop.data.window_sampler import NoSampleableFramesError, WindowSampler
from sop.episode import Outcome
from sop.policies.modeling_diffusion import (
    ADVANTAGE_CONDITION,
    ADVANTAGE_POSITIVE,
    ADVANTAGE_UNKNOWN,
    DiffusionPolicy,
    advantage_condition,
)
from sop.training.trainer import BCTrainer, OptimizerConfig
from sop.values import AdvantageLabeller, ValueModel, ValueModelConfig, ValueTrainer, episode_length_caps
from sop.values.advantages import TaskLabels

if TYPE_CHECKING:
    from sop.data.episode_store import EpisodeStore
    from sop.policies.base import Policy

# Prefix of the value model's weights in the resumable training state (beside the policy's "model.", "ema.").
VALUE_PREFIX = "recap_value."


class ValueRetrain(enum.StrEnum):
    """How each value training starts: the same fresh initialisation (π*0.6) or the previous model."""

    FROM_BASE = "from_base"
    CONTINUE = "continue"


def _online_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=1e-4, schedule="constant_with_warmup", warmup_steps=50)


@AlgorithmConfig.register_subclass("recap")
@dataclass
class RecapConfig(AlgorithmConfig):
    # N of the n-step advantage A = sum of N rewards + V(o_{t+N}) - V(o_t) (π*0.6: 50).
    advantage_steps: int = 50
    # Share of each task's policy-driven and demonstrated frames labelled "good" (π*0.6: 0.3 to 0.4).
    positive_fraction: float = 0.3
    # Probability that a sample's indicator is replaced by "unknown" in training (π*0.6: 0.3).
    indicator_dropout: float = 0.3
    # Classifier-free guidance weight robots sample with; 1: plain conditioning on "good" (one denoiser pass).
    guidance_beta: float = 1.0
    # Retrain the value model and relabel every frame every this many learner steps (and on the first).
    value_every_steps: int = 500
    # from_base: each value training starts from the same fresh initialisation; continue: from the last.
    value_retrain: ValueRetrain = ValueRetrain.FROM_BASE
    value: ValueModelConfig = field(default_factory=ValueModelConfig)
    # Seed of the value model's initialisation, its batches and the indicator dropout.
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=_online_optimizer)

    def __post_init__(self) -> None:
        try:
            self.value_retrain = ValueRetrain(self.value_retrain)
        except ValueError:
            raise ValueError(
                f"algorithm.value_retrain is {self.value_retrain!r}, expected one of "
                f"{[v.value for v in ValueRetrain]}"
            ) from None
        if self.advantage_steps < 1:
            raise ValueError(f"algorithm.advantage_steps must be >= 1, got {self.advantage_steps}")
        if not 0.0 < self.positive_fraction < 1.0:
            raise ValueError(f"algorithm.positive_fraction must be in (0, 1), got {self.positive_fraction}")
        if not 0.0 <= self.indicator_dropout < 1.0:
            raise ValueError(f"algorithm.indicator_dropout must be in [0, 1), got {self.indicator_dropout}")
        if not math.isfinite(self.guidance_beta) or self.guidance_beta < 0:
            raise ValueError(f"algorithm.guidance_beta must be finite and >= 0, got {self.guidance_beta}")
        if self.value_every_steps < 1:
            raise ValueError(f"algorithm.value_every_steps must be >= 1, got {self.value_every_steps}")

    def build(self, policy: Policy) -> Recap:
        return Recap(self, policy)


class Recap(Algorithm):
    config: RecapConfig

    def __init__(self, config: RecapConfig, policy: Policy) -> None:
        if not isinstance(policy, DiffusionPolicy):
            raise TypeError(
                f"RECAP trains SOP's diffusion policy (it adds the advantage indicator to its FiLM "
                f"condition); got a {policy.policy_type!r} policy"
            )
        self.config = config
        self.policy = policy.with_advantage_conditioning(config.guidance_beta)
        self.bc = BCTrainer(self.policy, config.optimizer, total_steps=UNBOUNDED_STEPS)
        self.rng = np.random.default_rng(config.seed)
        self.store: EpisodeStore | None = None
        self.value_model: ValueModel | None = None
        self.labeller: AdvantageLabeller | None = None
        self._value_sampler: WindowSampler | None = None
        self._steps = 0
        self._value_metrics: dict[str, float] = {}

    def frame_selection(self) -> FrameSelection:
        return FrameSelection(autonomous_frame_weight=1.0)  # every frame is data; I says how good

    def attach_replay(self, store: EpisodeStore) -> None:
        self.store = store

    # ---- value model and labels ------------------------------------------------------------------------

    def _new_value_model(self) -> ValueModel:
        # The same initialisation every round, and the trainer's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return ValueModel(self.policy.config, self.policy.stats, self.config.value, self.policy.device)

    def train_value_model(self) -> dict[str, float]:
        """One value training on every episode with an outcome, then a relabel of every frame."""
        if self.store is None:
            raise RuntimeError("RECAP needs the replay store: the trainer calls attach_replay before update")
        policy_config = self.policy.config
        if self._value_sampler is None:
            self._value_sampler = WindowSampler(
                self.store,
                policy_config.observation_horizon,
                policy_config.observation_horizon,
                tasks=policy_config.tasks or None,
                frame_weight_fn=lambda info, _: np.full(
                    info.num_steps, 0.0 if info.outcome == Outcome.ABORTED else 1.0
                ),
                image_keys=list(policy_config.cameras),
                on_unusable="quarantine",
            )
        else:
            self._value_sampler.refresh()
        if self.value_model is None or self.config.value_retrain is ValueRetrain.FROM_BASE:
            self.value_model = self._new_value_model()
        trainer = ValueTrainer(self.value_model)
        caps = episode_length_caps(self.store)
        metrics: dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + self._steps)
            for _ in range(self.config.value.train_steps):
                try:
                    batch = self._value_sampler.sample(self.config.value.batch_size, self.rng)
                except NoSampleableFramesError:
                    break
                metrics = trainer.step(batch, caps) or metrics
        self.labeller = AdvantageLabeller(
            self.store, self.value_model, self.config.advantage_steps, self.config.positive_fraction
        )
        self._value_metrics = dict(metrics)
        self._record_labels(self.labeller.relabel())
        return self._value_metrics

    def _record_labels(self, tasks: dict[str, TaskLabels]) -> None:
        for task, labels in tasks.items():
            self._value_metrics[f"positive_fraction/{task}"] = labels.positive_fraction
            self._value_metrics[f"advantage_threshold/{task}"] = labels.threshold

    def positive(self, batch: dict[str, Any]) -> np.ndarray:
        """(B,) "good action" indicator of each sample's anchor frame under the current value model."""
        return self._labeller().positive(list(batch["episode_id"]), np.asarray(batch["frame_index"]))

    def make_policy_condition(self, batch: dict[str, Any]) -> dict[str, Tensor] | None:
        indices = advantage_condition(self.positive(batch), self.config.indicator_dropout, self.rng)
        return {ADVANTAGE_CONDITION: torch.as_tensor(indices)}

    # ---- the update ------------------------------------------------------------------------------------

    def update(self, batch: dict[str, Any]) -> UpdateResult:
        if self._steps % self.config.value_every_steps == 0:
            self.train_value_model()
        condition = self.make_policy_condition(batch)
        assert condition is not None
        is_pad = np.asarray(batch["action_is_pad"], dtype=bool)
        loss_mask = is_pad.copy() if self.config.optimizer.mask_padding else np.zeros_like(is_pad)
        result = weighted_bc_update(self.bc, dict(batch, **condition), loss_mask)
        self._steps += 1
        indices = condition[ADVANTAGE_CONDITION].numpy()
        known = indices != ADVANTAGE_UNKNOWN
        metrics = dict(result.metrics, **self._value_metrics)
        metrics["guidance_beta"] = self.config.guidance_beta
        metrics["positive_fraction_batch"] = (
            float((indices[known] == ADVANTAGE_POSITIVE).mean()) if known.any() else 0.0
        )
        return dataclasses.replace(result, metrics=metrics)

    def publishable_policy(self) -> Policy:
        return self.bc.ema_policy()

    def training_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The policy's BC state plus the value model's weights and RECAP's step count, so a resumed learner
        keeps its value model and schedule (the labels are recomputed from it on first use)."""
        tensors, meta = self.bc.training_state()
        if self.value_model is not None:
            for name, value in self.value_model.state_dict().items():
                tensors[VALUE_PREFIX + name] = value.detach().cpu().contiguous()
        meta = dict(meta, recap={"steps": self._steps})
        return tensors, meta

    def load_training_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.bc.load_training_state(tensors, meta)
        value = {k.removeprefix(VALUE_PREFIX): v for k, v in tensors.items() if k.startswith(VALUE_PREFIX)}
        if value:
            self.value_model = self._new_value_model()
            self.value_model.load_state_dict(value)
        self._steps = int(meta.get("recap", {}).get("steps", 0))

    def _labeller(self) -> AdvantageLabeller:
        """The current labels; computed from the value model on first use (after a resume: the restored one)."""
        if self.labeller is None:
            if self.value_model is None:
                self.train_value_model()
            else:
                assert self.store is not None, "the trainer calls attach_replay before update"
                self.labeller = AdvantageLabeller(
                    self.store, self.value_model, self.config.advantage_steps, self.config.positive_fraction
                )
                self._record_labels(self.labeller.relabel())
        assert self.labeller is not None
        return self.labeller
