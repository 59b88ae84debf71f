"""`sop bench soak`: a fleet under sustained load. Does the learner's memory stay flat, is nothing lost?

    sop bench soak --robots 16 --minutes 30        # configs/bench_soak.yaml
    sop bench soak --robots 4 --minutes 3 --results ""   # ~4 min, CI's size (tests/e2e/test_soak_bench.py)

One `sop learner serve` and `robots` real `sop robot run` daemons, as separate processes over gRPC on
127.0.0.1 with the fleet demo's mutual TLS and signed checkpoints (the pieces of `fleet_harness.demo` and
`fleet_harness.processes`). The robots are simulated Meta-World arms without rendering (state only:
`robot.image false`), run a tiny diffusion policy (a small U-Net, briefly trained, DDIM) at a modest
control rate, and have the simulated operator on, so interventions and operator sessions happen. The
learner trains with one thread and publishes a checkpoint every `learner.trainer.publish_every_steps`, so
robots keep fetching, dry-running and hot-swapping policies. The point is load, not success.

Measured (written to `<out>/results.json`, `<out>/report.md`, `<out>/rss.png`, and the BENCHMARKS.md
section `results`):

- Resident memory (VmRSS from /proc/<pid>/status) of the learner and of every robot, sampled every
  `sample_every_s`. The learner's slope is the least-squares fit over the samples after the warm-up
  (`warmup_minutes`, else the first `warmup_fraction` of the run). The replay holds at most
  `replay.max_online_frames_per_task` online frames of a task in memory (`sop.data.window_sampler`); the
  soak sets that bound low (configs/bench_soak.yaml) so that it is reached during the warm-up and the slope
  measures everything else in the steady state a long-running learner lives in. The report gives the slope
  per 1000 frames received beside it, and the replay's held frames and evicted episodes.
- Episode-id accounting: when the time is up the robots are stopped with SIGTERM (an episode in progress
  ends `aborted` and stays in the spool), then each robot's spool is drained to the learner by the robot's
  own uploader (`robot_client.uploader.Uploader`, the daemon's code and credentials, run here because
  `sop robot run` has no upload-only mode). Every episode a robot logged must then be in the learner's
  replay exactly once: no id missing, no id logged twice, no recording committed under two ids, nothing
  left in a spool or a robot's quarantine.
- Receipt latency: episode end (the robot's `ended_at`, recorded in the episode) to the learner's commit
  (`committed_at`, stamped by the replay store when the receipt is made), both read from the learner's
  replay; both clocks are this machine's. The p50 / p99 are over the episodes committed while the fleet
  ran (the drain's backlog is counted apart).
- Episodes, frames, intervention frames, checkpoints published and swapped in, learner steps, and the
  robots' upload retries and refused checkpoints from their last metrics log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import repo_relative
from fleet_harness.demo import (
    BasePolicyConfig,
    FleetDemoConfig,
    learner_args,
    learner_config,
    open_run_dir,
    prepare_base_policy,
    robot_args,
    write_fleet_trust,
)
from fleet_harness.processes import FleetProcesses, ManagedProcess, free_port, wait_for_port
from fleet_harness.report import read_jsonl
from sop.config import config_to_dict, parse_config
from sop.policies.configuration_diffusion import (
    DDIMSamplerConfig,
    DiffusionPolicyConfig,
    InstructionEncoderKind,
    SamplerConfig,
)

log = logging.getLogger(__name__)

MIB = 1 << 20


def _tiny_base() -> BasePolicyConfig:
    """A policy that is cheap to run and to train: load, not success, is what the soak is about."""
    return BasePolicyConfig(
        demos_per_task=1,
        bc_steps=20,
        batch_size=32,
        policy=DiffusionPolicyConfig(down_dims=(16, 32, 64), instruction_encoder=InstructionEncoderKind.TASK),
    )


def _soak_learner_overrides() -> dict[str, Any]:
    """One training thread and frequent checkpoints, so robots keep fetching and hot-swapping under load; a
    replay frame bound the fleet reaches during the warm-up, so the slope is the steady state's."""
    return {
        "trainer": {"batch_size": 32, "num_threads": 1, "publish_every_steps": 50},
        "algorithm": {"optimizer": {"lr": 3e-4}},
        "replay": {"max_online_frames_per_task": 5000},
    }


