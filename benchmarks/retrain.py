"""`sop bench retrain`: retrain from a base checkpoint on a fixed replay with the learner's own trainer, for a
fixed number of learner steps, and evaluate on held-out seeds.

    sop bench retrain --run runs/demo-g                        # as many steps as the run's learner took
    sop bench retrain --run runs/demo-g --steps 1000,3000,4850
    sop bench retrain --run runs/demo-g --steps 4850 --learner.algorithm.optimizer.weight_decay 0.01
    sop bench retrain --run runs/demo-g --steps 4850 --exclude_online_tasks button-press-topdown-v3
    sop bench retrain --run runs/demo-g --steps 4850 \\
        --samplers '[{type: rti}, {type: ddim, steps: 10, execution_horizon: 1}]'
    sop bench retrain --replay runs/demo-g/learner/replay --base_checkpoint runs/bc --tasks reach-v3 \
        --steps 500

Why. A `sop demo` run is bound by the wall clock: how many learner steps it took depends on how much CPU the
learner got beside its robots, so two runs differ in their data and in their training length at once. Here
the data (a copy of a run's replay) and the number of learner steps are fixed, and the training is the live
learner's, so two retrains differ only in what their settings change (training length, a learner setting,
the sampler, which online episodes are kept), up to the evaluation's sampling error: every success rate
comes with its Wilson 95 % interval and its n. Questions it answers: does a task over-fit with training
length, does weight decay help, what is RTI vs DDIM worth on the same weights, and (with `--replay`) how an
offline arm trains at equal learner steps.

What happens, in order:
1. The replay (`<run>/learner/replay`, or `replay`) is copied to `<out>/learner/replay`; the source is only
   read. With `exclude_online_tasks` the copy loses those tasks' online episodes and keeps their
   demonstrations: the "no interference" arm.
2. The learner's training parts are built as `sop learner serve` and `train_offline` build them: its config
   is configs/learner.yaml, then the demo's overrides (`demo_learner_overrides`) with `learner` set over
   them, then the keys the fleet harness sets itself (`fleet_harness.demo.learner_training_args`); then the
   replay store, checkpoint store, publisher (the base published as v1) and `cloud_learner.trainer.Trainer`,
   in this process, with no server and no robots. The copied replay already holds the demonstrations the
   run's learner imported. `threads` sets `trainer.num_threads` (the demo's learner ran on 1).
3. One continuous training run to the largest of `steps`. When the trainer reaches each step count of
   `steps`, its weights are published by the learner's own `Trainer.publish` (the EMA weights robots get) and
   the blob is copied to `<out>/snapshots/`. A snapshot changes nothing in training (same batches, same
   seeds), so a step's checkpoint is the same whatever else `steps` lists.
4. Then every snapshot is evaluated with every sampler of `samplers` on the same held-out seeded episodes
   (`sim.evaluate`, `eval_workers` processes: one per core by default, as the demo's final evaluation).

The base policy of a run is the demo's cached one (`<base.cache_dir>/<hash of the run's base settings>/
checkpoint`), the checkpoint its learner published as v1. Output: `<out>/results.json` (the config, the
machine, the replay, training throughput, and per learner step x sampler x task: successes, n, rate and
interval), `<out>/report.md` with the table, which is also printed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import markdown_table, write_report
from fleet_harness.demo import (
    EVAL_SEED_OFFSET,
    FleetDemoConfig,
    base_policy_key,
    demo_learner_overrides,
    evaluation_workers,
    first_key_under,
    flatten_overrides,
    learner_training_args,
    open_run_dir,
    sampler_as_run,
)
from fleet_harness.report import read_jsonl
from sop.checkpoint import CheckpointError, read_manifest
from sop.config import ConfigError, config_from_dict, config_to_dict, parse_config
from sop.data.episode_store_format import MARKER_FILE
from sop.policies import DDIMSamplerConfig, DDPMSamplerConfig, RTISamplerConfig, SamplerConfig
from sop.policies.configuration_diffusion import DDIMColdStartConfig, DiffusionPolicyConfig
from sop.policies.modeling_diffusion import POLICY_TYPE
from sop.success_rate import SuccessCount, format_success, pooled

if TYPE_CHECKING:
    from cloud_learner.config import LearnerConfig
    from cloud_learner.trainer import Trainer

log = logging.getLogger(__name__)

# A demo run's files this command reads: its settings, its learner's replay and its learner's step log.
RUN_CONFIG = "config.json"
RUN_REPLAY = Path("learner") / "replay"
RUN_TRAIN_LOG = Path("learner") / "train.jsonl"
# Learner keys `steps` decides; a `learner:` override of one would be ignored, so it is refused.
RETRAIN_LEARNER_KEYS = ("trainer.max_steps", "trainer.enabled")
PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class RetrainBenchConfig:
    run: str = field(
        default="",
        metadata={
            "help": "a `sop demo` run folder (e.g. runs/demo-g): its learner/replay, its base policy, its "
            "tasks and its episode length; or give replay and base_checkpoint"
        },
    )
    replay: str = field(
        default="",
        metadata={"help": "episode store to retrain on (copied first); default: <run>/learner/replay"},
    )
    base_checkpoint: str = field(
        default="",
        metadata={"help": "checkpoint to retrain from; default: the run's base policy (the demo's cache)"},
    )
    steps: list[int] = field(
        default_factory=list,
        metadata={
            "help": "learner step counts to snapshot and evaluate at, increasing (training runs once to the "
            "last); default: the steps the run's learner took"
        },
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "tasks to train on (replay.tasks) and evaluate; default: the run's, else the replay's"
        },
    )
    eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "tasks to evaluate, among those trained on; default: all of them"},
    )
    learner: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "keys of the learner's config (configs/learner.yaml) to set over the demo's "
            "(demo_learner_overrides: batch 64, a checkpoint every 25 steps, lr 3e-4), as a nested mapping; "
            "e.g. --learner.algorithm.optimizer.weight_decay 0.01"
        },
    )
    samplers: list[SamplerConfig] = field(
        default_factory=lambda: [RTISamplerConfig()],
        metadata={
            "help": "samplers to evaluate every snapshot with, each a sampler config: '[{type: rti}, "
            "{type: rti, timesteps: [2,1,0]}, {type: ddim, steps: 10, execution_horizon: 1}]'; default: the "
            "demo's, RTI"
        },
    )
    eval_episodes: int = field(default=50, metadata={"help": "held-out seeded episodes per task and row"})
    seed_offset: int = field(
        default=EVAL_SEED_OFFSET, metadata={"help": "first reset seed of the held-out episodes (the demo's)"}
    )
    max_episode_steps: int | None = field(
        default=None, metadata={"help": "evaluation episode step limit; default: the run's (150 without one)"}
    )
    eval_workers: int = field(
        default=0, metadata={"help": "evaluation processes (one torch thread each); 0: one per core"}
    )
    evaluate_base: bool = field(
        default=False, metadata={"help": "also evaluate the base checkpoint, as learner step 0"}
    )
    exclude_online_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "tasks whose online episodes are removed from the copied replay (demos stay)"},
    )
    threads: int = field(default=2, metadata={"help": "torch threads for training (trainer.num_threads)"})
    out: str = field(default="", metadata={"help": "output folder; default runs/retrain-<timestamp>"})
    results: str = field(default="", metadata={"help": "results JSON path; default <out>/results.json"})

    def __post_init__(self) -> None:
        from sim.tasks import get_task

        if self.run:
            run = Path(self.run)
            if not run.is_dir():
                raise ValueError(
                    f"run: {run} is not a folder; name a `sop demo` run folder such as runs/demo-g"
                )
            if not (run / RUN_CONFIG).is_file():
                raise ValueError(
                    f"run: {run} has no {RUN_CONFIG}, so it is no `sop demo` run folder; give --replay and "
                    "--base_checkpoint instead"
                )
            if not self.replay and not (run / RUN_REPLAY / MARKER_FILE).is_file():
                raise ValueError(f"run: {run} has no learner replay ({run / RUN_REPLAY}); give --replay")
        elif not self.replay:
            raise ValueError(
                "run: name a `sop demo` run folder (--run runs/demo-g), or give --replay and "
                "--base_checkpoint"
            )
        elif not self.base_checkpoint:
            raise ValueError("base_checkpoint: without --run, name the checkpoint to retrain from")
        if self.replay and not (Path(self.replay) / MARKER_FILE).is_file():
            raise ValueError(f"replay: {self.replay} is not an episode store (no {MARKER_FILE})")
        if self.base_checkpoint and not Path(self.base_checkpoint).exists():
            raise ValueError(f"base_checkpoint: {self.base_checkpoint} does not exist")
        if not self.steps and not self.run:
            raise ValueError(
                "steps: without --run, give the learner step counts to evaluate at (--steps 500,1000)"
            )
        if any(step < 1 for step in self.steps):
            raise ValueError(f"steps must all be >= 1, got {self.steps}")
        if any(later <= earlier for earlier, later in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing, got {self.steps}")
        for task in [*self.tasks, *self.exclude_online_tasks, *self.eval_tasks]:
            get_task(task)  # raises UnknownTaskError naming the task
        if self.tasks:
            for name in ("exclude_online_tasks", "eval_tasks"):
                outside = [task for task in getattr(self, name) if task not in self.tasks]
                if outside:
                    raise ValueError(f"{name}: {outside} are not among tasks {self.tasks}")
        if not self.samplers:
            raise ValueError("samplers: name at least one sampler, e.g. '[{type: rti}]'")
        repeated = [s for i, s in enumerate(self.samplers) if s in self.samplers[:i]]
        if repeated:
            raise ValueError(f"samplers: {config_to_dict(repeated[0])} is listed twice")
        for name in ("eval_episodes", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed_offset < 0:
            raise ValueError(f"seed_offset must be >= 0, got {self.seed_offset}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.eval_workers < 0:
            raise ValueError(f"eval_workers must be >= 0 (0: one per core), got {self.eval_workers}")
        key = first_key_under(self.learner, RETRAIN_LEARNER_KEYS)
        if key is not None:
            raise ValueError(f"learner.{key}: --steps sets how far training runs; leave it out")
        # The demo's checks of the same mapping: its harness keys refused, every key and value parsed
        # against configs/learner.yaml (a bad one is named as --learner.x).
        FleetDemoConfig(learner=self.learner_overrides, live=False)

    @property
    def learner_overrides(self) -> dict[str, Any]:
        """The learner's overrides this retrain trains with: the demo's, with `learner` set over them.

        `learner` is added to the demo's rather than replacing them because a `--learner.a.b` flag replaces
        a mapping field's default when no config file spells the mapping out (sop/config.py folds the flags
        into one mapping that draccus merges into a file's only); `sop demo` has demo.yaml for that."""
        return merge_overrides(demo_learner_overrides(), self.learner)


