"""`sop world refine`: improve a diffusion policy inside the frozen world model, with zero environment steps.

    sop world refine --world runs/world/model --checkpoint runs/bc --out runs/bc-refined [--rounds 3]

Method: success-filtered, reward-weighted behaviour cloning on imagined rollouts (filtered BC / AWR with a
0-1 advantage), with a BC anchor on real data. Each round:

1. imagine `rollouts_per_task` episodes per task with the current policy plus bounded exploration noise,
   starting from real first states of the store (`sop.world.imagination`);
2. keep the episodes the success model scores as solved (p > threshold), and turn every step of them into
   a training window: the executed, noisy action chunks that led to success become the targets;
3. fine-tune the policy for `bc_steps` on batches that mix those windows (`imagined_fraction`) with windows
   of the real anchor store (the base's demonstrations), through the same loss, optimizer and EMA as
   `sop train bc`.

Why this and not PPO on a Gaussian head (World4RL) or DPPO's policy gradient through the denoising chain:
the policy here is a diffusion model with no tractable action likelihood, so PPO needs either a new Gaussian
head (which would change the checkpoint format every robot loads) or DPPO's per-denoising-step likelihoods
(dozens of backward passes per chunk: hours on this 2-core CPU). Filtered BC keeps the policy class, the
loss and the checkpoint format unchanged, needs only forward passes to imagine, and is the limit of AWR
with a 0-1 reward. Its weakness: it can only reinforce behaviour that the noisy policy already produces
sometimes, and it trusts the success model, which an imagined rollout may fool; the BC anchor keeps the
policy near the data where the world model is right.

The output is an ordinary policy checkpoint (`sop sim eval --checkpoint OUT` loads it) whose version is the
base's + 1, parent the base's, and whose manifest `extra` records `imagined_steps` (world-model steps taken),
`real_env_steps` (0: this command never touches an environment), the imagined successes per round and task,
and where the world model, the base and the anchor data came from.
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

from sop.checkpoint import CheckpointError, read_manifest, save_checkpoint
from sop.config import parse_config
from sop.episode import ACTION, STATE
from sop.policies import load_policy
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.training.trainer import BCTrainer, OptimizerConfig
from sop.world.imagination import imagine, imagined_windows
from sop.world.modeling_world import WorldModel, WorldModelError
from sop.world.transitions import check_dimensions, load_episodes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineConfig:
    world: str = field(default="", metadata={"help": "world-model folder (`sop world train --out`)"})
    checkpoint: str = field(default="", metadata={"help": "the diffusion policy to refine"})
    out: str = field(default="", metadata={"help": "where to write the refined checkpoint"})
    store: str = field(default="", metadata={"help": "store of real start states; empty: the world model's"})
    anchor_store: str = field(
        default="", metadata={"help": "real data for the BC anchor; empty: the checkpoint's training store"}
    )
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "empty: the tasks policy and world share"}
    )
    rounds: int = 3
    rollouts_per_task: int = 32
    horizon: int = field(default=120, metadata={"help": "imagined steps per episode at most"})
    exploration_std: float = field(default=0.2, metadata={"help": "std of the action noise, at most 1"})
    threshold: float = field(
        default=0.5, metadata={"help": "p(success) above which an imagined episode is solved"}
    )
    sampler_steps: int = field(default=10, metadata={"help": "DDIM steps per imagined chunk"})
    bc_steps: int = field(default=150, metadata={"help": "policy updates per round"})
    batch_size: int = 64
    imagined_fraction: float = field(
        default=0.5, metadata={"help": "share of each batch from imagined windows"}
    )
    optim: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1e-4, warmup_steps=20, schedule="constant_with_warmup")
    )
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("world", "checkpoint", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required (--{name} ...)")
        for name in (
            "rounds",
            "rollouts_per_task",
            "horizon",
            "sampler_steps",
            "bc_steps",
            "batch_size",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.exploration_std <= 1.0:
            raise ValueError(
                f"exploration_std must be in [0, 1] (World4RL bounds sigma by 1), got {self.exploration_std}"
            )
        if not 0.0 <= self.imagined_fraction <= 1.0:
            raise ValueError(f"imagined_fraction must be in [0, 1], got {self.imagined_fraction}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass
class RefineResult:
    out: Path
    policy: DiffusionPolicy
    extra: dict[str, Any]


def _anchor_store(config: RefineConfig, world_store: str) -> str:
    if config.anchor_store:
        return config.anchor_store
    store = read_manifest(config.checkpoint).extra.get("store")
    if isinstance(store, str) and Path(store).is_dir():
        return store
    log.warning(
        "the checkpoint names no training store; anchoring on the world model's store %s", world_store
    )
    return world_store


def _sample_imagined(windows: dict[str, Any], count: int, rng: np.random.Generator) -> dict[str, Any]:
    rows = rng.integers(0, len(windows["task"]), count)
    return {
        STATE: windows[STATE][rows],
        ACTION: windows[ACTION][rows],
        "task": [windows["task"][r] for r in rows],
        "instruction": [windows["instruction"][r] for r in rows],
    }


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch (window-sampler keys the policy's loss reads) from imagined and real parts."""
    parts = [part for part in parts if part]
    return {
        STATE: torch.cat([torch.as_tensor(np.asarray(p[STATE])) for p in parts]),
        ACTION: torch.cat([torch.as_tensor(np.asarray(p[ACTION])) for p in parts]),
        "task": [t for p in parts for t in p["task"]],
        "instruction": [t for p in parts for t in p["instruction"]],
    }


