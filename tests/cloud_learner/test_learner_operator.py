"""Operator sessions relayed over real gRPC on 127.0.0.1: commands down, telemetry up, silent robots cut."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from learner_fixtures import RunningLearner, auth, wait_for

from sop.data.codec import decode_tensor
from sop.v1 import operator_pb2

StartLearner = Callable[..., RunningLearner]


class RobotSession:
    """A robot's side of Operator.Session: sends queued telemetry, collects commands on a thread."""

    def __init__(self, learner: RunningLearner, robot_id: str) -> None:
        self.outgoing: queue.Queue[operator_pb2.RobotTelemetry | None] = queue.Queue()
        self.commands: queue.Queue[operator_pb2.OperatorCommand] = queue.Queue()
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        self.call = learner.operator().Session(self._telemetry(), metadata=auth(robot_id), timeout=30)
        threading.Thread(target=self._receive, daemon=True).start()

    def _telemetry(self) -> Iterator[operator_pb2.RobotTelemetry]:
        while (message := self.outgoing.get()) is not None:
            yield message

    def _receive(self) -> None:
        try:
            for command in self.call:
                self.commands.put(command)
        except grpc.RpcError as exc:
            self.error = exc
        self.ended.set()

    def send(self, step: int, robot_id: str) -> None:
        self.outgoing.put(operator_pb2.RobotTelemetry(robot_id=robot_id, step=step, task="reach-v3"))

    def close(self) -> None:
        self.outgoing.put(None)
        self.call.cancel()


def test_console_commands_reach_the_robot_and_telemetry_reaches_the_console(
    start_learner: StartLearner,
) -> None:
    learner = start_learner()
    relay = learner.service.relay
    robot = RobotSession(learner, "robot-1")
    robot.send(7, "robot-1")
    wait_for(lambda: relay.telemetry("robot-1") is not None)
    telemetry = relay.telemetry("robot-1")
    assert telemetry is not None and telemetry.step == 7
    assert relay.connected_robots() == ["robot-1"]
    assert relay.take_over("robot-1", "alice", "heading off the table")
    assert relay.teleop("robot-1", "alice", np.array([0.1, 0.0, -0.2, 1.0]))
    assert relay.hand_back("robot-1", "alice")
    assert relay.label_outcome("robot-1", "alice", "0b7e6a8e-4f25-4e0a-9a55-2f3e8d2d5c11", "success")
    received = [robot.commands.get(timeout=5) for _ in range(4)]
    assert [c.WhichOneof("command") for c in received] == [
        "take_over",
        "teleop_action",
        "hand_back",
        "outcome_label",
    ]
    assert received[0].operator_id == "alice" and received[0].take_over.reason == "heading off the table"
    np.testing.assert_allclose(
        decode_tensor(received[1].teleop_action.action, "action"), [0.1, 0.0, -0.2, 1.0]
    )
    assert received[3].outcome_label.outcome == "success"
    with pytest.raises(ValueError, match="outcome"):
        relay.label_outcome("robot-1", "alice", "x", "great")
    robot.close()


def test_commands_to_an_absent_robot_are_not_accepted(start_learner: StartLearner) -> None:
    learner = start_learner()
    assert not learner.service.relay.take_over("robot-4", "alice")


def test_a_silent_session_is_cut_while_another_robot_keeps_working(start_learner: StartLearner) -> None:
    learner = start_learner()
    relay = learner.service.relay
    silent = RobotSession(learner, "robot-1")
    silent.send(0, "robot-1")
    busy = RobotSession(learner, "robot-2")
    wait_for(lambda: relay.connected_robots() == ["robot-1", "robot-2"])
    start = time.monotonic()
    while time.monotonic() - start < 2.5:  # longer than the 1.5 s idle timeout
        busy.send(1, "robot-2")
        time.sleep(0.1)
    assert silent.ended.wait(5)
    assert relay.connected_robots() == ["robot-2"]
    assert relay.take_over("robot-2", "bob")
    assert busy.commands.get(timeout=5).WhichOneof("command") == "take_over"
    busy.close()


def test_telemetry_naming_another_robot_is_ignored(start_learner: StartLearner) -> None:
    learner = start_learner()
    relay = learner.service.relay
    robot = RobotSession(learner, "robot-1")
    robot.send(1, "robot-3")  # spoofed: ignored
    robot.send(2, "robot-1")
    wait_for(lambda: relay.telemetry("robot-1") is not None)
    telemetry = relay.telemetry("robot-1")
    assert telemetry is not None and telemetry.step == 2
    assert relay.telemetry("robot-3") is None
    robot.close()
