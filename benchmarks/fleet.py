"""`sop bench fleet`: does a bigger fleet learn faster per robot, and does online data beat more demonstrations?

    sop bench fleet                          # configs/bench_fleet.yaml: 1, 2 and 4 robots
    sop bench fleet --robots 1,2 --per_robot_steps 3000 --fleet.tasks drawer-open-v3

Fleet scaling. For each fleet size n the same cached base policy goes online exactly as in `sop demo` (the
learner and n robot daemons as separate processes over gRPC on 127.0.0.1, simulated operators) until every
robot has taken `per_robot_steps` env steps on average. Each time the fleet's mean per-robot step count
crosses a multiple of `eval_every_steps`, the harness snapshots the newest published checkpoint. When the
fleet has stopped, every snapshot is evaluated on the same held-out seeded episodes (no operator) by
parallel `sop sim eval` processes. "Steps to target" for a fleet size is the per-robot step count of its
first snapshot whose success reaches `target`.

The x axis is per-robot env steps because that is what a fleet buys: with n robots the learner sees n
times the data per robot-hour. The robots run in real time (`fleet.robot_rate_hz`, 30 Hz), as real robots
do, so the learner — on the same cores here, on its own GPUs in SOP — keeps about the same pace per robot
step whatever the fleet size (the table reports learner steps per robot step, so the reader can check).
Free-running simulated robots step far faster than real ones and leave this learner ~0.07 updates per robot
step, so every fleet size is learner-bound (measured: the curves then coincide step for step).

Online vs offline. The learner's own trainer (cloud_learner/offline_training.py) continues the same base
policy on its demonstrations plus as many extra scripted demonstrations as the largest fleet collected
online episodes (per task, the same split), for as many learner steps as that fleet's learner took, and
is evaluated on the same episodes.

Output: `out/` (one folder per fleet size with the learner's and robots' files, `results.json`,
`fleet_scaling.png`) and the markdown section `results` (benchmarks/results/fleet_scaling.md) that
`scripts/collect_benchmarks.py` puts into BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.machine import describe_machine
from benchmarks.reporting import repo_relative
from fleet_harness.demo import (
    EVAL_SEED_OFFSET,
    FleetDemoConfig,
    FleetView,
    flatten_overrides,
    learner_training_args,
    open_run_dir,
    prepare_base_policy,
    run_online_phase,
    sampler_flags,
)
from fleet_harness.processes import FleetProcesses, ManagedProcess
from fleet_harness.report import read_episode_events, read_jsonl
from sop.config import config_from_dict, parse_config
from sop.success_rate import format_stored_rate

log = logging.getLogger(__name__)

OFFLINE_DEMO_SEED = 500_000  # extra demonstrations: disjoint from base demos, robots and held-out seeds


def _default_fleet() -> FleetDemoConfig:
    return FleetDemoConfig(
        tasks=["reach-v3"], budget_s=900.0, eval_episodes=30, robot_rate_hz=30.0, live=False
    )


@dataclass(frozen=True)
class FleetBenchConfig:
    robots: list[int] = field(default_factory=lambda: [1, 2, 4], metadata={"help": "fleet sizes to run"})
    per_robot_steps: int = field(
        default=5000, metadata={"help": "each run stops when the mean robot has taken this many env steps"}
    )
    eval_every_steps: int = field(
        default=500, metadata={"help": "per-robot env steps between evaluated checkpoint snapshots"}
    )
    target: float = field(default=0.8, metadata={"help": "held-out success the fleets race to"})
    eval_workers: int = field(default=2, metadata={"help": "parallel `sop sim eval` processes"})
    offline: bool = field(default=True, metadata={"help": "also run the offline arm (extra demonstrations)"})
    report_only: bool = field(
        default=False, metadata={"help": "only re-derive the report from out/results.json (no runs)"}
    )
    out: str = field(default="", metadata={"help": "output folder; default runs/bench-fleet-<timestamp>"})
    results: str = field(
        default="benchmarks/results/fleet_scaling.md", metadata={"help": "markdown section; empty: none"}
    )
    fleet: FleetDemoConfig = field(
        default_factory=_default_fleet,
        metadata={"help": "the fleet as in `sop demo`; robots is set per run, budget_s caps each run"},
    )

    def __post_init__(self) -> None:
        if not self.robots or any(n < 1 for n in self.robots):
            raise ValueError(f"robots: give fleet sizes >= 1, got {self.robots}")
        if len(set(self.robots)) != len(self.robots):
            raise ValueError(f"robots: sizes repeat in {self.robots}")
        if self.eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be >= 1, got {self.eval_every_steps}")
        if self.per_robot_steps < self.eval_every_steps:
            raise ValueError(
                f"per_robot_steps ({self.per_robot_steps}) must be >= eval_every_steps ({self.eval_every_steps})"
            )
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {self.target}")
        if self.eval_workers < 1:
            raise ValueError(f"eval_workers must be >= 1, got {self.eval_workers}")


# Snapshots during a run ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The newest published checkpoint when the fleet's mean per-robot steps crossed `grid_steps`."""

    grid_steps: int
    per_robot_steps: float
    version: int
    learner_step: int
    wall_s: float
    path: str
    success: float | None = None


