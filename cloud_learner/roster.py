"""The fleet roster: which robots registered, when each was last heard from, what each runs.

Filled by `Fleet.Register` and `Fleet.Heartbeat`; read by logs, the benchmark and (later) the console's
fleet view. A robot that re-registers gets a new session id; the old one is simply replaced. A heartbeat
from a robot the learner does not know (the learner restarted) is accepted, never refused.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace

from sop.v1 import fleet_pb2


@dataclass(frozen=True)
class RobotStatus:
    robot_id: str
    session_id: str
    tasks: tuple[str, ...]
    state_dim: int
    action_dim: int
    client_version: str
    registered_at: float
    last_seen: float
    policy_version: int = 0
    spool_depth: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class FleetRoster:
    def __init__(self) -> None:
        self._robots: dict[str, RobotStatus] = {}
        self._lock = threading.Lock()

    def register(self, robot_id: str, capabilities: fleet_pb2.RobotCapabilities) -> RobotStatus:
        now = time.time()
        status = RobotStatus(
            robot_id=robot_id,
            session_id=str(uuid.uuid4()),
            tasks=tuple(capabilities.tasks),
            state_dim=int(capabilities.state_dim),
            action_dim=int(capabilities.action_dim),
            client_version=capabilities.client_version,
            registered_at=now,
            last_seen=now,
        )
        with self._lock:
            self._robots[robot_id] = status
        return status

    def heartbeat(self, request: fleet_pb2.HeartbeatRequest) -> RobotStatus:
        with self._lock:
            status = self._robots.get(request.robot_id)
            if status is None:
                # The learner restarted since this robot registered: keep serving it; its capabilities
                # arrive with its next Register.
                now = time.time()
                status = RobotStatus(request.robot_id, request.session_id, (), 0, 0, "", now, now)
            status = replace(
                status,
                last_seen=time.time(),
                policy_version=int(request.policy_version),
                spool_depth=int(request.spool_depth),
                metrics=dict(request.metrics),
            )
            self._robots[request.robot_id] = status
        return status

    def robots(self) -> list[RobotStatus]:
        with self._lock:
            return sorted(self._robots.values(), key=lambda s: s.robot_id)

    def get(self, robot_id: str) -> RobotStatus | None:
        with self._lock:
            return self._robots.get(robot_id)
