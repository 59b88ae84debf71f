"""The episode store's on-disk format: names, errors, the metadata record, safe paths and array chunking.

Everything here is shared by the store (`sop.data.episode_store`), the step-by-step writer
(`sop.data.episode_writer`) and partial-episode recovery (`sop.data.partial_recovery`); the layout itself
and why it is crash-safe are described in `sop.data.episode_store`, which re-exports the public names.

Every path the store builds goes through `child_path` (one plain name, checked to resolve inside its
parent), and every `.partial/` or `.staging/` entry carries a writer token (`process_token`) so that an
entry whose process is gone can be told from one still being written (`token_alive`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from sop.data.zarr_io import ArraySpec
from sop.episode import (
    IMAGE_DTYPE,
    IMAGE_PREFIX,
    STEP_DTYPES,
    Episode,
    Outcome,
    Source,
)
from sop.safe_logging import client_str

FORMAT: Final = "sop-episode-store"
FORMAT_VERSION: Final = 1
MARKER_FILE: Final = "sop_store.json"
EPISODES_DIR: Final = "episodes"
PARTIAL_DIR: Final = ".partial"
STAGING_DIR: Final = ".staging"
TRASH_DIR: Final = ".trash"
QUARANTINE_DIR: Final = "quarantine"
QUARANTINE_REASON_SUFFIX: Final = ".reason.json"
PROGRESS_FILE: Final = "sop_progress.json"
ATTRS_KEY: Final = "sop_episode"

IMAGE_CHUNK_TARGET_BYTES: Final = 256 * 1024
MAX_IMAGE_CHUNK_FRAMES: Final = 8
LOWDIM_CHUNK_STEPS: Final = 1024


class DuplicateEpisodeError(Exception):
    """The episode id is already committed: nothing was written (exactly-once ingest)."""

    def __init__(self, episode_id: str) -> None:
        super().__init__(f"episode_id: {episode_id} is already in the store")
        self.episode_id = episode_id


class EpisodeNotFoundError(KeyError):
    """No committed episode has this id (never stored, deleted, or not yet visible: try `refresh()`)."""

    def __init__(self, episode_id: str) -> None:
        super().__init__(episode_id)
        self.episode_id = episode_id

    def __str__(self) -> str:
        return f"episode_id: {self.episode_id} is not in the store"


class PartialInUseError(RuntimeError):
    """A partial episode that a live writer (this or another process) is still recording."""


class UnsafePathError(ValueError):
    """A path the store would build leaves its directory (a hostile id or key, or a symlink): refused,
    nothing written. Only reachable by bypassing `Episode.validate`, or by tampering with the store."""


class UnreadableEntryError(ValueError):
    """An entry of `episodes/` that is not a readable episode; `refresh()` moves it to `quarantine/`."""


@dataclass(frozen=True)
class EpisodeInfo:
    """What the store knows about a committed episode without reading its arrays."""

    episode_id: str
    robot_id: str
    task: str
    instruction: str
    outcome: Outcome
    source: Source
    started_at: float
    ended_at: float
    fps: float
    num_steps: int
    nbytes: int  # uncompressed bytes of all step arrays
    stored_bytes: int  # bytes on disk (compressed)
    step_shapes: dict[str, tuple[int, ...]]  # per-step shape (no time axis) of every key
    extra: dict[str, str] = field(default_factory=dict)
    committed_at: float = 0.0

    @property
    def cameras(self) -> list[str]:
        return sorted(k.removeprefix(IMAGE_PREFIX) for k in self.step_shapes if k.startswith(IMAGE_PREFIX))

    def stand_in_episode(self) -> Episode:
        """This episode with zero-cost broadcast views as step arrays (zeros of the stored shapes).

        For checks that need the shapes only (the schema's `validate`, `PolicyFeatures.check_episode`), so
        the learner can check every episode of its replay without reading a byte of it. The arrays are
        read-only and their values are meaningless.
        """
        steps = {
            key: np.broadcast_to(
                np.zeros((), IMAGE_DTYPE if key.startswith(IMAGE_PREFIX) else STEP_DTYPES.get(key, np.uint8)),
                (self.num_steps, *shape),
            )
            for key, shape in self.step_shapes.items()
        }
        return self.with_steps(steps)

    def with_steps(self, steps: dict[str, np.ndarray]) -> Episode:
        """The episode this metadata describes, with `steps` as its step arrays."""
        return Episode(
            episode_id=self.episode_id,
            robot_id=self.robot_id,
            task=self.task,
            instruction=self.instruction,
            outcome=self.outcome,
            started_at=self.started_at,
            ended_at=self.ended_at,
            steps=steps,
            source=self.source,
            fps=self.fps,
            extra=dict(self.extra),
        )

    @classmethod
    def describe(
        cls, episode: Episode, *, stored_bytes: int, step_shapes: dict[str, tuple[int, ...]] | None = None
    ) -> EpisodeInfo:
        """The metadata of `episode` (`step_shapes` defaults to its arrays' shapes without the time axis)."""
        return cls(
            episode_id=episode.episode_id,
            robot_id=episode.robot_id,
            task=episode.task,
            instruction=episode.instruction,
            outcome=episode.outcome,
            source=episode.source,
            started_at=float(episode.started_at),
            ended_at=float(episode.ended_at),
            fps=float(episode.fps),
            num_steps=episode.num_steps,
            nbytes=episode.nbytes,
            stored_bytes=stored_bytes,
            step_shapes=(
                {k: tuple(v.shape[1:]) for k, v in episode.steps.items()}
                if step_shapes is None
                else step_shapes
            ),
            extra=dict(episode.extra),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "robot_id": self.robot_id,
            "task": self.task,
            "instruction": self.instruction,
            "outcome": str(self.outcome),
            "source": str(self.source),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "fps": self.fps,
            "num_steps": self.num_steps,
            "nbytes": self.nbytes,
            "stored_bytes": self.stored_bytes,
            "step_shapes": {k: list(v) for k, v in self.step_shapes.items()},
            "extra": dict(self.extra),
            "committed_at": self.committed_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpisodeInfo:
        return cls(
            episode_id=str(data["episode_id"]),
            robot_id=str(data["robot_id"]),
            task=str(data["task"]),
            instruction=str(data["instruction"]),
            outcome=Outcome(data["outcome"]),
            source=Source(data["source"]),
            started_at=float(data["started_at"]),
            ended_at=float(data["ended_at"]),
            fps=float(data["fps"]),
            num_steps=int(data["num_steps"]),
            nbytes=int(data["nbytes"]),
            stored_bytes=int(data["stored_bytes"]),
            step_shapes={k: tuple(int(d) for d in v) for k, v in data["step_shapes"].items()},
            extra={str(k): str(v) for k, v in data.get("extra", {}).items()},
            committed_at=float(data.get("committed_at", 0.0)),
        )


# ----------------------------------------------------------------------------------------------------------
# Writer tokens


def process_token(pid: int | None = None) -> str:
    """pid plus the process start time, so a recycled pid is not mistaken for a live writer."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_process_start_time(pid)}"


def _process_start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the comm field


def token_alive(token: str) -> bool:
    pid_text, _, start = token.partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return start == _process_start_time(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start in ("0", _process_start_time(pid))


# ----------------------------------------------------------------------------------------------------------
# Paths and arrays


def child_path(parent: Path, name: str) -> Path:
    """`parent / name` for a single path component `name`, checked to resolve inside `parent`.

    Names are whitelisted before they get here (UUIDs, schema keys); this is the second line, for callers
    that bypassed validation and for a symlink planted in the store.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise UnsafePathError(f"{client_str(name)} is not a plain file name; refused to build a path from it")
    path = parent / name
    resolved_parent = parent.resolve()
    if not path.resolve().is_relative_to(resolved_parent):
        raise UnsafePathError(
            f"{path} resolves outside {resolved_parent} (a symlink?); refused to read or write through it"
        )
    return path


def _chunk_steps(key: str, step_shape: tuple[int, ...], itemsize: int) -> int:
    if key.startswith(IMAGE_PREFIX):
        frame_bytes = max(1, math.prod(step_shape) * itemsize)
        return max(1, min(MAX_IMAGE_CHUNK_FRAMES, IMAGE_CHUNK_TARGET_BYTES // frame_bytes))
    return LOWDIM_CHUNK_STEPS


def array_spec(key: str, shape: tuple[int, ...], dtype: np.dtype, cname: str, level: int) -> ArraySpec:
    """Pixels are compressed as bytes; numbers byte-shuffled first (exponents and signs group together)."""
    chunk_steps = _chunk_steps(key, shape[1:], dtype.itemsize)
    shuffle = "noshuffle" if dtype.itemsize == 1 else "shuffle"
    return ArraySpec(shape, chunk_steps, dtype, cname, level, shuffle)
