"""`sop bench learner`: ingest, checkpoint broadcast and trainer throughput, each beside its baseline, in one run.

    sop bench learner                                     # defaults; writes benchmarks/results/learner.md
    sop bench learner --uploaders '[1,4]' --repeats 1     # a quick look

What is measured (medians of `repeats`; robots run in a separate client process, over 127.0.0.1):

- Ingest: N robots (threads, one channel each) upload pre-serialized episodes at once; the clock runs from the
  start barrier to the last receipt, and a receipt means "validated, decoded and durably committed to the
  zarr replay store". Baselines, on the same bytes: one raw TCP socket copy (a receiver that only reads),
  and LeRobot's own transport (lerobot 0.6.1: `lerobot.rl.learner_service.LearnerService` with its
  3-thread server and 4 MiB message options, `lerobot.transport.utils.send_bytes_in_chunks` on the robot
  side), sending each episode as its actor does: a list of `Transition`s serialized with
  `transitions_to_bytes` (torch.save; pickle inside), deserialized on the learner with
  `bytes_to_transitions` into memory (no disk). That pickle-based path runs only inside this benchmark, to
  measure it; SOP itself never unpickles anything.
- Broadcast: a checkpoint of `checkpoint_mb` MB is published and N robots fetch it at once (FetchCheckpoint,
  1 MiB chunks) and verify its sha256; baseline: one raw TCP copy of the same bytes to one receiver (and,
  for reference, to N receivers at once).
- Trainer: samples/s of the learner's loop (replay sampling with SOP mixing + the HG-DAgger update + loss
  bookkeeping) beside a bare torch loop (`compute_loss`, backward, AdamW step) on one batch already in
  memory, same policy, same batch size, same thread count.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.reporting import command_line, markdown_table, median, write_report
from sop.config import parse_config
from sop.credentials import TokenRegistry, call_metadata
from sop.data.codec import encode_episode
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import split_into_chunks
from sop.episode import Episode, Source

RAW_BUFFER = 4 << 20
MIB = 1 << 20


@dataclass(frozen=True)
class LearnerBenchConfig:
    uploaders: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    episodes_per_uploader: int = field(default=3, metadata={"help": "episodes each robot uploads per run"})
    episode_steps: int = field(default=150, metadata={"help": "steps per episode (5 s at 30 Hz)"})
    image_size: int = field(default=64, metadata={"help": "square camera frame side (one camera)"})
    robots: list[int] = field(default_factory=lambda: [1, 4, 8])
    checkpoint_mb: int = 50
    trainer_steps: int = 30
    trainer_batch_size: int = 64
    repeats: int = 3
    lerobot: bool = field(default=True, metadata={"help": "also measure lerobot's chunked gRPC transport"})
    durable: bool = field(
        default=True, metadata={"help": "fsync each committed episode (the learner default)"}
    )
    threads: int = field(default=1, metadata={"help": "torch threads for the trainer figures"})
    work_dir: str | None = None
    out: str | None = "benchmarks/results/learner.md"

    def __post_init__(self) -> None:
        for name in (
            "episodes_per_uploader",
            "episode_steps",
            "image_size",
            "checkpoint_mb",
            "repeats",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not self.uploaders or min(self.uploaders) < 1 or not self.robots or min(self.robots) < 1:
            raise ValueError("uploaders and robots: need at least one count, each >= 1")
        if self.trainer_steps < 0 or self.trainer_batch_size < 1:
            raise ValueError("trainer_steps must be >= 0 and trainer_batch_size >= 1")


# ---------------------------------------------------------------------------------------------------------
# The robot side: a client process driven by JSON jobs on stdin (no pickle between the processes).


def bench_episode(index: int, config: dict[str, Any]) -> Episode:
    """Episode `index` of a job: deterministic content, a fresh episode id per (seed, index)."""
    episode = make_episode(
        int(config["steps"]),
        seed=int(config["seed"]) * 100_000 + index,
        image_size=(int(config["image"]), int(config["image"])),
        robot_id=str(config["robot_id"]),
        intervention=np.arange(int(config["steps"])) % 3 == 0,
    )
    return episode


def lerobot_transitions_bytes(episode: Episode) -> bytes:
    """The episode as lerobot's actor ships it: Transition dicts of torch tensors through torch.save.

    Benchmark only (pickle inside torch.save); images stay uint8 and next_state shares the next step's
    tensors, the most compact form that path allows.
    """
    import torch
    from lerobot.transport.utils import transitions_to_bytes

    steps = episode.num_steps
    states = [
        {
            key: torch.from_numpy(np.array(value[t : t + 1]))
            for key, value in episode.steps.items()
            if key.startswith("observation")
        }
        for t in range(steps)
    ]
    action = torch.from_numpy(np.array(episode.steps["action"]))
    reward = episode.steps["reward"]
    intervention = episode.steps["intervention"]
    transitions = [
        {
            "state": states[t],
            "action": action[t : t + 1],
            "reward": float(reward[t]),
            "next_state": states[min(t + 1, steps - 1)],
            "done": t == steps - 1,
            "truncated": False,
            "complementary_info": {"is_intervention": bool(intervention[t])},
        }
        for t in range(steps)
    ]
    return bytes(transitions_to_bytes(transitions))  # type: ignore[arg-type]


def _run_together(
    robot: Callable[[int], None], count: int, barrier: threading.Barrier
) -> tuple[float, float]:
    """Runs `robot(0)` .. `robot(count - 1)` on threads; each prepares, then waits on `barrier` (count + 1
    parties) so all start at once. Returns (start, end): wall-clock times of the release and the last finish."""
    threads = [threading.Thread(target=robot, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.time()
    for thread in threads:
        thread.join()
    return start, time.time()


def _client_sop_ingest(job: dict[str, Any]) -> dict[str, Any]:
    from sop.v1 import fleet_pb2_grpc

    uploaders, per = int(job["uploaders"]), int(job["per_uploader"])
    work: list[list[list[Any]]] = []
    total_bytes = 0
    for u in range(uploaders):
        robot_id = f"bench-{u}"
        episodes = []
        for i in range(per):
            episode = bench_episode(i, {**job, "seed": int(job["seed"]) * 100 + u, "robot_id": robot_id})
            payload = encode_episode(episode)
            total_bytes += len(payload)
            episodes.append(split_into_chunks(episode.episode_id, payload))
        work.append(episodes)
    barrier = threading.Barrier(uploaders + 1)
    errors: list[str] = []
    retries = [0]

    def robot(u: int) -> None:
        robot_id = f"bench-{u}"
        channel = grpc.insecure_channel(job["address"])
        stub = fleet_pb2_grpc.FleetStub(channel)
        metadata = call_metadata(robot_id, job["tokens"][robot_id])
        barrier.wait()
        for chunks in work[u]:
            while True:
                try:
                    receipt = stub.UploadEpisode(iter(chunks), metadata=metadata, timeout=300)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        retries[0] += 1
                        time.sleep(0.05)
                        continue
                    errors.append(f"{exc.code()}: {exc.details()}")
                    break
                if not receipt.committed:
                    errors.append("not committed")
                break
        channel.close()

    start, end = _run_together(robot, uploaders, barrier)
    return {
        "start": start,
        "end": end,
        "bytes": total_bytes,
        "episodes": uploaders * per,
        "errors": errors,
        "retries": retries[0],
    }


def _client_lerobot_ingest(job: dict[str, Any]) -> dict[str, Any]:
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks

    uploaders, per = int(job["uploaders"]), int(job["per_uploader"])
    work = [
        [
            lerobot_transitions_bytes(
                bench_episode(i, {**job, "seed": int(job["seed"]) * 100 + u, "robot_id": f"bench-{u}"})
            )
            for i in range(per)
        ]
        for u in range(uploaders)
    ]
    barrier = threading.Barrier(uploaders + 1)
    errors: list[str] = []

    def robot(u: int) -> None:
        channel = grpc.insecure_channel(job["address"], grpc_channel_options())
        stub = services_pb2_grpc.LearnerServiceStub(channel)
        barrier.wait()
        for payload in work[u]:
            try:
                stub.SendTransitions(send_bytes_in_chunks(payload, services_pb2.Transition), timeout=300)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")
        channel.close()

    start, end = _run_together(robot, uploaders, barrier)
    return {
        "start": start,
        "end": end,
        "bytes": sum(len(p) for w in work for p in w),
        "episodes": uploaders * per,
        "errors": errors,
    }


def _client_raw_send(job: dict[str, Any]) -> dict[str, Any]:
    """Send the job's episode bytes over one TCP connection; the receiver acks after reading them all."""
    payloads = [
        encode_episode(bench_episode(i, {**job, "robot_id": "bench-0"})) for i in range(int(job["episodes"]))
    ]
    total = sum(len(p) for p in payloads)
    with socket.create_connection(("127.0.0.1", int(job["port"]))) as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RAW_BUFFER)
        start = time.time()
        connection.sendall(total.to_bytes(8, "little"))
        for payload in payloads:
            connection.sendall(payload)
        connection.recv(1)
        end = time.time()
    return {"start": start, "end": end, "bytes": total}


