"""What a client sends may reach a log only through here: quoted, cut, without control characters, throttled.

A robot id, a task name or a map key is hostile until checked. Logged raw, a newline forges a log line, a
bidi override (U+202E) reverses what an operator reads, and a megabyte-long name floods the disk. And a
robot that repeats one mistake a thousand times a second must not drown the learner's log: repeated warnings
are rate-limited per (logger, kind) with a count of what was suppressed.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from typing import Final

# Longest client string kept in a log line or an error message, in characters.
MAX_LOGGED_CHARS: Final = 80


def client_str(value: object, max_chars: int = MAX_LOGGED_CHARS) -> str:
    """`value` as it may appear in a log line or an error: quoted, cut to `max_chars`, every control, format
    (bidi overrides, zero-width) and separator character other than a plain space escaped as \\uXXXX."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > max_chars
    text = text[:max_chars]
    out = []
    for char in text:
        category = unicodedata.category(char)
        if char == " " or category[0] not in ("C", "Z"):
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}")
    return (
        "'"
        + "".join(out).replace("'", "\\'")
        + "'"
        + (f"...({len(value) if isinstance(value, str) else '?'} chars)" if cut else "")
    )


class RateLimitedLog:
    """Logs a warning of one `kind` at most once per `interval_s`; the next one says how many were skipped.

    throttled = RateLimitedLog(logger, interval_s=10.0)
    throttled.warning("upload-refused", "upload from %s refused: %s", client_str(robot), reason)
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log unless `kind` was logged less than `interval_s` ago; returns whether it was logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
            if len(self._last) > 10_000:  # kinds are ours, not the client's; bound it anyway
                self._last = {kind: now}
        if suppressed:
            message += f" ({suppressed} more like this in the last {self.interval_s:g} s not logged)"
        self.logger.warning(message, *args)
        return True
