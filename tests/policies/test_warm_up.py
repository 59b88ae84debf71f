"""`Policy.warm_up`: the once-per-network work (the U-Net's trace) is done before a robot's loop starts, and
warming up changes nothing the policy then does."""

from __future__ import annotations

from typing import Any

import numpy as np

from sop.policies.configuration_diffusion import DDIMSamplerConfig


def test_warm_up_traces_the_unet_and_leaves_the_actions_unchanged(
    policy_factory: Any, obs_factory: Any
) -> None:
    warmed, cold = policy_factory(), policy_factory()
    warmed.reseed(3)
    cold.reseed(3)
    warmed.warm_up()
    assert warmed._traced_unets, "nothing was traced"
    assert not cold._traced_unets
    for step in range(12):  # a full solve, then RTI warm starts: same actions with and without warm-up
        np.testing.assert_array_equal(warmed.act(obs_factory(step)), cold.act(obs_factory(step)))
    assert warmed.chunks_predicted == cold.chunks_predicted


def test_warm_up_of_a_policy_without_warm_starts_runs_one_full_solve(policy_factory: Any) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=2))
    policy.warm_up()
    assert len(policy._traced_unets) == 1 and policy.chunks_predicted == 0
