"""The learner's typed config (`configs/learner.yaml`, overridable as `--server.address 0.0.0.0:50051`).

Everything the learner writes lives under `run_dir` so that a restart with the same `run_dir` resumes:

    run_dir/replay/        the replay store (online episodes + imported offline demonstrations)
    run_dir/staging/       chunks of uploads that were cut before they completed (resumable)
    run_dir/checkpoints/   published checkpoints, the last `trainer.keep_last` of them
    run_dir/tensorboard/   training curves
    run_dir/train.jsonl    one JSON line per logged trainer step and per publication (for reports)
    run_dir/console/       the operator console's accounts (`sop console` creates the first admin)
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cloud_learner.algorithms import AlgorithmConfig, HGDaggerConfig
from cloud_learner.stream_limits import StreamLimitsConfig

MIB = 1 << 20


def _positive(owner: str, **values: float | int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value}")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: addresses no other machine can connect to."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS. Both files set: TLS on; both empty: plaintext (refused on a non-loopback address unless
    server.insecure). `sop fleet init` creates all three files."""

    cert_file: str | None = None
    key_file: str | None = None
    # When set, robots must also present a client certificate signed by this CA (mutual TLS).
    client_ca_file: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("server.tls.cert_file and server.tls.key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("server.tls.client_ca_file needs server.tls.cert_file and key_file")
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"server.tls.{name}: {path} is not a file")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC server: where it listens, how many calls it runs at once, and how it detects dead peers."""

    # host:port; port 0 picks a free port (the Python API returns it).
    address: str = "127.0.0.1:50051"
    # Threads serving calls. Long-lived streams (WatchPolicy, Operator.Session) each hold one while their
    # robot is connected, so size this for about 3 x robots + concurrent uploads.
    max_workers: int = 256
    # Calls beyond this are refused at once with RESOURCE_EXHAUSTED instead of queueing.
    max_concurrent_rpcs: int = 1024
    # HTTP/2 keep-alive pings: a peer that does not answer within the timeout is dropped, which cancels its
    # calls, so a half-open robot never wedges a handler.
    keepalive_time_s: float = 20.0
    keepalive_timeout_s: float = 10.0
    # A client stream (upload, operator session) that sends nothing for this long is cut.
    stream_idle_timeout_s: float = 60.0
    # How often a waiting WatchPolicy stream re-checks that its robot is still there.
    watch_check_interval_s: float = 1.0
    # WatchPolicy ends after this long and the robot re-opens it; bounds how long any call holds a worker.
    max_stream_lifetime_s: float = 3600.0
    # How often robots should call Heartbeat (sent to them in RegisterResponse).
    heartbeat_interval_s: float = 5.0
    # On stop, running calls get this long to finish before they are cancelled. `sop learner serve` exits
    # within shutdown_grace_s + 10 s of SIGTERM whatever clients do; a second signal ends it at once.
    shutdown_grace_s: float = 2.0
    # Concurrent streams one robot may hold, per kind (watch, upload, fetch, operator); see stream_limits.py.
    stream_limits: StreamLimitsConfig = field(default_factory=StreamLimitsConfig)
    # Threads streams may never take, so Register, Heartbeat and QueryUpload are always served.
    unary_reserve_workers: int = 16
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Serve plaintext on an address other machines can reach. Off: a non-loopback address without
    # server.tls is refused at start, because tokens, episodes and checkpoints would cross the network in
    # clear. Set it only on a network you trust end to end (or behind a TLS-terminating proxy).
    insecure: bool = False

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"server.address must be host:port, got {self.address!r}")
        if not self.tls.enabled and not self.insecure and not is_loopback_host(host):
            raise ValueError(
                f"server.address {self.address!r} is reachable from other machines but server.tls is not "
                "configured: set server.tls.cert_file, key_file and client_ca_file (`sop fleet init` creates "
                "them), or set server.insecure=true to serve plaintext on a network you trust"
            )
        _positive(
            "server",
            max_workers=self.max_workers,
            max_concurrent_rpcs=self.max_concurrent_rpcs,
            keepalive_time_s=self.keepalive_time_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            stream_idle_timeout_s=self.stream_idle_timeout_s,
            watch_check_interval_s=self.watch_check_interval_s,
            max_stream_lifetime_s=self.max_stream_lifetime_s,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        if self.shutdown_grace_s < 0:
            raise ValueError(f"server.shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if not 1 <= self.unary_reserve_workers < self.max_workers:
            raise ValueError(
                f"server.unary_reserve_workers must be in [1, server.max_workers - 1 = {self.max_workers - 1}], "
                f"got {self.unary_reserve_workers}"
            )

    @property
    def max_streams(self) -> int:
        """Streams (of all robots) that may run at once: the worker threads not reserved for unary calls."""
        return self.max_workers - self.unary_reserve_workers


@dataclass(frozen=True)
class AuthConfig:
    """Per-robot tokens: a file mapping robot id -> sha256 of its token (see `sop.credentials`)."""

    token_hashes_file: str | None = None
    # Without a token file the learner refuses to start unless this is set: then any robot id is believed.
    # Only for a laptop experiment on 127.0.0.1.
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        if self.token_hashes_file is None and not self.allow_unauthenticated:
            raise ValueError(
                "auth.token_hashes_file is not set: give the robot-id -> token-hash file, or set "
                "auth.allow_unauthenticated=true for a local experiment"
            )


@dataclass(frozen=True)
class IngestConfig:
    """Episode uploads: limits, back-pressure, durability."""

    # Largest chunk payload accepted (the protocol caps it at 1 MiB).
    max_chunk_bytes: int = MIB
    # Largest serialized episode accepted (5 min at 30 Hz with one 64x64 camera is ~110 MB).
    max_episode_bytes: int = 512 * MIB
    # Uploads in progress at once (receiving, decoding or waiting for the commit), and the sum of their
    # announced sizes. One more is answered RESOURCE_EXHAUSTED and the robot backs off; ingest memory
    # stays near 3 x max_pending_bytes (chunks, assembled payload, parsed record).
    max_pending_uploads: int = 32
    max_pending_bytes: int = 2048 * MIB
    # Threads appending to the replay store; several overlap one episode's fsync with the next's encoding.
    commit_workers: int = 4
    # fsync every committed episode before the receipt goes out (off only for benchmarks of the wire).
    durable: bool = True
    # Every chunk but the last must carry at least this much (robots send max_chunk_bytes-sized chunks);
    # 1-byte chunks would cost a message, a dict entry and a staged file per byte.
    min_chunk_bytes: int = 64 * 1024
    # Bytes one robot may hold in unfinished uploads: staged on disk plus received by its running streams.
    # A chunk beyond it cuts the upload with RESOURCE_EXHAUSTED (what came so far stays staged). At least
    # max_episode_bytes, so that any one episode fits.
    max_staged_bytes_per_robot: int = 1024 * MIB
    # One upload stream may run this long; then it is cut with RESOURCE_EXHAUSTED, its chunks are staged
    # and the robot resumes in a new stream. Checked as chunks arrive: a silent stream is cut sooner by
    # server.stream_idle_timeout_s.
    max_upload_s: float = 600.0
    # After upload_rate_grace_s, a stream bringing fewer bytes per second than this (averaged since it
    # started) is cut the same way: a trickle must not hold an upload slot for its whole lifetime.
    min_upload_bytes_per_s: float = 16 * 1024
    upload_rate_grace_s: float = 30.0
    # Staged chunks of an upload nobody touched for this long (robot gone, episode evicted from its spool)
    # are removed, checked every staging_prune_interval_s by a background thread.
    staging_abandoned_after_s: float = 3600.0
    staging_prune_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.max_chunk_bytes <= MIB:
            raise ValueError(f"ingest.max_chunk_bytes must be in 1..{MIB}, got {self.max_chunk_bytes}")
        if not 0 < self.min_chunk_bytes <= self.max_chunk_bytes:
            raise ValueError(
                f"ingest.min_chunk_bytes must be in 1..ingest.max_chunk_bytes ({self.max_chunk_bytes}), "
                f"got {self.min_chunk_bytes}"
            )
        if self.max_episode_bytes < self.max_chunk_bytes:
            raise ValueError("ingest.max_episode_bytes must be at least ingest.max_chunk_bytes")
        if self.max_pending_bytes < self.max_episode_bytes:
            raise ValueError("ingest.max_pending_bytes must be at least ingest.max_episode_bytes")
        if self.max_staged_bytes_per_robot < self.max_episode_bytes:
            raise ValueError(
                "ingest.max_staged_bytes_per_robot must be at least ingest.max_episode_bytes "
                f"({self.max_episode_bytes}), or an episode that size could never be uploaded"
            )
        if self.min_upload_bytes_per_s < 0 or self.upload_rate_grace_s < 0:
            raise ValueError("ingest.min_upload_bytes_per_s and ingest.upload_rate_grace_s must be >= 0")
        _positive(
            "ingest",
            max_pending_uploads=self.max_pending_uploads,
            commit_workers=self.commit_workers,
            max_upload_s=self.max_upload_s,
            staging_abandoned_after_s=self.staging_abandoned_after_s,
            staging_prune_interval_s=self.staging_prune_interval_s,
        )


class MixingLossScale(enum.StrEnum):
    """What SOP's mixing rule reads as L: the raw losses, or each divided by the task's scale.

    SOP's rule was written for a large flow-matching VLA whose losses are of order one. A small diffusion
    policy's losses are 0.04-0.15, where exp(a L) is ~1 for both sources and the share sits at 0.5 whatever
    the data. `task_mean` divides both of a task's losses by their mean, so the rule acts on their ratio at
    any scale: equal losses give sigmoid(a - 1) (0.62 online at a = 1.5), online twice the offline loss
    0.79, half of it 0.42.
    """

    RAW = "raw"
    TASK_MEAN = "task_mean"


@dataclass(frozen=True)
class ReplayConfig:
    """What the trainer samples: offline demonstrations and online episodes, mixed per task as in SOP."""

    # Episode stores of demonstrations imported (once, idempotently by episode id) into the replay store.
    offline_stores: list[str] = field(default_factory=list)
    # Tasks to train on; empty: every task present in the replay store.
    tasks: list[str] = field(default_factory=list)
    # SOP mixing: w_on = exp(a L_on) / (exp(a L_on) + exp(L_off)), clipped to [min, max] online share.
    adaptive_mixing: bool = True
    mixing_alpha: float = 1.5
    # raw: the paper's L; task_mean: each task's two losses divided by their mean (see MixingLossScale).
    mixing_loss_scale: MixingLossScale = MixingLossScale.TASK_MEAN
    # L_on and L_off are the mean per-sample losses over the last this-many trainer steps.
    loss_window_steps: int = 200
    min_online_share: float = 0.2
    max_online_share: float = 0.8
    # The online share before any online loss has been measured (and when adaptive_mixing is off).
    initial_online_share: float = 0.5
    # Online frames of one task the trainer holds in memory (~0.2 KiB each for a 39-dim state; images stay on
    # disk). Beyond it the oldest online episodes of the task leave the sampled index (they stay in the
    # store), so a learner that receives data for weeks keeps a bounded memory. 1e6 frames is ~9 robot-hours
    # at 30 Hz per task. null: unbounded (the index grows with the data).
    max_online_frames_per_task: int | None = 1_000_000

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mixing_loss_scale", MixingLossScale(self.mixing_loss_scale))
        except ValueError:
            raise ValueError(
                f"replay.mixing_loss_scale is {self.mixing_loss_scale!r}, expected one of "
                f"{[m.value for m in MixingLossScale]}"
            ) from None
        _positive("replay", mixing_alpha=self.mixing_alpha, loss_window_steps=self.loss_window_steps)
        if self.max_online_frames_per_task is not None:
            _positive("replay", max_online_frames_per_task=self.max_online_frames_per_task)
        if not 0.0 <= self.min_online_share <= self.max_online_share <= 1.0:
            raise ValueError(
                "replay.min_online_share and replay.max_online_share must satisfy 0 <= min <= max <= 1, "
                f"got {self.min_online_share}, {self.max_online_share}"
            )
        if not self.min_online_share <= self.initial_online_share <= self.max_online_share:
            raise ValueError(
                "replay.initial_online_share must lie between min_online_share and max_online_share"
            )


@dataclass(frozen=True)
class TrainerConfig:
    """The asynchronous trainer: what it starts from, how often it publishes, what it keeps."""

    # Checkpoint (directory or .safetensors blob, sop/checkpoint.py format) the first run starts from.
    # A restart ignores it and continues from the newest published checkpoint in run_dir.
    base_checkpoint: str | None = None
    # Run the trainer at all (off: the learner only ingests and serves checkpoints).
    enabled: bool = True
    batch_size: int = 64
    # Publish (store + announce to every robot) a checkpoint every this many steps; SOP used 25.
    publish_every_steps: int = 25
    # Published checkpoints kept on disk; older ones are deleted.
    keep_last: int = 5
    # Ed25519 private key (PEM, `sop fleet init` writes learner/checkpoint_signing.key) that signs every
    # announced checkpoint; robots holding its public half refuse checkpoints it did not sign. None: unsigned.
    signing_key_file: str | None = None
    log_every_steps: int = 25
    # Stop after this many steps (None: train until the learner stops).
    max_steps: int | None = None
    # torch intra-op threads for the trainer; leave cores to ingest on a small machine.
    num_threads: int = 1
    seed: int = 0
    device: str = "cpu"
    # Steps to wait (sleeping this long each) when the replay holds nothing trainable yet.
    idle_sleep_s: float = 0.5
    # Data-parallel training workers (`backend: ray`): each step's batch_size samples are split across them
    # and their gradients averaged (DDP), so the update is that of one worker on the whole batch. The local
    # backend trains in the learner process: 1.
    num_workers: int = 1

    def __post_init__(self) -> None:
        _positive(
            "trainer",
            num_workers=self.num_workers,
            batch_size=self.batch_size,
            publish_every_steps=self.publish_every_steps,
            keep_last=self.keep_last,
            log_every_steps=self.log_every_steps,
            num_threads=self.num_threads,
            idle_sleep_s=self.idle_sleep_s,
        )
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"trainer.max_steps must be >= 0 or null, got {self.max_steps}")
        if self.base_checkpoint is not None and not Path(self.base_checkpoint).exists():
            raise ValueError(f"trainer.base_checkpoint: {self.base_checkpoint} does not exist")
        if self.signing_key_file is not None and not Path(self.signing_key_file).is_file():
            raise ValueError(f"trainer.signing_key_file: {self.signing_key_file} is not a file")


@dataclass(frozen=True)
class ConsoleConfig:
    """The operator console (cloud_learner/console/): a web page served by the learner process."""

    # host:port of the console's HTTP + WebSocket server; port 0 picks a free one. null: no console.
    # TLS with server.tls's certificate when the learner has one; a non-loopback address without it is
    # refused unless server.insecure, as for the gRPC server (passwords and session cookies would travel
    # in clear).
    address: str | None = None
    # A login lasts this long; then the page asks for the password again.
    session_ttl_s: float = 8 * 3600.0
    # An operator holds a robot they took over until they hand it back, their page disconnects, or they
    # send no command for this long (then the robot is handed back to its policy).
    lease_ttl_s: float = 30.0
    # Teleop commands one robot accepts per second (the robots' control rate); faster ones are refused.
    teleop_rate_hz: float = 30.0
    # How often the page's live view (fleet, the watched robot, the learner) is refreshed.
    update_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if self.address is not None:
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"console.address must be host:port or null, got {self.address!r}")
        _positive(
            "console",
            session_ttl_s=self.session_ttl_s,
            lease_ttl_s=self.lease_ttl_s,
            teleop_rate_hz=self.teleop_rate_hz,
            update_interval_s=self.update_interval_s,
        )


# Algorithms whose update needs only the batch (no replay store of its own), so data-parallel workers can
# run it: RECAP's value model reads the store, and is trained in one process only.
RAY_ALGORITHMS = ("hg_dagger",)


class LearnerBackend(enum.StrEnum):
    """Where the learner's work runs: all in the learner process, or partly on a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class RayConfig:
    """The Ray cluster of `backend: ray` (see the README's "Scaling out on Ray")."""

    # Cluster to join: "auto" (the one `ray start --head` began on this machine), "host:6379", or
    # "ray://host:10001" (Ray Client). null: the learner starts a one-machine cluster and stops it on exit.
    address: str | None = None
    # CPUs and GPUs of the cluster the learner starts (null: what Ray detects). Ignored with an address.
    num_cpus: int | None = None
    num_gpus: int | None = None
    # What each data-parallel training worker (trainer.num_workers of them) reserves. With GPUs
    # (trainer.device: cuda) the workers talk NCCL, on CPUs gloo.
    cpus_per_train_worker: float = 1.0
    gpus_per_train_worker: float = 0.0
    # Ray namespace of the learner's actors (two learners on one cluster need two namespaces).
    namespace: str = "sop-learner"

    def __post_init__(self) -> None:
        _positive("ray", cpus_per_train_worker=self.cpus_per_train_worker)
        if self.gpus_per_train_worker < 0:
            raise ValueError(f"ray.gpus_per_train_worker must be >= 0, got {self.gpus_per_train_worker}")
        if self.num_cpus is not None:
            _positive("ray", num_cpus=self.num_cpus)
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"ray.num_gpus must be >= 0 or null, got {self.num_gpus}")


