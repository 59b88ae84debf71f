"""The simulated operator acting through the console's API (the page's protocol), not on the robot: it
takes over a real robot daemon whose policy stalls, drives it to the goal with teleop actions, hands back,
and the learner records those frames as driven by its console account."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from learner_fixtures import RunningLearner, start_robot_daemon, wait_for
from test_console import PASSWORD, add_accounts

from cloud_learner.config import ConsoleConfig
from cloud_learner.console.accounts import ConsoleRole
from fleet_harness.console_operator import ConsoleSimulatedOperator
from sop.episode import INTERVENTION, Outcome, operator_frames

pytestmark = pytest.mark.slow


def test_the_simulated_operator_drives_a_stalled_robot_through_the_console(
    start_learner: Callable[..., RunningLearner], tmp_path: Path
) -> None:
    add_accounts(tmp_path / "run", {"sim-operator": ConsoleRole.OPERATOR})
    learner = start_learner(console=ConsoleConfig(address="127.0.0.1:0", update_interval_s=0.1))
    assert learner.service.console is not None
    daemon = start_robot_daemon(learner, "robot-1", tmp_path, task="reach-v3", max_episode_steps=360)
    operator = ConsoleSimulatedOperator(
        learner.service.console.url, "sim-operator", PASSWORD, {"robot-1": "reach-v3"}
    )
    try:
        wait_for(lambda: learner.service.relay.connected_robots() == ["robot-1"], timeout=30)
        operator.start()

        def driven_episodes() -> list[str]:
            return [
                info.episode_id
                for info in learner.service.store.list()
                if "sim-operator" in operator_frames(info.extra, info.num_steps)
            ]

        wait_for(lambda: bool(driven_episodes()), timeout=60)
    finally:
        operator.stop()
        daemon.stop()
    stats = operator.stats["robot-1"]
    assert stats.take_overs >= 1 and stats.teleops > 0 and not stats.refused
    episode = learner.service.store.get(driven_episodes()[0])
    flags = episode.steps[INTERVENTION]
    (ranges,) = operator_frames(episode.extra, episode.num_steps, flags).values()
    start = ranges[0][0]
    assert start > 0, "the policy drove first; the operator took over when it stalled"
    # The operator's hands (the scripted expert, through teleop) got the reach done.
    assert episode.outcome is Outcome.SUCCESS, (episode.outcome, ranges, time.time())
    assert not np.allclose(episode.steps["action"][flags], 0.01)