@dataclass(frozen=True)
class SoakBenchConfig:
    robots: int = field(default=16, metadata={"help": "robot daemons (separate processes)"})
    minutes: float = field(default=30.0, metadata={"help": "minutes the fleet runs before the drain"})
    tasks: list[str] = field(
        default_factory=lambda: ["reach-v3", "button-press-topdown-v3"],
        metadata={"help": "robot i runs tasks[i % len(tasks)]"},
    )
    robot_rate_hz: float = field(default=10.0, metadata={"help": "robots' control rate (real time)"})
    max_episode_steps: int = 100
    sampler: SamplerConfig = field(
        default_factory=lambda: DDIMSamplerConfig(),
        metadata={
            "help": "robots' sampler, the policy's sampler config: {type: ddim} (DDIM-10), {type: rti}, ..."
        },
    )
    learner: dict[str, Any] = field(
        default_factory=_soak_learner_overrides,
        metadata={
            "help": "keys of configs/learner.yaml to change, e.g. --learner.trainer.publish_every_steps 25"
        },
    )
    sample_every_s: float = field(default=5.0, metadata={"help": "seconds between RSS samples"})
    warmup_fraction: float = field(
        default=1 / 3, metadata={"help": "share of the run left out of the slope fit (start-up, allocator)"}
    )
    warmup_minutes: float | None = field(
        default=None, metadata={"help": "warm-up in minutes instead of warmup_fraction; null: the fraction"}
    )
    max_rss_slope_mib_per_min: float = field(
        default=1.0, metadata={"help": "target: learner RSS slope after warm-up below this"}
    )
    drain_timeout_s: float = field(default=300.0, metadata={"help": "longest wait for the spools to drain"})
    note: str = field(
        default="", metadata={"help": "a line for the BENCHMARKS.md section (e.g. machine load)"}
    )
    out: str = field(default="", metadata={"help": "run folder; default runs/bench-soak-<timestamp>"})
    results: str = field(
        default="benchmarks/results/soak.md", metadata={"help": "BENCHMARKS.md section; empty: none"}
    )
    base: BasePolicyConfig = field(default_factory=_tiny_base, metadata={"help": "the robots' first policy"})

    def __post_init__(self) -> None:
        if self.robots < 1:
            raise ValueError(f"robots must be >= 1, got {self.robots}")
        for name in ("minutes", "robot_rate_hz", "sample_every_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_minutes is not None and not 0.0 <= self.warmup_minutes < self.minutes:
            raise ValueError(
                f"warmup_minutes must be in [0, minutes={self.minutes}), got {self.warmup_minutes}"
            )
        # The fleet config checks the task names (and suggests the nearest one for a typo).
        self.fleet()

    @property
    def warmup_s(self) -> float:
        minutes = (
            self.warmup_minutes if self.warmup_minutes is not None else self.warmup_fraction * self.minutes
        )
        return 60.0 * minutes

    def fleet(self, out: str = "") -> FleetDemoConfig:
        """The fleet of `sop demo` with this benchmark's settings (its process arguments are reused as is)."""
        return FleetDemoConfig(
            tasks=list(self.tasks),
            robots=self.robots,
            budget_s=60.0 * self.minutes,
            out=out,
            robot_rate_hz=self.robot_rate_hz,
            max_episode_steps=self.max_episode_steps,
            sampler=self.sampler,
            learner=self.learner,
            base=self.base,
            live=False,
        )


# Memory -----------------------------------------------------------------------------------------------------


def read_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) of a live process in bytes, None once it has gone. RssAnon leaves out the pages of
    shared libraries and mapped files (torch's alone are ~400 MiB of every process's VmRSS), which the
    kernel keeps once for all processes: it is the part a leak grows."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "RssAnon:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("RssAnon", values["VmRSS"])