def _client_fetch(job: dict[str, Any]) -> dict[str, Any]:
    from sop.v1 import fleet_pb2, fleet_pb2_grpc

    robots = int(job["robots"])
    barrier = threading.Barrier(robots + 1)
    verified = [0]
    lock = threading.Lock()

    def robot(r: int) -> None:
        robot_id = f"bench-{r}"
        channel = grpc.insecure_channel(job["address"], [("grpc.max_receive_message_length", 2 * MIB)])
        stub = fleet_pb2_grpc.FleetStub(channel)
        metadata = call_metadata(robot_id, job["tokens"][robot_id])
        barrier.wait()
        digest = hashlib.sha256()
        expected = ""
        for chunk in stub.FetchCheckpoint(
            fleet_pb2.FetchCheckpointRequest(version=0), metadata=metadata, timeout=300
        ):
            digest.update(chunk.data)
            expected = chunk.sha256
        if digest.hexdigest() == expected:
            with lock:
                verified[0] += 1
        channel.close()

    start, end = _run_together(robot, robots, barrier)
    return {"start": start, "end": end, "verified": verified[0]}


def _client_raw_receive(job: dict[str, Any]) -> dict[str, Any]:
    """N connections each read the whole blob the server writes (hashing it too when `hash` is set)."""
    connections = int(job["connections"])
    verify = bool(job.get("hash", False))
    barrier = threading.Barrier(connections + 1)
    received = [0] * connections

    def receiver(c: int) -> None:
        with socket.create_connection(("127.0.0.1", int(job["port"]))) as connection:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RAW_BUFFER)
            barrier.wait()
            connection.sendall(b"g")
            buffer = bytearray(RAW_BUFFER)
            view = memoryview(buffer)
            digest = hashlib.sha256()
            while (n := connection.recv_into(view)) > 0:
                if verify:
                    digest.update(view[:n])
                received[c] += n

    start, end = _run_together(receiver, connections, barrier)
    return {"start": start, "end": end, "bytes": sum(received)}


