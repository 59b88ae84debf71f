"""The replay: offline demonstrations and online episodes in one store, sampled with SOP's mixing.

One `EpisodeStore` (`run_dir/replay`) holds both kinds; each episode's `source` says which. Offline
demonstration stores named in `replay.offline_stores` are imported into it once (idempotently, by episode
id), so a restart or a second learner on the same run_dir never duplicates them.

Sampling (SOP's mixing rule, from the SOP paper, Scalable Online Post-training, arXiv 2601.03044):

- Tasks are weighted equally, whatever their episode counts.
- Within task m, the online share is w_on = exp(a L_on) / (exp(a L_on) + exp(L_off)), with L the mean
  per-sample loss of online and offline samples over the last `replay.loss_window_steps` trainer steps,
  divided by the mean of the two (`replay.mixing_loss_scale: task_mean`; the paper's losses are of order
  one, a small policy's are not and the raw rule never leaves 0.5), a =
  `replay.mixing_alpha` (> 1 favours online data when both losses are equal), clipped to
  [`min_online_share`, `max_online_share`]. Before both losses are measured the share is
  `initial_online_share`. A task with no trainable online frames yet samples offline only.
- Memory stays bounded: at most `replay.max_online_frames_per_task` online frames of a task are held for
  sampling; the oldest online episodes beyond it stay in the store but are no longer sampled (see
  `sop.data.window_sampler`). Offline demonstrations are always sampled.
- Which online frames are trainable is the algorithm's call (`FrameSelection`): HG-DAgger keeps only the
  frames under intervention (the operator's labels) and drops autonomous ones (weight 0).

One episode never stops training: an episode the trained policy cannot use (its `PolicyFeatures`: a state
or action of another size, a camera it reads missing, a task its task embedding does not know) or whose
arrays do not read is moved to `replay/quarantine/` with the reason, counted and logged, and the trainer
goes on with the rest; so does a learner started on a run directory that already holds such episodes. The
check needs only the episode's metadata (`EpisodeInfo.stand_in_episode`), not its arrays.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud_learner.algorithms.base import FrameSelection
from cloud_learner.config import LearnerConfig, MixingLossScale, ReplayConfig
from sop.data.episode_store import EpisodeInfo, EpisodeStore
from sop.data.window_sampler import NoSampleableFramesError, WindowSampler
from sop.episode import EpisodeError, Source
from sop.policy_features import PolicyFeatures
from sop.safe_logging import client_str

logger = logging.getLogger(__name__)


def open_replay_store(config: LearnerConfig) -> EpisodeStore:
    return EpisodeStore(config.replay_dir, create=True, durable=config.ingest.durable)


def import_offline_stores(store: EpisodeStore, roots: Iterable[str | Path]) -> int:
    """Copy the episodes of each demonstration store into `store` unless already there; returns how many."""
    imported = 0
    for root in roots:
        source = EpisodeStore(root, create=False, durable=False)
        for info in source.list():
            if info.episode_id in store:
                continue
            try:
                episode = source.get(info.episode_id)
                episode.validate()
            except (EpisodeError, OSError, RuntimeError, KeyError) as exc:  # damaged: the others still count
                logger.warning(
                    "offline store %s: episode %s not imported, it does not read: %s",
                    root,
                    info.episode_id,
                    client_str(exc, 400),
                )
                continue
            if episode.source != Source.OFFLINE:
                logger.warning(
                    "offline store %s holds %s episode %s; imported with its source unchanged",
                    root,
                    episode.source,
                    episode.episode_id,
                )
            store.append(episode)
            imported += 1
    return imported


def online_share(loss_online: float, loss_offline: float, config: ReplayConfig) -> float:
    """SOP's per-task online share from the two recent mean losses, clipped."""
    if config.mixing_loss_scale is MixingLossScale.TASK_MEAN:
        scale = (loss_online + loss_offline) / 2.0
        if scale > 0:
            loss_online, loss_offline = loss_online / scale, loss_offline / scale
    # exp(a L_on) / (exp(a L_on) + exp(L_off)) == sigmoid(a L_on - L_off), computed without overflow.
    z = config.mixing_alpha * loss_online - loss_offline
    share = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return min(config.max_online_share, max(config.min_online_share, share))


