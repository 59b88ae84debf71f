"""RECAP's advantages and "good action" indicators (π*0.6), from a value model and a replay store.

Per frame t of an episode of T steps, with normalized per-step reward r (`value_model.step_reward`):

    A_t = N r + V(o_{t+N}) - V(o_t)        while t + N < T
    A_t = G_t - V(o_t)                     when the episode ends within N steps (G_t: its exact return)

(an aborted episode has no return: its tail bootstraps from V of its last frame). Per task, the threshold ε
is the (1 - positive_fraction) quantile of the advantages of the frames the policy or a demonstration
produced, so ≈ positive_fraction of them get I = [A > ε]; frames an operator drove are always positive
(HG-DAgger's labels stay labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sop.data.episode_store import EpisodeInfo, EpisodeStore
from sop.episode import IMAGE_PREFIX, INTERVENTION, STATE
from sop.values.value_model import ValueModel, episode_length_caps, normalized_returns, step_reward

# Frames per value-model forward pass while labelling.
LABEL_BATCH = 512


def nstep_advantages(
    values: np.ndarray, outcome: str, n: int, cap: int, failure_penalty: float
) -> np.ndarray:
    """(T,) advantages of one episode from its (T,) predicted values (see the module docstring)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    values = np.asarray(values, np.float64)
    length = len(values)
    t = np.arange(length)
    reward = step_reward(cap, failure_penalty)
    later = np.minimum(t + n, length - 1)
    bootstrapped = np.minimum(n, length - 1 - t) * reward + values[later] - values
    returns = normalized_returns(t, length, str(outcome), cap, failure_penalty)
    ends_within = t + n >= length
    exact = ends_within & np.isfinite(returns)
    return np.where(exact, np.nan_to_num(returns) - values, bootstrapped)


def positive_threshold(advantages: np.ndarray, positive_fraction: float) -> float:
    """ε such that ≈ `positive_fraction` of `advantages` are > ε."""
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    if len(advantages) == 0:
        return 0.0
    return float(np.quantile(np.asarray(advantages, np.float64), 1.0 - positive_fraction))


def indicators(advantages: np.ndarray, threshold: float, intervention: np.ndarray) -> np.ndarray:
    """I = [A > ε], and True wherever the operator was in control."""
    return (np.asarray(advantages) > threshold) | np.asarray(intervention, dtype=bool)


@dataclass(frozen=True)
class TaskLabels:
    """One task's labelling, for logs."""

    threshold: float
    positive_fraction: float
    frames: int


class AdvantageLabeller:
    """Per-frame indicators of every episode in a store, from the current value model.

    `relabel()` recomputes every episode's advantages and each task's threshold (after the value model was
    retrained); `positive(episode_id, frames)` answers for a batch, labelling an episode it has not seen yet
    (committed since) with the current model and thresholds.
    """

    def __init__(self, store: EpisodeStore, model: ValueModel, n: int, positive_fraction: float) -> None:
        self.store = store
        self.model = model
        self.n = n
        self.positive_fraction = positive_fraction
        self.thresholds: dict[str, float] = {}
        self.tasks: dict[str, TaskLabels] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._caps: dict[str, int] = {}

    def relabel(self) -> dict[str, TaskLabels]:
        """Label every episode of the store; returns each task's threshold and positive fraction."""
        self.store.refresh()
        self._caps = episode_length_caps(self.store)
        infos = [info for info in self.store.list() if self._usable(info)]
        computed = {info.episode_id: (info, *self._advantages(info)) for info in infos}
        by_task: dict[str, list[np.ndarray]] = {}
        for info, advantages, intervention in computed.values():
            by_task.setdefault(info.task, []).append(advantages[~intervention])
        self.thresholds = {
            task: positive_threshold(np.concatenate(parts), self.positive_fraction)
            for task, parts in by_task.items()
        }
        self._labels = {
            episode_id: indicators(advantages, self.thresholds[info.task], intervention)
            for episode_id, (info, advantages, intervention) in computed.items()
        }
        counts: dict[str, list[int]] = {}
        for episode_id, (info, _, _) in computed.items():
            entry = counts.setdefault(info.task, [0, 0])
            entry[0] += int(self._labels[episode_id].sum())
            entry[1] += len(self._labels[episode_id])
        self.tasks = {
            task: TaskLabels(self.thresholds[task], positive / max(total, 1), total)
            for task, (positive, total) in counts.items()
        }
        return self.tasks

    def positive(self, episode_ids: list[str], frames: np.ndarray) -> np.ndarray:
        """(B,) indicator of each (episode, frame); episodes not labelled yet are labelled now."""
        out = np.zeros(len(episode_ids), bool)
        for row, (episode_id, frame) in enumerate(zip(episode_ids, np.asarray(frames), strict=True)):
            labels = self._labels.get(episode_id)
            if labels is None:
                labels = self._label_new(episode_id)
            out[row] = bool(labels[min(int(frame), len(labels) - 1)])
        return out

    def _label_new(self, episode_id: str) -> np.ndarray:
        info = self.store.info(episode_id)
        if info.task not in self._caps or info.num_steps > self._caps[info.task]:
            self._caps[info.task] = max(self._caps.get(info.task, 1), info.num_steps)
        advantages, intervention = self._advantages(info)
        threshold = self.thresholds.get(info.task)
        if threshold is None:  # a task first seen since the last relabel: its own episode sets ε
            threshold = self.thresholds[info.task] = positive_threshold(
                advantages[~intervention], self.positive_fraction
            )
        labels = self._labels[episode_id] = indicators(advantages, threshold, intervention)
        return labels

    def _usable(self, info: EpisodeInfo) -> bool:
        return info.task in self.model.policy_config.tasks or not self.model.policy_config.tasks

    @torch.no_grad()
    def episode_values(self, info: EpisodeInfo) -> np.ndarray:
        """(T,) V(o_t) of every frame of one episode (observation windows as the window sampler builds them)."""
        to = self.model.policy_config.observation_horizon
        columns = self.store.read_columns(info.episode_id, [STATE])
        images = {
            camera: self.store.read_steps(info.episode_id, IMAGE_PREFIX + camera, 0, info.num_steps)
            for camera in self.model.policy_config.cameras
        }
        steps = np.arange(info.num_steps)
        windows = np.clip(steps[:, None] + np.arange(-to + 1, 1)[None, :], 0, info.num_steps - 1)
        self.model.eval()
        values = []
        for start in range(0, info.num_steps, LABEL_BATCH):
            rows = windows[start : start + LABEL_BATCH]
            batch: dict[str, object] = {
                STATE: columns[STATE][rows],
                "task": [info.task] * len(rows),
                "instruction": [info.instruction] * len(rows),
            }
            for camera, frames in images.items():
                batch[IMAGE_PREFIX + camera] = frames[rows]
            values.append(self.model.values(batch).cpu().numpy())
        return np.concatenate(values).astype(np.float64)

    def _advantages(self, info: EpisodeInfo) -> tuple[np.ndarray, np.ndarray]:
        values = self.episode_values(info)
        advantages = nstep_advantages(
            values, str(info.outcome), self.n, self._caps[info.task], self.model.config.failure_penalty
        )
        intervention = self.store.read_columns(info.episode_id, [INTERVENTION])[INTERVENTION].astype(bool)
        return advantages, intervention
