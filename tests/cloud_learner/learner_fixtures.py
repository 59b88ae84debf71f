"""Helpers for the learner tests: a real gRPC learner on 127.0.0.1, robot credentials, upload helpers.

A uniquely named module (not conftest.py) so test files can import the helpers by name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from cloud_learner.config import AuthConfig, IngestConfig, LearnerConfig, ServerConfig, TrainerConfig
from cloud_learner.service import LearnerService
from sop.checkpoint import build_checkpoint, checkpoint_to_bytes
from sop.credentials import Role, TokenRegistry, call_metadata
from sop.data.codec import encode_episode
from sop.data.upload_chunks import split_into_chunks
from sop.episode import Episode
from sop.v1 import fleet_pb2, fleet_pb2_grpc, operator_pb2_grpc

ROBOTS = {f"robot-{i}": f"token-of-robot-{i}" for i in range(1, 5)}
# Tokens of the other roles (sop.credentials.Role), in the same token-hash file.
DEMONSTRATORS = {"teleop-station": "token-of-teleop-station"}
OPERATORS = {"operator-1": "token-of-operator-1"}
TOKENS = {**ROBOTS, **DEMONSTRATORS, **OPERATORS}


@pytest.fixture
def token_hashes_file(tmp_path: Path) -> Path:
    registry = TokenRegistry({})
    for robot_id, token in ROBOTS.items():
        registry.add(robot_id, token)
    for robot_id, token in DEMONSTRATORS.items():
        registry.add(robot_id, token, Role.DEMONSTRATOR)
    for robot_id, token in OPERATORS.items():
        registry.add(robot_id, token, Role.OPERATOR)
    path = tmp_path / "token_hashes.json"
    registry.write(path)
    return path


def learner_config(run_dir: Path, token_hashes_file: Path, **overrides: Any) -> LearnerConfig:
    """A learner on a free loopback port with short liveness timeouts; the trainer off unless asked."""
    config = LearnerConfig(
        run_dir=str(run_dir),
        server=ServerConfig(
            address="127.0.0.1:0",
            max_workers=64,
            stream_idle_timeout_s=1.5,
            watch_check_interval_s=0.1,
            shutdown_grace_s=0.2,
        ),
        auth=AuthConfig(token_hashes_file=str(token_hashes_file)),
        ingest=IngestConfig(),
        trainer=TrainerConfig(enabled=False),
    )
    return replace(config, **overrides)


class RunningLearner:
    """A started `LearnerService` plus per-robot stubs."""

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config
        self.service = LearnerService(config)
        self.port = self.service.start()
        self.address = f"127.0.0.1:{self.port}"
        self._channels: list[grpc.Channel] = []

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def fleet(self) -> fleet_pb2_grpc.FleetStub:
        return fleet_pb2_grpc.FleetStub(self.channel())

    def operator(self) -> operator_pb2_grpc.OperatorStub:
        return operator_pb2_grpc.OperatorStub(self.channel())

    def restart(self) -> None:
        self.service.stop()
        self.service = LearnerService(self.config)
        self.port = self.service.start()
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.service.stop()


@pytest.fixture
def start_learner(tmp_path: Path, token_hashes_file: Path) -> Iterator[Callable[..., RunningLearner]]:
    started: list[RunningLearner] = []

    def start(**overrides: Any) -> RunningLearner:
        learner = RunningLearner(learner_config(tmp_path / "run", token_hashes_file, **overrides))
        started.append(learner)
        return learner

    yield start
    for learner in started:
        learner.close()


def auth(robot_id: str = "robot-1") -> tuple[tuple[str, str], ...]:
    return call_metadata(robot_id, TOKENS[robot_id])


def chunks_of(episode: Episode, max_chunk_bytes: int = 1 << 20) -> list[fleet_pb2.EpisodeChunk]:
    return split_into_chunks(episode.episode_id, encode_episode(episode), max_chunk_bytes)


def upload(
    stub: fleet_pb2_grpc.FleetStub,
    chunks: Sequence[fleet_pb2.EpisodeChunk],
    robot_id: str = "robot-1",
    timeout: float = 10.0,
) -> fleet_pb2.UploadReceipt:
    receipt: fleet_pb2.UploadReceipt = stub.UploadEpisode(
        iter(chunks), metadata=auth(robot_id), timeout=timeout
    )
    return receipt


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class HeldStream:
    """A request stream that sends `chunks`, then blocks until released (a robot that went quiet)."""

    def __init__(self, chunks: Sequence[fleet_pb2.EpisodeChunk]) -> None:
        self.chunks = list(chunks)
        self.sent = threading.Event()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[fleet_pb2.EpisodeChunk]:
        yield from self.chunks
        self.sent.set()
        self.release.wait(30)


def make_checkpoint_blob(
    version: int, parent_version: int | None = None, size: int = 1000, seed: int = 0
) -> bytes:
    """A checkpoint in sop/checkpoint.py's format holding `size` float32 weights."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"weight": torch.randn(size, generator=generator)}
    checkpoint = build_checkpoint(
        tensors,
        policy_type="test",
        version=version,
        parent_version=parent_version,
        policy_config={},
        normalization={},
    )
    return checkpoint_to_bytes(checkpoint)