def mean_robot_steps(view: FleetView) -> float:
    rows = view.robot_rows()
    return sum(row["env_steps"] for row in rows.values()) / max(1, len(rows))


class SnapshotTaker:
    """The online phase's watch callback: snapshot at each grid crossing, stop at `per_robot_steps`."""

    def __init__(self, run_dir: Path, per_robot_steps: int, every: int) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / "snapshots"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.per_robot_steps = per_robot_steps
        self.grid = list(range(every, per_robot_steps + 1, every))
        self.snapshots: list[Snapshot] = []
        self.started = time.monotonic()

    def __call__(self, view: FleetView) -> bool:
        steps = mean_robot_steps(view)
        while self.grid and steps >= self.grid[0]:
            self.snapshots.append(self._take(self.grid.pop(0), steps))
        return steps >= self.per_robot_steps

    def _take(self, grid_steps: int, steps: float) -> Snapshot:
        from cloud_learner.checkpoint_store import CheckpointStore

        store = CheckpointStore(self.run_dir / "learner" / "checkpoints")
        record = store.latest()
        if record is None:
            raise RuntimeError(f"{self.run_dir}: the learner has published no checkpoint yet")
        path = self.folder / f"steps-{grid_steps:07d}-v{record.version:06d}.safetensors"
        path.write_bytes(store.read_blob(record.version))
        return Snapshot(
            grid_steps=grid_steps,
            per_robot_steps=steps,
            version=record.version,
            learner_step=record.train_step,
            wall_s=time.monotonic() - self.started,
            path=str(path),
        )


# Evaluation ---------------------------------------------------------------------------------------------


