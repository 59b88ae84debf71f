"""The control loop: observation -> policy proposal -> intervention gate -> robot, at a fixed rate, on its
own thread; every step goes to the recorder, every few steps a telemetry snapshot to the console.

Timing. Ticks are scheduled on an absolute grid (t0 + k * period), so sleep overshoots never accumulate.
A tick whose work runs past the next tick's start is a deadline miss: it is counted
(`sop_robot_deadline_misses`), the late period shows in the period-error figures, and the grid is
re-anchored at the late tick rather than run in a burst to catch up. Nothing is absorbed silently. In
free-running mode (simulation) there is no grid: the loop runs as fast as the CPU allows.

Policies. On its grid the loop gets actions from an `AsyncChunkRunner` (robot_client/async_inference.py,
`policy.inference: async`, the default): an inference thread plans the next chunk while the current one
executes, so no tick waits for inference; a tick with no action ready holds the robot and is counted
(`sop_robot_inference_late_steps`). With `policy.inference: sync`, and always when free-running, the
policy runs its action-chunk queue behind `act()` inside the tick, and the loop measures the calls that
computed a chunk as inference time. A new checkpoint, loaded in the background by PolicySync, is taken
from the `PolicySlot` only at an episode boundary (default) or, when configured, at an action-chunk
boundary, and always starts with a cold solve (RTI's `cold_start`; asynchronous, the current chunk keeps
executing meanwhile). When the operator hands control back, the policy continues from the actions the
robot executed (`Policy.continue_from_actions`): RTI warm-starts from them instead of a cold solve inside
the grid (asynchronous, the robot holds for the ticks that chunk takes).

Bad inputs. A policy that raises, or answers with the wrong shape or a NaN, and an operator command of the
wrong shape or with a NaN never end the loop: the gate (`intervention_gate.py`) refuses the command, the
robot executes its safe action for that step, and the refusal is counted and logged (rate-limited). A
refused policy output also drops the policy's queued chunk, so the next step asks for a fresh full solve
instead of replaying the rest of a NaN chunk or warm-starting from it. The newest observation is kept in
`latest_observation` for PolicySync's dry run of a new checkpoint.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_client.async_inference import AsyncChunkRunner
from robot_client.config import InferenceMode, RobotConfig
from robot_client.intervention_gate import InterventionGate
from robot_client.metrics import RobotMetrics
from robot_client.operator_session import TelemetrySnapshot
from robot_client.operators import OperatorPanel
from robot_client.policy_sync import LoadedPolicy, PolicySlot
from robot_client.recorder import EpisodeRecorder
from robot_client.robots import Observation, Robot
from sop.episode import (
    ACTION,
    IMAGE_PREFIX,
    INTERVENTION,
    OPERATOR_FRAMES,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Outcome,
    encode_operator_frames,
    new_episode_id,
)
from sop.safe_logging import RateLimitedLog, client_str

# Executed actions kept for a hand-back's warm start (a policy uses its last To-1 of them).
RECENT_ACTIONS_KEPT = 8

log = logging.getLogger(__name__)


class Pacer:
    """Fixed-rate ticks on an absolute grid; reports each tick's period and counts overruns."""

    def __init__(self, period_s: float, free_running: bool, metrics: RobotMetrics) -> None:
        self.period_s = period_s
        self.free_running = free_running
        self.metrics = metrics
        self._next = 0.0
        self._last_start: float | None = None
        self.tick_start = 0.0

    def restart(self) -> None:
        """A new episode: the grid starts now and the first tick has no previous tick to compare with."""
        self._next = time.perf_counter()
        self._last_start = None

    def wait(self) -> None:
        """Sleep until this tick's slot, then mark the tick's start."""
        if not self.free_running:
            remaining = self._next - time.perf_counter()
            if remaining > 0:
                time.sleep(remaining)
        self.tick_start = time.perf_counter()

    def done(self) -> None:
        """The tick's work is finished: record its timing and find the next slot."""
        end = time.perf_counter()
        start = self.tick_start
        period = None if self._last_start is None else start - self._last_start
        self._last_start = start
        self.metrics.record_tick(period if not self.free_running else None, self.period_s, end - start)
        if self.free_running:
            return
        self._next += self.period_s
        if end > self._next:
            self.metrics.deadline_misses.inc()
            self._next = end  # re-anchor: run the next tick now, late, and keep the period from there


