"""Partial episodes: recordings under `.partial/` that are in progress or that a crash left behind.

A recording killed mid-way (robot process crash, power cut) leaves its flushed steps and a progress file.
On the next start the robot's spool lists them (`partial_episodes`), commits what was flushed, labelled
`aborted` (`recover_partial`), or throws them away (`discard_partial`, `clean_partials`). A partial whose
writer is still alive, in this process or another one (its writer token names a live process), is never
touched: `PartialInUseError`. These are `EpisodeStore` methods; the store delegates here.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sop.data.episode_store_format import (
    PROGRESS_FILE,
    EpisodeInfo,
    EpisodeNotFoundError,
    PartialInUseError,
    child_path,
    token_alive,
)
from sop.data.episode_writer import recording_info
from sop.data.zarr_io import ArrayReader, read_array_spec, truncate_array
from sop.episode import IMAGE_PREFIX, TIMESTAMP, EpisodeError, Outcome, Source, check_step_key

if TYPE_CHECKING:
    from sop.data.episode_store import EpisodeStore


@dataclass(frozen=True)
class PartialEpisodeInfo:
    """An episode left under `.partial/`: being recorded now (`writer_alive`) or left by a crash."""

    episode_id: str
    robot_id: str
    task: str
    instruction: str
    source: Source
    started_at: float
    num_steps_flushed: int
    writer_alive: bool
    modified_at: float


def _read_progress(store: EpisodeStore, episode_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((child_path(store._partial_dir, episode_id) / PROGRESS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def partial_episodes(store: EpisodeStore) -> list[PartialEpisodeInfo]:
    """Episodes under `.partial/`: recordings in progress and those a crash left behind."""
    found = []
    for entry in sorted(store._partial_dir.iterdir()):
        progress = _read_progress(store, entry.name)
        if progress is None:  # killed before the first progress write: nothing usable
            meta: dict[str, Any] = {}
            alive = entry.name in store._writers
        else:
            meta = progress["meta"]
            alive = entry.name in store._writers or token_alive(progress["writer"])
        found.append(
            PartialEpisodeInfo(
                episode_id=entry.name,
                robot_id=str(meta.get("robot_id", "")),
                task=str(meta.get("task", "")),
                instruction=str(meta.get("instruction", "")),
                source=Source(meta.get("source", Source.ONLINE)),
                started_at=float(meta.get("started_at", 0.0)),
                num_steps_flushed=int(progress["num_steps"]) if progress else 0,
                writer_alive=alive,
                modified_at=entry.stat().st_mtime,
            )
        )
    return found


def _check_abandoned(store: EpisodeStore, episode_id: str) -> Path:
    partial = child_path(store._partial_dir, episode_id)
    if not partial.is_dir():
        raise EpisodeNotFoundError(episode_id)
    progress = _read_progress(store, episode_id)
    if episode_id in store._writers or (progress is not None and token_alive(progress["writer"])):
        raise PartialInUseError(f"episode_id: {episode_id} is still being recorded by a live writer")
    return partial


def discard_partial(store: EpisodeStore, episode_id: str) -> None:
    """Delete a partial episode left by a crash (refused while its writer is alive)."""
    partial = _check_abandoned(store, episode_id)
    store._remove_partial(partial)


def clean_partials(store: EpisodeStore, *, older_than_s: float | None = None) -> list[str]:
    """Discard every abandoned partial episode (optionally only those untouched for `older_than_s`)."""
    removed = []
    now = time.time()
    for partial in partial_episodes(store):
        if partial.writer_alive:
            continue
        if older_than_s is not None and now - partial.modified_at < older_than_s:
            continue
        with contextlib.suppress(EpisodeNotFoundError, PartialInUseError):
            discard_partial(store, partial.episode_id)
            removed.append(partial.episode_id)
    with contextlib.suppress(FileNotFoundError):
        store._remove_stale_staging()
    return removed


def recover_partial(
    store: EpisodeStore, episode_id: str, outcome: Outcome = Outcome.ABORTED
) -> EpisodeInfo | None:
    """Commit what a crashed writer flushed, labelled `outcome`; None (and the partial removed) if nothing."""
    partial = _check_abandoned(store, episode_id)
    progress = _read_progress(store, episode_id)
    if progress is None or int(progress["num_steps"]) == 0:
        store._remove_partial(partial)
        return None
    num_steps = int(progress["num_steps"])
    shapes = {k: tuple(v) for k, v in progress["step_shapes"].items()}
    lowdim: dict[str, np.ndarray] = {}
    try:
        for key in shapes:
            array_dir = child_path(partial, check_step_key(key))
            length = read_array_spec(array_dir).shape[0]
            if length < num_steps:
                raise EpisodeError(key, f"holds {length} steps, progress says {num_steps}")
            if length > num_steps:  # killed between growing the array and writing progress
                truncate_array(array_dir, num_steps)
            if not key.startswith(IMAGE_PREFIX):
                lowdim[key] = ArrayReader(array_dir).read_all()
        meta = progress["meta"]
        last_timestamp = float(lowdim[TIMESTAMP][-1])
        ended_at = max(float(meta["started_at"]), last_timestamp)
        writer_info = recording_info(meta, outcome, ended_at, lowdim, shapes, num_steps)
    except (EpisodeError, KeyError, ValueError, TypeError, OSError) as exc:
        raise EpisodeError(
            "partial", f"episode {episode_id} cannot be recovered ({exc}); discard_partial() it"
        ) from exc
    info = store._finish_group(partial, writer_info)
    store._publish(partial, episode_id)
    with store._lock:
        store._infos[episode_id] = info
    return info
