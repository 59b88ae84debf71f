"""`sop bench soak` end to end, short: a real learner and 4 real robot daemons for 3 minutes, then the
episode-id accounting (0 lost, 0 duplicated) and the report's figures.

The learner's memory slope is reported but not asserted here: over 3 minutes, with a 1-minute warm-up,
the fit spans a few dozen samples dominated by allocator steps and the replay index's growth, so its
value is noise; the flat-memory figure is the 30-minute run's (BENCHMARKS.md, "Soak").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sop_subprocess import run_sop


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_soak_bench_loses_and_duplicates_nothing_and_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    section = tmp_path / "soak.md"
    run_sop(
        "bench", "soak",
        "--robots", "4",
        "--minutes", "3",
        "--out", str(out),
        "--results", str(section),
        "--base.cache_dir", str(tmp_path / "cache"),
        timeout_s=450,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())

    accounting = results["accounting"]
    assert accounting["logged"] >= 8, f"only {accounting['logged']} episodes: the fleet hardly ran"
    assert results["lost"] == 0, accounting["lost"]
    assert results["duplicated"] == 0, accounting["duplicated"]
    assert accounting["left_in_spools"] == 0 and accounting["quarantined_on_robots"] == []
    assert accounting["committed_unlogged_not_aborted"] == 0
    assert results["exit_codes"]["learner"] == 0 and results["robots_crashed"] == [], results["exit_codes"]

    # The load the soak is about: training, publishing, hot-swapping, operators taking over.
    assert results["learner_steps"] > 0 and results["checkpoints_published"] >= 1
    assert results["checkpoints_swapped"] >= 1
    assert results["intervention_frames"] > 0
    latency = results["receipt_latency_s"]["during_run"]
    assert latency["n"] > 0 and 0 < latency["p50"] <= latency["p99"]

    memory = results["memory"]
    assert memory["samples"] >= 30  # every 5 s for 3 minutes
    assert memory["learner"]["slope_mib_per_min"] is not None
    assert set(memory["robots"]["per_robot"]) == {f"robot-{i}" for i in range(4)}

    report = (out / "report.md").read_text()
    assert "lost / duplicated episodes" in report and "receipt latency p50 / p99" in report
    assert (out / "rss.png").stat().st_size > 0
    text = section.read_text()
    assert "sop bench soak --robots 4 --minutes 3" in text
    assert (tmp_path / "soak.png").is_file()
