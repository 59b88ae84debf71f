"""An in-test learner: a real `grpc.server` on 127.0.0.1 built from the generated stubs, with the failure
injections the robot tests need (kill mid-upload, tampered checkpoints, load shedding, bad episodes).

Its state lives outside the server, so `stop()` + `start()` restarts it on the same port with the chunks
it had received (like the real learner's staging directory) and the episodes it had committed.
"""

from __future__ import annotations

import collections
import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from sop.credentials import TokenRegistry
from sop.data.codec import CodecError, decode_episode
from sop.data.upload_chunks import ChunkSet
from sop.episode import Episode
from sop.v1 import fleet_pb2, fleet_pb2_grpc, operator_pb2, operator_pb2_grpc

FETCH_CHUNK_BYTES = 16 * 1024


@dataclass
class Publication:
    version: int
    blob: bytes  # the bytes served by FetchCheckpoint
    sha256: str  # the hash announced (differs from sha256(blob) for a tampered checkpoint)


@dataclass
class LearnerState:
    max_chunk_bytes: int = 1 << 20
    tokens: TokenRegistry | None = None
    staging: dict[str, ChunkSet] = field(default_factory=dict)
    committed: dict[str, Episode] = field(default_factory=dict)
    commits: collections.Counter[str] = field(default_factory=collections.Counter)
    chunk_receipts: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    publications: list[Publication] = field(default_factory=list)
    heartbeats: list[fleet_pb2.HeartbeatRequest] = field(default_factory=list)
    registrations: list[fleet_pb2.RegisterRequest] = field(default_factory=list)
    telemetry: list[operator_pb2.RobotTelemetry] = field(default_factory=list)
    commands: dict[str, queue.Queue[operator_pb2.OperatorCommand]] = field(default_factory=dict)
    # Failure injections.
    kill_after_chunks: int | None = None  # stop the server once this many chunks arrived in total
    refuse_uploads_with: grpc.StatusCode | None = None
    refuse_uploads_times: int = 0
    fetch_cut_after_bytes: int | None = (
        None  # end FetchCheckpoint streams with UNAVAILABLE after this many bytes
    )
    fetch_offsets: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    published: threading.Condition = field(default_factory=threading.Condition)


class FakeLearner:
    def __init__(self, state: LearnerState | None = None) -> None:
        self.state = state or LearnerState()
        self.port = 0
        self.server: grpc.Server | None = None
        self.credentials: grpc.ServerCredentials | None = None  # set: serve TLS
        self._chunks_seen = 0

    # Lifecycle --------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeLearner:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        fleet_pb2_grpc.add_FleetServicer_to_server(_Fleet(self), server)
        operator_pb2_grpc.add_OperatorServicer_to_server(_Operator(self), server)
        if self.credentials is not None:
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", self.credentials)
        else:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port, "could not bind a loopback port"
        server.start()
        self.server = server
        return self

    def stop(self, grace_s: float | None = 0) -> None:
        if self.server is not None:
            self.server.stop(grace_s).wait()
            self.server = None
        with self.state.published:
            self.state.published.notify_all()

    def kill_soon(self) -> None:
        """Stop the server from outside the handler that noticed the trigger (as a kill -9 would)."""
        threading.Thread(target=self.stop, daemon=True).start()

    # What tests drive ----------------------------------------------------------------------------------------

    def publish(self, version: int, blob: bytes, announced_sha256: str | None = None) -> None:
        digest = announced_sha256 or hashlib.sha256(blob).hexdigest()
        with self.state.published:
            self.state.publications.append(Publication(version, blob, digest))
            self.state.published.notify_all()

    def send_command(self, robot_id: str, command: operator_pb2.OperatorCommand) -> None:
        self._commands(robot_id).put(command)

    def _commands(self, robot_id: str) -> queue.Queue[operator_pb2.OperatorCommand]:
        with self.state.lock:
            return self.state.commands.setdefault(robot_id, queue.Queue())

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())

    def check_auth(self, context: grpc.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata())
        tokens = self.state.tokens
        if tokens is None:
            return str(metadata.get("x-sop-robot-id", ""))
        robot_id = tokens.check_metadata(metadata)
        if robot_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong robot token")
        return str(robot_id)


