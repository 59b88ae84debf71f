"""The robot daemon's typed config (`configs/robot.yaml`, overridable as `--control.rate_hz 50`).

Everything a daemon writes lives under `data_dir/<robot_id>/`, so a restart with the same directory
resumes where the last run stopped (a killed daemon included):

    spool/        the zarr episode store: episodes recorded and not yet acknowledged by the learner
    quarantine/   episodes the learner refused as invalid (kept with the reason, never retried forever)
    policy/       the last good checkpoint (what a restart runs when the learner is unreachable)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from robot_client.kinds import OPERATOR_KINDS, ROBOT_KINDS
from sop.policies.configuration_diffusion import RTISamplerConfig, SamplerConfig

MIB: Final = 1 << 20
GIB: Final = 1 << 30


class SwapPoint(enum.StrEnum):
    """Where a new checkpoint is swapped in (`policy.swap_at`)."""

    EPISODE = "episode"  # at the next episode boundary
    CHUNK = "chunk"  # at the next action-chunk boundary within an episode


class InferenceMode(enum.StrEnum):
    """Where the policy's chunks are computed (`policy.inference`)."""

    ASYNC = (
        "async"  # on an inference thread while the current chunk executes (robot_client/async_inference.py)
    )
    SYNC = "sync"  # inside the control tick that needs the chunk


class PartialEpisodePolicy(enum.StrEnum):
    """What a restart does with an episode a killed daemon left half-written (`spool.partial_episodes`)."""

    UPLOAD_ABORTED = "upload_aborted"  # commit what was flushed, labelled aborted, and upload it
    DISCARD = "discard"


def _positive(owner: str, **values: float | int) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value}")


def _non_negative(owner: str, **values: float | int) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{owner}.{name} must be >= 0, got {value}")


