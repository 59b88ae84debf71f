"""The operator relay: console commands down to a robot's `Operator.Session` stream, telemetry up.

Robots stay clients (NAT-friendly): each robot opens `Operator.Session`, streams `RobotTelemetry` and
receives `OperatorCommand`s on the same call. The console (a later web page; for now this Python API)
calls `send_command(robot_id, command)` or one of the shorthands, and reads `telemetry(robot_id)`.

Each session has a bounded command queue: a console that floods a robot whose link is slow gets
`False` back instead of growing memory without bound. A session reads telemetry on its own thread, so the
handler's thread only waits on the queue (with a timeout, re-checking the call) and a robot that goes
silent is cut by the stream watchdog.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sop.data.codec import encode_tensor
from sop.safe_logging import RateLimitedLog, client_str
from sop.v1 import operator_pb2

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)

COMMAND_QUEUE_LIMIT = 256
OUTCOMES = ("success", "failure", "timeout", "aborted")


@dataclass
class _Session:
    robot_id: str
    commands: queue.Queue[operator_pb2.OperatorCommand] = field(
        default_factory=lambda: queue.Queue(maxsize=COMMAND_QUEUE_LIMIT)
    )
    closed: threading.Event = field(default_factory=threading.Event)
    latest: operator_pb2.RobotTelemetry | None = None
    telemetry_count: int = 0
    opened_at: float = field(default_factory=time.time)


class OperatorRelay:
    """Connected robots' sessions; thread-safe."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def connected_robots(self) -> list[str]:
        with self._lock:
            return sorted(r for r, s in self._sessions.items() if not s.closed.is_set())

    def telemetry(self, robot_id: str) -> operator_pb2.RobotTelemetry | None:
        with self._lock:
            session = self._sessions.get(robot_id)
        return None if session is None else session.latest

    def send_command(self, robot_id: str, command: operator_pb2.OperatorCommand) -> bool:
        """Queue `command` for `robot_id`'s session. False when the robot is not connected or its queue is full."""
        if not command.HasField("command"):
            raise ValueError(
                "command: an OperatorCommand must set one of take_over, hand_back, teleop_action, outcome_label"
            )
        if not command.issued_at:
            command.issued_at = time.time()
        with self._lock:
            session = self._sessions.get(robot_id)
        if session is None or session.closed.is_set():
            return False
        try:
            session.commands.put_nowait(command)
        except queue.Full:
            throttled.warning(
                "command-queue-full",
                "command queue of robot %s is full; dropping %s",
                client_str(robot_id),
                command.WhichOneof("command"),
            )
            return False
        return True

    def take_over(self, robot_id: str, operator_id: str, reason: str = "") -> bool:
        return self.send_command(
            robot_id,
            operator_pb2.OperatorCommand(
                operator_id=operator_id, take_over=operator_pb2.TakeOver(reason=reason)
            ),
        )

    def hand_back(self, robot_id: str, operator_id: str, reason: str = "") -> bool:
        return self.send_command(
            robot_id,
            operator_pb2.OperatorCommand(
                operator_id=operator_id, hand_back=operator_pb2.HandBack(reason=reason)
            ),
        )

    def teleop(self, robot_id: str, operator_id: str, action: np.ndarray) -> bool:
        return self.send_command(
            robot_id,
            operator_pb2.OperatorCommand(
                operator_id=operator_id,
                teleop_action=operator_pb2.TeleopAction(
                    action=encode_tensor(np.asarray(action, np.float32), field="action")
                ),
            ),
        )

    def label_outcome(self, robot_id: str, operator_id: str, episode_id: str, outcome: str) -> bool:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: {outcome!r} is not one of {OUTCOMES}")
        return self.send_command(
            robot_id,
            operator_pb2.OperatorCommand(
                operator_id=operator_id,
                outcome_label=operator_pb2.OutcomeLabel(episode_id=episode_id, outcome=outcome),
            ),
        )

    def close(self) -> None:
        """End every session (the learner is stopping)."""
        self._closing.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.closed.set()

    def session(
        self,
        robot_id: str,
        telemetry: Iterator[operator_pb2.RobotTelemetry],
        is_active: Callable[[], bool],
        on_telemetry: Callable[[], None],
        check_interval_s: float,
        max_lifetime_s: float,
    ) -> Iterator[operator_pb2.OperatorCommand]:
        """Serve one robot's session: commands out (this generator), telemetry in (a reader thread)."""
        session = _Session(robot_id)
        with self._lock:
            previous = self._sessions.get(robot_id)
            self._sessions[robot_id] = session
        if previous is not None:
            previous.closed.set()  # a reconnecting robot replaces its stale session
        reader = threading.Thread(
            target=self._read_telemetry,
            args=(session, telemetry, on_telemetry),
            name=f"telemetry-{robot_id}",
            daemon=True,
        )
        reader.start()
        deadline = time.monotonic() + max_lifetime_s
        try:
            while not session.closed.is_set() and not self._closing.is_set() and is_active():
                if time.monotonic() > deadline:
                    return
                try:
                    command = session.commands.get(timeout=check_interval_s)
                except queue.Empty:
                    continue
                yield command
        finally:
            session.closed.set()
            with self._lock:
                if self._sessions.get(robot_id) is session:
                    del self._sessions[robot_id]

    @staticmethod
    def _read_telemetry(
        session: _Session, telemetry: Iterator[operator_pb2.RobotTelemetry], on_telemetry: Callable[[], None]
    ) -> None:
        try:
            for message in telemetry:
                if message.robot_id and message.robot_id != session.robot_id:
                    throttled.warning(
                        "telemetry-robot-id",
                        "robot %s sent telemetry naming %s; ignoring that message",
                        client_str(session.robot_id),
                        client_str(message.robot_id),
                    )
                    continue
                session.latest = message
                session.telemetry_count += 1
                on_telemetry()
                if session.closed.is_set():
                    return
        except Exception as exc:  # the call ended under us: cancelled, reset, timed out
            logger.debug("telemetry stream of %s ended: %s", session.robot_id, exc)
        finally:
            session.closed.set()
