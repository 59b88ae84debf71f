"""`sop bench robot`: control-loop timing at 30 Hz while the daemon uploads and swaps checkpoints.

One run measures, side by side on the same machine, a Meta-World robot driven by the default state
diffusion policy (RTI sampler) in four phases of `duration_s` each:

    idle               offline: no uploads, no swaps (the baseline)
    upload+swap        a learner on loopback; the spool is kept full of camera episodes (64x64, 200 steps)
                       so the uploader streams continuously; a new checkpoint every `swap_every_s`,
                       swapped at the next episode boundary
    upload+swap chunk  the same, swapped at the next action-chunk boundary (inside the timed grid)
    upload+swap fifo   the same as upload+swap with the control thread in SCHED_FIFO (if permitted)

The learner is a minimal sink (register, resumable chunked upload with sha256 check, checkpoint watch and
fetch) in a separate process, so its CPU time competes for the cores as a co-located learner would but not
for the daemon's GIL. Reported per phase: period error |actual - nominal period| p50 / p99 / max at tick
start, observation-to-action latency p50 / p99 (a tick that computes a chunk sends its action after
the inference), inference ms per chunk, deadline misses, MB uploaded, swaps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import command_line, markdown_table, percentile, write_report
from robot_client.config import (
    ControlConfig,
    InferenceMode,
    LearnerLinkConfig,
    MetricsConfig,
    OperatorConfig,
    PolicyConfig,
    RobotConfig,
    RobotPluginConfig,
    SwapPoint,
)
from robot_client.daemon import RobotDaemon
from sop.config import parse_config

log = logging.getLogger(__name__)

PHASES = ("idle", "upload+swap", "upload+swap chunk", "upload+swap fifo")


@dataclass(frozen=True)
class RobotBenchConfig:
    """What `sop bench robot` measures; the defaults are the reported run."""

    duration_s: float = 30.0
    rate_hz: float = 30.0
    task: str = "reach-v3"
    max_episode_steps: int = 200
    # Camera episodes kept waiting in the spool during the loaded phases (each 200 x 64x64x3 ~ 2.5 MB).
    backlog_episodes: int = 4
    backlog_image_size: int = 64
    swap_every_s: float = 4.0
    realtime_priority: int = 50
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    # Policies measured: default (the fleet's state policy) and small (inference of a few ms).
    policies: list[str] = field(default_factory=lambda: ["default", "small"])
    # How the daemon computes chunks (`policy.inference`): async (the default) and/or sync, side by side.
    inference: list[str] = field(default_factory=lambda: ["async"])
    # Also write every phase's figures as JSON to this file (null: only the markdown report).
    json: str | None = None
    work_dir: str = "runs/bench_robot"
    output: str = "benchmarks/results/robot.md"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [p for p in self.phases if p not in PHASES]
        if unknown:
            raise ValueError(f"phases: {unknown} are not among {list(PHASES)}")
        sizes = [p for p in self.policies if p not in ("default", "small")]
        if sizes:
            raise ValueError(f"policies: {sizes} are not among ['default', 'small']")
        modes = [m for m in self.inference if m not in tuple(InferenceMode)]
        if modes or not self.inference:
            raise ValueError(f"inference: {modes or 'empty'}: pick from {[str(m) for m in InferenceMode]}")
        for name in ("duration_s", "rate_hz", "max_episode_steps", "swap_every_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


# ---- the sink learner (separate process) ------------------------------------------------------------------


def run_sink_learner(
    templates: list[str], swap_every_s: float, port_out: Any, publishing: Any, stop: Any
) -> None:
    """A minimal learner: uploads are reassembled and hash-checked; while `publishing` is set it publishes
    a new checkpoint version every `swap_every_s` (the template blobs, re-versioned in turn)."""
    import grpc

    from sop.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
    from sop.data.upload_chunks import ChunkSet
    from sop.v1 import fleet_pb2, fleet_pb2_grpc

    staging: dict[str, ChunkSet] = {}
    committed: set[str] = set()
    published: dict[int, bytes] = {}
    lock = threading.Lock()
    blobs = [checkpoint_from_bytes(Path(t).read_bytes()) for t in templates]

    def publisher() -> None:
        version = 1
        while not stop.wait(swap_every_s):
            if not publishing.is_set():
                continue
            version += 1
            template = blobs[version % len(blobs)]
            blob = checkpoint_to_bytes(
                replace(template, manifest=replace(template.manifest, version=version))
            )
            with lock:
                published.clear()  # only the newest is kept, as a learner with keep_last=1 would
                published[version] = blob

    def checkpoints() -> dict[int, bytes]:
        with lock:
            return dict(published)

    class Sink(fleet_pb2_grpc.FleetServicer):
        def Register(self, request: Any, context: Any) -> Any:
            return fleet_pb2.RegisterResponse(
                session_id="bench", max_chunk_bytes=1 << 20, heartbeat_interval_s=1.0
            )

        def Heartbeat(self, request: Any, context: Any) -> Any:
            return fleet_pb2.HeartbeatResponse(server_time=time.time())

        def QueryUpload(self, request: Any, context: Any) -> Any:
            with lock:
                if request.episode_id in committed:
                    return fleet_pb2.QueryUploadResponse(episode_id=request.episode_id, committed=True)
                chunks = staging.get(request.episode_id)
                seqs = chunks.received_seqs() if chunks else []
                total = (chunks.total_chunks or 0) if chunks else 0
            return fleet_pb2.QueryUploadResponse(
                episode_id=request.episode_id, received_seqs=seqs, total_chunks=total
            )

        def UploadEpisode(self, request_iterator: Iterator[Any], context: Any) -> Any:
            episode_id = ""
            for chunk in request_iterator:
                episode_id = chunk.episode_id
                with lock:
                    staging.setdefault(episode_id, ChunkSet()).add(chunk)
            with lock:
                chunks = staging.get(episode_id)
                if chunks is None or not chunks.complete:
                    return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=False)
                chunks.assemble()  # sha256 check
                committed.add(episode_id)
                del staging[episode_id]
            return fleet_pb2.UploadReceipt(episode_id=episode_id, committed=True)

        def WatchPolicy(self, request: Any, context: Any) -> Iterator[Any]:
            sent = request.current_version
            while context.is_active():
                available = checkpoints()
                newest = max(available, default=0)
                if newest > sent:
                    blob = available[newest]
                    sent = newest
                    yield fleet_pb2.PolicyAnnouncement(
                        version=newest, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob)
                    )
                time.sleep(0.1)

        def FetchCheckpoint(self, request: Any, context: Any) -> Iterator[Any]:
            blob = checkpoints().get(request.version)
            if blob is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no v{request.version}")
                return
            digest = hashlib.sha256(blob).hexdigest()
            for offset in range(int(request.offset), len(blob), 1 << 20):
                yield fleet_pb2.CheckpointChunk(
                    version=request.version,
                    offset=offset,
                    data=blob[offset : offset + (1 << 20)],
                    total_bytes=len(blob),
                    sha256=digest,
                )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fleet_pb2_grpc.add_FleetServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    threading.Thread(target=publisher, daemon=True).start()
    port_out.send(port)
    stop.wait()
    server.stop(0)


# ---- the measured daemon ----------------------------------------------------------------------------------


def state_policy_blob(size: str, task: str, version: int, seed: int) -> bytes:
    """A state diffusion policy with random weights (timing only). `default`: the default config
    (sentence-conditioned U-Net, what the fleet runs); `small`: a tiny U-Net with a task embedding, whose
    chunk costs a few milliseconds, to separate the daemon's own overhead from the inference time."""
    import torch

    from sop.episode import ACTION, STATE
    from sop.normalization import NormalizationStats
    from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
    from sop.policies.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(seed + version)
    rng = np.random.default_rng(seed)
    if size == "small":
        config = DiffusionPolicyConfig(
            instruction_encoder=InstructionEncoderKind.TASK,
            tasks=(task,),
            state_hidden_dim=32,
            state_feature_dim=16,
            instruction_feature_dim=8,
            down_dims=(16, 32),
            timestep_embed_dim=16,
        )
    else:
        config = DiffusionPolicyConfig()
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(256, config.state_dim)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(256, config.action_dim)).astype(np.float32)],
        }
    )
    return DiffusionPolicy(config, stats, version=version).to_bytes(version=version)


