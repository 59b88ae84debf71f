"""The quick fleet demo end to end: a learner and two robot daemons as real processes over gRPC on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sop_subprocess import run_sop


def _processes_mentioning(text: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True, check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_improves_the_fleet_and_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_sop(
        "demo",
        "--config",
        "demo_quick",
        "--out",
        str(run_dir),
        "--live",
        "false",
        "--base.cache_dir",
        str(tmp_path / "cache"),
    )
    summary = json.loads((run_dir / "summary.json").read_text())

    # The learner committed episodes from every robot (read its replay store, not the robots' own logs).
    from sop.data.episode_store import EpisodeStore
    from sop.episode import Source

    replay = EpisodeStore(run_dir / "learner" / "replay", create=False)
    online = replay.list(source=Source.ONLINE)
    assert {info.robot_id for info in online} == {"robot-0", "robot-1"}

    # Every robot hot-swapped at least two published checkpoints while it ran.
    for robot_id, versions in summary["checkpoints_applied"].items():
        assert len([v for v in versions if v > 1]) >= 2, (robot_id, versions)

    # Post-training helped on held-out seeds, evaluated without the operator.
    assert summary["final_mean_success"] >= summary["base_mean_success"] + 0.1, summary
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "success.png").is_file()
    assert set(summary["process_exit_codes"].values()) == {0}
    assert _processes_mentioning(str(run_dir)) == []