def _member[E: enum.StrEnum](owner: str, name: str, kind: type[E], value: str) -> E:
    """`value` as a member of `kind` (Python callers may pass the plain string; the YAML spelling is the same)."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{owner}.{name} must be one of {[k.value for k in kind]}, got {value!r}") from None


def _factory_path(owner: str, value: str) -> None:
    module, sep, attribute = value.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{owner}.factory must be 'package.module:function', got {value!r}")


@dataclass(frozen=True)
class LearnerLinkConfig:
    """How the robot reaches the learner. Robots are always the gRPC clients (NAT-friendly)."""

    # host:port of the learner; None runs the robot offline: it records into its spool and uploads nothing.
    address: str | None = None
    # File holding this robot's token alone; sent as `authorization: Bearer <token>` on every call.
    token_file: str | None = None
    # PEM file of the CA that signed the learner's certificate; set: TLS, unset: plaintext.
    tls_ca_file: str | None = None
    # This robot's client certificate and its private key (PEM), presented to a learner that requires
    # mutual TLS (server.tls.client_ca_file). Set together, and only with tls_ca_file.
    # `sop fleet init` writes them as robots/<robot-id>/client.pem and client.key.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Host name to check the learner's certificate against when it differs from `address` (tests, IPs).
    tls_server_name: str | None = None
    # Deadline of every unary call (Register, QueryUpload, Heartbeat).
    rpc_timeout_s: float = 5.0
    # Deadline of one UploadEpisode stream (the whole remaining episode must go through within it).
    upload_timeout_s: float = 120.0
    # Deadline of one FetchCheckpoint stream; an interrupted fetch resumes from its offset.
    fetch_timeout_s: float = 120.0
    # WatchPolicy and Operator.Session are re-opened after this long: a half-open connection is noticed
    # at the latest then, and no call is ever open without a deadline.
    stream_timeout_s: float = 300.0
    # HTTP/2 keep-alive pings from the robot (0: off). The learner pings its robots itself; turn this on
    # only when the learner allows client pings this often (grpc.http2.min_recv_ping_interval_without_data_ms).
    keepalive_time_s: float = 0.0
    # Reconnect back-off of the watch and session streams (exponential with full jitter).
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.address is not None:
            host, sep, port = self.address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(f"learner.address must be host:port, got {self.address!r}")
        for name in ("token_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"learner.{name}: {path} is not a file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("learner.tls_cert_file and learner.tls_key_file must be set together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError(
                "learner.tls_cert_file needs learner.tls_ca_file (the CA of the learner's certificate)"
            )
        _positive(
            "learner",
            rpc_timeout_s=self.rpc_timeout_s,
            upload_timeout_s=self.upload_timeout_s,
            fetch_timeout_s=self.fetch_timeout_s,
            stream_timeout_s=self.stream_timeout_s,
            reconnect_initial_s=self.reconnect_initial_s,
            reconnect_max_s=self.reconnect_max_s,
        )
        _non_negative("learner", keepalive_time_s=self.keepalive_time_s)
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("learner.reconnect_max_s must be >= learner.reconnect_initial_s")


@dataclass(frozen=True)
class ControlConfig:
    """The control loop: its rate, how long an episode may run, how many episodes to run."""

    # Control rate in Hz; every tick is scheduled on an absolute grid so errors do not accumulate.
    rate_hz: float = 30.0
    # Run as fast as the CPU allows (simulation); the grid and deadline checks are off then.
    free_running: bool = False
    # Robot-side cap on steps per episode (the simulator may end the episode earlier).
    max_episode_steps: int = 200
    # Stop after this many episodes (0: run until stopped).
    max_episodes: int = 0
    # End the episode at the first step the robot reports success (the simulator's success test).
    end_on_success: bool = True
    # Pause between episodes, seconds (a real arm may need time to be reset by a person or a script).
    episode_gap_s: float = 0.0
    # Python's thread switch interval for the daemon process: how long another thread may hold the GIL
    # before the control thread gets it back. The default 5 ms would show up as 5 ms jitter.
    gil_switch_interval_s: float = 0.0005
    # SCHED_FIFO priority (1-99) for the control thread, so a busy CPU cannot delay its wake-ups
    # (needs CAP_SYS_NICE or root; 0: normal scheduling). The thread sleeps between ticks, so it never
    # starves the rest of the machine.
    realtime_priority: int = 0
    # Telemetry to the operator console, Hz (latest state only; never queues behind the control loop).
    telemetry_hz: float = 5.0

    def __post_init__(self) -> None:
        _positive(
            "control",
            rate_hz=self.rate_hz,
            max_episode_steps=self.max_episode_steps,
            gil_switch_interval_s=self.gil_switch_interval_s,
            telemetry_hz=self.telemetry_hz,
        )
        _non_negative("control", max_episodes=self.max_episodes, episode_gap_s=self.episode_gap_s)
        if not 0 <= self.realtime_priority <= 99:
            raise ValueError(f"control.realtime_priority must be in 0..99, got {self.realtime_priority}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class RobotPluginConfig:
    """Which robot the daemon drives."""

    # The robot kind, looked up by name (robot_client/kinds.py): metaworld, a simulated task (provided by
    # fleet_harness/robot_plugins.py); lerobot, an arm through a lerobot `Robot`; factory, any
    # `robot_client.robots.Robot` built by `factory`; or a kind another installed package provides.
    type: str = "metaworld"
    # Task id (Meta-World name, e.g. "reach-v3"); for a real arm, the task it is set up for.
    task: str = "reach-v3"
    # Instruction given to the policy. Empty: the simulator's paraphrase (metaworld) or the task id.
    instruction: str = ""
    # Seed of the simulated layouts (each episode draws the next layout of this seed's sequence).
    seed: int = 0
    # Add a camera image to the observation (metaworld), rendered off-screen at image_size x image_size.
    image: bool = False
    camera: str = "corner2"
    image_size: int = 64
    # type=metaworld: the deployment conditions the simulated robot runs under, a preset name of the simulator
    # (configs/deployments/<name>.yaml: shifted-objects, heavy-objects, latency, ...); nominal: none. The
    # daemon only passes the name on: the robot kind looks it up among the presets that exist.
    deployment: str = "nominal"
    # type=lerobot: YAML file of a lerobot RobotConfig, with its `type` (e.g. so101_follower) and port.
    lerobot_config: str | None = None
    # type=factory: "package.module:function" returning a `robot_client.robots.Robot`.
    factory: str | None = None

    def __post_init__(self) -> None:
        ROBOT_KINDS.check(self.type)
        if not self.task:
            raise ValueError("robot.task must name a task")
        _positive("robot", image_size=self.image_size)
        if not isinstance(self.deployment, str) or not self.deployment:
            raise ValueError(f"robot.deployment must name a deployment preset, got {self.deployment!r}")
        if self.type == "lerobot" and self.lerobot_config is None:
            raise ValueError("robot.lerobot_config is required when robot.type is lerobot")
        if self.type == "factory":
            if self.factory is None:
                raise ValueError("robot.factory is required when robot.type is factory")
            _factory_path("robot", self.factory)


@dataclass(frozen=True)
class OperatorConfig:
    """Who may take over: a local operator (simulated or a teleop device) and/or the remote console."""

    # The operator kind, looked up by name (robot_client/kinds.py): none | simulated (the scripted expert,
    # provided by fleet_harness/robot_plugins.py) | lerobot_teleop (a lerobot Teleoperator) | factory | a kind
    # another installed package provides.
    type: str = "none"
    # Accept the console's take-over / hand-back / teleop actions / outcome labels over Operator.Session.
    remote: bool = True
    seed: int = 0
    # type=lerobot_teleop: YAML file of a lerobot TeleoperatorConfig (with its `type`).
    teleop_config: str | None = None
    # type=lerobot_teleop: without intervention events from the device, drive whenever it is read (True)
    # or only while the console has taken over (False).
    teleop_always_intervenes: bool = False
    # A remote operator's teleop action older than this is not replayed: the robot holds still instead.
    teleop_timeout_s: float = 0.5
    # type=factory: "package.module:function" returning a `robot_client.operators.OperatorInput`.
    factory: str | None = None

    def __post_init__(self) -> None:
        OPERATOR_KINDS.check(self.type)
        _positive("operator", teleop_timeout_s=self.teleop_timeout_s)
        if self.type == "lerobot_teleop" and self.teleop_config is None:
            raise ValueError("operator.teleop_config is required when operator.type is lerobot_teleop")
        if self.type == "factory":
            if self.factory is None:
                raise ValueError("operator.factory is required when operator.type is factory")
            _factory_path("operator", self.factory)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy the robot runs and how new checkpoints are taken in."""

    # Base checkpoint (directory or .safetensors blob, sop/checkpoint.py format) used when no newer
    # checkpoint has been received yet. Without it, and without a last good checkpoint, the robot waits
    # for the learner's first checkpoint before it starts an episode.
    base_checkpoint: str | None = None
    # Where a new checkpoint is swapped in: at the next episode boundary (default), or at the next action
    # chunk boundary within an episode.
    swap_at: SwapPoint = SwapPoint.EPISODE
    # How the policy draws each chunk: the policy's own sampler config (sop/policies/configuration_diffusion.py),
    # a choice selected by `type`: `sampler: {type: ddim, steps: 10}` or `{type: rti, timesteps: [20, 10, 0]}`.
    # RTI (the default) warm-starts each chunk from the previous one.
    sampler: SamplerConfig = field(default_factory=RTISamplerConfig)
    # Where chunks are computed when the loop runs on its grid: "async" (default) on an inference thread
    # while the current chunk executes, so no tick waits for inference; "sync" inside the tick that needs
    # one. A free-running loop (simulation without a grid) always computes in the tick: it has no deadline.
    inference: InferenceMode = InferenceMode.ASYNC
    # Async: the next chunk starts this many ticks before the current one has executed its execution
    # horizon Ta, so inference up to this long replaces chunks after ~Ta actions as synchronous execution
    # does; slower inference runs on into the rest of the current chunk before the robot holds.
    inference_lead_steps: int = 2
    # torch intra-op threads of the policy (the control thread and the uploader share a small CPU).
    num_threads: int = 1
    device: str = "cpu"
    # The learner's Ed25519 public key (PEM; `sop fleet init` writes robots/<id>/checkpoint_signing.pub).
    # Set: a checkpoint whose announcement is unsigned or not signed by this key is refused and the robot
    # keeps its last good policy. None: checkpoints are trusted on their sha256 alone.
    checkpoint_public_key_file: str | None = None
    # Before a checkpoint becomes "last good" (and before it is swapped in, or run at start), it acts on a
    # recorded observation of this robot off the control thread: it must return finite actions of the
    # robot's action shape for its first chunk and one warm-started chunk within this many seconds, or it
    # is refused and the robot keeps the policy it runs.
    dry_run_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "swap_at", _member("policy", "swap_at", SwapPoint, self.swap_at))
        object.__setattr__(self, "inference", _member("policy", "inference", InferenceMode, self.inference))
        _non_negative("policy", inference_lead_steps=self.inference_lead_steps)
        _positive("policy", num_threads=self.num_threads, dry_run_timeout_s=self.dry_run_timeout_s)
        if self.base_checkpoint is not None and not Path(self.base_checkpoint).exists():
            raise ValueError(f"policy.base_checkpoint: {self.base_checkpoint} does not exist")
        key_file = self.checkpoint_public_key_file
        if key_file is not None and not Path(key_file).is_file():
            raise ValueError(f"policy.checkpoint_public_key_file: {key_file} is not a file")


