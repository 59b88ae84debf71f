"""Offline demonstrations recorded with the scripted experts: the data a base policy is first cloned from.

Each episode follows the episode schema (`sop.episode`) as an OFFLINE episode: `policy_action` equals the
executed `action`, `intervention` is False and `policy_version` is -1 (no policy was running). The
recorded action is the expert's action plus Gaussian noise (clipped to [-1, 1]), so demonstrations vary
around the expert; with `noise=0` they are the expert's exact actions.

Timing: Meta-World advances 12.5 ms of simulated time per step (80 Hz), but by project convention an
episode is stamped at 30 fps (the robot control rate), so `timestamp[i] = i / 30` seconds from the
episode's start.

Seeding: the reset seed of episode i is the i-th word of `SeedSequence([seed, crc32(task)])`, and its
action noise comes from a generator seeded with that same reset seed, so `(task, seed)` names one
reproducible set of episodes and different tasks (or seeds) never share layouts by construction.

    sop sim demos --tasks reach-v3,push-v3 --episodes 20 --seed 0 --store data/store
    sop sim demos --tasks push-v3 --episodes 20 --deployment shifted-objects --store data/shifted

Demonstrations are recorded under nominal conditions unless `--deployment NAME` names a preset of
sim/deployment.py (configs/deployments/): the oracle arm of `sop bench online-vs-offline` records its extra
demonstrations under the very shift the robots are deployed in.
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from rich.console import Console

from sim.metaworld_env import EnvConfig, MetaWorldEnv
from sim.scripted_experts import ScriptedExpert
from sim.tasks import get_task, parse_task_list
from sop.config import parse_config
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

EPISODE_FPS = 30.0
NO_POLICY_VERSION = -1


def demonstration_seeds(task: str, num_episodes: int, seed: int) -> list[int]:
    """The reset seeds of `record_demonstrations(task, num_episodes, seed)`, in order."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(get_task(task).name.encode())])
    return [int(word) for word in sequence.generate_state(num_episodes, dtype=np.uint32)]


def record_episode(
    env: MetaWorldEnv,
    expert: ScriptedExpert,
    reset_seed: int,
    *,
    robot_id: str,
    noise: float,
    steps_after_success: int,
) -> Episode:
    """One demonstration: reset with `reset_seed`, drive with the noisy expert until a few steps after
    success (SUCCESS) or until the env truncates (TIMEOUT)."""
    rng = np.random.default_rng(reset_seed)
    started_at = time.time()
    observation, _ = env.reset(seed=reset_seed)
    states: list[np.ndarray] = []
    images: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    success_step: int | None = None
    while True:
        action = expert.act(observation["state"])
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, size=action.shape), -1.0, 1.0)
        states.append(observation["state"])
        if "image" in observation:
            images.append(observation["image"])
        actions.append(np.asarray(action, dtype=np.float32))
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        step = len(actions) - 1
        if info["success"] and success_step is None:
            success_step = step
        if success_step is not None and step - success_step >= steps_after_success:
            break
        if terminated or truncated:
            break

    num_steps = len(actions)
    action_array = np.stack(actions).astype(np.float32)
    steps: dict[str, np.ndarray] = {
        STATE: np.stack(states).astype(np.float32),
        ACTION: action_array,
        POLICY_ACTION: action_array.copy(),
        INTERVENTION: np.zeros(num_steps, dtype=np.bool_),
        POLICY_VERSION: np.full(num_steps, NO_POLICY_VERSION, dtype=np.int64),
        TIMESTAMP: np.arange(num_steps, dtype=np.float64) / EPISODE_FPS,
        REWARD: np.asarray(rewards, dtype=np.float32),
    }
    if images:
        steps[IMAGE_PREFIX + env.config.camera] = np.stack(images).astype(np.uint8)
    extra = {"reset_seed": str(reset_seed), "noise": repr(noise), "recorded_by": "sim.demonstrations"}
    if success_step is not None:
        extra["success_step"] = str(success_step)
    episode = Episode(
        episode_id=new_episode_id(),
        robot_id=robot_id,
        task=env.task,
        instruction=env.instruction,
        outcome=Outcome.SUCCESS if success_step is not None else Outcome.TIMEOUT,
        started_at=started_at,
        ended_at=max(time.time(), started_at),
        steps=steps,
        source=Source.OFFLINE,
        fps=EPISODE_FPS,
        extra=extra,
    )
    episode.validate()
    return episode


