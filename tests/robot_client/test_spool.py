"""The spool: what a restart does with a half-written episode, and the size cap's eviction policy."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from robot_fakes import ConfigFactory, FakePolicy, FakeRobot, ScriptedOperator, leave_partial_episode

from robot_client.config import PartialEpisodePolicy, SpoolConfig
from robot_client.daemon import RobotDaemon
from robot_client.metrics import RobotMetrics
from robot_client.recorder import EpisodeRecorder, Spool
from sop.episode import ACTION, INTERVENTION, Outcome, new_episode_id


def partial_counts(metrics: RobotMetrics) -> dict[str, float]:
    return {
        sample.labels["action"]: sample.value
        for family in metrics.partial_episodes.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_a_partial_episode_is_recovered_as_aborted(robot_config: ConfigFactory) -> None:
    config = robot_config(None)
    episode_id = leave_partial_episode(config.spool_dir, steps=13)  # flushed: 10 of 13 (flush_every=5)
    daemon = RobotDaemon(config, robot=FakeRobot(), base_policy=FakePolicy(1))
    daemon.start(max_episodes=1)
    assert daemon.wait(10)
    daemon.stop()
    assert daemon.recovered == [episode_id]
    assert daemon.spool is not None
    recovered = daemon.spool.read(episode_id)
    assert recovered.outcome is Outcome.ABORTED
    assert recovered.num_steps == 10
    assert recovered.steps[INTERVENTION].tolist() == [bool(i % 2) for i in range(10)]
    assert partial_counts(daemon.metrics) == {"recovered": 1.0}
    assert len(daemon.spool.pending()) == 2  # the recovered one and the new one


def test_a_partial_episode_is_discarded_when_configured(robot_config: ConfigFactory) -> None:
    config = robot_config(None)
    config = replace(config, spool=replace(config.spool, partial_episodes=PartialEpisodePolicy.DISCARD))
    leave_partial_episode(config.spool_dir, steps=7)
    metrics = RobotMetrics("robot-1")
    spool = Spool(config.spool_dir, config.quarantine_dir, config.spool, metrics)
    assert spool.recover_partials() == []
    assert spool.store.partial_episodes() == [] and spool.pending() == []
    assert partial_counts(metrics) == {"discarded": 1.0}


def record(recorder: EpisodeRecorder, steps: int, intervening: bool, started_at: float) -> str:
    episode_id = new_episode_id()
    recorder.begin(episode_id, "robot-1", "fake-task", "move", 30.0, started_at)
    for i in range(steps):
        recorder.add_step(
            {
                "observation.state": np.zeros(4, np.float32),
                ACTION: np.zeros(2, np.float32),
                "policy_action": np.zeros(2, np.float32),
                INTERVENTION: np.bool_(intervening and i == 1),
                "policy_version": np.int64(1),
                "timestamp": np.float64(started_at + i),
                "reward": np.float32(0),
            }
        )
    recorder.finish(Outcome.TIMEOUT, started_at + steps)
    assert recorder.drain(5)
    return episode_id


def test_a_full_spool_evicts_autonomous_episodes_first_then_stops_recording(tmp_path: Path) -> None:
    metrics = RobotMetrics("robot-1")
    roomy = SpoolConfig(durable=False)
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine", roomy, metrics)
    recorder = EpisodeRecorder(spool, roomy, metrics)
    recorder.start()
    autonomous_old = record(recorder, 20, intervening=False, started_at=1000.0)
    with_intervention = record(recorder, 20, intervening=True, started_at=2000.0)
    autonomous_new = record(recorder, 20, intervening=False, started_at=3000.0)
    recorder.stop()
    assert [i.episode_id for i in spool.pending()] == [autonomous_old, with_intervention, autonomous_new]

    # The same spool, now with a cap below what it holds.
    tiny = SpoolConfig(durable=False, max_bytes=1)
    spool = Spool(tmp_path / "spool", tmp_path / "quarantine", tiny, metrics)
    recorder = EpisodeRecorder(spool, tiny, metrics, busy=lambda: {autonomous_new})
    recorder.start()
    refused = record(recorder, 5, intervening=False, started_at=4000.0)
    recorder.stop()
    kept = [i.episode_id for i in spool.pending()]
    # The oldest autonomous episode went; the one being uploaded and the intervention episode stayed.
    assert kept == [with_intervention, autonomous_new]
    assert refused not in kept
    snapshot = metrics.snapshot()
    assert snapshot["spool_evicted"] == 1
    assert snapshot["episodes_not_recorded"] == 1


def test_a_clean_stop_mid_episode_keeps_the_steps_as_aborted(robot_config: ConfigFactory) -> None:
    config = robot_config(None)
    config = replace(config, control=replace(config.control, rate_hz=100.0, max_episode_steps=10_000))
    daemon = RobotDaemon(
        config, robot=FakeRobot(), operator=ScriptedOperator(0, 3), base_policy=FakePolicy(1)
    )
    daemon.start(max_episodes=1)
    time.sleep(0.3)
    daemon.stop()
    (summary,) = daemon.summaries
    assert summary.outcome is Outcome.ABORTED and summary.steps > 5
    assert daemon.spool is not None
    (info,) = daemon.spool.pending()
    assert info.outcome is Outcome.ABORTED and info.num_steps == summary.steps
    assert daemon.spool.store.partial_episodes() == []


def test_a_free_running_robot_waits_for_the_spool_writer_instead_of_dropping_steps(tmp_path: Path) -> None:
    """A queue of two steps and a writer that flushes every step: far slower than the control side."""
    config = SpoolConfig(durable=False, recorder_queue_steps=2, flush_every_steps=1)
    counts = {}
    for wait in (True, False):
        metrics = RobotMetrics("robot-1")
        spool = Spool(tmp_path / f"spool-{wait}", tmp_path / f"quarantine-{wait}", config, metrics)
        recorder = EpisodeRecorder(spool, config, metrics, wait_when_full=wait)
        recorder.start()
        episode_id = record(recorder, 200, intervening=False, started_at=1000.0)
        recorder.stop()
        counts[wait] = spool.store.info(episode_id).num_steps
        assert (metrics.snapshot()["recorder_dropped_steps"] == 0) is wait
    assert counts[True] == 200
    assert counts[False] < 200  # what a real-time robot does instead of missing its deadline
