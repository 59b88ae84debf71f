"""`sop bench rti`: what RTI's warm start is worth, on one checkpoint in Meta-World.

    sop bench rti --checkpoint runs/bc \
        --tasks reach-v3,push-v3,button-press-topdown-v3,pick-place-v3,peg-insert-side-v3 --episodes 50

RTI (RTI-DP) re-plans at every control step (Ta = 1) and starts each chunk from the previous one shifted by
the executed step, running only its last K' timesteps (K'-1, ..., 0 in the 100-step DDPM index space); the
first chunk of an episode is solved from noise (`RTISamplerConfig.cold_start`). Cold samplers solve every
chunk from noise. Setting RTI at Ta = 1 only beside cold samplers at the checkpoint's Ta would change two
things at once (how often the policy re-plans, and where a chunk starts from), and a chunk covers one step
for one and Ta steps for the other, so per-chunk costs do not compare. Hence the rows:

- `DDPM-100 (Ta=8)`, `DDIM-k (Ta=8)` for k in `ddim_steps`: the checkpoint as trained, executing its Ta
  actions per chunk (8 here; the label shows the checkpoint's). DDPM-100 is the reference of `vs DDPM-100`.
- `DDIM-k (Ta=1)` for k in `ddim_steps` and for every K' in `rti_steps`: re-planning every step from noise.
- `RTI K'=k (Ta=1)` for k in `rti_steps`, each right after `DDIM-k (Ta=1)`: the same denoiser calls per
  control step (apart from RTI's cold start at each episode start), from a warm start instead of noise. The
  difference between the two rows of a pair is what the warm start is worth.
- `RTI K'=k from t=t0 (Ta=1)` for each t0 in `rti_first_timesteps` (20 by default) above k-1: the same K'
  denoiser calls, spaced evenly from t0 down to 0 (K'=3 from t=20 runs 20, 10, 0: the sampler's default).
  RTI-DP's last timesteps refine at noise levels up to ~0.06 and cannot turn a plan the new observation
  contradicts (sop/policies/samplers.py); these rows show what starting higher is worth.
- `DDIM-k (Ta=h)` and `RTI K'=k (Ta=h)` for each extra h in `rti_execution_horizons` (none by default).

Every row evaluates the same checkpoint on the same seeded held-out episodes (`sim.evaluate`, `episodes` per
task, reset seeds from `seed_offset`), so rows differ only by their sampler. Columns, from the evaluation's
counters:

- success: the mean over tasks with its pooled Wilson 95 % interval (`sop.success_rate`); per task at the end.
- calls/step: denoiser calls per control step, all the row's denoiser calls (chunks x mean calls per chunk)
  over all its control steps (episodes x mean steps), pooled over tasks, i.e. weighted by steps. This is the
  compute a sampler spends to act, whatever its Ta: DDIM-10 at Ta = 8 is about 1.25, RTI K'=3 about 3.
- ms/step (mean, p99): milliseconds of the policy's `act` per control step over every step of the row; a
  cold sampler at Ta = 8 pays a whole chunk every 8th step, which the p99 shows and a 30 Hz loop feels.
- calls/chunk (median), ms/chunk (median): per predicted chunk, the figure a sampler's latency is usually
  quoted in; RTI's is its K' (its cold starts are in the mean, in the JSON).
- vs DDPM-100: the mean success minus DDPM-100's, in points.

A last table times lerobot's DiffusionPolicy built at a matched size (randomly initialised: latency only)
against ours in the same process. Results go to `benchmarks/results/rti.md` and the rows, with the
per-control-step figures under `control_step`, to `benchmarks/results/rti.json`.

The simulator is imported only when the benchmark runs, so `--help` and a bad flag answer without loading it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from benchmarks.machine import describe_machine
from benchmarks.reporting import markdown_table, median_seconds, write_report
from sop.config import parse_config
from sop.policies import (
    ColdStartConfig,
    DDIMSamplerConfig,
    DDPMSamplerConfig,
    RTISamplerConfig,
    SamplerConfig,
    load_policy,
)
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.success_rate import format_rate, format_success

# The BC checkpoints solve reach, push and button-press-topdown with nearly any sampler (DDIM-3 solved them
# all in benchmarks/results/rti.md), so those rows differ only by noise; pick-place and peg-insert-side need a
# grasp and a precise placement, where a sampler's errors can cost episodes.
DEFAULT_TASKS = ["reach-v3", "push-v3", "button-press-topdown-v3", "pick-place-v3", "peg-insert-side-v3"]
# RTI-DP's execution horizon: a new chunk at every control step. The DDIM rows it is paired with use it too.
REPLAN_EVERY_STEP: Final = 1


@dataclass(frozen=True)
class RTIBenchConfig:
    checkpoint: str = field(default="", metadata={"help": "diffusion policy checkpoint (sop train bc --out)"})
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    episodes: int = field(default=50, metadata={"help": "seeded held-out episodes per task and row"})
    seed_offset: int = 1_000_000
    max_steps: int = 200
    ddim_steps: list[int] = field(
        default_factory=lambda: [10, 3],
        metadata={"help": "DDIM steps: rows at the checkpoint's Ta and at Ta=1"},
    )
    rti_steps: list[int] = field(
        default_factory=lambda: [2, 3, 4, 5],
        metadata={"help": "K' values: an RTI row and a DDIM-K' row (same calls per step, from noise) each"},
    )
    rti_execution_horizons: list[int] = field(
        default_factory=list, metadata={"help": "extra Ta for RTI rows (each with its DDIM-K' row)"}
    )
    rti_first_timesteps: list[int] = field(
        default_factory=lambda: [20],
        metadata={
            "help": "first warm-start timesteps t0 beside RTI-DP's K'-1: a row 'RTI K'=k from t=t0' per K', "
            "its timesteps spaced evenly from t0 to 0 (the sampler's default is K'=3 from t=20)"
        },
    )
    ddpm: bool = True
    lerobot_peer: bool = True
    threads: int = 1
    out: str = "benchmarks/results/rti.md"
    json: str = "benchmarks/results/rti.json"

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint: name the checkpoint to benchmark (--checkpoint DIR)")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        for name in ("ddim_steps", "rti_steps", "rti_execution_horizons", "rti_first_timesteps"):
            values = getattr(self, name)
            if any(value < 1 for value in values):
                raise ValueError(f"{name} must all be >= 1, got {values}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class Row:
    label: str
    sampler: SamplerConfig
    execution_horizon: int  # Ta, resolved against the checkpoint's


def rti_sampler(k: int, execution_horizon: int, first_timestep: int | None = None) -> RTISamplerConfig:
    """RTI with K' = k, the default cold start: RTI-DP's timesteps k-1, ..., 0 of the DDPM index space, or
    k timesteps spaced evenly from `first_timestep` down to 0."""
    if first_timestep is None or k == 1:
        start = k - 1 if first_timestep is None else first_timestep
        timesteps = tuple(range(start, start - k, -1))
    else:
        timesteps = tuple(sorted({round(first_timestep * i / (k - 1)) for i in range(k)}, reverse=True))
    return RTISamplerConfig(timesteps=timesteps, execution_horizon=execution_horizon)


def benchmark_rows(config: RTIBenchConfig, checkpoint_horizon: int) -> list[Row]:
    """The rows in report order (the module docstring says which and why); a row asked for twice runs once."""
    rows: dict[str, Row] = {}

    def add(name: str, sampler: SamplerConfig) -> None:
        ta = sampler.resolved_execution_horizon(checkpoint_horizon)
        label = f"{name} (Ta={ta})"
        rows.setdefault(label, Row(label, sampler, ta))

    if config.ddpm:
        add("DDPM-100", DDPMSamplerConfig())
    for k in config.ddim_steps:
        add(f"DDIM-{k}", DDIMSamplerConfig(steps=k))
    for k in config.ddim_steps:
        add(f"DDIM-{k}", DDIMSamplerConfig(steps=k, execution_horizon=REPLAN_EVERY_STEP))
    for horizon in (REPLAN_EVERY_STEP, *config.rti_execution_horizons):
        for k in config.rti_steps:
            add(f"DDIM-{k}", DDIMSamplerConfig(steps=k, execution_horizon=horizon))
            add(f"RTI K'={k}", rti_sampler(k, horizon))
            for first in config.rti_first_timesteps:
                if first > k - 1:
                    add(f"RTI K'={k} from t={first}", rti_sampler(k, horizon, first))
    return list(rows.values())


def control_step_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """Denoiser calls per control step of an `evaluate_policy` report, per task and pooled over its tasks.

    A task's denoiser calls are its chunks times their mean calls, its control steps its episodes times their
    mean steps (both whole numbers, rounded back from the floats); the pooled figure divides the sums, so each
    task weighs by its steps."""
    tasks: dict[str, dict[str, float]] = {}
    for task, figures in report["tasks"].items():
        calls = round(figures["chunks"] * figures["denoiser_calls_per_chunk_mean"])
        steps = round(figures["episodes"] * figures["mean_steps"])
        tasks[task] = {
            "denoiser_calls": calls,
            "control_steps": steps,
            "denoiser_calls_per_step": calls / steps,
        }
    calls = sum(figures["denoiser_calls"] for figures in tasks.values())
    steps = sum(figures["control_steps"] for figures in tasks.values())
    return {
        "denoiser_calls": calls,
        "control_steps": steps,
        "denoiser_calls_per_step": calls / steps,
        "tasks": tasks,
    }


def reproducing_command(config: RTIBenchConfig) -> str:
    """The `sop bench rti` command line for `config`: the checkpoint, tasks, episodes and threads always, any
    other option only where it differs from its default."""
    always = ("checkpoint", "tasks", "episodes", "threads")
    words = ["sop bench rti"]
    for option in sorted(dataclasses.fields(config), key=lambda f: f.name not in always):
        value = getattr(config, option.name)
        if option.name not in always:
            default = (
                option.default_factory()
                if option.default_factory is not dataclasses.MISSING
                else option.default
            )
            if value == default:
                continue
        if isinstance(value, list):
            text = ",".join(str(item) for item in value) if value else "[]"
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        words.append(f"--{option.name} {text}")
    return " ".join(words)


def _cold_start_name(cold_start: ColdStartConfig) -> str:
    steps = getattr(cold_start, "steps", None)
    return (
        f"{cold_start.type.upper()}-{steps}"
        if steps is not None
        else f"{cold_start.type.upper()} (all steps)"
    )


def _time_chunks(predict: Any, repeats: int) -> float:
    """Median milliseconds of one chunk prediction."""
    return median_seconds(predict, repeats) * 1e3


def lerobot_peer_latency(policy: DiffusionPolicy, repeats: int = 5) -> dict[str, Any]:
    """ms per chunk of lerobot's DiffusionPolicy at our policy's size vs ours, same process, same thread count."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy

    ours = policy.config
    observation = {"state": np.zeros(ours.state_dim, np.float32), "instruction": "x", "task": policy.tasks[0]}
    results: dict[str, Any] = {"ours_parameters": sum(p.numel() for p in policy.network.parameters())}
    for label, scheduler, steps in (("DDPM-100", "DDPM", 100), ("DDIM-10", "DDIM", 10)):
        config = DiffusionConfig(
            input_features={
                "observation.state": PolicyFeature(FeatureType.STATE, (ours.state_dim,)),
                "observation.environment_state": PolicyFeature(FeatureType.ENV, (ours.state_dim,)),
            },
            output_features={"action": PolicyFeature(FeatureType.ACTION, (ours.action_dim,))},
            n_obs_steps=ours.observation_horizon,
            horizon=ours.prediction_horizon,
            n_action_steps=ours.execution_horizon,
            down_dims=tuple(ours.down_dims),
            kernel_size=ours.kernel_size,
            n_groups=ours.num_groups,
            diffusion_step_embed_dim=ours.timestep_embed_dim,
            noise_scheduler_type=scheduler,
            num_inference_steps=steps,
            pretrained_backbone_weights=None,
            device="cpu",
        )
        peer = LeRobotDiffusionPolicy(config).eval()
        results["lerobot_parameters"] = sum(p.numel() for p in peer.parameters())
        state = torch.zeros(1, ours.observation_horizon, ours.state_dim)
        batch = {"observation.state": state, "observation.environment_state": state}
        with torch.inference_mode():
            peer.predict_action_chunk(batch)
            results[f"lerobot_{label}_ms"] = _time_chunks(
                lambda peer=peer, batch=batch: peer.predict_action_chunk(batch), repeats
            )
        policy.set_sampler(DDPMSamplerConfig() if scheduler == "DDPM" else DDIMSamplerConfig(steps=steps))
        policy.predict_chunk(observation)
        results[f"ours_{label}_ms"] = _time_chunks(lambda: policy.predict_chunk(observation), repeats)
    return results


