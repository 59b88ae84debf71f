"""The report sections of the benchmarks too slow to run here (`sop bench robot`, `learner`, `rti`): given
figures, each writes its command, the detected machine and one row per figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.learner import Figures, LearnerBenchConfig, write_markdown
from benchmarks.machine import describe_machine
from benchmarks.robot import PhaseResult, RobotBenchConfig, format_report
from benchmarks.rti import RTIBenchConfig, _markdown, benchmark_rows
from sop.config import ConfigError, parse_config
from sop.success_rate import wilson_interval


def _table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ")
    ]


def test_robot_report_has_a_row_per_phase() -> None:
    phase = PhaseResult(
        policy="small", phase="upload+swap fifo", ticks=900, period_error_p50_ms=0.1, period_error_p99_ms=0.9,
        period_error_max_ms=2.0, latency_p50_ms=1.0, latency_p99_ms=5.0, inference_p50_ms=3.0,
        inference_p99_ms=6.0, full_solve_p50_ms=40.0, deadline_misses=0, uploaded_mb=12.0, swaps=3, fifo=False,
    )  # fmt: skip
    text = format_report([phase], RobotBenchConfig(duration_s=5), ["--duration_s", "5"], "0.5, 0.4, 0.3")
    assert "Command: `sop bench robot --duration_s 5`" in text
    assert describe_machine().summary() in text and "load average before the run 0.5, 0.4, 0.3" in text
    header, row = _table_rows(text)
    assert len(header) == len(row) == 13
    assert row[:3] == ["small", "upload+swap fifo (SCHED_FIFO not permitted)", "900"]
    assert row[-1] == "3"


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


def test_rti_rows_and_report() -> None:
    config = RTIBenchConfig(
        checkpoint="runs/bc", tasks=["reach-v3"], episodes=2, ddim_steps=[3], rti_steps=[3]
    )
    labels = [row.label for row in benchmark_rows(config, checkpoint_horizon=8)]
    assert labels == ["DDPM-100 Ta=8", "DDIM-3 Ta=8", "RTI K'=3 [2, 1, 0] Ta=1"]
    result = {
        "label": "DDPM-100 Ta=8", "denoiser_calls_per_chunk_median": 100, "ms_per_chunk_median": 50.0,
        "ms_per_step_mean": 7.0, "tasks": {"reach-v3": {"success_rate": 0.5, "ci95": list(wilson_interval(1, 2))}},
        "success_rate": 0.5, "ci95": list(wilson_interval(1, 2)),
    }  # fmt: skip
    peer = {"lerobot_parameters": 2e6, "ours_parameters": 1e6}
    peer |= {f"{who}_{label}_ms": 10.0 for who in ("lerobot", "ours") for label in ("DDPM-100", "DDIM-10")}
    text = _markdown(config, [result], peer, elapsed=60.0)
    assert "sop bench rti --checkpoint runs/bc --tasks reach-v3 --episodes 2" in text
    assert describe_machine().summary() in text
    rows = _table_rows(text)
    assert rows[0][4] == "reach"
    assert rows[1] == [
        "DDPM-100 Ta=8", "100", "50.0", "7.00", "0.50 [0.09, 0.91]", "0.500 [0.095, 0.905]", "+0.0 pts"
    ]  # fmt: skip
    assert "Success: rate [Wilson 95 % interval]" in text
    assert rows[-1] == ["DDIM-10", "10.0", "10.0", "1.00x"]


def test_rti_needs_a_checkpoint() -> None:
    with pytest.raises(ConfigError, match="checkpoint"):
        parse_config(RTIBenchConfig, [])


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
