"""Synthetic episodes that satisfy the schema: fixtures for tests and payloads for `sop bench data`.

Values are deterministic in the seed and distinct per step (state[t] starts with t, timestamps increase), so
a test that reads a window back can tell which frames it got.

    make_episode(num_steps=20, *, state_dim=39, action_dim=4, cameras=("top",), image_size=(8, 8), seed=0,
                 task="reach-v3", instruction="reach the goal", source=Source.ONLINE,
                 outcome=Outcome.SUCCESS, robot_id="robot-1", started_at=None, fps=30.0,
                 intervention=None, policy_version=0, episode_id=None) -> Episode
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sop.episode import (
    ACTION,
    IMAGE_PREFIX,
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


def make_episode(
    num_steps: int = 20,
    *,
    state_dim: int = 39,
    action_dim: int = 4,
    cameras: Sequence[str] = ("top",),
    image_size: tuple[int, int] = (8, 8),
    seed: int = 0,
    task: str = "reach-v3",
    instruction: str = "reach the goal",
    source: Source = Source.ONLINE,
    outcome: Outcome = Outcome.SUCCESS,
    robot_id: str = "robot-1",
    started_at: float | None = None,
    fps: float = 30.0,
    intervention: np.ndarray | None = None,
    policy_version: int = 0,
    episode_id: str | None = None,
) -> Episode:
    """A valid episode with recognisable per-step values (see the module docstring)."""
    rng = np.random.default_rng(seed)
    start = float(1_700_000_000 + seed) if started_at is None else float(started_at)
    frame = np.arange(num_steps, dtype=np.float32)
    state = rng.standard_normal((num_steps, state_dim), dtype=np.float32)
    state[:, 0] = frame
    action = rng.uniform(-1, 1, (num_steps, action_dim)).astype(np.float32)
    action[:, 0] = frame
    policy_action = action + rng.normal(0, 0.05, action.shape).astype(np.float32)
    steps: dict[str, np.ndarray] = {
        STATE: state,
        ACTION: action,
        POLICY_ACTION: policy_action,
        INTERVENTION: (
            np.zeros(num_steps, np.bool_) if intervention is None else np.asarray(intervention, np.bool_)
        ),
        POLICY_VERSION: np.full(num_steps, policy_version, np.int64),
        TIMESTAMP: start + np.arange(num_steps, dtype=np.float64) / fps,
        REWARD: rng.uniform(0, 1, num_steps).astype(np.float32),
    }
    height, width = image_size
    for camera in cameras:
        images = rng.integers(0, 256, (num_steps, height, width, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(num_steps) % 256
        steps[IMAGE_PREFIX + camera] = images
    return Episode(
        episode_id=new_episode_id() if episode_id is None else episode_id,
        robot_id=robot_id,
        task=task,
        instruction=instruction,
        outcome=outcome,
        started_at=start,
        ended_at=start + num_steps / fps,
        steps=steps,
        source=source,
        fps=fps,
    )
