"""`sop bench console`: how long an operator's command takes to move a robot, through the whole console path.

A learner (`sop learner serve`, console on, the fleet's mutual TLS) and `robots` robot daemons (`sop robot
run`, Meta-World robots at `rate_hz`, camera frames streamed to the console when `image` is set), each its
own process as in a deployment. An operator client speaks the page's protocol (`ConsoleClient`: REST login,
the live WebSocket) and, robot after robot, `trials` times: takes over, sends `teleops` teleop actions, each
with a value no policy sends in x (a marker), and hands back.

Afterwards the robots' uploaded episodes are read from the learner's store. The latency of a command is
from the client sending it (wall clock, same machine) to the start of the control tick whose record shows
its effect: the first intervention frame after a take-over, the first frame executing a teleop marker. The
robot reads commands inside the tick, after the tick's time stamp, so a command that lands just before the
read shows a latency slightly below zero; one control period is the nominal wait for the next tick.
Reported: p50 / p99 / max in milliseconds and in control periods, per command kind, with the robots' own
loop p99 and deadline misses beside (a robot starved of CPU answers late for that reason alone).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import command_line, markdown_table, percentile, write_report
from sop.config import parse_config

log = logging.getLogger(__name__)

MARKER_BASE = 0.3  # teleop markers: x = MARKER_BASE + MARKER_STEP * k, y = -0.5 (a policy's noise never hits)
MARKER_STEP = 0.002
OPERATOR = "bench-operator"
EPISODE_STEPS = 90
PASSWORD = "bench-operator-password"


@dataclass(frozen=True)
class ConsoleBenchConfig:
    """What `sop bench console` measures; the defaults are the reported run."""

    robots: int = field(default=4, metadata={"help": "robot daemons streaming to the console"})
    rate_hz: float = field(default=30.0, metadata={"help": "the robots' control rate"})
    image: bool = field(default=True, metadata={"help": "robots stream 64x64 camera frames"})
    telemetry_hz: float = field(default=10.0, metadata={"help": "telemetry (frames, state) rate per robot"})
    trials: int = field(default=5, metadata={"help": "take-overs per robot"})
    teleops: int = field(default=8, metadata={"help": "teleop actions per take-over"})
    teleop_gap_s: float = field(default=0.15, metadata={"help": "seconds between teleop actions"})
    work_dir: str = field(default="runs/bench-console", metadata={"help": "scratch folder (replaced)"})
    output: str = field(default="benchmarks/results/console.md", metadata={"help": "report section"})
    json: str | None = field(default="benchmarks/results/console.json", metadata={"help": "results"})
    screenshot: str | None = field(
        default=None,
        metadata={"help": "PNG of the console page (chromium) after the commands, e.g. docs/console.png"},
    )

    def __post_init__(self) -> None:
        if not 1 <= self.robots <= 16:
            raise ValueError(f"robots: {self.robots} must be 1..16")
        if self.rate_hz <= 0 or self.telemetry_hz <= 0:
            raise ValueError("rate_hz and telemetry_hz must be positive")
        if self.trials < 1 or not 1 <= self.teleops <= 200:
            raise ValueError("trials must be >= 1 and teleops 1..200")


@dataclass
class Sent:
    robot_id: str
    kind: str  # take_over | teleop
    sent_at: float
    marker: float | None = None


def _base_checkpoint(path: Path) -> Path:
    """A small freshly initialised state policy (what it does does not matter here, that it runs does)."""
    import torch

    from sop.normalization import NormalizationStats
    from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
    from sop.policies.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_arrays(
        {
            "observation.state": [rng.standard_normal((64, 39)).astype(np.float32)],
            "action": [rng.uniform(-1, 1, (64, 4)).astype(np.float32)],
        }
    )
    config = DiffusionPolicyConfig(
        state_dim=39,
        action_dim=4,
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=("reach-v3",),
        down_dims=(32, 64),
    )
    return DiffusionPolicy(config, stats, version=0).save(path)


def chromium_executable() -> str | None:
    """Debian's chromium (what scripts/setup.sh installs with apt-get), or None where there is none."""
    for candidate in (
        "/usr/lib/chromium/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _screenshot(url: str, robot_id: str, path: Path) -> None:
    """Log in as the bench's operator in headless chromium, show `robot_id`, save the page as `path`. The
    console's certificate is signed by the run's own CA, which chromium does not know: certificate errors are
    ignored for this loopback page."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    if executable is None:
        raise FileNotFoundError("no chromium binary for --screenshot (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, ignore_https_errors=True)
            page.goto(url)
            page.fill("#login-username", OPERATOR)
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector(f'tr[data-robot-id="{robot_id}"]')
            page.click(f'tr[data-robot-id="{robot_id}"]')
            page.wait_for_timeout(3000)  # a few updates: the frame, the actions, the history plot
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()


def _drive(
    bench: ConsoleBenchConfig, url: str, ca_file: str, robot_ids: list[str]
) -> tuple[list[Sent], dict[str, dict[str, Any]]]:
    """The commands sent, and each robot's health figures from its last heartbeat (the fleet view)."""
    from cloud_learner.console.client import ConsoleClient

    sent: list[Sent] = []
    marker = 0
    with ConsoleClient(url, OPERATOR, PASSWORD, ca_file=ca_file) as console, console.live() as live:
        deadline = time.monotonic() + 120
        while True:  # every robot streaming, before the clock starts
            rows = {r["robot_id"]: r for r in live.next_update()["robots"]}
            if all(rows.get(r, {}).get("state") == "running" for r in robot_ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"robots not all running after 120 s: {rows}")
        for trial in range(bench.trials):
            for robot_id in robot_ids:
                live.watch(robot_id)  # the page shows the robot it drives: its frames stream meanwhile
                sent.append(Sent(robot_id, "take_over", time.time()))
                live.take_over(robot_id, reason=f"bench trial {trial}")
                time.sleep(0.3)
                for _ in range(bench.teleops):
                    value = MARKER_BASE + MARKER_STEP * marker
                    marker += 1
                    sent.append(Sent(robot_id, "teleop", time.time(), value))
                    live.teleop(robot_id, [value, -0.5, 0.0, -1.0])
                    time.sleep(bench.teleop_gap_s)
                live.hand_back(robot_id, reason="bench")
                time.sleep(0.3)
        if live.errors:
            raise RuntimeError(f"the console refused commands: {live.errors[:3]}")
        time.sleep(1.0)  # one more heartbeat
        rows = {r["robot_id"]: r for r in console.get("fleet")["robots"]}
    figures = {
        robot_id: {
            "loop_p99_ms": rows[robot_id]["loop_p99_ms"],
            "deadline_misses": rows[robot_id]["deadline_misses"],
        }
        for robot_id in robot_ids
        if robot_id in rows
    }
    return sent, figures


def _wait_for_episodes(store_dir: Path, sent: list[Sent], timeout_s: float) -> None:
    """Until every robot's uploaded episodes reach past its last command (the running episode has ended
    and been uploaded), or `timeout_s`; the commands still not covered are reported as missing."""
    from sop.data.episode_store import EpisodeStore

    last: dict[str, float] = {}
    for command in sent:
        last[command.robot_id] = max(last.get(command.robot_id, 0.0), command.sent_at)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ended: dict[str, float] = {}
        for info in EpisodeStore(store_dir).list():
            ended[info.robot_id] = max(ended.get(info.robot_id, 0.0), info.ended_at)
        if all(ended.get(robot_id, 0.0) > at for robot_id, at in last.items()):
            return
        time.sleep(1.0)
    log.warning("not every robot uploaded the episode holding its last command within %.0f s", timeout_s)


def _latencies(sent: list[Sent], store_dir: Path) -> dict[str, list[float]]:
    """Seconds from each command to the first tick showing its effect, per kind (from the episodes)."""
    from sop.data.episode_store import EpisodeStore
    from sop.episode import ACTION, INTERVENTION, TIMESTAMP, Source

    store = EpisodeStore(store_dir)
    frames: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for info in store.list():
        if info.source is Source.ONLINE:
            episode = store.get(info.episode_id)
            frames.setdefault(info.robot_id, []).append(
                (episode.steps[TIMESTAMP], episode.steps[INTERVENTION], episode.steps[ACTION])
            )
    stamps = {r: np.concatenate([f[0] for f in fs]) for r, fs in frames.items()}
    order = {r: np.argsort(s) for r, s in stamps.items()}
    flags = {r: np.concatenate([f[1] for f in fs])[order[r]] for r, fs in frames.items()}
    actions = {r: np.concatenate([f[2] for f in fs])[order[r]] for r, fs in frames.items()}
    stamps = {r: s[order[r]] for r, s in stamps.items()}
    result: dict[str, list[float]] = {"take_over": [], "teleop": [], "missing": []}
    for command in sent:
        times = stamps.get(command.robot_id)
        if times is None:
            result["missing"].append(command.sent_at)
            continue
        after = times >= command.sent_at - 0.05  # a command read just after a tick's stamp counts there
        if command.kind == "take_over":
            hit = after & flags[command.robot_id]
        else:
            hit = after & np.isclose(actions[command.robot_id][:, 0], command.marker or 0.0, atol=1e-4)
        index = np.flatnonzero(hit)
        if index.size == 0:
            result["missing"].append(command.sent_at)
        else:
            result[command.kind].append(float(times[index[0]] - command.sent_at))
    return result


def run(bench: ConsoleBenchConfig, argv: list[str]) -> dict[str, Any]:
    from cloud_learner.console.accounts import Accounts, ConsoleRole
    from fleet_harness.processes import FleetProcesses, free_port, wait_for_port
    from sop.fleet_trust import create_fleet_trust, learner_flags, robot_flags

    root = Path(bench.work_dir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    robot_ids = [f"robot-{i}" for i in range(bench.robots)]
    trust = create_fleet_trust(root / "fleet", robot_ids, force=True)
    base = _base_checkpoint(root / "base")
    learner_dir = root / "learner"
    Accounts(learner_dir / "console").add(OPERATOR, PASSWORD, ConsoleRole.OPERATOR)
    port, console_port = free_port(), free_port()
    processes = FleetProcesses(root / "logs")
    learner = processes.start(
        "learner",
        [
            "learner",
            "serve",
            "--config",
            "learner.yaml",
            "--run_dir",
            str(learner_dir),
            "--server.address",
            f"127.0.0.1:{port}",
            "--console.address",
            f"127.0.0.1:{console_port}",
            "--trainer.enabled",
            "false",
            *learner_flags(trust),
        ],
    )
    try:
        wait_for_port("127.0.0.1", port, timeout_s=60, process=learner.process)
        wait_for_port("127.0.0.1", console_port, timeout_s=30, process=learner.process)
        for index, robot_id in enumerate(robot_ids):
            processes.start(
                robot_id,
                [
                    "robot",
                    "run",
                    "--config",
                    "robot.yaml",
                    "--robot_id",
                    robot_id,
                    "--learner.address",
                    f"127.0.0.1:{port}",
                    *robot_flags(trust, robot_id),
                    "--data_dir",
                    str(root / "robots"),
                    "--robot.task",
                    "reach-v3",
                    "--robot.seed",
                    str(index),
                    "--robot.image",
                    json.dumps(bench.image),
                    "--policy.base_checkpoint",
                    str(base),
                    "--control.rate_hz",
                    str(bench.rate_hz),
                    "--control.telemetry_hz",
                    str(bench.telemetry_hz),
                    "--control.max_episode_steps",
                    str(EPISODE_STEPS),
                    "--operator.type",
                    "none",
                ],
                env={"OMP_NUM_THREADS": "1"},
            )
        started = time.time()
        load_before = load_average()
        url = f"https://127.0.0.1:{console_port}/"
        sent, figures = _drive(bench, url, str(trust.ca_cert), robot_ids)
        load = load_average()
        if bench.screenshot is not None:
            _screenshot(url, robot_ids[0], Path(bench.screenshot))
        _wait_for_episodes(learner_dir / "replay", sent, timeout_s=180)
    finally:
        processes.stop_all()
    dead = [child.name for child in processes.dead() if child.name != "learner"]
    latencies = _latencies(sent, learner_dir / "replay")
    period_s = 1.0 / bench.rate_hz
    kinds = {}
    for kind in ("take_over", "teleop"):
        values = np.asarray(latencies[kind])
        kinds[kind] = {
            "n": int(values.size),
            "p50_ms": percentile(values, 50) * 1e3,
            "p99_ms": percentile(values, 99) * 1e3,
            "max_ms": float(values.max()) * 1e3 if values.size else float("nan"),
            "p50_periods": percentile(values, 50) / period_s,
            "p99_periods": percentile(values, 99) / period_s,
        }
    return {
        "kinds": kinds,
        "missing": len(latencies["missing"]),
        "commands": len(sent),
        "robots": figures,
        "wall_s": time.time() - started,
        "load": [load_before, load],
        "dead_processes": dead,
        "config": asdict(bench),
        "command": command_line("sop bench console", argv),
        "machine": describe_machine().summary(),
    }


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    rows = [
        [
            kind.replace("_", "-"),
            str(values["n"]),
            f"{values['p50_ms']:.1f}",
            f"{values['p99_ms']:.1f}",
            f"{values['max_ms']:.1f}",
            f"{values['p50_periods']:.2f}",
            f"{values['p99_periods']:.2f}",
        ]
        for kind, values in results["kinds"].items()
    ]
    robots = ", ".join(
        f"{robot_id}: period p99 {figures['loop_p99_ms']} ms, {figures['deadline_misses']} deadline misses"
        for robot_id, figures in sorted(results["robots"].items())
    )
    lines = [
        "## Console: operator command to robot action"
        + (" (robots streaming camera frames)" if config["image"] else " (state-only robots)"),
        "",
        f"`{results['command']}` — {config['robots']} robot processes at {config['rate_hz']:.0f} Hz"
        f"{' streaming 64x64 camera frames' if config['image'] else ''} (telemetry {config['telemetry_hz']:.0f} Hz), "
        f"one operator client on the console's WebSocket; {results['machine']}. Target: p99 <= 2 control periods.",
        "",
        *markdown_table(
            ["command", "n", "p50 ms", "p99 ms", "max ms", "p50 periods", "p99 periods"], rows, "lrrrrrr"
        ),
        "",
        f"Commands without a visible effect in the episodes: {results['missing']} of {results['commands']}. "
        f"Robots' own loops: {robots or 'no figures logged'}. Load average before/after: "
        f"{results['load'][0]} / {results['load'][1]}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    bench = parse_config(ConsoleBenchConfig, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(bench, args)
    text = report(results)
    write_report(bench.output, text)
    if bench.json is not None:
        Path(bench.json).parent.mkdir(parents=True, exist_ok=True)
        Path(bench.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text)
    return 0
