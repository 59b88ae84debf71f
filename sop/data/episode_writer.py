"""Recording an episode step by step (`EpisodeStore.begin_episode`): the robot's spool writes this way.

A recording lives in `.partial/<episode id>/` of its store: a zarr group whose arrays grow by one block of
steps per flush, and a progress file (`sop_progress.json`: the writer token, the metadata and the number of
steps flushed) replaced atomically after every flush. A process crash therefore leaves a partial episode
that `sop.data.partial_recovery` can commit up to its last flush; `commit` validates the whole recording
and publishes it through the store exactly like `EpisodeStore.append`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from sop.data.episode_store_format import (
    PROGRESS_FILE,
    EpisodeInfo,
    array_spec,
    child_path,
    process_token,
)
from sop.data.zarr_io import ArrayAppender, write_group
from sop.durable_files import write_json_atomically
from sop.episode import (
    ACTION,
    IMAGE_DTYPE,
    IMAGE_PREFIX,
    MAX_STEPS,
    POLICY_ACTION,
    REQUIRED_STEP_KEYS,
    STATE,
    STEP_DTYPES,
    Episode,
    EpisodeError,
    Outcome,
    Source,
    check_step_key,
)

if TYPE_CHECKING:
    from sop.data.episode_store import EpisodeStore

_VECTOR_KEYS: Final = (STATE, ACTION, POLICY_ACTION)


def _validation_view(
    steps: Mapping[str, np.ndarray], image_shapes: Mapping[str, tuple[int, ...]], n: int
) -> dict:
    """Steps for `validate_steps` where images are zero-cost broadcast views (their bytes are not needed)."""
    view: dict[str, np.ndarray] = dict(steps)
    for key, shape in image_shapes.items():
        view[key] = np.broadcast_to(np.zeros((), IMAGE_DTYPE), (n, *shape))
    return view


def check_metadata(meta: Mapping[str, Any]) -> None:
    """Validate per-episode metadata with the schema's own rules (on a one-step stand-in episode)."""
    stand_in = {
        key: np.zeros((1, 1) if key in _VECTOR_KEYS else (1,), STEP_DTYPES[key]) for key in REQUIRED_STEP_KEYS
    }
    Episode(
        episode_id=str(meta["episode_id"]),
        robot_id=meta["robot_id"],
        task=meta["task"],
        instruction=meta["instruction"],
        outcome=Outcome.ABORTED,
        started_at=float(meta["started_at"]),
        ended_at=float(meta["started_at"]),
        steps=stand_in,
        source=Source(meta["source"]),
        fps=float(meta["fps"]),
        extra=meta["extra"],
    ).validate()


def recording_info(
    meta: Mapping[str, Any],
    outcome: Outcome,
    ended_at: float,
    lowdim: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    num_steps: int,
) -> EpisodeInfo:
    """Validate a step-by-step recording against the schema and describe it (images checked by shape only)."""
    image_shapes = {k: v for k, v in shapes.items() if k.startswith(IMAGE_PREFIX)}
    episode = Episode(
        episode_id=str(meta["episode_id"]),
        robot_id=str(meta["robot_id"]),
        task=str(meta["task"]),
        instruction=str(meta["instruction"]),
        outcome=Outcome(outcome),
        started_at=float(meta["started_at"]),
        ended_at=float(ended_at),
        steps=_validation_view(lowdim, image_shapes, num_steps),
        source=Source(meta["source"]),
        fps=float(meta["fps"]),
        extra=dict(meta.get("extra", {})),
    )
    episode.validate()  # so every step array holds `num_steps` steps
    return EpisodeInfo.describe(episode, stored_bytes=0, step_shapes=dict(shapes))


