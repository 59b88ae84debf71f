"""Deployment conditions: nominal is today's environment, each shift changes what it says and nothing is
left unsolvable, bad configs and unknown presets are refused by name."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from sim.deployment import (
    DISTRACTOR_BODY,
    DISTRACTOR_CLEARANCE,
    DISTRACTOR_REGION,
    HOLD_ACTION,
    NOMINAL,
    DeploymentConfig,
    available_deployments,
    load_deployment,
)
from sim.metaworld_env import EnvConfig, MetaWorldEnv, make_env
from sim.operator import SimulatedOperatorConfig
from sim.scripted_experts import ScriptedExpert
from sop.config import ConfigError, config_from_dict, parse_config

REPO = Path(__file__).resolve().parents[2]
DEMO_TASKS: list[str] = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["tasks"]
SHIFTS = ("shifted-objects", "heavy-objects", "latency", "noisy-sensing", "camera-shift", "distractor")


def _actions(steps: int) -> list[np.ndarray]:
    return [
        np.array([np.sin(t), np.cos(t), 0.3, 1.0 if t > 5 else -1.0], dtype=np.float32) for t in range(steps)
    ]


def _rollout(env: MetaWorldEnv, seed: int, actions: list[np.ndarray]) -> np.ndarray:
    observation, _ = env.reset(seed=seed)
    states = [observation["state"]]
    for action in actions:
        observation, *_ = env.step(action)
        states.append(observation["state"])
    return np.stack(states)


# Nominal ------------------------------------------------------------------------------------------------------


def test_nominal_is_todays_environment_bit_for_bit() -> None:
    # Recorded with the environment as it was before deployments existed (push-v3, seed 7, the actions above):
    # hand, puck and goal after reset, and hand, gripper and puck after 10 steps.
    reset_expected = [0.0045842, 0.6013881, 0.1951435, 0.0536766, 0.6362, 0.0194047, -0.0957807, 0.8113714]
    stepped_expected = [0.0101931, 0.6071233, 0.2143109, 0.9152897, 0.0536629, 0.6361936, 0.0194052]
    states = []
    for config in (
        EnvConfig(),
        EnvConfig(deployment=load_deployment(NOMINAL)),
        EnvConfig(deployment="nominal"),
    ):
        env = make_env("push-v3", config)
        try:
            states.append(_rollout(env, 7, _actions(10)))
            fresh = ALL_V3_ENVIRONMENTS["push-v3"]()
            assert np.array_equal(env._sim.model.geom_friction, fresh.model.geom_friction)
            assert np.array_equal(env._sim.model.body_mass, fresh.model.body_mass)
            assert np.array_equal(env._sim._random_reset_space.low, fresh._random_reset_space.low)
            fresh.close()
        finally:
            env.close()
    assert all(np.array_equal(states[0], other) for other in states[1:])
    assert np.allclose(states[0][0][[0, 1, 2, 4, 5, 6, 36, 37]], reset_expected, atol=1e-6)
    assert np.allclose(states[0][10][[0, 1, 2, 3, 4, 5, 6]], stepped_expected, atol=1e-6)
    assert DeploymentConfig().is_nominal and load_deployment(NOMINAL).is_nominal


# Presets ------------------------------------------------------------------------------------------------------


def test_every_preset_loads_and_at_least_three_are_real_shifts() -> None:
    presets = available_deployments()
    assert {NOMINAL, *SHIFTS} <= set(presets)
    for name in presets:
        deployment = load_deployment(name)
        assert deployment.name == name
        assert deployment.is_nominal == (name == NOMINAL), name
    assert sum(not load_deployment(name).is_nominal for name in presets) >= 3


@pytest.mark.parametrize(
    "name",
    ["nope", "", "../configs/demo", "/etc/passwd", "nominal.yaml", "Latency", "x" * 500, "shifted objects"],
)
def test_an_unknown_preset_name_is_refused_with_the_list_of_presets(name: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a preset; choose one of .*shifted-objects"):
        load_deployment(name)


def test_a_preset_name_from_a_config_is_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="'nope' is not a preset"):
        EnvConfig(deployment="nope")


# Bad configs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"object_offset": [0.5, 0.0]}, "object_offset"),
        ({"goal_offset": [0.0]}, "goal_offset"),
        ({"goal_offset": ["a", 0.0]}, "goal_offset"),
        ({"range_scale": -1.0}, "range_scale"),
        ({"friction_scale": 0.0}, "friction_scale"),
        ({"object_mass_scale": float("nan")}, "object_mass_scale"),
        ({"action_latency_steps": -1}, "action_latency_steps"),
        ({"action_latency_steps": 1.5}, "action_latency_steps"),
        ({"hand_noise_std": -0.01}, "hand_noise_std"),
        ({"object_noise_std": 1.0}, "object_noise_std"),
        ({"camera_offset": [0.0, 0.0, float("inf")]}, "camera_offset"),
        ({"camera_rotation_deg": [0.0, 90.0, 0.0]}, "camera_rotation_deg"),
        ({"light_scale": 5.0}, "light_scale"),
        ({"name": "../x"}, "name"),
    ],
)
def test_a_bad_deployment_is_refused_naming_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"deployment\.{field}\b"):
        DeploymentConfig(**values)  # type: ignore[arg-type]


def test_a_preset_file_with_an_unknown_key_or_a_bad_value_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="friction"):
        config_from_dict(DeploymentConfig, {"friction": 2.0})
    with pytest.raises(ConfigError, match=r"deployment\.action_latency_steps"):
        parse_config(EnvConfig, ["--deployment.action_latency_steps", "99"])


# Each shift does what it says -----------------------------------------------------------------------------------


def test_shifted_objects_moves_every_layout_outside_the_nominal_ranges() -> None:
    shifted = load_deployment("shifted-objects")
    dx, dy = shifted.object_offset
    nominal_env, shifted_env = make_env("push-v3"), make_env("push-v3", EnvConfig(deployment=shifted))
    button = make_env("button-press-topdown-v3", EnvConfig(deployment=shifted))
    try:
        for seed in range(8):
            nominal_state = nominal_env.reset(seed=seed)[0]["state"]
            state = shifted_env.reset(seed=seed)[0]["state"]
            # The nominal puck lies in y 0.6-0.7 and its goal in 0.8-0.9; the same seed's layout, moved.
            assert state[5] <= 0.6 + 1e-6 and 0.7 - 1e-6 <= state[37] <= 0.8 + 1e-6
            assert np.allclose(state[4:6], nominal_state[4:6] + np.array([dx, dy]), atol=1e-3)
            assert np.allclose(state[36:38], nominal_state[36:38] + shifted.goal_offset, atol=1e-6)
            # The observed goal is the simulator's goal, not clipped to the nominal observation bounds (which
            # Meta-World applies from the first step on).
            stepped = shifted_env.step(np.zeros(4, dtype=np.float32))[0]["state"]
            assert np.allclose(stepped[36:39], shifted_env._sim._target_pos)
            # A button (its goal follows the object) moves with its box: nominal y 0.8-0.9.
            assert button.reset(seed=seed)[0]["state"][5] < 0.8
    finally:
        for env in (nominal_env, shifted_env, button):
            env.close()


def test_a_wider_range_draws_layouts_beyond_the_nominal_range() -> None:
    env = make_env("reach-v3", EnvConfig(deployment=DeploymentConfig(name="wide", range_scale=2.0)))
    try:
        goals = np.stack([env.reset(seed=seed)[0]["state"][36:38] for seed in range(30)])
    finally:
        env.close()
    assert goals[:, 0].min() < -0.1 and goals[:, 0].max() > 0.1  # nominal goal x: -0.1 .. 0.1
    assert goals[:, 0].min() >= -0.2 and goals[:, 0].max() <= 0.2


def test_latency_executes_each_action_k_steps_after_it_was_commanded() -> None:
    k = load_deployment("latency").action_latency_steps
    assert k == 3
    actions = _actions(12)
    late = make_env("push-v3", EnvConfig(deployment="latency"))
    nominal = make_env("push-v3")
    try:
        delayed = _rollout(late, 3, actions)
        held = [np.array(HOLD_ACTION, dtype=np.float32)] * k
        expected = _rollout(nominal, 3, held + actions[:-k])
        assert np.array_equal(delayed, expected)
        assert not np.allclose(delayed, _rollout(nominal, 3, actions))
        # A new episode starts with an empty pipeline again (nothing carries over from the last one).
        assert np.array_equal(_rollout(late, 3, actions), delayed)
    finally:
        late.close()
        nominal.close()


def test_sensing_noise_has_the_configured_spread_on_positions_only_and_follows_the_seed() -> None:
    noisy = load_deployment("noisy-sensing")
    actions = _actions(120)
    env, clean = make_env("push-v3", EnvConfig(deployment=noisy)), make_env("push-v3")
    try:
        observed = _rollout(env, 5, actions)
        true = _rollout(clean, 5, actions)  # fixed actions: the noise cannot change the motion
        assert np.array_equal(_rollout(env, 5, actions), observed)  # the same seed, the same noise
        other_seed = _rollout(env, 6, actions[:10]) - _rollout(clean, 6, actions[:10])
    finally:
        env.close()
        clean.close()
    error = (observed - true).astype(np.float64)
    assert not np.allclose(other_seed[:, :3], error[:11, :3])  # another seed, other noise
    assert abs(error[:, 0:3].std() / noisy.hand_noise_std - 1) < 0.15
    assert abs(error[:, 4:7].std() / noisy.object_noise_std - 1) < 0.15
    assert abs(error[:, 0:3].mean()) < noisy.hand_noise_std / 5
    assert np.all(error[:, 3] == 0) and np.all(error[:, 7:18] == 0) and np.all(error[:, 36:] == 0)
    # The previous-frame half repeats the previous noisy reading.
    assert np.array_equal(observed[1:, 18:36], observed[:-1, :18])


def test_heavy_objects_scales_the_task_bodies_mass_and_every_surfaces_friction() -> None:
    heavy = load_deployment("heavy-objects")
    for task, body in (("push-v3", "obj"), ("drawer-open-v3", "drawer_link")):
        env, nominal = make_env(task, EnvConfig(deployment=heavy)), ALL_V3_ENVIRONMENTS[task]()
        try:
            model, reference = env._sim.model, nominal.model
            index = model.body(body).id
            assert model.body_mass[index] == pytest.approx(
                reference.body_mass[index] * heavy.object_mass_scale
            )
            assert np.allclose(
                model.body_inertia[index], reference.body_inertia[index] * heavy.object_mass_scale
            )
            arm = model.body("right_l0").id
            assert model.body_mass[arm] == reference.body_mass[arm]  # the arm is not a task object
            assert np.allclose(
                model.geom_friction[:, 0], reference.geom_friction[:, 0] * heavy.friction_scale
            )
            assert np.array_equal(model.geom_friction[:, 1:], reference.geom_friction[:, 1:])
        finally:
            env.close()
            nominal.close()


def test_camera_shift_moves_the_camera_and_dims_the_lights_of_what_an_image_policy_sees() -> None:
    shift = load_deployment("camera-shift")
    images, states = {}, {}
    for name in (NOMINAL, "camera-shift"):
        config = EnvConfig(image=True, image_height=32, image_width=32, deployment=name)
        env = make_env("reach-v3", config)
        try:
            images[name] = env.reset(seed=0)[0]["image"].astype(np.float64)
            states[name] = _rollout(env, 0, _actions(5))
            model = env._sim.model
            camera = model.camera("corner2").id
            if name == NOMINAL:
                position, light = model.cam_pos[camera].copy(), model.light_diffuse.copy()
            else:
                assert np.allclose(model.cam_pos[camera], position + shift.camera_offset)
                assert np.allclose(model.light_diffuse, light * shift.light_scale)
        finally:
            env.close()
    assert np.abs(images["camera-shift"] - images[NOMINAL]).mean() > 5
    assert images["camera-shift"].mean() < images[NOMINAL].mean()  # dimmer
    assert np.array_equal(states["camera-shift"], states[NOMINAL])  # what a state policy sees: unchanged


def test_the_distractor_rests_on_the_table_clear_of_the_task_at_a_seeded_spot_and_is_seen() -> None:
    config = EnvConfig(image=True, camera="corner", image_height=48, image_width=48, deployment="distractor")
    env, plain = make_env("push-v3", config), make_env("push-v3", replace(config, deployment=NOMINAL))
    try:
        model, data = env._sim.model, env._sim.data
        address = model.joint(f"{DISTRACTOR_BODY}_joint").qposadr[0]
        spots = []
        for seed in range(4):
            observation, _ = env.reset(seed=seed)
            state = observation["state"]
            spot = data.qpos[address : address + 3].copy()
            spots.append(spot)
            (low_x, low_y), (high_x, high_y) = DISTRACTOR_REGION
            assert low_x <= spot[0] <= high_x and low_y <= spot[1] <= high_y and abs(spot[2] - 0.02) < 1e-3
            for point in (state[0:2], state[4:6], state[36:38]):  # hand, puck, goal
                assert np.linalg.norm(spot[:2] - point) >= DISTRACTOR_CLEARANCE
            image = observation["image"].astype(np.float64)
            assert np.abs(image - plain.reset(seed=seed)[0]["image"]).max() > 50  # in view
            for _ in range(10):
                env.step(np.zeros(4, dtype=np.float32))
            assert np.allclose(data.qpos[address : address + 3], spot, atol=2e-3)  # resting, not sliding
        assert len({tuple(spot.round(4)) for spot in spots}) == 4  # a seed names a spot ...
        env.reset(seed=2)
        assert np.array_equal(data.qpos[address : address + 3], spots[2])  # ... reproducibly
    finally:
        env.close()
        plain.close()


# Every task of the demo stays solvable ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [NOMINAL, *(shift for shift in SHIFTS if shift != "camera-shift")])
def test_the_scripted_operator_still_solves_every_demo_task_under_the_preset(name: str) -> None:
    # The operator's hands: the scripted expert with the simulated operator's action noise, on what the
    # robot observes (noisy, with latency), within the demo's episode length. camera-shift changes only
    # images, which the operator does not read (its states are nominal's: the camera test checks that).
    noise = SimulatedOperatorConfig().action_noise_std
    for task in DEMO_TASKS:
        env = make_env(task, EnvConfig(max_episode_steps=150, deployment=name))
        expert = ScriptedExpert(task)
        try:
            for seed in (0, 1):
                observation, _ = env.reset(seed=seed)
                rng = np.random.default_rng(seed)
                solved = False
                for _ in range(150):
                    action = expert.act(observation["state"]) + rng.normal(0.0, noise, size=4)
                    observation, _, _, truncated, info = env.step(np.clip(action, -1, 1))
                    if info["success"] or truncated:
                        solved = bool(info["success"])
                        break
                assert solved, f"{task} seed {seed} not solved under {name}"
        finally:
            env.close()


# Evaluation runs under the deployment ----------------------------------------------------------------------------


class _PushRight:
    """A stand-in policy: always the same action (the evaluation only needs `act` and a few counters)."""

    version = 0
    chunks_predicted = 0
    last_denoiser_calls = 0

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, observation: dict[str, object]) -> np.ndarray:
        self.chunks_predicted += 1
        return np.array([1.0, 0.0, 0.0, -1.0], dtype=np.float32)


def test_evaluation_runs_under_the_deployment_also_in_worker_processes() -> None:
    from sim.evaluate import evaluate_policy

    config = EnvConfig(max_episode_steps=6, deployment="latency")
    # A worker process receives the config as `dataclasses.asdict` gives it, and rebuilds the same one.
    assert EnvConfig(**dataclasses.asdict(config)) == config
    policy: Any = _PushRight()
    results = {
        name: evaluate_policy(
            policy, ["reach-v3"], 2, env_config=EnvConfig(max_episode_steps=6, deployment=name)
        )
        for name in (NOMINAL, "latency")
    }
    assert results["latency"]["deployment"] == {"name": "latency", "shifts": {"action_latency_steps": 3}}
    assert results[NOMINAL]["deployment"] == {"name": NOMINAL, "shifts": {}}
    nominal_returns = results[NOMINAL]["tasks"]["reach-v3"]["episode_return"]
    assert results["latency"]["tasks"]["reach-v3"]["episode_return"] != nominal_returns
