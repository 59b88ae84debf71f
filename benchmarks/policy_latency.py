"""`sop bench policy-latency`: how long the fleet's policies take per chunk and per control step on one device.

The figure an edge computer is chosen by. For each policy size and sampler it builds a policy with random
weights (timing only), warms it up as the robot daemon does (`Policy.warm_up`: the U-Net traced, the graph
executor's first passes run), then times `repeats` chunks on a fixed observation:

    sizes     default   the fleet's state policy (sentence-conditioned U-Net, down_dims 64-128-256)
              dp-image  a Diffusion-Policy-sized image policy: one 96x96 camera, a 4-stage CNN encoder
                        (64-128-256-512), down_dims 256-512-1024, To 2, Tp 16
    samplers  DDPM-100 (Ta 8), DDIM-10 (Ta 8), RTI K'=3 from t=20 (Ta 1: a warm-started chunk every step)

Per chunk: p50 / p99 wall time of `predict_chunk` (on CUDA the result is copied to the host, which
synchronizes). Per control step: the chunk time divided by Ta, the compute a robot spends per tick.
`--device cuda` runs on the GPU (the default is cuda when present, else cpu); `--half true` runs the
denoiser under float16 autocast on CUDA. One script, one run: the device machine runs it in one go and
writes the markdown table (and `--json FILE`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe_machine
from benchmarks.reporting import command_line, markdown_table, percentile, write_report
from sop.config import parse_config

log = logging.getLogger(__name__)

SIZES = ("default", "dp-image")
SAMPLERS = ("ddpm-100", "ddim-10", "rti-3")


@dataclass(frozen=True)
class PolicyLatencyConfig:
    """What `sop bench policy-latency` measures; the defaults are the reported run."""

    device: str = "auto"  # auto: cuda when available, else cpu
    half: bool = False  # float16 autocast for the denoiser (CUDA only)
    sizes: list[str] = field(default_factory=lambda: list(SIZES))
    samplers: list[str] = field(default_factory=lambda: list(SAMPLERS))
    repeats: int = 50
    threads: int = 1  # torch intra-op threads on the CPU (a robot's policy gets one)
    output: str = "benchmarks/results/policy_latency.md"
    json: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name, chosen, known in (("sizes", self.sizes, SIZES), ("samplers", self.samplers, SAMPLERS)):
            unknown = [c for c in chosen if c not in known]
            if unknown or not chosen:
                raise ValueError(f"{name}: {unknown or 'empty'}: pick from {list(known)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device {self.device!r}: auto, cpu or cuda[:N]")
        if self.repeats < 2 or self.threads < 1:
            raise ValueError("repeats must be >= 2 and threads >= 1")


@dataclass
class LatencyResult:
    size: str
    sampler: str
    device: str
    half: bool
    execution_horizon: int
    denoiser_calls: int
    chunk_p50_ms: float
    chunk_p99_ms: float
    per_step_p50_ms: float
    warm_up_s: float


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {device}: torch sees no CUDA device on this machine")
    return device


def build_policy(size: str, sampler: str, device: str, seed: int) -> Any:
    """A policy with random weights and made-up statistics: timing only."""
    import torch

    from sop.episode import ACTION, STATE
    from sop.normalization import NormalizationStats
    from sop.policies.configuration_diffusion import (
        DDIMSamplerConfig,
        DDPMSamplerConfig,
        DiffusionPolicyConfig,
        RTISamplerConfig,
    )
    from sop.policies.modeling_diffusion import DiffusionPolicy

    if size == "dp-image":
        config = DiffusionPolicyConfig(
            cameras=("front",),
            image_channels=(64, 128, 256, 512),
            down_dims=(256, 512, 1024),
            observation_horizon=2,
            prediction_horizon=16,
        )
    else:
        config = DiffusionPolicyConfig()
    samplers = {
        "ddpm-100": DDPMSamplerConfig(execution_horizon=8),
        "ddim-10": DDIMSamplerConfig(steps=10, execution_horizon=8),
        "rti-3": RTISamplerConfig(execution_horizon=1),
    }
    rng = np.random.default_rng(seed)
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(256, config.state_dim)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(256, config.action_dim)).astype(np.float32)],
        }
    )
    torch.manual_seed(seed)
    return DiffusionPolicy(config, stats, samplers[sampler], device=device)


def observation(policy: Any, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=policy.config.state_dim).astype(np.float32),
        "task": "reach-v3",
        "instruction": "reach the goal",
        "images": {c: rng.integers(0, 255, size=(96, 96, 3), dtype=np.uint8) for c in policy.config.cameras},
    }


@contextlib.contextmanager
def autocast(device: str, half: bool) -> Iterator[None]:
    import torch

    if half and device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield


def measure(size: str, sampler: str, bench: PolicyLatencyConfig, device: str) -> LatencyResult:
    policy = build_policy(size, sampler, device, bench.seed)
    seen = observation(policy, bench.seed)
    started = time.perf_counter()
    with autocast(device, bench.half):
        policy.warm_up()
    warm_up_s = time.perf_counter() - started
    history = [seen] * policy.config.observation_horizon
    times: list[float] = []
    calls = 0
    with autocast(device, bench.half):
        previous = policy.plan_chunk(history, 0)  # the cold first chunk, not timed
        for _ in range(bench.repeats):
            t0 = time.perf_counter()
            chunk = policy.plan_chunk(history, policy.execution_horizon)
            times.append(time.perf_counter() - t0)
            calls = chunk.denoiser_calls
            previous = chunk
    del previous
    ms = np.asarray(times) * 1e3
    horizon = int(policy.execution_horizon)
    return LatencyResult(
        size=size,
        sampler=sampler,
        device=device,
        half=bench.half and device.startswith("cuda"),
        execution_horizon=horizon,
        denoiser_calls=calls,
        chunk_p50_ms=percentile(ms, 50),
        chunk_p99_ms=percentile(ms, 99),
        per_step_p50_ms=percentile(ms, 50) / horizon,
        warm_up_s=warm_up_s,
    )


def format_report(results: list[LatencyResult], bench: PolicyLatencyConfig, argv: list[str]) -> str:
    lines = [
        "## Policy latency per chunk and per control step",
        "",
        f"Command: `{command_line('sop bench policy-latency', argv)}` ({bench.repeats} chunks each, after "
        "the daemon's warm-up).",
        f"Machine: {describe_machine().summary()}; torch {bench.threads} CPU thread(s). Random weights "
        "(timing only).",
        "",
    ]
    header = ["policy", "sampler", "device", "Ta", "denoiser calls", "chunk p50 (ms)", "chunk p99 (ms)",
              "per step p50 (ms)", "warm-up (s)"]  # fmt: skip
    rows = [
        [
            r.size,
            r.sampler,
            r.device + (" fp16" if r.half else ""),
            r.execution_horizon,
            r.denoiser_calls,
            f"{r.chunk_p50_ms:.2f}",
            f"{r.chunk_p99_ms:.2f}",
            f"{r.per_step_p50_ms:.2f}",
            f"{r.warm_up_s:.1f}",
        ]
        for r in results
    ]
    lines += markdown_table(header, rows)
    lines += [
        "",
        "Per step = chunk / Ta: what a control tick costs on average (RTI plans a warm-started chunk every "
        "step; DDPM and DDIM plan one every Ta = 8 steps). With asynchronous inference (the daemon's default) "
        "a chunk must only be ready within Ta - `policy.inference_lead_steps` ticks, not inside one tick.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    import torch

    args = list(sys.argv[1:] if argv is None else argv)
    bench = parse_config(PolicyLatencyConfig, args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(bench.threads)
    device = resolve_device(bench.device)
    results = []
    for size in bench.sizes:
        for sampler in bench.samplers:
            print(f"{size} / {sampler} on {device} ...", flush=True)
            result = measure(size, sampler, bench, device)
            print(f"  chunk p50 {result.chunk_p50_ms:.2f} ms p99 {result.chunk_p99_ms:.2f} ms", flush=True)
            results.append(result)
    report = format_report(results, bench, args)
    write_report(bench.output, report)
    if bench.json is not None:
        target = Path(bench.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "command": command_line("sop bench policy-latency", args),
            "machine": describe_machine().summary(),
            "results": [asdict(r) for r in results],
        }
        target.write_text(json.dumps(document, indent=2) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
