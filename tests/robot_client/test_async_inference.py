"""Asynchronous inference (robot_client/async_inference.py): the control thread never computes a chunk, a
chunk's delay is skipped rather than replayed, RTI's warm start shifts by the ticks between observations,
late ticks hold the robot and are counted, and hand-backs and refused outputs drop what was planned before."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from robot_fakes import ACTION_DIM, ConfigFactory, FakePolicy, FakeRobot, FaultyPolicy, ScriptedOperator

from robot_client.async_inference import AsyncChunkRunner
from robot_client.config import ControlConfig, InferenceMode, PolicyConfig
from robot_client.daemon import RobotDaemon
from sop.episode import ACTION, INTERVENTION, POLICY_ACTION
from sop.policies.base import ActionChunk


class TickPolicy(FakePolicy):
    """Plans `actions[i] = t + i` from an observation of tick t (FakeRobot's state[2] is its step count), so
    an action executed at tick k equals k exactly when the chunk's delay was skipped correctly. Records
    the thread of every chunk and the shift the runner passed for the warm start."""

    def __init__(self, execution_horizon: int = 4, seconds: float = 0.0) -> None:
        super().__init__(1, execution_horizon=execution_horizon)
        self.seconds = seconds
        self.threads: list[str] = []
        self.shifts: list[int] = []
        self.planned_at: list[int] = []
        self.release: threading.Event | None = None  # set: chunks wait for it

    def plan_chunk(self, history: Sequence[dict[str, Any]], steps_since_last_chunk: int) -> ActionChunk:
        self.shifts.append(steps_since_last_chunk)
        return super().plan_chunk(history, steps_since_last_chunk)

    def predict_chunk(self, observation: Any, warm_start: torch.Tensor | None = None) -> ActionChunk:
        history = self._as_history(observation)
        tick = int(history[-1]["state"][2])
        self.threads.append(threading.current_thread().name)
        self.planned_at.append(tick)
        if self.release is not None:
            self.release.wait(10)
        if self.seconds:
            time.sleep(self.seconds)
        actions = (tick + np.arange(12, dtype=np.float32))[:, None].repeat(self.action_dim, axis=1)
        return ActionChunk(actions, torch.zeros(12, self.action_dim), 1, warm_start is not None)


def observation(tick: int) -> dict[str, Any]:
    return {"state": np.array([0.0, 0.0, tick, 1.0], dtype=np.float32), "instruction": "", "task": "t"}


def wait_until_idle(runner: AsyncChunkRunner, tick: int) -> None:
    """Let the inference thread finish (the test's stand-in for a tick period passing)."""
    deadline = time.monotonic() + 5
    while runner.in_flight and runner._results.empty() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_chunks_delay_is_skipped_and_the_warm_start_shifts_by_the_ticks_between_observations() -> None:
    policy = TickPolicy(execution_horizon=4)
    runner = AsyncChunkRunner(lead_steps=1)
    try:
        assert runner.start_episode(policy, observation(0)) == pytest.approx([0.0, 0.0])
        executed = []
        for tick in range(1, 30):
            action = runner.action(tick, observation(tick), time.perf_counter())
            assert action is not None, f"tick {tick} had no action although inference is instant"
            executed.append(float(action[0]))
            wait_until_idle(runner, tick)
        assert executed == list(range(1, 30)), "an action ran at a tick it was not planned for"
        # Chunks start Ta - lead = 3 ticks after the previous chunk's observation, and the warm start of
        # each is shifted by exactly those 3 ticks.
        assert policy.planned_at[:4] == [0, 3, 6, 9]
        assert policy.shifts[1:4] == [3, 3, 3]
        # Every chunk, the episode's first (solved before the grid starts) included, ran on the inference thread.
        assert set(policy.threads) == {"sop-inference"}
    finally:
        runner.close()


def test_late_inference_holds_without_waiting_and_runs_on_into_the_current_chunk() -> None:
    policy = TickPolicy(execution_horizon=4)
    runner = AsyncChunkRunner(lead_steps=1)
    try:
        runner.start_episode(policy, observation(0))
        policy.release = threading.Event()  # every later chunk blocks until released
        actions = []
        for tick in range(1, 16):
            t0 = time.perf_counter()
            actions.append(runner.action(tick, observation(tick), t0))
            assert time.perf_counter() - t0 < 0.5, "the control thread waited for inference"
        # The chunk asked for at tick 3 never came: the first chunk's 12 actions ran (ticks 1..11), then
        # the robot has nothing: None, counted.
        assert [a[0] for a in actions[:11] if a is not None] == list(range(1, 12))
        assert actions[11:] == [None] * 4 and runner.late_steps == 4
        policy.release.set()
        wait_until_idle(runner, 16)
        # Planned at tick 3 and arriving 13 ticks late, the whole chunk is stale: skipped, none of it runs.
        assert runner.action(16, observation(16), time.perf_counter()) is None
        wait_until_idle(runner, 17)
        resumed = runner.action(17, observation(17), time.perf_counter())
        assert resumed is not None and resumed[0] == 17.0 and runner.late_steps == 5
    finally:
        runner.close()


def test_a_hand_back_drops_the_chunk_in_flight_and_warm_starts_from_the_executed_actions() -> None:
    policy = TickPolicy(execution_horizon=4)
    runner = AsyncChunkRunner(lead_steps=1)
    try:
        runner.start_episode(policy, observation(0))
        policy.release = threading.Event()
        for tick in range(1, 4):
            runner.action(tick, observation(tick), time.perf_counter())
        assert runner.in_flight  # asked for at tick 3
        executed = np.full((4, ACTION_DIM), 0.5, dtype=np.float32)
        runner.continue_from_actions(executed)
        policy.release.set()
        wait_until_idle(runner, 4)
        assert runner.action(4, observation(4), time.perf_counter()) is None  # the stale chunk was dropped
        wait_until_idle(runner, 5)
        action = runner.action(5, observation(5), time.perf_counter())
        assert action is not None and action[0] == 5.0
        assert policy.planned_at[-1] == 4  # the new chunk saw the tick after the hand-back
        (handoff,) = policy.handoffs
        assert np.allclose(handoff, 0.5)
    finally:
        runner.close()


def test_a_policy_that_raises_is_reported_once_and_the_next_chunk_is_a_full_solve() -> None:
    errors: list[Exception] = []
    policy = FaultyPolicy(1, "raise", bad_chunks={1})
    runner = AsyncChunkRunner(lead_steps=1, on_error=errors.append)
    try:
        runner.start_episode(policy, observation(0))
        invalidations = policy.invalidations
        results = []
        for tick in range(1, 12):
            results.append(runner.action(tick, observation(tick), time.perf_counter()))
            wait_until_idle(runner, tick)
        assert len(errors) == 1
        assert policy.invalidations == invalidations + 1  # "cold" before the chunk after the failure
        assert all(a is None or np.allclose(a, 0.01) for a in results)
    finally:
        runner.close()


def test_the_daemon_never_computes_a_chunk_on_the_control_thread_and_counts_late_ticks(
    robot_config: ConfigFactory,
) -> None:
    """A chunk takes 40 ms, a tick 5 ms: synchronously every chunk would overrun; asynchronously the robot
    runs on into the chunk and holds (counted) when it runs out."""
    policy = TickPolicy(execution_horizon=4, seconds=0.04)
    robot = FakeRobot()
    config = robot_config(None, control=ControlConfig(rate_hz=200.0, max_episode_steps=60, telemetry_hz=50.0))
    assert config.policy.inference is InferenceMode.ASYNC  # the default
    daemon = RobotDaemon(config, robot=robot, base_policy=policy)
    (summary,) = daemon.run(max_episodes=1)
    assert summary.steps == 60
    assert set(policy.threads) == {"sop-inference"}
    executed = np.stack(robot.actions)[:, 0]
    held = executed == 0.0
    late = daemon.metrics.snapshot()["inference_late_steps"]
    assert late > 0 and held[1:].sum() == late  # tick 0's planned action is 0 too
    ticks = np.arange(60)
    assert np.array_equal(executed[~held], ticks[~held]), "an action ran at a tick it was not planned for"
    assert daemon.spool is not None
    episode = daemon.spool.read(daemon.spool.pending()[0].episode_id)
    assert not episode.steps[INTERVENTION].any()  # a held tick is not an operator label
    assert np.array_equal(episode.steps[ACTION][:, 0], executed)
    assert np.array_equal(episode.steps[POLICY_ACTION][:, 0], executed)


def test_a_hand_back_in_the_daemon_holds_until_the_warm_started_chunk_arrives(
    robot_config: ConfigFactory,
) -> None:
    policy = FakePolicy(1, execution_horizon=4)
    robot = FakeRobot()
    operator = ScriptedOperator(3, 6, action=0.5)
    daemon = RobotDaemon(robot_config(None), robot=robot, operator=operator, base_policy=policy)
    (summary,) = daemon.run(max_episodes=1)
    assert summary.steps == 12 and summary.take_overs == 1
    assert daemon.spool is not None
    episode = daemon.spool.read(daemon.spool.pending()[0].episode_id)
    assert episode.steps[INTERVENTION].tolist() == [False] * 3 + [True] * 3 + [False] * 6
    actions = episode.steps[ACTION][:, 0]
    assert np.allclose(actions[3:6], 0.5)
    # Step 6 (the hand-back) runs the policy's proposal; then the robot holds until the chunk warm-started
    # from the executed actions is there, and the policy drives again.
    (handoff,) = policy.handoffs
    assert np.allclose(handoff[-4:-1], 0.5) and np.allclose(handoff[-1], 0.01)
    after = actions[7:]
    held = after == 0.0
    assert held[0], "the tick after the hand-back ran a chunk planned before it"
    assert np.allclose(after[~held], 0.01)
    assert daemon.metrics.snapshot()["inference_late_steps"] == held.sum()


def test_sync_inference_and_free_running_compute_in_the_tick(robot_config: ConfigFactory) -> None:
    for overrides in (
        {"policy": PolicyConfig(inference=InferenceMode.SYNC)},
        {"control": ControlConfig(free_running=True, max_episode_steps=12)},
    ):
        policy = TickPolicy(execution_horizon=4)
        daemon = RobotDaemon(robot_config(None, **overrides), robot=FakeRobot(), base_policy=policy)
        daemon.run(max_episodes=1)
        assert "sop-inference" not in policy.threads
        assert policy.planned_at == [0, 4, 8]


def test_policy_inference_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="inference"):
        PolicyConfig(inference="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inference_lead_steps"):
        PolicyConfig(inference_lead_steps=-1)


@pytest.mark.parametrize("bad_chunk", [0, 1])
def test_a_failed_chunk_in_the_daemon_is_counted_once_and_held(
    bad_chunk: int, robot_config: ConfigFactory
) -> None:
    """The episode's first chunk (solved before the grid) or a later one raises: one policy error, the robot
    holds until the next chunk (a full solve), and the episode runs to its end."""
    robot = FakeRobot()
    daemon = RobotDaemon(
        robot_config(None), robot=robot, base_policy=FaultyPolicy(1, "raise", bad_chunks={bad_chunk})
    )
    (summary,) = daemon.run(max_episodes=1)
    assert summary.steps == 12
    refused = {
        tuple(sample.labels.values()): sample.value
        for family in daemon.metrics.commands_refused.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert refused == {("policy", "policy_error"): 1.0}
    executed = np.stack(robot.actions)[:, 0]
    assert np.all((executed == 0.0) | np.isclose(executed, 0.01))
    assert (executed == 0.0).sum() == daemon.metrics.snapshot()["inference_late_steps"] >= 1
