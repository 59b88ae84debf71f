"""The served policy's features as the contract for episodes and robots (sop/policy_features.py)."""

from __future__ import annotations

import pytest

from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, IMAGE_PREFIX, STATE
from sop.policy_features import FeatureMismatchError, PolicyFeatures

FEATURES = PolicyFeatures.from_policy_config(
    {"state_dim": 39, "action_dim": 4, "cameras": ["top"], "tasks": ["reach-v3", "push-v3"]}
)


def test_a_fitting_episode_passes_and_extra_cameras_are_kept() -> None:
    FEATURES.check_episode(make_episode(5, cameras=("top", "wrist")))


@pytest.mark.parametrize(
    ("episode_kwargs", "key", "received"),
    [
        ({"state_dim": 5}, STATE, "(5, 5)"),
        ({"action_dim": 7}, ACTION, "(5, 7)"),
        ({"cameras": ("wrist",)}, IMAGE_PREFIX + "top", "no such key"),
        ({"task": "made-up-v1"}, "task", "made-up-v1"),
    ],
)
def test_a_misfit_names_the_key_the_expected_and_the_received(
    episode_kwargs: dict, key: str, received: str
) -> None:
    with pytest.raises(FeatureMismatchError) as raised:
        FEATURES.check_episode(make_episode(5, **{"cameras": ("top",), **episode_kwargs}))
    assert raised.value.key == key
    assert received in str(raised.value)


def test_image_size_is_checked_when_the_policy_fixes_one() -> None:
    features = PolicyFeatures.from_policy_config({"state_dim": 39, "cameras": ["top"], "image_size": [8, 8]})
    features.check_episode(make_episode(5, image_size=(8, 8)))
    with pytest.raises(FeatureMismatchError, match="8x8"):
        features.check_episode(make_episode(5, image_size=(16, 16)))


def test_unconstrained_tasks_can_be_restricted_to_the_learners_task_set() -> None:
    open_tasks = PolicyFeatures.from_policy_config({"state_dim": 39, "action_dim": 4})
    open_tasks.check_task("anything-v1")
    restricted = open_tasks.with_tasks(["reach-v3"])
    with pytest.raises(FeatureMismatchError):
        restricted.check_task("anything-v1")
    assert FEATURES.with_tasks(["other"]).tasks == FEATURES.tasks  # the policy's own list wins


def test_capabilities_are_checked_and_unannounced_dimensions_are_not() -> None:
    assert FEATURES.capability_problems(tasks=["reach-v3"], state_dim=39, action_dim=4, cameras=["top"]) == []
    assert FEATURES.capability_problems(tasks=[], state_dim=0, action_dim=0, cameras=["top"]) == []
    problems = FEATURES.capability_problems(tasks=["x-v1"], state_dim=5, action_dim=4, cameras=[])
    assert [p.split(":")[0] for p in problems] == ["state_dim", "cameras", "tasks"]
