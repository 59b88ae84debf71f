"""Robot client fixtures: an in-test learner on a free loopback port and configs with short timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_learner import FakeLearner
from robot_fakes import ConfigFactory

from robot_client.config import (
    ControlConfig,
    LearnerLinkConfig,
    MetricsConfig,
    RobotConfig,
    SpoolConfig,
    UploadConfig,
)

torch.set_num_threads(1)


@pytest.fixture
def learner() -> Iterator[FakeLearner]:
    server = FakeLearner().start()
    yield server
    server.stop()


@pytest.fixture
def robot_config(tmp_path: Path) -> ConfigFactory:
    """`robot_config(address, control=..., upload=..., ...)`: a config with quick retries, under tmp_path."""

    def make(address: str | None = None, **overrides: Any) -> RobotConfig:
        config = RobotConfig(
            robot_id="robot-1",
            data_dir=str(tmp_path / "robots"),
            learner=LearnerLinkConfig(
                address=address,
                rpc_timeout_s=2.0,
                upload_timeout_s=10.0,
                fetch_timeout_s=10.0,
                stream_timeout_s=30.0,
                reconnect_initial_s=0.05,
                reconnect_max_s=0.3,
            ),
            control=ControlConfig(rate_hz=200.0, max_episode_steps=12, telemetry_hz=50.0),
            spool=SpoolConfig(durable=False, flush_every_steps=4),
            upload=UploadConfig(
                backoff_initial_s=0.05, backoff_max_s=0.3, resource_exhausted_min_s=0.2, poll_interval_s=0.1
            ),
            metrics=MetricsConfig(log_interval_s=0.0, heartbeat_interval_s=0.2),
        )
        return replace(config, **overrides)

    return make
