"""The console's commands to robots: parsed from the page's WebSocket messages, checked, leased, logged,
relayed.

Every message is hostile until parsed: at most `MAX_MESSAGE_BYTES`, a JSON object with a known `type`, and
fields of the right type and size. A message that fails is answered with an error naming the field and the
problem; the connection stays open. A command that passes is checked against the sender's role and the
robot's lease, logged with the operator's name, and queued on the robot's operator session
(`OperatorRelay`). Teleop is refused beyond `console.teleop_rate_hz` per robot (a page that sends faster
than the robot acts only fills the robot's command queue).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from cloud_learner.console.accounts import ConsoleRole
from cloud_learner.console.leases import Lease, LeaseHeld, RobotLeases
from sop.credentials import ROBOT_ID_PATTERN
from sop.safe_logging import RateLimitedLog, client_str

if TYPE_CHECKING:
    from cloud_learner.console.sessions import Session
    from cloud_learner.console.views import TelemetryClock
    from cloud_learner.operator_relay import OperatorRelay
    from cloud_learner.roster import FleetRoster

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)

MAX_MESSAGE_BYTES: Final = 4096
MAX_ACTION_DIM: Final = 64
MAX_ACTION_ABS: Final = 1000.0
MAX_REASON_CHARS: Final = 200
LABELS: Final = ("success", "failure")
EPISODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# type -> the role it needs
MESSAGE_TYPES: Final = {
    "watch": ConsoleRole.VIEWER,  # which robot's camera and state the page shows
    "ping": ConsoleRole.VIEWER,
    "take_over": ConsoleRole.OPERATOR,
    "hand_back": ConsoleRole.OPERATOR,
    "renew": ConsoleRole.OPERATOR,  # keep holding a robot without driving it (the page sends it while shown)
    "teleop": ConsoleRole.OPERATOR,
    "label": ConsoleRole.OPERATOR,
}
_FIELDS: Final = {
    "watch": {"type", "robot_id"},
    "ping": {"type"},
    "take_over": {"type", "robot_id", "reason"},
    "hand_back": {"type", "robot_id", "reason"},
    "renew": {"type", "robot_id"},
    "teleop": {"type", "robot_id", "action"},
    "label": {"type", "robot_id", "outcome", "episode_id"},
}


class MessageError(ValueError):
    """A message the console cannot act on; the text is sent back to the page as is."""


class CommandRefused(Exception):
    """A well-formed command the sender may not give now (role, lease, robot gone, rate)."""


@dataclass(frozen=True)
class ClientMessage:
    type: str
    robot_id: str | None = None
    reason: str = ""
    action: tuple[float, ...] = ()
    outcome: str = ""
    episode_id: str = ""


def _robot_id(value: object, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not ROBOT_ID_PATTERN.fullmatch(value):
        raise MessageError(f"robot_id: {client_str(value)} is not a robot id (1 to 64 of A-Z a-z 0-9 _ . -)")
    return value


def parse_message(raw: str | bytes | None) -> ClientMessage:
    """The checked message, or MessageError saying what is wrong with it."""
    if raw is None:
        raise MessageError("messages must be JSON text frames, got a binary frame")
    if isinstance(raw, bytes):
        raise MessageError("messages must be JSON text frames, got a binary frame")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message: {len(raw)} characters, at most {MAX_MESSAGE_BYTES}")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message: not JSON ({str(exc)[:80]})") from None
    if not isinstance(document, dict):
        raise MessageError(f"message: expected a JSON object, got {type(document).__name__}")
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise MessageError(f"type: {client_str(kind)} is not one of {sorted(MESSAGE_TYPES)}")
    unknown = set(document) - _FIELDS[kind]
    if unknown:
        raise MessageError(
            f"{kind}: unknown field(s) {', '.join(client_str(k, 40) for k in sorted(unknown)[:5])}; "
            f"it takes {sorted(_FIELDS[kind])}"
        )
    if kind == "ping":
        return ClientMessage(kind)
    if kind == "watch":
        return ClientMessage(kind, _robot_id(document.get("robot_id"), required=False))
    robot_id = _robot_id(document.get("robot_id"))
    if kind == "renew":
        return ClientMessage(kind, robot_id)
    if kind in ("take_over", "hand_back"):
        reason = document.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise MessageError(f"reason: must be text of at most {MAX_REASON_CHARS} characters")
        return ClientMessage(kind, robot_id, reason=reason)
    if kind == "teleop":
        action = document.get("action")
        if not isinstance(action, list) or not 1 <= len(action) <= MAX_ACTION_DIM:
            raise MessageError(f"action: must be a list of 1 to {MAX_ACTION_DIM} numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in action):
            raise MessageError("action: every entry must be a number")
        if not all(math.isfinite(v) and abs(v) <= MAX_ACTION_ABS for v in action):
            raise MessageError(f"action: every entry must be finite and within +-{MAX_ACTION_ABS:g}")
        return ClientMessage(kind, robot_id, action=tuple(float(v) for v in action))
    outcome = document.get("outcome")
    if outcome not in LABELS:
        raise MessageError(f"outcome: {client_str(outcome)} is not one of {list(LABELS)}")
    episode_id = document.get("episode_id", "")
    if episode_id and (not isinstance(episode_id, str) or not EPISODE_ID_PATTERN.fullmatch(episode_id)):
        raise MessageError(f"episode_id: {client_str(episode_id)} is not an episode id")
    return ClientMessage(kind, robot_id, outcome=str(outcome), episode_id=str(episode_id or ""))


class _TeleopBudget:
    """A token bucket per robot: `rate_hz` commands a second, bursts of a fifth of a second."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.capacity = max(2.0, rate_hz / 5)
        self._tokens: dict[str, tuple[float, float]] = {}

    def take(self, robot_id: str) -> bool:
        now = time.monotonic()
        tokens, last = self._tokens.get(robot_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate_hz)
        if tokens < 1.0:
            self._tokens[robot_id] = (tokens, now)
            return False
        self._tokens[robot_id] = (tokens - 1.0, now)
        return True

    def forget(self, robot_id: str) -> None:
        self._tokens.pop(robot_id, None)


