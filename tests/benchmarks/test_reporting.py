"""The timing and markdown helpers the benchmarks share."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.reporting import (
    command_line,
    interleaved_medians,
    markdown_table,
    median_seconds,
    percentile,
    time_once,
    write_report,
)


def test_interleaved_medians_run_variants_in_turn() -> None:
    order: list[str] = []
    figures = {"a": iter([3.0, 1.0, 2.0]), "b": iter([10.0, 30.0, 20.0])}

    def run(name: str) -> float:
        order.append(name)
        return next(figures[name])

    medians = interleaved_medians({"a": lambda: run("a"), "b": lambda: run("b")}, repeats=3)
    assert medians == {"a": 2.0, "b": 20.0}
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_median_seconds_keeps_setup_off_the_clock() -> None:
    calls: list[str] = []
    seconds = median_seconds(lambda: calls.append("run"), 3, setup=lambda: calls.append("setup"))
    assert calls == ["setup", "run"] * 3 and 0 <= seconds < 1
    assert 0 <= time_once(sorted, [3, 1, 2]) < 1


def test_percentile_of_nothing_is_nan() -> None:
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert math.isnan(percentile([], 99))


def test_markdown_table_and_command_line() -> None:
    assert markdown_table(["task", "steps/s"], [["reach-v3", 120]], align="lr") == [
        "| task | steps/s |",
        "|---|---:|",
        "| reach-v3 | 120 |",
    ]
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [], align="l")
    assert command_line("sop bench data", []) == "sop bench data"
    assert command_line("sop bench data", ["--repeats", "1"]) == "sop bench data --repeats 1"


def test_write_report_makes_the_folder(tmp_path: Path) -> None:
    path = write_report(tmp_path / "results" / "x.md", "## x\n")
    assert path.read_text() == "## x\n"