def small_policy_config(tasks: Sequence[str] = ("reach-v3",)) -> Any:
    """A tiny state-only diffusion policy (fast on one CPU core) for learner tests."""
    from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind

    return DiffusionPolicyConfig(
        state_dim=39,
        action_dim=4,
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=tuple(tasks),
        state_hidden_dim=32,
        state_feature_dim=16,
        instruction_feature_dim=8,
        down_dims=(16, 32),
        timestep_embed_dim=16,
    )


def write_base_checkpoint(
    path: Path, episodes: Sequence[Episode], tasks: Sequence[str] = ("reach-v3",)
) -> Path:
    """A freshly initialised small policy with the episodes' normalization statistics, saved as version 0."""
    from sop.episode import ACTION, STATE
    from sop.normalization import NormalizationStats
    from sop.policies.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    stats = NormalizationStats.from_arrays({key: [e.steps[key] for e in episodes] for key in (STATE, ACTION)})
    policy = DiffusionPolicy(small_policy_config(tasks), stats, version=0)
    return policy.save(path)


ROBOT_FAKES = Path(__file__).resolve().parents[1] / "robot_client"


def start_robot_daemon(
    learner: RunningLearner,
    robot_id: str,
    tmp_path: Path,
    task: str = "reach-v3",
    max_episode_steps: int = 900,
) -> Any:
    """A real robot daemon (in this process) with a Meta-World robot at 30 Hz, connected to `learner` with
    the operator console's session on; its policy barely moves (actions of 0.01), so whatever moves the
    hand is an operator. Started; the caller stops it."""
    import sys

    from robot_client.config import (
        ControlConfig,
        LearnerLinkConfig,
        MetricsConfig,
        OperatorConfig,
        RobotConfig,
        RobotPluginConfig,
        SpoolConfig,
        UploadConfig,
    )
    from robot_client.daemon import RobotDaemon

    sys.path.insert(0, str(ROBOT_FAKES))
    from robot_fakes import FakePolicy

    token = tmp_path / f"{robot_id}.token"
    token.write_text(TOKENS[robot_id])
    config = RobotConfig(
        robot_id=robot_id,
        data_dir=str(tmp_path / "robots"),
        learner=LearnerLinkConfig(
            address=f"127.0.0.1:{learner.service.port}",
            token_file=str(token),
            rpc_timeout_s=2.0,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.3,
        ),
        control=ControlConfig(rate_hz=30.0, max_episode_steps=max_episode_steps, telemetry_hz=10.0),
        robot=RobotPluginConfig(type="metaworld", task=task, seed=int(robot_id[-1])),
        operator=OperatorConfig(type="none", remote=True),
        spool=SpoolConfig(durable=False, flush_every_steps=10),
        upload=UploadConfig(backoff_initial_s=0.05, backoff_max_s=0.3, poll_interval_s=0.1),
        metrics=MetricsConfig(log_interval_s=0.0, heartbeat_interval_s=0.5),
    )
    daemon = RobotDaemon(config, base_policy=FakePolicy(1, action_dim=4))
    daemon.start()
    return daemon
