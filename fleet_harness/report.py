"""The fleet run's report: plots, `report.md` and `summary.json` from the run folder's event logs.

Inputs (JSON lines written while the fleet runs):
    robots/<robot_id>/episodes.jsonl  one line per finished episode: robot_id, task, outcome, num_steps,
                                      intervention_frames, take_overs, policy_version, ended_at (Unix
                                      time; plotted as seconds since the fleet went online)
    learner/train.jsonl               one line per logged trainer step: step, loss, time (Unix),
                                      mix/<task>/online_share (and mix/<task>/loss_online, loss_offline)
                                      per task, and published_version when a checkpoint went out
Operator effort (`operator_effort`, per robot and in total) is counted from the same episode logs: the
frames an operator drove (`intervention_frames`, the frames recorded with `intervention` set: the
operator-labelled frames HG-DAgger learns from) and operator-minutes, those frames at the robots' control
rate (frames / control_hz / 60): the time a person spent driving, comparable across runs and with the
expert frames of offline demonstrations.
Held-out success is reported as a rate with its Wilson 95 % interval and n (`sop.success_rate`); the mean
over tasks, whose tasks all ran the same episodes, gets the pooled interval over all of them.
Kept apart from the harness so a report can be rebuilt from a finished run folder:
`python -m fleet_harness.report RUN_DIR`. A run folder from before a key existed still reports: what its
event logs and config.json determine exactly (intervals from the stored rates and `eval_episodes`, the
per-task online figures) is filled in, anything else is left out of report.md.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sop.success_rate import SuccessCount, format_rate, pooled, successes_from_rate


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
    for task, task_events in sorted(by_task.items()):
        autonomous = rolling_mean((e.autonomous_success for e in task_events), window)
        axes[0].plot([e.wall_time / 60 for e in task_events], autonomous, label=task)
        axes[1].plot(task_steps_per_robot(task_events), autonomous, label=task)
    axes[0].set(xlabel="wall time (min)", ylabel=f"autonomous success (rolling {window})", ylim=(-0.05, 1.05))
    axes[1].set(
        xlabel="env steps per robot (of the robots on that task)",
        ylabel=f"autonomous success (rolling {window})",
        ylim=(-0.05, 1.05),
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

    mix = online_share_series(train_rows)
    if mix:  # a learner that logs no per-task mix (an older run, no online data yet): no plot
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for task, series in sorted(mix.items()):
            (line,) = axes[0].plot(series["step"], series["online_share"], label=task)
            for key, style in (("loss_online", "-"), ("loss_offline", "--")):
                if series[key]:
                    steps, losses = zip(*series[key], strict=True)
                    axes[1].plot(steps, losses, style, color=line.get_color(), label=f"{task} {key[5:]}")
        axes[0].set(xlabel="learner step", ylabel="online share of the batch", ylim=(-0.05, 1.05))
        axes[1].set(xlabel="learner step", ylabel="loss (solid: online, dashed: offline)")
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # no losses logged yet: no legend to draw
                ax.legend(fontsize=8)
        fig.suptitle("The learner's online/offline mix per task")
        written.append(_save(fig, plots / "online_share.png"))
    return written


def task_steps_per_robot(task_events: list[EpisodeEvent]) -> list[float]:
    """For one task's episodes in time order: the task's env steps so far divided by the number of robots
    that ran the task, so every task's curve starts near 0 and ends at its robots' steps per robot."""
    robots = max(1, len({e.robot_id for e in task_events}))
    return [float(steps) / robots for steps in np.cumsum([e.num_steps for e in task_events])]


def online_share_series(train_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task, from the learner's `mix/<task>/...` keys: `step` and `online_share` (rows that log it, in
    step order) and (step, loss) pairs for `loss_online` and `loss_offline`; {} when no row has a mix."""
    series: dict[str, dict[str, Any]] = {}
    for row in sorted((r for r in train_rows if "step" in r), key=lambda r: int(r["step"])):
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[0] != "mix" or value is None:
                continue
            task, name = parts[1], parts[2]
            entry = series.setdefault(
                task, {"step": [], "online_share": [], "loss_online": [], "loss_offline": []}
            )
            if name == "online_share":
                entry["step"].append(int(row["step"]))
                entry["online_share"].append(float(value))
            elif name in ("loss_online", "loss_offline"):
                entry[name].append((int(row["step"]), float(value)))
    return {task: entry for task, entry in series.items() if entry["step"]}