def merge_overrides(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with every key of `extra` set over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = merge_overrides(below, value)
        else:
            merged[key] = value
    return merged


# Inputs: what the config names, once the run folder is read ------------------------------------------------


@dataclass(frozen=True)
class RetrainInputs:
    replay: Path  # the episode store copied (never written)
    base_checkpoint: Path
    tasks: list[str]  # empty: every task of the copied replay
    steps: list[int]
    max_episode_steps: int
    run_config: FleetDemoConfig | None


def run_base_checkpoint(run_config: FleetDemoConfig) -> Path:
    """Where `sop demo` cached the base policy a run with these settings started from (its learner's v1)."""
    return Path(run_config.base.cache_dir) / base_policy_key(run_config) / "checkpoint"


def run_learner_steps(run: Path) -> int:
    """The last step count in a run's learner log (0 when it logged none)."""
    return max((int(row["step"]) for row in read_jsonl(run / RUN_TRAIN_LOG) if "step" in row), default=0)


def resolve_inputs(config: RetrainBenchConfig) -> RetrainInputs:
    """The replay, base, tasks, steps and episode length to use: the config's, else the run's."""
    run_config: FleetDemoConfig | None = None
    if config.run:
        run = Path(config.run)
        run_config = config_from_dict(FleetDemoConfig, json.loads((run / RUN_CONFIG).read_text()))
    replay = Path(config.replay) if config.replay else Path(config.run) / RUN_REPLAY
    if config.base_checkpoint:
        base = Path(config.base_checkpoint)
    else:
        assert run_config is not None  # the config requires a base checkpoint without a run
        base = run_base_checkpoint(run_config)
        if not base.exists():
            raise FileNotFoundError(
                f"base_checkpoint: the base policy of {config.run} is not in the demo's cache ({base}); "
                "`sop demo` with the run's settings trains it again, or pass --base_checkpoint"
            )
    steps = list(config.steps)
    if not steps:
        last = run_learner_steps(Path(config.run))
        if last < 1:
            raise ConfigError(f"steps: {config.run}'s learner logged no training steps; give --steps")
        steps = [last]
    tasks = list(config.tasks) or (list(run_config.tasks) if run_config is not None else [])
    outside = [task for task in config.exclude_online_tasks if tasks and task not in tasks]
    if outside:
        raise ConfigError(f"exclude_online_tasks: {outside} are not among the run's tasks {tasks}")
    if config.max_episode_steps is not None:
        max_steps = config.max_episode_steps
    elif run_config is not None:
        max_steps = run_config.max_episode_steps
    else:
        max_steps = FleetDemoConfig.max_episode_steps
    return RetrainInputs(replay, base, tasks, steps, max_steps, run_config)


# The replay copy ------------------------------------------------------------------------------------------


def copy_replay(source: Path, learner_dir: Path, exclude_online_tasks: list[str]) -> dict[str, Any]:
    """Copy the episode store `source` to `learner_dir/replay` (the source is only read), then delete the
    copy's online episodes of `exclude_online_tasks`; returns what the copy holds per task and source."""
    from sop.data.episode_store import EpisodeStore
    from sop.episode import Source

    destination = learner_dir / "replay"
    started = time.perf_counter()
    shutil.copytree(source, destination, symlinks=True)
    store = EpisodeStore(destination, create=False)
    excluded = dict.fromkeys(exclude_online_tasks, 0)
    for task in exclude_online_tasks:
        for info in store.list(task=task, source=Source.ONLINE):
            store.delete(info.episode_id)
            excluded[task] += 1
    episodes: dict[str, dict[str, int]] = {}
    for info in store.list():
        counts = episodes.setdefault(info.task, {Source.OFFLINE.value: 0, Source.ONLINE.value: 0})
        counts[str(info.source)] = counts.get(str(info.source), 0) + 1
    return {
        "source": str(source),
        "episodes": dict(sorted(episodes.items())),
        "excluded_online_episodes": excluded,
        "copy_s": time.perf_counter() - started,
    }


def retrain_learner_config(
    learner: dict[str, Any], tasks: list[str], learner_dir: Path, base: Path, threads: int
) -> LearnerConfig:
    """The learner's config exactly as a demo run starts it (`learner_training_args`: configs/learner.yaml,
    the `learner` overrides, then the harness's keys), with no offline stores to import (the copied replay
    holds the run's) and `threads` torch threads."""
    from cloud_learner.config import LearnerConfig

    fleet = FleetDemoConfig(tasks=tasks, learner=learner, live=False)
    args = learner_training_args(fleet, learner_dir, base, offline_stores=[])
    return parse_config(LearnerConfig, [*args, "--trainer.num_threads", str(threads)])


# Training with snapshots ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The trainer's weights published at `learner_step` and copied out of the learner's checkpoint store."""

    learner_step: int
    version: int
    path: str
    train_s: float  # training seconds from the first step to this one (snapshots' own time excluded)
    samples: int  # samples trained on up to here


@dataclass
class TrainingRun:
    snapshots: list[Snapshot]
    steps: int
    samples: int
    train_s: float  # the steps themselves (with the learner's own publications), without the snapshots
    snapshot_s: float
    base_version: int
    trainable_frames: dict[str, dict[str, int]]  # task -> source -> frames the trainer could sample

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.train_s, 1e-9)

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.train_s, 1e-9)


