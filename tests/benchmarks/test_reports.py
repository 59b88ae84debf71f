"""The report sections of the benchmarks too slow to run here (`sop bench robot`, `learner`; `rti` in
test_rti.py): given figures, each writes its command, the detected machine and one row per figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.learner import Figures, LearnerBenchConfig, write_markdown
from benchmarks.machine import describe_machine
from benchmarks.robot import PhaseResult, RobotBenchConfig, format_report, write_json
from sop.success_rate import wilson_interval


def _table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ")
    ]


def test_robot_report_has_a_row_per_phase() -> None:
    phase = PhaseResult(
        policy="small", inference="async", phase="upload+swap fifo", ticks=900, period_error_p50_ms=0.1, period_error_p99_ms=0.9,
        period_error_max_ms=2.0, latency_p50_ms=1.0, latency_p99_ms=5.0, inference_p50_ms=3.0,
        inference_p99_ms=6.0, full_solve_p50_ms=40.0, deadline_misses=0, late_steps=4, uploaded_mb=12.0, swaps=3, fifo=False,
    )  # fmt: skip
    text = format_report([phase], RobotBenchConfig(duration_s=5), ["--duration_s", "5"], "0.5, 0.4, 0.3")
    assert "Command: `sop bench robot --duration_s 5`" in text
    assert describe_machine().summary() in text and "load average before the run 0.5, 0.4, 0.3" in text
    header, row = _table_rows(text)
    assert len(header) == len(row) == 15
    assert row[:4] == ["small", "async", "upload+swap fifo (SCHED_FIFO not permitted)", "900"]
    assert row[header.index("late ticks")] == "4" and row[-1] == "3"


def test_robot_bench_writes_every_phase_as_json(tmp_path: Path) -> None:
    phase = PhaseResult(
        policy="default", inference="sync", phase="idle", ticks=600, period_error_p50_ms=0.2, period_error_p99_ms=40.0,
        period_error_max_ms=90.0, latency_p50_ms=1.0, latency_p99_ms=60.0, inference_p50_ms=30.0,
        inference_p99_ms=60.0, full_solve_p50_ms=400.0, deadline_misses=75, late_steps=0, uploaded_mb=0.0, swaps=0,
        fifo=False,
    )  # fmt: skip
    out = tmp_path / "out" / "robot.json"
    write_json(str(out), [phase], RobotBenchConfig(duration_s=20), ["--json", str(out)], "1.0, 1.0, 1.0")
    document = json.loads(out.read_text())
    assert document["command"] == f"sop bench robot --json {out}" and document["rate_hz"] == 30.0
    (written,) = document["phases"]
    assert written["inference"] == "sync" and written["deadline_misses"] == 75
    assert written["period_error_p99_ms"] == 40.0 and written["latency_p99_ms"] == 60.0


def test_robot_bench_refuses_an_unknown_inference_mode() -> None:
    with pytest.raises(ValueError, match="inference"):
        RobotBenchConfig(inference=["threads"])


def test_learner_report_lists_every_figure(tmp_path: Path) -> None:
    figures = Figures()
    figures.add("ingest, 1 robot (3 episodes, 1.00 MB each)", "5.0 ep/s, 5 MB/s", "50.0 % of raw socket")
    figures.add("  same, kept in memory", "9.0 ep/s, 9 MB/s")
    out = tmp_path / "results" / "learner.md"
    write_markdown(out, figures, ["--repeats", "1"], LearnerBenchConfig(repeats=1))
    text = out.read_text()
    assert "Command: `sop bench learner --repeats 1`" in text and describe_machine().gpu in text
    assert _table_rows(text) == [
        ["what", "result", "beside"],
        ["ingest, 1 robot (3 episodes, 1.00 MB each)", "5.0 ep/s, 5 MB/s", "50.0 % of raw socket"],
        ["same, kept in memory", "9.0 ep/s, 9 MB/s", ""],
    ]


def test_fleet_scaling_table_gives_each_mean_success_its_pooled_interval() -> None:
    from benchmarks.fleet import markdown_tables

    size = {
        "robots": 2, "steps_to_target": 1000.0, "steps_vs_one_robot": None, "steps_vs_one_robot_is_upper_bound": False,
        "final_success": 0.85, "final_per_robot_steps": 3000.0, "episodes": 40, "intervention_frames": 7,
        "learner_steps": 300, "learner_steps_per_robot_step": 0.1,
    }  # fmt: skip
    results = {"tasks": ["reach-v3", "push-v3"], "eval_episodes_per_task": 20, "fleet_sizes": [size]}
    lo, hi = wilson_interval(34, 40)  # 0.85 of the 2 x 20 held-out episodes
    assert f"| 0.85 [{lo:.2f}, {hi:.2f}] (3000) |" in markdown_tables(results)
    size["final_success"] = 0.8125  # no count out of 40: the bare rate
    assert "| 0.81 (3000) |" in markdown_tables(results)