CLIENT_JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sop_ingest": _client_sop_ingest,
    "lerobot_ingest": _client_lerobot_ingest,
    "raw_send": _client_raw_send,
    "fetch": _client_fetch,
    "raw_receive": _client_raw_receive,
}


def client_main() -> int:
    """The robot process: one JSON job per stdin line, one JSON result per stdout line."""
    for line in sys.stdin:
        job = json.loads(line)
        result = CLIENT_JOBS[job["kind"]](job)
        print(json.dumps(result), flush=True)
    return 0


class RobotProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.learner", "client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark client died running {job['kind']}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


# ---------------------------------------------------------------------------------------------------------
# The learner side.


class RawReceiver:
    """Accepts one connection per job, reads the announced byte count, acks."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        buffer = bytearray(RAW_BUFFER)
        view = memoryview(buffer)
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RAW_BUFFER)
                header = connection.recv(8, socket.MSG_WAITALL)
                remaining = int.from_bytes(header, "little")
                while remaining > 0:
                    n = connection.recv_into(view, min(len(buffer), remaining))
                    if n == 0:
                        break
                    remaining -= n
                connection.sendall(b"k")

    def close(self) -> None:
        self.listener.close()


class RawSender:
    """Writes `blob` to each of `connections` clients once all have connected."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]

    def serve(self, connections: int) -> threading.Thread:
        def run() -> None:
            accepted = [self.listener.accept()[0] for _ in range(connections)]

            def send(connection: socket.socket) -> None:
                with connection:
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RAW_BUFFER)
                    connection.recv(1)
                    connection.sendall(self.blob)

            senders = [threading.Thread(target=send, args=(c,)) for c in accepted]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