def _markdown(
    config: RTIBenchConfig, results: list[dict[str, Any]], peer: dict[str, Any] | None, elapsed: float
) -> str:
    short = {task: task.removesuffix("-v3") for task in config.tasks}
    reference = next((r for r in results if r["label"].startswith("DDPM")), None)
    cold_start = _cold_start_name(rti_sampler(1, REPLAN_EVERY_STEP).cold_start)
    lines = [
        "## RTI-DP warm-started sampling vs cold-start DDPM / DDIM",
        "",
        f"Command: `{reproducing_command(config)}`  ",
        f"Machine: {describe_machine().summary()}; {torch.get_num_threads()} torch thread(s); "
        f"shared with other processes while it ran.  ",
        f"Checkpoint: `{config.checkpoint}`; {config.episodes} seeded held-out episodes per task and row "
        f"(reset seeds {config.seed_offset}..{config.seed_offset + config.episodes - 1}, the same for every row); "
        f"episodes end at the first success or after {config.max_steps} steps. Wall time {elapsed / 60:.1f} min.",
        "",
    ]
    header = [
        "sampler (Ta: actions executed per chunk)",
        "success (mean over tasks)",
        "calls/step",
        "ms/step (mean)",
        "ms/step (p99)",
        "calls/chunk (median)",
        "ms/chunk (median)",
        *short.values(),
        "vs DDPM-100",
    ]
    table = []
    for row in results:
        delta = (
            "" if reference is None else f"{100 * (row['success_rate'] - reference['success_rate']):+.1f} pts"
        )
        table.append(
            [
                row["label"],
                format_rate(row["success_rate"], row["ci95"], digits=3),
                f"{control_step_figures(row)['denoiser_calls_per_step']:.2f}",
                f"{row['ms_per_step_mean']:.2f}",
                f"{row['ms_per_step_p99']:.1f}",
                f"{row['denoiser_calls_per_chunk_median']:.0f}",
                f"{row['ms_per_chunk_median']:.1f}",
                *(
                    format_rate(row["tasks"][task]["success_rate"], row["tasks"][task]["ci95"])
                    for task in config.tasks
                ),
                delta,
            ]
        )
    lines += markdown_table(header, table, align="ll" + "r" * 5 + "l" * len(short) + "r")
    lines += [
        "",
        "Success: rate [Wilson 95 % interval]; the mean's is pooled over every task's episodes. calls/step: all "
        "denoiser calls of the row over all its control steps (tasks weighted by their steps). ms/step: the "
        "policy's `act` per control step, over every step. DDIM-k (Ta=1) re-plans every step from noise with "
        "the calls per step of RTI K'=k (Ta=1), which starts each chunk from the previous one shifted by a step "
        f"and runs timesteps k-1, ..., 0; RTI's first chunk of every episode is a {cold_start} solve from noise, "
        "counted in its calls/step and ms/step (the median calls per chunk leave it out). ms/chunk is the median "
        "time of an `act` call that predicted a chunk.",
    ]
    if peer is not None:
        lines += [
            "",
            f"lerobot DiffusionPolicy at a matched size ({peer['lerobot_parameters'] / 1e6:.2f} M parameters vs ours "
            f"{peer['ours_parameters'] / 1e6:.2f} M; random weights, latency only), median ms per chunk, same process:",
            "",
        ]
        peer_rows = []
        for label in ("DDPM-100", "DDIM-10"):
            theirs, ours = peer[f"lerobot_{label}_ms"], peer[f"ours_{label}_ms"]
            peer_rows.append([label, f"{theirs:.1f}", f"{ours:.1f}", f"{theirs / ours:.2f}x"])
        lines += markdown_table(
            ["schedule", "lerobot DiffusionPolicy", "SOP DiffusionPolicy", "ratio"], peer_rows
        )
    return "\n".join(lines) + "\n"


