"""`sop bench online-vs-offline`: at equal operator-labelled frames and equal learner steps, does HG-DAgger
online under a deployment shift beat more demonstrations?

    sop bench online-vs-offline                                        # configs/bench_online_vs_offline.yaml
    sop bench online-vs-offline --config bench_online_vs_offline_quick # 1 task, tiny budget (CI smoke)
    sop bench online-vs-offline --deployments shifted-objects --labelled_frames 900

SOP's central claim (3 h online +0.229 vs 80 h offline +0.036) is about data under the conditions a robot is
deployed in. For each deployment preset of `deployments` (sim/deployment.py), from one base policy (the demo's,
cached: `fleet_harness.demo.prepare_base_policy`, demonstrations under nominal conditions), four arms:

(a) online: the fleet of `sop demo` (`run_online_phase`: learner and robot daemons over gRPC, simulated
    operators, HG-DAgger) runs under the shift until the learner's replay holds `labelled_frames`
    operator-labelled frames (the intervention frames of online episodes, from each episode's
    `extra["operator_frames"]`), or until `fleet.budget_s`.
(b) offline-nominal: extra scripted demonstrations recorded under nominal conditions (how teams collect).
(c) offline-shifted: extra scripted demonstrations recorded under the shift itself (an oracle).
(d) base: the base policy.

Budgets. Each time the replay's labelled frames cross k/`budgets` of `labelled_frames`, the first checkpoint
the learner publishes after the crossing is copied (the fleet stops after the last budget's, or at
`fleet.budget_s`, where the last published checkpoint stands for the budgets left). That checkpoint *is* the
online arm at that budget: its learner steps are the
checkpoint's own `train_step` (the learner step that produced exactly these weights, never "the last
snapshot before the final step"), and its labelled frames are those of online episodes the replay had
committed by the checkpoint's publication (`committed_at <= created_at`): the data the learner could have
trained on. The steps a learner takes after its last publication are not in any arm.

Equal frames, equal steps, same batches. For every budget, arms (b) and (c) get per task exactly the online
arm's labelled frames: whole demonstrations in seed order and, of the last one, only its first frames marked
as labelled (the rest weigh 0, as autonomous frames do under HG-DAgger). The demonstrations enter the
learner's replay as the online arm's data does: as episodes of source ONLINE whose labelled frames are
intervention frames attributed to the scripted expert, so the same algorithm (HG-DAgger frame selection), the
same SOP mixing between them and the base demonstrations (same `replay.*`), the same batch size, optimiser and
seed train them, from the same base, with the learner's own trainer (`cloud_learner.offline_training`,
`learner_training_args` as the online learner), for the online checkpoint's `train_step`. Only the data
differs. Arms (b) and (c) use the same reset seeds (disjoint from base demos, robots and held-out episodes).

Evaluation: every checkpoint under the preset's conditions on the same held-out seeds (`EVAL_SEED_OFFSET`),
with the same sampler (`fleet.sampler`), `fleet.eval_episodes` per task (25 x 4 tasks = 100 per arm), success
with its pooled Wilson 95 % interval (`sop.success_rate`).

Cost (configs/bench_online_vs_offline.yaml, 2-core CPU): per preset the online run (~10 min: `sop demo`
collects ~6 700 labelled frames in 9 min), 2 x 3 offline trainings (2 x (1/3 + 2/3 + 1) x the online
learner's ~1 700 steps, ~25 min) and 10 evaluations of 100 episodes (~30 min): about 70 min a preset.

Output: `out/` (the online run folder per preset, the offline learners, snapshots, `results.json`,
`online_vs_offline.png`), `results_json` (benchmarks/results/online_vs_offline.json: one entry per preset,
merged, so presets can be run one at a time) and the markdown section `results`
(benchmarks/results/online_vs_offline.md) that `scripts/collect_benchmarks.py` puts into BENCHMARKS.md,
with the verdict on the issue's bar (online >= 15 points above (b) at equal frames, intervals apart).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.machine import describe_machine
from benchmarks.reporting import markdown_table, repo_relative, write_report
from fleet_harness.demo import (
    EVAL_SEED_OFFSET,
    FleetDemoConfig,
    FleetView,
    deployment_summary,
    evaluate_checkpoint,
    learner_training_args,
    open_run_dir,
    prepare_base_policy,
    run_online_phase,
)
from sop.config import parse_config
from sop.data.episode_store import EpisodeStore
from sop.data.episode_store_format import EpisodeInfo
from sop.episode import (
    INTERVENTION,
    OPERATOR_FRAMES,
    POLICY_VERSION,
    Episode,
    Outcome,
    Source,
    encode_operator_frames,
    operator_frames,
)
from sop.success_rate import SuccessCount, format_success, pooled

log = logging.getLogger(__name__)

EXTRA_DEMO_SEED = 700_000  # extra demonstrations: disjoint from base demos (< 10_000), robots, held-out seeds
EXPERT_ID = "scripted-expert"
MAX_EXTRA_DEMOS = 20_000  # per task and arm; far above any budget here (a demonstration is 30-150 frames)
ARMS = ("online", "offline-nominal", "offline-shifted", "base")
CLAIM_MARGIN = 0.15  # the bar: online >= 15 points above offline-nominal, intervals apart


def _default_fleet() -> FleetDemoConfig:
    return FleetDemoConfig(budget_s=1200.0, eval_episodes=25, live=False)


@dataclass(frozen=True)
class OnlineVsOfflineConfig:
    deployments: list[str] = field(
        default_factory=lambda: ["shifted-objects", "heavy-objects"],
        metadata={"help": "deployment presets (configs/deployments/) to compare under, one after the other"},
    )
    labelled_frames: int = field(
        default=6000,
        metadata={"help": "the largest budget: operator-labelled frames the online arm collects"},
    )
    budgets: int = field(
        default=3, metadata={"help": "budgets at k/budgets of labelled_frames, k = 1..budgets"}
    )
    out: str = field(default="", metadata={"help": "output folder; default runs/bench-ovo-<timestamp>"})
    results_json: str = field(
        default="benchmarks/results/online_vs_offline.json",
        metadata={"help": "results per preset, merged into this file; empty: none"},
    )
    results: str = field(
        default="benchmarks/results/online_vs_offline.md",
        metadata={
            "help": "markdown section for BENCHMARKS.md (from all presets of results_json); empty: none"
        },
    )
    fleet: FleetDemoConfig = field(
        default_factory=_default_fleet,
        metadata={
            "help": "the fleet, base policy, learner, sampler and evaluation as in `sop demo`; "
            "deployment is set per preset, budget_s caps each online run"
        },
    )

    def __post_init__(self) -> None:
        from sim.deployment import load_deployment

        if not self.deployments:
            raise ValueError("deployments: name at least one preset (configs/deployments/)")
        for name in self.deployments:
            load_deployment(name)  # an unknown preset stops here, with the list of presets
        if self.labelled_frames < 1:
            raise ValueError(f"labelled_frames must be >= 1, got {self.labelled_frames}")
        if not 1 <= self.budgets <= self.labelled_frames:
            raise ValueError(f"budgets must be in [1, labelled_frames], got {self.budgets}")

    def budget_targets(self) -> list[int]:
        return [round(self.labelled_frames * k / self.budgets) for k in range(1, self.budgets + 1)]


# Counting operator-labelled frames ---------------------------------------------------------------------


def labelled_frames_of(info: EpisodeInfo) -> int:
    """Frames of one episode an operator (or the scripted expert standing in for one) labelled: the ranges of
    `extra["operator_frames"]` of an ONLINE episode (offline demonstrations are the base's data, not effort)."""
    if info.source != Source.ONLINE:
        return 0
    return sum(
        stop - start
        for ranges in operator_frames(info.extra, info.num_steps).values()
        for start, stop in ranges
    )


def labelled_frames_per_task(
    infos: Iterable[EpisodeInfo], committed_by: float | None = None, tasks: Sequence[str] | None = None
) -> dict[str, int]:
    """Labelled frames per task of the episodes committed by `committed_by` (None: all), over `tasks`."""
    counts: dict[str, int] = {task: 0 for task in tasks or ()}
    for info in infos:
        if committed_by is not None and info.committed_at > committed_by:
            continue
        if tasks is not None and info.task not in counts:
            continue
        counts[info.task] = counts.get(info.task, 0) + labelled_frames_of(info)
    return counts


def replay_infos(replay_dir: Path) -> list[EpisodeInfo]:
    """The committed episodes of a learner's replay store (read-only; none while it does not exist yet)."""
    if not replay_dir.is_dir():
        return []
    return EpisodeStore(replay_dir, create=False, durable=False).list()


# Budgets during the online run ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The newest published checkpoint when the replay's labelled frames crossed `target`."""

    target: int
    version: int
    learner_step: int
    created_at: float
    path: str
    frames_at_crossing: int
    labelled_frames: dict[str, int] = field(default_factory=dict)  # per task, committed by created_at


class BudgetWatch:
    """The online phase's watch callback: at each budget, snapshot the first checkpoint the learner publishes
    after the crossing (so the data that crossed it was in its replay); stop after the last budget's."""

    def __init__(self, run_dir: Path, targets: Sequence[int]) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / "snapshots"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending = list(targets)
        self.crossed: list[
            tuple[int, float]
        ] = []  # (target, wall clock of the crossing) awaiting a checkpoint
        self.snapshots: list[Snapshot] = []
        self.frames = 0
        self.replay: EpisodeStore | None = None

    def __call__(self, view: FleetView) -> bool:
        self.frames = sum(labelled_frames_per_task(self.replay_infos()).values())
        while self.pending and self.frames >= self.pending[0]:
            self.crossed.append((self.pending.pop(0), time.time()))
        self.take_crossed(newer_than_crossing=True)
        return not self.pending and not self.crossed

    def take_crossed(self, newer_than_crossing: bool) -> None:
        """Snapshot every crossed budget whose checkpoint is there (any published one, when not waiting for a
        newer one: the fleet has stopped)."""
        from cloud_learner.checkpoint_store import CheckpointStore

        while self.crossed:
            target, crossed_at = self.crossed[0]
            store = CheckpointStore(self.run_dir / "learner" / "checkpoints")
            record = store.latest()
            if record is None:
                raise RuntimeError(f"{self.run_dir}: the learner has published no checkpoint")
            if newer_than_crossing and record.created_at <= crossed_at:
                return
            path = self.folder / f"frames-{target:06d}-v{record.version:06d}.safetensors"
            path.write_bytes(store.read_blob(record.version))
            self.crossed.pop(0)
            self.snapshots.append(
                Snapshot(target, record.version, record.train_step, record.created_at, str(path), self.frames)
            )

    def finish(self) -> None:
        """After the fleet stopped (at the time cap, or before a crossed budget's checkpoint came): the last
        published checkpoint stands for every budget left; its labelled frames say how far it got."""
        self.frames = sum(labelled_frames_per_task(self.replay_infos()).values())
        self.crossed += [(target, time.time()) for target in self.pending]
        self.pending = []
        self.take_crossed(newer_than_crossing=False)

    def replay_infos(self) -> list[EpisodeInfo]:
        """The learner's replay as of now (opened once it exists, then refreshed: it grows while we read)."""
        if self.replay is None:
            folder = self.run_dir / "learner" / "replay"
            if not folder.is_dir():
                return []
            self.replay = EpisodeStore(folder, create=False, durable=False)
            return self.replay.list()
        self.replay.refresh()
        return self.replay.list()


def run_online_arm(
    config: OnlineVsOfflineConfig,
    fleet: FleetDemoConfig,
    base: Path,
    demos: Path,
    out: Path,
    console: Console,
) -> tuple[list[Snapshot], dict[str, Any]]:
    """Arm (a): the fleet under the shift until the last budget; returns its snapshots with their labelled
    frames counted from the replay, and what the run did."""
    run_dir = out / "online"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh learner: never resume a previous benchmark's training
    run_dir.mkdir(parents=True)
    watch = BudgetWatch(run_dir, config.budget_targets())
    console.print(
        f"[bold]online ({fleet.deployment})[/bold]: {fleet.robots} robots until {config.labelled_frames} "
        f"operator-labelled frames (at most {fleet.budget_s:.0f} s)"
    )
    started = time.monotonic()
    online = run_online_phase(fleet, run_dir, base, demos, console, watch=watch)
    if online.interrupted:
        raise KeyboardInterrupt
    if watch.pending:
        log.warning("online arm stopped at budget_s with %d labelled frames", watch.frames)
    watch.finish()
    infos = replay_infos(run_dir / "learner" / "replay")
    for snapshot in watch.snapshots:
        snapshot.labelled_frames = labelled_frames_per_task(infos, snapshot.created_at, fleet.tasks)
    train_rows = [json.loads(line) for line in (run_dir / "learner" / "train.jsonl").read_text().splitlines()]
    run = {
        "wall_s": time.monotonic() - started,
        "episodes": sum(info.source == Source.ONLINE for info in infos),
        "labelled_frames_collected": sum(labelled_frames_per_task(infos).values()),
        "learner_steps_run": max((int(row["step"]) for row in train_rows), default=0),
        "exit_codes": online.exit_codes,
    }
    return watch.snapshots, run


# The offline arms ----------------------------------------------------------------------------------------


def record_until(task: str, frames: int, seed: int, noise: float, env_config: Any) -> list[Episode]:
    """Scripted demonstrations of `task` in seed order until they hold at least `frames` frames."""
    from sim.demonstrations import demonstration_seeds, record_episode
    from sim.metaworld_env import MetaWorldEnv
    from sim.scripted_experts import ScriptedExpert

    seeds = iter(demonstration_seeds(task, MAX_EXTRA_DEMOS, seed))
    expert = ScriptedExpert(task)
    env = MetaWorldEnv(task, env_config)
    episodes: list[Episode] = []
    try:
        while sum(e.num_steps for e in episodes) < frames:
            episodes.append(
                record_episode(
                    env, expert, next(seeds), robot_id=EXPERT_ID, noise=noise, steps_after_success=10
                )
            )
    finally:
        env.close()
    return episodes


def as_labelled(demo: Episode, frames: int) -> Episode:
    """A demonstration as data of the kind the online arm collects: an ONLINE episode whose first `frames`
    steps are intervention frames driven by the scripted expert (the rest weigh 0, as autonomous frames)."""
    if not 0 < frames <= demo.num_steps:
        raise ValueError(f"frames must be in 1..{demo.num_steps}, got {frames}")
    steps = dict(demo.steps)
    intervention = np.zeros(demo.num_steps, dtype=np.bool_)
    intervention[:frames] = True
    steps[INTERVENTION] = intervention
    steps[POLICY_VERSION] = np.zeros(demo.num_steps, dtype=np.int64)
    drivers: list[str | None] = [EXPERT_ID if flag else None for flag in intervention]
    extra = {**demo.extra, OPERATOR_FRAMES: encode_operator_frames(drivers)}
    episode = dataclasses.replace(demo, steps=steps, source=Source.ONLINE, extra=extra)
    episode.validate()
    return episode


def select_labelled(demos: Sequence[Episode], frames: int) -> list[Episode]:
    """The first demonstrations of `demos`, in order, labelled to hold exactly `frames` labelled frames: whole
    ones, then the first frames of the last. Fewer frames in `demos` than asked for is an error."""
    selected: list[Episode] = []
    left = frames
    for demo in demos:
        if left <= 0:
            break
        take = min(left, demo.num_steps)
        selected.append(as_labelled(demo, take))
        left -= take
    if left > 0:
        raise ValueError(f"the demonstrations hold {frames - left} frames, fewer than the {frames} asked for")
    return selected


def offline_learner_config(fleet: FleetDemoConfig, learner_dir: Path, base: Path, demos: Path) -> Any:
    """The learner config of an offline arm: the online learner's (`learner_training_args`) with its own
    run_dir; the base demonstrations are its offline store, as the online learner's."""
    from cloud_learner.config import LearnerConfig

    return parse_config(LearnerConfig, learner_training_args(fleet, learner_dir, base, [demos]))


def train_offline_arm(
    fleet: FleetDemoConfig, base: Path, demos: Path, data: Sequence[Episode], steps: int, folder: Path
) -> Path:
    """From the base, `steps` learner steps on the base demonstrations plus `data`; the checkpoint's file."""
    from cloud_learner.checkpoint_store import CheckpointStore
    from cloud_learner.offline_training import train_offline
    from cloud_learner.replay import open_replay_store

    if folder.exists():
        shutil.rmtree(folder)
    learner = offline_learner_config(fleet, folder / "learner", base, demos)
    store = open_replay_store(learner)
    for episode in data:
        store.append(episode)
    del store
    record = train_offline(learner, steps)
    if record.train_step != steps:
        raise RuntimeError(f"{folder}: offline training ended at step {record.train_step}, not {steps}")
    path = folder / f"v{record.version:06d}-step{record.train_step:06d}.safetensors"
    path.write_bytes(CheckpointStore(learner.checkpoint_dir).read_blob(record.version))
    return path


# Evaluation and results ----------------------------------------------------------------------------------


def arm_result(
    arm: str,
    budget: int,
    counts: Mapping[str, SuccessCount],
    labelled: Mapping[str, int],
    learner_steps: int,
    checkpoint: str,
    **extra: Any,
) -> dict[str, Any]:
    """One arm at one budget, as results_json holds it."""
    total = pooled(counts.values())
    low, high = total.ci95
    return {
        "arm": arm,
        "budget": budget,
        "success": total.rate,
        "interval": [low, high],
        "successes": total.successes,
        "episodes": total.episodes,
        "labelled_frames": sum(labelled.values()),
        "labelled_frames_per_task": dict(labelled),
        "learner_steps": learner_steps,
        "per_task": {task: [c.successes, c.episodes] for task, c in counts.items()},
        "checkpoint": checkpoint,
        **extra,
    }


def verdict(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's bar at the largest budget: online >= CLAIM_MARGIN above offline-nominal, intervals apart."""
    last = max(row["budget"] for row in rows)
    online = next(r for r in rows if r["arm"] == "online" and r["budget"] == last)
    nominal = next(r for r in rows if r["arm"] == "offline-nominal" and r["budget"] == last)
    margin = online["success"] - nominal["success"]
    apart = online["interval"][0] > nominal["interval"][1]
    return {
        "budget": last,
        "labelled_frames": online["labelled_frames"],
        "online_minus_offline_nominal": margin,
        "intervals_apart": apart,
        "met": margin >= CLAIM_MARGIN and apart,
    }


def run_preset(
    config: OnlineVsOfflineConfig, deployment: str, base: Path, demos: Path, out: Path, console: Console
) -> dict[str, Any]:
    """All four arms under one deployment preset."""
    from sim.deployment import load_deployment
    from sim.metaworld_env import EnvConfig

    fleet = dataclasses.replace(config.fleet, deployment=deployment, out=str(out))
    started = time.monotonic()
    snapshots, online_run = run_online_arm(config, fleet, base, demos, out, console)
    rows: list[dict[str, Any]] = []
    console.print(f"evaluating the base under {deployment}")
    base_counts = evaluate_checkpoint(base, fleet)
    for index, snapshot in enumerate(snapshots, start=1):
        rows.append(
            arm_result(
                "online",
                index,
                evaluate_checkpoint(Path(snapshot.path).read_bytes(), fleet),
                snapshot.labelled_frames,
                snapshot.learner_step,
                snapshot.path,
                version=snapshot.version,
                target=snapshot.target,
            )
        )
    rows.append(arm_result("base", 0, base_counts, {t: 0 for t in fleet.tasks}, 0, str(base)))
    conditions = {"offline-nominal": "nominal", "offline-shifted": deployment}
    for arm, condition in conditions.items():
        env_config = EnvConfig(
            max_episode_steps=fleet.max_episode_steps, deployment=load_deployment(condition)
        )
        pool: dict[str, list[Episode]] = {}
        for index, task in enumerate(fleet.tasks):
            most = max(s.labelled_frames.get(task, 0) for s in snapshots)
            pool[task] = (
                record_until(task, most, EXTRA_DEMO_SEED + 100_000 * index, fleet.base.demo_noise, env_config)
                if most > 0
                else []
            )
        console.print(
            f"{arm}: {sum(len(p) for p in pool.values())} demonstrations recorded under {condition}"
        )
        for budget, snapshot in enumerate(snapshots, start=1):
            data = [
                episode
                for task in fleet.tasks
                for episode in select_labelled(pool[task], snapshot.labelled_frames.get(task, 0))
            ]
            console.print(f"{arm}, budget {budget}: {len(data)} demos, {snapshot.learner_step} learner steps")
            checkpoint = train_offline_arm(
                fleet, base, demos, data, snapshot.learner_step, out / arm / f"budget-{budget}"
            )
            counts = evaluate_checkpoint(checkpoint.read_bytes(), fleet)
            labelled = labelled_frames_per_task((_info_of(e) for e in data), tasks=fleet.tasks)
            rows.append(
                arm_result(
                    arm,
                    budget,
                    counts,
                    labelled,
                    snapshot.learner_step,
                    str(checkpoint),
                    demonstrations=len(data),
                    demonstrations_successful=sum(e.outcome == Outcome.SUCCESS for e in data),
                    recorded_under=condition,
                )
            )
    return {
        "deployment": deployment_summary(deployment),
        "rows": rows,
        "verdict": verdict(rows),
        "online_run": online_run,
        "wall_s": time.monotonic() - started,
    }


def _info_of(episode: Episode) -> EpisodeInfo:
    """The metadata `labelled_frames_of` reads, for an episode not (yet) in a store."""
    return EpisodeInfo(
        episode_id=episode.episode_id,
        robot_id=episode.robot_id,
        task=episode.task,
        instruction=episode.instruction,
        outcome=episode.outcome,
        source=episode.source,
        started_at=episode.started_at,
        ended_at=episode.ended_at,
        fps=episode.fps,
        num_steps=episode.num_steps,
        nbytes=0,
        stored_bytes=0,
        step_shapes={},
        extra=dict(episode.extra),
    )


def run_benchmark(
    config: OnlineVsOfflineConfig, argv: Sequence[str] = (), console: Console | None = None
) -> dict[str, Any]:
    console = console or Console()
    out = open_run_dir(config.out, "runs/bench-ovo-", config)
    base, demos = prepare_base_policy(config.fleet, console)
    fleet = config.fleet
    common = {
        "command": " ".join(["sop bench online-vs-offline", *argv]).strip(),
        "tasks": list(fleet.tasks),
        "robots": fleet.robots,
        "robot_rate_hz": fleet.robot_rate_hz,
        "eval_episodes_per_task": fleet.eval_episodes,
        "eval_seed_offset": EVAL_SEED_OFFSET,
        "sampler": fleet.sampler.type,
        "budgets": config.budget_targets(),
        "machine": describe_machine().summary(),
    }
    results: dict[str, Any] = {"presets": {}}
    for deployment in config.deployments:
        preset = run_preset(config, deployment, base, demos, out / deployment, console)
        results["presets"][deployment] = {**common, **preset}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = plot_results(out / "online_vs_offline.png", results)
    if config.results_json:
        results = merge_results(Path(config.results_json), results)
    if config.results:
        write_markdown(Path(config.results), results, plot)
    console.print("\n".join(results_table(results)))
    return results


def merge_results(path: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """`results`' presets written into the JSON at `path` over its earlier entries; returns the merged whole."""
    merged: dict[str, Any] = {"presets": {}}
    if path.is_file():
        merged = json.loads(path.read_text())
    merged.setdefault("presets", {}).update(results["presets"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


# Report ---------------------------------------------------------------------------------------------------


def plot_results(path: Path, results: Mapping[str, Any]) -> Path:
    """Success vs labelled frames per arm, one panel per preset, Wilson 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = results["presets"]
    figure, axes = plt.subplots(1, len(presets), figsize=(5.2 * len(presets), 4.0), squeeze=False)
    for axis, (name, preset) in zip(axes[0], presets.items(), strict=True):
        rows = preset["rows"]
        base = next(r for r in rows if r["arm"] == "base")
        for arm in ARMS[:3]:
            points = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["labelled_frames"])
            if not points:
                continue
            x = [0] + [r["labelled_frames"] for r in points]
            y = [base["success"]] + [r["success"] for r in points]
            low = [base["success"] - base["interval"][0]] + [r["success"] - r["interval"][0] for r in points]
            high = [base["interval"][1] - base["success"]] + [r["interval"][1] - r["success"] for r in points]
            axis.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=arm)
        axis.axhline(base["success"], color="grey", linestyle=":", label="base")
        axis.set_title(f"under {name}")
        axis.set_xlabel("operator-labelled frames")
        axis.set_ylabel("held-out success")
        axis.set_ylim(-0.02, 1.02)
        axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def results_table(results: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, preset in results["presets"].items():
        for row in sorted(preset["rows"], key=lambda r: (r["budget"], ARMS.index(r["arm"]))):
            rows.append(
                [
                    name,
                    row["arm"],
                    row["budget"],
                    row["labelled_frames"],
                    row["learner_steps"],
                    format_success(row["successes"], row["episodes"]),
                ]
            )
    header = ["deployment", "arm", "budget", "labelled frames", "learner steps", "held-out success [95 % CI]"]
    return markdown_table(header, rows, "llrrrl")


def verdict_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    met = 0
    for name, preset in results["presets"].items():
        v = preset["verdict"]
        met += bool(v["met"])
        lines.append(
            f"- {name}: at {v['labelled_frames']} labelled frames online minus offline-nominal = "
            f"{v['online_minus_offline_nominal']:+.2f}, intervals {'apart' if v['intervals_apart'] else 'overlap'}: "
            f"{'meets' if v['met'] else 'does not meet'} the bar (>= {CLAIM_MARGIN:+.2f}, intervals apart)."
        )
    done = met >= 2
    lines.append(
        f"- Issue 13's bar (met under at least two presets): {'met' if done else 'NOT met'} "
        f"({met} of {len(results['presets'])} presets)."
    )
    return lines


def write_markdown(path: Path, results: Mapping[str, Any], plot: Path) -> Path:
    image = path.with_suffix(".png")
    if plot.resolve() != image.resolve():
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, image)
    first = next(iter(results["presets"].values()))
    commands = sorted({preset["command"] for preset in results["presets"].values()})
    text = "\n".join(
        [
            "## Online vs offline at equal operator-labelled frames (deployment shift)",
            "",
            "Command: " + ", ".join(f"`{c}`" for c in commands) + f". Machine: {first['machine']}.",
            "",
            f"From one base policy (demonstrations under nominal conditions), tasks {', '.join(first['tasks'])}: "
            "(a) online, HG-DAgger with simulated operators under the shift; (b) offline-nominal, extra scripted "
            "demonstrations under nominal conditions; (c) offline-shifted, extra demonstrations under the shift "
            "(an oracle); (d) the base. At each budget the offline arms hold exactly the online checkpoint's "
            "operator-labelled frames per task and train for its learner step count, with the same learner "
            "config, HG-DAgger frame selection and SOP mixing (only the data differs). Every arm is evaluated "
            f"under the shift on the same {first['eval_episodes_per_task']} held-out seeded episodes per task "
            f"({first['sampler']} sampling); success with its Wilson 95 % interval. Details: "
            "benchmarks/online_vs_offline.py.",
            "",
            *results_table(results),
            "",
            *verdict_lines(results),
            "",
            f"![success vs labelled frames]({repo_relative(image)})",
            "",
        ]
    )
    return write_report(path, text)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(OnlineVsOfflineConfig, args, default_config="bench_online_vs_offline.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_benchmark(config, args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
