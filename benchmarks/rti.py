"""`sop bench rti`: RTI warm-started sampling vs cold-start DDPM / DDIM on one checkpoint, in Meta-World.

    sop bench rti --checkpoint runs/bc --tasks reach-v3,push-v3,drawer-close-v3,button-press-topdown-v3 \
        --episodes 50

Every row evaluates the same checkpoint on the same seeded held-out episodes (`sim.evaluate`, seeds from
1_000_000) and reports per-task success, denoiser calls per chunk, the median milliseconds of a step that
predicts a chunk, and the mean milliseconds per control step. Rows: DDPM-100, DDIM-10, DDIM-3 (cold
starts, executing the checkpoint's Ta actions per chunk) and RTI with K' = 2..5 (timesteps K'-1, ..., 0 in
the 100-step DDPM index space), re-planning every control step as RTI-DP does (Ta = 1), plus RTI rows at
the Ta values listed in `rti_execution_horizons`. A last table times lerobot's
DiffusionPolicy built at a matched size (randomly initialised: latency only) against ours in the same
process. Results go to `benchmarks/results/rti.md` (and JSON next to it).

The simulator is imported only when the benchmark runs, so `--help` and a bad flag answer without loading it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import describe_machine
from benchmarks.reporting import markdown_table, median_seconds, write_report
from sop.config import parse_config
from sop.policies import DDIMSamplerConfig, DDPMSamplerConfig, RTISamplerConfig, SamplerConfig, load_policy
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.success_rate import format_rate, format_success

DEFAULT_TASKS = ["reach-v3", "push-v3", "drawer-close-v3", "button-press-topdown-v3"]


@dataclass(frozen=True)
class RTIBenchConfig:
    checkpoint: str = field(default="", metadata={"help": "diffusion policy checkpoint (sop train bc --out)"})
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    episodes: int = field(default=50, metadata={"help": "seeded held-out episodes per task and row"})
    seed_offset: int = 1_000_000
    max_steps: int = 200
    ddim_steps: list[int] = field(default_factory=lambda: [10, 3])
    rti_steps: list[int] = field(default_factory=lambda: [2, 3, 4, 5], metadata={"help": "K' values"})
    rti_execution_horizons: list[int] = field(
        default_factory=list, metadata={"help": "extra Ta for RTI rows"}
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
        if any(k < 1 for k in self.rti_steps):
            raise ValueError(f"rti_steps must be >= 1, got {self.rti_steps}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class Row:
    label: str
    sampler: SamplerConfig


def benchmark_rows(config: RTIBenchConfig, checkpoint_horizon: int) -> list[Row]:
    rows = []
    if config.ddpm:
        rows.append(Row(f"DDPM-100 Ta={checkpoint_horizon}", DDPMSamplerConfig()))
    rows += [Row(f"DDIM-{k} Ta={checkpoint_horizon}", DDIMSamplerConfig(steps=k)) for k in config.ddim_steps]
    # RTI's own Ta (1: RTI-DP re-plans every step) first, then the listed ones.
    horizons = [RTISamplerConfig().execution_horizon, *config.rti_execution_horizons]
    for horizon in horizons:
        for k in config.rti_steps:
            timesteps = tuple(range(k - 1, -1, -1))
            sampler = RTISamplerConfig(timesteps=timesteps, execution_horizon=horizon)
            ta = sampler.resolved_execution_horizon(checkpoint_horizon)
            rows.append(Row(f"RTI K'={k} {list(timesteps)} Ta={ta}", sampler))
    return rows


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
    command = (
        f"sop bench rti --checkpoint {config.checkpoint} --tasks {','.join(config.tasks)} --episodes {config.episodes}"
        f" --threads {config.threads}"
    )
    short = {task: task.removesuffix("-v3") for task in config.tasks}
    reference = next((r for r in results if r["label"].startswith("DDPM")), None)
    lines = [
        "## RTI-DP warm-started sampling vs cold-start DDPM / DDIM",
        "",
        f"Command: `{command}`  ",
        f"Machine: {describe_machine().summary()}; {torch.get_num_threads()} torch thread(s); "
        f"shared with other processes while it ran.  ",
        f"Checkpoint: `{config.checkpoint}`; {config.episodes} seeded held-out episodes per task and row "
        f"(reset seeds {config.seed_offset}..{config.seed_offset + config.episodes - 1}, the same for every row); "
        f"episodes end at the first success or after {config.max_steps} steps. Wall time {elapsed / 60:.1f} min.",
        "",
    ]
    header = [
        "sampler (Ta: actions executed per chunk)",
        "calls/chunk (median)",
        "ms/chunk (median)",
        "ms/step (mean)",
        *short.values(),
        "mean success",
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
                f"{row['denoiser_calls_per_chunk_median']:.0f}",
                f"{row['ms_per_chunk_median']:.1f}",
                f"{row['ms_per_step_mean']:.2f}",
                *(
                    format_rate(row["tasks"][task]["success_rate"], row["tasks"][task]["ci95"])
                    for task in config.tasks
                ),
                format_rate(row["success_rate"], row["ci95"], digits=3),
                delta,
            ]
        )
    lines += markdown_table(header, table)
    lines += [
        "",
        "RTI rows: the first chunk of every episode is a full 100-step DDPM solve (the mean calls per chunk in the "
        "JSON include it); every later chunk starts from the previous one shifted by the executed steps and runs "
        "only the listed timesteps. ms/chunk is the median time of an `act` call that predicted a chunk. "
        "Success: rate [Wilson 95 % interval]; the mean's is pooled over every task's episodes.",
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
        report["wall_s"] = time.perf_counter() - row_started
        results.append(report)
        print(
            f"{row.label:28s} success {format_success(report['successes'], report['episodes'], 3)}  calls/chunk {report['denoiser_calls_per_chunk_median']:.0f}"
            f"  {report['ms_per_chunk_median']:.1f} ms/chunk  {report['ms_per_step_mean']:.2f} ms/step  ({report['wall_s']:.0f} s)",
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