def online_per_task(events: list[EpisodeEvent]) -> dict[str, dict[str, Any]]:
    """What the operators did for each task while the fleet ran: the frames they labelled (intervention
    frames, the HG-DAgger labels), that count over the task's env steps, and their take-overs."""
    by_task: dict[str, list[EpisodeEvent]] = defaultdict(list)
    for event in events:
        by_task[event.task].append(event)
    rows = {}
    for task, mine in sorted(by_task.items()):
        steps = sum(e.num_steps for e in mine)
        labelled = sum(e.intervention_frames for e in mine)
        rows[task] = {
            "robots": len({e.robot_id for e in mine}),
            "episodes": len(mine),
            "env_steps": steps,
            "operator_labelled_frames": labelled,
            "intervention_rate": labelled / steps if steps else 0.0,
            "take_overs": sum(e.take_overs for e in mine),
        }
    return rows


def _effort(frames: int, control_hz: float) -> dict[str, Any]:
    return {"operator_labelled_frames": frames, "operator_minutes": frames / control_hz / 60.0}


def operator_effort(events: list[EpisodeEvent], control_hz: float) -> dict[str, Any]:
    """Operator-labelled frames and operator-minutes (at `control_hz`) per robot and in total, with each
    robot's episodes, env steps and take-overs beside them."""
    if not control_hz > 0:
        raise ValueError(f"control_hz must be positive, got {control_hz}")
    per_robot: dict[str, dict[str, Any]] = {}
    for robot_id in sorted({e.robot_id for e in events}):
        mine = [e for e in events if e.robot_id == robot_id]
        per_robot[robot_id] = {
            "task": mine[0].task,
            "episodes": len(mine),
            "env_steps": sum(e.num_steps for e in mine),
            "take_overs": sum(e.take_overs for e in mine),
            **_effort(sum(e.intervention_frames for e in mine), control_hz),
        }
    total = {
        "episodes": len(events),
        "env_steps": sum(e.num_steps for e in events),
        "take_overs": sum(e.take_overs for e in events),
        **_effort(sum(e.intervention_frames for e in events), control_hz),
    }
    return {"control_hz": float(control_hz), "per_robot": per_robot, "total": total}


def _evaluation(prefix: str, counts: Mapping[str, SuccessCount]) -> dict[str, Any]:
    mean = pooled(counts.values()) if counts else None
    return {
        f"{prefix}_success": {task: c.rate for task, c in counts.items()},
        f"{prefix}_success_ci95": {task: list(c.ci95) for task, c in counts.items()},
        f"{prefix}_mean_success": float(np.mean([c.rate for c in counts.values()])) if counts else 0.0,
        f"{prefix}_mean_success_ci95": list(mean.ci95) if mean is not None else None,
    }


