"""One Meta-World task as a gymnasium environment with an instruction and an optional camera image.

Why not Meta-World's own gymnasium ids: `Meta-World/goal_observable` freezes the object and goal after
the constructor (every reset replays one layout), and the MT1 benchmark draws from 50 pre-sampled
layouts stored as pickles. Here every `reset(seed=...)` draws a fresh layout from the task's own
`_random_reset_space` through Meta-World's `seeded_rand_vec` path (the same sampler Meta-World uses,
driven by a generator we seed), so a seed names one reproducible layout and unseeded resets keep drawing
new ones. The goal is visible in the state (Meta-World's multi-task setting, `partially_observable=False`)
because a policy cannot solve reach or push without knowing where the goal is.

Observation (a dict):
    state        float32 (39,)  Meta-World's state: hand xyz (0:3), gripper opening (3), object 1 xyz+quat
                                (4:11), object 2 xyz+quat (11:18), the previous frame of 0:18 (18:36),
                                goal xyz (36:39).
    instruction  str            one paraphrase of the task, chosen per episode from the reset seed.
    image        uint8 (H,W,3)  only when `EnvConfig.image` is on; rendered off-screen on the CPU.
Action: float32 (4,) in [-1, 1]: hand displacement xyz (scaled by Meta-World to 1 cm per unit) and
gripper effort. `info["success"]` is Meta-World's success test as a bool.

`EnvConfig.deployment` (sim/deployment.py) sets the conditions the task runs under: nominal by default (the
environment described above, bit for bit), or a shift of the layouts, dynamics, latency, sensing, camera,
lights or a distractor, applied at construction, reset and step.
"""

from __future__ import annotations

import atexit
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Final, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from sim.deployment import DeploymentConditions, DeploymentConfig, as_deployment, simulator_class
from sim.tasks import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH, TaskSpec, get_task
from sop.episode import MAX_IMAGE_SIDE

STATE_DIM: Final = 39
# Every state entry is a position in metres inside a ~1 m workspace, a quaternion component, or the
# gripper opening in [0, 1]; a finite bound keeps gymnasium's checkers quiet and is never reached in a
# stable simulation (the state is clipped to it, as Meta-World clips to its own bounds).
STATE_BOUND: Final = 10.0
ACTION_DIM: Final = 4
# Meta-World steps MuJoCo 5 x 2.5 ms per action: 80 control steps per simulated second.
CONTROL_HZ: Final = 80
CAMERAS: Final = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
# These cameras come out of MuJoCo rotated by 180 degrees (the table on top); we turn them upright.
_UPSIDE_DOWN_CAMERAS: Final = frozenset({"corner", "corner2", "corner3", "corner4"})
MIN_IMAGE_SIDE: Final = 8
# Meta-World's own horizon raises on the 501st step; ours (EnvConfig.max_episode_steps) decides instead.
_UNBOUNDED_HORIZON: Final = 2**62


# Envs that own an off-screen GL context. MuJoCo's EGL module terminates the display at exit; contexts
# still alive then fail noisily in their finalizers, so we close them first (see `_render_image`).
_RENDERING_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()
_exit_hook_registered = False


def _close_rendering_envs() -> None:
    for env in list(_RENDERING_ENVS):
        env.close()


class InvalidActionError(ValueError):
    """An action the simulator must not receive: wrong shape, not numeric, NaN or infinite."""


class EpisodeNotRunningError(RuntimeError):
    """`step()` before the first `reset()`, or after the episode ended (truncated or terminated)."""