class SpoolFeeder:
    """Keeps `count` camera episodes waiting in the daemon's spool, so the uploader never runs dry."""

    def __init__(self, daemon: RobotDaemon, count: int, image_size: int, seed: int) -> None:
        from sop.data.synthetic_episodes import make_episode

        self.daemon = daemon
        self.count = count
        self.episodes = [
            make_episode(
                200,
                state_dim=39,
                action_dim=4,
                cameras=("corner2",),
                image_size=(image_size, image_size),
                seed=seed + i,
                robot_id=daemon.config.robot_id,
            )
            for i in range(4)
        ]
        self.appended = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from sop.episode import new_episode_id

        while not self._stop.wait(0.05):
            spool = self.daemon.spool
            if spool is None:
                continue
            while len(spool.pending()) < self.count and not self._stop.is_set():
                template = self.episodes[self.appended % len(self.episodes)]
                spool.store.append(replace(template, episode_id=new_episode_id()))
                self.appended += 1
                if self.daemon.uploader is not None:
                    self.daemon.uploader.wake()


@dataclass
class PhaseResult:
    policy: str
    inference: str
    phase: str
    ticks: int
    period_error_p50_ms: float
    period_error_p99_ms: float
    period_error_max_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    inference_p50_ms: float
    inference_p99_ms: float
    full_solve_p50_ms: float
    deadline_misses: int
    late_steps: int  # ticks held because asynchronous inference had not delivered yet
    uploaded_mb: float
    swaps: int
    fifo: bool