def evaluate_in_parallel(checkpoints: list[str], config: FleetBenchConfig, log_dir: Path) -> dict[str, float]:
    """Mean held-out success of each checkpoint, by `eval_workers` concurrent `sop sim eval` processes."""
    fleet = config.fleet
    results: dict[str, float] = {}
    pending = list(enumerate(dict.fromkeys(checkpoints)))
    processes = FleetProcesses(log_dir)
    running: dict[str, tuple[ManagedProcess, Path]] = {}
    env = {"OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    try:
        while pending or running:
            while pending and len(running) < config.eval_workers:
                index, checkpoint = pending.pop(0)
                out = log_dir / f"eval-{index:03d}.json"
                args = [
                    "sim",
                    "eval",
                    "--checkpoint",
                    checkpoint,
                    "--tasks",
                    "[" + ",".join(fleet.tasks) + "]",
                    "--episodes",
                    str(fleet.eval_episodes),
                    *sampler_flags("sampler", fleet.sampler),
                    "--seed_offset",
                    str(EVAL_SEED_OFFSET),
                    "--max_steps",
                    str(fleet.max_episode_steps),
                    "--json",
                    str(out),
                ]
                running[checkpoint] = (processes.start(out.stem, args, env), out)
            for checkpoint, (child, out) in list(running.items()):
                if child.alive:
                    continue
                del running[checkpoint]
                if child.process.returncode != 0:
                    raise RuntimeError(
                        f"evaluating {checkpoint} failed (exit {child.process.returncode}):\n"
                        f"{processes.tail(child)}"
                    )
                results[checkpoint] = float(json.loads(out.read_text())["success_rate"])
            time.sleep(0.5)
    finally:
        processes.stop_all(timeout_s=10)
    return results


def steps_to_target(points: list[tuple[float, float]], target: float) -> float | None:
    """Per-robot steps of the first (steps, success) point, in step order, whose success reaches `target`."""
    for steps, success in sorted(points):
        if success >= target:
            return steps
    return None


# One fleet size, and the offline arm ---------------------------------------------------------------------


@dataclass
class FleetSizeResult:
    robots: int
    snapshots: list[Snapshot]
    episodes: int
    episodes_per_task: dict[str, int]
    intervention_frames: int
    learner_steps: int
    online_wall_s: float
    exit_codes: dict[str, int | None]


def run_fleet_size(
    config: FleetBenchConfig, robots: int, base: Path, demos: Path, out: Path, console: Console
) -> FleetSizeResult:
    run_dir = out / f"robots-{robots}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh learner run dir: never resume a previous benchmark's training
    run_dir.mkdir(parents=True)
    fleet = dataclasses.replace(config.fleet, robots=robots, out=str(run_dir))
    taker = SnapshotTaker(run_dir, config.per_robot_steps, config.eval_every_steps)
    console.print(
        f"[bold]{robots} robot(s)[/bold]: online until {config.per_robot_steps} env steps per robot"
    )
    started = time.monotonic()
    online = run_online_phase(fleet, run_dir, base, demos, console, watch=taker)
    wall = time.monotonic() - started
    if online.interrupted:
        raise KeyboardInterrupt
    if not taker.snapshots:
        raise RuntimeError(
            f"{robots} robot(s): the fleet took {mean_robot_steps(online.view):.0f} steps per robot within "
            f"fleet.budget_s={fleet.budget_s:.0f} s, fewer than eval_every_steps={config.eval_every_steps}"
        )
    if len(taker.grid) > 0:
        log.warning("%d robot(s) stopped at the time cap before %s per-robot steps", robots, taker.grid[0])
    events = read_episode_events(run_dir, online.started_at)
    train_rows = read_jsonl(run_dir / "learner" / "train.jsonl")
    return FleetSizeResult(
        robots=robots,
        snapshots=taker.snapshots,
        episodes=len(events),
        episodes_per_task=dict(Counter(e.task for e in events)),
        intervention_frames=sum(e.intervention_frames for e in events),
        learner_steps=max((int(r["step"]) for r in train_rows), default=0),
        online_wall_s=wall,
        exit_codes=online.exit_codes,
    )


def run_offline_arm(
    config: FleetBenchConfig,
    base: Path,
    demos: Path,
    episodes_per_task: dict[str, int],
    learner_steps: int,
    out: Path,
    console: Console,
) -> Path:
    """Extra scripted demonstrations (as many per task as the fleet's online episodes), then the learner's
    trainer from the base policy for `learner_steps`; returns the final checkpoint written to a file."""
    from cloud_learner.checkpoint_store import CheckpointStore
    from cloud_learner.config import LearnerConfig
    from cloud_learner.offline_training import train_offline
    from sim.demonstrations import record_demonstrations
    from sim.metaworld_env import EnvConfig
    from sop.data.episode_store import EpisodeStore

    fleet = config.fleet
    folder = out / "offline"
    if folder.exists():
        shutil.rmtree(folder)
    extra = EpisodeStore(folder / "extra_demos")
    env_config = EnvConfig(max_episode_steps=fleet.max_episode_steps)
    console.print(
        f"offline arm: recording {sum(episodes_per_task.values())} extra scripted demonstrations, "
        f"then {learner_steps} learner steps from the base policy"
    )
    for index, task in enumerate(fleet.tasks):
        count = episodes_per_task.get(task, 0)
        for episode in record_demonstrations(
            task,
            count,
            seed=OFFLINE_DEMO_SEED + 100_000 * index,
            noise=fleet.base.demo_noise,
            env_config=env_config,
        ):
            extra.append(episode)
    learner = parse_config(
        LearnerConfig,
        learner_training_args(fleet, folder / "learner", base, [demos, folder / "extra_demos"]),
    )
    record = train_offline(learner, learner_steps)
    path = folder / f"offline-v{record.version:06d}.safetensors"
    path.write_bytes(CheckpointStore(learner.checkpoint_dir).read_blob(record.version))
    return path


# The whole benchmark -------------------------------------------------------------------------------------


def run_fleet_benchmark(config: FleetBenchConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    started = time.monotonic()
    out = open_run_dir(config.out, "runs/bench-fleet-", config)
    base, demos = prepare_base_policy(config.fleet, console)

    runs = [run_fleet_size(config, n, base, demos, out, console) for n in sorted(config.robots)]
    largest = runs[-1]
    offline_checkpoint: Path | None = None
    if config.offline:
        offline_checkpoint = run_offline_arm(
            config, base, demos, largest.episodes_per_task, largest.learner_steps, out, console
        )

    checkpoints = [str(base / "checkpoint.safetensors")]
    checkpoints += [s.path for run in runs for s in run.snapshots]
    if offline_checkpoint is not None:
        checkpoints.append(str(offline_checkpoint))
    console.print(
        f"evaluating {len(checkpoints)} checkpoints on {config.fleet.eval_episodes} held-out episodes per task"
    )
    success = evaluate_in_parallel(checkpoints, config, out / "eval")
    base_success = success[checkpoints[0]]
    for run in runs:
        for snapshot in run.snapshots:
            snapshot.success = success[snapshot.path]

    results = summarize_benchmark(config, runs, base_success, offline_checkpoint, success)
    results["wall_s"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return write_outputs(config, out, results, console)


def write_outputs(
    config: FleetBenchConfig, out: Path, results: dict[str, Any], console: Console
) -> dict[str, Any]:
    plot = plot_scaling(out / "fleet_scaling.png", results)
    if config.results:
        write_markdown(Path(config.results), config, results, plot)
    console.print(markdown_tables(results))
    return results


def report_again(config: FleetBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Re-derive steps to target (e.g. for another `target`), the plot and the markdown from a finished
    benchmark's `out/results.json` and `out/config.json`, without running anything."""
    out = Path(config.out)
    paths = [out / "results.json", out / "config.json"]
    missing = [str(path) for path in paths if not path.is_file()]
    if not config.out or missing:
        raise FileNotFoundError(
            f"report_only: {missing or 'out'} missing; give --out of a finished benchmark"
        )
    ran = config_from_dict(FleetBenchConfig, json.loads(paths[1].read_text()))
    ran = dataclasses.replace(ran, target=config.target, results=config.results)
    results = compare_fleet_sizes(json.loads(paths[0].read_text()), config.target)
    results.setdefault("robot_rate_hz", ran.fleet.robot_rate_hz)
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    return write_outputs(ran, out, results, console or Console())


def summarize_benchmark(
    config: FleetBenchConfig,
    runs: list[FleetSizeResult],
    base_success: float,
    offline_checkpoint: Path | None,
    success: dict[str, float],
) -> dict[str, Any]:
    sizes: list[dict[str, Any]] = []
    for run in runs:
        final = run.snapshots[-1]
        sizes.append(
            {
                "robots": run.robots,
                "final_success": final.success,
                "final_per_robot_steps": final.per_robot_steps,
                "episodes": run.episodes,
                "intervention_frames": run.intervention_frames,
                "learner_steps": run.learner_steps,
                "learner_steps_per_robot_step": final.learner_step / max(1.0, final.per_robot_steps),
                "online_wall_s": run.online_wall_s,
                "curve": [dataclasses.asdict(s) for s in run.snapshots],
                "exit_codes": run.exit_codes,
            }
        )
    results: dict[str, Any] = {
        "tasks": list(config.fleet.tasks),
        "eval_episodes_per_task": config.fleet.eval_episodes,
        "robot_rate_hz": config.fleet.robot_rate_hz,
        "base_success": base_success,
        "fleet_sizes": sizes,
        "machine": describe_machine().summary(),
    }
    # The offline arm trained on as many extra demonstrations as the largest fleet collected episodes.
    if offline_checkpoint is not None:
        largest = max(runs, key=lambda run: run.robots)
        final = largest.snapshots[-1]
        results["online_vs_offline"] = {
            "robots": largest.robots,
            "extra_episodes": largest.episodes,
            "learner_steps": largest.learner_steps,
            "online_success": final.success,
            "offline_success": success[str(offline_checkpoint)],
        }
    return compare_fleet_sizes(results, config.target)


def curve_points(size: dict[str, Any], base_success: float) -> list[tuple[float, float]]:
    """(per-robot steps, success) of one fleet size, starting from the base policy at 0 steps."""
    return [(0.0, base_success)] + [
        (float(p["per_robot_steps"]), float(p["success"])) for p in size["curve"] if p["success"] is not None
    ]


def compare_fleet_sizes(results: dict[str, Any], target: float) -> dict[str, Any]:
    """Add each fleet size's steps to `target` and their ratio to one robot's (from the curves alone)."""
    results["target"] = target
    sizes = results["fleet_sizes"]
    for size in sizes:
        size["steps_to_target"] = steps_to_target(curve_points(size, results["base_success"]), target)
    one = next((s for s in sizes if s["robots"] == 1), None)
    for size in sizes:
        # When one robot never reached the target within the budget its steps are only known to exceed its
        # final step count, so the ratio is an upper bound ("<").
        size["steps_vs_one_robot"] = None
        size["steps_vs_one_robot_is_upper_bound"] = False
        if one is None or size["steps_to_target"] is None:
            continue
        if one["steps_to_target"]:
            size["steps_vs_one_robot"] = size["steps_to_target"] / one["steps_to_target"]
        elif one["steps_to_target"] is None:
            size["steps_vs_one_robot"] = size["steps_to_target"] / one["final_per_robot_steps"]
            size["steps_vs_one_robot_is_upper_bound"] = True
    return results


# Report ---------------------------------------------------------------------------------------------------


def plot_scaling(path: Path, results: dict[str, Any]) -> Path:
    """Success vs per-robot env steps, one line per fleet size, with the target and the offline arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for size in results["fleet_sizes"]:
        steps, success = zip(*curve_points(size, results["base_success"]), strict=True)
        robots = size["robots"]
        axis.plot(steps, success, marker="o", label=f"{robots} robot{'s' if robots > 1 else ''}")
    comparison = results.get("online_vs_offline")
    if comparison is not None:
        axis.axhline(
            comparison["offline_success"],
            color="grey",
            linestyle=":",
            label=f"offline: +{comparison['extra_episodes']} scripted demos",
        )
    axis.axhline(results["target"], color="black", linestyle="--", linewidth=0.8, label="target")
    axis.set_xlabel("env steps per robot")
    axis.set_ylabel("held-out success")
    axis.set_ylim(-0.02, 1.02)
    rate = results.get("robot_rate_hz", 0.0)
    pace = f"{rate:g} Hz robots" if rate > 0 else "free-running robots"
    axis.set_title(f"Fleet scaling: {', '.join(results['tasks'])}, {pace}")
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def markdown_tables(results: dict[str, Any]) -> str:
    pooled_n = results["eval_episodes_per_task"] * len(results["tasks"])  # behind each mean held-out success
    lines = [
        "| robots | per-robot env steps to target | vs 1 robot | final success (steps/robot) | episodes | "
        "intervention frames | learner steps | learner steps per robot step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in results["fleet_sizes"]:
        reached, ratio = size["steps_to_target"], size["steps_vs_one_robot"]
        bound = "< " if size["steps_vs_one_robot_is_upper_bound"] else ""
        lines.append(
            f"| {size['robots']} | "
            f"{f'not reached (> {size["final_per_robot_steps"]:.0f})' if reached is None else f'{reached:.0f}'} | "
            f"{'-' if ratio is None else f'{bound}{ratio:.2f}x'} | "
            f"{format_stored_rate(size['final_success'], pooled_n)} ({size['final_per_robot_steps']:.0f}) | {size['episodes']} | "
            f"{size['intervention_frames']} | {size['learner_steps']} | "
            f"{size['learner_steps_per_robot_step']:.3f} |"
        )
    comparison = results.get("online_vs_offline")
    if comparison is not None:
        lines += [
            "",
            "| from the base policy (held-out success " + f"{results['base_success']:.2f}) | data | "
            "learner steps | held-out success |",
            "|---|---|---|---|",
            f"| online, {comparison['robots']} robots | {comparison['extra_episodes']} on-policy episodes with "
            f"interventions | {comparison['learner_steps']} | {comparison['online_success']:.2f} |",
            f"| offline | {comparison['extra_episodes']} extra scripted demonstrations | "
            f"{comparison['learner_steps']} | {comparison['offline_success']:.2f} |",
        ]
    return "\n".join(lines)


def reproducing_command(config: FleetBenchConfig) -> str:
    """`sop bench fleet` with the flags that set what this run changed from configs/bench_fleet.yaml."""
    shipped = parse_config(FleetBenchConfig, [], default_config="bench_fleet.yaml")
    flags = [f"--robots {','.join(str(n) for n in config.robots)}"]
    for name in ("per_robot_steps", "eval_every_steps", "target", "offline", "results"):
        if getattr(config, name) != getattr(shipped, name):
            flags.append(f"--{name} {str(getattr(config, name)).lower()}")
    for name in ("tasks", "robot_rate_hz", "eval_episodes"):
        value, default = getattr(config.fleet, name), getattr(shipped.fleet, name)
        if value != default:
            flags.append(f"--fleet.{name} {','.join(value) if isinstance(value, list) else value}")
    shipped_learner = flatten_overrides(shipped.fleet.learner)
    for key, value in flatten_overrides(config.fleet.learner).items():
        if shipped_learner.get(key) != value:
            flags.append(f"--fleet.learner.{key} {value}")
    return "sop bench fleet " + " ".join(flags)


def write_markdown(path: Path, config: FleetBenchConfig, results: dict[str, Any], plot: Path) -> None:
    """The BENCHMARKS.md section, with the command and the machine beside the figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = path.with_suffix(".png")
    if plot.resolve() != image.resolve():
        shutil.copyfile(plot, image)
    fleet = config.fleet
    pace = f"{fleet.robot_rate_hz:g} Hz robots" if fleet.robot_rate_hz > 0 else "free-running robots"
    title = "Fleet scaling and online vs offline" if "online_vs_offline" in results else "Fleet scaling"
    sizes = ", ".join(str(n) for n in sorted(config.robots))
    at = f"at {fleet.robot_rate_hz:g} Hz" if fleet.robot_rate_hz > 0 else "free-running"
    # BENCHMARKS.md (the repository root) embeds this section: link the plot from there.
    link = repo_relative(image)
    pooled_n = results["eval_episodes_per_task"] * len(results["tasks"])  # behind each mean held-out success
    text = f"""## {title}: {sizes} robot{"s" if config.robots != [1] else ""} {at}

Command: `{reproducing_command(config)}` (configs/bench_fleet.yaml: {", ".join(fleet.tasks)}, base policy
as in the quick demo, learner and robots as separate processes over gRPC, {pace}, {fleet.sampler.type} sampling,
simulated operators). Machine: {results["machine"]}, learner and robots on the same cores.
Every {config.eval_every_steps} per-robot env steps the newest checkpoint was snapshotted; each snapshot was
evaluated afterwards on the same {results["eval_episodes_per_task"]} held-out seeded episodes per task (base policy:
{format_stored_rate(results["base_success"], pooled_n)}). Target {results["target"]:.2f}. Wall time {results["wall_s"] / 60:.1f} min.

{markdown_tables(results)}

![success vs per-robot env steps]({link})
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(FleetBenchConfig, args, default_config="bench_fleet.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if config.report_only:
            report_again(config)
        else:
            run_fleet_benchmark(config)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
