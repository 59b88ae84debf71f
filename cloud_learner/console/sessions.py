"""Login sessions of the console: a random session id in an HttpOnly cookie, a CSRF token beside it.

A session lasts `console.session_ttl_s` from the login, whatever the user does; then every request and the
live WebSocket are refused with "session expired: log in again". The session id never reaches the page's
JavaScript (HttpOnly, SameSite=Strict); the CSRF token does (the login answer and /api/session), and every
state-changing REST call must echo it in the `X-CSRF-Token` header, which another site cannot read or set.
Sessions are held in memory: a learner restart logs everybody out, which is the safe direction.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_learner.console.accounts import ConsoleRole

SESSION_COOKIE = "sop_console_session"
CSRF_HEADER = "X-CSRF-Token"
# Sessions held at once (all users); the oldest is dropped beyond it, so a login flood cannot grow memory.
MAX_SESSIONS = 4096


@dataclass(frozen=True)
class Session:
    session_id: str
    username: str
    role: ConsoleRole
    csrf_token: str
    created_at: float
    expires_at: float


class SessionExpired(Exception):
    """The session existed but its time is up."""


class Sessions:
    """Thread-safe (REST handlers run on a thread pool, the WebSocket on the event loop)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self, username: str, role: ConsoleRole) -> Session:
        now = self._clock()
        session = Session(
            session_id=secrets.token_urlsafe(32),
            username=username,
            role=role,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        with self._lock:
            self._drop_expired(now)
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of `session_id`; None when there is none; SessionExpired when its time is up."""
        if not session_id or len(session_id) > 128:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._clock() >= session.expires_at:
                del self._sessions[session_id]
                raise SessionExpired
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def end_user(self, username: str) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.username == username]:
                del self._sessions[key]

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now >= s.expires_at]:
            del self._sessions[key]

    @staticmethod
    def csrf_matches(session: Session, header_value: str | None) -> bool:
        return header_value is not None and hmac.compare_digest(
            session.csrf_token.encode(), header_value.encode("utf-8", "replace")
        )