def measure_phase(
    policy: str,
    inference_mode: str,
    phase: str,
    bench: RobotBenchConfig,
    root: Path,
    base: Path,
    address: str | None,
    publishing: Any,
) -> PhaseResult:
    loaded = phase != "idle"
    window = int(bench.duration_s * bench.rate_hz * 1.2) + 64
    config = RobotConfig(
        robot_id=f"bench-{policy}-{inference_mode}-{phase.replace(' ', '-').replace('+', '-')}",
        data_dir=str(root / "robots"),
        learner=LearnerLinkConfig(address=address if loaded else None),
        control=ControlConfig(
            rate_hz=bench.rate_hz,
            max_episode_steps=bench.max_episode_steps,
            realtime_priority=bench.realtime_priority if phase.endswith("fifo") else 0,
        ),
        robot=RobotPluginConfig(type="metaworld", task=bench.task, seed=bench.seed),
        operator=OperatorConfig(type="none", remote=False),
        policy=PolicyConfig(
            base_checkpoint=str(base),
            swap_at=SwapPoint.CHUNK if phase.endswith("chunk") else SwapPoint.EPISODE,
            inference=InferenceMode(inference_mode),
        ),
        metrics=MetricsConfig(log_interval_s=0.0, window=window),
    )
    daemon = RobotDaemon(config)
    feeder = (
        SpoolFeeder(daemon, bench.backlog_episodes, bench.backlog_image_size, bench.seed) if loaded else None
    )
    daemon.start(max_episodes=0)
    if feeder is not None:
        feeder.start()
    fifo = False
    if loaded:
        publishing.set()
    time.sleep(bench.duration_s)
    publishing.clear()
    if phase.endswith("fifo"):
        fifo = _thread_is_fifo(daemon)
    if feeder is not None:
        feeder.stop()
    metrics = daemon.metrics
    daemon.stop()
    errors = metrics.loop_period_error.values() * 1e3
    latency = metrics.action_latency.values() * 1e3
    inference = metrics.inference.values() * 1e3
    full_solve = metrics.full_solve.values() * 1e3
    snapshot = metrics.snapshot()
    return PhaseResult(
        policy=policy,
        inference=inference_mode,
        phase=phase,
        ticks=int(errors.size),
        period_error_p50_ms=percentile(errors, 50),
        period_error_p99_ms=percentile(errors, 99),
        period_error_max_ms=float(errors.max()),
        latency_p50_ms=percentile(latency, 50),
        latency_p99_ms=percentile(latency, 99),
        inference_p50_ms=percentile(inference, 50),
        inference_p99_ms=percentile(inference, 99),
        full_solve_p50_ms=percentile(full_solve, 50),
        deadline_misses=int(snapshot["deadline_misses"]),
        late_steps=int(snapshot["inference_late_steps"]),
        uploaded_mb=metrics._value(metrics.upload_bytes) / 1e6,
        swaps=int(snapshot["policy_swaps"]),
        fifo=fifo,
    )


def _thread_is_fifo(daemon: RobotDaemon) -> bool:
    thread = daemon._control_thread
    if thread is None or thread.native_id is None:
        return False
    try:
        return os.sched_getscheduler(thread.native_id) == os.SCHED_FIFO
    except OSError:
        return False


