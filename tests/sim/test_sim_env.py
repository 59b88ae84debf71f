"""The task environments: registration, gymnasium's checker, seeding, observations, and bad input."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim import EnvConfig, EpisodeNotRunningError, InvalidActionError, UnknownTaskError, make_env
from sim.metaworld_env import STATE_DIM


def _rollout(env: sim.MetaWorldEnv, seed: int, steps: int) -> tuple[np.ndarray, str, list[float]]:
    observation, _ = env.reset(seed=seed)
    states = [observation["state"]]
    rewards = []
    rng = np.random.default_rng(123)
    for _ in range(steps):
        observation, reward, _, _, _ = env.step(rng.uniform(-1, 1, size=4).astype(np.float32))
        states.append(observation["state"])
        rewards.append(float(reward))
    return np.stack(states), observation["instruction"], rewards


@pytest.mark.parametrize("task", sim.TASK_NAMES)
def test_every_registered_task_passes_the_gymnasium_env_checker(task: str) -> None:
    env = gymnasium.make(f"sop/{task}", config=EnvConfig(max_episode_steps=50))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the checker reports problems as warnings
            check_env(env.unwrapped, skip_render_check=True)
        observation, _ = env.reset(seed=1)
        assert env.observation_space.contains(observation)
    finally:
        env.close()


def test_all_mt10_tasks_are_registered_under_the_sop_namespace() -> None:
    assert set(sim.MT10_TASKS) == {
        "reach-v3",
        "push-v3",
        "pick-place-v3",
        "door-open-v3",
        "drawer-open-v3",
        "drawer-close-v3",
        "button-press-topdown-v3",
        "peg-insert-side-v3",
        "window-open-v3",
        "window-close-v3",
    }
    for task in sim.MT10_TASKS:
        assert f"sop/{task}" in gymnasium.registry


def test_same_seed_gives_the_same_trajectory_and_different_seeds_differ() -> None:
    env = make_env("push-v3")
    try:
        states_a, instruction_a, rewards_a = _rollout(env, seed=7, steps=20)
        states_b, instruction_b, rewards_b = _rollout(env, seed=7, steps=20)
        states_c, _, _ = _rollout(env, seed=8, steps=20)
    finally:
        env.close()
    np.testing.assert_array_equal(states_a, states_b)
    assert rewards_a == rewards_b
    assert instruction_a == instruction_b
    # A new seed moves the puck (4:7) and the goal (36:39).
    assert not np.allclose(states_a[0, 4:7], states_c[0, 4:7])
    assert not np.allclose(states_a[0, 36:39], states_c[0, 36:39])


def test_make_env_seed_fixes_the_sequence_of_unseeded_resets() -> None:
    first, second = make_env("reach-v3", seed=3), make_env("reach-v3", seed=3)
    try:
        goals_first = [first.reset()[0]["state"][36:39] for _ in range(3)]
        goals_second = [second.reset()[0]["state"][36:39] for _ in range(3)]
    finally:
        first.close()
        second.close()
    np.testing.assert_array_equal(np.stack(goals_first), np.stack(goals_second))
    assert not np.allclose(goals_first[0], goals_first[1]), "unseeded resets must draw new layouts"


def test_goal_is_observable_and_inside_the_task_goal_space() -> None:
    env = make_env("reach-v3")
    try:
        for seed in range(5):
            state = env.reset(seed=seed)[0]["state"]
            goal_space = env._sim.goal_space
            assert goal_space is not None
            assert goal_space.contains(state[36:39].astype(np.float64))
            target = env._sim._target_pos
            assert target is not None
            np.testing.assert_allclose(state[36:39], target, atol=1e-6)
            # Stays visible after a step (Meta-World clips the observation to its own space).
            state_after = env.step(np.zeros(4, dtype=np.float32))[0]["state"]
            np.testing.assert_allclose(state_after[36:39], state[36:39], atol=1e-6)
    finally:
        env.close()


def test_instruction_is_a_paraphrase_chosen_by_the_seed() -> None:
    env = make_env("drawer-open-v3")
    try:
        instructions = {env.reset(seed=seed)[0]["instruction"] for seed in range(12)}
    finally:
        env.close()
    assert instructions <= set(sim.get_task("drawer-open-v3").instructions)
    assert len(instructions) >= 3


def test_observation_dtypes_and_action_space() -> None:
    env = make_env("pick-place-v3")
    try:
        observation, info = env.reset(seed=0)
        assert observation["state"].dtype == np.float32
        assert observation["state"].shape == (STATE_DIM,)
        assert "image" not in observation
        assert info == {"success": False}
        action_space = env.action_space
        assert isinstance(action_space, gymnasium.spaces.Box)
        assert action_space.shape == (4,)
        assert action_space.low.min() == -1.0
        assert action_space.high.max() == 1.0
        _, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert isinstance(reward, float)
        assert info["success"] is False
        assert terminated is False and truncated is False
    finally:
        env.close()


def test_truncates_at_max_episode_steps_and_then_refuses_to_step() -> None:
    env = make_env("reach-v3", EnvConfig(max_episode_steps=5))
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4, dtype=np.float32))[3] for _ in range(5)]
        assert flags == [False, False, False, False, True]
        with pytest.raises(EpisodeNotRunningError, match="reset"):
            env.step(np.zeros(4, dtype=np.float32))
    finally:
        env.close()


def test_terminate_on_success_ends_the_episode_on_success() -> None:
    from sim.scripted_experts import ScriptedExpert

    expert = ScriptedExpert("reach-v3")
    env = make_env("reach-v3", EnvConfig(terminate_on_success=True))
    try:
        observation, _ = env.reset(seed=0)
        for _ in range(200):
            observation, _, terminated, truncated, info = env.step(expert.act(observation["state"]))
            if terminated or truncated:
                break
        assert terminated and info["success"] and not truncated
    finally:
        env.close()


def test_step_before_reset_is_a_clear_error() -> None:
    env = make_env("reach-v3")
    try:
        with pytest.raises(EpisodeNotRunningError, match="reset"):
            env.step(np.zeros(4, dtype=np.float32))
    finally:
        env.close()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(3, dtype=np.float32), r"shape \(4,\).*got shape \(3,\)"),
        (np.zeros((2, 4), dtype=np.float32), r"got shape \(2, 4\)"),
        (np.array([0.0, np.nan, 0.0, 0.0]), r"NaN or infinite values at index \[1\]"),
        (np.array([0.0, 0.0, np.inf, 0.0]), r"NaN or infinite values at index \[2\]"),
        ("left", r"action must be 4 numbers"),
    ],
)
def test_bad_actions_raise_a_value_error_naming_the_problem(action: object, message: str) -> None:
    env = make_env("reach-v3")
    try:
        env.reset(seed=0)
        with pytest.raises(InvalidActionError, match=message) as caught:
            env.step(action)  # type: ignore[arg-type]
        assert isinstance(caught.value, ValueError)
        # The env is still usable after the rejected action.
        env.step(np.zeros(4, dtype=np.float32))
    finally:
        env.close()


def test_out_of_range_actions_are_clipped_like_meta_world_does() -> None:
    env = make_env("reach-v3")
    try:
        env.reset(seed=0)
        big = env.step(np.array([5.0, 0.0, 0.0, 0.0]))[0]["state"]
        env.reset(seed=0)
        one = env.step(np.array([1.0, 0.0, 0.0, 0.0]))[0]["state"]
    finally:
        env.close()
    np.testing.assert_array_equal(big, one)


def test_unknown_task_is_a_value_error_with_a_suggestion() -> None:
    with pytest.raises(UnknownTaskError, match=r"'pick-plce-v3'.*did you mean 'pick-place-v3'") as caught:
        make_env("pick-plce-v3")
    assert isinstance(caught.value, ValueError)
    assert "reach-v3" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"image_height": 0}, "image_height"),
        ({"image_width": 4096}, "image_width"),
        ({"image_width": 64.5}, "image_width"),
        ({"camera": "ceiling"}, "camera"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_bad_env_config_names_the_field(overrides: dict[str, object], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        EnvConfig(**overrides)  # type: ignore[arg-type]


def test_image_observation_has_the_configured_shape_and_dtype_and_is_per_env() -> None:
    config = EnvConfig(image=True, image_height=48, image_width=64)
    reach = make_env("reach-v3", config)
    try:
        observation, _ = reach.reset(seed=0)
        image = observation["image"]
        assert image.shape == (48, 64, 3)
        assert image.dtype == np.uint8
        assert reach.observation_space.contains(observation)
        assert image.std() > 10, "a blank frame means the off-screen renderer failed"
        # A second env in the same process has its own GL context; frames of the first must not change.
        drawer = make_env("drawer-open-v3", config)
        try:
            drawer_image = drawer.reset(seed=0)[0]["image"]
            again = reach.reset(seed=0)[0]["image"]
        finally:
            drawer.close()
        np.testing.assert_array_equal(again, image)
        assert not np.array_equal(drawer_image, image)
    finally:
        reach.close()