@dataclass
class EpisodeSummary:
    episode_id: str
    outcome: Outcome
    steps: int
    intervention_steps: int
    policy_versions: list[int] = field(default_factory=list)  # the version of every step, in order
    success: bool = False
    task: str = ""
    take_overs: int = 0
    ended_at: float = 0.0

    def log_record(self, robot_id: str) -> dict[str, object]:
        """One line of the episode log (JSON): what the fleet harness plots and reports."""
        return {
            "robot_id": robot_id,
            "episode_id": self.episode_id,
            "task": self.task,
            "outcome": str(self.outcome),
            "num_steps": self.steps,
            "intervention_frames": self.intervention_steps,
            "take_overs": self.take_overs,
            "policy_version": self.policy_versions[-1] if self.policy_versions else 0,
            "ended_at": self.ended_at,
        }


def set_realtime_priority(priority: int) -> bool:
    """Put the calling thread in SCHED_FIFO; False (logged) when the system does not allow it."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as exc:
        log.warning(
            "control.realtime_priority=%d not applied (%s); running with normal scheduling", priority, exc
        )
        return False
    return True


class ControlLoop:
    def __init__(
        self,
        config: RobotConfig,
        robot: Robot,
        panel: OperatorPanel,
        recorder: EpisodeRecorder,
        slot: PolicySlot,
        metrics: RobotMetrics,
        initial_policy: LoadedPolicy | None = None,
        telemetry: Callable[[TelemetrySnapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.robot = robot
        self.panel = panel
        self.recorder = recorder
        self.slot = slot
        self.metrics = metrics
        self.telemetry = telemetry
        self.current = initial_policy
        self.gate = InterventionGate(robot.hold_action, robot.action_dim, robot.safe_action, metrics)
        self.throttled = RateLimitedLog(log, interval_s=5.0)
        # The newest observation the robot returned (read by other threads: one reference, swapped whole).
        self.latest_observation: Observation | None = None
        self.pacer = Pacer(config.control.period_s, config.control.free_running, metrics)
        self.summaries: list[EpisodeSummary] = []
        self._steps_in_chunk = 0
        # Chunks on an inference thread (robot_client/async_inference.py) when the loop keeps a grid;
        # created by `run`.
        self.asynchronous = config.policy.inference is InferenceMode.ASYNC and not config.control.free_running
        self.runner: AsyncChunkRunner | None = None
        if initial_policy is not None:
            metrics.policy_version.set(initial_policy.version)

    @property
    def policy_version(self) -> int:
        return self.current.version if self.current is not None else 0

    # Swapping ---------------------------------------------------------------------------------------------

    def _swap_if_pending(self, where: str) -> bool:
        pending = self.slot.take()
        if pending is None:
            return False
        if self.current is not None and pending.version <= self.current.version:
            log.info("ignoring pending policy v%d: v%d already runs", pending.version, self.current.version)
            if pending.refillable:
                self.slot.retire(pending.policy)
            return False
        previous = self.policy_version
        if self.current is not None and self.current.refillable:
            self.slot.retire(self.current.policy)
        self.current = pending
        pending.policy.reset()
        self._steps_in_chunk = 0
        self.metrics.policy_swaps.inc()
        self.metrics.policy_version.set(pending.version)
        log.info("swapped policy v%d -> v%d at %s boundary", previous, pending.version, where)
        return True

    def _at_chunk_boundary(self) -> bool:
        horizon = int(getattr(self.current.policy, "execution_horizon", 1)) if self.current else 1
        return self._steps_in_chunk == 0 or self._steps_in_chunk >= horizon

    def _propose(self, observation: Observation) -> np.ndarray | None:
        """The policy's action for this observation, None when it raised (the gate then holds the robot);
        a call that computed a chunk counts as inference."""
        assert self.current is not None
        policy = self.current.policy
        before = getattr(policy, "chunks_predicted", None)
        t0 = time.perf_counter()
        try:
            action = np.asarray(policy.act(observation.policy_input()), dtype=np.float32)
        except Exception as exc:  # one bad step of the policy must not end the loop: counted by the gate
            self.throttled.warning(
                "policy-error",
                "policy v%d raised %s: %s; the robot executes its safe action",
                self.current.version,
                type(exc).__name__,
                client_str(exc, 200),
            )
            self._steps_in_chunk = 0
            return None
        elapsed = time.perf_counter() - t0
        if before is None or policy.chunks_predicted != before:  # type: ignore[attr-defined]
            self.metrics.record_inference(elapsed, bool(getattr(policy, "last_chunk_warm_started", True)))
            self._steps_in_chunk = 0
        self._steps_in_chunk += 1
        return action

    def _wait_for_first_policy(self, stop: threading.Event) -> bool:
        if self.current is not None:
            return True
        log.warning("no base and no last good checkpoint: waiting for the learner's first checkpoint")
        while not stop.is_set():
            if self.slot.available.wait(0.1) and self._swap_if_pending("start"):
                return True
        return False

    # Running ----------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, max_episodes: int = 0) -> list[EpisodeSummary]:
        """Run episodes until `stop` is set or `max_episodes` (0: no limit) have finished."""
        set_realtime_priority(self.config.control.realtime_priority)
        if self.asynchronous and self.runner is None:
            self.runner = AsyncChunkRunner(
                self.config.policy.inference_lead_steps,
                on_chunk=self.metrics.record_inference,
                on_error=self._chunk_failed,
            )
        try:
            while not stop.is_set() and (max_episodes == 0 or len(self.summaries) < max_episodes):
                if not self._wait_for_first_policy(stop):
                    break
                summary = self.run_episode(stop)
                self.summaries.append(summary)
                self._append_episode_log(summary)
                if self.config.control.episode_gap_s and not stop.is_set():
                    stop.wait(self.config.control.episode_gap_s)
        finally:
            if self.runner is not None:
                self.runner.close()
                self.runner = None
        return self.summaries

    def _chunk_failed(self, error: Exception) -> None:
        """The inference thread's policy raised planning a chunk (logged by the runner): counted as the
        synchronous path counts a policy that raised."""
        self.gate.count_policy_error()

    def _append_episode_log(self, summary: EpisodeSummary) -> None:
        path = self.config.metrics.episode_log
        if path is None:
            return
        line = json.dumps(summary.log_record(self.config.robot_id)) + "\n"
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as log_file:
                log_file.write(line)
        except OSError as exc:
            log.error("cannot append to the episode log %s: %s", path, exc)

    def _snapshot(
        self,
        episode_id: str,
        step: int,
        observation: Observation,
        intervening: bool,
        outcome: str = "",
        actions: tuple[np.ndarray | None, np.ndarray] | None = None,
    ) -> TelemetrySnapshot:
        """`actions`: the last step's (policy proposal, executed action)."""
        frame = next(iter(observation.images.values())) if observation.images else None
        return TelemetrySnapshot(
            episode_id,
            step,
            observation.task,
            observation.instruction,
            self.policy_version,
            intervening,
            observation.state,
            frame,
            time.time(),
            outcome,
            *(actions or (None, None)),
        )

    def run_episode(self, stop: threading.Event) -> EpisodeSummary:
        config = self.config
        self._swap_if_pending("episode")
        assert self.current is not None
        self.current.policy.reset()
        self._steps_in_chunk = 0
        self.gate.reset()
        episode_id = new_episode_id()
        observation = self.robot.start_episode()
        self.latest_observation = observation
        started_at = time.time()  # the first observation's time stamp
        self.panel.begin_episode(episode_id, observation)
        self.recorder.begin(
            episode_id,
            config.robot_id,
            observation.task,
            observation.instruction,
            config.control.rate_hz,
            started_at,
        )
        telemetry_every = max(1, round(config.control.rate_hz / config.control.telemetry_hz))
        swap_at_chunks = config.policy.swap_at == "chunk"
        versions: list[int] = []
        drivers: list[str | None] = []  # who drove each step: None for the policy, else the operator's id
        last_actions: tuple[np.ndarray | None, np.ndarray] | None = None  # the last step's, for the console
        success = False
        label: Outcome | None = None
        done = False
        stopped = False
        interventions = 0
        take_overs = 0
        step = 0
        recent_actions: collections.deque[np.ndarray] = collections.deque(maxlen=RECENT_ACTIONS_KEPT)
        # The first chunk of an episode is a full solve (no warm start yet): it is computed before the
        # grid starts, while the robot stands at its start pose, instead of stalling the first tick.
        runner = self.runner
        if runner is not None:
            first_action = runner.start_episode(self.current.policy, observation.policy_input())
        else:
            first_action = self._propose(observation)
        first_step = True
        self.pacer.restart()
        while not done and step < config.control.max_episode_steps:
            if stop.is_set():
                stopped = True
                break
            self.pacer.wait()
            stamp = time.time() if step else started_at
            late = False
            if first_step:
                policy_action, first_action, first_step = first_action, None, False
                # Asynchronous, a failed first chunk was counted by the runner (on_error): hold, once.
                late = runner is not None and policy_action is None
            elif runner is not None:
                if (
                    swap_at_chunks
                    and self.slot.pending_version is not None
                    and runner.at_chunk_boundary(step)
                    and self._swap_if_pending("chunk")
                ):
                    runner.set_policy(self.current.policy)
                policy_action = runner.action(step, observation.policy_input(), self.pacer.tick_start)
                late = policy_action is None
            else:
                if swap_at_chunks and self._at_chunk_boundary() and self.slot.pending_version is not None:
                    self._swap_if_pending("chunk")
                policy_action = self._propose(observation)
            policy = self.current.policy

            if late:
                # Inference has not delivered this tick's action: the robot holds (not a refusal).
                self.metrics.inference_late_steps.inc()
                proposal = self.gate.hold_proposal(observation)
            else:
                proposal = self.gate.check_policy(observation, policy_action)
            decision = self.panel.step(observation, proposal.action, success)
            gate = self.gate.decide(observation, proposal, decision)
            if gate.took_over:
                self.metrics.takeovers.inc()
                take_overs += 1
            if gate.policy_refused:
                # Refused output: the rest of its chunk (and a warm start from it) is as bad; the next step
                # solves afresh.
                if runner is not None:
                    runner.invalidate()
                else:
                    policy.invalidate_warm_start()
                self._steps_in_chunk = 0
            if decision.event:
                log.info("episode %s step %d: %s", episode_id[:8], step, decision.event)
            if decision.outcome is not None:
                label = decision.outcome

            # Observation -> action: from the start of the tick whose observation the action was planned
            # on (asynchronous: an earlier tick's) to the action going to the robot.
            observed_at = self.pacer.tick_start
            if runner is not None and not late and runner.chunk_observed_at is not None:
                observed_at = min(observed_at, runner.chunk_observed_at)
            self.metrics.action_latency.add(time.perf_counter() - observed_at)
            result = self.robot.step(gate.action)
            executed = result.applied_action if result.applied_action is not None else gate.action
            recent_actions.append(np.asarray(executed, dtype=np.float32))
            if gate.handed_back and not gate.policy_refused:
                # The queued chunk assumed a trajectory the robot left while the operator drove; the next
                # chunk starts from what was executed (RTI: a warm start, not a full solve in the grid).
                if runner is not None:
                    runner.continue_from_actions(np.stack(recent_actions))
                else:
                    policy.continue_from_actions(np.stack(recent_actions))
                self._steps_in_chunk = 0
            # The version whose output this step's policy action is (asynchronous, after a swap at a chunk
            # boundary: the previous policy's until the new one's first chunk arrives).
            version = runner.chunk_version if runner is not None else self.current.version
            record = {
                STATE: observation.state,
                ACTION: executed,
                POLICY_ACTION: gate.policy_action,
                INTERVENTION: np.bool_(gate.intervening),
                POLICY_VERSION: np.int64(version),
                TIMESTAMP: np.float64(stamp),
                REWARD: np.float32(result.reward),
            }
            for camera, image in observation.images.items():
                record[IMAGE_PREFIX + camera] = image
            self.recorder.add_step(record)
            versions.append(version)
            drivers.append((decision.operator_id or "operator") if gate.intervening else None)
            last_actions = (gate.policy_action, np.asarray(executed, dtype=np.float32))
            interventions += int(gate.intervening)
            success = success or result.success
            step += 1
            done = result.done or decision.end_episode or (success and config.control.end_on_success)
            if self.telemetry is not None and step % telemetry_every == 0:
                self.telemetry(
                    self._snapshot(
                        episode_id,
                        step,
                        result.observation,
                        gate.intervening,
                        actions=last_actions,
                    )
                )
            observation = result.observation
            self.latest_observation = observation
            self.pacer.done()

        if runner is not None:
            runner.end_episode()
        if self.panel.remote is not None:
            label = self.panel.remote.take_label(episode_id) or label
        if label is not None:
            self.metrics.operator_labels.labels("applied").inc()
        if stopped:
            outcome = Outcome.ABORTED
        elif label is not None:
            outcome = label
        elif success:
            outcome = Outcome.SUCCESS
        else:
            outcome = Outcome.TIMEOUT
        # Always written ("{}": the policy drove every frame), so a missing entry means "not recorded".
        self.recorder.finish(
            outcome if step > 0 else None, time.time(), {OPERATOR_FRAMES: encode_operator_frames(drivers)}
        )
        self.metrics.episodes.labels(str(outcome)).inc()
        self.metrics.intervention_steps.inc(interventions)
        if self.telemetry is not None:
            self.telemetry(
                self._snapshot(episode_id, step, observation, False, str(outcome), actions=last_actions)
            )
        log.info(
            "episode %s: %s after %d steps (%d under intervention), policy v%s",
            episode_id[:8],
            outcome,
            step,
            interventions,
            sorted(set(versions)),
        )
        return EpisodeSummary(
            episode_id,
            outcome,
            step,
            interventions,
            policy_versions=versions,
            success=success,
            task=observation.task,
            take_overs=take_overs,
            ended_at=time.time(),
        )
