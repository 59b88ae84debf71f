"""Per-robot caps on concurrent streams, so one robot cannot take the threads the whole fleet shares.

Every long-lived call (WatchPolicy, UploadEpisode, FetchCheckpoint, Operator.Session) holds one of the
server's `server.max_workers` threads while it runs. Without a cap, one robot with a valid token that opens
300 WatchPolicy streams holds every thread, and the rest of the fleet's Heartbeats queue until their deadline
passes. Two limits keep that from happening:

- per robot and kind (`server.stream_limits`): a robot needs one watch, one operator session, an upload
  or two and a fetch at a time (a second of each covers a reconnect while the old stream is being reaped);
- for the whole server: streams may hold at most `max_workers - server.unary_reserve_workers` threads, so
  Register, Heartbeat and QueryUpload, and the refusals themselves, always find a free thread.

A call beyond either limit is refused at once with RESOURCE_EXHAUSTED naming the limit; its thread is free
again within microseconds. The counting is a few integer updates under one lock: no I/O, no waiting.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass


class StreamKind(enum.StrEnum):
    WATCH = "watch"
    UPLOAD = "upload"
    FETCH = "fetch"
    OPERATOR = "operator"


@dataclass(frozen=True)
class StreamLimitsConfig:
    """Concurrent streams one robot may hold, per kind (`server.stream_limits.<kind>`)."""

    watch: int = 2
    upload: int = 4
    fetch: int = 2
    operator: int = 2

    def __post_init__(self) -> None:
        for kind in StreamKind:
            value = getattr(self, kind.value)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"server.stream_limits.{kind.value} must be an integer >= 1, got {value!r}")

    def limit(self, kind: StreamKind) -> int:
        return int(getattr(self, kind.value))


class StreamLimitExceeded(Exception):
    """A stream refused because a limit is reached; the message names the limit and its config key."""


class StreamLimiter:
    """Counts open streams per (robot, kind) and in all; `admit` refuses one beyond a limit."""

    def __init__(self, per_robot: StreamLimitsConfig, max_streams: int) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.per_robot = per_robot
        self.max_streams = max_streams
        self._open: Counter[tuple[str, StreamKind]] = Counter()
        self._total = 0
        self._refused: Counter[StreamKind] = Counter()
        self._lock = threading.Lock()

    def acquire(self, robot_id: str, kind: StreamKind) -> None:
        """Take one stream slot of `robot_id`; raises `StreamLimitExceeded` when none is free."""
        key = (robot_id, kind)
        limit = self.per_robot.limit(kind)
        with self._lock:
            if self._open[key] >= limit:
                self._refused[kind] += 1
                raise StreamLimitExceeded(
                    f"this robot already holds {self._open[key]} {kind.value} streams, the limit "
                    f"server.stream_limits.{kind.value} = {limit}; close one before opening another"
                )
            if self._total >= self.max_streams:
                self._refused[kind] += 1
                raise StreamLimitExceeded(
                    f"the learner holds {self._total} streams, all it may (server.max_workers minus "
                    "server.unary_reserve_workers); retry later"
                )
            self._open[key] += 1
            self._total += 1

    def release(self, robot_id: str, kind: StreamKind) -> None:
        key = (robot_id, kind)
        with self._lock:
            if self._open[key] <= 0:
                raise RuntimeError(f"release of a {kind.value} stream that was not acquired")
            self._open[key] -= 1
            if not self._open[key]:
                del self._open[key]
            self._total -= 1

    @contextlib.contextmanager
    def admit(self, robot_id: str, kind: StreamKind) -> Iterator[None]:
        """Hold one stream slot of `robot_id` for the body (see `acquire`)."""
        self.acquire(robot_id, kind)
        try:
            yield
        finally:
            self.release(robot_id, kind)

    def open_streams(self, robot_id: str | None = None, kind: StreamKind | None = None) -> int:
        """Streams open now, optionally of one robot and/or one kind (for tests, logs and metrics)."""
        with self._lock:
            return sum(
                n
                for (robot, k), n in self._open.items()
                if (robot_id is None or robot == robot_id) and (kind is None or k == kind)
            )

    def refused(self) -> dict[str, int]:
        with self._lock:
            return {kind.value: n for kind, n in self._refused.items()}