class _Fleet(fleet_pb2_grpc.FleetServicer):
    def __init__(self, learner: FakeLearner) -> None:
        self.learner = learner
        self.state = learner.state

    def Register(self, request: Any, context: grpc.ServicerContext) -> fleet_pb2.RegisterResponse:
        self.learner.check_auth(context)
        with self.state.lock:
            self.state.registrations.append(request)
            latest = self.state.publications[-1].version if self.state.publications else 0
        return fleet_pb2.RegisterResponse(
            session_id=f"session-{len(self.state.registrations)}",
            current_policy_version=latest,
            max_chunk_bytes=self.state.max_chunk_bytes,
            max_episode_bytes=1 << 30,
            heartbeat_interval_s=0.2,
        )

    def UploadEpisode(
        self, request_iterator: Iterator[fleet_pb2.EpisodeChunk], context: grpc.ServicerContext
    ) -> Any:
        self.learner.check_auth(context)
        state = self.state
        with state.lock:
            if state.refuse_uploads_with is not None and state.refuse_uploads_times > 0:
                state.refuse_uploads_times -= 1
                code = state.refuse_uploads_with
                context.abort(code, f"injected {code.name}")
        episode_id = ""
        for chunk in request_iterator:
            episode_id = chunk.episode_id
            with state.lock:
                if episode_id in state.committed:
                    continue
                chunks = state.staging.setdefault(episode_id, ChunkSet(max_chunk_bytes=state.max_chunk_bytes))
                try:
                    chunks.add(chunk)
                except CodecError as exc:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                state.chunk_receipts[(episode_id, chunk.seq)] += 1
                self.learner._chunks_seen += 1
                kill = (
                    state.kill_after_chunks is not None
                    and self.learner._chunks_seen >= state.kill_after_chunks
                )
                if kill:
                    state.kill_after_chunks = None
            if kill:
                self.learner.kill_soon()
                time.sleep(5)  # the stop cancels this call; the robot sees the stream break
                context.abort(grpc.StatusCode.UNAVAILABLE, "killed")
        with state.lock:
            if episode_id in state.committed:
                return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=True, duplicate=True)
            staged = state.staging.get(episode_id)
            if staged is None or not staged.complete:
                return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=False)
            try:
                episode = decode_episode(staged.assemble())
            except CodecError as exc:
                del state.staging[episode_id]
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            state.committed[episode_id] = episode
            state.commits[episode_id] += 1
            del state.staging[episode_id]
            return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=True, num_steps=episode.num_steps)

    def QueryUpload(self, request: Any, context: grpc.ServicerContext) -> fleet_pb2.QueryUploadResponse:
        self.learner.check_auth(context)
        with self.state.lock:
            if request.episode_id in self.state.committed:
                return fleet_pb2.QueryUploadResponse(episode_id=request.episode_id, committed=True)
            chunks = self.state.staging.get(request.episode_id)
            if chunks is None:
                return fleet_pb2.QueryUploadResponse(episode_id=request.episode_id)
            return fleet_pb2.QueryUploadResponse(
                episode_id=request.episode_id,
                received_seqs=chunks.received_seqs(),
                total_chunks=chunks.total_chunks or 0,
            )

    def WatchPolicy(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.PolicyAnnouncement]:
        self.learner.check_auth(context)
        sent = request.current_version
        while context.is_active():
            with self.state.published:
                newer = [p for p in self.state.publications if p.version > sent]
                if not newer:
                    self.state.published.wait(0.1)
                    continue
            newest = newer[-1]
            sent = newest.version
            yield fleet_pb2.PolicyAnnouncement(
                version=newest.version,
                sha256=newest.sha256,
                size_bytes=len(newest.blob),
                created_at=time.time(),
            )

    def FetchCheckpoint(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.CheckpointChunk]:
        self.learner.check_auth(context)
        with self.state.lock:
            matches = [p for p in self.state.publications if request.version in (0, p.version)]
        if not matches:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no checkpoint v{request.version}")
        publication = matches[-1]
        offset = int(request.offset)
        self.state.fetch_offsets.append(offset)
        sent = 0
        while offset < len(publication.blob):
            cut = self.state.fetch_cut_after_bytes
            if cut is not None and sent >= cut:
                self.state.fetch_cut_after_bytes = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected cut")
            data = publication.blob[offset : offset + FETCH_CHUNK_BYTES]
            yield fleet_pb2.CheckpointChunk(
                version=publication.version,
                offset=offset,
                data=data,
                total_bytes=len(publication.blob),
                sha256=publication.sha256,
            )
            offset += len(data)
            sent += len(data)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> fleet_pb2.HeartbeatResponse:
        self.learner.check_auth(context)
        with self.state.lock:
            self.state.heartbeats.append(request)
            latest = self.state.publications[-1].version if self.state.publications else 0
        return fleet_pb2.HeartbeatResponse(server_time=time.time(), latest_policy_version=latest)


