"""Tiny stores for the world-model tests: a point hand that moves by 0.05 * action toward a goal.

The dynamics are known (state[t + 1, :3] = state[t, :3] + 0.05 * action[t, :3]), so a test can tell a model
that learned them from one that did not; success is "within 5 cm of the goal", recorded as the demonstrations
recorder does (`extra["success_step"]`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sop.data.episode_store import EpisodeStore
from sop.episode import (
    ACTION,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    Outcome,
    Source,
    new_episode_id,
)
from sop.world.configuration_world import WorldModelConfig
from sop.world.train import TrainWorldConfig, train_world

STEP_SCALE = 0.05
TINY_WORLD = WorldModelConfig(
    hidden_dim=48, num_blocks=2, task_embed_dim=4, noise_embed_dim=16, success_hidden_dim=32
)


def point_episode(task: str, seed: int, steps: int = 30, state_dim: int = 39, noise: float = 0.3) -> Episode:
    rng = np.random.default_rng(seed)
    state = np.zeros((steps, state_dim), np.float32)
    state[0, :3] = rng.uniform(-0.5, 0.5, 3)
    goal = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    state[:, -3:] = goal
    actions = np.zeros((steps, 4), np.float32)
    success_step = None
    for t in range(steps):
        actions[t, :3] = np.clip(5 * (goal - state[t, :3]) + rng.normal(0, noise, 3), -1, 1)
        if t + 1 < steps:
            state[t + 1, :3] = state[t, :3] + STEP_SCALE * actions[t, :3]
            if success_step is None and np.linalg.norm(state[t + 1, :3] - goal) < 0.05:
                success_step = t
    extra = {} if success_step is None else {"success_step": str(success_step)}
    return Episode(
        episode_id=new_episode_id(),
        robot_id="synthetic",
        task=task,
        instruction=f"do {task}",
        outcome=Outcome.SUCCESS if success_step is not None else Outcome.TIMEOUT,
        started_at=0.0,
        ended_at=1.0,
        source=Source.OFFLINE,
        steps={
            STATE: state,
            ACTION: actions,
            POLICY_ACTION: actions.copy(),
            INTERVENTION: np.zeros(steps, bool),
            POLICY_VERSION: np.full(steps, -1, np.int64),
            TIMESTAMP: np.arange(steps, dtype=np.float64) / 30,
            REWARD: np.zeros(steps, np.float32),
        },
        extra=extra,
    )


def make_point_store(root: Path, episodes: int = 10, state_dim: int = 39) -> Path:
    store = EpisodeStore(root, durable=False)
    for index in range(episodes):
        store.append(point_episode("reach-v3" if index % 2 else "push-v3", index, state_dim=state_dim))
    return root


@pytest.fixture(scope="session")
def point_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_point_store(tmp_path_factory.mktemp("world") / "store")


@pytest.fixture
def make_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory: make_store(name, episodes=10, state_dim=39) -> path of a new point store."""

    def make(name: str, episodes: int = 10, state_dim: int = 39) -> Path:
        return make_point_store(tmp_path / name, episodes, state_dim)

    return make


def tiny_train_config(store: Path, out: Path, **changes: object) -> TrainWorldConfig:
    values: dict[str, object] = {
        "store": str(store),
        "out": str(out),
        "steps": 300,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup_steps": 10,
        "save_every": 100,
        "progress": False,
        "model": TINY_WORLD,
    }
    values.update(changes)
    return TrainWorldConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def train_config() -> Callable[..., TrainWorldConfig]:
    """tiny_train_config(store, out, **changes): a tiny, fast world-model training run."""
    return tiny_train_config


@pytest.fixture(scope="session")
def trained(point_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world model trained for 300 steps on the point store (a few seconds)."""
    out = tmp_path_factory.mktemp("world") / "model"
    train_world(tiny_train_config(point_store, out))
    return out
