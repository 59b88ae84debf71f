"""Scripted demonstrations: schema, offline provenance, stopping rule, seeding, and the store command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sim
from sim.demonstrations import EPISODE_FPS, demonstration_seeds, main, record_demonstrations
from sop.episode import (
    ACTION,
    IMAGE_PREFIX,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Outcome,
    Source,
)


def test_demonstrations_are_valid_offline_episodes_that_stop_after_success() -> None:
    episodes = record_demonstrations("reach-v3", 2, seed=0, steps_after_success=5)
    assert len(episodes) == 2
    for episode in episodes:
        episode.validate()
        assert episode.source is Source.OFFLINE
        assert episode.outcome is Outcome.SUCCESS
        assert episode.task == "reach-v3"
        assert episode.robot_id == "scripted-expert"
        assert episode.instruction in sim.get_task("reach-v3").instructions
        assert episode.fps == EPISODE_FPS
        steps = episode.steps
        n = episode.num_steps
        np.testing.assert_array_equal(steps[POLICY_ACTION], steps[ACTION])
        assert not steps[INTERVENTION].any()
        assert (steps[POLICY_VERSION] == -1).all()
        np.testing.assert_allclose(steps[TIMESTAMP], np.arange(n) / 30.0)
        assert steps[STATE].shape == (n, 39) and steps[REWARD].shape == (n,)
        assert np.abs(steps[ACTION]).max() <= 1.0
        # The episode ends exactly `steps_after_success` steps after the first successful step.
        assert int(episode.extra["success_step"]) == n - 1 - 5
    assert episodes[0].episode_id != episodes[1].episode_id


def test_same_seed_records_the_same_demonstrations_and_seeds_differ_per_task() -> None:
    first = record_demonstrations("push-v3", 2, seed=3, noise=0.2)
    second = record_demonstrations("push-v3", 2, seed=3, noise=0.2)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.steps[STATE], b.steps[STATE])
        np.testing.assert_array_equal(a.steps[ACTION], b.steps[ACTION])
        assert a.instruction == b.instruction
    assert demonstration_seeds("push-v3", 2, 3) != demonstration_seeds("reach-v3", 2, 3)
    assert demonstration_seeds("push-v3", 3, 3)[:2] == demonstration_seeds("push-v3", 2, 3)


def test_an_episode_that_never_succeeds_is_a_timeout() -> None:
    config = sim.EnvConfig(max_episode_steps=8)
    (episode,) = record_demonstrations("pick-place-v3", 1, seed=0, env_config=config)
    assert episode.outcome is Outcome.TIMEOUT
    assert episode.num_steps == 8
    assert "success_step" not in episode.extra


def test_image_demonstrations_carry_camera_frames() -> None:
    config = sim.EnvConfig(max_episode_steps=6, image_height=32, image_width=40)
    (episode,) = record_demonstrations("reach-v3", 1, seed=0, image=True, env_config=config)
    frames = episode.steps[IMAGE_PREFIX + "corner2"]
    assert frames.shape == (6, 32, 40, 3) and frames.dtype == np.uint8
    episode.validate()


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="noise"):
        record_demonstrations("reach-v3", 1, seed=0, noise=-1.0)
    with pytest.raises(sim.UnknownTaskError):
        record_demonstrations("reach-v9", 1, seed=0)


def test_sop_sim_demos_appends_to_the_episode_store(tmp_path: Path) -> None:
    from sop.data.episode_store import EpisodeStore

    store_dir = tmp_path / "store"
    argv = [
        "--tasks",
        "reach-v3,drawer-close-v3",
        "--episodes",
        "2",
        "--seed",
        "1",
        "--store",
        str(store_dir),
    ]
    assert main(argv) == 0
    store = EpisodeStore(store_dir)
    infos = store.list()
    assert sorted(store.tasks()) == ["drawer-close-v3", "reach-v3"]
    assert len(infos) == 4
    episode = store.get(infos[0].episode_id)
    assert episode.source is Source.OFFLINE
    assert not episode.steps[INTERVENTION].any()
