"""Episode ingest: chunks in, one validated episode committed exactly once, a receipt out after the commit.

Path of an upload:

1. Admission. A token of role operator uploads nothing (PERMISSION_DENIED). At most
   `ingest.max_pending_uploads` uploads are in progress at once (the bounded ingest queue), and their
   announced sizes (`total_bytes`) may add up to at most `ingest.max_pending_bytes`; one more is answered
   RESOURCE_EXHAUSTED after its first chunk, before the rest is read, and the robot backs off. An upload
   holds about three copies of its bytes at its peak (chunks, the assembled payload, the parsed record), so
   memory stays near 3 x max_pending_bytes.
2. Chunks are checked one by one by `sop.data.upload_chunks.ChunkSet` (size caps, at least
   `ingest.min_chunk_bytes` except the last, seq range, agreement with earlier chunks, sha256 form). A chunk
   that is malformed on its own is INVALID_ARGUMENT; one that contradicts chunks received earlier is
   FAILED_PRECONDITION and the stale pieces are dropped so the robot can start the episode over.
3. Per-robot limits, checked as chunks arrive. A robot holds at most `ingest.max_staged_bytes_per_robot`
   bytes in unfinished uploads (staged on disk plus received by its running streams; over it, its staged
   uploads that no stream is using are dropped first, oldest first, so a robot can always finish the
   upload it is on, and only streams that together pass the quota are cut); one upload stream
   runs at most `ingest.max_upload_s` and, after `ingest.upload_rate_grace_s`, brings at least
   `ingest.min_upload_bytes_per_s` on average. Beyond one of them the stream is cut with RESOURCE_EXHAUSTED
   naming the key; what it brought is staged, so the robot resumes after its back-off. (A stream that
   sends nothing at all is cut by the service's idle watchdog, `server.stream_idle_timeout_s`.)
4. Complete: the payload is assembled and its sha256 verified. A mismatch there means that a chunk changed
   after it was accepted (a staged chunk that came back zero-filled after a power loss, a robot whose
   encoding changed between attempts): FAILED_PRECONDITION, the staged chunks are dropped, and the robot
   (which retries FAILED_PRECONDITION a few times) re-sends from chunk 0 instead of quarantining a good
   episode. The payload is then decoded and validated by `sop.data.codec` (INVALID_ARGUMENT naming the
   field); then the token's role must fit the episode's source (PERMISSION_DENIED naming the role: online
   episodes need role robot and must carry the robot's own id, offline demonstrations need role
   demonstrator); then the episode must fit the served policy (`sop.policy_features`: INVALID_ARGUMENT
   naming the key, the expected and the received shape), since one misfit in the replay stops the trainer.
5. Commit: a few writer threads (`ingest.commit_workers`, so one episode's fsync does not hold up the
   next) append to the replay store (fsynced when `ingest.durable`), skipping an episode id already there;
   the store's atomic rename refuses a second commit of one id even when two writers race. Only then does
   the handler answer `committed = true`.

Every refusal after decode drops the upload's staged chunks: re-sending the same episode cannot succeed.

The task set. Every task gets an equal share of each training batch, so a robot that could make up task
names could buy itself any share of the training. The learner's task set is, in this order: the served
policy's `tasks` (a policy with a task embedding knows no others); else `replay.tasks`; else, for an
instruction-conditioned policy, the tasks of the offline demonstrations in the replay when ingest starts
(a task nobody demonstrated has no offline data to mix with anyway). An episode of another task is
INVALID_ARGUMENT. Only when all three are empty (no task-embedding policy, no `replay.tasks`, no
demonstrations) is any task accepted, and ingest says so in a warning at start.

Staging (resume after a cut). Chunks of a stream are held in memory while it runs. When a stream ends or
breaks before its episode is complete, the chunks it brought are written to `run_dir/staging/<episode id>/`
(one file per chunk, written then renamed, no fsync: a file survives a kill -9 of the learner, and a power
loss that garbles one is caught by the whole-episode sha256). `QueryUpload` answers from there, so the
robot re-sends only the missing chunks, also after a learner restart. Chunks of a stream that was running
when the learner was killed -9 are not staged; the robot sees them missing and sends them again. A
background thread removes, every `ingest.staging_prune_interval_s`, staged uploads that were committed
meanwhile or that nobody touched for `ingest.staging_abandoned_after_s` (a learner down for longer than
that loses them too; robots then re-send those episodes whole). Disk I/O in staging happens under a lock
of its episode only, never under one shared by all uploads. Nothing committed is ever lost: the receipt
is sent only after the store's durable commit.

Every client string that reaches a log line or an error message goes through `sop.safe_logging.client_str`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import grpc

from cloud_learner.config import IngestConfig
from sop.credentials import Role
from sop.data.codec import CodecError, decode_episode
from sop.data.episode_store import DuplicateEpisodeError
from sop.data.upload_chunks import ChunkSet
from sop.durable_files import write_atomically, write_json_atomically
from sop.episode import Episode, EpisodeError, Source, check_episode_id
from sop.policy_features import FeatureMismatchError, PolicyFeatures
from sop.safe_logging import RateLimitedLog, client_str
from sop.v1 import fleet_pb2

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)

META_NAME = "upload.json"
# What each role may upload (an operator token uploads nothing).
ROLE_FOR_SOURCE: Mapping[Source, Role] = {Source.ONLINE: Role.ROBOT, Source.OFFLINE: Role.DEMONSTRATOR}


class IngestError(Exception):
    """An upload refused with a gRPC status code and a message that names the problem."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _UploadCut(IngestError):
    """A per-robot limit cut the stream: what it brought is staged, then RESOURCE_EXHAUSTED."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class ReplayStoreWriter(Protocol):
    """The part of `sop.data.episode_store.EpisodeStore` ingest uses."""

    def __contains__(self, episode_id: object) -> bool: ...

    def append(self, episode: Episode) -> Any: ...

    def list(self, task: str | None = None, source: Source | str | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class CommitResult:
    episode_id: str
    num_steps: int
    duplicate: bool


def canonical_episode_id(episode_id: str) -> str:
    """Episode ids are UUIDs; the canonical form is also what names its staging directory, so a hostile
    id can never point outside it."""
    try:
        return check_episode_id(episode_id)
    except EpisodeError as exc:
        raise IngestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


@dataclass
class _Staged:
    """What one staging directory holds, mirrored in memory for the per-robot quota."""

    robot_id: str | None  # None: no readable metadata (a save cut short); pruned as abandoned
    chunk_bytes: dict[int, int] = field(default_factory=dict)
    updated_at: float = 0.0  # wall-clock time of the last save

    @property
    def total(self) -> int:
        return sum(self.chunk_bytes.values())


class UploadStaging:
    """Chunks of unfinished uploads on disk, one directory per episode id.

    Disk I/O runs under a lock of its episode only (`_episode_lock`); the one lock all uploads share guards
    in-memory bookkeeping alone (which episodes are locked, how many bytes each robot has staged).
    """

    def __init__(
        self, root: str | Path, max_chunk_bytes: int, max_episode_bytes: int, *, min_chunk_bytes: int = 1
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_chunk_bytes = max_chunk_bytes
        self.max_episode_bytes = max_episode_bytes
        self.min_chunk_bytes = min_chunk_bytes
        self._lock = threading.Lock()  # memory only, never held across disk I/O
        self._episode_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._staged: dict[str, _Staged] = {}
        self._robot_bytes: dict[str, int] = {}
        for entry in self.root.iterdir():
            if entry.is_dir():
                self._remember(entry.name, self._read_sizes(entry))

    def _dir(self, episode_id: str) -> Path:
        return self.root / episode_id

    @contextlib.contextmanager
    def _episode_lock(self, episode_id: str) -> Iterator[None]:
        """Exclusive access to one episode's directory; other episodes' I/O goes on meanwhile."""
        with self._lock:
            lock, users = self._episode_locks.get(episode_id, (threading.Lock(), 0))
            self._episode_locks[episode_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._episode_locks[episode_id]
                if users == 1:
                    del self._episode_locks[episode_id]
                else:
                    self._episode_locks[episode_id] = (lock, users - 1)

    @staticmethod
    def _read_sizes(directory: Path) -> _Staged:
        try:
            robot_id = json.loads((directory / META_NAME).read_text()).get("robot_id")
        except (OSError, ValueError, AttributeError):
            robot_id = None
        staged = _Staged(robot_id if isinstance(robot_id, str) else None)
        with contextlib.suppress(OSError):
            staged.updated_at = (directory / META_NAME).stat().st_mtime
        for path in directory.glob("*.chunk"):
            with contextlib.suppress(OSError, ValueError):
                staged.chunk_bytes[int(path.stem)] = path.stat().st_size
        return staged

    def _remember(self, episode_id: str, staged: _Staged | None) -> None:
        """Set (or with None, forget) the bookkeeping of one episode's directory."""
        with self._lock:
            old = self._staged.pop(episode_id, None)
            if old is not None and old.robot_id is not None:
                left = self._robot_bytes.get(old.robot_id, 0) - old.total
                if left > 0:
                    self._robot_bytes[old.robot_id] = left
                else:
                    self._robot_bytes.pop(old.robot_id, None)
            if staged is not None:
                self._staged[episode_id] = staged
                if staged.robot_id is not None:
                    self._robot_bytes[staged.robot_id] = (
                        self._robot_bytes.get(staged.robot_id, 0) + staged.total
                    )

    def robot_bytes(self, robot_id: str) -> int:
        """Bytes of chunks `robot_id` has staged, over all its unfinished uploads."""
        with self._lock:
            return self._robot_bytes.get(robot_id, 0)

    def robot_uploads(self, robot_id: str) -> list[tuple[str, int]]:
        """(episode id, staged bytes) of `robot_id`'s staged uploads, least recently saved first."""
        with self._lock:
            mine = [(s.updated_at, e, s.total) for e, s in self._staged.items() if s.robot_id == robot_id]
        return [(episode_id, size) for _, episode_id, size in sorted(mine)]

    def new_chunk_set(self, episode_id: str) -> ChunkSet:
        return ChunkSet(
            episode_id,
            max_chunk_bytes=self.max_chunk_bytes,
            max_total_bytes=self.max_episode_bytes,
            min_chunk_bytes=self.min_chunk_bytes,
        )

    def load(self, episode_id: str, robot_id: str) -> ChunkSet | None:
        """The staged chunks of `episode_id` uploaded by `robot_id`, re-validated; None when there are none.

        A staging directory that is unreadable or inconsistent is removed: the robot re-sends those chunks.
        """
        directory = self._dir(episode_id)
        meta_path = directory / META_NAME
        with self._episode_lock(episode_id):
            if not meta_path.is_file():
                return None
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("robot_id") != robot_id:
                    return None
                chunks = self.new_chunk_set(episode_id)
                for path in sorted(directory.glob("*.chunk")):
                    chunks.add(
                        fleet_pb2.EpisodeChunk(
                            episode_id=episode_id,
                            seq=int(path.stem),
                            total_chunks=int(meta["total_chunks"]),
                            total_bytes=int(meta["total_bytes"]),
                            payload=path.read_bytes(),
                            sha256=str(meta.get("sha256") or ""),
                        )
                    )
                return chunks
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                throttled.warning(
                    "unusable-staging", "dropping unusable staged upload %s: %s", episode_id, exc
                )
                shutil.rmtree(directory, ignore_errors=True)
                self._remember(episode_id, None)
                return None

    def owner(self, episode_id: str) -> str | None:
        with self._lock:
            staged = self._staged.get(episode_id)
        return None if staged is None else staged.robot_id

    def save(self, chunks: ChunkSet, payloads: Mapping[int, bytes], robot_id: str) -> None:
        """Persist `payloads` (seq -> bytes, chunks of `chunks` not staged yet) and the upload's metadata."""
        if not payloads or chunks.episode_id is None:
            return
        episode_id = chunks.episode_id
        directory = self._dir(episode_id)
        with self._episode_lock(episode_id):
            with self._lock:
                before = self._staged.get(episode_id)
            staged = _Staged(
                robot_id, dict(before.chunk_bytes) if before is not None else {}, updated_at=time.time()
            )
            directory.mkdir(parents=True, exist_ok=True)
            try:
                for seq, payload in payloads.items():
                    # Renamed into place, not fsynced (see "Staging" above); owner-only as always.
                    write_atomically(directory / f"{seq:06d}.chunk", payload, durable=False, private=True)
                    staged.chunk_bytes[seq] = len(payload)
                meta = {
                    "robot_id": robot_id,
                    "total_chunks": chunks.total_chunks,
                    "total_bytes": chunks.total_bytes,
                    "sha256": chunks.sha256,
                    "updated_at": time.time(),
                }
                write_json_atomically(directory / META_NAME, meta, durable=False, private=True)
            finally:
                self._remember(episode_id, staged)

    def discard(self, episode_id: str) -> None:
        with self._episode_lock(episode_id):
            shutil.rmtree(self._dir(episode_id), ignore_errors=True)
            self._remember(episode_id, None)

    def episode_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def prune(
        self,
        max_age_s: float,
        committed: Callable[[str], bool],
        in_use: Callable[[str], bool] = lambda _episode_id: False,
    ) -> int:
        """Remove staged uploads that were committed meanwhile or untouched for `max_age_s`, except those a
        running stream is using. Returns how many were removed."""
        removed = 0
        for entry in list(self.root.iterdir()):
            if not entry.is_dir() or in_use(entry.name):
                continue
            with self._episode_lock(entry.name):
                try:
                    age = time.time() - (entry / META_NAME).stat().st_mtime
                except OSError:
                    age = float("inf")
                if age > max_age_s or committed(entry.name):
                    shutil.rmtree(entry, ignore_errors=True)
                    self._remember(entry.name, None)
                    removed += 1
        return removed


