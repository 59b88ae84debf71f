"""`sop demo`: a simulated fleet gets better while it works — online post-training end to end on one machine.

    sop demo                       # default: 4 tasks, 4 robots, ~12 minutes on a 2-core CPU
    sop demo --config demo_quick   # one easy task, 2 robots, ~3 minutes (what CI runs)
    sop demo --robots 2 --budget_s 300 --tasks reach-v3,push-v3 --out runs/mine
    sop demo --deployment shifted-objects   # robots and evaluation under a shift (configs/deployments/)

What happens, in order:
1. A weak base policy: a few scripted demonstrations per task, a short behaviour-cloning run. Cached under
   `base.cache_dir` by a hash of everything that shapes it, so the second run starts at step 2.
2. The learner (`sop learner serve`) and N robot daemons (`sop robot run`) start as separate processes that
   talk gRPC on 127.0.0.1 exactly as they would across machines: mutual TLS with per-robot certificates and
   tokens, and checkpoints signed by the learner and checked by every robot (`sop fleet init`'s material,
   made fresh for each run in `<run>/fleet/`). Each robot runs its own task instance with a simulated
   operator who takes over when the policy stalls.
3. For `budget_s` the terminal shows each robot's task, episodes, policy version, success and intervention
   rates, and the learner's steps and checkpoints.
4. Everything stops cleanly (robots first: their spools are flushed; then the learner) — also on Ctrl-C.
5. The base and the final checkpoint are evaluated on the same held-out seeded episodes (no operator), one
   process per core, and the run folder gets `report.md` (success rates with Wilson 95 % intervals), plots
   and `summary.json`, with the operators' effort (operator-labelled frames and operator-minutes).

`--deployment NAME` (default nominal: the demo as it always was) runs the robots and both evaluations under a
deployment preset of sim/deployment.py; the demonstrations of the base policy stay nominal, as teams record
them before a robot is deployed, so the same cached base serves every deployment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fleet_harness.processes import FleetProcesses, free_port, wait_for_port
from fleet_harness.ray_fleet import RayFleetConfig, RayFleetProcesses
from fleet_harness.report import plot_run, read_episode_events, read_jsonl, summarize, write_report
from sop.config import ConfigError, config_to_dict, parse_config
from sop.fleet_trust import FleetTrust, create_fleet_trust, learner_flags, robot_flags
from sop.hashing import sha256_hex
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, RTISamplerConfig, SamplerConfig
from sop.success_rate import SuccessCount, pooled
from sop.training.trainer import OptimizerConfig

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_000  # held-out layouts: demos use seeds < 10_000, robots 10_000 + 1000 * i + episode


@dataclass(frozen=True)
class BasePolicyConfig:
    """The weak base policy the fleet starts from (few demonstrations on purpose: something to fix)."""

    demos_per_task: int = field(default=4, metadata={"help": "scripted demonstrations per task"})
    demo_seed: int = 0
    demo_noise: float = field(default=0.1, metadata={"help": "action noise of the scripted expert"})
    bc_steps: int = field(default=600, metadata={"help": "behaviour-cloning steps"})
    batch_size: int = 64
    cache_dir: str = field(default="runs/.cache/base", metadata={"help": "where base policies are cached"})
    policy: DiffusionPolicyConfig = field(
        default_factory=lambda: DiffusionPolicyConfig(down_dims=(32, 64, 128)),
        metadata={"help": "the shared policy's architecture (sized for a 2-core CPU)"},
    )
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, warmup_steps=50))

    def __post_init__(self) -> None:
        for name in ("demos_per_task", "bc_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"base.{name} must be >= 1, got {getattr(self, name)}")


# Learner keys the harness sets itself for every run (folders, the base policy, the data, the fleet's trust
# material and address); a `learner:` override of one of them would break the run, so it is refused.
HARNESS_LEARNER_KEYS = (
    "run_dir",
    "trainer.base_checkpoint",
    "trainer.signing_key_file",
    "replay.offline_stores",
    "replay.tasks",
    "server",
    "auth",
)


def demo_learner_overrides() -> dict[str, Any]:
    """What the demo changes in configs/learner.yaml: a faster post-training rate than a real fleet's."""
    return {
        "trainer": {"batch_size": 64, "num_threads": 1, "publish_every_steps": 25},
        "algorithm": {"optimizer": {"lr": 3e-4}},
    }