class SnapshotSchedule(threading.Event):
    """`Trainer.run`'s stop event, never set: the trainer polls it before every step, and that poll is this
    harness's per-step hook (`Trainer.run` offers no other). When the trainer has reached the next of `steps`,
    the poll publishes its weights through `Trainer.publish` (unless the learner's own schedule just did)
    and copies the blob to `folder`; every PROGRESS_EVERY_S it prints a progress line.

    Publishing reads the weights and the optimiser state and draws no random numbers, so the batches and
    the updates are those of a run without snapshots. A poll at a step already polled means the replay gave
    no batch (everything left was quarantined); with no ingest it never will again, so that stops the run.
    """

    def __init__(
        self, trainer: Trainer, steps: list[int], folder: Path, report: Callable[[str], None] = print
    ) -> None:
        super().__init__()
        self.trainer = trainer
        self.pending = list(steps)
        self.last = steps[-1]
        self.folder = folder
        self.report = report
        self.snapshots: list[Snapshot] = []
        self.snapshot_s = 0.0
        self.started = time.perf_counter()
        self._polled_step: int | None = None
        self._next_progress = self.started + PROGRESS_EVERY_S

    def train_s(self) -> float:
        return time.perf_counter() - self.started - self.snapshot_s

    def is_set(self) -> bool:
        from cloud_learner.trainer import TrainerError

        step = self.trainer.step
        if step == self._polled_step:
            raise TrainerError(
                f"the replay gave no batch at step {step}: nothing trainable is left (see the copied "
                "replay's quarantine/ folder)"
            )
        self._polled_step = step
        while self.pending and step >= self.pending[0]:
            self.pending.pop(0)
            self.snapshots.append(self._take(step))  # prints its own progress line
            self._next_progress = time.perf_counter() + PROGRESS_EVERY_S
        if time.perf_counter() >= self._next_progress:
            self._progress(step)
            self._next_progress = time.perf_counter() + PROGRESS_EVERY_S
        return super().is_set()

    def _take(self, step: int) -> Snapshot:
        started = time.perf_counter()
        trainer = self.trainer
        train_s = self.train_s()
        latest = trainer.publisher.latest
        if latest is None or latest.train_step != step:
            latest = trainer.publish(trainer.last_metrics)
        path = self.folder / f"step-{step:07d}-v{latest.version:06d}.safetensors"
        path.write_bytes(trainer.checkpoints.read_blob(latest.version))
        self.snapshot_s += time.perf_counter() - started
        self._progress(step, snapshot=path)
        return Snapshot(step, latest.version, str(path), train_s, trainer.samples_trained)

    def _progress(self, step: int, snapshot: Path | None = None) -> None:
        train_s = self.train_s()
        rate = step / max(train_s, 1e-9)
        loss = self.trainer.last_metrics.get("train/loss")
        left = (self.last - step) / rate if rate > 0 else float("nan")
        text = (
            f"step {step:>6d}/{self.last}  {rate:6.2f} steps/s  "
            f"{self.trainer.samples_trained / max(train_s, 1e-9):7.0f} samples/s"
            + (f"  loss {loss:.4f}" if loss is not None else "")
            + (f"  ~{left / 60:.0f} min left" if step < self.last else "")
            + (f"  snapshot {snapshot.name}" if snapshot is not None else "")
        )
        self.report(text)


