"""The operator console over real sockets: a learner with its console on a free loopback port, robots'
operator sessions over real gRPC, the page's REST calls (httpx) and its WebSocket (websockets).

Every refusal is checked for a message that says what was wrong: unauthenticated, wrong role, expired
session, bad CSRF token, malformed WebSocket message. One operator per robot at a time.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from learner_fixtures import RunningLearner, auth, chunks_of, make_checkpoint_blob, upload, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from cloud_learner.config import AuthConfig, ConsoleConfig, LearnerConfig, ServerConfig, TlsConfig
from cloud_learner.console.accounts import Accounts, ConsoleRole
from cloud_learner.console.sessions import CSRF_HEADER, SESSION_COOKIE
from sop.cli import main as sop_main
from sop.data.codec import decode_tensor, encode_tensor
from sop.data.synthetic_episodes import make_episode
from sop.episode import INTERVENTION, OPERATOR_FRAMES, Outcome, Source, encode_operator_frames
from sop.v1 import operator_pb2

StartLearner = Callable[..., RunningLearner]
PASSWORD = "correct horse battery"
USERS = {"root": ConsoleRole.ADMIN, "alice": ConsoleRole.OPERATOR, "bob": ConsoleRole.OPERATOR}
USERS_WITH_VIEWER = {**USERS, "vera": ConsoleRole.VIEWER}


class FakeRobot:
    """A robot's side of Operator.Session over real gRPC: telemetry every 0.1 s (state vector and a small
    camera frame), every command kept; take-over / hand-back flip its `intervening` flag as a robot does."""

    def __init__(self, learner: RunningLearner, robot_id: str, task: str = "reach-v3") -> None:
        self.robot_id = robot_id
        self.task = task
        self.episode_id = f"episode-of-{robot_id}"
        self.intervening = False
        self.step = 0
        self._commands: list[operator_pb2.OperatorCommand] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        frame = np.zeros((16, 16, 3), np.uint8)
        frame[..., 0] = np.arange(16, dtype=np.uint8)[:, None] * 16
        self._frame = encode_tensor(frame, field="frame")
        self._state = encode_tensor(np.linspace(-1, 1, 39, dtype=np.float32), field="state")
        self._proposed = encode_tensor(np.array([0.5, -0.25, 0.0, -1.0], np.float32), field="policy_action")
        self._executed = encode_tensor(np.array([0.1, 0.2, 0.3, 1.0], np.float32), field="action")
        self.call = learner.operator().Session(self._telemetry(), metadata=auth(robot_id), timeout=120)
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()

    def _telemetry(self) -> Iterator[operator_pb2.RobotTelemetry]:
        while not self._stop.wait(0.1):
            self.step += 1
            yield operator_pb2.RobotTelemetry(
                robot_id=self.robot_id,
                episode_id=self.episode_id,
                step=self.step,
                task=self.task,
                instruction=f"{self.task}: reach the goal",
                policy_version=1,
                intervening=self.intervening,
                state=self._state,
                frame=self._frame,
                policy_action=self._proposed,
                action=self._executed,
                timestamp=time.time(),
            )

    def _receive(self) -> None:
        try:
            for command in self.call:
                with self._lock:
                    self._commands.append(command)
                kind = command.WhichOneof("command")
                if kind == "take_over":
                    self.intervening = True
                elif kind == "hand_back":
                    self.intervening = False
        except Exception:  # cancelled at close
            pass

    @property
    def commands(self) -> list[operator_pb2.OperatorCommand]:
        with self._lock:
            return list(self._commands)

    def kinds(self) -> list[str]:
        return [str(c.WhichOneof("command")) for c in self.commands]

    def teleop_actions(self) -> list[np.ndarray]:
        return [
            np.array(decode_tensor(c.teleop_action.action, "action"))
            for c in self.commands
            if c.WhichOneof("command") == "teleop_action"
        ]

    def close(self) -> None:
        self._stop.set()
        self.call.cancel()


def add_accounts(run_dir: Path, users: dict[str, ConsoleRole]) -> None:
    accounts = Accounts(Path(run_dir) / "console")
    for name, role in users.items():
        accounts.add(name, PASSWORD, role)


@pytest.fixture
def start_console(
    start_learner: StartLearner, tmp_path: Path
) -> Iterator[Callable[..., tuple[RunningLearner, str]]]:
    robots: list[FakeRobot] = []

    def start(
        robots_ids: tuple[str, ...] = ("robot-1",),
        users: dict[str, ConsoleRole] = USERS,
        **console: Any,
    ) -> tuple[RunningLearner, str]:
        add_accounts(tmp_path / "run", users)
        learner = start_learner(console=ConsoleConfig(address="127.0.0.1:0", **console))
        for robot_id in robots_ids:
            robots.append(FakeRobot(learner, robot_id))
        wait_for(lambda: len(learner.service.relay.connected_robots()) == len(robots_ids))
        assert learner.service.console is not None
        return learner, learner.service.console.url

    yield start
    for robot in robots:
        robot.close()


def fake_robot(learner: RunningLearner, robot_id: str) -> FakeRobot:
    robot = FakeRobot(learner, robot_id)
    wait_for(lambda: robot_id in learner.service.relay.connected_robots())
    return robot


def log_in(url: str, username: str, password: str = PASSWORD) -> tuple[httpx.Client, dict[str, Any]]:
    client = httpx.Client(base_url=url, timeout=10)
    response = client.post("/api/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return client, response.json()


def live(url: str, client: httpx.Client | None = None, origin: str | None = None) -> ClientConnection:
    headers = {}
    if client is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"
    ws_url = url.replace("http://", "ws://") + "api/live"
    return connect(ws_url, additional_headers=headers, origin=origin or url.rstrip("/"), open_timeout=5)  # type: ignore[arg-type]


def next_of(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of `kind`, skipping the periodic fleet updates (and others)."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if message["type"] == kind:
            return dict(message)


def command(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    """Send a command; its answer (ack or error)."""
    ws.send(json.dumps(message))
    deadline = time.monotonic() + 5
    while True:
        answer = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if answer["type"] in ("ack", "error", "pong"):
            return dict(answer)


# ---- accounts and the `sop console` command --------------------------------------------------------------


def test_accounts_store_salted_hashes_only_in_a_private_file(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    accounts.add("alice", PASSWORD, ConsoleRole.OPERATOR)
    accounts.add("bob", PASSWORD, "viewer")
    text = accounts.path.read_text()
    assert PASSWORD not in text
    entries = json.loads(text)["operators"]
    assert entries["alice"]["salt"] != entries["bob"]["salt"]
    assert entries["alice"]["hash"] != entries["bob"]["hash"]
    assert stat.S_IMODE(accounts.path.stat().st_mode) == 0o600
    assert accounts.verify("alice", PASSWORD) is not None
    assert accounts.verify("alice", "wrong password") is None
    assert accounts.verify("nobody", PASSWORD) is None
    assert Accounts(tmp_path).get("bob") is not None  # another process sees them
    with pytest.raises(ValueError, match="taken"):
        accounts.add("alice", PASSWORD, ConsoleRole.ADMIN)
    with pytest.raises(ValueError, match="username"):
        accounts.add("al ice\n", PASSWORD, ConsoleRole.ADMIN)
    with pytest.raises(ValueError, match="password"):
        accounts.add("carol", "short", ConsoleRole.ADMIN)
    with pytest.raises(ValueError, match="role"):
        accounts.add("carol", PASSWORD, "root")


def test_sop_console_creates_the_first_admin_and_prints_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    run_dir = tmp_path / "run"
    flags = [
        "--run_dir",
        str(run_dir),
        "--console.address",
        "127.0.0.1:8765",
        "--auth.allow_unauthenticated",
        "true",
    ]
    assert sop_main(["console", "--admin", "root", "--password-file", str(password_file), *flags]) == 0
    out = capsys.readouterr().out
    assert "created admin root" in out and "http://127.0.0.1:8765/" in out
    account = Accounts(run_dir / "console").verify("root", PASSWORD)
    assert account is not None and account.role == ConsoleRole.ADMIN
    # Not a fresh run directory any more: one line, no second admin.
    assert sop_main(["console", "--admin", "eve", "--password-file", str(password_file), *flags]) == 1
    assert "already has 1 account" in capsys.readouterr().err
    assert sop_main(["console", *flags]) == 0  # prints the URL
    assert "http://127.0.0.1:8765/" in capsys.readouterr().out


def test_a_console_reachable_from_other_machines_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"console\.address"):
        LearnerConfig(
            run_dir=str(tmp_path),
            auth=AuthConfig(allow_unauthenticated=True),
            console=ConsoleConfig(address="0.0.0.0:8080"),
        )


# ---- REST: login, sessions, roles, CSRF ------------------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_and_the_page_is_served(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    learner, url = start_console()
    endpoint = json.loads((Path(learner.config.run_dir) / "endpoint.json").read_text())
    assert endpoint["console_url"] == url  # where harnesses find it
    client = httpx.Client(base_url=url, timeout=10)
    page = client.get("/")
    assert page.status_code == 200 and "SOP operator console" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert client.get("/static/console.js").status_code == 200
    assert "/api/login" in client.get("/api/openapi.json").json()["paths"]
    wrong = client.post("/api/login", json={"username": "alice", "password": "not the password"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong username or password"
    response = client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    session = response.json()
    assert session["username"] == "alice" and session["role"] == "operator" and session["csrf_token"]
    assert client.get("/api/session").json()["csrf_token"] == session["csrf_token"]
    assert [r["robot_id"] for r in client.get("/api/fleet").json()["robots"]] == ["robot-1"]
    assert client.get("/api/learner").json()["step"] == 0


def test_unauthenticated_requests_are_refused_with_a_clear_message(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client = httpx.Client(base_url=url, timeout=10)
    for path in ("/api/fleet", "/api/learner", "/api/session", "/api/operators"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["detail"].startswith("not logged in"), path
    forger = httpx.Client(base_url=url, timeout=10, cookies={SESSION_COOKIE: "forged-session-id"})
    assert forger.get("/api/fleet").status_code == 401
    with live(url) as ws:
        error = next_of(ws, "error")
        assert error["error"].startswith("not logged in") and error["fatal"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_a_websocket_from_another_origin_is_refused(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client, _ = log_in(url, "alice")
    with live(url, client, origin="http://evil.example") as ws:
        assert "origin" in next_of(ws, "error")["error"]


def test_wrong_role_is_refused_with_the_role_it_needs(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console(users=USERS_WITH_VIEWER)
    viewer, session = log_in(url, "vera")
    refused = viewer.post(
        "/api/operators",
        json={"username": "mallory", "password": PASSWORD, "role": "admin"},
        headers={CSRF_HEADER: session["csrf_token"]},
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == "needs the admin role; vera has the viewer role"
    assert viewer.get("/api/operators").status_code == 403
    with live(url, viewer) as ws:
        assert next_of(ws, "hello")["role"] == "viewer"
        answer = command(ws, type="take_over", robot_id="robot-1")
        assert answer["type"] == "error"
        assert answer["error"] == "take_over: needs the operator role; vera has the viewer role"
        assert next_of(ws, "fleet")["robots"][0]["held_by"] is None  # still watching


def test_an_expired_session_is_refused_over_rest_and_cut_on_the_websocket(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console(session_ttl_s=1.0)
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        # An idle page is cut by the server too, not only at its next message.
        error = next_of(ws, "error", timeout=5)
        assert error["error"] == "session expired: log in again" and error["fatal"]
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    response = client.get("/api/fleet")
    assert response.status_code == 401
    assert response.json()["detail"] in (
        "session expired: log in again",
        "not logged in: POST /api/login with your username and password",
    )


def test_state_changing_calls_need_the_csrf_token(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    admin, session = log_in(url, "root")
    new = {"username": "carol", "password": PASSWORD, "role": "operator"}
    for headers in ({}, {CSRF_HEADER: "guessed"}):
        refused = admin.post("/api/operators", json=new, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith("csrf: missing or wrong X-CSRF-Token header")
    assert admin.post("/api/logout").status_code == 403
    created = admin.post("/api/operators", json=new, headers={CSRF_HEADER: session["csrf_token"]})
    assert created.status_code == 201, created.text
    assert {"username": "carol", "role": "operator"}.items() <= created.json().items()
    log_in(url, "carol")  # usable at once
    taken = admin.post("/api/operators", json=new, headers={CSRF_HEADER: session["csrf_token"]})
    assert taken.status_code == 409 and "taken" in taken.json()["detail"]
    assert admin.post("/api/logout", headers={CSRF_HEADER: session["csrf_token"]}).status_code == 204
    assert admin.get("/api/session").status_code == 401


def test_hostile_request_bodies_are_refused_with_the_field_named(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client = httpx.Client(base_url=url, timeout=10)
    long_name = client.post("/api/login", json={"username": "a" * 65, "password": "x"})
    assert long_name.status_code == 422 and long_name.json()["detail"].startswith("username:")
    odd_name = client.post("/api/login", json={"username": "al\nice", "password": "x"})
    assert odd_name.status_code == 422 and "username" in odd_name.json()["detail"]
    not_json = client.post("/api/login", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    huge = client.post("/api/login", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "larger than" in huge.json()["detail"]


def test_repeated_failed_logins_are_slowed_down(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client = httpx.Client(base_url=url, timeout=10)
    codes = [
        client.post("/api/login", json={"username": "alice", "password": f"guess {i}"}).status_code
        for i in range(6)
    ]
    assert codes == [401] * 5 + [429]
    refused = client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert refused.status_code == 429 and "too many failed logins" in refused.json()["detail"]


# ---- WebSocket: malformed messages, commands, leases -----------------------------------------------------


def test_malformed_messages_get_an_error_and_the_connection_lives_on(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        cases: list[tuple[str | bytes, str]] = [
            ("not json", "message: not JSON"),
            ("[1, 2]", "message: expected a JSON object, got list"),
            ('{"type": "fly"}', "type: 'fly' is not one of"),
            ('{"robot_id": "robot-1"}', "type: 'None' is not one of"),
            (
                '{"type": "take_over", "robot_id": "../../etc/passwd"}',
                "robot_id: '../../etc/passwd' is not a robot id",
            ),
            ('{"type": "take_over", "robot_id": 7}', "robot_id: '7' is not a robot id"),
            (
                '{"type": "take_over", "robot_id": "robot-1", "admin": true}',
                "take_over: unknown field(s) 'admin'",
            ),
            (
                '{"type": "teleop", "robot_id": "robot-1", "action": "fast"}',
                "action: must be a list of 1 to 64",
            ),
            (
                '{"type": "teleop", "robot_id": "robot-1", "action": [1e400]}',
                "action: every entry must be finite",
            ),
            (
                '{"type": "teleop", "robot_id": "robot-1", "action": [true]}',
                "action: every entry must be a number",
            ),
            (
                '{"type": "label", "robot_id": "robot-1", "outcome": "great"}',
                "outcome: 'great' is not one of",
            ),
            (json.dumps({"type": "ping", "pad": "x" * 5000}), "message: 5"),
            (b"\x00\x01binary", "messages must be JSON text frames"),
            ("[" * 10000, "message:"),
        ]
        for raw, expected in cases:
            ws.send(raw)
            error = next_of(ws, "error")
            assert error["error"].startswith(expected), (raw[:60], error)
        assert command(ws, type="ping")["type"] == "pong"
        # Commands the robot cannot take: named.
        assert command(ws, type="take_over", robot_id="robot-9")["error"] == (
            "take_over: robot robot-9 is not connected (no operator session)"
        )
        assert command(ws, type="teleop", robot_id="robot-1", action=[0.0] * 4)["error"] == (
            "teleop: take over robot robot-1 before driving it"
        )
        assert command(ws, type="hand_back", robot_id="robot-1")["error"] == (
            "hand_back: alice does not hold robot robot-1"
        )


def test_one_operator_holds_a_robot_at_a_time_and_commands_reach_it(
    start_console: Callable[..., tuple[RunningLearner, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud_learner.console")
    learner, url = start_console(robots_ids=())
    robot = fake_robot(learner, "robot-1")
    try:
        alice_client, _ = log_in(url, "alice")
        bob_client, _ = log_in(url, "bob")
        with live(url, alice_client) as alice, live(url, bob_client) as bob:
            next_of(alice, "hello")
            next_of(bob, "hello")
            ack = command(alice, type="take_over", robot_id="robot-1", reason="heading off the table")
            assert ack["type"] == "ack" and ack["held_by"] == "alice"
            refused = command(bob, type="take_over", robot_id="robot-1")
            assert refused["type"] == "error" and refused["error"].startswith(
                "take_over: robot-1 is held by alice for another"
            )
            for kind, extra in (("teleop", {"action": [1.0, 0, 0, -1]}), ("hand_back", {})):
                answer = command(bob, type=kind, robot_id="robot-1", **extra)
                assert answer["error"].startswith(f"{kind}: robot-1 is held by alice"), answer
            wait_for(lambda: next_of(bob, "fleet")["robots"][0]["held_by"] is not None)
            alice.send(json.dumps({"type": "teleop", "robot_id": "robot-1", "action": [0.5, 0, 0, -1]}))
            wait_for(lambda: len(robot.teleop_actions()) == 1)
            np.testing.assert_allclose(robot.teleop_actions()[0], [0.5, 0, 0, -1])
            assert command(alice, type="label", robot_id="robot-1", outcome="success")["episode_id"] == (
                "episode-of-robot-1"
            )
            assert command(alice, type="hand_back", robot_id="robot-1")["held_by"] is None
            assert command(bob, type="take_over", robot_id="robot-1")["held_by"] == "bob"
        # Bob's page closed: the robot goes back to its policy, the lease is free.
        wait_for(lambda: robot.kinds().count("hand_back") == 2)
        assert learner.service.console is not None
        wait_for(lambda: learner.service.console.leases.holder("robot-1") is None)
        kinds = robot.kinds()
        assert kinds == ["take_over", "teleop_action", "outcome_label", "hand_back", "take_over", "hand_back"]
        assert [c.operator_id for c in robot.commands] == ["alice"] * 4 + ["bob"] * 2
        assert robot.commands[0].take_over.reason == "heading off the table"
        assert robot.commands[2].outcome_label.outcome == "success"
        logged = caplog.text
        assert "console: operator 'alice' took over robot 'robot-1' ('heading off the table')" in logged
        assert (
            "console: operator 'alice' labelled episode 'episode-of-robot-1' of robot 'robot-1' success"
            in logged
        )
        assert "console: operator 'alice' handed back robot 'robot-1'" in logged
        assert "console: robot 'robot-1' handed back from operator 'bob': operator's page closed" in logged
    finally:
        robot.close()


def test_a_lease_expires_without_commands_and_the_robot_is_handed_back(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    learner, url = start_console(robots_ids=(), lease_ttl_s=0.6)
    robot = fake_robot(learner, "robot-1")
    try:
        client, _ = log_in(url, "alice")
        with live(url, client) as ws:
            next_of(ws, "hello")
            assert command(ws, type="take_over", robot_id="robot-1")["type"] == "ack"
            for _ in range(6):  # the page renews while it is shown: held for 1.2 s > the 0.6 s lease
                ws.send(json.dumps({"type": "renew", "robot_id": "robot-1"}))
                time.sleep(0.2)
            assert robot.kinds() == ["take_over"]
            wait_for(lambda: robot.kinds() == ["take_over", "hand_back"], timeout=5)
            assert robot.commands[1].hand_back.reason == "lease expired"
            assert command(ws, type="teleop", robot_id="robot-1", action=[0, 0, 0, 0])["error"] == (
                "teleop: take over robot robot-1 before driving it"
            )
    finally:
        robot.close()


def test_teleop_is_limited_to_the_control_rate(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console(teleop_rate_hz=10.0)
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        command(ws, type="take_over", robot_id="robot-1")
        for _ in range(20):
            ws.send(json.dumps({"type": "teleop", "robot_id": "robot-1", "action": [0.1, 0, 0, 1]}))
        error = next_of(ws, "error")
        assert error["error"] == "teleop: more than 10 commands/s to robot robot-1; this one was dropped"


def test_the_fleet_view_shows_each_robot_and_the_watched_robot_camera(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console(robots_ids=("robot-1", "robot-2"))
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        command(ws, type="watch", robot_id="robot-2")

        def watched() -> dict[str, Any]:
            update = next_of(ws, "fleet")
            return update if update.get("robot") and update["robot"]["frame"] else {}

        deadline = time.monotonic() + 5
        while not (update := watched()):
            assert time.monotonic() < deadline
        robots = {r["robot_id"]: r for r in update["robots"]}
        assert set(robots) == {"robot-1", "robot-2"}
        row = robots["robot-2"]
        assert row["state"] == "running" and row["task"] == "reach-v3" and row["policy_version"] == 1
        assert row["last_telemetry_age_s"] is not None and row["last_telemetry_age_s"] < 2
        assert update["robot"]["frame"]["width"] == 16 and len(update["robot"]["state_vector"]) == 39
        # The policy's proposal beside what the robot executed.
        assert update["robot"]["policy_action"] == [0.5, -0.25, 0.0, -1.0]
        assert update["robot"]["action"] == [0.1, 0.2, 0.3, 1.0]
        assert update["learner"]["trainer_enabled"] is False


def test_the_fleet_view_shows_recent_success_and_intervention_rates_from_the_episodes(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    learner, url = start_console(robots_ids=("robot-1", "robot-2"))
    flags = np.zeros(20, np.bool_)
    flags[5:10] = True
    episodes = [
        # robot-1: one clean success, one success an operator rescued (5 of 20 frames), one timeout
        make_episode(20, seed=1, started_at=100.0, intervention=np.zeros(20, np.bool_)),
        make_episode(20, seed=2, started_at=200.0, intervention=flags),
        make_episode(
            20, seed=3, started_at=300.0, outcome=Outcome.TIMEOUT, intervention=np.zeros(20, np.bool_)
        ),
        # robot-2: an episode from a robot that records no operator ranges, and a demonstration (left out)
        make_episode(20, seed=4, started_at=400.0, robot_id="robot-2"),
        make_episode(20, seed=5, started_at=500.0, robot_id="teleop-station", source=Source.OFFLINE),
    ]
    for index, episode in enumerate(episodes[:3]):
        drivers = [("alice" if flag else None) for flag in episode.steps[INTERVENTION]]
        episode.extra = {OPERATOR_FRAMES: encode_operator_frames(drivers)}
        assert bool(index == 1) == bool(episode.steps[INTERVENTION].any())
    for episode in episodes:
        assert upload(learner.fleet(), chunks_of(episode), robot_id=episode.robot_id).committed
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        deadline = time.monotonic() + 10  # the figures are recomputed every few seconds
        while True:
            update = next_of(ws, "fleet")
            robots = {r["robot_id"]: r for r in update["robots"]}
            if robots["robot-2"]["recent"] is not None or time.monotonic() > deadline:
                break
    assert robots["robot-1"]["recent"] == {
        "episodes": 3,
        "autonomous_success": pytest.approx(1 / 3),
        "success": pytest.approx(2 / 3),
        "intervention_rate": pytest.approx(5 / 60),
    }
    assert robots["robot-2"]["recent"]["episodes"] == 1
    history = client.get("/api/history").json()
    # Five episodes in the replay, four of them the fleet's (the demonstration is not fleet behaviour); one
    # from a robot that records no operator ranges.
    assert history["episodes"] == 4 and history["unattributed"] == 1
    assert [point["t"] for point in history["points"]] == sorted(point["t"] for point in history["points"])
    assert update["history"] == history


def test_a_console_address_in_use_is_one_clear_error(start_learner: StartLearner) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on console\.address 127\.0\.0\.1:{port}"):
            start_learner(console=ConsoleConfig(address=f"127.0.0.1:{port}"))


def test_with_learner_tls_the_console_serves_https_with_the_same_certificate(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    from test_learner_tls import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    add_accounts(tmp_path / "run", {"alice": ConsoleRole.OPERATOR})
    server = replace(
        ServerConfig(address="127.0.0.1:0"), tls=TlsConfig(cert_file=str(cert), key_file=str(key))
    )
    learner = start_learner(server=server, console=ConsoleConfig(address="127.0.0.1:0"))
    assert learner.service.console is not None
    url = learner.service.console.url
    assert url.startswith("https://127.0.0.1:")
    client = httpx.Client(base_url=url, timeout=10, verify=ssl.create_default_context(cafile=str(cert)))
    response = client.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert "secure" in response.headers["set-cookie"].lower()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://"), timeout=3)


def test_an_oversized_frame_ends_only_that_connection(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    _, url = start_console()
    client, _ = log_in(url, "alice")
    with live(url, client) as ws:
        next_of(ws, "hello")
        ws.send("x" * 200_000)  # beyond the server's frame cap: the protocol closes the connection (1009)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with live(url, client) as ws:  # the server is fine
        next_of(ws, "hello")
        assert command(ws, type="ping")["type"] == "pong"


def test_the_python_client_drives_a_robot_as_the_page_does_and_raises_refusals(
    start_console: Callable[..., tuple[RunningLearner, str]],
) -> None:
    from cloud_learner.console.client import ConsoleClient, ConsoleCommandError

    learner, url = start_console(robots_ids=("robot-1",))
    robot = fake_robot(learner, "robot-2")
    try:
        with pytest.raises(ConsoleCommandError, match="login as 'alice' refused: wrong username or password"):
            ConsoleClient(url, "alice", "wrong password")
        with (
            ConsoleClient(url, "alice", PASSWORD) as alice,
            alice.live() as live,
            ConsoleClient(url, "bob", PASSWORD) as bob,
            bob.live() as bob_live,
        ):
            assert live.hello["username"] == "alice"
            assert live.take_over("robot-2", reason="script")["held_by"] == "alice"
            with pytest.raises(ConsoleCommandError, match="robot-2 is held by alice"):
                bob_live.take_over("robot-2")
            live.teleop("robot-2", [0.25, 0.0, 0.0, -1.0])
            wait_for(lambda: len(robot.teleop_actions()) == 1)
            bob_live.teleop("robot-2", [1.0, 0.0, 0.0, -1.0])  # refused: not bob's robot
            deadline = time.monotonic() + 5
            while not any("robot-2 is held by alice" in error for error in bob_live.errors):
                assert time.monotonic() < deadline, bob_live.errors
                bob_live.next_update()
            assert live.hand_back("robot-2")["held_by"] is None
            assert {row["robot_id"] for row in alice.get("fleet")["robots"]} == {"robot-1", "robot-2"}
        assert robot.kinds() == ["take_over", "teleop_action", "hand_back"]
        np.testing.assert_allclose(robot.teleop_actions()[0], [0.25, 0, 0, -1])
    finally:
        robot.close()


def test_an_admin_pins_and_rolls_back_the_fleet_and_others_may_not(
    start_console: Callable[..., tuple[RunningLearner, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud_learner.console")
    learner, url = start_console()
    publisher = learner.service.publisher
    for _ in range(3):
        publisher.publish_next(lambda number: make_checkpoint_blob(number, number - 1, seed=number))
    admin, session = log_in(url, "root")
    operator, operator_session = log_in(url, "alice")
    csrf = {CSRF_HEADER: session["csrf_token"]}
    refused = operator.post(
        "/api/fleet/pin", json={"version": 1}, headers={CSRF_HEADER: operator_session["csrf_token"]}
    )
    assert (
        refused.status_code == 403
        and refused.json()["detail"] == "needs the admin role; alice has the operator role"
    )
    assert admin.post("/api/fleet/pin", json={"version": 1}).status_code == 403  # no CSRF token
    for body, status, detail in (
        ({"version": 9}, 404, "checkpoint v9 is not held (kept: [1, 2, 3])"),
        ({"version": 0}, 422, "version"),
        ({"version": "1; rm -rf /"}, 422, "version"),
        ({"version": 1, "reason": "x" * 500}, 422, "reason"),
        ({"version": 1, "extra": 1}, 422, "extra"),
    ):
        answer = admin.post("/api/fleet/pin", json=body, headers=csrf)
        assert answer.status_code == status and detail in answer.json()["detail"], (body, answer.text)
    pinned = admin.post("/api/fleet/pin", json={"version": 1, "reason": "v2 drops the cup"}, headers=csrf)
    assert pinned.status_code == 200, pinned.text
    assert {"version": 4, "requested": 1, "by": "root"}.items() <= pinned.json().items()
    view = admin.get("/api/learner").json()
    assert (view["latest_version"], view["fleet_version"]) == (4, 4)
    assert view["pin"]["requested"] == 1 and view["pin"]["reason"] == "v2 drops the cup"
    assert "console: 'root' pinned the fleet to v1 ('v2 drops the cup')" in caplog.text
    publisher.publish_next(lambda number: make_checkpoint_blob(number, number - 1, seed=number))
    assert admin.get("/api/learner").json()["fleet_version"] == 4  # held while pinned
    unpinned = admin.delete("/api/fleet/pin", headers=csrf)
    assert unpinned.status_code == 200 and unpinned.json() == {"fleet_version": 5}
    assert admin.get("/api/learner").json()["pin"] is None
