"""Per-stream idle timeouts: a robot that stops sending (or reading) never holds a server thread for long.

HTTP/2 keep-alive (server options in `service.py`) catches a dead connection. It does not catch a live
connection whose client simply stops: an upload stream that sends no further chunk, an operator session
without telemetry, a fetch whose reader stalls. Each such call registers here and marks progress; one
watchdog thread cancels any call that made no progress for `idle_timeout_s`, which wakes its handler (the
request iterator raises, a blocked write returns) so the worker thread is freed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Protocol

logger = logging.getLogger(__name__)


class Cancellable(Protocol):
    """The part of `grpc.ServicerContext` the watchdog uses."""

    def cancel(self) -> None: ...

    def is_active(self) -> bool: ...


class WatchedStream:
    """A handle a handler keeps while its call runs; `touch()` after every message in or out."""

    __slots__ = ("context", "description", "idle_timeout_s", "last_progress", "paused", "timed_out")

    def __init__(self, context: Cancellable, description: str, idle_timeout_s: float) -> None:
        self.context = context
        self.description = description
        self.idle_timeout_s = idle_timeout_s
        self.last_progress = time.monotonic()
        self.timed_out = False
        self.paused = False

    def touch(self) -> None:
        self.last_progress = time.monotonic()

    def pause(self) -> None:
        """The peer has sent everything; the call now waits on the learner (a commit), not on the peer."""
        self.paused = True


class StreamWatchdog:
    """Cancels calls that made no progress for their idle timeout. One thread for all calls."""

    def __init__(self, idle_timeout_s: float, check_interval_s: float | None = None) -> None:
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        self.idle_timeout_s = idle_timeout_s
        self.check_interval_s = check_interval_s or min(1.0, idle_timeout_s / 4)
        self._streams: dict[int, WatchedStream] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(
        self, context: Cancellable, description: str, idle_timeout_s: float | None = None
    ) -> Iterator[WatchedStream]:
        stream = WatchedStream(context, description, idle_timeout_s or self.idle_timeout_s)
        key = next(self._ids)
        with self._lock:
            self._streams[key] = stream
        try:
            yield stream
        finally:
            with self._lock:
                self._streams.pop(key, None)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def _run(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            now = time.monotonic()
            with self._lock:
                idle = [
                    s
                    for s in self._streams.values()
                    if not s.timed_out and not s.paused and now - s.last_progress > s.idle_timeout_s
                ]
                for stream in idle:
                    stream.timed_out = True
            for stream in idle:
                logger.warning(
                    "cancelling %s: no progress for %.1f s (idle timeout)",
                    stream.description,
                    now - stream.last_progress,
                )
                stream.context.cancel()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