class ConsoleCommands:
    """Checks and relays operators' commands; owns the robot leases."""

    def __init__(
        self,
        relay: OperatorRelay,
        roster: FleetRoster,
        leases: RobotLeases,
        telemetry_clock: TelemetryClock,
        teleop_rate_hz: float,
    ) -> None:
        self.relay = relay
        self.roster = roster
        self.leases = leases
        self.telemetry_clock = telemetry_clock
        self._teleop = _TeleopBudget(teleop_rate_hz)
        self._lock = threading.Lock()

    def execute(self, message: ClientMessage, session: Session, connection: int) -> dict[str, Any]:
        """Carry out a command; the acknowledgement to send back, or CommandRefused / MessageError."""
        needed = MESSAGE_TYPES[message.type]
        if not session.role.allows(needed):
            raise CommandRefused(
                f"{message.type}: needs the {needed.value} role; {session.username} has the {session.role.value} role"
            )
        robot_id = message.robot_id
        assert robot_id is not None
        operator = session.username
        with self._lock:
            if message.type == "take_over":
                return self._take_over(robot_id, operator, connection, message.reason)
            if message.type == "hand_back":
                return self._hand_back(robot_id, operator, message.reason)
            if message.type == "teleop":
                return self._teleop_action(robot_id, operator, message.action)
            if message.type == "renew":
                return self._renew(robot_id, operator)
            return self._label(robot_id, operator, message.outcome, message.episode_id)

    def _held_elsewhere(self, kind: str, exc: LeaseHeld) -> CommandRefused:
        lease = exc.lease
        return CommandRefused(
            f"{kind}: {lease.robot_id} is held by {lease.operator} for another "
            f"{self.leases.remaining_s(lease):.0f} s unless they hand it back"
        )

    def _connected(self, kind: str, robot_id: str) -> None:
        if robot_id not in self.relay.connected_robots():
            raise CommandRefused(f"{kind}: robot {robot_id} is not connected (no operator session)")

    def _take_over(self, robot_id: str, operator: str, connection: int, reason: str) -> dict[str, Any]:
        self._connected("take_over", robot_id)
        try:
            lease = self.leases.take(robot_id, operator, connection)
        except LeaseHeld as exc:
            raise self._held_elsewhere("take_over", exc) from None
        if not self.relay.take_over(robot_id, operator, reason or "console"):
            self.leases.release(robot_id, operator)
            raise CommandRefused(f"take_over: robot {robot_id} did not accept the command (gone or busy)")
        logger.info(
            "console: operator %s took over robot %s (%s)",
            client_str(operator),
            client_str(robot_id),
            client_str(reason or "-"),
        )
        return {"robot_id": robot_id, "held_by": operator, "expires_in_s": self.leases.remaining_s(lease)}

    def _lease_of(self, command: str, robot_id: str, operator: str, missing: str) -> Lease:
        """The operator's lease on the robot; refused (naming `command`) when another operator holds it, or
        with `missing` when nobody does."""
        try:
            lease = self.leases.check(robot_id, operator)
        except LeaseHeld as exc:
            raise self._held_elsewhere(command, exc) from None
        if lease is None:
            raise CommandRefused(f"{command}: {missing}")
        return lease

    def _hand_back(self, robot_id: str, operator: str, reason: str) -> dict[str, Any]:
        self._lease_of("hand_back", robot_id, operator, f"{operator} does not hold robot {robot_id}")
        self.leases.release(robot_id, operator)
        self._teleop.forget(robot_id)
        sent = self.relay.hand_back(robot_id, operator, reason or "console")
        logger.info(
            "console: operator %s handed back robot %s%s",
            client_str(operator),
            client_str(robot_id),
            "" if sent else " (robot gone)",
        )
        return {"robot_id": robot_id, "held_by": None}

    def _renew(self, robot_id: str, operator: str) -> dict[str, Any]:
        lease = self._lease_of(
            "renew", robot_id, operator, f"{operator} does not hold robot {robot_id} (the lease ended)"
        )
        return {"robot_id": robot_id, "held_by": operator, "expires_in_s": self.leases.remaining_s(lease)}

    def _teleop_action(self, robot_id: str, operator: str, action: tuple[float, ...]) -> dict[str, Any]:
        self._lease_of("teleop", robot_id, operator, f"take over robot {robot_id} before driving it")
        status = self.roster.get(robot_id)
        if status is not None and status.action_dim and len(action) != status.action_dim:
            raise MessageError(
                f"action: robot {robot_id} takes {status.action_dim} values, got {len(action)}"
            )
        if not self._teleop.take(robot_id):
            raise CommandRefused(
                f"teleop: more than {self._teleop.rate_hz:g} commands/s to robot {robot_id}; this one was dropped"
            )
        if not self.relay.teleop(robot_id, operator, np.asarray(action, np.float32)):
            raise CommandRefused(f"teleop: robot {robot_id} did not accept the action (gone or busy)")
        logger.debug("console: operator %s teleop %s %s", client_str(operator), client_str(robot_id), action)
        return {"robot_id": robot_id}

    def _label(self, robot_id: str, operator: str, outcome: str, episode_id: str) -> dict[str, Any]:
        try:
            self.leases.check(robot_id, operator)  # anyone may label a free robot; not one held by another
        except LeaseHeld as exc:
            raise self._held_elsewhere("label", exc) from None
        episode_id = episode_id or self.telemetry_clock.last_episode_id(robot_id)
        if not episode_id:
            raise CommandRefused(f"label: robot {robot_id} has reported no episode to label yet")
        if not self.relay.label_outcome(robot_id, operator, episode_id, outcome):
            raise CommandRefused(f"label: robot {robot_id} did not accept the label (gone or busy)")
        logger.info(
            "console: operator %s labelled episode %s of robot %s %s",
            client_str(operator),
            client_str(episode_id),
            client_str(robot_id),
            outcome,
        )
        return {"robot_id": robot_id, "episode_id": episode_id, "outcome": outcome}

    def _hand_back_released(self, leases: list[Lease], why: str) -> None:
        for lease in leases:
            self._teleop.forget(lease.robot_id)
            sent = self.relay.hand_back(lease.robot_id, lease.operator, why)
            logger.info(
                "console: robot %s handed back from operator %s: %s%s",
                client_str(lease.robot_id),
                client_str(lease.operator),
                why,
                "" if sent else " (robot gone)",
            )

    def disconnected(self, connection: int) -> None:
        """A page closed: the robots it held go back to their policies."""
        with self._lock:
            self._hand_back_released(self.leases.release_connection(connection), "operator's page closed")

    def expire(self) -> None:
        """Release leases whose time is up (handing the robot back) or whose robot left."""
        with self._lock:
            connected = set(self.relay.connected_robots())
            gone = self.leases.expire(connected)
            self._hand_back_released([g for g in gone if g.robot_id in connected], "lease expired")
            for lease in gone:
                if lease.robot_id not in connected:
                    self._teleop.forget(lease.robot_id)
                    logger.info(
                        "console: lease of %s on robot %s released: the robot disconnected",
                        client_str(lease.operator),
                        client_str(lease.robot_id),
                    )
