"""The episode store: an append-only, crash-safe directory of zarr 3 episodes (robot spool and replay store).

One store is one directory; the directory listing of `episodes/` is the index:

    <root>/sop_store.json            format marker {"format": "sop-episode-store", "version": 1}
    <root>/episodes/<episode_id>/    one zarr 3 group per committed episode: one array per step key, and the
                                     episode metadata (EpisodeInfo) in the group attributes ("sop_episode")
    <root>/.partial/<episode_id>/    an episode being recorded by `begin_episode` (zarr group + progress file)
    <root>/.staging/<id>.<writer>/   an `append` being written
    <root>/.trash/                   deleted episodes on their way out
    <root>/quarantine/<name>         an entry of episodes/ that could not be read or trained on, moved aside
    <root>/quarantine/<name>.reason.json   why and when: {"name", "reason", "time"}

Why it is crash-safe: an episode is written completely under `.partial/` or `.staging/` and then becomes
visible by one `os.rename` into `episodes/` (atomic on one filesystem, and refused when `episodes/<id>`
exists, which is what makes commits exactly-once even between processes). A writer killed at any moment
leaves either no episode or a whole one; its partial data stays out of sight until `recover_partial`
commits what was flushed (as `aborted`) or `discard_partial`/`clean_partials` removes it. Files a reader
may be looking at (a recording's chunks and metadata) are replaced through a temporary name and a rename,
so no file is ever seen half written. With `durable=True` (the default) an episode's files are on stable
storage before the rename (one syncfs(2) for all of them, per-file fsync where syncfs is missing) and the
directories are fsync'ed after it, so a committed episode survives a power cut: the learner sends its
receipt only after that. A recording's periodic flushes are not fsync'ed (a process crash cannot lose them;
a power cut may lose the last seconds of a recording that was never committed anyway).

The arrays and groups are plain zarr 3 (`zarr.open_group(<root>/episodes/<id>)` reads an episode), written
and read by `sop.data.zarr_io` without zarr-python's async machinery, which costs ~1 ms per call here.

Layout choices: images are chunked along time in 1-8 frames per chunk (about 256 KiB raw per chunk), so a
frame or a short window decompresses only its own chunk; low-dimensional arrays use 1024-step chunks (one
chunk per typical episode). Blosc/LZ4 level 9 by default, byte-shuffled for numbers: on 64x64 rendered
frames it stores ~1/4 of the raw bytes and decodes at several GB/s, while Blosc/Zstd decoded ~20x slower
here for a slightly better ratio (`compressor="zstd"` if disk matters more than sampling speed).

Readers in other processes see a consistent store at all times; a long-lived reader calls `refresh()` to
pick up episodes committed by someone else (`get`, `info`, `in` look on disk when the id is not cached).

Why nothing outside the root is ever touched, and why one bad entry cannot make the store unopenable: every
path is built from a canonical UUID (`check_episode_id`) or a whitelisted step key (`check_step_key`: camera
names are `[A-Za-z0-9_-]{1,64}`) and is checked to resolve inside its parent, even when the caller skipped
`Episode.validate` (`UnsafePathError`, nothing written). An entry of `episodes/` that is not a readable
episode (a name that is not a UUID, a symlink, missing or garbled metadata, a missing array) is moved to
`quarantine/` with a reason file when `refresh()` (and so opening the store) or a lookup meets it, instead of
raising; the learner's trainer quarantines a readable episode its policy cannot train on the same way
(`quarantine(episode_id, reason)`). Moving aside is one rename, so it is as crash-safe as a commit: a
crash leaves the entry in `episodes/` (quarantined again on the next refresh) or in `quarantine/`; the reason
file is written first and may be left alone by a crash, which `quarantined()` ignores. Two processes that
quarantine the same entry race on that rename; one wins, the other drops its reason file.

Public API (the robot client, the cloud learner and the sampler rely on these names):

    EpisodeStore(root, *, create=True, durable=True, compressor="lz4", compression_level=9)
        .append(episode) -> EpisodeInfo                 DuplicateEpisodeError on a repeated id (store unchanged)
        .begin_episode(episode_id, robot_id, task, instruction, *, source=Source.ONLINE, fps=30.0,
                       started_at=None, extra=None, flush_every=30) -> EpisodeWriter
            writer.add_step(step)      one step's arrays, no time axis; flushed every `flush_every` steps
                                       (a flush takes ~20-50 ms here: record from a thread, not the 30 Hz loop)
            writer.flush()             write the buffered steps to the partial group now
            writer.commit(outcome, ended_at=None) -> EpisodeInfo
            writer.abort()             delete the partial episode
        .partial_episodes() -> list[PartialEpisodeInfo]
        .recover_partial(episode_id, outcome=Outcome.ABORTED) -> EpisodeInfo | None
        .discard_partial(episode_id)
        .clean_partials(*, older_than_s=None) -> list[str]
        .get(episode_id) -> Episode            .info(episode_id) -> EpisodeInfo      episode_id in store
            (arrays read by `get`/`read_*` are new writable copies; EpisodeNotFoundError if deleted meanwhile)
        .read_columns(episode_id, keys) -> dict[str, np.ndarray]
        .read_steps(episode_id, key, start, stop) -> np.ndarray
        .list(task=None, source=None, since=None, until=None) -> list[EpisodeInfo]   sorted by started_at
        .delete(episode_id)    .size_bytes() -> int    .num_steps_total(task=None, source=None) -> int
        .tasks() -> list[str]  .refresh() -> list[EpisodeInfo] (the newly visible ones)   len(store)
        .quarantine(episode_id, reason) -> QuarantinedEntry   .quarantined() -> list[QuarantinedEntry]
        .num_quarantined                 entries this store object moved to quarantine/
    EpisodeInfo.stand_in_episode() -> Episode   shapes without data, for schema and policy-feature checks

Where the parts live (every name above is importable from here): this module is the store itself (index,
append, read, delete, quarantine); `sop.data.episode_store_format` the names, errors, `EpisodeInfo`, safe
paths and chunking they all share; `sop.data.episode_writer` step-by-step recording (`EpisodeWriter`);
`sop.data.partial_recovery` what a crash leaves under `.partial/`; and `sop.durable_files` the atomic
writes, fsync and syncfs.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sop.data import partial_recovery
from sop.data.episode_store_format import (
    ATTRS_KEY,
    EPISODES_DIR,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_CHUNK_TARGET_BYTES,
    LOWDIM_CHUNK_STEPS,
    MARKER_FILE,
    MAX_IMAGE_CHUNK_FRAMES,
    PARTIAL_DIR,
    PROGRESS_FILE,
    QUARANTINE_DIR,
    QUARANTINE_REASON_SUFFIX,
    STAGING_DIR,
    TRASH_DIR,
    DuplicateEpisodeError,
    EpisodeInfo,
    EpisodeNotFoundError,
    PartialInUseError,
    UnreadableEntryError,
    UnsafePathError,
    array_spec,
    child_path,
    process_token,
    token_alive,
)
from sop.data.episode_writer import EpisodeWriter, check_metadata
from sop.data.partial_recovery import PartialEpisodeInfo
from sop.data.zarr_io import ArrayReader, read_group_attributes, write_array, write_group
from sop.durable_files import fsync_path, sync_tree, write_json_atomically
from sop.episode import Episode, EpisodeError, Outcome, Source, check_episode_id, check_step_key
from sop.safe_logging import RateLimitedLog, client_str

# Re-exported: callers import every public name of the store from here (see the docstring).
__all__ = [
    "ATTRS_KEY",
    "EPISODES_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "IMAGE_CHUNK_TARGET_BYTES",
    "LOWDIM_CHUNK_STEPS",
    "MARKER_FILE",
    "MAX_IMAGE_CHUNK_FRAMES",
    "PARTIAL_DIR",
    "PROGRESS_FILE",
    "QUARANTINE_DIR",
    "QUARANTINE_REASON_SUFFIX",
    "STAGING_DIR",
    "TRASH_DIR",
    "DuplicateEpisodeError",
    "EpisodeInfo",
    "EpisodeNotFoundError",
    "EpisodeStore",
    "EpisodeWriter",
    "PartialEpisodeInfo",
    "PartialInUseError",
    "QuarantinedEntry",
    "UnreadableEntryError",
    "UnsafePathError",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinedEntry:
    """Something moved out of `episodes/` into `quarantine/`, and why."""

    name: str  # its name in quarantine/ (the original name, made safe and unique)
    original_name: str  # its name in episodes/ (the episode id, for a readable episode)
    reason: str
    quarantined_at: float
    path: Path


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def _quarantine_name(name: str) -> str:
    """A name for `name` inside quarantine/: itself when plain, else a readable, safe stand-in."""
    plain = (
        0 < len(name) <= 128
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        and not name.startswith(".")
        and not name.endswith(QUARANTINE_REASON_SUFFIX)
    )
    if plain:
        return name
    return "entry-" + uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:16]


def _read_group_attrs(group_dir: Path) -> dict[str, Any]:
    """The episode metadata straight from the group's zarr.json."""
    attrs = read_group_attributes(group_dir).get(ATTRS_KEY)
    if not isinstance(attrs, dict):
        raise ValueError(f"{group_dir}: zarr group has no {ATTRS_KEY!r} attributes")
    return attrs


