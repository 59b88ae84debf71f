"""The algorithm plug-in interface: what the trainer needs from HG-DAgger, RECAP, World4RL, ...

An algorithm is one file: a config registered under a name (`--algorithm.type=hg_dagger`) and a class with
`update(batch) -> metrics`. The trainer owns everything else (sampling, mixing, checkpoint publication,
logging), so adding a method never touches the service, the replay or the publisher.

The interface is deliberately small:

- `frame_selection()`: which online frames the replay may train on (HG-DAgger keeps only frames
  under intervention from online episodes; RECAP keeps every frame and labels it by advantage).
- `make_policy_condition(batch)`: extra conditioning the policy gets for a batch (RECAP's "advantage
  positive" indicator; None for plain behaviour cloning).
- `update(batch) -> UpdateResult`: one optimisation step. Per-sample losses come back so the trainer can
  compute SOP's online/offline mixing weights without a second forward pass.
- `attach_replay(store)`: the whole replay store, for algorithms that need more than the batch (RECAP
  trains its value model on every episode); a no-op by default.
- `publishable_policy()`: the policy whose weights go out to robots (e.g. an EMA copy).
- `training_state()` / `load_training_state()`: optimiser, schedule and EMA state as tensors plus JSON,
  saved next to each published checkpoint so a restarted learner continues where it stopped.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import draccus
from torch import Tensor

if TYPE_CHECKING:
    from sop.data.episode_store import EpisodeStore
    from sop.policies.base import Policy


@dataclass(frozen=True)
class FrameSelection:
    """Which online frames an algorithm trains on (not how often: that is SOP's mixing in `cloud_learner.replay`).

    `autonomous_frame_weight` is the sampling weight of a window whose anchor frame in an online episode was
    produced by the policy rather than the operator, relative to a frame under intervention (1.0). HG-DAgger
    labels only the operator's frames, so it uses 0.0 (excluded).
    """

    autonomous_frame_weight: float = 0.0


@dataclass(frozen=True)
class UpdateResult:
    """What one optimisation step reports.

    `sample_losses` has shape (batch,) and holds each sample's loss (detached, CPU); the trainer feeds it to
    the data mixer. `metrics` are scalars for TensorBoard and the terminal.
    """

    metrics: dict[str, float]
    sample_losses: Tensor


@dataclass
class AlgorithmConfig(draccus.ChoiceRegistry, abc.ABC):
    """Base of every algorithm's config; the YAML key `algorithm.type` picks the subclass."""

    @property
    def type(self) -> str:
        name = self.get_choice_name(self.__class__)
        assert isinstance(name, str)
        return name

    @abc.abstractmethod
    def build(self, policy: Policy) -> Algorithm:
        """The algorithm this config describes, around the policy it trains."""


class Algorithm(abc.ABC):
    """One post-training method. Subclasses keep every hyperparameter in their config."""

    config: AlgorithmConfig

    @abc.abstractmethod
    def frame_selection(self) -> FrameSelection:
        """Which online frames the replay may draw windows from for this algorithm."""

    @abc.abstractmethod
    def make_policy_condition(self, batch: dict[str, Any]) -> dict[str, Tensor] | None:
        """Extra conditioning inputs for the policy on this batch (None when the policy takes none)."""

    def attach_replay(self, store: EpisodeStore) -> None:
        """The replay store the trainer samples from, given once before the first update: for algorithms that
        learn from whole episodes besides the batch (RECAP's value model). Default: not needed."""
        del store

    @abc.abstractmethod
    def update(self, batch: dict[str, Any]) -> UpdateResult:
        """One optimisation step on `batch`; returns scalars to log and per-sample losses."""

    @abc.abstractmethod
    def publishable_policy(self) -> Policy:
        """The policy to publish now (its weights become the next checkpoint)."""

    @abc.abstractmethod
    def training_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything a resumed run needs (weights, optimiser, schedule, EMA) as tensors plus JSON."""

    @abc.abstractmethod
    def load_training_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore what `training_state` returned; called once when a learner resumes."""
