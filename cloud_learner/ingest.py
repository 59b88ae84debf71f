"""Episode ingest: chunks in, one validated episode committed exactly once, a receipt out after the commit.

Path of an upload:

1. Admission. At most `ingest.max_pending_uploads` uploads are in progress at once (the bounded ingest
   queue), and their announced sizes (`total_bytes`) may add up to at most `ingest.max_pending_bytes`;
   one more is answered RESOURCE_EXHAUSTED after its first chunk, before the rest is read, and the robot
   backs off. An upload holds about three copies of its bytes at its peak (chunks, the assembled payload,
   the parsed record), so memory stays near 3 x max_pending_bytes.
2. Chunks are checked one by one by `sop.data.upload_chunks.ChunkSet` (size caps, seq range, agreement
   with earlier chunks, sha256 form). A chunk that is malformed on its own is INVALID_ARGUMENT; one that
   contradicts chunks received earlier is FAILED_PRECONDITION and the stale pieces are dropped so the robot
   can start the episode over.
3. Complete: the payload is assembled and its sha256 verified, decoded and validated by `sop.data.codec`
   (INVALID_ARGUMENT naming the field), and an online episode must carry the authenticated robot's id.
4. Commit: a few writer threads (`ingest.commit_workers`, so one episode's fsync does not hold up the
   next) append to the replay store (fsynced when `ingest.durable`), skipping an episode id already there;
   the store's atomic rename refuses a second commit of one id even when two writers race. Only then does
   the handler answer `committed = true`.

Staging (resume after a cut). Chunks of a stream are held in memory while it runs. When a stream ends or
breaks before its episode is complete, the chunks it brought are written to `run_dir/staging/<episode id>/`
(one file per chunk, written then renamed, no fsync: a file survives a kill -9 of the learner, and a power
loss that garbles one is caught by the whole-episode sha256). `QueryUpload` answers from there, so the
robot re-sends only the missing chunks, also after a learner restart. Chunks of a stream that was running
when the learner was killed -9 are not staged; the robot sees them missing and sends them again. Nothing
committed is ever lost: the receipt is sent only after the store's durable commit.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import grpc

from cloud_learner.config import IngestConfig
from sop.data.codec import CodecError, decode_episode
from sop.data.episode_store import DuplicateEpisodeError
from sop.data.upload_chunks import ChunkSet
from sop.episode import Episode, Source
from sop.v1 import fleet_pb2

logger = logging.getLogger(__name__)

META_NAME = "upload.json"


class IngestError(Exception):
    """An upload refused with a gRPC status code and a message that names the problem."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ReplayStoreWriter(Protocol):
    """The part of `sop.data.episode_store.EpisodeStore` ingest uses."""

    def __contains__(self, episode_id: object) -> bool: ...

    def append(self, episode: Episode) -> Any: ...


@dataclass(frozen=True)
class CommitResult:
    episode_id: str
    num_steps: int
    duplicate: bool


def canonical_episode_id(episode_id: str) -> str:
    """Episode ids are UUIDs; the canonical form is also what names its staging directory, so a hostile
    id can never point outside it."""
    try:
        parsed = uuid.UUID(episode_id)
    except (ValueError, AttributeError, TypeError):
        raise IngestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"episode_id: {episode_id[:80]!r} is not a UUID"
        ) from None
    if str(parsed) != episode_id:
        raise IngestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"episode_id: {episode_id[:80]!r} is not in canonical UUID form"
        )
    return episode_id


