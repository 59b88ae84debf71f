"""Who drives which robot: one operator per robot at a time, a lease every page sees.

Taking over a robot takes its lease; handing back, the operator's page disconnecting, the robot's session
ending, or `console.lease_ttl_s` without a command from the holder releases it. Until then every other
operator's take-over, teleop and label for that robot is refused, naming the holder. The holder's every
command renews the lease, and the page renews it while it is shown, so an operator may hold a robot still;
a page that is hidden, frozen or cut off lets it lapse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    robot_id: str
    operator: str
    connection: int  # the WebSocket connection that took it: its close releases it
    taken_at: float
    expires_at: float


class LeaseHeld(Exception):
    def __init__(self, lease: Lease) -> None:
        super().__init__(lease.operator)
        self.lease = lease


class RobotLeases:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}

    def take(self, robot_id: str, operator: str, connection: int) -> Lease:
        """Take or renew `robot_id`'s lease for `operator`; LeaseHeld when someone else holds it."""
        now = self._clock()
        with self._lock:
            held = self._leases.get(robot_id)
            if held is not None and held.operator != operator and now < held.expires_at:
                raise LeaseHeld(held)
            taken_at = held.taken_at if held is not None and held.operator == operator else now
            lease = Lease(robot_id, operator, connection, taken_at, now + self.ttl_s)
            self._leases[robot_id] = lease
            return lease

    def check(self, robot_id: str, operator: str) -> Lease | None:
        """`operator`'s live lease of `robot_id` (renewed), None when nobody holds it; LeaseHeld when another
        operator does."""
        now = self._clock()
        with self._lock:
            held = self._leases.get(robot_id)
            if held is None or now >= held.expires_at:
                return None
            if held.operator != operator:
                raise LeaseHeld(held)
            lease = Lease(robot_id, operator, held.connection, held.taken_at, now + self.ttl_s)
            self._leases[robot_id] = lease
            return lease

    def release(self, robot_id: str, operator: str | None = None) -> Lease | None:
        """Drop the lease (only `operator`'s, when given); the dropped lease or None."""
        with self._lock:
            held = self._leases.get(robot_id)
            if held is None or (operator is not None and held.operator != operator):
                return None
            return self._leases.pop(robot_id)

    def release_connection(self, connection: int) -> list[Lease]:
        with self._lock:
            gone = [lease for lease in self._leases.values() if lease.connection == connection]
            for lease in gone:
                del self._leases[lease.robot_id]
            return gone

    def expire(self, connected_robots: set[str]) -> list[Lease]:
        """Drop the leases whose time is up or whose robot left; the dropped ones."""
        now = self._clock()
        with self._lock:
            gone = [
                lease
                for lease in self._leases.values()
                if now >= lease.expires_at or lease.robot_id not in connected_robots
            ]
            for lease in gone:
                del self._leases[lease.robot_id]
            return gone

    def holder(self, robot_id: str) -> Lease | None:
        with self._lock:
            lease = self._leases.get(robot_id)
            return lease if lease is not None and self._clock() < lease.expires_at else None

    def remaining_s(self, lease: Lease) -> float:
        return max(0.0, lease.expires_at - self._clock())
