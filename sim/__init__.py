"""Meta-World task suite for SOP: instruction-carrying gymnasium environments, a simulated operator, and
scripted demonstrations.

Importing `sim` registers every task of the suite with gymnasium as `sop/<task>`:

    import gymnasium, sim
    env = gymnasium.make("sop/pick-place-v3", config=sim.EnvConfig(image=True))

Rendering happens off-screen on the CPU; MuJoCo picks its GL backend from MUJOCO_GL when the first
renderer is made, so the default (EGL) is set here, before anything below imports MuJoCo.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium

from sim.metaworld_env import (
    ACTION_DIM,
    CAMERAS,
    CONTROL_HZ,
    STATE_DIM,
    EnvConfig,
    EpisodeNotRunningError,
    InvalidActionError,
    MetaWorldEnv,
    make_env,
)
from sim.tasks import MT10_TASKS, MT50_TASKS, TASK_NAMES, TASKS, TaskSpec, UnknownTaskError, get_task


def register_envs() -> None:
    """Register `sop/<task>` for every task; safe to call again (an existing id is left alone)."""
    for spec in TASKS.values():
        if spec.env_id not in gymnasium.registry:
            gymnasium.register(
                id=spec.env_id,
                entry_point="sim.metaworld_env:MetaWorldEnv",
                kwargs={"task": spec.name},
                disable_env_checker=False,
            )


register_envs()

__all__ = [
    "ACTION_DIM",
    "CAMERAS",
    "CONTROL_HZ",
    "MT10_TASKS",
    "MT50_TASKS",
    "STATE_DIM",
    "TASKS",
    "TASK_NAMES",
    "EnvConfig",
    "EpisodeNotRunningError",
    "InvalidActionError",
    "MetaWorldEnv",
    "TaskSpec",
    "UnknownTaskError",
    "get_task",
    "make_env",
    "register_envs",
]
