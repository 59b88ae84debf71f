"""The console's API from Python: what the page does, for scripts, benchmarks and simulated operators.

    with ConsoleClient(url, "alice", password) as console, console.live() as live:
        live.take_over("robot-1", reason="wrong object")
        live.teleop("robot-1", [0.2, 0.0, 0.0, -1.0])
        live.hand_back("robot-1")

It speaks exactly the page's protocol (REST login, one WebSocket for live state and commands), so whatever
drives a robot through it exercises the path a person's browser does: the session, the CSRF-free WebSocket
with its origin check, role and lease checks, the rate limit, the relay to the robot.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from types import TracebackType
from typing import Any, Final, Self

import httpx
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from cloud_learner.console.sessions import SESSION_COOKIE

DEFAULT_TIMEOUT_S: Final = 10.0


class ConsoleCommandError(RuntimeError):
    """The console refused a command (role, lease, unknown robot, malformed); the text is the console's."""


class ConsoleClient:
    """A logged-in console session (REST). `url`: the console's base URL as `sop console` prints it;
    `ca_file`: the CA of a TLS console's certificate."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        ca_file: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context(cafile=ca_file) if self.url.startswith("https") else None
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, verify=self._ssl or True)
        response = self.http.post("api/login", json={"username": username, "password": password})
        if response.status_code != 200:
            self.http.close()
            raise ConsoleCommandError(f"login as {username!r} refused: {_detail(response)}")
        self.session: dict[str, Any] = response.json()

    def get(self, path: str) -> Any:
        """A REST GET (`fleet`, `learner`, `history`, `operators`), as parsed JSON."""
        response = self.http.get(f"api/{path}")
        if response.status_code != 200:
            raise ConsoleCommandError(f"GET /api/{path}: {_detail(response)}")
        return response.json()

    def live(self) -> LiveConnection:
        return LiveConnection(self)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class LiveConnection:
    """The live WebSocket: fleet updates in, commands out. Commands other than teleop wait for the console's
    answer and raise `ConsoleCommandError` on a refusal; fleet updates that arrive meanwhile are kept as the
    latest (`latest_update`)."""

    def __init__(self, client: ConsoleClient) -> None:
        self.client = client
        scheme_url = client.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        self._closing = contextlib.ExitStack()
        self.ws: ClientConnection = self._closing.enter_context(
            connect(
                scheme_url + "api/live",
                additional_headers={"Cookie": f"{SESSION_COOKIE}={client.http.cookies[SESSION_COOKIE]}"},
                origin=Origin(client.url.rstrip("/")),
                ssl=client._ssl,
                open_timeout=client.timeout_s,
            )
        )
        self.latest_update: dict[str, Any] | None = None
        self.errors: list[str] = []  # refusals nobody waited for (a teleop's), newest last, at most 100
        self.hello = self._next(lambda m: m["type"] == "hello")

    def _next(self, wanted: Any, timeout_s: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (self.client.timeout_s if timeout_s is None else timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the console in time")
            message = json.loads(self.ws.recv(timeout=remaining))
            if message.get("type") == "fleet":
                self.latest_update = message
            if message.get("type") == "error" and message.get("fatal"):
                raise ConsoleCommandError(str(message.get("error")))
            if wanted(message):
                return dict(message)
            if message.get("type") == "error":
                self.errors = [*self.errors[-99:], str(message.get("error"))]

    def next_update(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next fleet update (robots, the watched robot, learner, history)."""
        return self._next(lambda m: m["type"] == "fleet", timeout_s)

    def command(self, **message: Any) -> dict[str, Any]:
        """Send a command and return the console's acknowledgement."""
        self.ws.send(json.dumps(message))
        answer = self._next(lambda m: m["type"] in ("ack", "error") and m.get("request") == message["type"])
        if answer["type"] == "error":
            raise ConsoleCommandError(str(answer["error"]))
        return answer

    def watch(self, robot_id: str) -> dict[str, Any]:
        return self.command(type="watch", robot_id=robot_id)

    def take_over(self, robot_id: str, reason: str = "") -> dict[str, Any]:
        return self.command(type="take_over", robot_id=robot_id, reason=reason)

    def hand_back(self, robot_id: str, reason: str = "") -> dict[str, Any]:
        return self.command(type="hand_back", robot_id=robot_id, reason=reason)

    def label(self, robot_id: str, outcome: str, episode_id: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "label", "robot_id": robot_id, "outcome": outcome}
        if episode_id is not None:
            message["episode_id"] = episode_id
        return self.command(**message)

    def teleop(self, robot_id: str, action: list[float]) -> None:
        """One teleop action; not answered (a refusal lands in `errors` while a later call reads messages)."""
        self.ws.send(
            json.dumps({"type": "teleop", "robot_id": robot_id, "action": [float(v) for v in action]})
        )

    def close(self) -> None:
        self._closing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return f"HTTP {response.status_code}"
