"""A fleet run's report from its event logs: success with Wilson intervals and n, the operators' work per task,
a per-robot step axis per task, the learner's online share; and a report rebuilt from an older run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet_harness.report import (
    EpisodeEvent,
    main,
    online_share_series,
    operator_effort,
    plot_run,
    read_episode_events,
    summarize,
    task_steps_per_robot,
    write_report,
)
from sop.success_rate import SuccessCount, wilson_interval

STARTED_AT = 1_700_000_000.0


def _episode(robot: str, task: str, steps: int, frames: int, take_overs: int, at: float) -> dict[str, Any]:
    return {
        "robot_id": robot,
        "task": task,
        "outcome": "success" if frames == 0 else "timeout",
        "num_steps": steps,
        "intervention_frames": frames,
        "take_overs": take_overs,
        "policy_version": 1,
        "ended_at": STARTED_AT + at,
    }


def _write_run(run_dir: Path) -> None:
    """Two tasks: `reach` on robots 0 and 2 (short episodes), `push` on robot 1 alone (long ones), finishing
    interleaved in time — the layout where a fleet-wide step count put each task's curve somewhere else."""
    rows: dict[str, list[dict[str, Any]]] = {"robot-0": [], "robot-1": [], "robot-2": []}
    for i in range(12):
        rows["robot-0"].append(_episode("robot-0", "reach-v3", 50, 10 if i < 4 else 0, int(i < 4), 10.0 * i))
        rows["robot-2"].append(_episode("robot-2", "reach-v3", 50, 0, 0, 10.0 * i + 5))
        rows["robot-1"].append(_episode("robot-1", "push-v3", 150, 30, 1, 10.0 * i + 7))
    for robot, episodes in rows.items():
        folder = run_dir / "robots" / robot
        folder.mkdir(parents=True)
        (folder / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    train = [{"step": s, "loss": 0.1, "time": STARTED_AT + s} for s in (0, 25)]
    train += [
        {
            "step": s,
            "loss": 0.1,
            "time": STARTED_AT + s,
            "mix/reach-v3/online_share": 0.25 + s / 1000,
            "mix/push-v3/online_share": 0.5,
            "mix/reach-v3/loss_online": 0.2,
            "mix/reach-v3/loss_offline": 0.1,
        }
        for s in (50, 75, 100)
    ]
    train.append({"step": 100, "published_version": 4, "time": STARTED_AT + 101})
    (run_dir / "learner").mkdir(parents=True)
    (run_dir / "learner" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))


def _evaluations() -> tuple[dict[str, SuccessCount], dict[str, SuccessCount]]:
    base = {"reach-v3": SuccessCount(12, 50), "push-v3": SuccessCount(3, 50)}
    final = {"reach-v3": SuccessCount(45, 50), "push-v3": SuccessCount(20, 50)}
    return base, final


def _summary(run_dir: Path) -> tuple[dict[str, Any], list[EpisodeEvent]]:
    events = read_episode_events(run_dir, STARTED_AT)
    train_rows = [json.loads(line) for line in (run_dir / "learner" / "train.jsonl").read_text().splitlines()]
    base, final = _evaluations()
    sampler = {"type": "ddim", "steps": 10, "seed": 0, "execution_horizon": None}
    summary = summarize(events, train_rows, base, final, 600.0, {"robot-0": [0, 4]}, sampler=sampler)
    summary["online_started_at"] = STARTED_AT
    return summary, events


def test_summary_keeps_the_rates_and_adds_intervals_and_the_operators_work(tmp_path: Path) -> None:
    _write_run(tmp_path)
    summary, _ = _summary(tmp_path)

    assert summary["base_success"] == {"reach-v3": 0.24, "push-v3": 0.06}
    assert summary["final_success"] == {"reach-v3": 0.9, "push-v3": 0.4}
    assert summary["base_mean_success"] == pytest.approx(0.15)
    assert summary["final_mean_success"] == pytest.approx(0.65)
    assert summary["final_success_ci95"]["reach-v3"] == list(wilson_interval(45, 50))
    assert summary["base_success_ci95"]["push-v3"] == list(wilson_interval(3, 50))
    assert summary["base_mean_success_ci95"] == list(wilson_interval(15, 100))  # pooled: 15 of 100 episodes
    assert summary["final_mean_success_ci95"] == list(wilson_interval(65, 100))
    assert summary["eval_episodes_per_task"] == 50
    assert summary["sampler"]["type"] == "ddim"

    reach, push = summary["online_per_task"]["reach-v3"], summary["online_per_task"]["push-v3"]
    assert reach == {
        "robots": 2,
        "episodes": 24,
        "env_steps": 1200,
        "operator_labelled_frames": 40,
        "intervention_rate": pytest.approx(40 / 1200),
        "take_overs": 4,
    }
    assert (push["robots"], push["env_steps"], push["operator_labelled_frames"]) == (1, 1800, 360)
    assert push["intervention_rate"] == pytest.approx(0.2) and push["take_overs"] == 12
    assert summary["take_overs"] == 16 and summary["intervention_frames"] == 400

    with pytest.raises(ValueError, match="different numbers of episodes"):
        summarize([], [], {"reach-v3": SuccessCount(1, 20)}, {"reach-v3": SuccessCount(1, 30)}, 1.0, {})


