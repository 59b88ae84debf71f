"""`sop bench console`: commands are matched to the ticks that show their effect in the uploaded episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.console import ConsoleBenchConfig, Sent, _latencies
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, INTERVENTION, TIMESTAMP


def test_latency_is_from_the_command_to_the_first_tick_showing_its_effect(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay")
    episode = make_episode(30, cameras=(), robot_id="robot-1")
    episode.steps[TIMESTAMP] = 1000.0 + np.arange(30) / 30.0  # ticks at 30 Hz from t = 1000 s
    flags = np.zeros(30, np.bool_)
    flags[10:25] = True  # the take-over reached tick 10
    episode.steps[INTERVENTION] = flags
    episode.steps[ACTION][:, 0] = 0.01
    episode.steps[ACTION][14:18, 0] = 0.302  # a teleop marker executed from tick 14
    store.append(episode)
    take_over_at = 1000.0 + 9.2 / 30.0
    sent = [
        Sent("robot-1", "take_over", take_over_at),
        Sent("robot-1", "teleop", 1000.0 + 13.5 / 30.0, marker=0.302),
        Sent("robot-1", "teleop", 1000.0 + 20 / 30.0, marker=0.304),  # never executed
        Sent("robot-9", "take_over", 1000.0),  # a robot with no episode
    ]
    latencies = _latencies(sent, tmp_path / "replay")
    assert latencies["take_over"] == [pytest.approx(0.8 / 30.0)]
    assert latencies["teleop"] == [pytest.approx(0.5 / 30.0)]
    assert len(latencies["missing"]) == 2


def test_bad_bench_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="robots"):
        ConsoleBenchConfig(robots=0)
    with pytest.raises(ValueError, match="teleops"):
        ConsoleBenchConfig(teleops=0)
