"""`sop train bc`: behaviour cloning of the diffusion policy on an episode store, resumable after a kill.

    sop train bc --store data/store --out runs/bc --tasks reach-v3,push-v3 [--steps 5000] [--config train_bc.yaml]

The output directory is a checkpoint directory (the EMA weights: `checkpoint.safetensors` + `manifest.json`,
loadable by `sop sim eval --checkpoint runs/bc`) plus the training state (`training_state.json` and its
tensors, `sop.training.resume_state`). Every `save_every` steps both are rewritten; started again with the same `--out`, the run picks
up from the last saved step with the same weights, optimizer moments, schedule, EMA and random streams,
and the same normalization statistics and architecture (the stored ones win over the command line).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sop.checkpoint import save_checkpoint
from sop.config import config_from_dict, config_to_dict, parse_config
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
from sop.policies.gripper_levels import GripperLevels, find_gripper_levels
from sop.policies.instruction_encoder import sentence_encoder_available
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.training.resume_state import load_training_state, save_training_state
from sop.training.trainer import BCTrainer, OptimizerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainBCConfig:
    store: str = field(default="", metadata={"help": "episode store directory to train on"})
    out: str = field(
        default="", metadata={"help": "output checkpoint directory; an existing run there resumes"}
    )
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "tasks to train on; empty: all in the store"}
    )
    steps: int = 5000
    batch_size: int = 256
    seed: int = 0
    save_every: int = field(default=500, metadata={"help": "steps between training-state checkpoints"})
    log_every: int = 100
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    version: int = field(default=0, metadata={"help": "policy version written into the checkpoint"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    policy: DiffusionPolicyConfig = field(default_factory=DiffusionPolicyConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("store: name the episode store directory (--store DIR)")
        if not self.out:
            raise ValueError("out: name the output checkpoint directory (--out DIR)")
        for name in ("steps", "batch_size", "save_every", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.version < 0:
            raise ValueError(f"version must be >= 0, got {self.version}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {name!r} but CUDA is not available here; use cpu or auto")
    return device


def _fresh_policy_config(
    config: TrainBCConfig, tasks: list[str], state_dim: int, action_dim: int
) -> DiffusionPolicyConfig:
    """The architecture with the data's dimensions and tasks filled in (and the sentence-encoder fallback)."""
    encoder = config.policy.instruction_encoder
    if encoder is InstructionEncoderKind.SENTENCE and not sentence_encoder_available():
        log.warning(
            "the frozen sentence encoder is not installed; conditioning on a learned per-task embedding"
        )
        encoder = InstructionEncoderKind.TASK
    return dataclasses.replace(
        config.policy,
        state_dim=state_dim,
        action_dim=action_dim,
        tasks=tuple(tasks),
        instruction_encoder=encoder,
    )


def gripper_levels_from_store(store: Any, tasks: list[str], gripper_index: int) -> tuple[GripperLevels, ...]:
    """Each task's two gripper commands, from the recorded actions of its episodes in `store`."""
    actions: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    for info in store.list():
        if info.task in actions:
            actions[info.task].append(store.read_columns(info.episode_id, [ACTION])[ACTION])
    return find_gripper_levels(actions, gripper_index)


@dataclass
class TrainResult:
    out: Path
    policy: DiffusionPolicy  # the EMA policy that was written
    steps_done: int
    last_metrics: dict[str, float]
    resumed_from: int


