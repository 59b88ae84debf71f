"""The console's HTTP + WebSocket server: FastAPI on uvicorn, on its own thread inside the learner process.

    REST (OpenAPI at /api/openapi.json)          WebSocket /api/live (JSON text frames)
    POST /api/login      {username, password}     server -> page: hello, fleet (+ learner, watched robot)
    POST /api/logout     (X-CSRF-Token)                           every console.update_interval_s, ack, error
    GET  /api/session                              page -> server: watch, take_over, hand_back, teleop,
    GET  /api/fleet, /api/learner                                  label, ping (see commands.py)
    GET  /api/operators  POST /api/operators (admin, X-CSRF-Token)

Who may do what is decided here and in commands.py: every request but the login and the static page needs
a live session (cookie), every state-changing REST call also its CSRF token, and the WebSocket checks the
session at the handshake (cookie and same-origin `Origin`) and again on every message, so an expired
session is cut. Errors are JSON `{"detail": "<what was wrong and what to do>"}`; the WebSocket answers a bad
message with `{"type": "error", "error": ...}` and stays open. Request bodies are capped, WebSocket frames
too, so no client can make the learner buffer without bound.

The server runs uvicorn's loop on a daemon thread; `stop()` ends it within a second or two whatever the
pages do. With server.tls set the console serves HTTPS with the learner's certificate and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_learner.console.accounts import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    AccountError,
    Accounts,
    ConsoleRole,
    console_url,
)
from cloud_learner.console.commands import CommandRefused, ConsoleCommands, MessageError, parse_message
from cloud_learner.console.history import FleetHistory
from cloud_learner.console.leases import RobotLeases
from cloud_learner.console.sessions import CSRF_HEADER, SESSION_COOKIE, Session, SessionExpired, Sessions
from cloud_learner.console.views import TelemetryClock, fleet_view, learner_view, robot_view
from cloud_learner.publisher import MAX_PIN_REASON_CHARS, CheckpointNotFoundError
from sop.safe_logging import RateLimitedLog, client_str

if TYPE_CHECKING:
    from cloud_learner.service import LearnerService

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)

MAX_BODY_BYTES = 16 * 1024
MAX_WS_FRAME_BYTES = 64 * 1024
# Failed logins of one user name before its logins are refused for LOGIN_LOCKOUT_S.
MAX_FAILED_LOGINS = 5
LOGIN_LOCKOUT_S = 30.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
EXPIRE_INTERVAL_S = 0.5
# WebSocket close codes (4000-4999 are the application's): the page shows the reason and its login form.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
STATIC_DIR = Path(str(resources.files("cloud_learner.console") / "static"))
USERNAME_FIELD = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = USERNAME_FIELD
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class NewOperatorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = USERNAME_FIELD
    password: str = Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
    role: ConsoleRole


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(
        ge=1, le=2**62, description="a kept checkpoint version (the learner view lists them)"
    )
    reason: str = Field(default="", max_length=MAX_PIN_REASON_CHARS)


class SessionInfo(BaseModel):
    username: str
    role: ConsoleRole
    csrf_token: str = Field(description=f"send it back in the {CSRF_HEADER} header of every POST")
    expires_at: float
    teleop_rate_hz: float


class OperatorInfo(BaseModel):
    username: str
    role: ConsoleRole
    created_at: float


class _RequestLimits:
    """Pure ASGI middleware: request bodies must announce their length and stay under MAX_BODY_BYTES;
    every response gets headers that keep the page from being framed or sniffed."""

    SECURITY_HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        problem = None
        if length is None and b"transfer-encoding" in headers:
            problem = (411, "request body: send a Content-Length (chunked bodies are not accepted)")
        elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            problem = (413, f"request body: larger than {MAX_BODY_BYTES} bytes")
        if problem is not None:
            response = JSONResponse({"detail": problem[1]}, status_code=problem[0])
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: `username: String should have at most 64 characters`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


class ConsoleServer:
    """The console of one learner; `start()` serves, `stop()` ends it."""

    def __init__(self, service: LearnerService) -> None:
        config = service.config
        assert config.console.address is not None
        self.service = service
        self.config = config.console
        self.tls = config.server.tls
        self.accounts = Accounts(config.console_dir)
        self.sessions = Sessions(self.config.session_ttl_s)
        self.leases = RobotLeases(self.config.lease_ttl_s)
        self.telemetry_clock = TelemetryClock()
        self.history = FleetHistory(service.store.list)
        self.commands = ConsoleCommands(
            service.relay, service.roster, self.leases, self.telemetry_clock, self.config.teleop_rate_hz
        )
        self.port: int | None = None
        self._connection_ids = itertools.count(1)
        self._failed_logins: dict[str, tuple[int, float]] = {}
        self._login_lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = (self.config.address or "").rpartition(":")[0]
        url = console_url(f"{host}:{self.port}", self.tls.enabled)
        assert url is not None
        return url

    def start(self) -> int:
        """Bind console.address and serve on a thread; the bound port (OSError EADDRINUSE when taken)."""
        host, _, port = (self.config.address or "").rpartition(":")
        host = host.strip("[]")
        try:
            family = socket.getaddrinfo(host, None)[0][0]
            sock = socket.create_server((host, int(port)), family=family, reuse_port=False)
        except OSError as exc:
            raise OSError(
                exc.errno or errno.EADDRNOTAVAIL,
                f"cannot listen on console.address {self.config.address}: {exc.strerror or exc}; stop the "
                "process holding it or pass another --console.address",
            ) from None
        self.port = int(sock.getsockname()[1])
        uvicorn_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ws_max_size=MAX_WS_FRAME_BYTES,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
            limit_concurrency=512,
            server_header=False,
            ssl_certfile=self.tls.cert_file,
            ssl_keyfile=self.tls.key_file,
        )
        server = uvicorn.Server(uvicorn_config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError(f"the console server did not start on {self.config.address} (see the log)")
            time.sleep(0.01)
        logger.info("console serving on %s (%d accounts)", self.url, len(self.accounts.list()))
        return self.port

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)
        self._server = None

    # ---- authentication ----------------------------------------------------------------------------------

    def session_of(self, session_id: str | None) -> Session:
        """The caller's live session; HTTPException 401 saying why there is none."""
        try:
            session = self.sessions.get(session_id)
        except SessionExpired:
            raise HTTPException(401, "session expired: log in again") from None
        if session is None:
            raise HTTPException(401, "not logged in: POST /api/login with your username and password")
        return session

    def _login_allowed(self, username: str) -> None:
        with self._login_lock:
            failures, since = self._failed_logins.get(username, (0, 0.0))
            if failures >= MAX_FAILED_LOGINS and time.monotonic() - since < LOGIN_LOCKOUT_S:
                wait = LOGIN_LOCKOUT_S - (time.monotonic() - since)
                raise HTTPException(429, f"too many failed logins for {username}: wait {wait:.0f} s")

    def _login_failed(self, username: str) -> None:
        with self._login_lock:
            failures, _ = self._failed_logins.get(username, (0, 0.0))
            if len(self._failed_logins) > 10_000:
                self._failed_logins.clear()
            self._failed_logins[username] = (failures + 1, time.monotonic())

    def session_info(self, session: Session) -> SessionInfo:
        return SessionInfo(
            username=session.username,
            role=session.role,
            csrf_token=session.csrf_token,
            expires_at=session.expires_at,
            teleop_rate_hz=self.config.teleop_rate_hz,
        )

    # ---- the application ---------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        console = self

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            task = asyncio.create_task(console._expire_leases())
            try:
                yield
            finally:
                task.cancel()

        app = FastAPI(
            title="SOP operator console",
            description="Watch the fleet, take over a robot, drive it, hand it back, label outcomes.",
            version="1",
            docs_url=None,  # Swagger UI and ReDoc load from a CDN; the console works offline
            redoc_url=None,
            openapi_url="/api/openapi.json",
            lifespan=lifespan,
        )
        app.add_middleware(_RequestLimits)

        @app.exception_handler(RequestValidationError)
        async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

        def current_session(request: Request) -> Session:
            return console.session_of(request.cookies.get(SESSION_COOKIE))

        def role_needed(role: ConsoleRole) -> Callable[[Session], Session]:
            def check(session: Session = Depends(current_session)) -> Session:
                if not session.role.allows(role):
                    raise HTTPException(
                        403,
                        f"needs the {role.value} role; {session.username} has the {session.role.value} role",
                    )
                return session

            return check

        def csrf_checked(request: Request, session: Session = Depends(current_session)) -> Session:
            if not Sessions.csrf_matches(session, request.headers.get(CSRF_HEADER)):
                raise HTTPException(
                    403,
                    f"csrf: missing or wrong {CSRF_HEADER} header (send the csrf_token of /api/session); "
                    "reload the page",
                )
            return session

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.post("/api/login", summary="log in; sets the session cookie")
        def login(body: LoginRequest, response: Response) -> SessionInfo:
            console._login_allowed(body.username)
            account = console.accounts.verify(body.username, body.password)
            if account is None:
                console._login_failed(body.username)
                throttled.warning("console-login", "console: failed login for %s", client_str(body.username))
                raise HTTPException(401, "wrong username or password")
            with console._login_lock:
                console._failed_logins.pop(body.username, None)
            session = console.sessions.create(account.username, account.role)
            response.set_cookie(
                SESSION_COOKIE,
                session.session_id,
                max_age=max(1, int(console.config.session_ttl_s)),
                httponly=True,
                samesite="strict",
                secure=console.tls.enabled,
                path="/",
            )
            logger.info("console: %s logged in (%s)", client_str(account.username), account.role.value)
            return console.session_info(session)

        @app.post("/api/logout", status_code=204, summary="end the session")
        def logout(response: Response, session: Session = Depends(csrf_checked)) -> None:
            console.sessions.end(session.session_id)
            response.delete_cookie(SESSION_COOKIE, path="/")

        @app.get("/api/session", summary="who is logged in, and the CSRF token")
        def session_info(session: Session = Depends(current_session)) -> SessionInfo:
            return console.session_info(session)

        # async: runs on the event loop, like the WebSocket, which owns the fleet view's bookkeeping
        @app.get("/api/fleet", summary="every robot: task, state, policy version, who holds it")
        async def fleet(session: Session = Depends(current_session)) -> dict[str, Any]:
            return {"robots": console.fleet()}

        @app.get("/api/history", summary="the fleet's success and intervention rate over time")
        def history(session: Session = Depends(current_session)) -> dict[str, Any]:
            return console.history.series()

        @app.get("/api/learner", summary="training step, loss, checkpoint versions")
        def learner(session: Session = Depends(current_session)) -> dict[str, Any]:
            return console.learner()

        @app.post(
            "/api/fleet/pin", summary="hold the fleet at a checkpoint version, or roll back to one (admin)"
        )
        def pin(
            body: PinRequest,
            session: Session = Depends(role_needed(ConsoleRole.ADMIN)),
            _checked: Session = Depends(csrf_checked),
        ) -> dict[str, Any]:
            try:
                pinned = console.service.publisher.pin(body.version, session.username, body.reason)
            except CheckpointNotFoundError as exc:
                raise HTTPException(404, str(exc.args[0])) from None
            logger.warning(
                "console: %s pinned the fleet to v%d (%s)",
                client_str(session.username),
                body.version,
                client_str(body.reason) or "no reason given",
            )
            return asdict(pinned)

        @app.delete("/api/fleet/pin", summary="let the fleet follow the newest checkpoint again (admin)")
        def unpin(
            session: Session = Depends(role_needed(ConsoleRole.ADMIN)),
            _checked: Session = Depends(csrf_checked),
        ) -> dict[str, Any]:
            newest = console.service.publisher.unpin(session.username)
            logger.warning("console: %s unpinned the fleet", client_str(session.username))
            return {"fleet_version": None if newest is None else newest.version}

        @app.get("/api/operators", summary="console accounts (admin)")
        def operators(session: Session = Depends(role_needed(ConsoleRole.ADMIN))) -> list[OperatorInfo]:
            return [
                OperatorInfo(username=a.username, role=a.role, created_at=a.created_at)
                for a in console.accounts.list()
            ]

        @app.post("/api/operators", status_code=201, summary="create a console account (admin)")
        def create_operator(
            body: NewOperatorRequest,
            session: Session = Depends(role_needed(ConsoleRole.ADMIN)),
            _checked: Session = Depends(csrf_checked),
        ) -> OperatorInfo:
            try:
                account = console.accounts.add(body.username, body.password, body.role)
            except AccountError as exc:
                raise HTTPException(409 if "taken" in str(exc) else 422, str(exc)) from None
            logger.info(
                "console: %s created %s account %s",
                client_str(session.username),
                account.role.value,
                client_str(account.username),
            )
            return OperatorInfo(username=account.username, role=account.role, created_at=account.created_at)

        @app.websocket("/api/live")
        async def live(websocket: WebSocket) -> None:
            await console._live(websocket)

        return app

    # ---- live state --------------------------------------------------------------------------------------

    def learner(self) -> dict[str, Any]:
        publisher = self.service.publisher
        return learner_view(self.service.training_status(), publisher.fleet_version, publisher.pin_state)

    def fleet(self) -> list[dict[str, Any]]:
        service = self.service
        return fleet_view(
            service.relay, service.roster, self.leases, self.telemetry_clock, self.history.recent()
        )

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL_S)
            try:
                for robot_id in self.service.relay.connected_robots():
                    self.telemetry_clock.observe(
                        robot_id, self.service.relay.telemetry(robot_id), time.time()
                    )
                self.commands.expire()
            except Exception:  # a bug here must not end lease expiry for the learner's lifetime
                logger.exception("console: lease expiry pass failed")

    async def _live(self, websocket: WebSocket) -> None:
        await websocket.accept()
        send_lock = asyncio.Lock()

        async def send(document: dict[str, Any]) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(document, allow_nan=False))

        async def refuse(code: int, text: str) -> None:
            await send({"type": "error", "error": text, "fatal": True})
            await websocket.close(code=code, reason=text[:120])

        origin = websocket.headers.get("origin")
        host = websocket.headers.get("host", "")
        if origin is not None and urlsplit(origin).netloc != host:
            await refuse(CLOSE_FORBIDDEN, f"origin {client_str(origin)} is not this console's page")
            return
        try:
            session = self.session_of(websocket.cookies.get(SESSION_COOKIE))
        except HTTPException as exc:
            await refuse(CLOSE_UNAUTHENTICATED, str(exc.detail))
            return
        connection = next(self._connection_ids)
        watched: list[str | None] = [None]
        await send(
            {
                "type": "hello",
                "username": session.username,
                "role": session.role.value,
                "teleop_rate_hz": self.config.teleop_rate_hz,
                "lease_ttl_s": self.config.lease_ttl_s,
            }
        )
        updates = asyncio.create_task(self._send_updates(session, send, refuse, watched))
        try:
            await self._receive_commands(websocket, session, connection, send, refuse, watched)
        except WebSocketDisconnect:
            pass  # the page went away mid-answer; its leases are released below
        finally:
            updates.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await updates
            self.commands.disconnected(connection)

    async def _send_updates(
        self,
        session: Session,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        refuse: Callable[[int, str], Awaitable[None]],
        watched: list[str | None],
    ) -> None:
        while True:
            try:
                self.session_of(session.session_id)  # a page left open past its session is cut
            except HTTPException as exc:
                with contextlib.suppress(Exception):
                    await refuse(CLOSE_UNAUTHENTICATED, str(exc.detail))
                return
            learner = self.learner()
            update: dict[str, Any] = {"type": "fleet", "time": time.time(), "robots": self.fleet()}
            update["learner"] = learner
            update["history"] = self.history.series()
            robot_id = watched[0]
            if robot_id is not None:
                update["robot"] = robot_view(robot_id, self.service.relay)
            try:
                await send(update)
            except Exception:  # the page went away; the receive loop ends the connection
                return
            await asyncio.sleep(self.config.update_interval_s)

    async def _receive_commands(
        self,
        websocket: WebSocket,
        session: Session,
        connection: int,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        refuse: Callable[[int, str], Awaitable[None]],
        watched: list[str | None],
    ) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                session = self.session_of(session.session_id)  # expired or logged out: cut
            except HTTPException as exc:
                await refuse(CLOSE_UNAUTHENTICATED, str(exc.detail))
                return
            raw = message.get("text")
            kind = "?"
            try:
                parsed = parse_message(raw if raw is not None else message.get("bytes"))
                kind = parsed.type
                if parsed.type == "ping":
                    await send({"type": "pong", "time": time.time()})
                    continue
                if parsed.type == "watch":
                    watched[0] = parsed.robot_id
                    await send({"type": "ack", "request": "watch", "robot_id": parsed.robot_id})
                    continue
                result = self.commands.execute(parsed, session, connection)
            except (MessageError, CommandRefused) as exc:
                throttled.warning(
                    f"console-refused-{kind}",
                    "console: %s refused for %s: %s",
                    kind,
                    client_str(session.username),
                    exc,
                )
                await send({"type": "error", "request": kind, "error": str(exc)})
                continue
            if kind not in ("teleop", "renew"):  # frequent; the fleet update shows their effect
                await send({"type": "ack", "request": kind, **result})
