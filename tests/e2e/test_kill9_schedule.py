"""kill -9 at random moments, learner and robots alike, then an accounting of every episode id.

A real `sop learner serve` and three real `sop robot run` daemons (a fast fake robot, a tiny diffusion
policy, free-running) on 127.0.0.1, over the fleet's mutual TLS with signed checkpoints. A seeded schedule
SIGKILLs one of the four processes every few seconds and restarts it; then everything runs undisturbed for
a while, stops with SIGTERM, and each robot drains its spool (`sop robot run --drain_timeout_s`). Every
episode a robot finished (its episode log) must then be committed in the learner's replay, exactly once, and
nothing may sit in a robot's quarantine. (A free-running robot's control loop calls an episode finished only once
its spool holds it, so "finished" is a promise a kill -9 of the robot cannot break.)
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fleet_harness.processes import FleetProcesses, ManagedProcess, free_port, wait_for_port
from sop.data.episode_store import EpisodeStore
from sop.episode import Outcome
from sop.fleet_trust import create_fleet_trust, learner_flags, robot_flags

REPO = Path(__file__).resolve().parents[2]
ROBOT_FAKES = REPO / "tests" / "robot_client"
ROBOTS = ("robot-1", "robot-2", "robot-3")
SEED = 20261202
KILLS = 8


def _write_learner_config(root: Path, port: int, base: Path) -> Path:
    path = root / "learner.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(root / "learner"),
                "log_level": "INFO",
                "server": {"address": f"127.0.0.1:{port}", "shutdown_grace_s": 0.5},
                "trainer": {"base_checkpoint": str(base), "enabled": False},
            }
        )
    )
    return path


@pytest.mark.slow
def test_random_kill_9_of_learner_and_robots_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROBOT_FAKES))
    from robot_fakes import write_tiny_diffusion_checkpoint

    base = write_tiny_diffusion_checkpoint(tmp_path / "base", version=1)
    trust = create_fleet_trust(tmp_path / "fleet", ROBOTS)  # mutual TLS, tokens, checkpoint signing
    port = free_port()
    learner_config = _write_learner_config(tmp_path, port, base)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROBOT_FAKES}:{REPO}"}
    processes = FleetProcesses(tmp_path / "logs")

    def start_learner() -> ManagedProcess:
        args = ["learner", "serve", "--config", str(learner_config), *learner_flags(trust)]
        child = processes.start("learner", args, env=env)
        wait_for_port("127.0.0.1", port, 90, child.process)
        return child

    def start_robot(robot_id: str, *extra: str) -> ManagedProcess:
        args = [
            "robot", "run", "--config", "configs/robot.yaml",
            "--robot_id", robot_id,
            "--data_dir", str(tmp_path / robot_id),
            "--learner.address", f"127.0.0.1:{port}",
            *robot_flags(trust, robot_id),
            "--robot.type", "factory", "--robot.factory", "robot_fakes:make_fake_robot",
            "--policy.base_checkpoint", str(base),
            "--control.free_running", "true",
            "--control.max_episode_steps", "12",
            "--spool.flush_every_steps", "4",
            "--metrics.log_interval_s", "0",
            "--metrics.episode_log", str(tmp_path / f"{robot_id}.episodes.jsonl"),
            *extra,
        ]  # fmt: skip
        return processes.start(robot_id, args, env=env)

    children = {"learner": start_learner()}
    try:
        for robot_id in ROBOTS:
            children[robot_id] = start_robot(robot_id)
        rng = random.Random(SEED)
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.5, 5.0))
            name = rng.choice(["learner", *ROBOTS])
            children[name].process.kill()  # SIGKILL: no handler runs, no flush, mid-whatever
            children[name].process.wait(10)
            time.sleep(rng.uniform(0.1, 1.5))
            children[name] = start_learner() if name == "learner" else start_robot(name)
        # Undisturbed: robots keep recording and drain their spools.
        time.sleep(8)
        for robot_id in ROBOTS:
            processes.stop(children[robot_id], timeout_s=30)
        # What the spools still hold (recorded after the last receipt, or recovered partials) goes up with
        # `sop robot run --drain_timeout_s`: no robot, upload until the spool is empty.
        for robot_id in ROBOTS:
            drain = start_robot(robot_id, "--drain_timeout_s", "60")
            assert drain.process.wait(90) == 0, processes.tail(drain, 40)
        assert not any(_pending(tmp_path / r / r) for r in ROBOTS), "robots could not drain their spools"
    finally:
        processes.stop_all(timeout_s=30)

    replay = EpisodeStore(tmp_path / "learner" / "replay", create=False)
    committed = {info.episode_id: info for info in replay.list()}
    logged: list[str] = []
    for robot_id in ROBOTS:
        log_path = tmp_path / f"{robot_id}.episodes.jsonl"
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        # An episode stopped before its first step has nothing to record (the recorder says so).
        logged += [
            record["episode_id"]
            for record in map(_parse_line, lines)
            if record is not None and record.get("num_steps", 0) > 0
        ]
        quarantine = tmp_path / robot_id / robot_id / "quarantine"
        assert not quarantine.exists() or not any(quarantine.iterdir()), f"{robot_id} quarantined episodes"
    assert len(logged) > 20, f"only {len(logged)} episodes recorded: the schedule exercised too little"
    lost = [episode_id for episode_id in logged if episode_id not in committed]
    assert lost == [], (
        f"{len(lost)} of {len(logged)} finished episodes never reached the learner; errors logged:\n"
        + _error_lines(tmp_path / "logs")
    )
    assert not [e for e, n in Counter(logged).items() if n > 1], "an episode id was logged twice"
    # Exactly once: no recording committed under two ids (same robot and start time).
    starts = Counter((info.robot_id, info.started_at) for info in committed.values())
    assert not [k for k, n in starts.items() if n > 1], "one recording was committed twice"
    # Committed episodes no log line names: partial recordings a killed robot recovered (`aborted`), or an
    # episode whose robot was killed between its spool commit and its log line (at most one per kill).
    unlogged = [info for episode_id, info in committed.items() if episode_id not in set(logged)]
    finished_unlogged = [info for info in unlogged if info.outcome != Outcome.ABORTED]
    assert len(finished_unlogged) <= KILLS, [i.outcome for i in finished_unlogged]


def _error_lines(log_dir: Path, limit: int = 30) -> str:
    """The ERROR and WARNING lines of every child's log (what explains a failed accounting)."""
    lines = [
        f"{path.stem}: {line}"
        for path in sorted(log_dir.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if " ERROR " in line or " WARNING " in line
    ]
    return "\n".join(lines[:limit]) + (f"\n... {len(lines) - limit} more" if len(lines) > limit else "")


def _parse_line(line: str) -> dict | None:
    """One episode-log line; None for the line a SIGKILL cut short."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _pending(robot_dir: Path) -> bool:
    """Whether a robot's spool (data_dir/robot_id/spool) still holds an episode, committed or partial."""
    spool = robot_dir / "spool"
    if not spool.exists():
        return False
    store = EpisodeStore(spool, create=False, durable=False)
    return bool(store.list()) or bool(store.partial_episodes())