def train_with_snapshots(
    learner: LearnerConfig, steps: list[int], folder: Path, report: Callable[[str], None] = print
) -> TrainingRun:
    """Train from the base (published as v1) to `steps[-1]` as the learner does, snapshotting at each of
    `steps`; the parts are built as `train_offline` and `sop learner serve` build them."""
    from cloud_learner.checkpoint_store import CheckpointStore
    from cloud_learner.publisher import Publisher
    from cloud_learner.replay import import_offline_stores, open_replay_store
    from cloud_learner.trainer import Trainer, TrainerError
    from sop.episode import Source

    store = open_replay_store(learner)
    import_offline_stores(store, learner.replay.offline_stores)
    checkpoints = CheckpointStore(learner.checkpoint_dir, keep_last=learner.trainer.keep_last)
    checkpoints.remove_leftover_temporaries()
    publisher = Publisher(checkpoints)
    assert learner.trainer.base_checkpoint is not None  # retrain_learner_config always sets it
    base = publisher.publish_base(learner.trainer.base_checkpoint)
    if base is None:
        raise FileExistsError(f"{learner.checkpoint_dir} already holds checkpoints: retrain into a new --out")
    trainer = Trainer(learner, store, checkpoints, publisher)
    trainer.prepare()
    assert trainer.replay is not None
    windows = trainer.replay.windows
    trainable = {
        task: {source.value: windows.num_frames(task, source) for source in (Source.OFFLINE, Source.ONLINE)}
        for task in windows.tasks
    }
    if windows.num_frames() == 0:
        raise TrainerError(
            f"the replay holds no frames to train on for tasks {learner.replay.tasks or 'any'} "
            f"({len(store)} episodes in {learner.replay_dir})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(learner.trainer.num_threads)
    schedule = SnapshotSchedule(trainer, steps, folder, report)
    try:
        trainer.run(stop=schedule, max_steps=steps[-1])
        train_s = schedule.train_s()
    finally:
        trainer.stop()
        publisher.close()
    return TrainingRun(
        snapshots=schedule.snapshots,
        steps=trainer.step,
        samples=trainer.samples_trained,
        train_s=train_s,
        snapshot_s=schedule.snapshot_s,
        base_version=base.version,
        trainable_frames=trainable,
    )


# Evaluation -----------------------------------------------------------------------------------------------


def sampler_label(sampler: SamplerConfig, policy: DiffusionPolicyConfig) -> str:
    """`RTI t=20,10,0 (Ta=1)`, `DDIM-10 (Ta=8)`, `DDPM-100 (Ta=8)`: the kind, its steps and Ta as they run
    on a checkpoint of `policy`'s architecture."""
    if isinstance(sampler, RTISamplerConfig):
        name = "RTI t=" + ",".join(str(t) for t in sampler.resolved_timesteps(policy))
        if sampler.cold_start != DDIMColdStartConfig():
            steps = getattr(sampler.cold_start, "steps", None) or policy.num_train_timesteps
            name += f", cold start {sampler.cold_start.type.upper()}-{steps}"
    elif isinstance(sampler, DDIMSamplerConfig):
        name = f"DDIM-{sampler.steps}"
    elif isinstance(sampler, DDPMSamplerConfig):
        name = f"DDPM-{sampler.steps or policy.num_train_timesteps}"
    else:
        name = sampler.type
    seed = f", seed {sampler.seed}" if sampler.seed else ""
    return f"{name} (Ta={sampler.resolved_execution_horizon(policy.execution_horizon)}{seed})"


def success_figures(count: SuccessCount) -> dict[str, Any]:
    return {"successes": count.successes, "n": count.episodes, "rate": count.rate, "ci95": list(count.ci95)}


def evaluate_row(
    checkpoint: str,
    learner_step: int,
    version: int,
    sampler: SamplerConfig,
    policy: DiffusionPolicyConfig,
    tasks: list[str],
    config: RetrainBenchConfig,
    max_episode_steps: int,
) -> dict[str, Any]:
    """One table row: `checkpoint` with `sampler` on the held-out episodes, per task and pooled."""
    from sim.evaluate import evaluate_checkpoint_parallel
    from sim.metaworld_env import EnvConfig

    env_config = EnvConfig(max_episode_steps=max_episode_steps)
    if policy.cameras:  # an image-conditioned policy: render the camera it was trained on
        env_config = EnvConfig(max_episode_steps=max_episode_steps, image=True, camera=policy.cameras[0])
    started = time.perf_counter()
    report = evaluate_checkpoint_parallel(
        checkpoint,
        sampler,
        tasks,
        config.eval_episodes,
        seed_offset=config.seed_offset,
        env_config=env_config,
        workers=config.eval_workers or evaluation_workers(),
    )
    counts = {
        task: SuccessCount(int(r["successes"]), int(r["episodes"])) for task, r in report["tasks"].items()
    }
    return {
        "learner_step": learner_step,
        "version": version,
        "checkpoint": checkpoint,
        "label": sampler_label(sampler, policy),
        "sampler": sampler_as_run(sampler, policy),
        "tasks": {
            task: {**success_figures(count), "episode_success": report["tasks"][task]["episode_success"]}
            for task, count in counts.items()
        },
        "pooled": success_figures(pooled(counts.values())),
        "ms_per_step_mean": report["ms_per_step_mean"],
        "denoiser_calls_per_chunk_mean": report["denoiser_calls_per_chunk_mean"],
        "wall_s": time.perf_counter() - started,
    }


def row_line(row: dict[str, Any]) -> str:
    pool = row["pooled"]
    tasks = "  ".join(
        f"{task.removesuffix('-v3')} {figures['successes']}/{figures['n']}"
        for task, figures in row["tasks"].items()
    )
    return (
        f"step {row['learner_step']:>6d}  {row['label']:28s} "
        f"{format_success(pool['successes'], pool['n'])}  {tasks}  ({row['wall_s']:.0f} s)"
    )


# Report ---------------------------------------------------------------------------------------------------


def _default(option: dataclasses.Field[Any]) -> Any:
    if option.default_factory is not dataclasses.MISSING:
        return option.default_factory()
    return option.default


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list) and all(isinstance(item, (str, int)) for item in value):
        return ",".join(str(item) for item in value) if value else "[]"
    if isinstance(value, (list, dict)):
        return shlex.quote(json.dumps(value))
    return shlex.quote(str(value))