class LerobotLearner:
    """lerobot's own learner gRPC service (3 worker threads, its message-size options), plus a consumer
    that deserializes every received payload the way its learner does. Benchmark only (torch.load)."""

    def __init__(self) -> None:
        from lerobot.rl.learner_service import MAX_WORKERS, LearnerService
        from lerobot.transport import services_pb2_grpc
        from lerobot.transport.utils import bytes_to_transitions, grpc_channel_options

        self.shutdown = threading.Event()
        self.transitions: queue.Queue[bytes] = queue.Queue()
        service = LearnerService(
            shutdown_event=self.shutdown,  # type: ignore[arg-type]
            parameters_queue=queue.Queue(),  # type: ignore[arg-type]
            seconds_between_pushes=3600.0,
            transition_queue=self.transitions,  # type: ignore[arg-type]
            interaction_message_queue=queue.Queue(),  # type: ignore[arg-type]
        )
        from concurrent import futures

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS), options=grpc_channel_options()
        )
        services_pb2_grpc.add_LearnerServiceServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self._decode = bytes_to_transitions
        self.decoded = 0
        self.last_decoded_at = 0.0
        self._lock = threading.Lock()
        threading.Thread(target=self._consume, daemon=True).start()

    def _consume(self) -> None:
        while not self.shutdown.is_set():
            try:
                payload = self.transitions.get(timeout=0.2)
            except queue.Empty:
                continue
            self._decode(payload)
            with self._lock:
                self.decoded += 1
                self.last_decoded_at = time.time()

    def wait_for(self, count: int, timeout_s: float = 600) -> float:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self._lock:
                if self.decoded >= count:
                    return self.last_decoded_at
            time.sleep(0.005)
        raise TimeoutError(f"lerobot learner decoded {self.decoded} of {count} payloads")

    def close(self) -> None:
        self.shutdown.set()
        self.server.stop(0.5).wait()


def bench_tokens(count: int, directory: Path) -> tuple[Path, dict[str, str]]:
    registry = TokenRegistry({})
    tokens = {f"bench-{i}": f"bench-token-{i}" for i in range(count)}
    for robot_id, token in tokens.items():
        registry.add(robot_id, token)
    path = directory / "token_hashes.json"
    registry.write(path)
    return path, tokens


def start_bench_learner(run_dir: Path, token_file: Path, durable: bool) -> Any:
    from cloud_learner.config import AuthConfig, IngestConfig, LearnerConfig, ServerConfig, TrainerConfig
    from cloud_learner.service import LearnerService

    config = LearnerConfig(
        run_dir=str(run_dir),
        server=ServerConfig(address="127.0.0.1:0"),
        auth=AuthConfig(token_hashes_file=str(token_file)),
        ingest=IngestConfig(durable=durable),
        trainer=TrainerConfig(enabled=False),
        log_level="WARNING",
    )
    service = LearnerService(config)
    service.start()
    return service


@dataclass
class Figures:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        print(f"  {what:<58} {value:>22}  {note}", flush=True)


class MemoryReplay:
    """Ablation only: ingest's store interface keeping episodes in memory, to show what the zarr commit costs."""

    def __init__(self) -> None:
        self.episodes: dict[str, Episode] = {}
        self._lock = threading.Lock()

    def __contains__(self, episode_id: object) -> bool:
        with self._lock:
            return episode_id in self.episodes

    def append(self, episode: Episode) -> None:
        with self._lock:
            self.episodes[episode.episode_id] = episode

    def __len__(self) -> int:
        with self._lock:
            return len(self.episodes)


def _plural(count: int) -> str:
    return f"{count} robot{'s' if count > 1 else ''}"