def summarize(
    events: list[EpisodeEvent],
    train_rows: list[dict[str, Any]],
    base_eval: Mapping[str, SuccessCount],
    final_eval: Mapping[str, SuccessCount],
    wall_time_s: float,
    checkpoints_applied: dict[str, list[int]],
    sampler: dict[str, Any] | None = None,
    operator_control_hz: float = 30.0,
    deployment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The numbers a reader wants first; base and final come from the same held-out seeded episodes, so
    every task of both ran the same number of episodes (`eval_episodes_per_task`). `deployment`: the
    conditions robots and evaluation ran under (name and shifts); None: nominal."""
    sizes = {c.episodes for c in [*base_eval.values(), *final_eval.values()]}
    if len(sizes) > 1:
        raise ValueError(f"base and final were evaluated on different numbers of episodes per task: {sizes}")
    published = sorted(
        {int(r["published_version"]) for r in train_rows if r.get("published_version") is not None}
    )
    return {
        **_evaluation("base", base_eval),
        **_evaluation("final", final_eval),
        "eval_episodes_per_task": sizes.pop() if sizes else 0,
        "sampler": sampler,
        "episodes": len(events),
        "episodes_per_robot": {
            r: sum(1 for e in events if e.robot_id == r) for r in sorted({e.robot_id for e in events})
        },
        "env_steps": sum(e.num_steps for e in events),
        "intervention_frames": sum(e.intervention_frames for e in events),
        "take_overs": sum(e.take_overs for e in events),
        "online_per_task": online_per_task(events),
        "operator_effort": operator_effort(events, operator_control_hz),
        "deployment": deployment or {"name": "nominal", "shifts": {}},
        "learner_steps": max((int(r["step"]) for r in train_rows), default=0),
        "checkpoints_published": published,
        "checkpoints_applied": checkpoints_applied,
        "wall_time_s": wall_time_s,
    }


def complete_older_summary(
    summary: dict[str, Any], events: list[EpisodeEvent], run_config: Mapping[str, Any]
) -> dict[str, Any]:
    """A summary.json written before the intervals and per-task figures existed, with what the run folder
    determines exactly added: the per-task online figures from the episode logs; `eval_episodes_per_task`
    and `sampler` from the run's config.json; the intervals from the stored rates (each is k/n) and n. Keys
    the summary already has are kept as they are."""
    summary = dict(summary)
    if "online_per_task" not in summary:
        summary["online_per_task"] = online_per_task(events)
    if "operator_effort" not in summary:
        rate = run_config.get("robot_rate_hz")
        control_hz = float(rate) if isinstance(rate, (int, float)) and rate > 0 else 30.0
        summary["operator_effort"] = operator_effort(events, control_hz)
    if "sampler" not in summary and isinstance(run_config.get("sampler"), dict):
        summary["sampler"] = run_config["sampler"]
    n = summary.get("eval_episodes_per_task", run_config.get("eval_episodes"))
    if not isinstance(n, int) or n < 1:
        return summary
    summary.setdefault("eval_episodes_per_task", n)
    for prefix in ("base", "final"):
        rates = summary.get(f"{prefix}_success", {})
        if f"{prefix}_success_ci95" in summary or not rates:
            continue
        try:
            counts = {task: SuccessCount(successes_from_rate(rate, n), n) for task, rate in rates.items()}
        except ValueError:  # rates that are no count out of n: the config is not what was evaluated
            continue
        summary.update({k: v for k, v in _evaluation(prefix, counts).items() if k.endswith("_ci95")})
    return summary


def _success_cell(rate: float | None, interval: Any) -> str:
    if rate is None:
        return "-"
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return format_rate(rate, interval)
    return f"{rate:.2f}"


def write_report(run_dir: Path, summary: dict[str, Any], plots: list[Path]) -> Path:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tasks = sorted(set(summary["base_success"]) | set(summary["final_success"]))
    n = summary.get("eval_episodes_per_task")
    lines = [
        "# SOP fleet run",
        "",
        f"Wall time {summary['wall_time_s'] / 60:.1f} min · {summary['episodes']} episodes · "
        f"{summary['env_steps']} env steps · {summary['intervention_frames']} intervention frames · "
        f"{len(summary['checkpoints_published'])} checkpoints published · {summary['learner_steps']} learner steps",
    ]
    if summary.get("sampler"):
        lines += ["", f"Sampler (robots and evaluation): `{json.dumps(summary['sampler'], sort_keys=True)}`"]
    deployment = summary.get("deployment")
    if deployment:
        shifts = json.dumps(deployment.get("shifts") or {}, sort_keys=True)
        lines += [
            "",
            f"Deployment (robots and evaluation; demonstrations nominal): `{deployment['name']}` {shifts}",
        ]
    lines += [
        "",
        "## Success on held-out seeded episodes (no operator)",
        "",
        "Rate [Wilson 95 % interval] over n episodes, base and final on the same seeds; the mean's interval is "
        "pooled over all tasks' episodes.",
        "",
        "| task | n | base | final |",
        "|---|---|---|---|",
    ]
    for task in tasks:
        cells = [
            _success_cell(
                summary[f"{prefix}_success"].get(task), summary.get(f"{prefix}_success_ci95", {}).get(task)
            )
            for prefix in ("base", "final")
        ]
        lines.append(f"| {task} | {n if n else '-'} | {cells[0]} | {cells[1]} |")
    mean_n = n * len(summary["base_success"]) if n and summary["base_success"] else None
    means = [
        _success_cell(summary[f"{prefix}_mean_success"], summary.get(f"{prefix}_mean_success_ci95"))
        for prefix in ("base", "final")
    ]
    lines.append(f"| **mean** | {mean_n or '-'} | **{means[0]}** | **{means[1]}** |")
    online = summary.get("online_per_task")
    if online:
        lines += [
            "",
            "## The operators' work per task (online phase)",
            "",
            "| task | robots | episodes | env steps | intervention rate | operator-labelled frames | take-overs |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, row in sorted(online.items()):
            lines.append(
                f"| {task} | {row['robots']} | {row['episodes']} | {row['env_steps']} | "
                f"{row['intervention_rate']:.1%} | {row['operator_labelled_frames']} | {row['take_overs']} |"
            )
    effort = summary.get("operator_effort")
    if effort:
        lines += [
            "",
            f"## Operator effort (minutes at the {effort['control_hz']:g} Hz control rate)",
            "",
            "| robot | task | episodes | env steps | take-overs | operator-labelled frames | operator-minutes |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = [*sorted(effort["per_robot"].items()), ("**total**", {**effort["total"], "task": ""})]
        for robot_id, row in rows:
            lines.append(
                f"| {robot_id} | {row['task']} | {row['episodes']} | {row['env_steps']} | {row['take_overs']} | "
                f"{row['operator_labelled_frames']} | {row['operator_minutes']:.2f} |"
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
    config_path = run_dir / "config.json"
    run_config = json.loads(config_path.read_text()) if config_path.exists() else {}
    summary = complete_older_summary(summary, events, run_config)
    train_rows = read_jsonl(run_dir / "learner" / "train.jsonl")
    plots = plot_run(run_dir, events, train_rows, float(summary["online_started_at"]))
    print(write_report(run_dir, summary, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