def _sampler_flag(sampler: SamplerConfig) -> dict[str, Any]:
    """A sampler as its kind plus the keys where it differs from the kind's defaults (`{type: ddim}`)."""
    values, defaults = config_to_dict(sampler), config_to_dict(SamplerConfig.of_kind(sampler.type))
    return {"type": sampler.type} | {k: v for k, v in values.items() if v != defaults.get(k)}


def reproducing_command(config: RetrainBenchConfig) -> str:
    """The `sop bench retrain` command line for `config`: its inputs and steps always, any other option only
    where it differs from its default (a learner key as --learner.a.b)."""
    always = ("run", "replay", "base_checkpoint", "steps")
    words = ["sop bench retrain"]
    for option in sorted(dataclasses.fields(config), key=lambda f: f.name not in always):
        value = getattr(config, option.name)
        if option.name == "learner":
            words += [f"--learner.{k} {_flag_value(v)}" for k, v in flatten_overrides(value).items()]
            continue
        if option.name == "samplers":
            value, default = [_sampler_flag(s) for s in value], [_sampler_flag(s) for s in _default(option)]
        else:
            default = _default(option)
        if value == default or (option.name in always and not value):
            continue
        words.append(f"--{option.name} {_flag_value(value)}")
    return " ".join(words)


def results_table(results: dict[str, Any]) -> list[str]:
    tasks = results["inputs"]["eval_tasks"]
    episodes = results["config"]["eval_episodes"]
    header = [
        "learner step",
        "sampler",
        f"success, mean over tasks (n={episodes * len(tasks)})",
        *(f"{task.removesuffix('-v3')} (n={episodes})" for task in tasks),
    ]
    rows = []
    for row in results["evaluations"]:
        pool = row["pooled"]
        rows.append(
            [
                row["learner_step"],
                row["label"],
                format_success(pool["successes"], pool["n"], show_n=False),
                *(
                    format_success(row["tasks"][t]["successes"], row["tasks"][t]["n"], show_n=False)
                    for t in tasks
                ),
            ]
        )
    return markdown_table(header, rows, align="rl" + "l" * (1 + len(tasks)))