def bench_ingest(config: LearnerBenchConfig, work: Path, robot: RobotProcess, figures: Figures) -> None:
    token_file, tokens = bench_tokens(max(max(config.uploaders), max(config.robots)), work)
    episode_spec = {"steps": config.episode_steps, "image": config.image_size}
    raw = RawReceiver()
    lerobot = LerobotLearner() if config.lerobot else None
    seed = 1

    def sop_run(uploaders: int, in_memory: bool) -> tuple[dict[str, Any], dict[str, float]]:
        run_dir = work / f"ingest-{uploaders}-{seed}-{in_memory}"
        service = start_bench_learner(run_dir, token_file, config.durable)
        store: Any = service.store
        if in_memory:
            store = service.ingest.store = MemoryReplay()
        try:
            result = robot.run(
                {
                    "kind": "sop_ingest",
                    "address": f"127.0.0.1:{service.port}",
                    "uploaders": uploaders,
                    "per_uploader": config.episodes_per_uploader,
                    "seed": seed,
                    "tokens": tokens,
                    **episode_spec,
                }
            )
            if result["errors"] or len(store) != uploaders * config.episodes_per_uploader:
                raise RuntimeError(f"ingest run failed: {result['errors'][:3]}, {len(store)} stored")
            return result, service.ingest.counters.snapshot()
        finally:
            service.stop(0.5)
            shutil.rmtree(run_dir, ignore_errors=True)

    try:
        for uploaders in config.uploaders:
            count = uploaders * config.episodes_per_uploader
            rates: dict[str, list[float]] = {"sop": [], "memory": [], "raw": [], "lerobot": []}
            episodes_per_s: dict[str, list[float]] = {"sop": [], "memory": [], "lerobot": []}
            stages = {"seconds_verifying": 0.0, "seconds_decoding": 0.0, "seconds_committing": 0.0}
            nbytes = 0
            for _ in range(config.repeats):
                seed += 1
                raw_result = robot.run(
                    {"kind": "raw_send", "port": raw.port, "episodes": count, "seed": seed, **episode_spec}
                )
                rates["raw"].append(raw_result["bytes"] / (raw_result["end"] - raw_result["start"]))
                for kind in ("sop", "memory"):
                    result, counters = sop_run(uploaders, in_memory=kind == "memory")
                    seconds = result["end"] - result["start"]
                    nbytes = result["bytes"]
                    rates[kind].append(result["bytes"] / seconds)
                    episodes_per_s[kind].append(count / seconds)
                    if kind == "sop":
                        for stage in stages:
                            stages[stage] += counters[stage] / (count * config.repeats)
                if lerobot is not None:
                    before = lerobot.decoded
                    lr = robot.run(
                        {
                            "kind": "lerobot_ingest",
                            "address": f"127.0.0.1:{lerobot.port}",
                            "uploaders": uploaders,
                            "per_uploader": config.episodes_per_uploader,
                            "seed": seed,
                            **episode_spec,
                        }
                    )
                    if lr["errors"]:
                        raise RuntimeError(f"lerobot run failed: {lr['errors'][:3]}")
                    end = max(lr["end"], lerobot.wait_for(before + count))
                    episodes_per_s["lerobot"].append(count / (end - lr["start"]))
                    rates["lerobot"].append(lr["bytes"] / (end - lr["start"]))
            raw_mbps = median(rates["raw"]) / 1e6
            sop_mbps, memory_mbps = median(rates["sop"]) / 1e6, median(rates["memory"]) / 1e6
            figures.add(
                f"ingest, {_plural(uploaders)} ({count} episodes, {nbytes / count / 1e6:.2f} MB each)",
                f"{median(episodes_per_s['sop']):.1f} ep/s, {sop_mbps:.0f} MB/s",
                f"{100 * sop_mbps / raw_mbps:.1f} % of raw socket ({raw_mbps:.0f} MB/s); per episode: sha256 "
                f"{1e3 * stages['seconds_verifying']:.1f} ms, decode+validate {1e3 * stages['seconds_decoding']:.1f} ms, "
                f"zarr commit {1e3 * stages['seconds_committing']:.1f} ms",
            )
            figures.add(
                f"  same, validated but kept in memory (ablation: no zarr), {_plural(uploaders)}",
                f"{median(episodes_per_s['memory']):.1f} ep/s, {memory_mbps:.0f} MB/s",
                f"{100 * memory_mbps / raw_mbps:.1f} % of raw socket",
            )
            if lerobot is not None:
                lerobot_eps = median(episodes_per_s["lerobot"])
                figures.add(
                    f"  lerobot transport (torch.save, into memory), {_plural(uploaders)}",
                    f"{lerobot_eps:.1f} ep/s, {median(rates['lerobot']) / 1e6:.0f} MB/s",
                    f"SOP (zarr, durable) / lerobot = {median(episodes_per_s['sop']) / lerobot_eps:.2f}x episodes/s; "
                    f"SOP in memory / lerobot = {median(episodes_per_s['memory']) / lerobot_eps:.2f}x",
                )
    finally:
        raw.close()
        if lerobot is not None:
            lerobot.close()


