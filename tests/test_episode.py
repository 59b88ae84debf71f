from __future__ import annotations

import numpy as np
import pytest

from sop.episode import (
    ACTION,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    EpisodeError,
    Outcome,
    new_episode_id,
)


def make_episode(num_steps: int = 5) -> Episode:
    steps = {
        STATE: np.zeros((num_steps, 39), np.float32),
        ACTION: np.zeros((num_steps, 4), np.float32),
        POLICY_ACTION: np.zeros((num_steps, 4), np.float32),
        INTERVENTION: np.zeros(num_steps, np.bool_),
        POLICY_VERSION: np.zeros(num_steps, np.int64),
        TIMESTAMP: np.arange(num_steps, dtype=np.float64),
        REWARD: np.zeros(num_steps, np.float32),
        "observation.images.top": np.zeros((num_steps, 8, 8, 3), np.uint8),
    }
    return Episode(
        new_episode_id(), "robot-1", "reach-v3", "reach the goal", Outcome.SUCCESS, 0.0, 1.0, steps
    )


def test_valid_episode_passes() -> None:
    episode = make_episode()
    episode.validate()
    assert episode.num_steps == 5
    assert episode.camera_names == ["top"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.steps.pop(POLICY_ACTION), POLICY_ACTION),
        (lambda e: e.steps.__setitem__(ACTION, np.zeros((5, 4), np.float64)), ACTION),
        (lambda e: e.steps.__setitem__(STATE, np.full((5, 39), np.nan, np.float32)), STATE),
        (lambda e: e.steps.__setitem__(REWARD, np.zeros(4, np.float32)), REWARD),
        (
            lambda e: e.steps.__setitem__("observation.images.top", np.zeros((5, 8, 8), np.uint8)),
            "observation.images.top",
        ),
        (lambda e: e.steps.__setitem__("pickle_me", np.zeros(5, np.float32)), "pickle_me"),
        (lambda e: setattr(e, "episode_id", "not-a-uuid"), "episode_id"),
        (lambda e: setattr(e, "task", ""), "task"),
        (lambda e: setattr(e, "ended_at", -1.0), "ended_at"),
    ],
)
def test_schema_violations_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    episode = make_episode()
    mutate(episode)
    with pytest.raises(EpisodeError) as info:
        episode.validate()
    assert info.value.field_name == field
    assert field in str(info.value)