@dataclass
class MemoryTrace:
    """Memory samples of the run's processes: seconds since the robots started, and per process name the
    VmRSS (`rss`) and RssAnon (`anon`) in bytes at each of them (None: not running then)."""

    times_s: list[float] = field(default_factory=list)
    rss: dict[str, list[int | None]] = field(default_factory=dict)
    anon: dict[str, list[int | None]] = field(default_factory=dict)

    def sample(self, elapsed_s: float, children: list[ManagedProcess]) -> None:
        self.times_s.append(elapsed_s)
        for child in children:
            memory = read_memory(child.process.pid) if child.alive else None
            for table, value in ((self.rss, memory and memory[0]), (self.anon, memory and memory[1])):
                column = table.setdefault(child.name, [None] * (len(self.times_s) - 1))
                column.append(value)

    def series(self, name: str, since_s: float = 0.0, anon: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, bytes) of one process from `since_s` on, gaps dropped."""
        table = self.anon if anon else self.rss
        pairs = [
            (t, v)
            for t, v in zip(self.times_s, table.get(name, []), strict=False)
            if v is not None and t >= since_s
        ]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        seconds, values = zip(*pairs, strict=True)
        return np.asarray(seconds, np.float64), np.asarray(values, np.float64)


def slope_mib_per_min(seconds: np.ndarray, values: np.ndarray) -> float | None:
    """Least-squares slope in MiB/min; None with fewer than 3 samples (no trend to speak of)."""
    if seconds.size < 3 or float(np.ptp(seconds)) <= 0:
        return None
    return float(np.polyfit(seconds / 60.0, values / MIB, 1)[0])


# Draining the robots' spools -------------------------------------------------------------------------------


@dataclass
class DrainResult:
    uploaded: int
    left: dict[str, int]  # robot id -> episodes still in its spool (0 everywhere when drained)
    recovered_partials: int
    wall_s: float


def robot_process_args(
    fleet: FleetDemoConfig, run_dir: Path, index: int, robot_id: str, port: int, base: Path, trust: Any
) -> list[str]:
    """`sop robot run` arguments: the fleet demo's, with the camera off, one torch thread and a metrics line
    every 10 s (the last one gives the robot's upload and swap counters)."""
    return [
        *robot_args(fleet, run_dir, index, robot_id, port, base, trust),
        "--robot.image",
        "false",
        "--policy.num_threads",
        "1",
        "--metrics.log_interval_s",
        "10",
    ]


def drain_spools(robot_argv: dict[str, list[str]], timeout_s: float) -> DrainResult:
    """Upload what the stopped robots left in their spools, with each robot's own config and uploader."""
    from robot_client.config import RobotConfig
    from robot_client.learner_channel import LearnerChannel
    from robot_client.metrics import RobotMetrics
    from robot_client.recorder import Spool
    from robot_client.uploader import Uploader

    started = time.monotonic()
    parts: list[tuple[str, Spool, LearnerChannel, Uploader]] = []
    recovered = 0
    try:
        for robot_id, argv in robot_argv.items():
            config = parse_config(RobotConfig, argv[2:])  # drop "robot run"
            metrics = RobotMetrics(f"{robot_id}-drain")
            spool = Spool(config.spool_dir, config.quarantine_dir, config.spool, metrics)
            recovered += len(spool.recover_partials())
            link = LearnerChannel(config.learner, config.robot_id)
            uploader = Uploader(config, link, spool, metrics)
            parts.append((robot_id, spool, link, uploader))
            uploader.start()
        deadline = started + timeout_s
        while time.monotonic() < deadline and any(spool.pending() for _, spool, _, _ in parts):
            time.sleep(0.5)
    finally:
        for _, _, link, uploader in parts:
            uploader.stop(10.0)
            link.close()
    return DrainResult(
        uploaded=sum(len(uploader.uploaded) for *_, uploader in parts),
        left={robot_id: len(spool.pending()) for robot_id, spool, _, _ in parts},
        recovered_partials=recovered,
        wall_s=time.monotonic() - started,
    )


# The run ---------------------------------------------------------------------------------------------------


@dataclass
class SoakRun:
    started_at: float  # wall clock when the robots were started
    online_s: float  # seconds from the robots' start to their stop signal
    robots_stopped_at: float  # wall clock of the stop signal
    memory: MemoryTrace
    exit_codes: dict[str, int | None]
    drain: DrainResult
    interrupted: bool


class Interrupted(Exception):
    """SIGTERM / SIGINT during the run: stop the fleet and still report what was measured."""


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _progress_line(run_dir: Path, robot_ids: list[str], elapsed_s: float, memory: MemoryTrace) -> str:
    episodes = sum(len(read_jsonl(run_dir / "robots" / r / "episodes.jsonl")) for r in robot_ids)
    train = read_jsonl(run_dir / "learner" / "train.jsonl")
    step = train[-1]["step"] if train else 0
    rss = memory.rss.get("learner", [None])[-1]
    rss_text = f"{rss / MIB:.0f} MiB" if rss is not None else "-"
    return f"{elapsed_s / 60:5.1f} min: {episodes} episodes, learner step {step}, learner RSS {rss_text}"


def run_soak_fleet(
    config: SoakBenchConfig, run_dir: Path, base: Path, demos: Path, console: Console
) -> SoakRun:
    """Learner and robots up, `minutes` of load with RSS samples, robots stopped, spools drained, learner
    stopped. Children are always stopped (FleetProcesses), also on an exception or a signal."""
    fleet = config.fleet(str(run_dir))
    robot_ids = [f"robot-{i}" for i in range(config.robots)]
    trust = write_fleet_trust(run_dir, robot_ids)
    processes = FleetProcesses(run_dir / "logs")
    port = free_port()
    env = {"OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    memory = MemoryTrace()
    argv = {
        robot_id: robot_process_args(fleet, run_dir, i, robot_id, port, base, trust)
        for i, robot_id in enumerate(robot_ids)
    }
    codes: dict[str, int | None] = {}
    drain = DrainResult(0, {}, 0, 0.0)
    interrupted = False
    started = time.monotonic()
    started_at = robots_stopped_at = time.time()
    online_s = 0.0
    try:
        with _interruptible():
            learner = processes.start("learner", learner_args(fleet, run_dir, port, base, demos, trust), env)
            wait_for_port("127.0.0.1", port, timeout_s=180, process=learner.process)
            console.print(
                f"learner listening on 127.0.0.1:{port}; starting {config.robots} robot daemons for "
                f"{config.minutes:g} min"
            )
            robots = [processes.start(robot_id, args, env) for robot_id, args in argv.items()]
            started, started_at = time.monotonic(), time.time()
            deadline = started + 60.0 * config.minutes
            next_sample = next_line = started
            try:
                while (now := time.monotonic()) < deadline:
                    dead = processes.dead()
                    if dead:
                        names = ", ".join(c.name for c in dead)
                        raise RuntimeError(
                            f"{names} exited during the soak; last log lines:\n{processes.tail(dead[0])}"
                        )
                    if now >= next_sample:
                        memory.sample(now - started, processes.children)
                        next_sample += config.sample_every_s
                    if now >= next_line:
                        console.print(_progress_line(run_dir, robot_ids, now - started, memory))
                        next_line += 60.0
                    time.sleep(max(0.05, min(next_sample, deadline) - time.monotonic()))
            except Interrupted:
                interrupted = True
                console.print("[yellow]interrupted: stopping the fleet, then draining and reporting[/yellow]")
            online_s, robots_stopped_at = time.monotonic() - started, time.time()
            memory.sample(online_s, processes.children)
            # SIGTERM the robots, as many at a time as there are cores: each ends its episode as aborted,
            # flushes its spool and exits. Sixteen interpreters tearing down at once on two cores took longer
            # than the daemon's 10 s exit bound (its watchdog then exits with status 1; nothing is lost).
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                for robot, code in zip(
                    robots, pool.map(lambda r: processes.stop(r, 30.0), robots), strict=True
                ):
                    codes[robot.name] = code
            console.print(
                f"robots stopped (exit codes {sorted(set(codes.values()), key=str)}); draining their spools"
            )
            drain = drain_spools(argv, config.drain_timeout_s)
            memory.sample(time.monotonic() - started, [learner])
    finally:
        codes.update({k: v for k, v in processes.stop_all(timeout_s=30).items() if k not in codes})
    return SoakRun(started_at, online_s, robots_stopped_at, memory, codes, drain, interrupted)


# Accounting and figures -----------------------------------------------------------------------------------


def account_episodes(run_dir: Path, robot_ids: list[str]) -> dict[str, Any]:
    """Every episode the robots logged against the learner's replay: lost, duplicated, left behind."""
    from sop.data.episode_store import EpisodeStore

    replay = EpisodeStore(run_dir / "learner" / "replay", create=False)
    ours = set(robot_ids)
    committed = {info.episode_id: info for info in replay.list() if info.robot_id in ours}
    logged: list[str] = []
    empty: list[str] = []
    quarantined: list[str] = []
    left_in_spool = 0
    for robot_id in robot_ids:
        for row in read_jsonl(run_dir / "robots" / robot_id / "episodes.jsonl"):
            # An episode stopped before its first step has nothing to record: the recorder keeps no
            # zero-step episode (robot_client/recorder.py), so the learner cannot have it either.
            (logged if int(row.get("num_steps", 1)) > 0 else empty).append(str(row["episode_id"]))
        quarantine = run_dir / "robots" / robot_id / "quarantine"
        if quarantine.is_dir():
            quarantined += [p.name for p in quarantine.iterdir()]
        spool = run_dir / "robots" / robot_id / "spool"
        if spool.is_dir():
            store = EpisodeStore(spool, create=False, durable=False)
            left_in_spool += len(store.list()) + len(store.partial_episodes())
    logged_set = set(logged)
    twice_logged = sorted(e for e, n in Counter(logged).items() if n > 1)
    # One recording under two ids would have the same robot and start time.
    twice_committed = [
        k for k, n in Counter((i.robot_id, i.started_at) for i in committed.values()).items() if n > 1
    ]
    unlogged = [i for e, i in committed.items() if e not in logged_set]
    return {
        "logged": len(logged),
        "logged_without_steps": len(empty),
        "committed": len(committed),
        "lost": sorted(logged_set - set(committed)),
        "empty_but_committed": sorted(set(empty) & set(committed)),
        "duplicated": twice_logged + [f"{robot} started_at={at}" for robot, at in twice_committed],
        "quarantined_on_robots": sorted(quarantined),
        "left_in_spools": left_in_spool,
        # Committed but not in an episode log: recovered partial recordings (aborted), nothing else.
        "committed_unlogged": len(unlogged),
        "committed_unlogged_not_aborted": sum(str(i.outcome) != "aborted" for i in unlogged),
        "infos": list(committed.values()),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    array = np.asarray(values, np.float64)
    return {
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
        "n": int(array.size),
    }


_METRICS_LINE = re.compile(r"uploads ok (\d+) retried (\d+) quarantined (\d+) \| swaps (\d+) rejected (\d+)")


def robot_log_figures(log_path: Path) -> dict[str, int]:
    """From a robot's log: the upload and swap counters of its last metrics line (at most 10 s before its
    stop), whether `stop()` finished ("stopped in"), and whether the forced-exit watchdog then had to end
    the process (faulthandler's "Timeout" dump: the interpreter's exit hung after a clean stop)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    figures = {
        "stopped_cleanly": int("robot_client.daemon: stopped in" in text),
        "forced_exit": int(re.search(r"^Timeout \(\d+:\d\d:\d\d\)!", text, re.MULTILINE) is not None),
    }
    matches = _METRICS_LINE.findall(text)
    if matches:
        names = ("uploads_ok", "upload_retries", "quarantined", "swaps", "rejected")
        figures.update(zip(names, (int(v) for v in matches[-1]), strict=True))
    return figures


def _process_figures(memory: MemoryTrace, name: str, warmup_s: float, online_s: float) -> dict[str, Any]:
    """One process's VmRSS and RssAnon figures; slopes fit the samples from `warmup_s` to the robots' stop."""
    figures: dict[str, Any] = {}
    for prefix, anon in (("", False), ("anon_", True)):
        t, v = memory.series(name, anon=anon)
        in_run = t <= online_s + 1e-6
        fit = in_run & (t >= warmup_s)
        figures[prefix + "first_mib"] = float(v[0] / MIB) if v.size else None
        figures[prefix + "at_warmup_mib"] = float(v[fit][0] / MIB) if fit.any() else None
        figures[prefix + "end_of_run_mib"] = float(v[in_run][-1] / MIB) if in_run.any() else None
        figures[prefix + "max_mib"] = float(v.max() / MIB) if v.size else None
        figures[prefix + "slope_mib_per_min"] = slope_mib_per_min(t[fit], v[fit])
        if not anon:
            figures["after_drain_mib"] = float(v[-1] / MIB) if v.size else None
            figures["fit_samples"] = int(fit.sum())
    return figures


def memory_figures(
    memory: MemoryTrace, robot_ids: list[str], warmup_s: float, online_s: float
) -> dict[str, Any]:
    robots = {r: _process_figures(memory, r, warmup_s, online_s) for r in robot_ids}

    def stat(key: str, how: Any) -> float | None:
        found = [r[key] for r in robots.values() if r[key] is not None]
        return float(how(found)) if found else None

    return {
        "samples": len(memory.times_s),
        "warmup_s": warmup_s,
        "learner": _process_figures(memory, "learner", warmup_s, online_s),
        "robots": {
            "median_end_mib": stat("end_of_run_mib", np.median),
            "max_mib": stat("max_mib", max),
            "sum_anon_end_mib": stat("anon_end_of_run_mib", sum),
            "median_slope_mib_per_min": stat("slope_mib_per_min", np.median),
            "max_slope_mib_per_min": stat("slope_mib_per_min", max),
            "median_anon_slope_mib_per_min": stat("anon_slope_mib_per_min", np.median),
            "max_anon_slope_mib_per_min": stat("anon_slope_mib_per_min", max),
            "per_robot": robots,
        },
        "trace": {"seconds": memory.times_s, "rss_bytes": memory.rss, "anon_bytes": memory.anon},
    }


def _last_logged(train: list[dict[str, Any]], key: str) -> float | None:
    """The last value of `key` the trainer logged to train.jsonl, or None if it never did."""
    values = [float(record[key]) for record in train if isinstance(record.get(key), (int, float))]
    return values[-1] if values else None


def summarize_soak(config: SoakBenchConfig, run_dir: Path, run: SoakRun) -> dict[str, Any]:
    robot_ids = [f"robot-{i}" for i in range(config.robots)]
    accounting = account_episodes(run_dir, robot_ids)
    infos = accounting.pop("infos")
    during = [i.committed_at - i.ended_at for i in infos if i.committed_at <= run.robots_stopped_at]
    drained = [i.committed_at - i.ended_at for i in infos if i.committed_at > run.robots_stopped_at]
    logged = [row for r in robot_ids for row in read_jsonl(run_dir / "robots" / r / "episodes.jsonl")]
    events = [row for row in logged if int(row["num_steps"]) > 0]
    train = read_jsonl(run_dir / "learner" / "train.jsonl")
    published = sorted({int(r["published_version"]) for r in train if r.get("published_version") is not None})
    counters = {r: robot_log_figures(run_dir / "logs" / f"{r}.log") for r in robot_ids}
    # A robot that did not exit 0 crashed, unless it had stopped cleanly and only its exit needed the watchdog.
    crashed = [
        r
        for r in robot_ids
        if run.exit_codes.get(r) != 0 and not (counters[r]["stopped_cleanly"] and counters[r]["forced_exit"])
    ]
    versions = {
        r: sorted({int(e["policy_version"]) for e in events if e["robot_id"] == r}) for r in robot_ids
    }
    warmup_s = min(config.warmup_s, run.online_s)
    memory = memory_figures(run.memory, robot_ids, warmup_s, run.online_s)
    slope = memory["learner"]["slope_mib_per_min"]
    frames_in_fit = sum(
        int(e["num_steps"])
        for e in events
        if warmup_s <= float(e["ended_at"]) - run.started_at <= run.online_s
    )
    frames_per_min = frames_in_fit / max(1e-9, (run.online_s - warmup_s) / 60.0)
    learner_log = run_dir / "logs" / "learner.log"
    learner_text = learner_log.read_text(errors="replace") if learner_log.exists() else ""
    return {
        "robots": config.robots,
        "minutes": config.minutes,
        "online_s": run.online_s,
        "interrupted": run.interrupted,
        "tasks": list(config.tasks),
        "robot_rate_hz": config.robot_rate_hz,
        "machine": machine_description(),
        "accounting": accounting,
        "lost": len(accounting["lost"]),
        "duplicated": len(accounting["duplicated"]),
        "receipt_latency_s": {"during_run": percentiles(during), "drained_after_stop": percentiles(drained)},
        "episodes": len(events),
        "frames": sum(int(e["num_steps"]) for e in events),
        "intervention_frames": sum(int(e.get("intervention_frames", 0)) for e in events),
        "take_overs": sum(int(e.get("take_overs", 0)) for e in events),
        "outcomes": dict(Counter(str(e["outcome"]) for e in events)),
        "learner_steps": max((int(r["step"]) for r in train), default=0),
        "replay_held_frames": _last_logged(train, "replay/held_frames"),
        "replay_evicted_episodes": _last_logged(train, "replay/evicted_episodes"),
        "checkpoints_published": len(published),
        "checkpoints_swapped": sum(c.get("swaps", 0) for c in counters.values()),
        "checkpoints_rejected": sum(c.get("rejected", 0) for c in counters.values()),
        "upload_retries": sum(c.get("upload_retries", 0) for c in counters.values()),
        "policy_versions_run": versions,
        "learner_log_errors": sum(" ERROR " in line for line in learner_text.splitlines()),
        "drain": dataclasses.asdict(run.drain),
        "exit_codes": run.exit_codes,
        "robots_crashed": crashed,
        "robots_forced_exit_after_clean_stop": sum(c["forced_exit"] for c in counters.values()),
        "memory": memory,
        "frames_per_min_after_warmup": frames_per_min,
        "learner_slope_kib_per_1000_frames": (slope * 1024 / (frames_per_min / 1000))
        if slope is not None and frames_per_min > 0
        else None,
        "slope_target_mib_per_min": config.max_rss_slope_mib_per_min,
        "slope_within_target": slope is not None and slope < config.max_rss_slope_mib_per_min,
    }


def machine_description() -> str:
    """The shared machine line, and how loaded the machine was when the run ended (a soak shares the cores)."""
    return f"{describe_machine().summary()}; load average at the end of the run {load_average()}"


# Report ----------------------------------------------------------------------------------------------------


def plot_rss(path: Path, results: dict[str, Any]) -> Path:
    """Learner RSS (and RssAnon) over time with the post-warm-up fit; the robots' RSS, median and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = results["memory"]
    trace = memory["trace"]
    minutes = np.asarray(trace["seconds"], np.float64) / 60.0

    def column(table: str, name: str) -> np.ndarray:
        values = trace[table].get(name, [])
        padded = values + [None] * (minutes.size - len(values))
        return np.asarray([np.nan if v is None else v / MIB for v in padded], np.float64)

    stopped = results["online_s"] / 60.0
    warmup = memory["warmup_s"] / 60.0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.0), sharex=True)
    learner = column("rss_bytes", "learner")
    top.plot(minutes, learner, marker=".", linewidth=1, label="learner RSS")
    top.plot(minutes, column("anon_bytes", "learner"), linewidth=1, label="learner RssAnon")
    slope = memory["learner"]["slope_mib_per_min"]
    fit = (minutes >= warmup) & (minutes <= stopped) & np.isfinite(learner)
    if slope is not None and fit.sum() >= 2:
        line = np.polyval(np.polyfit(minutes[fit], learner[fit], 1), minutes[fit])
        top.plot(minutes[fit], line, color="red", label=f"fit: {slope:+.2f} MiB/min")
    top.set_ylabel("learner (MiB)")
    bottom.set_ylabel("robots' RSS (MiB)")
    robots = [column("rss_bytes", name) for name in trace["rss_bytes"] if name.startswith("robot-")]
    if robots:
        stacked = np.stack(robots)
        running = np.isfinite(stacked).all(axis=0)  # samples taken while every robot ran
        x, y = minutes[running], stacked[:, running]
        bottom.fill_between(x, y.min(axis=0), y.max(axis=0), alpha=0.3, label="min-max")
        bottom.plot(x, np.median(y, axis=0), label="median")
    for axis in (top, bottom):
        axis.axvline(warmup, color="grey", linestyle=":", label="end of warm-up")
        axis.axvline(stopped, color="black", linestyle="--", linewidth=0.8, label="robots stopped")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", loc="lower right")
    bottom.set_xlabel("minutes since the robots started")
    figure.suptitle(
        f"Soak: {results['robots']} robots at {results['robot_rate_hz']:g} Hz, {results['minutes']:g} min"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def markdown_table(results: dict[str, Any]) -> str:
    memory, learner, robots = results["memory"], results["memory"]["learner"], results["memory"]["robots"]
    latency = results["receipt_latency_s"]
    during, drained = latency["during_run"], latency["drained_after_stop"]
    accounting = results["accounting"]
    within = "within" if results["slope_within_target"] else "NOT within"
    rows = [
        (
            "episodes / frames / intervention frames",
            f"{results['episodes']} / {results['frames']} / {results['intervention_frames']}",
        ),
        (
            "lost / duplicated episodes",
            f"**{results['lost']} / {results['duplicated']}** (of {accounting['logged']} logged; "
            f"{accounting['committed']} committed)",
        ),
        (
            "left in spools / quarantined on robots",
            f"{accounting['left_in_spools']} / {len(accounting['quarantined_on_robots'])}",
        ),
        (
            "receipt latency p50 / p99 (episode end -> commit), during the run",
            f"{_fmt(during['p50'], '.2f', ' s')} / {_fmt(during['p99'], '.2f', ' s')} (n={during['n']})",
        ),
        (
            "drained after the stop: episodes (receipt p50), drain time",
            f"{drained['n']} ({_fmt(drained['p50'], '.1f', ' s')}), {results['drain']['wall_s']:.1f} s",
        ),
        (
            "learner RSS: start / after warm-up / end of run",
            f"{_fmt(learner['first_mib'], '.0f')} / {_fmt(learner['at_warmup_mib'], '.0f')} / "
            f"{_fmt(learner['end_of_run_mib'], '.0f')} MiB "
            f"(RssAnon {_fmt(learner['anon_end_of_run_mib'], '.0f')} MiB)",
        ),
        (
            f"learner RSS slope after the {memory['warmup_s'] / 60:.1f} min warm-up",
            f"**{_fmt(learner['slope_mib_per_min'], '+.2f', ' MiB/min')}** ({within} the "
            f"{results['slope_target_mib_per_min']:g} MiB/min target; {learner['fit_samples']} samples); "
            f"RssAnon {_fmt(learner['anon_slope_mib_per_min'], '+.2f', ' MiB/min')}",
        ),
        (
            "... per 1000 frames received",
            f"{_fmt(results['learner_slope_kib_per_1000_frames'], '+.1f', ' KiB')} "
            f"({results['frames_per_min_after_warmup']:.0f} frames/min)",
        ),
        (
            "robot RSS at the end: median / max; RssAnon summed over robots",
            f"{_fmt(robots['median_end_mib'], '.0f')} / {_fmt(robots['max_mib'], '.0f')} MiB; "
            f"{_fmt(robots['sum_anon_end_mib'], '.0f')} MiB",
        ),
        (
            "robot RSS slope after warm-up: median / max (RssAnon: median / max)",
            f"{_fmt(robots['median_slope_mib_per_min'], '+.2f')} / "
            f"{_fmt(robots['max_slope_mib_per_min'], '+.2f')} "
            f"({_fmt(robots['median_anon_slope_mib_per_min'], '+.2f')} / "
            f"{_fmt(robots['max_anon_slope_mib_per_min'], '+.2f')}) MiB/min",
        ),
        (
            "replay: frames held in memory / online episodes evicted by the bound, at the end",
            f"{_fmt(results.get('replay_held_frames'), '.0f')} / "
            f"{_fmt(results.get('replay_evicted_episodes'), '.0f')}",
        ),
        (
            "learner steps / checkpoints published",
            f"{results['learner_steps']} / {results['checkpoints_published']}",
        ),
        (
            "checkpoints swapped in / refused (all robots)",
            f"{results['checkpoints_swapped']} / {results['checkpoints_rejected']}",
        ),
        (
            "upload retries / learner ERROR log lines",
            f"{results['upload_retries']} / {results['learner_log_errors']}",
        ),
        (
            "robots crashed / exited by the watchdog after a clean stop",
            f"{len(results['robots_crashed'])} / {results['robots_forced_exit_after_clean_stop']} "
            f"(learner exit code {results['exit_codes'].get('learner')})",
        ),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def reproducing_command(config: SoakBenchConfig) -> str:
    """`sop bench soak` with the flags of every setting this run changed from configs/bench_soak.yaml."""
    shipped = _flatten(config_to_dict(parse_config(SoakBenchConfig, [], default_config="bench_soak.yaml")))
    ran = _flatten(config_to_dict(config))
    flags = [f"--robots {config.robots}", f"--minutes {config.minutes:g}"]
    for key, value in ran.items():
        if (
            key in ("robots", "minutes", "out", "results", "note", "base.cache_dir")
            or shipped.get(key) == value
        ):
            continue
        text = (
            ",".join(str(v) for v in value)
            if isinstance(value, list)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        flags.append(f"--{key} {text}")
    return "sop bench soak " + " ".join(flags)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_run_report(run_dir: Path, config: SoakBenchConfig, results: dict[str, Any], plot: Path) -> Path:
    accounting = results["accounting"]
    lines = [
        f"# Soak: {results['robots']} robots, {results['minutes']:g} min",
        "",
        f"Command: `{reproducing_command(config)}`. Machine: {results['machine']}.",
        "",
        markdown_table(results),
        "",
        f"Outcomes: {results['outcomes']}. Exit codes: {results['exit_codes']}.",
        f"Episodes stopped before their first step (not recorded, by design): "
        f"{accounting['logged_without_steps']}.",
        "Committed without an episode-log line (recovered partial recordings): "
        f"{accounting['committed_unlogged']} ({accounting['committed_unlogged_not_aborted']} not aborted).",
    ]
    if accounting["lost"]:
        lines.append(f"Lost ids: {', '.join(accounting['lost'][:20])}")
    if accounting["duplicated"]:
        lines.append(f"Duplicated: {', '.join(accounting['duplicated'][:20])}")
    lines += ["", f"![RSS over time]({plot.name})", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def write_markdown(path: Path, config: SoakBenchConfig, results: dict[str, Any], plot: Path) -> None:
    """The BENCHMARKS.md section, with the command and the machine beside the figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = path.with_suffix(".png")
    if plot.resolve() != image.resolve():
        shutil.copyfile(plot, image)
    link = repo_relative(image)
    unet = list(config.base.policy.down_dims)
    trainer = learner_config(config.learner).trainer
    how = (
        f"Command: `{reproducing_command(config)}` (configs/bench_soak.yaml). Machine: {results['machine']}; "
        f"learner and robots on the same cores. One `sop learner serve` ({trainer.num_threads} training "
        f"thread{'s' if trainer.num_threads != 1 else ''}, a checkpoint every {trainer.publish_every_steps} steps) and {config.robots} `sop robot run` daemons over gRPC on 127.0.0.1 "
        f"with mutual TLS and signed checkpoints; Meta-World {', '.join(config.tasks)} without rendering (state "
        f"only) at {config.robot_rate_hz:g} Hz, {config.sampler.type} sampling of a tiny diffusion policy (U-Net "
        f"{unet}, {config.base.bc_steps} BC steps), simulated operators on. RSS sampled every "
        f"{config.sample_every_s:g} s from /proc; the slope is a least-squares fit after the warm-up. Receipt "
        "latency is episode end to the learner's commit; lost / duplicated is the episode-id accounting of every "
        "robot's episode log against the learner's replay once the robots' spools were drained."
    )
    caveat = (
        "The replay holds the low-dimensional columns of the episodes it samples from in memory "
        "(sop/data/window_sampler.py): about 0.2 KiB per frame for Meta-World's 39-dimensional state. The soak "
        f"bounds it at {learner_config(config.learner).replay.max_online_frames_per_task} online frames per task "
        "(replay.max_online_frames_per_task), reached during the warm-up, so the slope is that of the steady "
        "state a long-running learner lives in, not of data growth."
    )
    paragraphs = [f"## Soak: {config.robots} robots for {config.minutes:g} minutes", textwrap.fill(how, 110)]
    if config.note:
        paragraphs.append(textwrap.fill(config.note, 110))
    paragraphs += [markdown_table(results), textwrap.fill(caveat, 110), f"![RSS over time]({link})"]
    text = "\n\n".join(paragraphs) + "\n"
    path.write_text(text)


# The whole benchmark -------------------------------------------------------------------------------------


def run_soak_benchmark(config: SoakBenchConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    run_dir = open_run_dir(config.out, "runs/bench-soak-", config)
    console.print(f"[bold]SOP soak[/bold]: {config.robots} robots for {config.minutes:g} min -> {run_dir}")
    base, demos = prepare_base_policy(config.fleet(str(run_dir)), console)
    run = run_soak_fleet(config, run_dir, base, demos, console)
    results = summarize_soak(config, run_dir, run)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = plot_rss(run_dir / "rss.png", results)
    report = write_run_report(run_dir, config, results, plot)
    if config.results and not run.interrupted:
        write_markdown(Path(config.results), config, results, plot)
    console.print(markdown_table(results), soft_wrap=True)
    console.print(f"report: {report}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(SoakBenchConfig, args, default_config="bench_soak.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = run_soak_benchmark(config)
    except (Interrupted, KeyboardInterrupt):
        return 130  # before the fleet was up: nothing measured
    if results["interrupted"]:
        return 130
    # A soak that lost or duplicated an episode, left one behind, or saw a robot crash, failed.
    accounting = results["accounting"]
    failed = results["lost"] or results["duplicated"] or accounting["left_in_spools"]
    return 1 if failed or results["robots_crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