class EpisodeWriter:
    """Records one episode step by step into `.partial/<id>`; see `EpisodeStore.begin_episode`.

    Every step is checked as it arrives (keys, dtypes, shapes against the first step, finite floats), so a
    bad step is refused at once instead of poisoning the episode at commit. Low-dimensional columns stay in
    memory too (they are small) so `commit` can validate the whole episode without reading anything back.
    A flush costs a few milliseconds per key: call `add_step` from a recorder thread, not the control loop.
    """

    def __init__(self, store: EpisodeStore, path: Path, meta: dict[str, Any], flush_every: int) -> None:
        self._store = store
        self._path = path
        self._meta = meta
        self._flush_every = flush_every
        self._token = process_token()
        write_group(path, {})
        self._arrays: dict[str, ArrayAppender] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._lowdim: dict[str, list[np.ndarray]] = {}
        self._num_steps = 0
        self._num_flushed = 0
        self._closed = False
        self._write_progress()

    @property
    def episode_id(self) -> str:
        return str(self._meta["episode_id"])

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def num_flushed(self) -> int:
        return self._num_flushed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"episode_id: writer for {self.episode_id} is already committed or aborted")

    def _coerce(self, key: str, value: Any) -> np.ndarray:
        check_step_key(key)  # the key becomes a directory name below
        array = np.asarray(value)
        if key.startswith(IMAGE_PREFIX):
            if array.dtype != IMAGE_DTYPE:
                raise EpisodeError(key, f"dtype {array.dtype} is not uint8")
            if array.ndim != 3 or array.shape[2] != 3:
                raise EpisodeError(key, f"shape {array.shape} is not (H, W, 3)")
            return array
        if key not in STEP_DTYPES:
            raise EpisodeError(key, "is not a key of the episode schema")
        expected = STEP_DTYPES[key]
        if array.dtype != expected:
            # Narrowing within a kind (a Python float to float32) is fine; int -> float hides a bug upstream.
            if array.dtype.kind != expected.kind or not np.can_cast(array.dtype, expected, "same_kind"):
                raise EpisodeError(key, f"dtype {array.dtype} cannot be stored as {expected}")
            array = array.astype(expected)
        want_rank = 1 if key in _VECTOR_KEYS else 0
        if array.ndim != want_rank:
            raise EpisodeError(
                key, f"rank {array.ndim} is not {want_rank} (shape {array.shape}) for one step"
            )
        if expected.kind == "f" and not np.isfinite(array).all():
            raise EpisodeError(key, "contains NaN or infinite values")
        return array

    def add_step(self, step: Mapping[str, Any]) -> None:
        """Add one control step (arrays without the time axis; scalars for the 0-d keys)."""
        self._check_open()
        if self._num_steps >= MAX_STEPS:
            raise EpisodeError(ACTION, f"episode reached the cap of {MAX_STEPS} steps")
        arrays = {key: self._coerce(key, value) for key, value in step.items()}
        if not self._shapes:
            missing = [k for k in REQUIRED_STEP_KEYS if k not in arrays]
            if missing:
                raise EpisodeError(missing[0], "required key is missing")
        else:
            if set(arrays) != set(self._shapes):
                extra = sorted(set(arrays) - set(self._shapes))
                lacking = sorted(set(self._shapes) - set(arrays))
                raise EpisodeError(
                    (lacking or extra)[0],
                    f"step keys differ from the first step (missing {lacking}, new {extra})",
                )
            for key, array in arrays.items():
                if array.shape != self._shapes[key]:
                    raise EpisodeError(
                        key, f"shape {array.shape} differs from the first step's {self._shapes[key]}"
                    )
        if not self._shapes:
            self._shapes = {key: tuple(a.shape) for key, a in arrays.items()}
            self._dtypes = {key: a.dtype for key, a in arrays.items()}
            self._pending = {key: [] for key in arrays}
            self._lowdim = {key: [] for key in arrays if not key.startswith(IMAGE_PREFIX)}
        for key, array in arrays.items():
            self._pending[key].append(array)
        self._num_steps += 1
        if self._num_steps - self._num_flushed >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered steps into the partial group, then record the new step count."""
        self._check_open()
        count = self._num_steps - self._num_flushed
        if count == 0:
            return
        for key, pending in self._pending.items():
            block = np.stack(pending)
            array = self._arrays.get(key)
            if array is None:
                spec = array_spec(
                    key,
                    (0, *self._shapes[key]),
                    self._dtypes[key],
                    self._store.compressor,
                    self._store.compression_level,
                )
                array = ArrayAppender(child_path(self._path, key), spec)
                self._arrays[key] = array
            array.append(block)
            if key in self._lowdim:
                self._lowdim[key].append(block)
            pending.clear()
        self._num_flushed = self._num_steps
        self._write_progress()

    def _write_progress(self) -> None:
        write_json_atomically(
            self._path / PROGRESS_FILE,
            {
                "writer": self._token,
                "meta": self._meta,
                "num_steps": self._num_flushed,
                "step_shapes": {k: list(v) for k, v in self._shapes.items()},
            },
            durable=False,  # crash safety comes from the atomic rename; power-cut durability from commit
        )

    def commit(
        self, outcome: Outcome, ended_at: float | None = None, extra: Mapping[str, str] | None = None
    ) -> EpisodeInfo:
        """Validate the whole recording and make it visible as a committed episode; `extra` entries known
        only at the end (which operator drove which frames) join those given at `begin_episode`."""
        self._check_open()
        self.flush()
        if self._num_steps == 0:
            raise EpisodeError(ACTION, "episode has no steps")
        if extra:
            self._meta = {**self._meta, "extra": {**self._meta["extra"], **extra}}
        started_at = float(self._meta["started_at"])
        end = max(started_at, time.time()) if ended_at is None else float(ended_at)
        lowdim = {key: np.concatenate(blocks) for key, blocks in self._lowdim.items()}
        info = recording_info(self._meta, Outcome(outcome), end, lowdim, self._shapes, self._num_steps)
        info = self._store._finish_group(self._path, info)
        self._store._publish(self._path, self.episode_id)
        self._close()
        with self._store._lock:
            self._store._infos[info.episode_id] = info
        return info

    def abort(self) -> None:
        """Throw the recording away (nothing becomes visible)."""
        if self._closed:
            return
        self._close()
        self._store._remove_partial(self._path)

    def _close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._lowdim.clear()
        with self._store._lock:
            self._store._writers.pop(self.episode_id, None)
