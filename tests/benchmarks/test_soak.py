"""`sop bench soak`: its settings, the memory figures and the episode-id accounting, without a fleet.

The whole benchmark with real processes runs in tests/e2e/test_soak_bench.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.soak import (
    MIB,
    MemoryTrace,
    SoakBenchConfig,
    account_episodes,
    memory_figures,
    read_memory,
    reproducing_command,
    slope_mib_per_min,
)
from sop.config import ConfigError, parse_config
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode


def test_the_shipped_config_is_the_default_and_flags_override_it() -> None:
    shipped = parse_config(SoakBenchConfig, [], default_config="bench_soak.yaml")
    assert shipped == SoakBenchConfig()
    assert (shipped.robots, shipped.minutes, shipped.robot_rate_hz) == (16, 30.0, 10.0)
    assert not shipped.fleet().base.policy.cameras  # state only: nothing to render

    small = parse_config(
        SoakBenchConfig,
        ["--robots", "4", "--minutes", "3", "--learner.trainer.publish_every_steps", "25"],
        "bench_soak.yaml",
    )
    assert small.warmup_s == pytest.approx(60.0)  # a third of the run
    assert (
        reproducing_command(small)
        == "sop bench soak --robots 4 --minutes 3 --learner.trainer.publish_every_steps 25"
    )


def test_bad_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="warmup_minutes"):
        parse_config(SoakBenchConfig, ["--minutes", "5", "--warmup_minutes", "5"], "bench_soak.yaml")
    with pytest.raises(ConfigError, match="robots"):
        parse_config(SoakBenchConfig, ["--robots", "0"], "bench_soak.yaml")
    with pytest.raises(ConfigError, match="reach-v3"):
        parse_config(SoakBenchConfig, ["--tasks", "[reach-v2]"], "bench_soak.yaml")


def test_read_memory_reads_a_live_process_and_none_for_a_gone_one() -> None:
    rss, anon = read_memory(os.getpid()) or (0, 0)
    assert rss > 10 * MIB and 0 < anon <= rss
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert read_memory(gone.pid) is None


def test_the_slope_fits_the_samples_after_the_warm_up_only() -> None:
    trace = MemoryTrace()
    for i in range(61):  # 10 minutes, a sample every 10 s
        seconds = 10.0 * i
        # Start-up: +300 MiB in the first 2 minutes; then a steady 0.5 MiB/min.
        learner = 500 * MIB + (min(seconds, 120.0) * 2.5 + 0.5 * max(0.0, seconds - 120.0) / 60.0) * MIB
        trace.times_s.append(seconds)
        trace.rss.setdefault("learner", []).append(int(learner))
        trace.anon.setdefault("learner", []).append(int(learner) - 400 * MIB)
        robot = None if i == 60 else int(900 * MIB)  # the robots are gone at the last sample
        trace.rss.setdefault("robot-0", []).append(robot)
        trace.anon.setdefault("robot-0", []).append(robot)
    figures = memory_figures(trace, ["robot-0"], warmup_s=180.0, online_s=590.0)
    learner = figures["learner"]
    assert learner["slope_mib_per_min"] == pytest.approx(0.5, abs=0.01)
    assert learner["anon_slope_mib_per_min"] == pytest.approx(0.5, abs=0.01)
    assert learner["fit_samples"] == 42  # 180 s .. 590 s
    assert learner["after_drain_mib"] == pytest.approx(800 + 0.5 * 8, abs=0.01)
    robots = figures["robots"]
    assert robots["median_end_mib"] == pytest.approx(900) and robots[
        "median_slope_mib_per_min"
    ] == pytest.approx(0.0, abs=1e-6)
    two = np.array([0.0, 60.0])
    assert slope_mib_per_min(two, two) is None  # no trend from two samples


def _log(path: Path, episode_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"episode_id": e, "robot_id": path.parent.name}) + "\n" for e in episode_ids)
    )


def test_the_accounting_finds_lost_duplicated_and_left_behind_episodes(tmp_path: Path) -> None:
    replay = EpisodeStore(tmp_path / "learner" / "replay")
    committed = [make_episode(4, cameras=(), robot_id="robot-0", seed=i) for i in range(3)]
    for episode in committed:
        replay.append(episode)
    replay.append(make_episode(4, cameras=(), robot_id="demo", seed=9))  # an offline demonstration: not ours
    ids = [e.episode_id for e in committed]
    _log(tmp_path / "robots" / "robot-0" / "episodes.jsonl", ids)
    clean = account_episodes(tmp_path, ["robot-0"])
    assert (clean["logged"], clean["committed"], clean["lost"], clean["duplicated"]) == (3, 3, [], [])

    missing = make_episode(4, cameras=(), robot_id="robot-1", seed=5)
    EpisodeStore(tmp_path / "robots" / "robot-1" / "spool").append(missing)  # never uploaded
    _log(tmp_path / "robots" / "robot-1" / "episodes.jsonl", [missing.episode_id, missing.episode_id])
    found = account_episodes(tmp_path, ["robot-0", "robot-1"])
    assert found["lost"] == [missing.episode_id]
    assert found["duplicated"] == [missing.episode_id]  # logged twice
    assert found["left_in_spools"] == 1