class _Operator(operator_pb2_grpc.OperatorServicer):
    def __init__(self, learner: FakeLearner) -> None:
        self.learner = learner

    def Session(
        self, request_iterator: Iterator[operator_pb2.RobotTelemetry], context: grpc.ServicerContext
    ) -> Any:
        robot_id = self.learner.check_auth(context)
        state = self.learner.state

        def read_telemetry() -> None:
            try:
                for telemetry in request_iterator:
                    with state.lock:
                        state.telemetry.append(telemetry)
            except grpc.RpcError:
                return

        threading.Thread(target=read_telemetry, daemon=True).start()
        commands = self.learner._commands(robot_id)
        while context.is_active():
            try:
                yield commands.get(timeout=0.05)
            except queue.Empty:
                continue


class SilentLearner:
    """A learner that accepts TCP connections and never says a word (no HTTP/2 settings, no answer): every
    call of a robot pointed at it hangs until its deadline or its cancellation."""

    def __init__(self) -> None:
        import socket

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = int(self._socket.getsockname()[1])
        self.connections: list[Any] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="silent-learner", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections.append(connection)  # held open, never read from or written to

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        for connection in self.connections:
            connection.close()


class HangingLearner:
    """A real gRPC learner that answers nothing: every call is accepted and then left hanging (an upload's
    chunks are not even read), except QueryUpload, which says "nothing held" so that uploads start.
    `calls` counts the calls that arrived, by method name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.released = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        learner = self

        def hang(name: str, context: grpc.ServicerContext) -> None:
            learner.calls[name] += 1
            while context.is_active() and not learner.released.wait(0.1):
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "the hanging learner let go")

        class Fleet(fleet_pb2_grpc.FleetServicer):
            def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
                hang("Register", context)

            def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
                hang("Heartbeat", context)

            def QueryUpload(self, request: Any, context: grpc.ServicerContext) -> Any:
                learner.calls["QueryUpload"] += 1
                return fleet_pb2.QueryUploadResponse(episode_id=request.episode_id)

            def UploadEpisode(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
                hang("UploadEpisode", context)

            def WatchPolicy(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                hang("WatchPolicy", context)
                yield from ()

            def FetchCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                hang("FetchCheckpoint", context)
                yield from ()

        class Operator(operator_pb2_grpc.OperatorServicer):
            def Session(self, request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                hang("Session", context)
                yield from ()

        fleet_pb2_grpc.add_FleetServicer_to_server(Fleet(), self.server)
        operator_pb2_grpc.add_OperatorServicer_to_server(Operator(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.released.set()
        self.server.stop(0).wait()