class UploadStaging:
    """Chunks of unfinished uploads on disk, one directory per episode id."""

    def __init__(self, root: str | Path, max_chunk_bytes: int, max_episode_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_chunk_bytes = max_chunk_bytes
        self.max_episode_bytes = max_episode_bytes
        self._lock = threading.Lock()

    def _dir(self, episode_id: str) -> Path:
        return self.root / episode_id

    def new_chunk_set(self, episode_id: str) -> ChunkSet:
        return ChunkSet(
            episode_id, max_chunk_bytes=self.max_chunk_bytes, max_total_bytes=self.max_episode_bytes
        )

    def load(self, episode_id: str, robot_id: str) -> ChunkSet | None:
        """The staged chunks of `episode_id` uploaded by `robot_id`, re-validated; None when there are none.

        A staging directory that is unreadable or inconsistent is removed: the robot re-sends those chunks.
        """
        directory = self._dir(episode_id)
        meta_path = directory / META_NAME
        with self._lock:
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
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                logger.warning("dropping unusable staged upload %s: %s", episode_id, exc)
                shutil.rmtree(directory, ignore_errors=True)
                return None

    def owner(self, episode_id: str) -> str | None:
        try:
            return str(json.loads((self._dir(episode_id) / META_NAME).read_text()).get("robot_id"))
        except (OSError, ValueError):
            return None

    def save(self, chunks: ChunkSet, payloads: Mapping[int, bytes], robot_id: str) -> None:
        """Persist `payloads` (seq -> bytes, chunks of `chunks` not staged yet) and the upload's metadata."""
        if not payloads or chunks.episode_id is None:
            return
        directory = self._dir(chunks.episode_id)
        with self._lock:
            directory.mkdir(parents=True, exist_ok=True)
            for seq, payload in payloads.items():
                self._write_renamed(directory / f"{seq:06d}.chunk", payload)
            meta = {
                "robot_id": robot_id,
                "total_chunks": chunks.total_chunks,
                "total_bytes": chunks.total_bytes,
                "sha256": chunks.sha256,
                "updated_at": time.time(),
            }
            self._write_renamed(directory / META_NAME, json.dumps(meta).encode())

    @staticmethod
    def _write_renamed(path: Path, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
            handle.write(data)
            temporary = handle.name
        os.replace(temporary, path)

    def discard(self, episode_id: str) -> None:
        with self._lock:
            shutil.rmtree(self._dir(episode_id), ignore_errors=True)

    def episode_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def prune(self, max_age_s: float, committed: Callable[[str], bool]) -> int:
        """Remove staged uploads that were committed meanwhile or are older than `max_age_s`."""
        removed = 0
        now = time.time()
        for entry in list(self.root.iterdir()):
            if not entry.is_dir():
                continue
            try:
                age = now - (entry / META_NAME).stat().st_mtime
            except OSError:
                age = float("inf")
            if age > max_age_s or committed(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
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


class Ingest:
    """Receives uploads, validates them, and commits each episode once through the writer threads."""

    def __init__(
        self,
        config: IngestConfig,
        store: ReplayStoreWriter,
        staging: UploadStaging,
        on_commit: Callable[[Episode], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.staging = staging
        self.on_commit = on_commit
        self.counters = IngestCounters()
        self._slots = threading.BoundedSemaphore(config.max_pending_uploads)
        self._uploads_in_progress = 0
        self._pending_bytes = 0
        self._bytes_lock = threading.Lock()
        self._commits: queue.Queue[tuple[Episode, concurrent.futures.Future[CommitResult]] | None] = (
            queue.Queue()
        )
        self._writers = [
            threading.Thread(target=self._write_loop, name=f"ingest-writer-{i}", daemon=True)
            for i in range(config.commit_workers)
        ]
        for writer in self._writers:
            writer.start()
        removed = staging.prune(config.staging_max_age_s, lambda episode_id: episode_id in store)
        if removed:
            logger.info("removed %d staged uploads that were committed or expired", removed)

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

    def stop(self) -> None:
        for _ in self._writers:
            self._commits.put(None)
        for writer in self._writers:
            writer.join(timeout=30)

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

    # Uploads.
    def receive(
        self,
        robot_id: str,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
        on_received: Callable[[], None] | None = None,
    ) -> fleet_pb2.UploadReceipt:
        """Consume one UploadEpisode stream. Raises `IngestError` for a refused upload.

        `on_received` is called once every chunk is in, before the (possibly slow) decode and commit.
        """
        if not self._slots.acquire(blocking=False):
            self.counters.add(shed=1)
            raise IngestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the learner is ingesting {self.config.max_pending_uploads} uploads already; back off and retry",
            )
        with self._bytes_lock:
            self._uploads_in_progress += 1
        try:
            return self._receive(robot_id, chunks, on_received)
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
            return self._receive_episode(robot_id, episode_id, first, chunks, on_received)
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
        episode_id: str,
        first: fleet_pb2.EpisodeChunk,
        chunks: Iterator[fleet_pb2.EpisodeChunk],
        on_received: Callable[[], None] | None,
    ) -> fleet_pb2.UploadReceipt:
        received = self.staging.load(episode_id, robot_id) or self.staging.new_chunk_set(episode_id)
        new_payloads: dict[int, bytes] = {}
        complete = False
        try:
            chunk: fleet_pb2.EpisodeChunk | None = first
            while chunk is not None:
                self._add_chunk(received, chunk, new_payloads)
                if received.complete:
                    complete = True
                    break
                chunk = next(chunks, None)
        except IngestError:
            raise
        except BaseException:
            # The stream broke (robot gone, call cancelled by the watchdog, learner stopping): keep what came.
            self._stage(received, new_payloads, robot_id)
            raise
        if not complete:
            self._stage(received, new_payloads, robot_id)
            self.counters.add(partial=1)
            return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=False)
        if on_received is not None:
            on_received()
        episode = self._decode(received, robot_id)
        result = self._submit(episode)
        if result.duplicate:
            self.counters.add(duplicates=1)
        else:
            self.counters.add(committed=1, bytes_committed=received.total_bytes or 0)
        return fleet_pb2.UploadReceipt(
            episode_id=episode_id, committed=True, duplicate=result.duplicate, num_steps=result.num_steps
        )

    def _add_chunk(
        self, received: ChunkSet, chunk: fleet_pb2.EpisodeChunk, new_payloads: dict[int, bytes]
    ) -> None:
        try:
            # A chunk that is wrong on its own terms (sizes, seq, hash form) is the robot's bad argument...
            ChunkSet(
                received.episode_id,
                max_chunk_bytes=received.max_chunk_bytes,
                max_total_bytes=received.max_total_bytes,
            ).add(chunk)
        except CodecError as exc:
            raise IngestError(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {chunk.seq}: {exc}") from None
        try:
            if received.add(chunk):
                new_payloads[int(chunk.seq)] = chunk.payload
        except CodecError as exc:
            # ...one that contradicts the chunks received before is a broken precondition. The pieces held
            # are dropped so that the robot can start this episode over cleanly.
            self.staging.discard(received.episode_id or "")
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"chunk {chunk.seq} contradicts earlier chunks of this upload ({exc}); "
                "they were dropped, upload the episode again from chunk 0",
            ) from None

    def _stage(self, received: ChunkSet, new_payloads: dict[int, bytes], robot_id: str) -> None:
        try:
            self.staging.save(received, new_payloads, robot_id)
        except OSError:
            logger.exception(
                "could not stage %d chunks of episode %s", len(new_payloads), received.episode_id
            )

    def _decode(self, received: ChunkSet, robot_id: str) -> Episode:
        episode_id = received.episode_id or ""
        try:
            started = time.perf_counter()
            payload = received.assemble()
            assembled = time.perf_counter()
            episode = decode_episode(payload, max_bytes=self.config.max_episode_bytes)
            self.counters.add(
                seconds_verifying=assembled - started, seconds_decoding=time.perf_counter() - assembled
            )
        except CodecError as exc:
            self.staging.discard(episode_id)
            raise IngestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"episode {episode_id} refused: {exc}"
            ) from None
        if episode.episode_id != episode_id:
            self.staging.discard(episode_id)
            raise IngestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"episode_id: the record says {episode.episode_id!r}, its chunks say {episode_id!r}",
            )
        if episode.source == Source.ONLINE and episode.robot_id != robot_id:
            self.staging.discard(episode_id)
            raise IngestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"robot_id: online episode recorded by {episode.robot_id!r} uploaded by robot {robot_id!r}",
            )
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