def test_report_shows_each_success_with_its_interval_and_n(tmp_path: Path) -> None:
    _write_run(tmp_path)
    summary, events = _summary(tmp_path)
    plots = plot_run(tmp_path, events, [], STARTED_AT)
    text = write_report(tmp_path, summary, plots).read_text()

    assert "| reach-v3 | 50 | 0.24 [0.14, 0.37] | 0.90 [0.79, 0.96] |" in text
    assert "| push-v3 | 50 | 0.06 [0.02, 0.16] | 0.40 [0.28, 0.54] |" in text
    assert "| **mean** | 100 | **0.15 [0.09, 0.23]** | **0.65 [0.55, 0.74]** |" in text
    assert "| reach-v3 | 2 | 24 | 1200 | 3.3% | 40 | 4 |" in text
    assert "| push-v3 | 1 | 12 | 1800 | 20.0% | 360 | 12 |" in text
    assert '"type": "ddim"' in text
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_each_task_is_plotted_against_its_own_robots_steps_per_robot(tmp_path: Path) -> None:
    _write_run(tmp_path)
    events = read_episode_events(tmp_path, STARTED_AT)
    reach = [e for e in events if e.task == "reach-v3"]
    push = [e for e in events if e.task == "push-v3"]

    reach_x, push_x = task_steps_per_robot(reach), task_steps_per_robot(push)
    # Both start at their first episode's steps over their own robots, not after the other task's steps ...
    assert (reach_x[0], push_x[0]) == (25.0, 150.0)
    # ... and end at the steps each of their robots took: 12 episodes x 50 steps, 12 x 150.
    assert (reach_x[-1], push_x[-1]) == (600.0, 1800.0)
    assert reach_x == sorted(reach_x) and len(reach_x) == len(reach)


def test_online_share_plot_from_the_learner_mix_and_none_without_it(tmp_path: Path) -> None:
    _write_run(tmp_path)
    events = read_episode_events(tmp_path, STARTED_AT)
    train_rows = [
        json.loads(line) for line in (tmp_path / "learner" / "train.jsonl").read_text().splitlines()
    ]
    series = online_share_series(train_rows)
    assert series["reach-v3"]["step"] == [50, 75, 100]
    assert series["reach-v3"]["online_share"] == pytest.approx([0.3, 0.325, 0.35])
    assert series["reach-v3"]["loss_online"] == [(50, 0.2), (75, 0.2), (100, 0.2)]
    assert series["push-v3"]["loss_offline"] == []

    names = [p.name for p in plot_run(tmp_path / "with", events, train_rows, STARTED_AT)]
    assert names == ["success.png", "interventions.png", "policy_versions.png", "online_share.png"]
    assert (tmp_path / "with" / "plots" / "online_share.png").stat().st_size > 1000
    without = [{k: v for k, v in r.items() if not k.startswith("mix/")} for r in train_rows]
    assert online_share_series(without) == {}
    names = [p.name for p in plot_run(tmp_path / "without", events, without, STARTED_AT)]
    assert "online_share.png" not in names