@dataclass(frozen=True)
class EnvConfig:
    """How a task environment is built. The defaults are what the fleet demo runs."""

    max_episode_steps: int = field(
        default=200, metadata={"help": "steps before the episode is truncated (timeout)"}
    )
    image: bool = field(default=False, metadata={"help": "add an `image` observation from `camera`"})
    camera: str = field(default="corner2", metadata={"help": f"Meta-World camera, one of {CAMERAS}"})
    image_height: int = field(default=64, metadata={"help": "rendered image height in pixels"})
    image_width: int = field(default=64, metadata={"help": "rendered image width in pixels"})
    fast_render: bool = field(
        default=True,
        metadata={"help": "render without shadows and multisampling (~7x faster on the CPU at 64x64)"},
    )
    terminate_on_success: bool = field(
        default=False,
        metadata={"help": "end the episode (terminated=True) on the first successful step"},
    )
    deployment: DeploymentConfig = field(
        default_factory=DeploymentConfig,
        metadata={"help": "conditions the task runs under (sim/deployment.py); the defaults are nominal"},
    )

    def __post_init__(self) -> None:
        # A preset's name, or the plain-data form `dataclasses.asdict` gives a worker process, is accepted too.
        object.__setattr__(self, "deployment", as_deployment(self.deployment))
        if not isinstance(self.max_episode_steps, int) or self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer, got {self.max_episode_steps!r}")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera {self.camera!r} is not a Meta-World camera; choose one of {CAMERAS}")
        for name in ("image_height", "image_width"):
            side = getattr(self, name)
            if not isinstance(side, int) or not MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE:
                raise ValueError(
                    f"{name} must be an integer in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] pixels, got {side!r}"
                )