def report_markdown(results: dict[str, Any]) -> str:
    inputs, training, replay = results["inputs"], results["training"], results["replay"]
    config = results["config"]
    held = ", ".join(
        f"{task} {counts.get('offline', 0)} offline + {counts.get('online', 0)} online"
        for task, counts in replay["episodes"].items()
    )
    excluded = replay["excluded_online_episodes"]
    removed = (
        "; removed from the copy: " + ", ".join(f"{n} online {task}" for task, n in excluded.items())
        if excluded
        else ""
    )
    overrides = " ".join(f"{k}={v}" for k, v in flatten_overrides(inputs["learner_overrides"]).items())
    first = config["seed_offset"]
    lines = [
        "## Retrain at fixed learner steps",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine_summary']}; {config['threads']} torch thread(s) for training; "
        f"load average {results['load_average']} at the end (shared with other processes).  ",
        f"Base: `{inputs['base_checkpoint']}` (weights sha256 {inputs['base_weights_sha256'][:12]}). "
        f"Replay: a copy of `{replay['source']}` ({held}{removed}).  ",
        f"Learner: configs/learner.yaml with {overrides}, trained in one process without robots; "
        f"{training['steps']} steps in {training['train_s'] / 60:.1f} min "
        f"({training['steps_per_s']:.2f} steps/s, {training['samples_per_s']:.0f} samples/s).  ",
        f"Evaluation: {config['eval_episodes']} held-out seeded episodes per task and row (reset seeds "
        f"{first}..{first + config['eval_episodes'] - 1}, the same for every row), at most "
        f"{inputs['max_episode_steps']} steps each. Wall time {results['wall_s'] / 60:.1f} min.",
        "",
        *results_table(results),
        "",
        "Success: rate [Wilson 95 % interval]; the mean over tasks is pooled over all their episodes. Every "
        "row's checkpoint is the learner's published (EMA) weights at that step of one continuous run.",
    ]
    return "\n".join(lines) + "\n"


