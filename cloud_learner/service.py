"""`sop learner serve`: the gRPC face of the learner (Fleet + Operator + health) around ingest, trainer and
publisher.

    sop learner serve --config configs/learner.yaml [--server.address 0.0.0.0:50051] ...

Python API (the fleet harness and tests):

    service = LearnerService(config)
    port = service.start()      # binds, resumes from run_dir, starts the trainer; returns the bound port
    ...
    service.stop()

Liveness. Every call is bounded: HTTP/2 keep-alive drops a dead peer (cancelling its calls); a client
stream (upload, operator session) or a checkpoint fetch that makes no progress for
`server.stream_idle_timeout_s` is cancelled by the stream watchdog; a WatchPolicy stream waits on a condition
with a timeout, re-checks `context.is_active()`, and ends after `server.max_stream_lifetime_s` (the robot
re-opens it). So a half-open robot never wedges the server, and the worker pool (`server.max_workers`)
only has to cover the robots actually connected.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud_learner.auth import RobotAuthInterceptor, authenticated_robot_id, authenticated_role, require_role
from cloud_learner.checkpoint_store import CheckpointRecord, CheckpointStore
from cloud_learner.config import LearnerBackend, LearnerConfig
from cloud_learner.ingest import Ingest, IngestError, UploadStaging
from cloud_learner.liveness import StreamWatchdog
from cloud_learner.operator_relay import OperatorRelay
from cloud_learner.publisher import CheckpointNotFoundError, FetchOffsetError, Publisher
from cloud_learner.replay import import_offline_stores, open_replay_store
from cloud_learner.roster import FleetRoster
from cloud_learner.stream_limits import StreamKind, StreamLimiter, StreamLimitExceeded
from sop.bounded_shutdown import ShutdownSignals
from sop.checkpoint import read_manifest_from_bytes
from sop.config import parse_config
from sop.credentials import Role, TokenRegistry
from sop.durable_files import write_json_atomically
from sop.episode import Episode
from sop.fleet_trust import CheckpointSigner
from sop.malloc_arenas import limit_malloc_arenas
from sop.policy_features import PolicyFeatures
from sop.safe_logging import RateLimitedLog, client_str
from sop.v1 import fleet_pb2, fleet_pb2_grpc, operator_pb2, operator_pb2_grpc

if TYPE_CHECKING:
    from cloud_learner.console.server import ConsoleServer
    from cloud_learner.ray_backend.cluster import RayConnection
    from cloud_learner.trainer import Trainer

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)

FLEET_SERVICE = "sop.v1.Fleet"
OPERATOR_SERVICE = "sop.v1.Operator"
ENDPOINT_FILE = "endpoint.json"
# Protobuf framing around a chunk's payload (episode id, seq, sizes, sha256): generous.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# How long `stop()` waits, beyond the grace period, for cancelled calls to end, and for the trainer's step.
STOP_CALLS_EXTRA_S = 3.0
STOP_TRAINER_S = 4.0
STOP_COMMITS_S = 2.0
# `sop learner serve` exits at most this long after shutdown_grace_s once signalled.
EXIT_DEADLINE_EXTRA_S = 10.0
# Register: what a robot may announce (task and camera names become roster entries and log text).
MAX_ANNOUNCED_TASKS = 64
ANNOUNCED_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """Fleet RPCs; each one a thin translation between gRPC and the learner's parts."""

    def __init__(self, service: LearnerService) -> None:
        self.service = service

    def Register(
        self, request: fleet_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.RegisterResponse:
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT)
        if request.robot_id != robot_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"robot_id: the request names {request.robot_id!r} but the credentials are robot {robot_id!r}",
            )
        problems = self.service.capability_problems(request.capabilities)
        if problems:
            throttled.warning(
                "register-refused",
                "robot %s refused at Register: %s",
                client_str(robot_id),
                "; ".join(problems),
            )
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this robot does not fit the learner's policy: " + "; ".join(problems),
            )
        status = self.service.roster.register(robot_id, request.capabilities)
        latest = self.service.publisher.fleet_version  # what the fleet runs (an admin's pin, else the newest)
        config = self.service.config
        logger.info(
            "robot %s registered (tasks %s)",
            client_str(robot_id),
            ",".join(client_str(t) for t in status.tasks) or "-",
        )
        return fleet_pb2.RegisterResponse(
            session_id=status.session_id,
            current_policy_version=0 if latest is None else latest.version,
            max_chunk_bytes=config.ingest.max_chunk_bytes,
            max_episode_bytes=config.ingest.max_episode_bytes,
            heartbeat_interval_s=config.server.heartbeat_interval_s,
        )

    def UploadEpisode(
        self, request_iterator: Iterator[fleet_pb2.EpisodeChunk], context: grpc.ServicerContext
    ) -> fleet_pb2.UploadReceipt:
        robot_id = authenticated_robot_id(context)
        with (
            self.service.admit_stream(robot_id, StreamKind.UPLOAD, context),
            self.service.watchdog.watch(context, f"upload from {client_str(robot_id)}") as watched,
        ):

            def chunks() -> Iterator[fleet_pb2.EpisodeChunk]:
                for chunk in request_iterator:
                    watched.touch()
                    yield chunk

            try:
                return self.service.ingest.receive(
                    robot_id, chunks(), on_received=watched.pause, role=authenticated_role(context)
                )
            except IngestError as exc:
                if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    throttled.warning(
                        f"upload-refused-{exc.code.name}",
                        "upload from %s refused: %s",
                        client_str(robot_id),
                        exc.message,
                    )
                context.abort(exc.code, exc.message)
            except grpc.RpcError:
                # The call was cancelled (robot gone or idle timeout); its chunks were staged for a resume.
                context.abort(grpc.StatusCode.CANCELLED, "upload stream was cut; query and resume it")
        raise AssertionError("unreachable")

    def QueryUpload(
        self, request: fleet_pb2.QueryUploadRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.QueryUploadResponse:
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT, Role.DEMONSTRATOR)
        try:
            return self.service.ingest.query(robot_id, request.episode_id)
        except IngestError as exc:
            context.abort(exc.code, exc.message)
        raise AssertionError("unreachable")

    def WatchPolicy(
        self, request: fleet_pb2.WatchPolicyRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.PolicyAnnouncement]:
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT)
        server = self.service.config.server
        with self.service.admit_stream(robot_id, StreamKind.WATCH, context):
            yield from self.service.publisher.watch(
                request.current_version,
                context.is_active,
                check_interval_s=server.watch_check_interval_s,
                max_lifetime_s=server.max_stream_lifetime_s,
            )

    def FetchCheckpoint(
        self, request: fleet_pb2.FetchCheckpointRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Yields pre-serialized CheckpointChunk messages (see `publisher.py`)."""
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT)
        try:
            frames = self.service.publisher.fetch_frames(request.version, request.offset)
        except CheckpointNotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except FetchOffsetError as exc:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        with (
            self.service.admit_stream(robot_id, StreamKind.FETCH, context),
            self.service.watchdog.watch(context, f"checkpoint fetch by {client_str(robot_id)}") as watched,
        ):
            for frame in frames:
                if not context.is_active():
                    return
                yield frame
                watched.touch()

    def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.HeartbeatResponse:
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT)
        if request.robot_id and request.robot_id != robot_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"robot_id: {request.robot_id!r} is not the caller"
            )
        request.robot_id = robot_id
        self.service.roster.heartbeat(request)
        latest = self.service.publisher.fleet_version
        return fleet_pb2.HeartbeatResponse(
            server_time=time.time(), latest_policy_version=0 if latest is None else latest.version
        )


def _pass_through(frame: bytes) -> bytes:
    return frame


def add_fleet_servicer(servicer: FleetServicer, server: grpc.Server) -> None:
    """Like the generated `add_FleetServicer_to_server`, except FetchCheckpoint's responses are already
    serialized (prepared once per checkpoint), so its serializer passes bytes through."""
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            servicer.Register,
            request_deserializer=fleet_pb2.RegisterRequest.FromString,
            response_serializer=fleet_pb2.RegisterResponse.SerializeToString,
        ),
        "UploadEpisode": grpc.stream_unary_rpc_method_handler(
            servicer.UploadEpisode,
            request_deserializer=fleet_pb2.EpisodeChunk.FromString,
            response_serializer=fleet_pb2.UploadReceipt.SerializeToString,
        ),
        "QueryUpload": grpc.unary_unary_rpc_method_handler(
            servicer.QueryUpload,
            request_deserializer=fleet_pb2.QueryUploadRequest.FromString,
            response_serializer=fleet_pb2.QueryUploadResponse.SerializeToString,
        ),
        "WatchPolicy": grpc.unary_stream_rpc_method_handler(
            servicer.WatchPolicy,
            request_deserializer=fleet_pb2.WatchPolicyRequest.FromString,
            response_serializer=fleet_pb2.PolicyAnnouncement.SerializeToString,
        ),
        "FetchCheckpoint": grpc.unary_stream_rpc_method_handler(
            servicer.FetchCheckpoint,
            request_deserializer=fleet_pb2.FetchCheckpointRequest.FromString,
            response_serializer=_pass_through,
        ),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            servicer.Heartbeat,
            request_deserializer=fleet_pb2.HeartbeatRequest.FromString,
            response_serializer=fleet_pb2.HeartbeatResponse.SerializeToString,
        ),
    }
    missing = set(fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].methods_by_name) - set(handlers)
    if missing:  # the proto grew a method: fail loudly instead of answering UNIMPLEMENTED
        raise RuntimeError(f"Fleet methods without a handler: {sorted(missing)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FLEET_SERVICE, handlers),))
    server.add_registered_method_handlers(FLEET_SERVICE, handlers)


class OperatorServicer(operator_pb2_grpc.OperatorServicer):
    def __init__(self, service: LearnerService) -> None:
        self.service = service

    def Session(
        self, request_iterator: Iterator[operator_pb2.RobotTelemetry], context: grpc.ServicerContext
    ) -> Iterator[operator_pb2.OperatorCommand]:
        robot_id = authenticated_robot_id(context)
        require_role(context, Role.ROBOT)
        server = self.service.config.server
        with (
            self.service.admit_stream(robot_id, StreamKind.OPERATOR, context),
            self.service.watchdog.watch(context, f"operator session of {client_str(robot_id)}") as watched,
        ):
            yield from self.service.relay.session(
                robot_id,
                request_iterator,
                context.is_active,
                on_telemetry=watched.touch,
                check_interval_s=server.watch_check_interval_s,
                max_lifetime_s=server.max_stream_lifetime_s,
            )


def server_options(config: LearnerConfig) -> list[tuple[str, Any]]:
    server = config.server
    return [
        ("grpc.keepalive_time_ms", int(server.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(server.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Robots ping to detect a dead learner too; accept pings every few seconds without a GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", config.ingest.max_chunk_bytes + MESSAGE_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", (1 << 20) + MESSAGE_OVERHEAD_BYTES),
        ("grpc.so_reuseport", 0),
    ]


def _server_credentials(config: LearnerConfig) -> grpc.ServerCredentials | None:
    tls = config.server.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    key_pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([key_pair])
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=Path(tls.client_ca_file).read_bytes(), require_client_auth=True
    )


@dataclass(frozen=True)
class TrainingStatus:
    """A copy of the learner's training state for readers on other threads (the console's learner view)."""

    trainer_enabled: bool
    trainer_running: bool
    trainer_failure: str | None
    step: int
    samples_trained: int
    # The trainer's scalars at its last log (`train/loss`, `mix/<task>/online_share`, ...).
    metrics: dict[str, float]
    replay_episodes: int
    latest_version: int | None
    checkpoints: list[CheckpointRecord]  # the kept versions, oldest first


class LearnerService:
    """The whole learner in one process: gRPC server, ingest, replay, trainer, publisher, relay."""

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config
        self.port: int | None = None
        self.trainer: Trainer | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self.features: PolicyFeatures | None = None
        self.console: ConsoleServer | None = None
        self.ray: RayConnection | None = None

    def start(self) -> int:
        """Open run_dir (resuming whatever is there), start serving and training; returns the bound port."""
        config = self.config
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        registry = (
            TokenRegistry.from_file(config.auth.token_hashes_file) if config.auth.token_hashes_file else None
        )
        if registry is None:
            logger.warning("auth.allow_unauthenticated is set: any caller naming a robot id is believed")

        self.store = open_replay_store(config)
        imported = import_offline_stores(self.store, config.replay.offline_stores)
        if imported:
            logger.info("imported %d offline demonstrations into %s", imported, config.replay_dir)
        self.checkpoints = CheckpointStore(config.checkpoint_dir, keep_last=config.trainer.keep_last)
        self.checkpoints.remove_leftover_temporaries()
        signing_key = config.trainer.signing_key_file
        self.publisher = Publisher(
            self.checkpoints, signer=CheckpointSigner.from_file(signing_key) if signing_key else None
        )
        self.staging = UploadStaging(
            config.staging_dir,
            config.ingest.max_chunk_bytes,
            config.ingest.max_episode_bytes,
            min_chunk_bytes=config.ingest.min_chunk_bytes,
        )
        self.ingest = Ingest(
            config.ingest,
            self.store,
            self.staging,
            on_commit=self._on_commit,
            replay_tasks=config.replay.tasks,
        )
        self.relay = OperatorRelay()
        self.roster = FleetRoster()
        self.watchdog = StreamWatchdog(config.server.stream_idle_timeout_s)
        self.streams = StreamLimiter(config.server.stream_limits, config.server.max_streams)
        self.auth = RobotAuthInterceptor(registry)

        if config.trainer.base_checkpoint is not None:
            # First run: robots get the base policy (as v1) from their first WatchPolicy on.
            self.publisher.publish_base(config.trainer.base_checkpoint)
        self.features = self._served_policy_features()
        self.ingest.set_features(self.features)
        if config.trainer.enabled:
            from cloud_learner.trainer import Trainer  # torch and the policy code load only here

            if config.backend is LearnerBackend.RAY:
                from cloud_learner.ray_backend.cluster import RayConnection  # ray loads only here

                self.ray = RayConnection.open(config.ray)
            self.trainer = Trainer(config, self.store, self.checkpoints, self.publisher)
            try:
                self.trainer.prepare()
            except BaseException:
                self._close_ray()
                raise

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.server.max_workers, thread_name_prefix="grpc"),
            interceptors=[self.auth],
            options=server_options(config),
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        add_fleet_servicer(FleetServicer(self), server)
        operator_pb2_grpc.add_OperatorServicer_to_server(OperatorServicer(self), server)
        self._health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        credentials = _server_credentials(config)
        address = config.server.address
        try:  # grpc raises RuntimeError("Failed to bind ...") for a port it cannot take (older grpc: port 0)
            port = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            port = 0
        if port == 0:
            server.stop(None)
            if self.trainer is not None:
                self.trainer.stop(timeout_s=0)
            self._close_ray()
            raise OSError(
                errno.EADDRINUSE,
                f"cannot listen on server.address {address}: the port is in use (another learner?); stop "
                "that process or pass another --server.address",
            )
        if config.console.address is not None:
            from cloud_learner.console.server import ConsoleServer  # FastAPI loads only with a console

            try:
                self.console = ConsoleServer(self)
                self.console.start()
            except BaseException:  # e.g. console.address taken: leave nothing running behind the error
                self.console = None
                server.stop(None)
                self.ingest.stop(timeout_s=STOP_COMMITS_S)
                self.watchdog.stop()
                if self.trainer is not None:
                    self.trainer.stop(timeout_s=0)
                self._close_ray()
                raise
        server.start()
        self._server = server
        self.port = port
        for name in ("", FLEET_SERVICE, OPERATOR_SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.trainer is not None:
            self.trainer.start()
        self._write_endpoint(port)
        latest = self.publisher.latest
        logger.info(
            "learner serving on %s:%d (%s), %d episodes in replay, policy v%s",
            address.rpartition(":")[0],
            port,
            "TLS" if credentials else "plaintext",
            len(self.store),
            "-" if latest is None else latest.version,
        )
        return port

    def _served_policy_features(self) -> PolicyFeatures | None:
        """The features of the policy the learner serves (None before any checkpoint is published)."""
        latest = self.publisher.fleet_version
        if latest is None:
            return None
        blob = self.publisher.prepared(latest.version).blob
        manifest = read_manifest_from_bytes(blob, source=f"checkpoint v{latest.version}")
        return PolicyFeatures.from_policy_config(manifest.policy_config)

    def capability_problems(self, capabilities: fleet_pb2.RobotCapabilities) -> list[str]:
        """Why a robot announcing `capabilities` cannot join (empty: it can). Names are checked before any
        of them reaches the roster or a log."""
        problems: list[str] = []
        if len(capabilities.tasks) > MAX_ANNOUNCED_TASKS:
            problems.append(f"tasks: {len(capabilities.tasks)} announced, at most {MAX_ANNOUNCED_TASKS}")
        bad_names = [
            name
            for name in [*capabilities.tasks, *capabilities.cameras]
            if not ANNOUNCED_NAME.fullmatch(name)
        ]
        if bad_names:
            problems.append(
                f"{client_str(bad_names[0])} is not a task or camera name (letters, digits, '_', '-', '.'; "
                "1 to 64 characters)"
            )
        if len(capabilities.client_version) > 64:
            problems.append("client_version: longer than 64 characters")
        features = self.ingest.features  # with the learner's task set, as uploads are checked
        if problems or features is None:
            return problems
        return features.capability_problems(
            tasks=list(capabilities.tasks),
            state_dim=int(capabilities.state_dim),
            action_dim=int(capabilities.action_dim),
            cameras=list(capabilities.cameras),
        )

    @contextlib.contextmanager
    def admit_stream(self, robot_id: str, kind: StreamKind, context: grpc.ServicerContext) -> Iterator[None]:
        """Run the body holding one of `robot_id`'s `kind` stream slots; RESOURCE_EXHAUSTED when none is free."""
        try:
            self.streams.acquire(robot_id, kind)
        except StreamLimitExceeded as exc:
            throttled.warning(
                f"stream-limit-{kind.value}",
                "refused a %s stream of robot %s: %s",
                kind.value,
                client_str(robot_id),
                exc,
            )
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            yield
        finally:
            self.streams.release(robot_id, kind)

    def training_status(self) -> TrainingStatus:
        """Where training stands: step, last metrics, kept checkpoint versions (read-only, any thread)."""
        trainer = self.trainer
        latest = self.publisher.latest
        failure = None if trainer is None else trainer.failure
        return TrainingStatus(
            trainer_enabled=trainer is not None,
            trainer_running=trainer is not None and trainer.running,
            trainer_failure=None if failure is None else str(failure)[:400],
            step=0 if trainer is None else trainer.step,
            samples_trained=0 if trainer is None else trainer.samples_trained,
            metrics={} if trainer is None else dict(trainer.last_metrics),
            replay_episodes=len(self.store),
            latest_version=None if latest is None else latest.version,
            checkpoints=[
                record
                for record in (self.checkpoints.record(v) for v in self.checkpoints.versions())
                if record is not None
            ],
        )

    def _write_endpoint(self, port: int) -> None:
        """`run_dir/endpoint.json` tells harnesses where the learner listens (port 0 picks one), and where
        its console does."""
        host = self.config.server.address.rpartition(":")[0]
        path = Path(self.config.run_dir) / ENDPOINT_FILE
        endpoint: dict[str, Any] = {"address": f"{host}:{port}", "port": port, "pid": os.getpid()}
        if self.console is not None:
            endpoint["console_url"] = self.console.url
        write_json_atomically(path, endpoint, durable=False)  # rewritten at every start: no fsync needed

    def _on_commit(self, episode: Episode) -> None:
        if self.trainer is not None:
            self.trainer.notify_new_episode(episode)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving (running calls get `grace_s`, then they are cancelled), stop the trainer, finish
        pending commits. Each step is bounded, so this returns within about grace_s + 10 s even when a call
        handler is stuck where no cancellation reaches it (the process-level bound is `BoundedShutdown`)."""
        if self._server is None:
            return
        grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self.console is not None:
            self.console.stop()
            self.console = None
        self.publisher.close()
        self.relay.close()
        if not self._server.stop(grace).wait(timeout=grace + STOP_CALLS_EXTRA_S):
            logger.warning(
                "calls still running %.0f s after the grace period (%d streams); stopping without them",
                STOP_CALLS_EXTRA_S,
                self.streams.open_streams(),
            )
        if self.trainer is not None:
            self.trainer.stop(timeout_s=STOP_TRAINER_S)
        self._close_ray()
        self.ingest.stop(timeout_s=STOP_COMMITS_S)
        self.watchdog.stop()
        self._server = None
        self._stopped.set()
        logger.info("learner stopped")

    def _close_ray(self) -> None:
        """Leave the Ray cluster (stopping it when the learner started it); its actors end with it."""
        if self.ray is not None:
            self.ray.close()
            self.ray = None

    def request_stop(self) -> None:
        """Ask `wait()` to return (signal handlers call this); the caller then runs `stop()`."""
        self._stop_requested.set()

    def wait(self) -> None:
        """Block until a stop is requested or `stop()` ran (from another thread)."""
        while not (self._stop_requested.wait(1.0) or self._stopped.is_set()):
            pass


def main(argv: list[str]) -> int:
    config = parse_config(LearnerConfig, argv)  # a ConfigError is one line from the `sop` front door
    if config.malloc_arena_max is not None:  # before any thread of the service starts
        limit_malloc_arenas(config.malloc_arena_max)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    service = LearnerService(config)
    port = service.start()  # a port in use is an OSError(EADDRINUSE): one line from the `sop` front door
    print(f"learner listening on port {port}", flush=True)
    if service.console is not None:
        print(f"console: {service.console.url}", flush=True)

    signals = ShutdownSignals(service.request_stop, config.server.shutdown_grace_s + EXIT_DEADLINE_EXTRA_S)
    signals.install()
    try:
        service.wait()
    finally:
        stopping = time.monotonic()
        service.stop()
        signals.uninstall()
        logger.info("stopped in %.2f s", time.monotonic() - stopping)
    return 0
