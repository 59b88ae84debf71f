"""Normalization statistics: computed once from the training data, carried inside every checkpoint.

A policy is only usable together with the statistics it was trained with, so they live in the checkpoint
manifest (plain JSON, see `sop/checkpoint.py`) rather than in a side file that can drift. Statistics are
per dimension of a feature (`observation.state`, `action`): min, max, mean, std and the frame count.

Two modes map a feature into the network's space:

- `min_max`: to [-1, 1]. What Diffusion Policy uses for low-dimensional data, and what the DDPM sampler's
  `clip_sample` to [-1, 1] assumes for actions.
- `mean_std`: zero mean, unit variance.

Dimensions that never vary in the data (Meta-World pads its 39-dim state with zeros for tasks with one
object) would divide by ~0; they are only centred, so a small deviation at run time stays small.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Below this half-range (or std) a dimension counts as constant and is only centred.
CONSTANT_DIMENSION_EPS = 1e-4


class NormalizationMode(enum.StrEnum):
    MIN_MAX = "min_max"
    MEAN_STD = "mean_std"
    IDENTITY = "identity"


class NormalizationError(ValueError):
    """Statistics that are malformed or do not fit the data they are applied to."""


@dataclass(frozen=True)
class FeatureStats:
    """Per-dimension statistics of one feature over all frames of a data set."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: int

    def __post_init__(self) -> None:
        shapes = {name: getattr(self, name).shape for name in ("min", "max", "mean", "std")}
        if len(set(shapes.values())) != 1 or len(shapes["min"]) != 1:
            raise NormalizationError(
                f"min/max/mean/std must be 1-D arrays of one length, got shapes {shapes}"
            )
        for name in ("min", "max", "mean", "std"):
            if not np.isfinite(getattr(self, name)).all():
                raise NormalizationError(f"{name} contains NaN or infinite values")
        if (self.max < self.min).any():
            raise NormalizationError("max is below min in some dimension")
        if (self.std < 0).any():
            raise NormalizationError("std is negative in some dimension")
        if self.count <= 0:
            raise NormalizationError(f"count must be positive, got {self.count}")

    @property
    def dim(self) -> int:
        return int(self.min.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "min": [float(v) for v in self.min],
            "max": [float(v) for v in self.max],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "count": int(self.count),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureStats:
        missing = [k for k in ("min", "max", "mean", "std", "count") if k not in values]
        if missing:
            raise NormalizationError(f"feature statistics lack {missing}")
        try:
            arrays = {k: np.asarray(values[k], dtype=np.float64) for k in ("min", "max", "mean", "std")}
            count = int(values["count"])
        except (TypeError, ValueError) as exc:
            raise NormalizationError(f"feature statistics are not numeric: {exc}") from None
        return cls(count=count, **arrays)


def compute_feature_stats(chunks: Iterable[np.ndarray]) -> FeatureStats:
    """Statistics over the rows of several (T, D) arrays, streamed so a large store never sits in memory."""
    total = 0
    sums: np.ndarray | None = None
    squares: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    for chunk in chunks:
        rows = np.asarray(chunk, dtype=np.float64)
        if rows.ndim != 2:
            raise NormalizationError(f"expected (T, D) arrays, got shape {rows.shape}")
        if rows.shape[0] == 0:
            continue
        if sums is None:
            sums = np.zeros(rows.shape[1])
            squares = np.zeros(rows.shape[1])
            low = np.full(rows.shape[1], np.inf)
            high = np.full(rows.shape[1], -np.inf)
        elif rows.shape[1] != sums.shape[0]:
            raise NormalizationError(f"dimension changed from {sums.shape[0]} to {rows.shape[1]}")
        assert squares is not None and low is not None and high is not None
        total += rows.shape[0]
        # Shift by the first chunk's mean would be more stable; float64 sums are plenty for robot data.
        sums += rows.sum(axis=0)
        squares += np.square(rows).sum(axis=0)
        low = np.minimum(low, rows.min(axis=0))
        high = np.maximum(high, rows.max(axis=0))
    if sums is None or squares is None or low is None or high is None:
        raise NormalizationError("no frames to compute statistics from")
    mean = sums / total
    variance = np.maximum(squares / total - np.square(mean), 0.0)
    return FeatureStats(min=low, max=high, mean=mean, std=np.sqrt(variance), count=total)


@dataclass(frozen=True)
class NormalizationStats:
    """Statistics for every normalized feature, keyed by the episode schema's key (`observation.state`)."""

    features: dict[str, FeatureStats]

    def __getitem__(self, key: str) -> FeatureStats:
        if key not in self.features:
            raise NormalizationError(f"no normalization statistics for {key!r}; have {sorted(self.features)}")
        return self.features[key]

    def to_dict(self) -> dict[str, Any]:
        return {key: stats.to_dict() for key, stats in sorted(self.features.items())}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NormalizationStats:
        if not isinstance(values, Mapping) or not values:
            raise NormalizationError(
                "normalization statistics must be a non-empty mapping of feature -> stats"
            )
        features = {}
        for key, stats in values.items():
            if not isinstance(stats, Mapping):
                raise NormalizationError(f"statistics of {key!r} must be a mapping")
            try:
                features[str(key)] = FeatureStats.from_dict(stats)
            except NormalizationError as exc:
                raise NormalizationError(f"{key}: {exc}") from None
        return cls(features=features)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Iterable[np.ndarray]]) -> NormalizationStats:
        """From per-feature streams of (T, D) arrays, e.g. one array per episode."""
        return cls(features={key: compute_feature_stats(chunks) for key, chunks in arrays.items()})

    @classmethod
    def from_episodes(cls, episodes: Iterable[Any], keys: Iterable[str]) -> NormalizationStats:
        """From `sop.episode.Episode` objects (anything with a `steps` mapping of column arrays)."""
        episodes = list(episodes)
        # Lists, not generators: a generator would bind `key` late and give every feature the last key's data.
        return cls.from_arrays({key: [episode.steps[key] for episode in episodes] for key in keys})

    @classmethod
    def from_store(
        cls, store: Any, keys: Iterable[str], tasks: Iterable[str] | None = None
    ) -> NormalizationStats:
        """From an `EpisodeStore` (its `list()` and `read_columns`); reads only the low-dimensional columns."""
        wanted = None if tasks is None else set(tasks)
        infos = [info for info in store.list() if wanted is None or info.task in wanted]
        if not infos:
            raise NormalizationError(f"the store has no episodes of tasks {sorted(wanted or [])}")
        keys = list(keys)
        collected: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for info in infos:
            columns = store.read_columns(info.episode_id, keys)
            for key in keys:
                collected[key].append(columns[key])
        return cls.from_arrays(collected)