def record_demonstrations(
    task: str,
    num_episodes: int,
    seed: int,
    *,
    image: bool = False,
    robot_id: str = "scripted-expert",
    noise: float = 0.1,
    steps_after_success: int = 10,
    env_config: EnvConfig | None = None,
) -> list[Episode]:
    """`num_episodes` scripted demonstrations of `task` (see the module docstring for seeding)."""
    spec = get_task(task)
    if num_episodes < 0:
        raise ValueError(f"num_episodes must be >= 0, got {num_episodes}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success must be >= 0, got {steps_after_success}")
    config = env_config if env_config is not None else EnvConfig()
    if image:
        config = replace(config, image=True)
    expert = ScriptedExpert(spec.name)
    env = MetaWorldEnv(spec.name, config)
    try:
        return [
            record_episode(
                env,
                expert,
                reset_seed,
                robot_id=robot_id,
                noise=noise,
                steps_after_success=steps_after_success,
            )
            for reset_seed in demonstration_seeds(spec.name, num_episodes, seed)
        ]
    finally:
        env.close()


@dataclass(frozen=True)
class DemosConfig:
    """`sop sim demos`: record scripted demonstrations into an episode store."""

    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3"])
    episodes: int = field(default=10, metadata={"help": "episodes per task"})
    seed: int = 0
    store: str = field(default="data/store", metadata={"help": "episode store folder (created if missing)"})
    image: bool = False
    noise: float = field(default=0.1, metadata={"help": "std of the Gaussian noise on the expert's actions"})
    robot_id: str = "scripted-expert"
    steps_after_success: int = field(default=10, metadata={"help": "steps kept after the first success"})
    env: EnvConfig = field(default_factory=EnvConfig)
    deployment: str = field(
        default="",
        metadata={
            "help": "record under this deployment preset (configs/deployments/<name>.yaml, e.g. "
            "shifted-objects) instead of env.deployment; empty: env.deployment (nominal by default)"
        },
    )

    def __post_init__(self) -> None:
        parse_task_list(self.tasks)
        if self.deployment:
            from sim.deployment import load_deployment

            # An unknown preset stops here, with the list of presets.
            object.__setattr__(self, "env", replace(self.env, deployment=load_deployment(self.deployment)))
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not np.isfinite(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if self.steps_after_success < 0:
            raise ValueError(f"steps_after_success must be >= 0, got {self.steps_after_success}")
        if not self.store:
            raise ValueError("store must name a folder")
        if not self.robot_id:
            raise ValueError("robot_id must be a non-empty string")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(DemosConfig, args, default_config="sim_demos.yaml")
    from sop.data.episode_store import EpisodeStore  # the store pulls in zarr; only this command needs it

    console = Console()
    store = EpisodeStore(config.store)
    for task in parse_task_list(config.tasks):
        started = time.perf_counter()
        episodes = record_demonstrations(
            task,
            config.episodes,
            config.seed,
            image=config.image,
            robot_id=config.robot_id,
            noise=config.noise,
            steps_after_success=config.steps_after_success,
            env_config=config.env,
        )
        for episode in episodes:
            store.append(episode)
        successes = sum(episode.outcome is Outcome.SUCCESS for episode in episodes)
        steps = sum(episode.num_steps for episode in episodes)
        console.print(
            f"{task}: {len(episodes)} episodes ({successes} successful, {steps} steps) "
            f"-> {config.store} in {time.perf_counter() - started:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
