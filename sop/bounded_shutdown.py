"""SIGTERM ends a long-running SOP process within a bound, whatever its clients or peers do.

A service that waits for its calls to finish can wait forever: a gRPC handler blocked where no cancellation
reaches it keeps `server.stop(grace).wait()` from returning, and a worker thread that never returns keeps
the interpreter from exiting (it joins non-daemon threads at exit). Orchestrators then escalate to SIGKILL
after their own timeout, or worse, wait. So every SOP process that serves or controls installs this:

- first SIGTERM or SIGINT: the orderly stop runs in a thread, and a backstop is armed; if the process is
  still alive `deadline_s` later it logs which threads were still running and ends with `os._exit`
  (exit code 0 when the orderly stop itself had finished, so only the interpreter's exit hung; 1 when it
  had not);
- a second signal: `os._exit(1)` at once.

`os._exit` skips clean-up, which is safe by construction here: everything that must survive (committed
episodes, staged chunks, the robot's spool, published checkpoints) is written with atomic renames and is
exactly as safe as after a kill -9, which the crash tests exercise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

EXIT_FORCED = 1


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: exit anyway
            stream.flush()
    os._exit(code)


class BoundedShutdown:
    """Signal handling for one process: orderly stop, bounded by a deadline; a second signal is immediate.

    shutdown = BoundedShutdown(service.stop, deadline_s=grace + 10, name="learner")
    shutdown.install()
    service.wait()
    """

    def __init__(self, stop: Callable[[], None], deadline_s: float, name: str) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self.stop = stop
        self.deadline_s = deadline_s
        self.name = name
        self.stopped = threading.Event()
        self._requested = threading.Event()
        self._lock = threading.Lock()

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        for signum in signals:
            signal.signal(signum, self._on_signal)

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        with self._lock:
            again = self._requested.is_set()
            self._requested.set()
        if again:
            logger.warning("signal %d again: %s exits now", signum, self.name)
            _exit_now(EXIT_FORCED)
        logger.info(
            "signal %d: stopping %s (at most %.0f s; a second signal exits at once)",
            signum,
            self.name,
            self.deadline_s,
        )
        self.request_stop()

    def request_stop(self) -> None:
        """Start the orderly stop and arm the backstop (what the first signal does)."""
        self._requested.set()
        threading.Thread(target=self._run_stop, name="bounded-stop", daemon=True).start()
        threading.Thread(target=self._backstop, name="shutdown-backstop", daemon=True).start()

    def _run_stop(self) -> None:
        try:
            self.stop()
        except Exception:
            logger.exception("orderly stop of %s failed", self.name)
        finally:
            self.stopped.set()

    def _backstop(self) -> None:
        # Sleeps through the orderly stop and the interpreter's exit; a process that got that far is gone
        # before this wakes (daemon threads die with it).
        threading.Event().wait(self.deadline_s)
        alive = sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())
        finished = self.stopped.is_set()
        logger.error(
            "%s did not exit within %.0f s of the stop signal (orderly stop %s; threads still running: %s); "
            "exiting without waiting",
            self.name,
            self.deadline_s,
            "finished" if finished else "unfinished",
            ", ".join(alive[:20]) + (f" and {len(alive) - 20} more" if len(alive) > 20 else ""),
        )
        _exit_now(0 if finished else EXIT_FORCED)