def train_bc(config: TrainBCConfig) -> TrainResult:
    """Run (or resume) behaviour cloning as configured; returns the EMA policy written to `config.out`."""
    from sop.data.episode_store import EpisodeStore  # zarr is only needed by this command
    from sop.data.window_sampler import WindowSampler

    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.out)
    store = EpisodeStore(config.store, create=False)
    saved = load_training_state(out)

    if saved is not None:
        _, meta = saved
        policy_config = config_from_dict(DiffusionPolicyConfig, meta["policy_config"])
        stats = NormalizationStats.from_dict(meta["normalization"])
        tasks = list(meta["tasks"])
        log.info("resuming %s at step %d", out, meta["step"])
    else:
        tasks = list(config.tasks) or store.tasks()
        if not tasks:
            raise ValueError(f"store {config.store} has no episodes")
        missing = sorted(set(tasks) - set(store.tasks()))
        if missing:
            raise ValueError(f"tasks: {missing} have no episodes in {config.store} (it has {store.tasks()})")
        stats = NormalizationStats.from_store(store, (STATE, ACTION), tasks)
        policy_config = _fresh_policy_config(config, tasks, stats[STATE].dim, stats[ACTION].dim)
        if policy_config.gripper_index is not None:
            levels = gripper_levels_from_store(store, tasks, policy_config.gripper_index)
            policy_config = dataclasses.replace(
                policy_config, gripper_levels=tuple(level.as_tuple() for level in levels)
            )
            log.info(
                "gripper levels from the data: %s",
                ", ".join(f"{lv.task} {lv.released:.2f}/{lv.closed:.2f}" for lv in levels),
            )

    torch.manual_seed(config.seed)
    policy = DiffusionPolicy(policy_config, stats, version=config.version, device=device)
    trainer = BCTrainer(policy, config.optim, total_steps=config.steps)
    rng = np.random.default_rng(config.seed)
    resumed_from = 0
    if saved is not None:
        trainer.load_training_state(*saved)
        rng.bit_generator.state = saved[1]["rng_numpy"]
        resumed_from = trainer.step_count

    sampler = WindowSampler(
        store,
        policy_config.observation_horizon,
        policy_config.prediction_horizon,
        tasks=tasks,
        image_keys=list(policy_config.cameras),
    )

    def ema_policy() -> DiffusionPolicy:
        ema = trainer.ema_policy(version=config.version)
        assert isinstance(ema, DiffusionPolicy)
        return ema

    def checkpoint_now(metrics: dict[str, float]) -> DiffusionPolicy:
        tensors, meta = trainer.training_state()
        meta.update(
            policy_config=config_to_dict(policy_config),
            normalization=stats.to_dict(),
            tasks=tasks,
            rng_numpy=rng.bit_generator.state,
            train_config=config_to_dict(config),
        )
        save_training_state(out, tensors, meta)
        ema = ema_policy()
        extra = {"training_step": trainer.step_count, "tasks": tasks, "store": str(config.store)}
        extra.update({f"train_{k}": v for k, v in metrics.items()})
        save_checkpoint(ema.to_checkpoint(extra=extra), out)
        return ema

    metrics: dict[str, float] = {}
    result_policy: DiffusionPolicy | None = None
    started = time.perf_counter()
    with _ProgressBar(config.progress, config.steps, resumed_from) as advance:
        while trainer.step_count < config.steps:
            batch = sampler.sample(config.batch_size, rng)
            metrics = trainer.step(batch)
            advance(metrics)
            if trainer.step_count % config.log_every == 0:
                log.info("step %d loss %.4f lr %.2e", trainer.step_count, metrics["loss"], metrics["lr"])
            if trainer.step_count % config.save_every == 0 or trainer.step_count == config.steps:
                result_policy = checkpoint_now(metrics)
    if result_policy is None:  # nothing left to do: the run had already finished
        result_policy = ema_policy()
    log.info("trained %d steps in %.1f s", trainer.step_count - resumed_from, time.perf_counter() - started)
    return TrainResult(out, result_policy, trainer.step_count, metrics, resumed_from)


class _ProgressBar:
    """A rich progress bar with the running loss, or nothing (tests, logs)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.enabled = enabled
        self.total = total
        self.completed = completed
        self._progress: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda metrics: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("bc"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
        )
        self._progress.start()
        task = self._progress.add_task("train", total=self.total, completed=self.completed, loss="-")

        def advance(metrics: dict[str, float]) -> None:
            self._progress.update(task, advance=1, loss=f"{metrics['loss']:.4f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(TrainBCConfig, args)
    result = train_bc(config)  # a CheckpointError (bad --init) is one line from the `sop` front door
    print(f"wrote {result.out} (policy version {result.policy.version}, step {result.steps_done})")
    return 0