@dataclass(frozen=True)
class LearnerConfig:
    """`sop learner serve`: ingest robot episodes, train asynchronously, publish checkpoints."""

    run_dir: str = "runs/learner"
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: AlgorithmConfig = field(default_factory=HGDaggerConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    # local: everything in the learner process (nothing else to start); ray: the trainer runs as
    # trainer.num_workers data-parallel workers on the Ray cluster of the `ray` section.
    backend: LearnerBackend = LearnerBackend.LOCAL
    ray: RayConfig = field(default_factory=RayConfig)
    log_level: str = "INFO"
    # glibc malloc arenas of `sop learner serve` (sop/malloc_arenas.py): with one per thread its resident
    # memory creeps up with traffic; 2 keeps it flat. null: glibc's default (8 per core).
    malloc_arena_max: int | None = 2

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ValueError("run_dir must be a directory path")
        try:
            object.__setattr__(self, "backend", LearnerBackend(self.backend))
        except ValueError:
            raise ValueError(
                f"backend is {self.backend!r}, expected one of {[b.value for b in LearnerBackend]}"
            ) from None
        if self.backend is LearnerBackend.LOCAL and self.trainer.num_workers != 1:
            raise ValueError(
                f"trainer.num_workers is {self.trainer.num_workers} but the local backend trains in one "
                "process: set backend: ray for data-parallel workers, or trainer.num_workers: 1"
            )
        if self.trainer.batch_size < self.trainer.num_workers:
            raise ValueError(
                f"trainer.batch_size ({self.trainer.batch_size}) must be at least trainer.num_workers "
                f"({self.trainer.num_workers}): each worker trains on its share of the batch"
            )
        if self.backend is LearnerBackend.RAY and self.algorithm.type not in RAY_ALGORITHMS:
            raise ValueError(
                f"backend: ray trains {', '.join(RAY_ALGORITHMS)} so far, not algorithm.type "
                f"{self.algorithm.type!r} (its update reads the replay store): use backend: local"
            )
        on_gpu = self.trainer.device.startswith("cuda")
        if self.backend is LearnerBackend.RAY and on_gpu != (self.ray.gpus_per_train_worker > 0):
            raise ValueError(
                f"trainer.device is {self.trainer.device!r} but ray.gpus_per_train_worker is "
                f"{self.ray.gpus_per_train_worker}: give each worker a GPU (e.g. 1) to train on cuda, "
                "or 0 to train on cpu"
            )
        if self.malloc_arena_max is not None:
            _positive("learner", malloc_arena_max=self.malloc_arena_max)
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        console_host = (self.console.address or "").rpartition(":")[0]
        plaintext = not self.server.tls.enabled and not self.server.insecure
        if console_host and plaintext and not is_loopback_host(console_host):
            raise ValueError(
                f"console.address {self.console.address!r} is reachable from other machines but "
                "server.tls is not configured, so passwords and session cookies would cross the network "
                "in clear: set server.tls.cert_file and key_file (the console serves HTTPS with them), "
                "or set server.insecure=true on a network you trust"
            )

    @property
    def replay_dir(self) -> Path:
        return Path(self.run_dir) / "replay"

    @property
    def staging_dir(self) -> Path:
        return Path(self.run_dir) / "staging"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.run_dir) / "tensorboard"

    @property
    def train_log_path(self) -> Path:
        return Path(self.run_dir) / "train.jsonl"

    @property
    def console_dir(self) -> Path:
        return Path(self.run_dir) / "console"
