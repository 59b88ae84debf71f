"""`sop world train`: fit the diffusion world model, its success model and the MLP baseline on a store.

    sop world train --store runs/world/store --out runs/world/model [--steps 4000] [--config world.yaml]

The output folder is a world-model folder (`sop.world.modeling_world`) plus the training state
(`sop.training.resume_state`, the layout `sop train bc` uses). Every `save_every` steps both are rewritten;
started again with the same `--out`, training continues from the last saved step with the same weights,
optimizer moments, normalization, model config and random stream (the stored ones win over the command line),
so an interrupted run ends where an uninterrupted one would.

The three models see the same batches; their losses are summed (they share no weights, so this is three
trainings in one loop, one data pass). Held-out episodes (`held_out_every`) are never trained on; `sop world
eval` finds them again from the folder's manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sop.config import config_from_dict, config_to_dict, parse_config
from sop.training.bc import _ProgressBar
from sop.training.resume_state import load_training_state, save_training_state
from sop.training.trainer import _optimizer_tensors, _restore_optimizer
from sop.world.configuration_world import WorldModelConfig
from sop.world.modeling_world import WorldModel, WorldModelError
from sop.world.transitions import TransitionSet, check_dimensions, load_episodes, split_held_out

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainWorldConfig:
    store: str = field(default="", metadata={"help": "episode store to learn the dynamics from"})
    out: str = field(default="", metadata={"help": "world-model folder; an unfinished run there resumes"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "tasks; empty: all in the store"})
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-5
    held_out_every: int = field(
        default=5, metadata={"help": "every n-th episode per task is held out; 0: none"}
    )
    seed: int = 0
    save_every: int = 500
    log_every: int = 200
    threads: int = field(
        default=1, metadata={"help": "torch CPU threads (1 is fastest on a busy 2-core CPU)"}
    )
    progress: bool = True
    model: WorldModelConfig = field(default_factory=WorldModelConfig)

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("store: name the episode store (--store DIR)")
        if not self.out:
            raise ValueError("out: name the world-model folder to write (--out DIR)")
        for name in ("steps", "batch_size", "save_every", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.held_out_every < 0 or self.held_out_every == 1:
            raise ValueError(f"held_out_every must be 0 (none) or >= 2, got {self.held_out_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainWorldResult:
    out: Path
    model: WorldModel
    steps_done: int
    resumed_from: int
    metrics: dict[str, float]


def learning_rate(config: TrainWorldConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of `lr`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_world(config: TrainWorldConfig) -> TrainWorldResult:
    """Run (or resume) world-model training as configured; returns the model written to `config.out`."""
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    saved = load_training_state(out)
    if saved is None and (out / "checkpoint.safetensors").exists():
        log.info("%s holds a finished world model and no training state: training a new one over it", out)

    episodes = load_episodes(config.store, config.tasks)
    if saved is not None:
        model_config = config_from_dict(WorldModelConfig, saved[1]["model_config"])
        check_dimensions(episodes, model_config.state_dim, model_config.action_dim, f"store {config.store}")
        log.info("resuming %s at step %d", out, saved[1]["step"])
    else:
        tasks = tuple(sorted({episode.task for episode in episodes}))
        model_config = dataclasses.replace(
            config.model,
            state_dim=episodes[0].states.shape[1],
            action_dim=episodes[0].actions.shape[1],
            tasks=tasks,
        )
    train_episodes, held_out = split_held_out(episodes, config.held_out_every)
    if not train_episodes:
        raise WorldModelError(
            f"{config.store}: every episode is held out; lower held_out_every or add episodes"
        )
    transitions = TransitionSet(train_episodes, model_config.history, list(model_config.tasks))

    torch.manual_seed(config.seed)
    model = WorldModel(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if saved is not None:
        tensors, meta = saved
        model.load_state_dict(
            {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        )
        _restore_optimizer(optimizer, tensors, meta["optimizer"])
        generator.set_state(tensors["generator_state"])
        step = int(meta["step"])
    else:
        states = torch.cat([torch.from_numpy(e.states) for e in train_episodes])
        deltas = torch.cat([torch.from_numpy(e.states[1:] - e.states[:-1]) for e in train_episodes])
        model.set_normalization(states, deltas)
    resumed_from = step

    extra: dict[str, Any] = {
        "store": str(config.store),
        "tasks": list(model_config.tasks),
        "held_out_every": config.held_out_every,
        "held_out_episodes": [episode.episode_id for episode in held_out],
        "train_episodes": len(train_episodes),
        "train_transitions": len(transitions),
        "predicts": "z-scored state delta s[t+1] - s[t]",
    }

    def save(metrics: dict[str, float]) -> None:
        optimizer_tensors, optimizer_meta = _optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
        tensors.update(optimizer_tensors, generator_state=generator.get_state())
        meta = {
            "step": step,
            "optimizer": optimizer_meta,
            "model_config": config_to_dict(model_config),
            "train_config": config_to_dict(config),
        }
        save_training_state(out, tensors, meta)
        model.save(
            out, extra=dict(extra, training_step=step, **{f"train_{k}": v for k, v in metrics.items()})
        )

    metrics: dict[str, float] = {}
    started = time.perf_counter()
    model.train()
    with _ProgressBar(config.progress, config.steps, step) as advance:
        while step < config.steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            batch = transitions.sample(config.batch_size, generator)
            losses = model.losses(**batch, generator=generator)
            loss = losses["diffusion"] + losses["baseline"] + losses["success"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            step += 1
            metrics = {"loss": loss.item()} | {name: value.item() for name, value in losses.items()}
            advance(metrics)
            if step % config.log_every == 0:
                log.info(
                    "step %d diffusion %.4f baseline %.4f success %.4f",
                    step, metrics["diffusion"], metrics["baseline"], metrics["success"],
                )  # fmt: skip
            if step % config.save_every == 0 or step == config.steps:
                save(metrics)
    if step == resumed_from and not (out / "checkpoint.safetensors").exists():
        save(metrics)
    model.eval()
    log.info("trained %d steps in %.1f s", step - resumed_from, time.perf_counter() - started)
    return TrainWorldResult(out, model, step, resumed_from, metrics)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(TrainWorldConfig, args, default_config="world.yaml")
    result = train_world(config)
    print(f"wrote {result.out} (step {result.steps_done}, {len(result.model.config.tasks)} tasks)")
    return 0
