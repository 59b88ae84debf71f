"""Per-task gripper levels: found in the recorded commands, stored in the config, used for the command sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sop.config import config_from_dict, config_to_dict
from sop.policies.configuration_diffusion import DDIMSamplerConfig, DiffusionPolicyConfig, GripperMode
from sop.policies.gripper_levels import find_gripper_levels, two_level_split


def test_two_level_split_finds_the_two_commands_under_noise() -> None:
    rng = np.random.default_rng(0)
    # Push's expert: 0 while approaching, 0.6 while holding the puck; demonstrations add noise 0.1.
    values = np.concatenate([rng.normal(0.0, 0.1, 300), rng.normal(0.6, 0.1, 500)])
    low, high = two_level_split(values)
    assert low == pytest.approx(0.0, abs=0.03)
    assert high == pytest.approx(0.6, abs=0.03)


def test_one_command_gives_two_levels_within_its_noise() -> None:
    rng = np.random.default_rng(1)
    low, high = two_level_split(np.clip(rng.normal(-1.0, 0.1, 400), -1.0, 1.0))
    assert -1.0 <= low <= high <= -0.85
    assert two_level_split([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_two_level_split_refuses_empty_or_nan() -> None:
    with pytest.raises(ValueError, match="no gripper commands"):
        two_level_split([])
    with pytest.raises(ValueError, match="NaN"):
        two_level_split([0.0, float("nan")])


def test_levels_per_task_from_episode_actions() -> None:
    def episode(gripper: list[float]) -> np.ndarray:
        actions = np.zeros((len(gripper), 4))
        actions[:, 3] = gripper
        return actions

    levels = find_gripper_levels(
        {
            "push-v3": [episode([0.0] * 5 + [0.6] * 5), episode([0.0, 0.6])],
            "drawer-open-v3": [episode([-1.0] * 4)],
        },
        gripper_index=3,
    )
    by_task = {level.task: level for level in levels}
    assert (by_task["push-v3"].released, by_task["push-v3"].closed) == (0.0, 0.6)
    assert by_task["push-v3"].threshold == pytest.approx(0.3)
    assert (by_task["drawer-open-v3"].released, by_task["drawer-open-v3"].closed) == (-1.0, -1.0)


def test_levels_travel_in_the_config_and_bad_ones_are_refused() -> None:
    config = DiffusionPolicyConfig(gripper_levels=(("push-v3", 0.0, 0.6),))
    assert config_from_dict(DiffusionPolicyConfig, config_to_dict(config)) == config
    with pytest.raises(ValueError, match="must not exceed"):
        DiffusionPolicyConfig(gripper_levels=(("push-v3", 0.6, 0.0),))
    with pytest.raises(ValueError, match="twice"):
        DiffusionPolicyConfig(gripper_levels=(("push-v3", 0.0, 0.6), ("push-v3", 0.0, 0.5)))
    with pytest.raises(ValueError, match="finite"):
        DiffusionPolicyConfig(gripper_levels=(("push-v3", float("nan"), 0.6),))


def test_the_command_is_cut_at_the_tasks_threshold_not_at_zero(policy_factory: Any, obs_factory: Any) -> None:
    """Pooled tasks put the network's 0 at effort 0; push's "relaxed" 0 must not read as "closed"."""
    policy = policy_factory(
        DDIMSamplerConfig(steps=2), gripper_mode=GripperMode.CLIP, gripper_levels=(("push-v3", 0.0, 0.6),)
    )
    # Predictions just above effort 0 (the pooled sign says "closed") and well above 0.3 (push's cut).
    trajectory = torch.zeros(16, 4)
    trajectory[:8, 3] = policy.actions_to_model(torch.tensor([0.0, 0.0, 0.0, 0.1]))[3]
    trajectory[8:, 3] = policy.actions_to_model(torch.tensor([0.0, 0.0, 0.0, 0.5]))[3]
    sent = policy._actions_to_send(trajectory, "push-v3")
    assert torch.equal(sent[:8, 3], torch.zeros(8))
    assert torch.allclose(sent[8:, 3], torch.full((8,), 0.6))
    # A task the data gave no levels keeps the sign: the data's extremes.
    other = policy._actions_to_send(trajectory, "reach-v3")
    low, high = policy.stats["action"].min[3], policy.stats["action"].max[3]
    assert np.allclose(other[:, 3].numpy(), high, atol=1e-5)
    assert low < high
    # Every command of a real chunk is one of push's two levels.
    chunk = policy.predict_chunk(obs_factory(0, task="push-v3"))
    assert all(np.isclose(g, 0.0) or np.isclose(g, 0.6) for g in chunk.actions[:, 3])


def test_rti_warm_start_snaps_the_gripper_around_the_tasks_cut(policy_factory: Any, obs_factory: Any) -> None:
    from sop.policies.configuration_diffusion import RTISamplerConfig

    policy = policy_factory(
        RTISamplerConfig(execution_horizon=8),
        gripper_mode=GripperMode.CLIP,
        gripper_factor=10.0,
        gripper_levels=(("push-v3", 0.0, 0.6),),
    )
    for step in range(8):
        policy.act(obs_factory(step, task="push-v3"))
    warm_start = policy._next_warm_start()
    assert warm_start is not None
    cut = policy._gripper_cut("push-v3")
    assert cut != 0.0
    assert torch.allclose((warm_start[:, 3] - cut).abs(), torch.full((16,), 0.1), atol=1e-6)


def test_a_few_commands_of_a_third_kind_do_not_move_the_levels() -> None:
    # One push demonstration in four had the expert reopen its fingers (-1) for 18 steps.
    values = np.array([0.0] * 120 + [-1.0] * 18 + [0.6] * 190)
    assert two_level_split(values) == (0.0, 0.6)