# ----------------------------------------------------------------------------------------------------------
# The store


class EpisodeStore:
    """See the module docstring. Thread-safe; any number of reader processes, writers in several processes."""

    def __init__(
        self,
        root: str | Path,
        *,
        create: bool = True,
        durable: bool = True,
        compressor: str = "lz4",
        compression_level: int = 9,
        max_open_arrays: int = 512,
    ) -> None:
        self.root = Path(root)
        self.durable = durable
        if compressor not in ("lz4", "lz4hc", "zstd", "blosclz", "zlib"):
            raise ValueError(
                f"compressor: {compressor!r} is not a Blosc compressor (lz4, lz4hc, zstd, blosclz, zlib)"
            )
        if not 0 <= compression_level <= 9:
            raise ValueError(f"compression_level: {compression_level} is not in 0..9")
        self.compressor = compressor
        self.compression_level = compression_level
        self._episodes_dir = self.root / EPISODES_DIR
        self._partial_dir = self.root / PARTIAL_DIR
        self._staging_dir = self.root / STAGING_DIR
        self._trash_dir = self.root / TRASH_DIR
        self._quarantine_dir = self.root / QUARANTINE_DIR
        self._directories = (
            self._episodes_dir,
            self._partial_dir,
            self._staging_dir,
            self._trash_dir,
            self._quarantine_dir,
        )
        self._lock = threading.RLock()
        self.num_quarantined = 0
        self._throttled_log = RateLimitedLog(logger, interval_s=10.0)
        self._infos: dict[str, EpisodeInfo] = {}
        self._arrays: OrderedDict[tuple[str, str], ArrayReader] = OrderedDict()
        self._max_open_arrays = max_open_arrays
        self._writers: dict[str, EpisodeWriter] = {}
        self._open_or_create(create)
        self._remove_stale_staging()
        self.refresh()

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.root)!r}, episodes={len(self._infos)})"

    # -- setup -------------------------------------------------------------------------------------------

    def _open_or_create(self, create: bool) -> None:
        marker = self.root / MARKER_FILE
        if not marker.exists():
            if not create:
                raise FileNotFoundError(f"store root {self.root}: no {MARKER_FILE}; not an episode store")
            ours = {
                EPISODES_DIR,
                PARTIAL_DIR,
                STAGING_DIR,
                TRASH_DIR,
                QUARANTINE_DIR,
            }  # another process creating it right now
            if self.root.exists() and any(
                p.name not in ours and not p.name.startswith(f".{MARKER_FILE}.") for p in self.root.iterdir()
            ):
                raise FileExistsError(
                    f"store root {self.root}: exists, is not empty and is not an episode store"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            for directory in self._directories:
                directory.mkdir(exist_ok=True)
            write_json_atomically(marker, {"format": FORMAT, "version": FORMAT_VERSION}, durable=self.durable)
            if self.durable:
                fsync_path(self.root)
            return
        data = json.loads(marker.read_text())
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"store root {self.root}: {MARKER_FILE} says {data}, expected version {FORMAT_VERSION}"
            )
        for directory in self._directories:
            directory.mkdir(exist_ok=True)

    def _remove_stale_staging(self) -> None:
        """Drop half-written appends of dead processes and anything left in the trash."""
        for entry in self._staging_dir.iterdir():
            token = entry.name.split(".")[1] if entry.name.count(".") >= 2 else ""
            if not token_alive(token):
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self._trash_dir.iterdir():
            shutil.rmtree(entry, ignore_errors=True)

    # -- index -------------------------------------------------------------------------------------------

    def _read_entry(self, name: str) -> EpisodeInfo | None:
        """The metadata of `episodes/<name>`; None if it vanished (deleted meanwhile); `UnreadableEntryError`
        saying why if it is not an episode this store can serve."""
        try:
            check_episode_id(name)
        except EpisodeError:
            raise UnreadableEntryError(f"{client_str(name)} is not an episode id (a UUID)") from None
        group_dir = self._episodes_dir / name
        try:
            mode = os.lstat(group_dir).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise UnreadableEntryError("is a symbolic link, not an episode directory")
        if not stat.S_ISDIR(mode):
            raise UnreadableEntryError("is not a directory")
        try:
            info = EpisodeInfo.from_json(_read_group_attrs(group_dir))
        except FileNotFoundError:
            if not os.path.lexists(group_dir):
                return None
            raise UnreadableEntryError("has no zarr.json group metadata") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON, layout, fields
            raise UnreadableEntryError(f"has garbled metadata ({type(exc).__name__}: {exc})") from None
        if info.episode_id != name:
            raise UnreadableEntryError(f"metadata names episode {client_str(info.episode_id)}, not {name}")
        try:
            info.stand_in_episode().validate(
                check_values=False
            )  # every key whitelisted, shapes and metadata in the schema
        except EpisodeError as exc:
            raise UnreadableEntryError(f"metadata breaks the episode schema ({exc})") from None
        try:
            arrays = {entry.name for entry in os.scandir(group_dir) if entry.is_dir(follow_symlinks=False)}
        except FileNotFoundError:
            return None
        missing = sorted(set(info.step_shapes) - arrays)
        if missing:
            raise UnreadableEntryError(f"array {missing[0]} is missing (or not a plain directory)")
        return info

    def _load_info(self, episode_id: str) -> EpisodeInfo | None:
        """The metadata of a committed episode; None if absent, or after quarantining an unreadable one."""
        try:
            return self._read_entry(episode_id)
        except UnreadableEntryError as exc:
            self._move_to_quarantine(episode_id, str(exc))
            return None

    def refresh(self) -> list[EpisodeInfo]:
        """Re-read the directory listing; return the episodes that became visible (sorted by time).

        An entry that is not a readable episode is moved to `quarantine/` (logged, counted in
        `num_quarantined`) and the others load as usual.
        """
        on_disk = {name for name in os.listdir(self._episodes_dir) if not name.startswith(".")}
        added: list[EpisodeInfo] = []
        with self._lock:
            for gone in set(self._infos) - on_disk:
                self._forget(gone)
            for episode_id in on_disk - set(self._infos):
                info = self._load_info(episode_id)
                if info is not None:
                    self._infos[episode_id] = info
                    added.append(info)
        return sorted(added, key=lambda i: (i.started_at, i.episode_id))

    # -- quarantine --------------------------------------------------------------------------------------

    def _move_to_quarantine(self, name: str, reason: str) -> QuarantinedEntry | None:
        """Move `episodes/<name>` to `quarantine/` with a reason file; None if it was gone already.

        The reason file is written first and the entry moved by one rename, so a crash never loses the
        entry; a reason file without its entry (crash, or another process won the race) is ignored.
        """
        source = self._episodes_dir / name
        target_name = _quarantine_name(name)
        while os.path.lexists(self._quarantine_dir / target_name) or os.path.lexists(
            self._quarantine_dir / (target_name + QUARANTINE_REASON_SUFFIX)
        ):
            target_name = f"{_quarantine_name(name)}.{uuid.uuid4().hex[:8]}"
        target = self._quarantine_dir / target_name
        reason_file = self._quarantine_dir / (target_name + QUARANTINE_REASON_SUFFIX)
        now = time.time()
        self._quarantine_dir.mkdir(exist_ok=True)
        write_json_atomically(
            reason_file, {"name": name, "reason": reason, "time": now}, durable=self.durable
        )
        try:
            os.rename(source, target)
        except OSError as exc:
            reason_file.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):  # deleted or quarantined by someone else meanwhile
                with self._lock:
                    self._forget(name)
                return None
            raise
        with self._lock:
            self._forget(name)
            self.num_quarantined += 1
        if self.durable:
            fsync_path(self._episodes_dir)
            fsync_path(self._quarantine_dir)
        self._throttled_log.warning(
            "quarantine",
            "episode store %s: moved %s to quarantine/%s: %s",
            self.root,
            client_str(name),
            target_name,
            client_str(reason, 400),
        )
        return QuarantinedEntry(target_name, name, reason, now, target)

    def quarantine(self, episode_id: str, reason: str) -> QuarantinedEntry:
        """Move a committed episode out of `episodes/` into `quarantine/` with `reason`; it is no longer
        listed, sampled or readable here, and stays on disk for a person to inspect or delete.

        The learner calls this for an episode its policy cannot train on (a state of the wrong size, a task
        it does not know) instead of stopping. `EpisodeNotFoundError` if the episode is not in the store.
        """
        check_episode_id(episode_id)
        if not os.path.lexists(self._episodes_dir / episode_id):
            with self._lock:
                self._forget(episode_id)
            raise EpisodeNotFoundError(episode_id)
        entry = self._move_to_quarantine(episode_id, reason)
        if entry is None:
            raise EpisodeNotFoundError(episode_id)
        return entry

    def quarantined(self) -> builtins.list[QuarantinedEntry]:
        """Everything in `quarantine/` (moved there by any process), oldest first."""
        entries = []
        for path in self._quarantine_dir.iterdir():
            if path.name.endswith(QUARANTINE_REASON_SUFFIX) or path.name.startswith("."):
                continue
            reason_file = self._quarantine_dir / (path.name + QUARANTINE_REASON_SUFFIX)
            try:
                data = json.loads(reason_file.read_text())
                reason, original, when = str(data["reason"]), str(data["name"]), float(data["time"])
            except (OSError, ValueError, KeyError, TypeError):
                reason, original, when = "unknown (no readable reason file)", path.name, path.lstat().st_mtime
            entries.append(QuarantinedEntry(path.name, original, reason, when, path))
        return sorted(entries, key=lambda e: (e.quarantined_at, e.name))

    def _forget(self, episode_id: str) -> None:
        self._infos.pop(episode_id, None)
        for cache_key in [k for k in self._arrays if k[0] == episode_id]:
            del self._arrays[cache_key]

    def __contains__(self, episode_id: object) -> bool:
        try:
            check_episode_id(episode_id)
        except EpisodeError:
            return False
        assert isinstance(episode_id, str)
        present = (self._episodes_dir / episode_id).is_dir()
        with self._lock:
            if not present:
                self._forget(episode_id)
            elif episode_id not in self._infos:
                info = self._load_info(episode_id)
                if info is None:  # vanished, or unreadable and quarantined just now
                    return False
                self._infos[episode_id] = info
        return present

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, episode_id: str) -> EpisodeInfo:
        with self._lock:
            info = self._infos.get(episode_id)
        if info is not None:
            return info
        if episode_id in self:
            return self._infos[episode_id]
        raise EpisodeNotFoundError(episode_id)

    def list(
        self,
        task: str | None = None,
        source: Source | str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[EpisodeInfo]:
        """Committed episodes (as of the last refresh) filtered by task, source and `since <= started_at < until`."""
        with self._lock:
            infos = list(self._infos.values())
        selected = [
            i
            for i in infos
            if (task is None or i.task == task)
            and (source is None or i.source == source)
            and (since is None or i.started_at >= since)
            and (until is None or i.started_at < until)
        ]
        return sorted(selected, key=lambda i: (i.started_at, i.episode_id))

    def tasks(self) -> builtins.list[str]:
        with self._lock:
            return sorted({i.task for i in self._infos.values()})

    def num_steps_total(self, task: str | None = None, source: Source | str | None = None) -> int:
        return sum(i.num_steps for i in self.list(task=task, source=source))

    def size_bytes(self) -> int:
        """Bytes on disk: committed episodes (from their metadata) plus partial and staged ones."""
        with self._lock:
            committed = sum(i.stored_bytes for i in self._infos.values())
        return committed + _tree_bytes(self._partial_dir) + _tree_bytes(self._staging_dir)

    # -- reading -----------------------------------------------------------------------------------------

    def _array(self, episode_id: str, key: str) -> ArrayReader:
        cache_key = (episode_id, key)
        with self._lock:
            array = self._arrays.get(cache_key)
            if array is not None:
                self._arrays.move_to_end(cache_key)
                return array
        info = self.info(episode_id)
        if key not in info.step_shapes:
            raise KeyError(f"{key}: episode {episode_id} has no such key (it has {sorted(info.step_shapes)})")
        array_dir = child_path(child_path(self._episodes_dir, episode_id), check_step_key(key))
        try:
            array = ArrayReader(array_dir, strict=True)
        except FileNotFoundError:
            raise EpisodeNotFoundError(episode_id) from None
        with self._lock:
            self._arrays[cache_key] = array
            while len(self._arrays) > self._max_open_arrays:
                self._arrays.popitem(last=False)
        return array

    def _deleted_under_us(self, episode_id: str) -> EpisodeNotFoundError:
        """A chunk vanished mid-read: the episode was deleted (readers never see a partial episode)."""
        with self._lock:
            self._forget(episode_id)
        return EpisodeNotFoundError(episode_id)

    def read_steps(self, episode_id: str, key: str, start: int, stop: int) -> np.ndarray:
        """Steps `start:stop` of one key, reading only the chunks that hold them."""
        array = self._array(episode_id, key)
        if not 0 <= start <= stop <= array.length:
            raise IndexError(f"steps {start}:{stop} are outside 0:{array.length} of episode {episode_id}")
        try:
            return array.read(start, stop)
        except FileNotFoundError:
            raise self._deleted_under_us(episode_id) from None

    def read_columns(self, episode_id: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Whole arrays of the given keys (e.g. the low-dimensional ones a sampler caches)."""
        try:
            return {key: self._array(episode_id, key).read_all() for key in keys}
        except FileNotFoundError:
            raise self._deleted_under_us(episode_id) from None

    def get(self, episode_id: str) -> Episode:
        """The whole episode, every array read into memory."""
        info = self.info(episode_id)
        return info.with_steps(self.read_columns(episode_id, info.step_shapes))

    # -- writing -----------------------------------------------------------------------------------------

    def _check_new_id(self, episode_id: str) -> None:
        check_episode_id(episode_id)
        child_path(self._episodes_dir, episode_id)
        if episode_id in self:
            raise DuplicateEpisodeError(episode_id)

    def _publish(self, group_dir: Path, episode_id: str) -> None:
        """Make a fully written group visible: fsync it, rename it into episodes/, fsync both parents."""
        if self.durable:
            sync_tree(group_dir)
        target = self._episodes_dir / episode_id
        try:
            os.rename(group_dir, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise DuplicateEpisodeError(episode_id) from None
            raise
        # The progress file of a step-by-step recording stays until the rename, so a crash at any point
        # before it leaves a recoverable partial; after it, it is dead weight.
        with contextlib.suppress(FileNotFoundError):
            (target / PROGRESS_FILE).unlink()
        if self.durable:
            fsync_path(self._episodes_dir)
            fsync_path(group_dir.parent)

    def append(self, episode: Episode) -> EpisodeInfo:
        """Validate and commit a whole episode. `DuplicateEpisodeError` (store unchanged) on a repeated id."""
        episode.validate()
        self._check_new_id(episode.episode_id)
        for key in episode.steps:  # again here: a caller may have skipped or replaced validate()
            check_step_key(key)
        staging = child_path(
            self._staging_dir, f"{episode.episode_id}.{process_token()}.{uuid.uuid4().hex[:8]}"
        )
        try:
            staging.mkdir()
            stored = 0
            for key, values in episode.steps.items():
                stored += write_array(
                    child_path(staging, key),
                    values,
                    array_spec(key, values.shape, values.dtype, self.compressor, self.compression_level),
                )
            info = EpisodeInfo.describe(episode, stored_bytes=stored)
            info = self._finish_group(staging, info, measured=True)
            self._publish(staging, episode.episode_id)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            self._infos[info.episode_id] = info
        return info

    def _finish_group(self, group_dir: Path, info: EpisodeInfo, *, measured: bool = False) -> EpisodeInfo:
        """Write the final metadata into the group attributes (with the stored size, measured if need be)."""
        metadata_allowance = 4096  # the group's zarr.json, written below
        stored = (info.stored_bytes if measured else _tree_bytes(group_dir)) + metadata_allowance
        info = dataclasses.replace(info, stored_bytes=stored, committed_at=time.time())
        write_group(group_dir, {ATTRS_KEY: info.to_json()})
        return info

    def delete(self, episode_id: str) -> None:
        """Remove a committed episode (the robot does this once the learner has receipted it)."""
        source = self._episodes_dir / episode_id
        if episode_id not in self:
            raise EpisodeNotFoundError(episode_id)
        trash = self._trash_dir / f"{episode_id}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(source, trash)
        except FileNotFoundError:
            raise EpisodeNotFoundError(episode_id) from None
        with self._lock:
            self._forget(episode_id)
        if self.durable:
            fsync_path(self._episodes_dir)
        shutil.rmtree(trash, ignore_errors=True)

    # -- recording step by step (the robot's spool) ------------------------------------------------------

    def begin_episode(
        self,
        episode_id: str,
        robot_id: str,
        task: str,
        instruction: str,
        *,
        source: Source = Source.ONLINE,
        fps: float = 30.0,
        started_at: float | None = None,
        extra: Mapping[str, str] | None = None,
        flush_every: int = 30,
    ) -> EpisodeWriter:
        """Start recording an episode step by step under `.partial/`; a crash loses at most `flush_every` steps."""
        self._check_new_id(episode_id)
        if flush_every < 1:
            raise ValueError(f"flush_every: {flush_every} must be at least 1")
        meta = {
            "episode_id": episode_id,
            "robot_id": robot_id,
            "task": task,
            "instruction": instruction,
            "source": str(Source(source)),
            "fps": float(fps),
            "started_at": float(time.time() if started_at is None else started_at),
            "extra": dict(extra or {}),
        }
        check_metadata(meta)  # refuse bad metadata now, not after a whole episode was recorded
        partial = child_path(self._partial_dir, episode_id)
        with self._lock:
            try:
                partial.mkdir()
            except FileExistsError:
                raise PartialInUseError(
                    f"episode_id: {episode_id} already has a partial recording; recover or discard it first"
                ) from None
            writer = EpisodeWriter(
                self,
                partial,
                meta,
                flush_every,
            )
            self._writers[episode_id] = writer
        return writer

    def _remove_partial(self, partial: Path) -> None:
        """Throw a partial recording away (a writer's abort, and `sop.data.partial_recovery`)."""
        trash = self._trash_dir / f"{partial.name}.{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(partial, trash)
        shutil.rmtree(trash, ignore_errors=True)
        if self.durable:
            fsync_path(self._partial_dir)

    # -- partial episodes (sop.data.partial_recovery) ----------------------------------------------------

    def partial_episodes(self) -> builtins.list[PartialEpisodeInfo]:
        """Episodes under `.partial/`: recordings in progress and those a crash left behind."""
        return partial_recovery.partial_episodes(self)

    def recover_partial(self, episode_id: str, outcome: Outcome = Outcome.ABORTED) -> EpisodeInfo | None:
        """Commit what a crashed writer flushed, labelled `outcome`; None (and the partial removed) if nothing."""
        return partial_recovery.recover_partial(self, episode_id, outcome)

    def discard_partial(self, episode_id: str) -> None:
        """Delete a partial episode left by a crash (refused while its writer is alive)."""
        partial_recovery.discard_partial(self, episode_id)

    def clean_partials(self, *, older_than_s: float | None = None) -> builtins.list[str]:
        """Discard every abandoned partial episode (optionally only those untouched for `older_than_s`)."""
        return partial_recovery.clean_partials(self, older_than_s=older_than_s)
