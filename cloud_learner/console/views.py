"""What the page shows, as JSON: the fleet, the watched robot, the learner.

Built from the learner's own state (the operator relay's telemetry, the fleet roster, the trainer's status)
each time the page is refreshed; nothing here changes that state. Telemetry comes from robots and is
treated as hostile: text is cut, tensors are decoded with size caps, and a frame that is not a small
uint8 HxWx3 image is left out rather than trusted.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sop.data.codec import decode_tensor

if TYPE_CHECKING:
    from cloud_learner.checkpoint_store import CheckpointRecord
    from cloud_learner.console.leases import RobotLeases
    from cloud_learner.operator_relay import OperatorRelay
    from cloud_learner.publisher import FleetPin
    from cloud_learner.roster import FleetRoster, RobotStatus
    from cloud_learner.service import TrainingStatus
    from sop.v1 import operator_pb2

MAX_TEXT_CHARS = 200
MAX_STATE_VALUES = 128
MAX_FRAME_SIDE = 512
MAX_ROBOTS_SHOWN = 1000
DEFAULT_ACTION_DIM = 4


def _text(value: str) -> str:
    return value[:MAX_TEXT_CHARS]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class _Seen:
    telemetry: Any = None
    received_at: float = 0.0
    last_episode_id: str = ""


@dataclass
class TelemetryClock:
    """When the console last saw new telemetry of each robot (learner clock), and each robot's last
    episode id (what an outcome label applies to when the page names none)."""

    seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, robot_id: str, telemetry: operator_pb2.RobotTelemetry | None, now: float) -> _Seen:
        entry = self.seen.setdefault(robot_id, _Seen())
        if telemetry is not None and telemetry is not entry.telemetry:
            entry.telemetry = telemetry
            entry.received_at = now
            if telemetry.episode_id:
                entry.last_episode_id = _text(telemetry.episode_id)
        return entry

    def last_episode_id(self, robot_id: str) -> str:
        entry = self.seen.get(robot_id)
        return "" if entry is None else entry.last_episode_id

    def forget_except(self, robot_ids: set[str]) -> None:
        for robot_id in [r for r in self.seen if r not in robot_ids]:
            del self.seen[robot_id]


def robot_state(connected: bool, telemetry: operator_pb2.RobotTelemetry | None) -> str:
    """offline (no operator session), intervened (an operator drives), running (an episode), idle."""
    if not connected:
        return "offline"
    if telemetry is None:
        return "idle"
    if telemetry.intervening:
        return "intervened"
    return "running" if telemetry.episode_id else "idle"


def fleet_view(
    relay: OperatorRelay,
    roster: FleetRoster,
    leases: RobotLeases,
    clock: TelemetryClock,
    recent: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per robot that has an operator session or registered: the fleet table. `recent`: each
    robot's figures over its last episodes (`cloud_learner.console.history`)."""
    recent = recent or {}
    now = time.time()
    connected = set(relay.connected_robots())
    statuses = {status.robot_id: status for status in roster.robots()}
    robots = sorted(connected | set(statuses))[:MAX_ROBOTS_SHOWN]
    clock.forget_except(set(robots))
    rows = []
    for robot_id in robots:
        telemetry = relay.telemetry(robot_id) if robot_id in connected else None
        seen = clock.observe(robot_id, telemetry, now)
        status = statuses.get(robot_id)
        lease = leases.holder(robot_id)
        policy_version = telemetry.policy_version if telemetry is not None else 0
        if not policy_version and status is not None:
            policy_version = status.policy_version
        rows.append(
            {
                "robot_id": robot_id,
                "connected": robot_id in connected,
                "state": robot_state(robot_id in connected, telemetry),
                "task": _text(telemetry.task) if telemetry is not None else "",
                "instruction": _text(telemetry.instruction) if telemetry is not None else "",
                "episode_id": _text(telemetry.episode_id) if telemetry is not None else "",
                "last_episode_id": seen.last_episode_id,
                "step": int(telemetry.step) if telemetry is not None else 0,
                "policy_version": int(policy_version),
                "intervening": bool(telemetry.intervening) if telemetry is not None else False,
                "last_telemetry_at": seen.received_at or None,
                "last_telemetry_age_s": round(now - seen.received_at, 2) if seen.received_at else None,
                "last_heartbeat_at": status.last_seen if status is not None else None,
                "spool_depth": status.spool_depth if status is not None else None,
                "loop_p99_ms": _figure(status, "loop_period_p99_ms"),
                "deadline_misses": _figure(status, "deadline_misses"),
                "recent": recent.get(robot_id),
                "action_dim": (status.action_dim if status is not None and status.action_dim else None)
                or DEFAULT_ACTION_DIM,
                "held_by": None
                if lease is None
                else {"operator": lease.operator, "expires_in_s": round(leases.remaining_s(lease), 1)},
            }
        )
    return rows