@dataclass
class IngestCounters:
    """What ingest did, and where its time went (seconds summed over uploads), for logs and benchmarks."""

    committed: int = 0
    duplicates: int = 0
    refused: int = 0
    shed: int = 0
    partial: int = 0
    cut: int = 0  # streams cut by a per-robot limit (quota, lifetime, rate); their chunks were staged
    pruned: int = 0  # staged uploads removed as committed or abandoned
    prune_passes: int = 0
    bytes_committed: int = 0
    seconds_verifying: float = 0.0  # assembling the chunks and checking the sha256
    seconds_decoding: float = 0.0  # parsing and validating the episode
    seconds_committing: float = 0.0  # the store's durable append
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass
class _Stream:
    """One running upload stream, for the per-robot limits."""

    robot_id: str
    episode_id: str
    started: float
    bytes_received: int = 0  # payload bytes this stream brought, resends included (the rate)
    bytes_reserved: int = 0  # new bytes counted against the robot's staged quota


def offline_tasks(store: ReplayStoreWriter) -> tuple[str, ...]:
    """Tasks of the offline demonstrations in `store`."""
    return tuple(sorted({str(info.task) for info in store.list(source=Source.OFFLINE)}))


class Ingest:
    """Receives uploads, validates them, and commits each episode once through the writer threads.

    `features`: the served policy's (`set_features` replaces them while serving; None: no policy known
    yet, only the task set is checked). `replay_tasks`: the learner's `replay.tasks`. `clock`: monotonic
    seconds, for the upload lifetime and rate limits.
    """

    def __init__(
        self,
        config: IngestConfig,
        store: ReplayStoreWriter,
        staging: UploadStaging,
        on_commit: Callable[[Episode], None] | None = None,
        *,
        features: PolicyFeatures | None = None,
        replay_tasks: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.staging = staging
        self.on_commit = on_commit
        self.clock = clock
        self.counters = IngestCounters()
        self._slots = threading.BoundedSemaphore(config.max_pending_uploads)
        self._uploads_in_progress = 0
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self._reserved_by_robot: dict[str, int] = {}
        self._streams_by_episode: dict[str, int] = {}
        self._features_lock = threading.Lock()
        self._fallback_tasks = tuple(replay_tasks) or offline_tasks(store)
        self._features: PolicyFeatures | None = None  # set_features below; None: nothing warned yet
        self.set_features(features)
        self._commits: queue.Queue[tuple[Episode, concurrent.futures.Future[CommitResult]] | None] = (
            queue.Queue()
        )
        self._writers = [
            threading.Thread(target=self._write_loop, name=f"ingest-writer-{i}", daemon=True)
            for i in range(config.commit_workers)
        ]
        for writer in self._writers:
            writer.start()
        removed = self.prune_staging()
        if removed:
            logger.info("removed %d staged uploads that were committed or abandoned", removed)
        self._stopping = threading.Event()
        self._pruner = threading.Thread(target=self._prune_loop, name="ingest-staging-pruner", daemon=True)
        self._pruner.start()

    # The served policy.
    def set_features(self, features: PolicyFeatures | None) -> None:
        """Check episodes against `features` from now on (the service calls this at start and whenever a
        published checkpoint changes them); their tasks, when empty, become the learner's task set."""
        base = features if features is not None else PolicyFeatures(state_dim=None, action_dim=None)
        effective = base.with_tasks(self._fallback_tasks)
        with self._features_lock:
            warned_before = self._features is not None and not self._features.tasks
            self._features = effective
        if not effective.tasks and not warned_before:
            logger.warning(
                "any task name is accepted: the policy has no task list, replay.tasks is empty and the replay "
                "holds no offline demonstrations; set replay.tasks so that robots cannot add tasks"
            )

    @property
    def features(self) -> PolicyFeatures:
        """What an episode must fit now (the served policy's features with the learner's task set)."""
        with self._features_lock:
            assert self._features is not None  # set in __init__
            return self._features

    # Staging upkeep.
    def prune_staging(self) -> int:
        """One pass of the staging pruner (see the module docstring); returns how many were removed."""
        removed = self.staging.prune(
            self.config.staging_abandoned_after_s,
            committed=lambda episode_id: episode_id in self.store,
            in_use=self._in_use,
        )
        self.counters.add(pruned=removed, prune_passes=1)
        return removed

    def _prune_loop(self) -> None:
        while not self._stopping.wait(self.config.staging_prune_interval_s):
            try:
                removed = self.prune_staging()
            except OSError as exc:  # a full or failing disk must not end the pruning for good
                throttled.warning("prune-failed", "pruning staged uploads failed: %s", exc)
                continue
            if removed:
                logger.info("removed %d staged uploads that were committed or abandoned", removed)

    def _in_use(self, episode_id: str) -> bool:
        with self._bytes_lock:
            return episode_id in self._streams_by_episode

    # The writers: the only threads that append to the store.
    def _write_loop(self) -> None:
        while True:
            item = self._commits.get()
            if item is None:
                return
            episode, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._commit(episode))
            except Exception as exc:  # the handler reports it to the robot as INTERNAL
                logger.exception("commit of episode %s failed", episode.episode_id)
                future.set_exception(exc)

    def _commit(self, episode: Episode) -> CommitResult:
        episode_id = episode.episode_id
        if episode_id in self.store:
            return CommitResult(episode_id, episode.num_steps, duplicate=True)
        started = time.perf_counter()
        try:
            self.store.append(episode)
            self.counters.add(seconds_committing=time.perf_counter() - started)
        except DuplicateEpisodeError:
            # Committed meanwhile by another writer or process (the store's rename into place is atomic).
            return CommitResult(episode_id, episode.num_steps, duplicate=True)
        self.staging.discard(episode_id)
        if self.on_commit is not None:
            try:
                self.on_commit(episode)
            except Exception:
                logger.exception("on_commit callback failed for episode %s", episode_id)
        return CommitResult(episode_id, episode.num_steps, duplicate=False)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the staging pruner and the writers (after the commits already queued), waiting at most
        `timeout_s` in all; a writer still committing then finishes on its own (a daemon thread: what it
        has not renamed into the store is not there, as after a kill -9, and its robot re-sends it)."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._pruner.join(timeout=max(0.0, deadline - time.monotonic()))
        for _ in self._writers:
            self._commits.put(None)
        for writer in self._writers:
            writer.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(writer.is_alive() for writer in self._writers):
            logger.warning("ingest writers still committing after %.0f s; stopping without them", timeout_s)
        self._writers = []

    # Queries.
    def query(self, robot_id: str, episode_id: str) -> fleet_pb2.QueryUploadResponse:
        episode_id = canonical_episode_id(episode_id)
        if episode_id in self.store:
            return fleet_pb2.QueryUploadResponse(episode_id=episode_id, committed=True)
        staged = self.staging.load(episode_id, robot_id)
        if staged is None:
            return fleet_pb2.QueryUploadResponse(episode_id=episode_id, committed=False)
        return fleet_pb2.QueryUploadResponse(
            episode_id=episode_id,
            committed=False,
            received_seqs=staged.received_seqs(),
            total_chunks=staged.total_chunks or 0,
        )

    def staged_bytes(self, robot_id: str) -> int:
        """Bytes counted against `robot_id`'s `ingest.max_staged_bytes_per_robot` now."""
        with self._bytes_lock:
            return self.staging.robot_bytes(robot_id) + self._reserved_by_robot.get(robot_id, 0)

    # Uploads.
    def receive(
        self,
        robot_id: str,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
        on_received: Callable[[], None] | None = None,
        *,
        role: Role = Role.ROBOT,
    ) -> fleet_pb2.UploadReceipt:
        """Consume one UploadEpisode stream of the caller `robot_id` whose token has `role`. Raises
        `IngestError` for a refused upload.

        `on_received` is called once every chunk is in, before the (possibly slow) decode and commit.
        """
        if role not in ROLE_FOR_SOURCE.values():
            self.counters.add(refused=1)
            raise IngestError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a token of role {role.value!r} may not upload episodes: online episodes need role "
                f"{Role.ROBOT.value!r}, offline demonstrations role {Role.DEMONSTRATOR.value!r}",
            )
        if not self._slots.acquire(blocking=False):
            self.counters.add(shed=1)
            raise IngestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the learner is ingesting {self.config.max_pending_uploads} uploads already "
                "(ingest.max_pending_uploads); back off and retry",
            )
        with self._bytes_lock:
            self._uploads_in_progress += 1
        try:
            return self._receive(robot_id, role, chunks, on_received)
        except IngestError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.counters.add(refused=1)
            raise
        finally:
            with self._bytes_lock:
                self._uploads_in_progress -= 1
            self._slots.release()

    @property
    def uploads_in_progress(self) -> int:
        """Upload streams admitted and not yet finished (at most `ingest.max_pending_uploads`)."""
        with self._bytes_lock:
            return self._uploads_in_progress

    @property
    def pending_bytes(self) -> int:
        """Announced sizes of the uploads in progress: within `ingest.max_pending_bytes`, or one upload's."""
        with self._bytes_lock:
            return self._pending_bytes

    def _receive(
        self,
        robot_id: str,
        role: Role,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
        on_received: Callable[[], None] | None,
    ) -> fleet_pb2.UploadReceipt:
        first = next(chunks, None)
        if first is None:
            raise IngestError(grpc.StatusCode.INVALID_ARGUMENT, "upload stream carried no chunk")
        episode_id = canonical_episode_id(first.episode_id)
        if episode_id in self.store:
            self.counters.add(duplicates=1)
            return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=True, duplicate=True)
        owner = self.staging.owner(episode_id)
        if owner is not None and owner != robot_id:
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"episode_id: {episode_id} is being uploaded by another robot",
            )
        announced = int(first.total_bytes)
        if 0 < announced <= self.config.max_episode_bytes:  # larger ones are refused by the chunk checks
            self._reserve_bytes(announced)
        else:
            announced = 0
        try:
            return self._receive_episode(robot_id, role, episode_id, first, chunks, on_received)
        finally:
            with self._bytes_lock:
                self._pending_bytes -= announced

    def _reserve_bytes(self, size: int) -> None:
        with self._bytes_lock:
            if self._pending_bytes and self._pending_bytes + size > self.config.max_pending_bytes:
                self.counters.add(shed=1)
                raise IngestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the learner holds {self._pending_bytes} bytes of uploads in progress; this one "
                    f"({size} bytes) would pass ingest.max_pending_bytes; back off and retry",
                )
            self._pending_bytes += size

    def _receive_episode(
        self,
        robot_id: str,
        role: Role,
        episode_id: str,
        first: fleet_pb2.EpisodeChunk,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
        on_received: Callable[[], None] | None,
    ) -> fleet_pb2.UploadReceipt:
        with self._bytes_lock:
            self._streams_by_episode[episode_id] = self._streams_by_episode.get(episode_id, 0) + 1
        try:
            received = self.staging.load(episode_id, robot_id) or self.staging.new_chunk_set(episode_id)
            stream = _Stream(robot_id, episode_id, started=self.clock())
            complete = self._receive_chunks(stream, received, first, chunks)
        finally:
            self._end_stream(episode_id)
        if not complete:
            self.counters.add(partial=1)
            return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=False)
        if on_received is not None:
            on_received()
        episode = self._decode(received, robot_id, role)
        result = self._submit(episode)
        if result.duplicate:
            self.counters.add(duplicates=1)
        else:
            self.counters.add(committed=1, bytes_committed=received.total_bytes or 0)
        return fleet_pb2.UploadReceipt(
            episode_id=episode_id, committed=True, duplicate=result.duplicate, num_steps=result.num_steps
        )

    def _receive_chunks(
        self,
        stream: _Stream,
        received: ChunkSet,
        first: fleet_pb2.EpisodeChunk,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
    ) -> bool:
        """Take chunks until the episode is complete (True) or the stream ends (False, chunks staged)."""
        new_payloads: dict[int, bytes] = {}
        try:
            chunk: fleet_pb2.EpisodeChunk | None = first
            while chunk is not None:
                self._add_chunk(stream, received, chunk, new_payloads)
                if received.complete:
                    return True
                self._check_stream_limits(stream, received)
                chunk = next(chunks, None)
            self._stage(received, new_payloads, stream.robot_id)
            return False
        except _UploadCut:
            self._stage(received, new_payloads, stream.robot_id)
            self.counters.add(cut=1)
            raise
        except IngestError:
            raise
        except BaseException:
            # The stream broke (robot gone, call cancelled by the watchdog, learner stopping): keep what came.
            self._stage(received, new_payloads, stream.robot_id)
            raise
        finally:
            self._release_reservation(stream)

    def _end_stream(self, episode_id: str) -> None:
        with self._bytes_lock:
            left = self._streams_by_episode.pop(episode_id) - 1
            if left:
                self._streams_by_episode[episode_id] = left

    def _add_chunk(
        self,
        stream: _Stream,
        received: ChunkSet,
        chunk: fleet_pb2.EpisodeChunk,
        new_payloads: dict[int, bytes],
    ) -> None:
        try:
            # A chunk that is wrong on its own terms (sizes, seq, hash form) is the robot's bad argument...
            ChunkSet(
                received.episode_id,
                max_chunk_bytes=self.config.max_chunk_bytes,
                max_total_bytes=received.max_total_bytes,
                min_chunk_bytes=self.config.min_chunk_bytes,
            ).add(chunk)
        except CodecError as exc:
            limits = (
                f" (ingest.min_chunk_bytes = {self.config.min_chunk_bytes}, "
                f"ingest.max_chunk_bytes = {self.config.max_chunk_bytes})"
                if exc.field in ("payload", "total_chunks")
                else ""
            )
            raise IngestError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {chunk.seq}: {exc}{limits}") from None
        size = len(chunk.payload)
        stream.bytes_received += size
        new_bytes = 0 if int(chunk.seq) in received else size
        self._reserve_staged(stream, new_bytes)
        try:
            if received.add(chunk):
                new_payloads[int(chunk.seq)] = chunk.payload
        except CodecError as exc:
            # ...one that contradicts the chunks received before is a broken precondition. The pieces held
            # are dropped so that the robot can start this episode over cleanly.
            new_payloads.clear()
            self.staging.discard(received.episode_id or "")
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"chunk {chunk.seq} contradicts earlier chunks of this upload ({exc}); "
                "they were dropped, upload the episode again from chunk 0",
            ) from None

    def _reserve_staged(self, stream: _Stream, size: int) -> None:
        """Count `size` new bytes against the robot's staged quota, or cut the stream.

        Over the quota, the robot's staged uploads that no stream is using are evicted first, least
        recently saved first (the robot re-sends those from chunk 0 when it comes back to them): otherwise a
        robot whose quota is full of abandoned pieces could finish no upload at all, not even one of them.
        What is left to cut is a robot whose running streams together pass the quota.
        """
        if not size:
            return
        quota = self.config.max_staged_bytes_per_robot
        robot_id = stream.robot_id
        if self._try_reserve(stream, size):
            return
        for episode_id, staged_size in self.staging.robot_uploads(robot_id):
            if episode_id == stream.episode_id or self._in_use(episode_id):
                continue
            self.staging.discard(episode_id)
            throttled.warning(
                "staging-evicted",
                "robot %s is over ingest.max_staged_bytes_per_robot: dropped its idle staged upload %s "
                "(%d bytes)",
                client_str(robot_id),
                episode_id,
                staged_size,
            )
            if self._try_reserve(stream, size):
                return
        raise _UploadCut(
            f"robot {client_str(robot_id)} holds {self.staged_bytes(robot_id)} bytes in uploads in progress and "
            f"this chunk would pass ingest.max_staged_bytes_per_robot ({quota}); what this upload sent is "
            "staged: finish the other uploads, then resume this one"
        )

    def _try_reserve(self, stream: _Stream, size: int) -> bool:
        with self._bytes_lock:
            reserved = self._reserved_by_robot.get(stream.robot_id, 0)
            held = self.staging.robot_bytes(stream.robot_id) + reserved
            if held + size > self.config.max_staged_bytes_per_robot:
                return False
            self._reserved_by_robot[stream.robot_id] = reserved + size
            stream.bytes_reserved += size
            return True

    def _release_reservation(self, stream: _Stream) -> None:
        """The stream's new bytes are staged, committed or dropped by now: stop counting them here."""
        with self._bytes_lock:
            left = self._reserved_by_robot.get(stream.robot_id, 0) - stream.bytes_reserved
            if left > 0:
                self._reserved_by_robot[stream.robot_id] = left
            else:
                self._reserved_by_robot.pop(stream.robot_id, None)
            stream.bytes_reserved = 0

    def _check_stream_limits(self, stream: _Stream, received: ChunkSet) -> None:
        elapsed = self.clock() - stream.started
        staged = f"its {len(received.received_seqs())} chunks so far are staged; query and resume the upload"
        if elapsed > self.config.max_upload_s:
            raise _UploadCut(
                f"upload stream ran {elapsed:.0f} s, past ingest.max_upload_s ({self.config.max_upload_s:g}); "
                + staged
            )
        if elapsed > self.config.upload_rate_grace_s:
            rate = stream.bytes_received / elapsed
            if rate < self.config.min_upload_bytes_per_s:
                raise _UploadCut(
                    f"upload stream brought {rate:.0f} bytes/s over {elapsed:.0f} s, below "
                    f"ingest.min_upload_bytes_per_s ({self.config.min_upload_bytes_per_s:g}); " + staged
                )

    def _stage(self, received: ChunkSet, new_payloads: dict[int, bytes], robot_id: str) -> None:
        try:
            self.staging.save(received, new_payloads, robot_id)
        except OSError as exc:
            throttled.warning(
                "stage-failed",
                "could not stage %d chunks of episode %s: %s",
                len(new_payloads),
                received.episode_id,
                exc,
            )

    def _refuse(self, episode_id: str, code: grpc.StatusCode, message: str) -> IngestError:
        """Refusal of a complete upload: re-sending the same bytes cannot help, so its chunks go."""
        self.staging.discard(episode_id)
        return IngestError(code, message)

    def _decode(self, received: ChunkSet, robot_id: str, role: Role) -> Episode:
        episode_id = received.episode_id or ""
        started = time.perf_counter()
        try:
            payload = received.assemble()
        except CodecError as exc:
            raise self._refuse(
                episode_id,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"episode {episode_id}: the chunks held do not add up to the upload ({exc}); a staged chunk "
                "may have been damaged. They were dropped: upload the episode again from chunk 0",
            ) from None
        assembled = time.perf_counter()
        try:
            episode = decode_episode(payload, max_bytes=self.config.max_episode_bytes)
        except CodecError as exc:
            raise self._refuse(
                episode_id, grpc.StatusCode.INVALID_ARGUMENT, f"episode {episode_id} refused: {exc}"
            ) from None
        self.counters.add(
            seconds_verifying=assembled - started, seconds_decoding=time.perf_counter() - assembled
        )
        if episode.episode_id != episode_id:
            raise self._refuse(
                episode_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"episode_id: the record says {client_str(episode.episode_id)}, its chunks say {episode_id!r}",
            )
        needed = ROLE_FOR_SOURCE[episode.source]
        if role != needed:
            raise self._refuse(
                episode_id,
                grpc.StatusCode.PERMISSION_DENIED,
                f"source: {episode.source.value} episodes need a token of role {needed.value!r}; the token of "
                f"{client_str(robot_id)} has role {role.value!r}",
            )
        if episode.source == Source.ONLINE and episode.robot_id != robot_id:
            raise self._refuse(
                episode_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"robot_id: online episode recorded by {client_str(episode.robot_id)} uploaded by robot "
                f"{client_str(robot_id)}",
            )
        try:
            self.features.check_episode(episode)
        except FeatureMismatchError as exc:
            raise self._refuse(
                episode_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"episode {episode_id} does not fit the served policy: {exc}",
            ) from None
        return episode

    def _submit(self, episode: Episode) -> CommitResult:
        future: concurrent.futures.Future[CommitResult] = concurrent.futures.Future()
        self._commits.put((episode, future))
        try:
            return future.result()
        except Exception as exc:
            raise IngestError(
                grpc.StatusCode.INTERNAL, f"episode {episode.episode_id} could not be committed: {exc}"
            ) from None