def checkpoint_blob(megabytes: int) -> bytes:
    import torch

    from sop.checkpoint import build_checkpoint, checkpoint_to_bytes

    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(megabytes * MIB // 4, generator=generator)
    checkpoint = build_checkpoint(
        {"weights": weights},
        policy_type="bench",
        version=1,
        parent_version=0,
        policy_config={},
        normalization={},
    )
    return checkpoint_to_bytes(checkpoint)


def bench_broadcast(config: LearnerBenchConfig, work: Path, robot: RobotProcess, figures: Figures) -> None:
    token_file, tokens = bench_tokens(max(config.robots), work)
    blob = checkpoint_blob(config.checkpoint_mb)
    service = start_bench_learner(work / "broadcast", token_file, durable=True)
    sender = RawSender(blob)
    try:
        service.publisher.announce(service.checkpoints.publish(blob), blob)

        def raw_copy(connections: int, verify: bool = False) -> float:
            thread = sender.serve(connections)
            result = robot.run(
                {"kind": "raw_receive", "port": sender.port, "connections": connections, "hash": verify}
            )
            thread.join()
            assert result["bytes"] == connections * len(blob)
            return float(result["end"] - result["start"])

        raw_one = median([raw_copy(1) for _ in range(config.repeats)])
        figures.add(
            f"raw TCP copy of the {len(blob) / 1e6:.0f} MB checkpoint to 1 receiver",
            f"{1e3 * raw_one:.0f} ms",
            "baseline",
        )
        for robots in config.robots:
            times = []
            for _ in range(config.repeats):
                result = robot.run(
                    {
                        "kind": "fetch",
                        "address": f"127.0.0.1:{service.port}",
                        "robots": robots,
                        "tokens": tokens,
                    }
                )
                if result["verified"] != robots:
                    raise RuntimeError(
                        f"only {result['verified']} of {robots} robots verified the checkpoint"
                    )
                times.append(result["end"] - result["start"])
            raw_n = median([raw_copy(robots, verify=True) for _ in range(config.repeats)])
            figures.add(
                f"broadcast to {robots} robot{'s' if robots > 1 else ''}, sha256 verified",
                f"{1e3 * median(times):.0f} ms",
                f"{median(times) / raw_one:.2f}x one raw copy; raw copies to {robots} receivers hashing "
                f"(sha256) as robots do: {1e3 * raw_n:.0f} ms ({median(times) / raw_n:.2f}x)",
            )
    finally:
        sender.listener.close()
        service.stop(0.5)


def bench_trainer(config: LearnerBenchConfig, work: Path, figures: Figures) -> None:
    import torch

    from cloud_learner.algorithms import HGDaggerConfig
    from cloud_learner.config import ReplayConfig
    from cloud_learner.replay import Replay
    from sop.data.episode_store import EpisodeStore
    from sop.episode import ACTION, STATE
    from sop.normalization import NormalizationStats
    from sop.policies.configuration_diffusion import DiffusionPolicyConfig
    from sop.policies.modeling_diffusion import DiffusionPolicy

    torch.set_num_threads(config.threads)
    store = EpisodeStore(work / "trainer-replay", durable=False)
    episodes = [
        make_episode(150, seed=i, cameras=(), source=Source.OFFLINE if i % 2 else Source.ONLINE,
                     intervention=np.arange(150) % 2 == 0, task="reach-v3", instruction="reach the goal")
        for i in range(8)
    ]  # fmt: skip
    for episode in episodes:
        store.append(episode)
    stats = NormalizationStats.from_arrays({k: [e.steps[k] for e in episodes] for k in (STATE, ACTION)})
    policy_config = DiffusionPolicyConfig(state_dim=39, action_dim=4)
    torch.manual_seed(0)
    policy = DiffusionPolicy(policy_config, stats)
    algorithm = HGDaggerConfig().build(policy)
    replay = Replay(
        store,
        ReplayConfig(),
        algorithm.frame_selection(),
        policy_config.observation_horizon,
        policy_config.prediction_horizon,
    )
    rng = np.random.default_rng(0)
    batch_size = config.trainer_batch_size

    def learner_steps(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            batch = replay.sample(batch_size, rng)
            assert batch is not None
            result = algorithm.update(batch)
            replay.record_losses(batch, result.sample_losses.numpy())
        return steps * batch_size / (time.perf_counter() - start)

    fixed = replay.sample(batch_size, rng)
    assert fixed is not None
    bare_policy = DiffusionPolicy(policy_config, stats)
    optimizer = torch.optim.AdamW(bare_policy.network.parameters(), lr=1e-4)
    tensors = {
        STATE: torch.as_tensor(fixed[STATE]),
        ACTION: torch.as_tensor(fixed[ACTION]),
        "task": fixed["task"],
        "instruction": fixed["instruction"],
    }

    def bare_steps(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = bare_policy.compute_loss(tensors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * batch_size / (time.perf_counter() - start)

    learner_steps(3)
    bare_steps(3)  # warm-up: allocator, instruction-embedding cache
    ours, bare = [], []
    for _ in range(config.repeats):
        ours.append(learner_steps(config.trainer_steps))
        bare.append(bare_steps(config.trainer_steps))
    parameters = sum(p.numel() for p in policy.network.parameters()) / 1e6
    figures.add(
        f"trainer, default policy ({parameters:.1f} M params), batch {batch_size}",
        f"{median(ours):.0f} samples/s",
        f"bare torch loop {median(bare):.0f} samples/s -> {100 * median(ours) / median(bare):.0f} %",
    )


def machine_line() -> str:
    return f"{describe_machine().summary()}, grpcio {grpc.__version__}"


def write_markdown(path: Path, figures: Figures, argv: list[str], config: LearnerBenchConfig) -> None:
    command = command_line("sop bench learner", argv)
    lines = [
        "## Learner: ingest, broadcast, trainer",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}; robots in a separate process, 127.0.0.1; medians of {config.repeats} runs, "
        "baselines measured side by side in the same run.  ",
        f"Episodes: {config.episode_steps} steps, one {config.image_size}x{config.image_size} camera, serialized "
        f"as `EpisodeRecord`, sent in 1 MiB chunks; ingest = validated + {'durably (fsync) ' if config.durable else ''}"
        "committed to the zarr replay store before the receipt.  ",
        "LeRobot transport: lerobot 0.6.1 `LearnerService.SendTransitions` (3 server threads) with the episode as "
        "`Transition`s through `transitions_to_bytes` (torch.save) and `bytes_to_transitions` on the learner, "
        "into memory only (benchmark process only; SOP never unpickles).",
        "",
    ]
    lines += markdown_table(
        ["what", "result", "beside"], [[what.strip(), value, note] for what, value, note in figures.rows]
    )
    write_report(path, "\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if argv[:1] == ["client"]:
        return client_main()
    config = parse_config(LearnerBenchConfig, argv)
    work = Path(tempfile.mkdtemp(prefix="sop-bench-learner-", dir=config.work_dir))
    figures = Figures()
    print(f"sop bench learner on {machine_line()}", flush=True)
    robot = RobotProcess()
    try:
        bench_ingest(config, work, robot, figures)
        bench_broadcast(config, work, robot, figures)
    finally:
        robot.close()
    if config.trainer_steps > 0:
        bench_trainer(config, work, figures)
    shutil.rmtree(work, ignore_errors=True)
    if config.out:
        write_markdown(Path(config.out), figures, argv, config)
        print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