def _older_summary() -> dict[str, Any]:
    """summary.json as runs wrote it before the intervals: rates only."""
    return {
        "base_success": {"reach-v3": 0.24, "push-v3": 0.06},
        "final_success": {"reach-v3": 0.9, "push-v3": 0.4},
        "base_mean_success": 0.15,
        "final_mean_success": 0.65,
        "episodes": 36,
        "episodes_per_robot": {"robot-0": 12, "robot-1": 12, "robot-2": 12},
        "env_steps": 3000,
        "intervention_frames": 400,
        "take_overs": 16,
        "learner_steps": 100,
        "checkpoints_published": [4],
        "checkpoints_applied": {"robot-0": [0, 4]},
        "wall_time_s": 600.0,
        "final_version": 4,
        "online_started_at": STARTED_AT,
        "interrupted": False,
        "process_exit_codes": {"learner": 0},
    }


def test_a_report_rebuilt_from_an_older_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(_older_summary()))
    (tmp_path / "config.json").write_text(json.dumps({"eval_episodes": 50, "sampler": {"type": "ddim"}}))
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    # The intervals follow exactly from the stored rates (k/50) and the run's eval_episodes.
    assert "| reach-v3 | 50 | 0.24 [0.14, 0.37] | 0.90 [0.79, 0.96] |" in text
    assert "| **mean** | 100 | **0.15 [0.09, 0.23]** | **0.65 [0.55, 0.74]** |" in text
    assert "| push-v3 | 1 | 12 | 1800 | 20.0% | 360 | 12 |" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["base_success"] == _older_summary()["base_success"]  # what was there stays as it was
    assert summary["final_success_ci95"]["reach-v3"] == list(wilson_interval(45, 50))
    assert summary["eval_episodes_per_task"] == 50 and summary["sampler"] == {"type": "ddim"}
    # Operator effort follows from the episode logs, at the 30 Hz the run's config.json does not override.
    assert summary["operator_effort"]["total"]["operator_labelled_frames"] == 400
    assert summary["operator_effort"]["control_hz"] == 30.0

    # Without config.json nothing tells n: the rates alone, and still a report.
    (tmp_path / "config.json").unlink()
    (tmp_path / "summary.json").write_text(json.dumps(_older_summary()))
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| reach-v3 | - | 0.24 | 0.90 |" in text and "| **mean** | - | **0.15** | **0.65** |" in text
    assert "base_success_ci95" not in json.loads((tmp_path / "summary.json").read_text())
    assert str(tmp_path / "report.md") in capsys.readouterr().out


def test_operator_effort_counts_labelled_frames_and_minutes_per_robot_and_in_total(tmp_path: Path) -> None:
    _write_run(tmp_path)  # robot-0: 4 episodes x 10 frames; robot-1: 12 x 30; robot-2: none
    events = read_episode_events(tmp_path, STARTED_AT)
    base, final = _evaluations()
    summary = summarize(events, [], base, final, 1.0, {}, operator_control_hz=10.0)
    effort = summary["operator_effort"]
    assert effort["control_hz"] == 10.0
    robots = effort["per_robot"]
    assert [robots[r]["operator_labelled_frames"] for r in ("robot-0", "robot-1", "robot-2")] == [40, 360, 0]
    assert robots["robot-1"]["operator_minutes"] == pytest.approx(360 / 10 / 60)  # 0.6 min at 10 Hz
    assert robots["robot-0"] | {"operator_minutes": 0} == {
        "task": "reach-v3",
        "episodes": 12,
        "env_steps": 600,
        "take_overs": 4,
        "operator_labelled_frames": 40,
        "operator_minutes": 0,
    }
    assert effort["total"]["operator_labelled_frames"] == 400 == summary["intervention_frames"]
    assert effort["total"]["operator_minutes"] == pytest.approx(400 / 10 / 60)
    assert operator_effort(events, 30.0)["total"]["operator_minutes"] == pytest.approx(400 / 30 / 60)
    assert summary["deployment"] == {"name": "nominal", "shifts": {}}

    summary["deployment"] = {"name": "latency", "shifts": {"action_latency_steps": 3}}
    text = write_report(tmp_path, summary, []).read_text()
    assert "## Operator effort (minutes at the 10 Hz control rate)" in text
    assert "| robot-1 | push-v3 | 12 | 1800 | 12 | 360 | 0.60 |" in text
    assert "| **total** |  | 36 | 3000 | 16 | 400 | 0.67 |" in text
    assert (
        'Deployment (robots and evaluation; demonstrations nominal): `latency` {"action_latency_steps": 3}'
        in text
    )
    assert json.loads((tmp_path / "summary.json").read_text())["operator_effort"] == effort
    with pytest.raises(ValueError, match="control_hz"):
        operator_effort(events, 0.0)