def run_benchmark(config: RTIBenchConfig) -> tuple[list[dict[str, Any]], dict[str, Any] | None, float]:
    from sim.evaluate import evaluate_policy
    from sim.metaworld_env import EnvConfig

    torch.set_num_threads(config.threads)
    policy = load_policy(config.checkpoint)
    if not isinstance(policy, DiffusionPolicy):
        raise ValueError(
            f"checkpoint: {config.checkpoint} holds a {policy.policy_type} policy, not SOP's diffusion policy"
        )
    started = time.perf_counter()
    results = []
    for row in benchmark_rows(config, policy.config.execution_horizon):
        row_started = time.perf_counter()
        policy.set_sampler(row.sampler)
        report = evaluate_policy(
            policy,
            list(config.tasks),
            config.episodes,
            config.seed_offset,
            EnvConfig(max_episode_steps=config.max_steps),
        )
        report["label"] = row.label
        report["execution_horizon"] = row.execution_horizon
        report["control_step"] = control_step_figures(report)
        report["wall_s"] = time.perf_counter() - row_started
        results.append(report)
        print(
            f"{row.label:20s} success {format_success(report['successes'], report['episodes'], 3)}"
            f"  {report['control_step']['denoiser_calls_per_step']:.2f} calls/step"
            f"  {report['ms_per_step_mean']:.2f} ms/step (p99 {report['ms_per_step_p99']:.1f})"
            f"  {report['ms_per_chunk_median']:.1f} ms/chunk  ({report['wall_s']:.0f} s)",
            flush=True,
        )
    peer = lerobot_peer_latency(policy) if config.lerobot_peer else None
    return results, peer, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(RTIBenchConfig, args)
    results, peer, elapsed = run_benchmark(config)
    markdown = _markdown(config, results, peer, elapsed)
    write_report(config.out, markdown)
    if config.json:
        Path(config.json).write_text(json.dumps({"rows": results, "lerobot_peer": peer}, indent=1))
    print(markdown)
    return 0
