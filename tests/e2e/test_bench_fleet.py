"""`sop bench fleet` end to end at a tiny size: real fleets of 1 and 2 robots, snapshots, the offline arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sop_subprocess import run_sop

from sop.data.episode_store import EpisodeStore


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fleet_benchmark_runs_each_fleet_size_and_the_offline_arm(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    run_sop(
        "bench",
        "fleet",
        "--robots",
        "1,2",
        "--per_robot_steps",
        "400",
        "--eval_every_steps",
        "200",
        "--out",
        str(out),
        "--results",
        str(tmp_path / "fleet_scaling.md"),
        "--fleet.eval_episodes",
        "2",
        "--fleet.base.bc_steps",
        "100",
        "--fleet.base.cache_dir",
        str(tmp_path / "cache"),
    )
    results = json.loads((out / "results.json").read_text())

    sizes = {size["robots"]: size for size in results["fleet_sizes"]}
    assert sorted(sizes) == [1, 2]
    for robots, size in sizes.items():
        curve = size["curve"]
        assert [point["grid_steps"] for point in curve] == [200, 400]
        assert all(point["per_robot_steps"] >= point["grid_steps"] for point in curve)
        assert [p["version"] for p in curve] == sorted(p["version"] for p in curve)
        assert all(0.0 <= point["success"] <= 1.0 for point in curve)
        assert set(size["exit_codes"].values()) == {0}
        # Every robot's episodes reached the learner's replay.
        replay = EpisodeStore(out / f"robots-{robots}" / "learner" / "replay", create=False)
        assert {info.robot_id for info in replay.list()} >= {f"robot-{i}" for i in range(robots)}

    comparison = results["online_vs_offline"]
    assert comparison["robots"] == 2 and comparison["extra_episodes"] == sizes[2]["episodes"]
    extra = EpisodeStore(out / "offline" / "extra_demos", create=False)
    assert len(extra) == comparison["extra_episodes"]
    offline_learner = out / "offline" / "learner" / "train.jsonl"
    steps = [json.loads(line)["step"] for line in offline_learner.read_text().splitlines()]
    assert max(steps) == comparison["learner_steps"]

    text = (tmp_path / "fleet_scaling.md").read_text()
    assert "sop bench fleet --robots 1,2 --per_robot_steps 400" in text
    assert (tmp_path / "fleet_scaling.png").is_file()
