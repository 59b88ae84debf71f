"""The fleet run's report: plots, `report.md` and `summary.json` from the run folder's event logs.

Inputs (JSON lines written while the fleet runs):
    robots/<robot_id>/episodes.jsonl  one line per finished episode: robot_id, task, outcome, num_steps,
                                      intervention_frames, take_overs, policy_version, ended_at (Unix
                                      time; plotted as seconds since the fleet went online)
    learner/train.jsonl               one line per logged trainer step: step, loss, time (Unix), and
                                      published_version when a checkpoint went out
Kept apart from the harness so a report can be rebuilt from a finished run folder:
`python -m fleet_harness.report RUN_DIR`.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


@dataclass(frozen=True)
class EpisodeEvent:
    robot_id: str
    task: str
    outcome: str
    num_steps: int
    intervention_frames: int
    take_overs: int
    policy_version: int
    wall_time: float

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def autonomous_success(self) -> bool:
        """Success without the operator touching the episode: the policy's own merit."""
        return self.success and self.intervention_frames == 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines log, skipping a torn last line (the writer may have been killed mid-line)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_episode_events(run_dir: Path, online_started_at: float) -> list[EpisodeEvent]:
    events = []
    for path in sorted((run_dir / "robots").glob("*/episodes.jsonl")):
        for row in read_jsonl(path):
            events.append(
                EpisodeEvent(
                    robot_id=str(row["robot_id"]),
                    task=str(row["task"]),
                    outcome=str(row["outcome"]),
                    num_steps=int(row["num_steps"]),
                    intervention_frames=int(row.get("intervention_frames", 0)),
                    take_overs=int(row.get("take_overs", 0)),
                    policy_version=int(row.get("policy_version", 0)),
                    wall_time=float(row["ended_at"]) - online_started_at,
                )
            )
    return sorted(events, key=lambda e: e.wall_time)


def rolling_mean(values: Iterable[float], window: int) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return array
    cumulative = np.cumsum(np.insert(array, 0, 0.0))
    out = np.empty_like(array)
    for i in range(array.size):
        lo = max(0, i + 1 - window)
        out[i] = (cumulative[i + 1] - cumulative[lo]) / (i + 1 - lo)
    return out


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(
    run_dir: Path,
    events: list[EpisodeEvent],
    train_rows: list[dict[str, Any]],
    online_started_at: float,
    window: int = 10,
) -> list[Path]:
    """Write the run's PNG plots and return their paths."""
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[EpisodeEvent]] = defaultdict(list)
    for event in events:
        by_task[event.task].append(event)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps_by_robot: dict[str, int] = defaultdict(int)
    robot_count = max(1, len({e.robot_id for e in events}))
    for task, task_events in sorted(by_task.items()):
        autonomous = rolling_mean((e.autonomous_success for e in task_events), window)
        axes[0].plot([e.wall_time / 60 for e in task_events], autonomous, label=task)
        per_robot_steps = []
        for e in task_events:
            steps_by_robot[e.robot_id] += e.num_steps
            per_robot_steps.append(sum(steps_by_robot.values()) / robot_count)
        axes[1].plot(per_robot_steps, autonomous, label=task)
    axes[0].set(xlabel="wall time (min)", ylabel=f"autonomous success (rolling {window})", ylim=(-0.05, 1.05))
    axes[1].set(
        xlabel="env steps per robot", ylabel=f"autonomous success (rolling {window})", ylim=(-0.05, 1.05)
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Success of the fleet's policy during online post-training")
    written.append(_save(fig, plots / "success.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for task, task_events in sorted(by_task.items()):
        rate = rolling_mean((e.intervention_frames / max(1, e.num_steps) for e in task_events), window)
        ax.plot([e.wall_time / 60 for e in task_events], rate, label=task)
    ax.set(
        xlabel="wall time (min)", ylabel=f"intervention rate (frames, rolling {window})", ylim=(-0.05, 1.05)
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, plots / "interventions.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for robot_id in sorted({e.robot_id for e in events}):
        mine = [e for e in events if e.robot_id == robot_id]
        ax.step(
            [e.wall_time / 60 for e in mine], [e.policy_version for e in mine], where="post", label=robot_id
        )
    published = [r for r in train_rows if r.get("published_version") is not None]
    if published:
        ax.scatter(
            [(r["time"] - online_started_at) / 60 for r in published],
            [r["published_version"] for r in published],
            marker="x",
            color="black",
            label="published",
        )
    ax.set(xlabel="wall time (min)", ylabel="policy version")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, plots / "policy_versions.png"))
    return written


def summarize(
    events: list[EpisodeEvent],
    train_rows: list[dict[str, Any]],
    base_eval: dict[str, float],
    final_eval: dict[str, float],
    wall_time_s: float,
    checkpoints_applied: dict[str, list[int]],
) -> dict[str, Any]:
    """The numbers a reader wants first; base and final come from the same held-out seeded episodes."""
    published = sorted(
        {int(r["published_version"]) for r in train_rows if r.get("published_version") is not None}
    )
    return {
        "base_success": base_eval,
        "final_success": final_eval,
        "base_mean_success": float(np.mean(list(base_eval.values()))) if base_eval else 0.0,
        "final_mean_success": float(np.mean(list(final_eval.values()))) if final_eval else 0.0,
        "episodes": len(events),
        "episodes_per_robot": {
            r: sum(1 for e in events if e.robot_id == r) for r in sorted({e.robot_id for e in events})
        },
        "env_steps": sum(e.num_steps for e in events),
        "intervention_frames": sum(e.intervention_frames for e in events),
        "take_overs": sum(e.take_overs for e in events),
        "learner_steps": max((int(r["step"]) for r in train_rows), default=0),
        "checkpoints_published": published,
        "checkpoints_applied": checkpoints_applied,
        "wall_time_s": wall_time_s,
    }


def write_report(run_dir: Path, summary: dict[str, Any], plots: list[Path]) -> Path:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tasks = sorted(set(summary["base_success"]) | set(summary["final_success"]))
    lines = [
        "# SOP fleet run",
        "",
        f"Wall time {summary['wall_time_s'] / 60:.1f} min · {summary['episodes']} episodes · "
        f"{summary['env_steps']} env steps · {summary['intervention_frames']} intervention frames · "
        f"{len(summary['checkpoints_published'])} checkpoints published · {summary['learner_steps']} learner steps",
        "",
        "## Success on held-out seeded episodes (no operator)",
        "",
        "| task | base | final |",
        "|---|---|---|",
    ]
    for task in tasks:
        lines.append(
            f"| {task} | {summary['base_success'].get(task, float('nan')):.2f} "
            f"| {summary['final_success'].get(task, float('nan')):.2f} |"
        )
    lines.append(
        f"| **mean** | **{summary['base_mean_success']:.2f}** | **{summary['final_mean_success']:.2f}** |"
    )
    lines += ["", "## Checkpoints applied by each robot", ""]
    for robot_id, versions in sorted(summary["checkpoints_applied"].items()):
        if len(versions) > 8:
            lines.append(f"- {robot_id}: {len(versions)} versions, v{versions[0]} … v{versions[-1]}")
        else:
            lines.append(f"- {robot_id}: {', '.join(f'v{v}' for v in versions) or 'none'}")
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fleet_harness.report RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        print(f"{summary_path} does not exist: is {run_dir} a finished fleet run folder?", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    events = read_episode_events(run_dir, float(summary["online_started_at"]))
    train_rows = read_jsonl(run_dir / "learner" / "train.jsonl")
    plots = plot_run(run_dir, events, train_rows, float(summary["online_started_at"]))
    print(write_report(run_dir, summary, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
