"""Small policies and synthetic data for the policy tests (no simulator, no sentence encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import (
    DiffusionPolicyConfig,
    GripperMode,
    RTISamplerConfig,
    SamplerConfig,
)
from sop.policies.modeling_diffusion import DiffusionPolicy

TASKS = ("reach-v3", "push-v3")


def make_stats(state_dim: int = 39, action_dim: int = 4, seed: int = 0) -> NormalizationStats:
    rng = np.random.default_rng(seed)
    return NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(64, state_dim)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(64, action_dim)).astype(np.float32)],
        }
    )


def tiny_config(**changes: object) -> DiffusionPolicyConfig:
    values: dict[str, object] = {
        "instruction_encoder": "task",
        "tasks": TASKS,
        "down_dims": (16, 32),
        "state_hidden_dim": 32,
        "state_feature_dim": 16,
        "instruction_feature_dim": 8,
        "timestep_embed_dim": 16,
        "gripper_mode": GripperMode.NONE,
    }
    values.update(changes)
    return DiffusionPolicyConfig(**values)  # type: ignore[arg-type]


def make_policy(sampler: SamplerConfig | None = None, **changes: object) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(tiny_config(**changes), make_stats(), sampler or RTISamplerConfig())


def observation(step: int = 0, task: str = "reach-v3") -> dict[str, object]:
    rng = np.random.default_rng(step)
    return {"state": rng.normal(size=39).astype(np.float32), "instruction": "reach the goal", "task": task}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def policy_factory():  # type: ignore[no-untyped-def]
    return make_policy


@pytest.fixture
def obs_factory():  # type: ignore[no-untyped-def]
    return observation


@pytest.fixture
def stats_factory():  # type: ignore[no-untyped-def]
    return make_stats


@pytest.fixture
def config_factory():  # type: ignore[no-untyped-def]
    return tiny_config