@dataclass(frozen=True)
class MixState:
    """One task's mixing inputs and result, for logs."""

    task: str
    loss_online: float | None
    loss_offline: float | None
    online_share: float


class LossMixer:
    """Recent per-task, per-source losses -> each task's online share.

    Per trainer step it keeps the loss sum and sample count of each (task, source) over the last
    `loss_window_steps` steps, so L is the mean over those steps' samples (not a mean of step means).
    """

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self._windows: dict[tuple[str, str], deque[tuple[float, int]]] = defaultdict(
            lambda: deque(maxlen=config.loss_window_steps)
        )
        self._tasks_seen: set[str] = set()

    def record(self, tasks: Sequence[str], sources: Sequence[str], losses: np.ndarray) -> None:
        """Add one step's per-sample losses (aligned with the batch's task and source labels)."""
        sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for task, source, loss in zip(tasks, sources, np.asarray(losses, np.float64).tolist(), strict=True):
            entry = sums[(str(task), str(source))]
            entry[0] += loss
            entry[1] += 1
        self._tasks_seen.update(str(t) for t in tasks)
        for task in self._tasks_seen:
            for source in (Source.ONLINE.value, Source.OFFLINE.value):
                total, count = sums.get((task, source), (0.0, 0))
                self._windows[(task, source)].append((float(total), int(count)))

    def mean_loss(self, task: str, source: str) -> float | None:
        window = self._windows.get((task, source))
        if not window:
            return None
        count = sum(c for _, c in window)
        return None if count == 0 else sum(s for s, _ in window) / count

    def share(self, task: str) -> MixState:
        loss_online = self.mean_loss(task, Source.ONLINE.value)
        loss_offline = self.mean_loss(task, Source.OFFLINE.value)
        if not self.config.adaptive_mixing or loss_online is None or loss_offline is None:
            share = self.config.initial_online_share
        else:
            share = online_share(loss_online, loss_offline, self.config)
        return MixState(task, loss_online, loss_offline, share)


class Replay:
    """The trainer's view of the replay store: its training windows (`windows`) plus SOP's adaptive online/offline mix."""

    def __init__(
        self,
        store: EpisodeStore,
        config: ReplayConfig,
        frame_selection: FrameSelection,
        observation_horizon: int,
        action_horizon: int,
        cameras: Sequence[str] = (),
        features: PolicyFeatures | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.features = features
        self.windows = WindowSampler(
            store,
            observation_horizon,
            action_horizon,
            tasks=config.tasks or None,
            autonomous_frame_weight=frame_selection.autonomous_frame_weight,
            image_keys=list(cameras),
            episode_check=self._check_features if features is not None else None,
            on_unusable="quarantine",
            max_online_frames_per_task=config.max_online_frames_per_task,
        )
        self.mixer = LossMixer(config)
        self._apply_shares()

    def _check_features(self, info: EpisodeInfo) -> None:
        """`FeatureMismatchError` (a ValueError) for an episode the trained policy cannot use."""
        assert self.features is not None
        self.features.check_episode(info.stand_in_episode())

    @property
    def num_quarantined(self) -> int:
        """Episodes this replay moved to quarantine/ as unusable for training (since it was built)."""
        return self.windows.num_quarantined

    def refresh(self) -> int:
        """Index episodes committed since the last call (called by the trainer between steps)."""
        added = self.windows.refresh()
        if added:
            self._apply_shares()
        return added

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any] | None:
        """A batch of windows, or None while the store holds nothing trainable."""
        if self.windows.num_frames() == 0:
            return None
        try:
            return self.windows.sample(batch_size, rng)
        except NoSampleableFramesError:  # the last trainable episode was just dropped as unreadable
            return None

    def record_losses(self, batch: Mapping[str, Any], losses: np.ndarray) -> None:
        """Feed one step's per-sample losses to the mixer and update every task's online share."""
        self.mixer.record(batch["task"], batch["source"], losses)
        self._apply_shares()

    def _apply_shares(self) -> None:
        for task in self.windows.tasks:
            share = self.mixer.share(task).online_share
            self.windows.set_source_weights(
                task, {Source.ONLINE.value: share, Source.OFFLINE.value: 1.0 - share}
            )

    def mix_states(self) -> list[MixState]:
        return [self.mixer.share(task) for task in self.windows.tasks]