@dataclass(frozen=True)
class SpoolConfig:
    """The local spool: every step is written as the episode runs, so a crash loses at most a few steps."""

    # Cap on the spool's size on disk. When a new episode would start above it, the oldest fully
    # autonomous episodes (no intervention frames) are evicted first, each one logged and counted; when
    # only episodes with interventions are left, the new episode is run but not recorded, logged and
    # counted. Intervention frames are the scarcest data a robot produces, so they are the last to go.
    max_bytes: int = 8 * GIB
    # What a restart does with an episode a killed daemon left half-written: upload_aborted (recommended:
    # its intervention frames are valid expert labels) or discard.
    partial_episodes: PartialEpisodePolicy = PartialEpisodePolicy.UPLOAD_ABORTED
    # fsync the spool as it is written (off only in benchmarks that measure something else).
    durable: bool = True
    # Steps queued between the control thread and the spool writer; the control loop never waits on disk.
    # A full queue drops the step, and counts and logs the drop.
    recorder_queue_steps: int = 1024
    # Steps buffered before they are written to the partial episode on disk: what a crash can lose at most
    # (plus the queue). Each write costs a few milliseconds on the writer thread.
    flush_every_steps: int = 10

    def __post_init__(self) -> None:
        _positive(
            "spool",
            max_bytes=self.max_bytes,
            recorder_queue_steps=self.recorder_queue_steps,
            flush_every_steps=self.flush_every_steps,
        )
        choice = _member("spool", "partial_episodes", PartialEpisodePolicy, self.partial_episodes)
        object.__setattr__(self, "partial_episodes", choice)


