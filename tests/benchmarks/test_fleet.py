"""`sop bench fleet`: its settings, the checkpoint snapshots it takes while a fleet runs, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.fleet import (
    FleetBenchConfig,
    FleetSizeResult,
    Snapshot,
    SnapshotTaker,
    markdown_tables,
    plot_scaling,
    report_again,
    reproducing_command,
    steps_to_target,
    summarize_benchmark,
    write_markdown,
)
from cloud_learner.checkpoint_store import CheckpointStore
from fleet_harness.demo import FleetView
from sop.checkpoint import build_checkpoint, checkpoint_to_bytes
from sop.config import ConfigError, config_to_dict, parse_config


def test_the_shipped_config_parses_and_names_one_to_four_robots() -> None:
    config = parse_config(FleetBenchConfig, [], default_config="bench_fleet.yaml")
    assert config.robots == [1, 2, 4]
    assert config.per_robot_steps % config.eval_every_steps == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--robots", "[]"], "robots"),
        (["--robots", "[1,1]"], "repeat"),
        (["--robots", "[0,2]"], "robots"),
        (["--per_robot_steps", "100", "--eval_every_steps", "500"], "per_robot_steps"),
        (["--target", "1.5"], "target"),
        (["--fleet.tasks", "[no-such-task]"], "no-such-task"),
    ],
)
def test_bad_settings_are_refused_by_name(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(FleetBenchConfig, flags)


def test_steps_to_target_is_the_first_point_in_step_order_that_reaches_it() -> None:
    points = [(3000.0, 0.9), (0.0, 0.3), (1000.0, 0.6), (2000.0, 0.8), (4000.0, 0.7)]
    assert steps_to_target(points, 0.8) == 2000.0
    assert steps_to_target(points, 0.95) is None
    assert steps_to_target(points, 0.3) == 0.0


def _blob(version: int) -> bytes:
    checkpoint = build_checkpoint(
        {"weight": torch.full((4,), float(version))},
        policy_type="test",
        version=version,
        parent_version=version - 1,
        policy_config={},
        normalization={},
    )
    return checkpoint_to_bytes(checkpoint)


def _log_episode(run_dir: Path, robot_id: str, steps: int) -> None:
    path = run_dir / "robots" / robot_id / "episodes.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "robot_id": robot_id,
        "task": "reach-v3",
        "outcome": "success",
        "num_steps": steps,
        "intervention_frames": 0,
    }
    with path.open("a") as handle:
        handle.write(json.dumps(row | {"policy_version": 1, "ended_at": 0.0}) + "\n")


def test_snapshots_follow_the_mean_robot_and_stop_the_run_at_the_step_budget(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "learner" / "checkpoints")
    view = FleetView(tmp_path, {"robot-0": "reach-v3", "robot-1": "reach-v3"})
    taker = SnapshotTaker(tmp_path, per_robot_steps=300, every=100)
    store.publish(_blob(1), train_step=0)

    _log_episode(tmp_path, "robot-0", 150)  # mean per-robot steps: 75
    assert taker(view) is False and taker.snapshots == []
    _log_episode(tmp_path, "robot-1", 90)  # mean 120: crosses 100
    assert taker(view) is False
    store.publish(_blob(2), train_step=25)
    _log_episode(tmp_path, "robot-0", 200)  # mean 220: crosses 200
    assert taker(view) is False
    store.publish(_blob(3), train_step=50)
    _log_episode(tmp_path, "robot-1", 200)  # mean 320: crosses 300, the budget
    assert taker(view) is True

    snapshots = taker.snapshots
    assert [s.grid_steps for s in snapshots] == [100, 200, 300]
    assert [s.per_robot_steps for s in snapshots] == [120, 220, 320]
    assert [(s.version, s.learner_step) for s in snapshots] == [(1, 0), (2, 25), (3, 50)]
    for snapshot in snapshots:  # a copy of the published blob, safe from the learner's clean-up
        assert Path(snapshot.path).read_bytes() == store.read_blob(snapshot.version)


def _size(robots: int, curve: list[tuple[float, float]], learner_steps: int) -> FleetSizeResult:
    snapshots = [
        Snapshot(
            int(s),
            s,
            version=i + 2,
            learner_step=int(s / 10),
            wall_s=s / 50,
            path=f"/x/{robots}-{i}",
            success=v,
        )
        for i, (s, v) in enumerate(curve)
    ]
    return FleetSizeResult(
        robots, snapshots, 10 * robots, {"reach-v3": 10 * robots}, 50, learner_steps, 60.0, {}
    )


def test_report_gives_steps_to_target_relative_to_one_robot_and_the_offline_arm(tmp_path: Path) -> None:
    config = parse_config(FleetBenchConfig, ["--robots", "[1,4]", "--results", str(tmp_path / "fleet.md")])
    runs = [
        _size(1, [(1000, 0.5), (2000, 0.7), (3000, 0.85)], 300),
        _size(4, [(1000, 0.82), (2000, 0.9), (3000, 0.95)], 310),
    ]
    offline = tmp_path / "offline.safetensors"
    results = summarize_benchmark(config, runs, 0.4, offline, {str(offline): 0.6})
    results["wall_s"] = 600.0
    one, four = results["fleet_sizes"]
    assert (one["steps_to_target"], four["steps_to_target"]) == (3000, 1000)
    assert four["steps_vs_one_robot"] == pytest.approx(1 / 3)
    assert results["online_vs_offline"] == {
        "robots": 4,
        "extra_episodes": 40,
        "learner_steps": 310,
        "online_success": 0.95,
        "offline_success": 0.6,
    }
    plot = plot_scaling(tmp_path / "plot.png", results)
    write_markdown(Path(config.results), config, results, plot)
    text = Path(config.results).read_text()
    assert f"`sop bench fleet --robots 1,4 --results {config.results}`" in text and "CPU cores" in text
    assert "| 4 | 1000 | 0.33x |" in text
    assert "40 extra scripted demonstrations | 310 | 0.60 |" in text
    assert (tmp_path / "fleet.png").stat().st_size > 1000


def test_when_one_robot_never_reaches_the_target_the_ratio_is_an_upper_bound(tmp_path: Path) -> None:
    config = parse_config(FleetBenchConfig, ["--robots", "[1,2]", "--offline", "false"])
    runs = [_size(1, [(1000, 0.5), (2000, 0.7)], 200), _size(2, [(1000, 0.6), (2000, 0.8)], 200)]
    results = summarize_benchmark(config, runs, 0.4, None, {})
    one, two = results["fleet_sizes"]
    assert one["steps_to_target"] is None and one["steps_vs_one_robot"] is None
    assert two["steps_vs_one_robot"] == pytest.approx(1.0) and two["steps_vs_one_robot_is_upper_bound"]
    results["wall_s"] = 60.0
    table = markdown_tables(results)
    assert "| 1 | not reached (> 2000) | - |" in table and "| 2 | 2000 | < 1.00x |" in table
    assert "online_vs_offline" not in results and "offline" not in table


def test_report_only_rederives_the_comparison_for_another_target(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    out.mkdir()
    config = parse_config(FleetBenchConfig, ["--robots", "[1,4]", "--offline", "false", "--out", str(out)])
    runs = [_size(1, [(1000, 0.5), (2000, 0.7)], 200), _size(4, [(1000, 0.7), (2000, 0.9)], 200)]
    results = summarize_benchmark(config, runs, 0.4, None, {}) | {"wall_s": 60.0}
    (out / "results.json").write_text(json.dumps(results))
    (out / "config.json").write_text(json.dumps(config_to_dict(config)))

    again = parse_config(
        FleetBenchConfig,
        ["--report_only", "true", "--out", str(out), "--target", "0.7", "--results", str(tmp_path / "f.md")],
    )
    rederived = report_again(again)
    one, four = rederived["fleet_sizes"]
    assert (one["steps_to_target"], four["steps_to_target"]) == (2000, 1000)
    assert four["steps_vs_one_robot"] == pytest.approx(0.5)
    assert json.loads((out / "results.json").read_text())["target"] == 0.7
    assert "sop bench fleet --robots 1,4" in (tmp_path / "f.md").read_text()  # the command that ran
    assert (out / "fleet_scaling.png").is_file()

    with pytest.raises(FileNotFoundError, match=r"results\.json"):
        report_again(parse_config(FleetBenchConfig, ["--out", str(tmp_path / "nothing-here")]))


def test_the_reported_command_names_what_the_run_changed() -> None:
    config = parse_config(
        FleetBenchConfig,
        [
            "--robots",
            "[1,4]",
            "--per_robot_steps",
            "3000",
            "--offline",
            "false",
            "--fleet.robot_rate_hz",
            "10",
        ],
        default_config="bench_fleet.yaml",
    )
    assert reproducing_command(config) == (
        "sop bench fleet --robots 1,4 --per_robot_steps 3000 --offline false --fleet.robot_rate_hz 10.0"
    )
