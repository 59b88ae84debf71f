"""SIGTERM ends a long-running SOP process within a bound, whatever its threads, clients or peers do.

A service that waits for its calls to finish can wait forever: a gRPC handler blocked where no cancellation
reaches it keeps `server.stop(grace).wait()` from returning, a robot driver stuck in C code keeps the
control thread, and a worker thread that never returns keeps the interpreter from exiting (it joins
non-daemon threads at exit). Orchestrators then escalate to SIGKILL after their own timeout, or worse, wait.
So the learner (`sop learner serve`) and the robot daemon (`sop robot run`) install `ShutdownSignals`:

- first SIGTERM or SIGINT: `on_first()` asks the process to stop (its main thread then runs the orderly,
  itself time-bounded, stop), and a `faulthandler` watchdog is armed: after `bound_s` it writes every
  thread's traceback to stderr (what was stuck, for the operator) and exits with status 1. It is a C thread
  that needs neither the GIL nor the main thread, and it stays armed through the interpreter's exit;
- a second signal: exit at once with 128 + the signal number.

The signals are read from a wakeup pipe by a thread of their own, so a main thread blocked in C code (a
device driver, a channel close) does not delay them; the Python-level handler only keeps the default action
(death, or KeyboardInterrupt mid-write) from running.

Exiting without clean-up is safe by construction here: everything that must survive (committed episodes,
staged chunks, the robot's spool, published checkpoints) is written with atomic renames and is exactly as
safe as after a kill -9, which the crash tests exercise.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class ShutdownSignals:
    """SIGTERM / SIGINT handling for one process (see the module docstring).

    signals = ShutdownSignals(service.request_stop, bound_s=grace + 10)
    signals.install()          # from the main thread
    ...                        # main thread: wait for the stop request, then stop in order
    signals.uninstall()
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_first: Callable[[], None], bound_s: float) -> None:
        self.on_first = on_first
        self.bound_s = bound_s
        self.received = 0
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._read_fd = self._write_fd = -1

    def install(self) -> None:
        """From the main thread."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._ignore) for signum in self.SIGNALS}
        threading.Thread(target=self._watch, name="shutdown-signals", daemon=True).start()

    def uninstall(self) -> None:
        """Restore the previous handlers (an armed watchdog stays armed)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the watcher reads end-of-file and returns

    @staticmethod
    def _ignore(signum: int, _frame: Any) -> None:
        """The watcher thread does the work."""

    def _watch(self) -> None:
        try:
            while data := os.read(self._read_fd, 64):
                for signum in data:
                    if signum in self.SIGNALS:
                        self._received(signum)
        finally:
            os.close(self._read_fd)

    def _received(self, signum: int) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            logger.warning("%s again: exiting now", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(128 + signum)
        logger.info(
            "%s: stopping; forced exit in %.0f s, at once on a second signal",
            name,
            self.bound_s,
        )
        faulthandler.dump_traceback_later(self.bound_s, exit=True)
        self.on_first()
