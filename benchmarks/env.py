"""`sop bench env`: how fast a Meta-World task steps, without and with a 64x64 camera image.

Measures, per task, control steps per second with the state alone and with an off-screen image each
step (EGL on the CPU), plus the cost of a reset, and, for one task, a 64x64 frame with MuJoCo's default
render quality beside our fast setting (no shadows, no multisampling). Repeats are interleaved (A, B, C,
A, B, C, ...) so background load hits all variants alike; the table reports medians over repeats.

    sop bench env                       # writes benchmarks/results/env.md
    sop bench env --tasks reach-v3 --repeats 5 --output ''
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import mujoco
import numpy as np
from rich.console import Console

from benchmarks.machine import describe_machine, load_average
from benchmarks.reporting import command_line, interleaved_medians, markdown_table, write_report
from sim.metaworld_env import EnvConfig, MetaWorldEnv
from sim.tasks import MT10_TASKS, parse_task_list
from sop.config import parse_config


@dataclass(frozen=True)
class EnvBenchConfig:
    """`sop bench env`: which tasks, how many steps per repeat, where the table goes."""

    tasks: list[str] = field(default_factory=lambda: list(MT10_TASKS))
    state_steps: int = field(default=1000, metadata={"help": "steps per repeat without an image"})
    image_steps: int = field(default=200, metadata={"help": "steps per repeat with an image"})
    default_quality_steps: int = field(
        default=30, metadata={"help": "steps per repeat at default render quality"}
    )
    resets: int = field(default=10, metadata={"help": "resets per repeat"})
    repeats: int = 3
    image_size: int = 64
    camera: str = "corner2"
    quality_task: str = field(default="reach-v3", metadata={"help": "task for the render-quality comparison"})
    seed: int = 0
    output: str = field(
        default="benchmarks/results/env.md", metadata={"help": "markdown file; '' prints only"}
    )

    def __post_init__(self) -> None:
        parse_task_list(self.tasks)
        parse_task_list([self.quality_task])
        for name in ("state_steps", "image_steps", "default_quality_steps", "resets", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        EnvConfig(image=True, camera=self.camera, image_height=self.image_size, image_width=self.image_size)


@dataclass(frozen=True)
class TaskTiming:
    task: str
    state_steps_per_s: float
    image_steps_per_s: float
    reset_ms: float

    @property
    def image_ms(self) -> float:
        """What the image adds to one step."""
        return 1000.0 / self.image_steps_per_s - 1000.0 / self.state_steps_per_s


def _steps_per_second(env: MetaWorldEnv, steps: int, rng: np.random.Generator) -> float:
    env.reset(seed=int(rng.integers(2**31)))
    actions = rng.uniform(-1.0, 1.0, size=(steps, 4)).astype(np.float32)
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    return steps / (time.perf_counter() - started)


def _reset_ms(env: MetaWorldEnv, resets: int, rng: np.random.Generator) -> float:
    started = time.perf_counter()
    for _ in range(resets):
        env.reset(seed=int(rng.integers(2**31)))
    return 1000.0 * (time.perf_counter() - started) / resets


def _image_config(config: EnvBenchConfig, fast: bool, steps: int) -> EnvConfig:
    return EnvConfig(
        max_episode_steps=steps + 1,
        image=True,
        camera=config.camera,
        image_height=config.image_size,
        image_width=config.image_size,
        fast_render=fast,
    )


def time_task(task: str, config: EnvBenchConfig) -> TaskTiming:
    rng = np.random.default_rng(config.seed)
    state_env = MetaWorldEnv(task, EnvConfig(max_episode_steps=config.state_steps + 1))
    image_env = MetaWorldEnv(task, _image_config(config, fast=True, steps=config.image_steps))
    try:
        image_env.reset(seed=0)  # the first render creates the GL context; keep it out of the timing
        medians = interleaved_medians(
            {
                "state": lambda: _steps_per_second(state_env, config.state_steps, rng),
                "image": lambda: _steps_per_second(image_env, config.image_steps, rng),
                "reset": lambda: _reset_ms(state_env, config.resets, rng),
            },
            config.repeats,
        )
    finally:
        state_env.close()
        image_env.close()
    return TaskTiming(task, medians["state"], medians["image"], medians["reset"])


def time_render_quality(config: EnvBenchConfig) -> tuple[float, float]:
    """Median ms per step of `quality_task` with an image at default vs fast render quality."""
    rng = np.random.default_rng(config.seed)
    steps = config.default_quality_steps
    default_env = MetaWorldEnv(config.quality_task, _image_config(config, fast=False, steps=steps))
    fast_env = MetaWorldEnv(config.quality_task, _image_config(config, fast=True, steps=steps))
    try:
        default_env.reset(seed=0)
        fast_env.reset(seed=0)
        medians = interleaved_medians(
            {
                "default": lambda: _steps_per_second(default_env, steps, rng),
                "fast": lambda: _steps_per_second(fast_env, steps, rng),
            },
            config.repeats,
        )
    finally:
        default_env.close()
        fast_env.close()
    return 1000.0 / medians["default"], 1000.0 / medians["fast"]


def machine_description() -> str:
    return (
        f"{describe_machine().summary()}; MuJoCo {mujoco.__version__}, "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}; load average at the end of the run {load_average()}"
    )


def markdown_report(
    timings: list[TaskTiming], quality: tuple[float, float], config: EnvBenchConfig, command: str
) -> str:
    size = f"{config.image_size}x{config.image_size}"
    lines = [
        "## Meta-World environment speed",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_description()}. Other processes shared the cores during the run, so absolute",
        "figures are noisy; variants were interleaved and each figure is the median of "
        f"{config.repeats} repeats ({config.state_steps} state-only steps, {config.image_steps} steps with an image, "
        f"{config.resets} resets per repeat; uniform random actions).",
        "",
    ]
    lines += markdown_table(
        [
            "task",
            "steps/s, state only",
            f"steps/s, {size} image ({config.camera})",
            "image ms/step",
            "ratio",
            "reset ms",
        ],
        [
            [
                t.task,
                f"{t.state_steps_per_s:.0f}",
                f"{t.image_steps_per_s:.0f}",
                f"{t.image_ms:.1f}",
                f"{t.state_steps_per_s / t.image_steps_per_s:.1f}x",
                f"{t.reset_ms:.1f}",
            ]
            for t in timings
        ],
        align="lrrrrr",
    )
    default_ms, fast_ms = quality
    lines += [
        "",
        f"Render quality, {config.quality_task}, {size}, ms per step with an image (median of {config.repeats}, "
        f"{config.default_quality_steps} steps each):",
        "",
    ]
    lines += markdown_table(
        [
            "MuJoCo default (shadowsize 4096, offsamples 4)",
            "fast (shadowsize 0, offsamples 0; our default)",
            "ratio",
        ],
        [[f"{default_ms:.1f}", f"{fast_ms:.1f}", f"{default_ms / fast_ms:.1f}x"]],
        align="rrr",
    )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(EnvBenchConfig, args)
    console = Console()
    timings = []
    for task in parse_task_list(config.tasks):
        timing = time_task(task, config)
        console.print(
            f"{task}: {timing.state_steps_per_s:.0f} steps/s state only, "
            f"{timing.image_steps_per_s:.0f} steps/s with image, reset {timing.reset_ms:.1f} ms"
        )
        timings.append(timing)
    quality = time_render_quality(config)
    console.print(
        f"render quality ({config.quality_task}): default {quality[0]:.1f} ms, fast {quality[1]:.1f} ms"
    )
    report = markdown_report(timings, quality, config, command_line("sop bench env", args))
    if config.output:
        path = write_report(config.output, report)
        console.print(f"wrote {path}")
    else:
        console.print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