def flatten_overrides(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"batch_size": 64}} -> {"trainer.batch_size": 64}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_overrides(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def first_key_under(values: dict[str, Any], prefixes: Sequence[str]) -> str | None:
    """The first dotted key of the nested mapping `values` that is one of `prefixes` or lies under one."""
    for key in flatten_overrides(values):
        if any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes):
            return key
    return None


def override_flags(values: dict[str, Any]) -> list[str]:
    """A nested mapping of config keys as `--a.b value` flags (the one flag spelling, sop/config.py)."""
    flags: list[str] = []
    for key, value in flatten_overrides(values).items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif value is None:
            text = "null"
        elif isinstance(value, (list, tuple, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        flags += [f"--{key}", text]
    return flags


def sampler_flags(key: str, sampler: SamplerConfig) -> list[str]:
    """A sampler config as a child's flags (`--policy.sampler.type ddim --policy.sampler.steps 10 ...`); its
    `type` replaces whatever kind the child's config file chose, with every key of the kind spelled out."""
    return override_flags({key: config_to_dict(sampler)})


def sampler_as_run(sampler: SamplerConfig, policy: DiffusionPolicyConfig) -> dict[str, Any]:
    """The sampler config for the run's summary, with RTI's default timesteps spelled out."""
    if isinstance(sampler, RTISamplerConfig):
        sampler = replace(sampler, timesteps=sampler.resolved_timesteps(policy))
    return config_to_dict(sampler)


def learner_config(overrides: dict[str, Any], extra: Sequence[str] = ()) -> Any:
    """The learner's config as a fleet run starts it: configs/learner.yaml, then `overrides`, then `extra`."""
    from cloud_learner.config import LearnerConfig

    return parse_config(LearnerConfig, ["--config", "learner.yaml", *override_flags(overrides), *extra])


@dataclass(frozen=True)
class FleetDemoConfig:
    tasks: list[str] = field(
        default_factory=lambda: ["reach-v3", "button-press-topdown-v3", "drawer-open-v3", "push-v3"],
        metadata={"help": "one shared policy for all; robot i runs tasks[i % len(tasks)]"},
    )
    robots: int = 4
    budget_s: float = field(default=540.0, metadata={"help": "seconds the fleet runs online"})
    out: str = field(default="", metadata={"help": "run folder; default runs/<timestamp>"})
    eval_episodes: int = field(
        default=20, metadata={"help": "held-out seeded episodes per task, base and final"}
    )
    robot_rate_hz: float = field(
        default=30.0,
        metadata={"help": "robots' control rate in Hz, as real arms run; 0: free-running simulation"},
    )
    max_episode_steps: int = 150
    robot_niceness: int = field(
        default=10,
        metadata={
            "help": "CPU priority of the robot daemons below the learner's (os.nice, 0-19). Real robots "
            "compute on their own machines and never slow the learner; here they share its cores, and at "
            "equal priority four 30 Hz robots left the learner a third of the samples/s it trains alone. "
            "0: equal shares"
        },
    )
    sampler: SamplerConfig = field(
        default_factory=RTISamplerConfig,
        metadata={
            "help": "how robots and the evaluation sample actions, the policy's sampler config: "
            "{type: ddim} (DDIM-10), {type: rti}, {type: ddpm}, with each kind's keys"
        },
    )
    learner: dict[str, Any] = field(
        default_factory=demo_learner_overrides,
        metadata={
            "help": "keys of the learner's config (configs/learner.yaml) to set, as a nested mapping; "
            "e.g. --learner.trainer.batch_size 32 --learner.algorithm.optimizer.lr 1e-3"
        },
    )
    base: BasePolicyConfig = field(default_factory=BasePolicyConfig)
    deployment: str = field(
        default="nominal",
        metadata={
            "help": "deployment preset the robots and the evaluation run under (configs/deployments/<name>"
            ".yaml: shifted-objects, heavy-objects, latency, noisy-sensing, camera-shift); demonstrations "
            "stay nominal"
        },
    )
    operator: str = field(
        default="simulated",
        metadata={
            "help": "simulated: the scripted expert takes over when a policy stalls (HG-DAgger learns from its "
            "frames); none: robots run alone, outcomes from the simulator (what RECAP can learn from: "
            "--learner.algorithm.type recap)"
        },
    )
    live: bool = field(default=True, metadata={"help": "live terminal view (off: periodic log lines)"})
    backend: str = field(
        default="local",
        metadata={
            "help": "local: the learner and robots are processes of this machine; ray: Ray-managed "
            "processes spread over a Ray cluster's nodes, the learner training on it (fleet_harness/ray_fleet.py)"
        },
    )
    ray: RayFleetConfig = field(default_factory=RayFleetConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sampler, str):  # a kind's name from a Python caller: that kind's defaults
            object.__setattr__(self, "sampler", SamplerConfig.of_kind(self.sampler))
        if not self.tasks:
            raise ValueError("tasks: name at least one task")
        from sim.tasks import get_task

        for task in self.tasks:
            get_task(task)  # raises UnknownTaskError naming the task
        from sim.deployment import load_deployment

        load_deployment(self.deployment)  # an unknown preset stops here, with the list of presets
        if self.robots < 1:
            raise ValueError(f"robots must be >= 1, got {self.robots}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if not 0 <= self.robot_niceness <= 19:
            raise ValueError(f"robot_niceness must be in [0, 19], got {self.robot_niceness}")
        if self.robot_rate_hz < 0:
            raise ValueError(f"robot_rate_hz must be >= 0, got {self.robot_rate_hz}")
        if self.operator not in ("simulated", "none"):
            raise ValueError(f"operator must be simulated or none, got {self.operator!r}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be local or ray, got {self.backend!r}")
        key = first_key_under(self.learner, HARNESS_LEARNER_KEYS)
        if key is not None:
            raise ValueError(f"learner.{key}: the harness sets this itself for every run; leave it out")
        try:  # an unknown key or a bad value stops here, before anything starts
            learner_config(self.learner)
        except ConfigError as exc:
            # Name the key as the user spells it here: `--learner.trainer.x`, not the learner's `--trainer.x`.
            reason = re.sub(r"^bad config \([^)]*\): ", "", str(exc))
            raise ValueError("learner: " + re.sub(r"--(?=[a-z_])", "--learner.", reason)) from None

    def robot_task(self, index: int) -> str:
        return self.tasks[index % len(self.tasks)]

    @property
    def operator_control_hz(self) -> float:
        """The rate operator-minutes are counted at: the robots' control rate, or for a free-running fleet the
        rate its episodes are stamped at (sim.demonstrations.EPISODE_FPS, 30 Hz, as real arms run)."""
        return self.robot_rate_hz if self.robot_rate_hz > 0 else 30.0


# Base policy ----------------------------------------------------------------------------------------------


# Bumped when training a base from the same settings gives a different checkpoint (2: per-task gripper levels).
BASE_RECIPE = 2


def base_policy_key(config: FleetDemoConfig) -> str:
    """Everything that shapes the base policy, hashed: a changed setting trains a new one."""
    base = {k: v for k, v in config_to_dict(config.base).items() if k != "cache_dir"}
    shape: dict[str, Any] = {
        "recipe": BASE_RECIPE,
        "tasks": sorted(config.tasks),
        "base": base,
        "max_episode_steps": config.max_episode_steps,
    }
    return sha256_hex(json.dumps(shape, sort_keys=True).encode())[:16]


def prepare_base_policy(config: FleetDemoConfig, console: Console) -> tuple[Path, Path]:
    """Record demonstrations and train the base policy, or reuse the cached pair: (checkpoint, demo store)."""
    from sim.demonstrations import record_demonstrations
    from sim.metaworld_env import EnvConfig
    from sop.data.episode_store import EpisodeStore
    from sop.training.bc import TrainBCConfig, train_bc

    cache = Path(config.base.cache_dir) / base_policy_key(config)
    checkpoint_dir = cache / "checkpoint"
    demos_dir = cache / "demos"
    done_marker = cache / "ready.json"
    if done_marker.exists():
        console.print(f"[green]reusing the cached base policy[/green] {checkpoint_dir}")
        return checkpoint_dir, demos_dir
    if cache.exists():
        shutil.rmtree(cache)  # an interrupted earlier preparation: start it over
    cache.mkdir(parents=True)
    console.print(
        f"recording {config.base.demos_per_task} scripted demonstrations for each of {len(config.tasks)} tasks"
    )
    store = EpisodeStore(demos_dir)
    env_config = EnvConfig(max_episode_steps=config.max_episode_steps)
    for index, task in enumerate(config.tasks):
        for episode in record_demonstrations(
            task,
            config.base.demos_per_task,
            seed=config.base.demo_seed + 1000 * index,
            noise=config.base.demo_noise,
            env_config=env_config,
        ):
            store.append(episode)
    console.print(f"training the base policy: {config.base.bc_steps} behaviour-cloning steps")
    train_bc(
        TrainBCConfig(
            store=str(demos_dir),
            out=str(checkpoint_dir),
            tasks=list(config.tasks),
            steps=config.base.bc_steps,
            batch_size=config.base.batch_size,
            save_every=max(100, config.base.bc_steps // 4),
            log_every=max(50, config.base.bc_steps // 10),
            threads=1,
            device="cpu",
            version=0,
            progress=config.live,
            policy=config.base.policy,
            optim=config.base.optim,
        )
    )
    done_marker.write_text(json.dumps({"config": config_to_dict(config.base), "tasks": config.tasks}) + "\n")
    return checkpoint_dir, demos_dir


# Evaluation -------------------------------------------------------------------------------------------------


def evaluation_workers() -> int:
    """Evaluation runs after the fleet has stopped, so it may take every core: one process per core."""
    return max(1, os.cpu_count() or 1)


def evaluate_checkpoint(
    source: Path | bytes, config: FleetDemoConfig, workers: int | None = None
) -> dict[str, SuccessCount]:
    """Autonomous successes per task on the held-out seeds (the same seeds for every checkpoint), counted so
    the report can give each rate its interval; `workers` processes (default: one per core) share the
    episodes, with the same outcomes as one process would have."""
    import torch

    from sim.deployment import load_deployment
    from sim.evaluate import evaluate_checkpoint_parallel
    from sim.metaworld_env import EnvConfig

    torch.set_num_threads(1)  # for workers=1, which evaluates in this process
    result = evaluate_checkpoint_parallel(
        source,
        config.sampler,
        list(config.tasks),
        config.eval_episodes,
        seed_offset=EVAL_SEED_OFFSET,
        env_config=EnvConfig(
            max_episode_steps=config.max_episode_steps, deployment=load_deployment(config.deployment)
        ),
        workers=evaluation_workers() if workers is None else workers,
    )
    return {
        task: SuccessCount(int(r["successes"]), int(r["episodes"])) for task, r in result["tasks"].items()
    }


# The live view ------------------------------------------------------------------------------------------------


@dataclass
class FleetView:
    """What the terminal shows, rebuilt from the run folder's event logs."""

    run_dir: Path
    robot_tasks: dict[str, str]
    started: float = field(default_factory=time.monotonic)

    def robot_rows(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for robot_id, task in self.robot_tasks.items():
            events = read_jsonl(self.run_dir / "robots" / robot_id / "episodes.jsonl")
            recent = events[-10:]
            rows[robot_id] = {
                "task": task,
                "episodes": len(events),
                "version": events[-1]["policy_version"] if events else 0,
                "success": sum(e["outcome"] == "success" and e["intervention_frames"] == 0 for e in recent)
                / max(1, len(recent)),
                "intervention": sum(e["intervention_frames"] for e in recent)
                / max(1, sum(e["num_steps"] for e in recent)),
                "env_steps": sum(int(e["num_steps"]) for e in events),
                "versions": sorted({int(e["policy_version"]) for e in events}),
            }
        return rows

    def render(self, budget_s: float) -> Group:
        elapsed = time.monotonic() - self.started
        robots = Table(title=f"SOP fleet — {elapsed:5.0f} s of {budget_s:.0f} s", expand=False)
        for column in (
            "robot",
            "task",
            "episodes",
            "policy",
            "autonomous success (last 10)",
            "intervention rate",
        ):
            robots.add_column(column)
        for robot_id, row in self.robot_rows().items():
            robots.add_row(
                robot_id,
                row["task"],
                str(row["episodes"]),
                f"v{row['version']}",
                f"{row['success']:.0%}",
                f"{row['intervention']:.0%}",
            )
        train = read_jsonl(self.run_dir / "learner" / "train.jsonl")
        learner = Table(title="learner", expand=False)
        for column in ("steps", "loss", "online share (mean)", "checkpoints published", "episodes in replay"):
            learner.add_column(column)
        logged = [r for r in train if r.get("published_version") is None and r.get("loss") is not None]
        last = logged[-1] if logged else {}
        shares = [v for k, v in last.items() if k.startswith("mix/") and k.endswith("/online_share")]
        published = [r["published_version"] for r in train if r.get("published_version") is not None]
        learner.add_row(
            str(train[-1]["step"]) if train else "0",
            f"{last['loss']:.4f}" if last else "-",
            f"{sum(shares) / len(shares):.2f}" if shares else "-",
            str(len(published)),
            str(int(last["replay/episodes"])) if "replay/episodes" in last else "-",
        )
        return Group(robots, learner)

    def log_line(self) -> str:
        parts = [
            f"{rid}:{row['task']} ep={row['episodes']} v{row['version']} ok={row['success']:.0%}"
            for rid, row in self.robot_rows().items()
        ]
        return " | ".join(parts)


# The run ---------------------------------------------------------------------------------------------------------


def write_fleet_trust(run_dir: Path, robot_ids: list[str]) -> FleetTrust:
    """A fresh CA, certificates, tokens and signing key for this run (what `sop fleet init` writes)."""
    return create_fleet_trust(run_dir / "fleet", robot_ids, force=True)


def learner_training_args(
    config: FleetDemoConfig, learner_dir: Path, base: Path, offline_stores: list[Path]
) -> list[str]:
    """The learner's training settings as `LearnerConfig` flags (shared by the service and the offline arm of
    `sop bench fleet`, so both train exactly alike): configs/learner.yaml, the config's `learner:` overrides,
    then what the harness sets itself (HARNESS_LEARNER_KEYS)."""
    return [
        "--config",
        "learner.yaml",
        *override_flags(config.learner),
        "--run_dir",
        str(learner_dir),
        "--trainer.base_checkpoint",
        str(base),
        "--replay.offline_stores",
        json.dumps([str(store) for store in offline_stores]),
        "--replay.tasks",
        json.dumps(list(config.tasks)),
    ]


def learner_args(
    config: FleetDemoConfig, run_dir: Path, port: int, base: Path, demos: Path, trust: FleetTrust
) -> list[str]:
    return [
        "learner",
        "serve",
        *learner_training_args(config, run_dir / "learner", base, [demos]),
        "--server.address",
        f"127.0.0.1:{port}",
        *learner_flags(trust),
    ]


def robot_args(
    config: FleetDemoConfig,
    run_dir: Path,
    index: int,
    robot_id: str,
    port: int,
    base: Path,
    trust: FleetTrust,
) -> list[str]:
    args = [
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
        str(run_dir / "robots"),
        "--robot.task",
        config.robot_task(index),
        "--robot.seed",
        str(10_000 + 1000 * index),
        "--robot.deployment",
        config.deployment,
        "--operator.type",
        config.operator,
        "--operator.seed",
        str(index),
        "--policy.base_checkpoint",
        str(base),
        *sampler_flags("policy.sampler", config.sampler),
        "--control.max_episode_steps",
        str(config.max_episode_steps),
        "--metrics.episode_log",
        str(run_dir / "robots" / robot_id / "episodes.jsonl"),
        "--metrics.log_interval_s",
        "30",
    ]
    if config.robot_rate_hz > 0:
        args += ["--control.rate_hz", str(config.robot_rate_hz)]
    else:
        args += ["--control.free_running", "true"]
    return args


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during the online phase: stop cleanly and still write what we have."""


@dataclass
class OnlinePhase:
    """What the online phase leaves behind for the evaluation and the report."""

    started_at: float  # wall clock (time.time) when the robots started
    exit_codes: dict[str, int | None]
    interrupted: bool
    view: FleetView


def run_online_phase(
    config: FleetDemoConfig,
    run_dir: Path,
    base_checkpoint: Path,
    demos: Path,
    console: Console,
    watch: Callable[[FleetView], bool] | None = None,
) -> OnlinePhase:
    """Start the learner and `config.robots` robot daemons, run them for `config.budget_s` (or until `watch`,
    called about once a second, returns True) and stop them all cleanly, also on Ctrl-C / SIGTERM."""
    robot_ids = [f"robot-{i}" for i in range(config.robots)]
    trust = write_fleet_trust(run_dir, robot_ids)
    processes: FleetProcesses | RayFleetProcesses
    if config.backend == "ray":
        processes = RayFleetProcesses(run_dir / "logs", config.ray)
        learner_extra = processes.learner_ray_flags()
    else:
        processes, learner_extra = FleetProcesses(run_dir / "logs"), []
    port = free_port()
    view = FleetView(run_dir, {rid: config.robot_task(i) for i, rid in enumerate(robot_ids)})

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    started_at = time.time()
    env = {"OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    try:
        learner = processes.start(
            "learner", learner_args(config, run_dir, port, base_checkpoint, demos, trust) + learner_extra, env
        )
        # backend ray: a RemoteProcess, with the Popen methods wait_for_port reads
        wait_for_port("127.0.0.1", port, timeout_s=120, process=learner.process)  # type: ignore[arg-type]
        console.print(
            f"learner listening on 127.0.0.1:{port} (mutual TLS, signed checkpoints); "
            f"starting {config.robots} robot daemons"
        )
        for i, robot_id in enumerate(robot_ids):
            processes.start(
                robot_id,
                robot_args(config, run_dir, i, robot_id, port, base_checkpoint, trust),
                env,
                niceness=config.robot_niceness,
            )
        view.started = time.monotonic()
        started_at = time.time()
        deadline = view.started + config.budget_s
        last_log = 0.0
        live = (
            Live(view.render(config.budget_s), console=console, refresh_per_second=1) if config.live else None
        )
        try:
            if live is not None:
                live.start()
            while time.monotonic() < deadline:
                dead = processes.dead()
                if dead:
                    names = ", ".join(c.name for c in dead)
                    last = processes.tail(dead[0])  # type: ignore[arg-type]  # each backend tails its own
                    raise RuntimeError(f"{names} exited early; last log lines:\n{last}")
                if live is not None:
                    live.update(view.render(config.budget_s))
                elif time.monotonic() - last_log > 15:
                    console.print(view.log_line())
                    last_log = time.monotonic()
                if watch is not None and watch(view):
                    break
                time.sleep(1.0)
        finally:
            if live is not None:
                live.stop()
    except Interrupted:
        interrupted = True
        console.print("[yellow]interrupted: stopping the fleet cleanly[/yellow]")
    finally:
        codes = processes.stop_all(timeout_s=30)
        for s, handler in previous.items():
            signal.signal(s, handler)
    console.print(f"fleet stopped: exit codes {codes}")
    return OnlinePhase(started_at, codes, interrupted, view)


def open_run_dir(out: str, default_prefix: str, config: Any) -> Path:
    """The run folder (`out`, or `<default_prefix><timestamp>`), created, with the run's config.json in it."""
    run_dir = Path(out or f"{default_prefix}{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    return run_dir


def run_fleet_demo(config: FleetDemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary written to `summary.json`."""
    console = console or Console()
    wall_start = time.monotonic()
    run_dir = open_run_dir(config.out, "runs/", config)
    console.print(f"[bold]SOP fleet demo[/bold] → {run_dir}")

    base_checkpoint, demos = prepare_base_policy(config, console)
    online = run_online_phase(config, run_dir, base_checkpoint, demos, console)

    final_blob, final_version = latest_published(run_dir)
    console.print(
        f"evaluating base (v0) and final (v{final_version}) on {config.eval_episodes} held-out episodes per task "
        f"({evaluation_workers()} processes)"
    )
    base_eval = evaluate_checkpoint(base_checkpoint, config)
    final_eval = evaluate_checkpoint(final_blob, config) if final_blob is not None else dict(base_eval)

    events = read_episode_events(run_dir, online.started_at)
    train_rows = read_jsonl(run_dir / "learner" / "train.jsonl")
    applied = {rid: row["versions"] for rid, row in online.view.robot_rows().items()}
    summary = summarize(
        events,
        train_rows,
        base_eval,
        final_eval,
        time.monotonic() - wall_start,
        applied,
        sampler=sampler_as_run(config.sampler, config.base.policy),
        operator_control_hz=config.operator_control_hz,
        deployment=deployment_summary(config.deployment),
    )
    summary["final_version"] = final_version
    summary["online_started_at"] = online.started_at
    summary["interrupted"] = online.interrupted
    summary["process_exit_codes"] = online.exit_codes
    plots = plot_run(run_dir, events, train_rows, online.started_at)
    report = write_report(run_dir, summary, plots)
    console.print(
        f"mean success on held-out episodes: base {pooled(base_eval.values())} → "
        f"final {pooled(final_eval.values())}   report: {report}"
    )
    return summary


def deployment_summary(name: str) -> dict[str, Any]:
    """The deployment a run used, for its summary: the preset's name and what it shifts."""
    from sim.deployment import load_deployment

    deployment = load_deployment(name)
    return {"name": deployment.name, "shifts": deployment.shifts()}


def latest_published(run_dir: Path) -> tuple[bytes | None, int]:
    """The newest checkpoint the learner published in this run (blob, version)."""
    from cloud_learner.checkpoint_store import CheckpointStore

    folder = run_dir / "learner" / "checkpoints"
    if not folder.exists():
        return None, 0
    store = CheckpointStore(folder)
    record = store.latest()
    if record is None:
        return None, 0
    return store.read_blob(record.version), record.version


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(FleetDemoConfig, args, default_config="demo.yaml")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_fleet_demo(config)
    return 0 if not summary.get("interrupted") else 130


if __name__ == "__main__":
    sys.exit(main())