def refine(config: RefineConfig) -> RefineResult:
    from sop.data.episode_store import EpisodeStore
    from sop.data.window_sampler import WindowSampler

    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    world, world_extra = WorldModel.load(config.world)
    policy = load_policy(config.checkpoint)
    if not isinstance(policy, DiffusionPolicy):
        raise CheckpointError(
            f"{config.checkpoint}: refinement needs a diffusion policy, got {type(policy).__name__}"
        )
    if (
        policy.config.state_dim != world.config.state_dim
        or policy.config.action_dim != world.config.action_dim
    ):
        raise WorldModelError(
            f"the policy takes {policy.config.state_dim}-dim states and sends {policy.config.action_dim}-dim actions, "
            f"the world model {world.config.state_dim} and {world.config.action_dim}: they model different robots"
        )
    tasks = list(config.tasks) or [t for t in policy.tasks if t in world.config.tasks]
    if not tasks:
        raise WorldModelError(
            f"the policy's tasks {list(policy.tasks)} and the world model's {list(world.config.tasks)} do not overlap"
        )
    world.task_indices(tasks)  # every task must be one the world model knows
    store = config.store or str(world_extra.get("store", ""))
    starts = load_episodes(store, tasks)
    check_dimensions(starts, world.config.state_dim, world.config.action_dim, f"store {store}")
    first_states = {task: [e.states[0] for e in starts if e.task == task] for task in tasks}
    instruction_of = _instructions(store, tasks)

    anchor_path = _anchor_store(config, store)
    anchor_store = EpisodeStore(anchor_path, create=False)
    anchor = WindowSampler(
        anchor_store,
        policy.config.observation_horizon,
        policy.config.prediction_horizon,
        tasks=[t for t in tasks if t in anchor_store.tasks()],
    )
    base_version = policy.version
    trainer = BCTrainer(policy, config.optim, total_steps=config.rounds * config.bc_steps)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    imagined_steps = 0
    rounds: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    current = policy
    for round_index in range(config.rounds):
        batch_tasks = [t for t in tasks for _ in range(config.rollouts_per_task)]
        picks = [rng.integers(len(first_states[t])) for t in batch_tasks]
        start_states = torch.from_numpy(
            np.stack([first_states[t][i] for t, i in zip(batch_tasks, picks, strict=True)])
        )
        episodes = imagine(
            current,
            world,
            start_states,
            batch_tasks,
            [instruction_of[t] for t in batch_tasks],
            horizon=config.horizon,
            exploration_std=config.exploration_std,
            threshold=config.threshold,
            sampler_steps=config.sampler_steps,
            generator=generator,
        )
        imagined_steps += episodes.num_steps
        per_task = {
            task: float(episodes.success[[t == task for t in batch_tasks]].float().mean()) for task in tasks
        }
        windows = imagined_windows(
            episodes, episodes.success, policy.config.observation_horizon, policy.config.prediction_horizon
        )
        if windows:
            kept.append(windows)
        log.info(
            "round %d: imagined success %s (%d steps)",
            round_index + 1,
            ", ".join(f"{t} {s:.2f}" for t, s in per_task.items()),
            episodes.num_steps,
        )
        pool = _merge(kept) if kept else {}
        imagined_per_batch = round(config.batch_size * config.imagined_fraction) if pool else 0
        losses = []
        for _ in range(config.bc_steps):
            parts = []
            if imagined_per_batch:
                parts.append(_sample_imagined(pool, imagined_per_batch, rng))
            if config.batch_size - imagined_per_batch:
                parts.append(anchor.sample(config.batch_size - imagined_per_batch, rng))
            losses.append(trainer.step(_merge(parts))["loss"])
        rounds.append(
            {
                "round": round_index + 1,
                "imagined_success": per_task,
                "imagined_steps": episodes.num_steps,
                "kept_windows": len(pool.get("task", [])),
                "bc_loss": float(np.mean(losses)),
            }
        )
        ema = trainer.ema_policy()
        assert isinstance(ema, DiffusionPolicy)
        current = ema

    extra = dict(read_manifest(config.checkpoint).extra)
    extra.update(
        refined_by="sop.world.refine",
        method="success-filtered BC on imagined rollouts + BC anchor on real data",
        world=str(config.world),
        base_checkpoint=str(config.checkpoint),
        anchor_store=str(anchor_path),
        start_store=str(store),
        imagined_steps=imagined_steps,
        real_env_steps=0,
        refine_rounds=rounds,
        refine_config=dataclasses.asdict(config) | {"optim": dataclasses.asdict(config.optim)},
        refine_seconds=round(time.perf_counter() - started, 1),
    )
    extra["refine_config"]["optim"]["betas"] = list(config.optim.betas)
    save_checkpoint(
        current.to_checkpoint(version=base_version + 1, parent_version=base_version, extra=extra), config.out
    )
    return RefineResult(Path(config.out), current, extra)


def _instructions(store: str, tasks: list[str]) -> dict[str, str]:
    """Each task's instruction as its episodes recorded it (what the policy conditions on)."""
    from sop.data.episode_store import EpisodeStore

    found: dict[str, str] = {}
    for info in EpisodeStore(store, create=False).list():
        if info.task in tasks and info.task not in found:
            found[info.task] = info.instruction
    return {task: found.get(task, task) for task in tasks}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(RefineConfig, args)
    result = refine(config)
    print(
        f"wrote {result.out} (version {read_manifest(result.out).version}, {result.extra['imagined_steps']} imagined steps, "
        f"{result.extra['real_env_steps']} real environment steps)"
    )
    return 0