# The whole command ------------------------------------------------------------------------------------------


def run_retrain(config: RetrainBenchConfig, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy, train, snapshot, evaluate; writes `results.json` and `report.md` and returns the results."""
    from sop.data.episode_store import EpisodeStore

    started = time.perf_counter()
    inputs = resolve_inputs(config)
    # The base's architecture (Ta, RTI's default timesteps, cameras: what the samplers run on) and its
    # weights' hash (a run's v1 blob has its own publication time; its weights are the base's): the manifest.
    base_manifest = read_manifest(inputs.base_checkpoint)
    if base_manifest.policy_type != POLICY_TYPE:
        raise CheckpointError(
            f"base_checkpoint: {inputs.base_checkpoint} holds a {base_manifest.policy_type!r} policy; the "
            f"learner trains SOP's diffusion policy ({POLICY_TYPE!r})"
        )
    policy = config_from_dict(DiffusionPolicyConfig, base_manifest.policy_config)
    out = Path(config.out or f"runs/retrain-{time.strftime('%Y%m%d-%H%M%S')}")
    learner_dir = out / "learner"
    if learner_dir.exists():
        raise FileExistsError(f"out: {out} already holds a retrain ({learner_dir}); choose another --out")
    out = open_run_dir(str(out), "", config)
    results_path = Path(config.results) if config.results else out / "results.json"

    report(f"copying the replay {inputs.replay} to {learner_dir / 'replay'}")
    replay = copy_replay(inputs.replay, learner_dir, list(config.exclude_online_tasks))
    tasks = inputs.tasks or EpisodeStore(learner_dir / "replay", create=False).tasks()
    eval_tasks = list(config.eval_tasks) or tasks
    outside = [task for task in eval_tasks if task not in tasks]
    if outside:
        raise ConfigError(f"eval_tasks: {outside} are not among the tasks trained on {tasks}")
    overrides = config.learner_overrides
    learner = retrain_learner_config(overrides, tasks, learner_dir, inputs.base_checkpoint, config.threads)
    if inputs.run_config is not None and inputs.run_config.learner != overrides:
        report(
            f"note: the run's learner overrides were {inputs.run_config.learner}; this retrain's are "
            f"{overrides}"
        )
    report(f"training {inputs.steps[-1]} learner steps on {', '.join(tasks)}, snapshots at {inputs.steps}")
    training = train_with_snapshots(learner, inputs.steps, out / "snapshots", report)

    results: dict[str, Any] = {
        "command": reproducing_command(dataclasses.replace(config, steps=inputs.steps)),
        "config": config_to_dict(config),
        "machine": describe_machine().as_dict(),
        "machine_summary": describe_machine().summary(),
        "inputs": {
            "run": config.run,
            "replay": str(inputs.replay),
            "base_checkpoint": str(inputs.base_checkpoint),
            "base_weights_sha256": base_manifest.weights_sha256,
            "tasks": tasks,
            "eval_tasks": eval_tasks,
            "steps": inputs.steps,
            "max_episode_steps": inputs.max_episode_steps,
            "learner_overrides": overrides,
            "run_learner_overrides": None if inputs.run_config is None else inputs.run_config.learner,
        },
        "replay": replay,
        "training": {
            **{k: v for k, v in dataclasses.asdict(training).items() if k != "snapshots"},
            "samples_per_s": training.samples_per_s,
            "steps_per_s": training.steps_per_s,
            "snapshots": [dataclasses.asdict(s) for s in training.snapshots],
        },
        "evaluations": [],
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")  # kept should the evaluation fail

    torch.set_num_threads(1)  # an in-process evaluation (eval_workers 1) runs as each worker would
    checkpoints = [(s.path, s.learner_step, s.version) for s in training.snapshots]
    if config.evaluate_base:
        checkpoints.insert(0, (str(inputs.base_checkpoint), 0, training.base_version))
    workers = config.eval_workers or evaluation_workers()
    report(
        f"evaluating {len(checkpoints)} checkpoint(s) x {len(config.samplers)} sampler(s) on "
        f"{config.eval_episodes} held-out episodes per task ({workers} process(es))"
    )
    for checkpoint, step, version in checkpoints:
        for sampler in config.samplers:
            row = evaluate_row(
                checkpoint, step, version, sampler, policy, eval_tasks, config, inputs.max_episode_steps
            )
            results["evaluations"].append(row)
            report(row_line(row))
    results["load_average"] = load_average()
    results["wall_s"] = time.perf_counter() - started
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    markdown = report_markdown(results)
    write_report(out / "report.md", markdown)
    report("\n".join(results_table(results)))
    report(f"results: {results_path}  report: {out / 'report.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(RetrainBenchConfig, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_retrain(config, report=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
