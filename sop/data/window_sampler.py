"""Weighted sampling of Diffusion-Policy training windows from an episode store.

Sampling is hierarchical, as SOP's data mixing needs it: pick a task (tasks weighted equally unless
`task_weights` says otherwise), then a source within the task (online vs offline share, per task and
changeable while training with `set_source_weights`), then a frame of that (task, source) with
probability proportional to its frame weight. Frame weights express what counts as a label: online frames
where the operator was NOT in control get `autonomous_frame_weight` (0 excludes them, as HG-DAgger does),
everything else 1; `frame_weight_fn` replaces that rule entirely.

Naming: "sampler" here means drawing (task, source, frame) windows at random, which is what this class does
(it has no `__len__`/`__getitem__`, so it is not a Dataset and keeps the name `WindowSampler`). It is not the
diffusion sampler (`sop.policies`, DDPM/DDIM/RTI denoising), and it does not decide the online/offline
weights: SOP's mixing (`cloud_learner.replay`) sets them, and the algorithm's `FrameSelection` sets
`autonomous_frame_weight`.

Window convention (Diffusion Policy): for anchor frame t of an episode with T steps,
observations are frames t-To+1 .. t (indices before 0 repeat frame 0) and actions are steps
t-To+1 .. t-To+Tp; an action index before 0 repeats step 0 and one past T-1 repeats step T-1, and both are
marked in `action_is_pad`.

An episode the sampler cannot use (a shape other than the first indexed episode's, a missing camera, arrays
that do not match its metadata or do not decode, one `episode_check` refuses) raises `ValueError` by default.
With `on_unusable="quarantine"` (the learner's replay) it is moved to the store's `quarantine/` instead,
counted in `num_quarantined`, and sampling goes on with the rest: one bad episode must not stop training.
Every episode is checked when it is indexed (its metadata, its low-dimensional columns, which are read anyway,
and the last frame of each sampled camera); an image chunk that fails to decode later, while sampling, drops
that episode the same way.

Memory: the sampler holds a frame index (episode, frame, weight) and the low-dimensional columns of the
episodes it samples from (about 0.2 KiB per frame for a 39-dimensional state), as flat arrays so a batch is
gathered with one fancy index per key; images are read lazily from the store, one contiguous slice per window
and camera. An episode none of whose frames has a positive weight (an autonomous episode under HG-DAgger) is
never held. `max_online_frames_per_task` bounds what a long-running learner holds: when the online episodes
of a task hold more frames than that, the oldest of them leave the in-memory index (they stay in the store;
they are not sampled any more) until 90 % of the bound is left, and the newest one always stays. Offline
episodes are never evicted. So the index of a learner that receives data forever stays bounded; with the
bound None it grows with the data.

Public API:

    WindowSampler(store, obs_horizon, action_horizon, *, tasks=None, task_weights=None,
                  source_weights=None, autonomous_frame_weight=1.0, frame_weight_fn=None,
                  frame_weight_mode="sample", image_keys=None, episode_check=None, on_unusable="raise",
                  max_online_frames_per_task=None)
        .sample(batch_size, rng) -> dict       keys listed in `WindowSampler.sample`
        .refresh() -> int                      index episodes committed since; returns how many
        .num_frames(task=None, source=None) -> int    frames with a positive weight
        .set_source_weights(task, {"online": w, "offline": 1 - w})
        .set_task_weights({task: w, ...})
        .tasks -> list[str]                    tasks with at least one sampleable frame
        .num_quarantined -> int                episodes moved to quarantine (on_unusable="quarantine")
        .recently_quarantined -> list[tuple[str, str]]   the last ones: (episode_id, reason)
        .num_evicted -> int                    online episodes evicted from memory by the frame bound
        .held_frames(task=None, source=None) -> int      frames held in memory (sampleable or not)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np

from sop.data.episode_store import EpisodeInfo, EpisodeNotFoundError, EpisodeStore
from sop.episode import ACTION, IMAGE_PREFIX, INTERVENTION, POLICY_VERSION, STATE, Source

FrameWeightFn = Callable[[EpisodeInfo, Mapping[str, np.ndarray]], np.ndarray]
# Refuses an episode by raising `ValueError` (e.g. `PolicyFeatures.check_episode` on its stand-in).
EpisodeCheck = Callable[[EpisodeInfo], None]
UnusableEpisodePolicy = Literal["raise", "quarantine"]
# What reading or checking one episode may raise when its files are damaged (blosc raises RuntimeError).
EPISODE_READ_ERRORS: Final = (OSError, ValueError, KeyError, IndexError, RuntimeError)
# Attempts of one `sample` call when image reads keep hitting episodes that turn out unusable.
MAX_SAMPLE_ATTEMPTS: Final = 8
# Eviction leaves this share of `max_online_frames_per_task` held, so the index is rebuilt once per ~10 % of
# the bound received rather than once per episode.
EVICTION_LOW_WATER: Final = 0.9
LOWDIM_KEYS = (STATE, ACTION, INTERVENTION, POLICY_VERSION)
SOURCES = (str(Source.ONLINE), str(Source.OFFLINE))


class _GrowingArray:
    """An append-only array with doubling capacity: indexing new episodes costs O(new), not O(total)."""

    def __init__(self, dtype: np.dtype | type, tail_shape: tuple[int, ...] = (), capacity: int = 16) -> None:
        self._data = np.empty((max(16, capacity), *tail_shape), dtype)
        self._size = 0

    def append(self, block: np.ndarray) -> None:
        needed = self._size + len(block)
        if needed > len(self._data):
            grown = np.empty((max(needed, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown  # views handed out earlier keep the old buffer and stay valid
        self._data[self._size : needed] = block
        self._size = needed

    @property
    def view(self) -> np.ndarray:
        return self._data[: self._size]

    def __len__(self) -> int:
        return self._size


class _Group:
    """The sampleable frames of one (task, source): flat rows, episodes and cumulative frame weights."""

    def __init__(self, capacity: int = 16) -> None:
        # The anchor frame's row in the flat low-dimensional arrays.
        self.rows = _GrowingArray(np.int64, capacity=capacity)
        self.episodes = _GrowingArray(np.int64, capacity=capacity)  # index into WindowSampler._episodes
        self.weights = _GrowingArray(np.float32, capacity=capacity)
        self.cumulative = _GrowingArray(np.float64, capacity=capacity)

    def append(self, rows: np.ndarray, episode: int, weights: np.ndarray) -> None:
        self.rows.append(rows)
        self.episodes.append(np.full(len(rows), episode, np.int64))
        self.weights.append(weights.astype(np.float32))
        self.cumulative.append(self.total + np.cumsum(weights))

    @property
    def total(self) -> float:
        return float(self.cumulative.view[-1]) if len(self.cumulative) else 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def held_episodes(self) -> np.ndarray:
        """Indices of the episodes with frames in this group, oldest first."""
        return np.unique(self.episodes.view)

    def kept(self, keep: np.ndarray, new_row: np.ndarray, new_episode: np.ndarray) -> _Group:
        """A copy holding only the frames of episodes with `keep[episode]`, renumbered by `new_row` (old flat
        row -> new) and `new_episode` (old episode index -> new)."""
        mask = keep[self.episodes.view]
        group = _Group(capacity=len(self))
        weights = self.weights.view[mask]
        group.rows.append(new_row[self.rows.view[mask]])
        group.episodes.append(new_episode[self.episodes.view[mask]])
        group.weights.append(weights)
        group.cumulative.append(np.cumsum(weights, dtype=np.float64))
        return group


def _compacted(values: np.ndarray, capacity: int) -> _GrowingArray:
    array = _GrowingArray(values.dtype, values.shape[1:], capacity=capacity)
    array.append(values)
    return array


class NoSampleableFramesError(ValueError):
    """Nothing to sample yet: an empty store, every weight zero, or every episode dropped."""


class _UnreadableWindow(Exception):
    """An image read failed while sampling; names the episode (its id: indices change when the index is
    compacted)."""

    def __init__(self, episode_id: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.episode_id = episode_id
        self.error = error


def _check_weights(name: str, weights: Mapping[str, float]) -> dict[str, float]:
    checked = {}
    for key, value in weights.items():
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name}[{key!r}]: weight {value} must be finite and >= 0")
        checked[str(key)] = value
    if checked and sum(checked.values()) <= 0:
        raise ValueError(f"{name}: weights {checked} sum to zero")
    return checked


class WindowSampler:
    """See the module docstring. Thread-safe: the learner may `refresh()` while another thread samples."""

    def __init__(
        self,
        store: EpisodeStore,
        obs_horizon: int,
        action_horizon: int,
        *,
        tasks: Sequence[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        source_weights: Mapping[str, float] | None = None,
        autonomous_frame_weight: float = 1.0,
        frame_weight_fn: FrameWeightFn | None = None,
        frame_weight_mode: Literal["sample", "loss"] = "sample",
        image_keys: Sequence[str] | None = None,
        episode_check: EpisodeCheck | None = None,
        on_unusable: UnusableEpisodePolicy = "raise",
        max_online_frames_per_task: int | None = None,
    ) -> None:
        if obs_horizon < 1:
            raise ValueError(f"obs_horizon: {obs_horizon} must be at least 1")
        if action_horizon < obs_horizon:
            raise ValueError(f"action_horizon: {action_horizon} must be >= obs_horizon ({obs_horizon})")
        if not np.isfinite(autonomous_frame_weight) or autonomous_frame_weight < 0:
            raise ValueError(f"autonomous_frame_weight: {autonomous_frame_weight} must be finite and >= 0")
        if frame_weight_mode not in ("sample", "loss"):
            raise ValueError(f"frame_weight_mode: {frame_weight_mode!r} is not 'sample' or 'loss'")
        if on_unusable not in ("raise", "quarantine"):
            raise ValueError(f"on_unusable: {on_unusable!r} is not 'raise' or 'quarantine'")
        if max_online_frames_per_task is not None and max_online_frames_per_task < 1:
            raise ValueError(f"max_online_frames_per_task: {max_online_frames_per_task} must be at least 1")
        self.store = store
        self.obs_horizon = obs_horizon
        self.action_horizon = action_horizon
        self.task_filter = None if tasks is None else set(tasks)
        self.autonomous_frame_weight = float(autonomous_frame_weight)
        self.frame_weight_fn = frame_weight_fn
        self.frame_weight_mode = frame_weight_mode
        self.image_keys = [k if k.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + k for k in (image_keys or [])]
        self.episode_check = episode_check
        self.on_unusable = on_unusable
        self.max_online_frames_per_task = max_online_frames_per_task
        self.num_quarantined = 0
        self.num_evicted = 0
        self._recently_quarantined: deque[tuple[str, str]] = deque(maxlen=100)
        self._task_weights = _check_weights("task_weights", task_weights or {})
        self._default_source_weights = self._check_source_weights(source_weights)
        self._source_weights: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._episodes: list[EpisodeInfo] = []  # the held episodes, in the order they were indexed
        self._position: dict[str, int] = {}  # episode id -> index into _episodes
        self._episode_ids: set[str] = set()  # every episode seen: held, evicted, never held or refused
        self._offsets: list[int] = []  # first flat row of each held episode
        self._flat: dict[str, _GrowingArray] = {}  # low-dim columns of all episodes, end to end
        self._groups: dict[tuple[str, str], _Group] = {}
        self._held_rows: dict[tuple[str, str], int] = {}  # frames of each group's held episodes
        self._num_rows = 0
        self.refresh()

    # -- weights -----------------------------------------------------------------------------------------

    @staticmethod
    def _check_source_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        unknown = set(weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"source_weights: unknown sources {sorted(unknown)}; use {list(SOURCES)}")
        return _check_weights("source_weights", weights)

    def set_source_weights(self, task: str, weights: Mapping[str, float]) -> None:
        """Online/offline share for one task (SOP mixing adjusts it from recent losses while training)."""
        checked = self._check_source_weights(weights)
        assert checked is not None
        with self._lock:
            self._source_weights[task] = checked

    def set_task_weights(self, weights: Mapping[str, float]) -> None:
        """Relative task weights; tasks not named keep weight 1."""
        checked = _check_weights("task_weights", weights)
        with self._lock:
            self._task_weights = checked

    # -- index -------------------------------------------------------------------------------------------

    def _frame_weights(self, info: EpisodeInfo, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.frame_weight_fn is not None:
            weights = np.asarray(self.frame_weight_fn(info, columns), dtype=np.float64)
            if weights.shape != (info.num_steps,) or not np.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(
                    f"frame_weight_fn: must return {info.num_steps} finite weights >= 0 for episode "
                    f"{info.episode_id}, got shape {weights.shape}"
                )
            return weights
        weights = np.ones(info.num_steps, np.float64)
        if info.source == Source.ONLINE:
            weights[~columns[INTERVENTION]] = self.autonomous_frame_weight
        return weights

    def _check_compatible(self, info: EpisodeInfo) -> None:
        if not self._episodes:
            return
        first = self._episodes[0]
        for key in (STATE, ACTION, *self.image_keys):
            if info.step_shapes.get(key) != first.step_shapes.get(key):
                raise ValueError(
                    f"{key}: episode {info.episode_id} has per-step shape {info.step_shapes.get(key)}, "
                    f"episode {first.episode_id} has {first.step_shapes.get(key)}; one sampler needs one shape"
                )

    def _index(self, info: EpisodeInfo, columns: Mapping[str, np.ndarray], weights: np.ndarray) -> None:
        """Append one episode's columns and frames (under the lock); one without a sampleable frame is only
        remembered as seen."""
        self._check_compatible(info)
        self._episode_ids.add(info.episode_id)
        frames = np.flatnonzero(weights > 0)
        if len(frames) == 0:
            return
        if not self._flat:
            self._flat = {
                key: _GrowingArray(columns[key].dtype, columns[key].shape[1:]) for key in LOWDIM_KEYS
            }
        episode_index = len(self._episodes)
        self._episodes.append(info)
        self._position[info.episode_id] = episode_index
        self._offsets.append(self._num_rows)
        for key in LOWDIM_KEYS:
            self._flat[key].append(columns[key])
        group_key = (info.task, str(info.source))
        group = self._groups.setdefault(group_key, _Group())
        group.append(self._num_rows + frames, episode_index, weights[frames])
        self._held_rows[group_key] = self._held_rows.get(group_key, 0) + info.num_steps
        self._num_rows += info.num_steps

    # -- the frame bound ---------------------------------------------------------------------------------

    def _held_steps(self, episodes: np.ndarray) -> np.ndarray:
        return np.array([self._episodes[e].num_steps for e in episodes], np.int64)

    def held_frames(self, task: str | None = None, source: Source | str | None = None) -> int:
        """Frames held in memory (every frame of each held episode, sampleable or not)."""
        with self._lock:
            return sum(
                rows
                for (group_task, group_source), rows in self._held_rows.items()
                if (task is None or group_task == task) and (source is None or group_source == str(source))
            )

    def _evict_over_bound(self) -> None:
        """Under the lock: evict the oldest online episodes of every task over `max_online_frames_per_task`."""
        bound = self.max_online_frames_per_task
        if bound is None:
            return
        evicted: list[np.ndarray] = []
        for key, group in self._groups.items():
            if key[1] != Source.ONLINE.value or self._held_rows.get(key, 0) <= bound:
                continue  # the common case costs a dict lookup, not a pass over the group
            episodes = group.held_episodes()  # indices grow with indexing order: oldest first
            steps = self._held_steps(episodes)
            # Evict the shortest prefix that leaves at most the low-water mark; the newest always stays.
            left_after = steps.sum() - np.cumsum(steps)
            count = min(int(np.searchsorted(-left_after, -bound * EVICTION_LOW_WATER)) + 1, len(episodes) - 1)
            evicted.append(episodes[:count])
        if evicted:
            dropped = np.concatenate(evicted)
            self._compact(dropped)
            self.num_evicted += len(dropped)

    def _compact(self, evicted: np.ndarray) -> None:
        """Under the lock: rebuild the index without the `evicted` episodes and without any episode no group
        samples any more (dropped ones). Views handed out before stay valid (they keep the old buffers)."""
        keep = np.zeros(len(self._episodes), bool)
        for group in self._groups.values():
            keep[group.held_episodes()] = True
        keep[evicted] = False
        steps = self._held_steps(np.arange(len(self._episodes)))
        row_kept = np.repeat(keep, steps)
        new_row = np.cumsum(row_kept) - 1
        new_episode = np.cumsum(keep) - 1
        # Reserve what was held before: the index grows back to about that before the next eviction, so
        # the steady state reallocates the same sizes instead of doubling.
        self._flat = {
            key: _compacted(column.view[row_kept], capacity=len(column)) for key, column in self._flat.items()
        }
        self._groups = {key: group.kept(keep, new_row, new_episode) for key, group in self._groups.items()}
        self._episodes = [info for info, kept in zip(self._episodes, keep, strict=True) if kept]
        self._position = {info.episode_id: index for index, info in enumerate(self._episodes)}
        self._held_rows = {
            key: int(self._held_steps(group.held_episodes()).sum()) for key, group in self._groups.items()
        }
        self._offsets = np.concatenate([[0], np.cumsum(steps[keep])])[:-1].astype(np.int64).tolist()
        self._num_rows = int(row_kept.sum())

    def refresh(self) -> int:
        """Index episodes committed to the store since the last call; returns how many were added.

        The store is read outside the lock, so a trainer thread keeps sampling while this runs.
        """
        self.store.refresh()
        with self._lock:
            known = set(self._episode_ids)
        added = 0
        for info in self.store.list():
            if info.episode_id in known or (
                self.task_filter is not None and info.task not in self.task_filter
            ):
                continue
            try:
                columns = self._load_checked(info)
            except EpisodeNotFoundError:  # deleted between listing and reading: skip it
                continue
            except EPISODE_READ_ERRORS as exc:
                self._refuse(info, exc)
                continue
            weights = self._frame_weights(info, columns)
            with self._lock:
                if info.episode_id in self._episode_ids:
                    continue
                try:
                    self._index(info, columns, weights)
                except ValueError as exc:
                    refused: ValueError | None = exc
                else:
                    refused = None
                    added += 1
            if refused is not None:
                self._refuse(info, refused)
        if added:
            with self._lock:
                self._evict_over_bound()
        return added

    def _load_checked(self, info: EpisodeInfo) -> dict[str, np.ndarray]:
        """The episode's low-dimensional columns, after checking that it fits this sampler and that its
        arrays match its metadata; `ValueError` (or a read error) naming what does not."""
        if self.episode_check is not None:
            self.episode_check(info)
        missing = [k for k in self.image_keys if k not in info.step_shapes]
        if missing:
            raise ValueError(f"{missing[0]}: episode {info.episode_id} has no such camera")
        with self._lock:
            self._check_compatible(info)
        columns = self.store.read_columns(info.episode_id, LOWDIM_KEYS)
        for key, column in columns.items():
            expected = (info.num_steps, *info.step_shapes[key])
            if column.shape != expected:
                raise ValueError(
                    f"{key}: episode {info.episode_id} stores shape {column.shape}, its metadata says {expected}"
                )
            if column.dtype.kind == "f" and not np.isfinite(column).all():
                raise ValueError(f"{key}: episode {info.episode_id} holds NaN or infinite values")
        for key in self.image_keys:  # the last frame: the array is as long as it says, and decodes
            last = self.store.read_steps(info.episode_id, key, info.num_steps - 1, info.num_steps)
            if last.shape[1:] != info.step_shapes[key]:
                raise ValueError(
                    f"{key}: episode {info.episode_id} stores frames of shape {last.shape[1:]}, its "
                    f"metadata says {info.step_shapes[key]}"
                )
        return columns

    def _refuse(self, info: EpisodeInfo, error: BaseException) -> None:
        """An episode this sampler cannot use: raise (the default) or move it to the store's quarantine."""
        if self.on_unusable == "raise":
            raise error
        reason = f"unusable for training: {error}"
        try:
            self.store.quarantine(info.episode_id, reason)
            moved = True
        except EpisodeNotFoundError:  # gone meanwhile (deleted, or quarantined by another process)
            moved = False
        with self._lock:
            self._episode_ids.add(info.episode_id)  # never index it again, even if it comes back
            if moved:
                self.num_quarantined += 1
                self._recently_quarantined.append((info.episode_id, reason))

    def _drop(self, episode_id: str, error: BaseException) -> None:
        """Remove a held episode whose images failed to read from sampling, then refuse it."""
        with self._lock:
            position = self._position.get(episode_id)
            if position is None:
                return  # evicted or dropped meanwhile
            info = self._episodes[position]
            self._compact(np.array([position], np.int64))
        if isinstance(error, EpisodeNotFoundError):
            return  # deleted under us: nothing to quarantine
        self._refuse(info, error)

    @property
    def recently_quarantined(self) -> list[tuple[str, str]]:
        """The last (up to 100) episodes this sampler quarantined: (episode_id, reason)."""
        with self._lock:
            return list(self._recently_quarantined)

    @property
    def tasks(self) -> list[str]:
        with self._lock:
            return sorted({task for (task, _), group in self._groups.items() if group.total > 0})

    def num_frames(self, task: str | None = None, source: Source | str | None = None) -> int:
        """Frames with a positive weight (the ones `sample` can return as anchors)."""
        with self._lock:
            return sum(
                len(group.rows)
                for (group_task, group_source), group in self._groups.items()
                if (task is None or group_task == task) and (source is None or group_source == str(source))
            )

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    # -- sampling ----------------------------------------------------------------------------------------

    def _mixture(self) -> list[tuple[tuple[str, str], float]]:
        """(task, source) groups with their probabilities under the task and source weights."""
        by_task: dict[str, list[tuple[str, _Group]]] = {}
        for (task, source), group in self._groups.items():
            if group.total > 0:
                by_task.setdefault(task, []).append((source, group))
        task_weight = {task: self._task_weights.get(task, 1.0) for task in by_task}
        task_total = sum(task_weight.values())
        if task_total <= 0:
            raise NoSampleableFramesError(
                "sampler has no sampleable frames (empty store, or every weight is zero)"
            )
        mixture = []
        for task, groups in by_task.items():
            wanted = self._source_weights.get(task, self._default_source_weights)
            if wanted is None:  # no preference: proportional to the frames' weights
                shares = {source: group.total for source, group in groups}
            else:
                shares = {source: wanted.get(source, 0.0) for source, _ in groups}
                if sum(shares.values()) <= 0:  # the wanted source has no frames yet: use what exists
                    shares = {source: group.total for source, group in groups}
            share_total = sum(shares.values())
            for source, _ in groups:
                probability = task_weight[task] / task_total * shares[source] / share_total
                if probability > 0:
                    mixture.append(((task, source), probability))
        return mixture

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """A batch of windows (numpy arrays; the learner moves them to torch).

        Keys: "observation.state" (B,To,D) float32, "action" (B,Tp,A) float32, "action_is_pad" (B,Tp) bool,
        "intervention" (B,Tp) bool, "policy_version" (B,) int64 (at the anchor frame), "frame_index" (B,)
        int64, "episode_length" (B,) int64, "weight" (B,) float32 (1 in "sample" mode, the frame weight in
        "loss" mode), "task", "instruction", "source", "episode_id", "outcome" (lists of str), and
        "observation.images.<cam>" (B,To,H,W,3) uint8 for each requested camera.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be at least 1")
        for _ in range(MAX_SAMPLE_ATTEMPTS - 1):
            try:
                return self._sample_once(batch_size, rng)
            except _UnreadableWindow as unreadable:
                if self.on_unusable == "raise" and not isinstance(unreadable.error, EpisodeNotFoundError):
                    raise unreadable.error from None
                self._drop(unreadable.episode_id, unreadable.error)
        try:
            return self._sample_once(batch_size, rng)
        except _UnreadableWindow as unreadable:
            raise unreadable.error from None

    def _sample_once(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        with self._lock:
            mixture = self._mixture()
            group_keys = [key for key, _ in mixture]
            probabilities = np.array([p for _, p in mixture])
            chosen = rng.choice(len(mixture), size=batch_size, p=probabilities / probabilities.sum())
            rows = np.empty(batch_size, np.int64)
            episodes = np.empty(batch_size, np.int64)
            weights = np.ones(batch_size, np.float32)
            for g in np.unique(chosen):
                group = self._groups[group_keys[g]]
                where = np.flatnonzero(chosen == g)
                if self.frame_weight_mode == "sample":
                    targets = rng.random(len(where)) * group.total
                    picks = np.searchsorted(group.cumulative.view, targets, side="right")
                    picks = np.minimum(picks, len(group.rows) - 1)
                else:
                    picks = rng.integers(0, len(group.rows), len(where))
                    weights[where] = group.weights.view[picks]
                rows[where] = group.rows.view[picks]
                episodes[where] = group.episodes.view[picks]
            flat = {key: column.view for key, column in self._flat.items()}
            infos = [self._episodes[e] for e in episodes]
            starts = np.array([self._offsets[e] for e in episodes], np.int64)
        lengths = np.array([info.num_steps for info in infos], np.int64)
        frames = rows - starts
        to, tp = self.obs_horizon, self.action_horizon
        obs_steps = frames[:, None] + np.arange(-to + 1, 1)[None, :]
        act_steps = frames[:, None] + np.arange(-to + 1, -to + 1 + tp)[None, :]
        obs_rows = starts[:, None] + np.clip(obs_steps, 0, lengths[:, None] - 1)
        act_rows = starts[:, None] + np.clip(act_steps, 0, lengths[:, None] - 1)
        batch: dict[str, Any] = {
            STATE: flat[STATE][obs_rows],
            ACTION: flat[ACTION][act_rows],
            "action_is_pad": (act_steps < 0) | (act_steps >= lengths[:, None]),
            INTERVENTION: flat[INTERVENTION][act_rows],
            POLICY_VERSION: flat[POLICY_VERSION][rows],
            "frame_index": frames,
            "episode_length": lengths,
            "weight": weights,
            "task": [info.task for info in infos],
            "instruction": [info.instruction for info in infos],
            "source": [str(info.source) for info in infos],
            "episode_id": [info.episode_id for info in infos],
            "outcome": [str(info.outcome) for info in infos],
        }
        for key in self.image_keys:
            batch[key] = self._read_images(key, infos, obs_steps, lengths)
        return batch

    def _read_images(
        self,
        key: str,
        infos: list[EpisodeInfo],
        obs_steps: np.ndarray,
        lengths: np.ndarray,
    ) -> np.ndarray:
        """One contiguous store read per window; frames before the start repeat frame 0."""
        height, width, channels = infos[0].step_shapes[key]
        images = np.empty((len(infos), self.obs_horizon, height, width, channels), np.uint8)
        for b, info in enumerate(infos):
            wanted = np.clip(obs_steps[b], 0, lengths[b] - 1)
            first, last = int(wanted[0]), int(wanted[-1])
            try:
                window = self.store.read_steps(info.episode_id, key, first, last + 1)
                images[b] = window[wanted - first]
            except EPISODE_READ_ERRORS as exc:  # EpisodeNotFoundError (a KeyError) included
                raise _UnreadableWindow(info.episode_id, exc) from exc
        return images