@dataclass(frozen=True)
class UploadConfig:
    """The background uploader."""

    # Largest chunk sent (the learner may ask for less in RegisterResponse; the protocol caps it at 1 MiB).
    max_chunk_bytes: int = MIB
    # Exponential back-off with full jitter between failed attempts.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # RESOURCE_EXHAUSTED (the learner sheds load) waits at least this long before the next try.
    resource_exhausted_min_s: float = 2.0
    # FAILED_PRECONDITION (chunks the learner holds disagree with ours) is retried this many times, then
    # the episode is quarantined like an invalid one.
    max_precondition_failures: int = 3
    # How often the uploader looks at the spool when nothing wakes it.
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.max_chunk_bytes <= MIB:
            raise ValueError(f"upload.max_chunk_bytes must be in 1..{MIB}, got {self.max_chunk_bytes}")
        _positive(
            "upload",
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            max_precondition_failures=self.max_precondition_failures,
            poll_interval_s=self.poll_interval_s,
        )
        _non_negative("upload", resource_exhausted_min_s=self.resource_exhausted_min_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("upload.backoff_max_s must be >= upload.backoff_initial_s")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics, periodic log lines and heartbeats."""

    # Port of the Prometheus HTTP endpoint (None: no endpoint; the metrics still go to logs and heartbeats).
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    # A log line with the health figures every this many seconds (0: never).
    log_interval_s: float = 10.0
    # Heartbeat period; None: what the learner asks for in RegisterResponse.
    heartbeat_interval_s: float | None = None
    # Loop periods, inference times etc. kept for the p50 / p99 figures.
    window: int = 2048
    # Append one JSON line per finished episode here (None: no log). The fleet harness reads it.
    episode_log: str | None = None

    def __post_init__(self) -> None:
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"metrics.http_port must be in 0..65535, got {self.http_port}")
        _non_negative("metrics", log_interval_s=self.log_interval_s)
        if self.heartbeat_interval_s is not None:
            _positive("metrics", heartbeat_interval_s=self.heartbeat_interval_s)
        _positive("metrics", window=self.window)


@dataclass(frozen=True)
class RobotConfig:
    """`sop robot run`: one robot, its policy, its operator inputs, its spool and its link to the learner."""

    robot_id: str = "robot-0"
    # Root of everything the daemon writes; the robot's files go to data_dir/<robot_id>/.
    data_dir: str = "runs/robots"
    learner: LearnerLinkConfig = field(default_factory=LearnerLinkConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    robot: RobotPluginConfig = field(default_factory=RobotPluginConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log_level: str = "INFO"
    # SIGTERM / SIGINT: the episode in progress ends as `aborted`, the spool writer flushes it and every
    # thread is asked to stop; what is not done after this many seconds is abandoned, and the process
    # exits at the latest FORCED_EXIT_MARGIN_S (5 s) later, with the stuck threads' tracebacks on stderr.
    # A partial episode left by that is recovered at the next start. A second signal exits at once.
    shutdown_grace_s: float = 5.0
    # > 0: do not run the robot; upload what the spool holds (recovered partial episodes included), waiting
    # at most this many seconds, then exit (status 0 when the spool is empty, 3 when it is not). For a
    # robot going into maintenance or out of service: `sop robot run ... --drain_timeout_s 600`.
    drain_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.shutdown_grace_s >= 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if not self.robot_id or any(c.isspace() or c in "/\\" for c in self.robot_id):
            raise ValueError(
                f"robot_id must be a non-empty name without spaces or slashes, got {self.robot_id!r}"
            )
        if not self.data_dir:
            raise ValueError("data_dir must be a directory path")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def robot_dir(self) -> Path:
        return Path(self.data_dir) / self.robot_id

    @property
    def spool_dir(self) -> Path:
        return self.robot_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.robot_dir / "quarantine"

    @property
    def policy_dir(self) -> Path:
        return self.robot_dir / "policy"