class MetaWorldEnv(gymnasium.Env[dict[str, Any], np.ndarray]):
    """A Meta-World task with seeded random layouts, an instruction and an optional image.

    `seed` given to the constructor seeds the first `reset()` that comes without a seed, so
    `make_env(task, seed=s)` followed by plain resets replays the same sequence of episodes.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        task: str,
        config: EnvConfig | None = None,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.task_spec: TaskSpec = get_task(task)
        if config is None:
            config = EnvConfig()
        if not isinstance(config, EnvConfig):
            raise TypeError(f"config must be an EnvConfig, got {type(config).__name__}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.config = config
        self.render_mode = render_mode
        self._pending_seed = seed
        self._renders = config.image or render_mode == "rgb_array"

        env_cls = simulator_class(config.deployment, ALL_V3_ENVIRONMENTS[self.task_spec.name])
        self._sim = env_cls(
            render_mode="rgb_array" if self._renders else None,
            camera_name=config.camera,
            width=config.image_width,
            height=config.image_height,
        )
        # Make the goal observable; the cached observation space (used to clip observations inside
        # Meta-World's step) must be recomputed or the goal would be clipped to zeros.
        self._sim._partially_observable = False
        self._sim.__dict__.pop("sawyer_observation_space", None)
        self._sim._set_task_called = True
        self._sim._freeze_rand_vec = False
        self._sim.seeded_rand_vec = True
        self._sim.max_path_length = _UNBOUNDED_HORIZON
        if config.fast_render:
            # Shadows and multisampling make a 64x64 CPU frame ~7x slower and add little to a small
            # image. They must be off before the first render creates the off-screen context.
            self._sim.model.vis.quality.shadowsize = 0
            self._sim.model.vis.quality.offsamples = 0
        # After the observability change above: a moved goal range widens the observation bounds again.
        self.deployment = DeploymentConditions(config.deployment, self._sim, config.camera)

        observation: dict[str, spaces.Space[Any]] = {
            "state": spaces.Box(-STATE_BOUND, STATE_BOUND, shape=(STATE_DIM,), dtype=np.float32),
            "instruction": spaces.Text(
                max_length=MAX_INSTRUCTION_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET
            ),
        }
        if config.image:
            observation["image"] = spaces.Box(
                0, 255, shape=(config.image_height, config.image_width, 3), dtype=np.uint8
            )
        self.observation_space = spaces.Dict(observation)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

        self._instruction = self.task_spec.instructions[0]
        self._steps = 0
        self._running = False
        self._closed = False

    @property
    def task(self) -> str:
        return self.task_spec.name

    @property
    def instruction(self) -> str:
        """This episode's instruction."""
        return self._instruction

    @property
    def elapsed_steps(self) -> int:
        return self._steps

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._closed:
            raise EpisodeNotRunningError(f"{self.task}: reset() on a closed environment; make a new one")
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        # One draw seeds Meta-World's layout sampler, the next picks the paraphrase: both follow the seed.
        self._sim.seed(int(self.np_random.integers(0, 2**31 - 1)))
        state, _ = self._sim.reset()
        instructions = self.task_spec.instructions
        self._instruction = instructions[int(self.np_random.integers(len(instructions)))]
        self.deployment.reset(self.np_random, self._sim, state)
        self._steps = 0
        self._running = True
        return self._observation(state), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._running:
            raise EpisodeNotRunningError(
                f"{self.task}: step() needs a running episode; call reset() first "
                f"(after {self._steps} steps the last episode had ended)"
            )
        checked = check_action(action)
        state, reward, _, _, sim_info = self._sim.step(self.deployment.executed_action(checked))
        self._steps += 1
        success = bool(sim_info["success"])
        terminated = success and self.config.terminate_on_success
        truncated = not terminated and self._steps >= self.config.max_episode_steps
        self._running = not (terminated or truncated)
        info: dict[str, Any] = {key: float(value) for key, value in sim_info.items()}
        info["success"] = success
        return self._observation(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode != "rgb_array":
            return None
        return self._render_image()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._running = False
            self._sim.close()
            _RENDERING_ENVS.discard(self)

    def _observation(self, state: np.ndarray) -> dict[str, Any]:
        observed = self.deployment.observed_state(state)
        observation: dict[str, Any] = {
            "state": np.clip(observed, -STATE_BOUND, STATE_BOUND).astype(np.float32),
            "instruction": self._instruction,
        }
        if self.config.image:
            observation["image"] = self._render_image()
        return observation

    def _render_image(self) -> np.ndarray:
        global _exit_hook_registered
        renderer = self._sim.mujoco_renderer
        if renderer.viewer is not None:
            # gymnasium makes a viewer's GL context current only when it is created; with several envs
            # in one process each frame would otherwise be drawn with the newest env's context.
            renderer.viewer.make_context_current()
        else:
            _RENDERING_ENVS.add(self)
        image = self._sim.render()
        if not _exit_hook_registered:
            # Registered after MuJoCo's own EGL exit hook (made with the first context), so it runs first.
            atexit.register(_close_rendering_envs)
            _exit_hook_registered = True
        if self.config.camera in _UPSIDE_DOWN_CAMERAS:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image, dtype=np.uint8)


def check_action(action: Any) -> np.ndarray:
    """The action as float64 (4,) clipped to [-1, 1]; anything MuJoCo must not see raises here.

    Out-of-range values are clipped (Meta-World clips the hand displacement too); NaN and infinities are
    rejected because MuJoCo would silently turn them into an unstable simulation.
    """
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidActionError(
            f"action must be {ACTION_DIM} numbers, got {type(action).__name__} ({exc})"
        ) from None
    if array.shape != (ACTION_DIM,):
        raise InvalidActionError(
            f"action must have shape ({ACTION_DIM},) (dx, dy, dz, gripper), got shape {array.shape}"
        )
    bad = [i for i, value in enumerate(array) if not math.isfinite(value)]
    if bad:
        raise InvalidActionError(f"action has NaN or infinite values at index {bad}: {array.tolist()}")
    return np.clip(array, -1.0, 1.0)


def make_env(
    task: str, config: EnvConfig | None = None, seed: int | None = None, render_mode: str | None = None
) -> MetaWorldEnv:
    """Build a task environment directly (no gymnasium wrappers); `seed` seeds its first reset."""
    return MetaWorldEnv(task, config, render_mode=render_mode, seed=seed)