def _figure(status: RobotStatus | None, name: str) -> float | None:
    """A health figure from the robot's last heartbeat (robots send what they measure; missing is None)."""
    if status is None:
        return None
    value = status.metrics.get(name)
    return _finite(round(float(value), 3)) if value is not None else None


def _frame(telemetry: operator_pb2.RobotTelemetry) -> dict[str, Any] | None:
    if not telemetry.HasField("frame"):
        return None
    try:
        frame = decode_tensor(telemetry.frame, "frame", max_bytes=MAX_FRAME_SIDE * MAX_FRAME_SIDE * 3)
    except ValueError:
        return None
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        return None
    height, width = int(frame.shape[0]), int(frame.shape[1])
    rgba = np.empty((height, width, 4), np.uint8)  # what a canvas ImageData takes
    rgba[..., :3] = frame
    rgba[..., 3] = 255
    return {"width": width, "height": height, "rgba_base64": base64.b64encode(rgba.tobytes()).decode()}


def _vector(telemetry: operator_pb2.RobotTelemetry, name: str) -> list[float | None] | None:
    """A numeric tensor field of the telemetry (state, policy_action, action) as a short list; None when
    absent or not a small numeric tensor."""
    if not telemetry.HasField(name):
        return None
    try:
        values = decode_tensor(getattr(telemetry, name), name, max_bytes=64 * 1024)
    except ValueError:
        return None
    if values.dtype.kind not in "fiu":
        return None
    flat = np.asarray(values, np.float64).reshape(-1)[:MAX_STATE_VALUES]
    return [_finite(round(float(v), 4)) for v in flat]


def robot_view(robot_id: str, relay: OperatorRelay) -> dict[str, Any]:
    """The watched robot: its latest camera frame (RGBA for a canvas), state vector, and the last step's
    policy proposal beside the executed action."""
    telemetry = relay.telemetry(robot_id)
    if telemetry is None:
        return {
            "robot_id": robot_id,
            "frame": None,
            "state_vector": None,
            "policy_action": None,
            "action": None,
            "timestamp": None,
        }
    return {
        "robot_id": robot_id,
        "frame": _frame(telemetry),
        "state_vector": _vector(telemetry, "state"),
        "policy_action": _vector(telemetry, "policy_action"),
        "action": _vector(telemetry, "action"),
        "step": int(telemetry.step),
        "episode_id": _text(telemetry.episode_id),
        "timestamp": _finite(float(telemetry.timestamp)) or None,
        "outcome": _text(telemetry.outcome),
    }


def learner_view(
    status: TrainingStatus, fleet_version: CheckpointRecord | None = None, pin: FleetPin | None = None
) -> dict[str, Any]:
    """Training step, loss, the kept checkpoints; the version the fleet runs and the pin holding it, if any."""
    metrics = {name: _finite(value) for name, value in status.metrics.items()}
    loss = metrics.get("train/loss")
    return {
        "trainer_enabled": status.trainer_enabled,
        "trainer_running": status.trainer_running,
        "trainer_failure": status.trainer_failure,
        "step": status.step,
        "samples_trained": status.samples_trained,
        "loss": loss,
        "metrics": metrics,
        "replay_episodes": status.replay_episodes,
        "latest_version": status.latest_version,
        "fleet_version": None if fleet_version is None else fleet_version.version,
        "pin": None
        if pin is None
        else {
            "version": pin.version,
            "requested": pin.requested,
            "by": _text(pin.by),
            "reason": _text(pin.reason),
            "at": pin.at,
        },
        "checkpoints": [
            {
                "version": record.version,
                "parent_version": record.parent_version,
                "created_at": record.created_at,
                "train_step": record.train_step,
                "loss": _finite(record.metrics["loss"]) if "loss" in record.metrics else None,
                "size_bytes": record.size_bytes,
            }
            for record in status.checkpoints
        ],
    }