def _affine(stats: FeatureStats, mode: NormalizationMode) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with normalized = (x - offset) / scale."""
    if mode is NormalizationMode.MIN_MAX:
        offset = (stats.max + stats.min) / 2.0
        scale = (stats.max - stats.min) / 2.0
    elif mode is NormalizationMode.MEAN_STD:
        offset = stats.mean.copy()
        scale = stats.std.copy()
    else:
        return np.ones(stats.dim), np.zeros(stats.dim)
    scale = np.where(scale < CONSTANT_DIMENSION_EPS, 1.0, scale)
    return scale, offset


class Normalizer(nn.Module):
    """Maps features into the network's space and back, on whatever device the policy lives.

    The statistics are not part of the state dict (non-persistent buffers): the checkpoint carries them in
    its manifest, readable without loading any tensor.
    """

    def __init__(self, stats: NormalizationStats, modes: Mapping[str, NormalizationMode | str]) -> None:
        super().__init__()
        self.stats = stats
        self.modes = {key: NormalizationMode(mode) for key, mode in modes.items()}
        self._keys: dict[str, str] = {}
        for index, (key, mode) in enumerate(sorted(self.modes.items())):
            scale, offset = _affine(stats[key], mode)
            buffer_name = f"feature_{index}"
            self._keys[key] = buffer_name
            self.register_buffer(
                f"{buffer_name}_scale", torch.as_tensor(scale, dtype=torch.float32), persistent=False
            )
            self.register_buffer(
                f"{buffer_name}_offset", torch.as_tensor(offset, dtype=torch.float32), persistent=False
            )

    def _params(self, key: str, x: Tensor) -> tuple[Tensor, Tensor]:
        if key not in self._keys:
            raise NormalizationError(f"no normalization for {key!r}; have {sorted(self._keys)}")
        name = self._keys[key]
        scale: Tensor = getattr(self, f"{name}_scale")
        offset: Tensor = getattr(self, f"{name}_offset")
        if x.shape[-1] != scale.shape[0]:
            raise NormalizationError(
                f"{key} has {x.shape[-1]} dimensions but its statistics have {scale.shape[0]}"
            )
        return scale, offset

    def normalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._params(key, x)
        return (x - offset) / scale

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._params(key, x)
        return x * scale + offset