def format_report(results: list[PhaseResult], bench: RobotBenchConfig, argv: list[str], load: str) -> str:
    """The markdown section; `load` is the load average taken before the run."""
    lines = [
        "## Robot control loop at 30 Hz while uploading and swapping checkpoints",
        "",
        f"Command: `{command_line('sop bench robot', argv)}` ({bench.duration_s:.0f} s per phase, one run, "
        "phases side by side).",
        f"Machine: {describe_machine().summary()}; load average before the run {load} (other work was running "
        f"on the machine). Meta-World `{bench.task}` robot, state diffusion policies with the RTI sampler "
        "(random weights: timing only; `default` is the fleet's policy config, `small` a tiny U-Net whose chunk "
        "costs a few ms), torch 1 thread.",
        "",
    ]
    header = [
        "policy", "inference", "phase", "ticks", "period error p50 (ms)", "p99 (ms)", "max (ms)",
        "obs→action p50 (ms)", "p99 (ms)", "RTI chunk p50 / p99 (ms)", "full solve p50 (ms)", "deadline misses",
        "late ticks", "uploaded (MB)", "swaps",
    ]  # fmt: skip
    rows = []
    for r in results:
        name = r.phase + (" (SCHED_FIFO not permitted)" if r.phase.endswith("fifo") and not r.fifo else "")
        rows.append(
            [
                r.policy,
                r.inference,
                name,
                r.ticks,
                f"{r.period_error_p50_ms:.3f}",
                f"{r.period_error_p99_ms:.3f}",
                f"{r.period_error_max_ms:.2f}",
                f"{r.latency_p50_ms:.2f}",
                f"{r.latency_p99_ms:.2f}",
                f"{r.inference_p50_ms:.1f} / {r.inference_p99_ms:.1f}",
                f"{r.full_solve_p50_ms:.0f}",
                r.deadline_misses,
                r.late_steps,
                f"{r.uploaded_mb:.0f}",
                r.swaps,
            ]
        )
    lines += markdown_table(header, rows)
    lines += [
        "",
        "Period error is |t(k) - t(k-1) - 1/30 s| at tick start (ticks run on an absolute grid). The "
        "first chunk of each episode (a full solve) is computed before the episode's grid starts; a "
        "deadline miss is a tick whose work overran the next tick's start. obs→action is the time from "
        "the start of the tick whose observation the action was planned on to the action reaching the robot: "
        "sync, the tick's own start (chunk inference included on the ticks that compute one); async, the "
        "start of the earlier tick that handed its observation to the inference thread. Late ticks (async): "
        "ticks the robot held because the next chunk was not ready.",
        "",
    ]
    return "\n".join(lines)


def write_json(
    path: str, results: list[PhaseResult], bench: RobotBenchConfig, argv: list[str], load: str
) -> None:
    """Every phase's figures, machine-readable (`--json FILE`)."""
    document = {
        "command": command_line("sop bench robot", argv),
        "machine": describe_machine().summary(),
        "load_average_before": load,
        "duration_s": bench.duration_s,
        "rate_hz": bench.rate_hz,
        "task": bench.task,
        "phases": [asdict(r) for r in results],
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    bench = parse_config(RobotBenchConfig, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    root = Path(bench.work_dir)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    load = load_average()
    results = []
    for policy in bench.policies:
        base = root / f"{policy}-base.safetensors"
        base.write_bytes(state_policy_blob(policy, bench.task, 1, bench.seed))
        templates = []
        for version in (2, 3):
            template = root / f"{policy}-template-{version}.safetensors"
            template.write_bytes(state_policy_blob(policy, bench.task, version, bench.seed))
            templates.append(str(template))
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        publishing = context.Event()
        stop = context.Event()
        sink = context.Process(
            target=run_sink_learner, args=(templates, bench.swap_every_s, send, publishing, stop), daemon=True
        )
        sink.start()
        address = f"127.0.0.1:{receive.recv()}"
        try:
            for inference in bench.inference:
                for phase in bench.phases:
                    print(
                        f"{policy} policy, {inference}, phase {phase}: {bench.duration_s:.0f} s ...",
                        flush=True,
                    )
                    result = measure_phase(policy, inference, phase, bench, root, base, address, publishing)
                    print(
                        f"  period error p50 {result.period_error_p50_ms:.3f} ms  "
                        f"p99 {result.period_error_p99_ms:.3f} ms  max {result.period_error_max_ms:.2f} ms  "
                        f"misses {result.deadline_misses}  late {result.late_steps}  "
                        f"uploaded {result.uploaded_mb:.0f} MB  swaps {result.swaps}",
                        flush=True,
                    )
                    results.append(result)
        finally:
            stop.set()
            sink.join(10)
    report = format_report(results, bench, args, load)
    write_report(bench.output, report)
    if bench.json is not None:
        write_json(bench.json, results, bench, args, load)
    print(report)
    return 0
