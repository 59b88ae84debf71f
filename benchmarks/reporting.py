"""Timing and report writing shared by the `sop bench ...` benchmarks.

Timing: the machines these run on are small and shared, so a figure is the median of repeats, and variants
that are compared are interleaved (A, B, A, B, ...) so background load hits both alike. Reports: each
benchmark writes one markdown section holding the command that reproduces it, the machine
(`benchmarks.machine`) and a table; `scripts/collect_benchmarks.py` concatenates the sections.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: Path) -> str:
    """`path` relative to the repository root, as BENCHMARKS.md links it."""
    return os.path.relpath(path.resolve(), REPO_ROOT)


def time_once(run: Callable[..., object], *args: object) -> float:
    """Seconds one call of `run(*args)` takes."""
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def median_seconds(
    run: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None
) -> float:
    """Median seconds of `repeats` calls of `run`; `setup` runs before each call, outside the clock."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        times.append(time_once(run))
    return statistics.median(times)


def interleaved_medians(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each run returns one figure; they run in turn `repeats` times and each gets the median of its figures."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def percentile(values: np.ndarray | Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, NaN when there are none."""
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, q)) if array.size else float("nan")


def command_line(command: str, argv: Sequence[str]) -> str:
    """The command as the user would type it again: `sop bench data --episodes 2`."""
    return " ".join([command, *argv]).strip()


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None
) -> list[str]:
    """The lines of a markdown table; `align` has one letter per column, `l` or `r` (default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align: {align!r} has {len(align)} letters for {len(header)} columns")
    lines = [_row(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    return lines + [_row(row) for row in rows]


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def write_report(path: str | Path, text: str) -> Path:
    """Write a report section, making its folder; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
