"""The robot's live session with the operators' console: `Operator.Session`, telemetry up, commands down.

The robot opens the stream (robots stay clients) and keeps it open: re-opened after its deadline and,
with back-off, after a failure. Telemetry is latest-state only at a few Hz (the control loop never waits
for the network: it drops a snapshot into a short buffer); between episodes a keep-alive telemetry goes
out every couple of seconds so the learner's idle-stream timeout does not cut a quiet robot.

Commands are applied to `RemoteCommands`, which the control loop reads each step. If the session breaks
while the console has taken over, control goes back to the policy (logged): the console can no longer
see the robot or hand back, and a simulated fleet must not hold still forever.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from robot_client.config import RobotConfig
from robot_client.learner_channel import Backoff, LearnerChannel, rpc_code, rpc_details
from robot_client.metrics import RobotMetrics
from robot_client.operators import RemoteCommands
from sop.data.codec import CodecError, decode_tensor, encode_tensor
from sop.episode import Outcome
from sop.safe_logging import RateLimitedLog, client_str
from sop.v1 import operator_pb2

log = logging.getLogger(__name__)

KEEPALIVE_S = 1.0
MAX_TELEMETRY_ACTION_DIM = 256


@dataclass(frozen=True)
class TelemetrySnapshot:
    """What the control loop hands over: plain values, turned into a protobuf message on the session thread."""

    episode_id: str
    step: int
    task: str
    instruction: str
    policy_version: int
    intervening: bool
    state: np.ndarray | None
    frame: np.ndarray | None
    timestamp: float
    outcome: str = ""
    policy_action: np.ndarray | None = None  # the last step's proposal
    action: np.ndarray | None = None  # what the robot executed at the last step


class OperatorSession:
    def __init__(
        self, config: RobotConfig, link: LearnerChannel, remote: RemoteCommands, metrics: RobotMetrics
    ) -> None:
        self.config = config
        self.link = link
        self.remote = remote
        self.metrics = metrics
        self._outbox: collections.deque[TelemetrySnapshot] = collections.deque(maxlen=16)
        self._outbox_ready = threading.Condition()
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._thread: threading.Thread | None = None
        self.commands_received = 0
        self.throttled = RateLimitedLog(log, interval_s=5.0)

    # Control-thread side ----------------------------------------------------------------------------------

    def publish(self, snapshot: TelemetrySnapshot) -> None:
        """Queue a snapshot for the console (never blocks for long: one uncontended lock)."""
        with self._outbox_ready:
            self._outbox.append(snapshot)
            self._outbox_ready.notify()

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.config.robot_id}-operator", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():  # else a later stop() (the daemon's second pass) waits again
                self._thread = None

    # Session thread ---------------------------------------------------------------------------------------

    def _message(self, snapshot: TelemetrySnapshot) -> operator_pb2.RobotTelemetry:
        message = operator_pb2.RobotTelemetry(
            robot_id=self.config.robot_id,
            episode_id=snapshot.episode_id,
            step=snapshot.step,
            task=snapshot.task,
            instruction=snapshot.instruction,
            policy_version=snapshot.policy_version,
            intervening=snapshot.intervening,
            timestamp=snapshot.timestamp,
            outcome=snapshot.outcome,
        )
        if snapshot.state is not None:
            message.state.CopyFrom(encode_tensor(snapshot.state, field="state"))
        if snapshot.frame is not None:
            message.frame.CopyFrom(encode_tensor(snapshot.frame, field="frame"))
        if snapshot.policy_action is not None:
            message.policy_action.CopyFrom(encode_tensor(snapshot.policy_action, field="policy_action"))
        if snapshot.action is not None:
            message.action.CopyFrom(encode_tensor(snapshot.action, field="action"))
        return message

    def _telemetry(self, call_done: threading.Event) -> Iterator[operator_pb2.RobotTelemetry]:
        """The request stream of one session: queued snapshots, or a keep-alive when there are none."""
        last_sent = 0.0
        while not call_done.is_set() and not self._stop.is_set():
            with self._outbox_ready:
                if not self._outbox:
                    self._outbox_ready.wait(0.25)
                batch = list(self._outbox)
                self._outbox.clear()
            if call_done.is_set() or self._stop.is_set():
                return
            now = time.time()
            if not batch and now - last_sent >= KEEPALIVE_S:
                batch = [TelemetrySnapshot("", 0, self.config.robot.task, "", 0, False, None, None, now)]
            for snapshot in batch:
                last_sent = now
                yield self._message(snapshot)

    def _apply(self, command: operator_pb2.OperatorCommand) -> None:
        self.commands_received += 1
        kind = command.WhichOneof("command")
        if kind == "take_over":
            self.remote.take_over(command.operator_id, command.take_over.reason)
            log.info(
                "console %s took over: %s",
                client_str(command.operator_id),
                client_str(command.take_over.reason),
            )
        elif kind == "hand_back":
            self.remote.hand_back(command.operator_id, command.hand_back.reason)
            log.info(
                "console %s handed back: %s",
                client_str(command.operator_id),
                client_str(command.hand_back.reason),
            )
        elif kind == "teleop_action":
            try:
                action = decode_tensor(
                    command.teleop_action.action,
                    "teleop_action.action",
                    max_bytes=MAX_TELEMETRY_ACTION_DIM * 8,
                    require_finite=True,
                )
            except CodecError as exc:
                self.metrics.commands_refused.labels("operator", "undecodable").inc()
                self.throttled.warning(
                    "teleop-undecodable",
                    "teleop action from %s refused: %s",
                    client_str(command.operator_id),
                    client_str(exc, 200),
                )
                return
            self.remote.teleop(np.asarray(action, dtype=np.float32).reshape(-1))
        elif kind == "outcome_label":
            label = command.outcome_label
            try:
                outcome = Outcome(label.outcome)
            except ValueError:
                self.metrics.operator_labels.labels("invalid").inc()
                self.throttled.warning(
                    "label-invalid",
                    "outcome label %s from %s is not one of %s",
                    client_str(label.outcome),
                    client_str(command.operator_id),
                    [o.value for o in Outcome],
                )
                return
            self.remote.label(label.episode_id, outcome)
        else:
            self.throttled.warning(
                "empty-command", "empty operator command from %s ignored", client_str(command.operator_id)
            )

    def _run(self) -> None:
        backoff = Backoff(self.config.learner.reconnect_initial_s, self.config.learner.reconnect_max_s)
        while not self._stop.is_set():
            call_done = threading.Event()
            opened = time.monotonic()
            try:
                call = self.link.operator.Session(
                    self._telemetry(call_done),
                    timeout=self.config.learner.stream_timeout_s,
                    metadata=self.link.metadata,
                )
                self._call = call
                for command in call:
                    backoff.reset()
                    self._apply(command)
                # The learner closed the stream (its lifetime cap): re-open after a short pause.
                call_done.set()
                self._release_control("operator session closed by the learner")
                self._stop.wait(self.config.learner.reconnect_initial_s)
            except grpc.RpcError as exc:
                call_done.set()
                if self._stop.is_set():
                    return
                code = rpc_code(exc)
                self._release_control("operator session lost")
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # our own stream lifetime: re-open at once
                if time.monotonic() - opened > 10 * self.config.learner.reconnect_max_s:
                    backoff.reset()  # it had been up for a good while: this is a fresh failure
                self.metrics.rpc_errors.labels("Operator.Session", code.name).inc()
                delay = backoff.next_delay()
                log.warning(
                    "operator session failed (%s: %s); reconnecting in %.1f s",
                    code.name,
                    rpc_details(exc),
                    delay,
                )
                self._stop.wait(delay)

    def _release_control(self, why: str) -> None:
        if self.remote.intervening:
            self.remote.hand_back("robot", why)
            log.warning("%s while the console had control: control returns to the policy", why)
