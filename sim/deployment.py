"""Deployment conditions: the world a robot is deployed into, as opposed to the one it was shown.

SOP's claim is that on-policy corrections fix a deployed policy better than more offline demonstrations,
and that only shows when deployment differs from the demonstrations. Here demonstrations are recorded under
nominal conditions and robots run (and are evaluated) under a named shift:

    sop demo --deployment shifted-objects
    sop sim eval --checkpoint runs/bc --deployment heavy-objects

A `DeploymentConfig` whose values are all defaults is the nominal world, and a `MetaWorldEnv` under it is
today's environment bit for bit: nothing below touches the model, the random streams or the observations
then. What each field changes, and when:

- at construction (the model): `object_offset` / `goal_offset` move, and `range_scale` widens, the box
  Meta-World draws the object and goal positions from (its `_random_reset_space`; entries 0:3 of every task's
  draw are the object, entries 3:6, where a task has them, its goal; a task whose goal is fixed to the object,
  a button or a drawer, moves its goal with the object). Only x and y move: heights are the task's structure.
  `friction_scale` multiplies the sliding friction of every geom (MuJoCo uses the larger coefficient of two
  touching geoms, so scaling the object alone could not make it slipperier); `object_mass_scale` multiplies
  the mass and inertia of every moving task body (a body outside the arm with a joint, and what it carries);
  `camera_offset` / `camera_rotation_deg` move and turn the env's camera; `light_scale` dims or brightens
  every light and the headlight. `distractor` adds a loose 4 cm box to the scene (the task's MJCF is
  compiled through MuJoCo's MjSpec with one more free body, appended last so Meta-World's qpos indices of
  its own objects stay where they were).
- at reset: the layout is drawn from the moved box by Meta-World's own seeded sampler, so a seed names one
  layout (with offsets only, the nominal layout of the same seed, moved); the latency queue is filled with
  hold actions; the sensing noise gets a generator drawn from the episode's seed; the distractor is put
  on the table at a seeded spot clear of the hand, the object, the goal and the object's path to the goal,
  touching nothing but the table (it is not in the state: a state policy meets it only if it runs into it;
  an image policy sees it).
- at step: the action executed is the one commanded `action_latency_steps` steps earlier (the first k steps
  hold still with the gripper open, as the arm stands after a reset); hand and object positions in the
  state carry Gaussian noise (`hand_noise_std`, `object_noise_std`, metres), and the state's previous-frame
  half (18:36) repeats the previous noisy reading, as a noisy sensor's frame stack would. The goal, the
  gripper opening and the quaternions are not noised.

Presets live in `configs/deployments/<name>.yaml` (keys of `DeploymentConfig`). `load_deployment(name)` takes
a name that may come from a client: it is looked up among the preset files that exist, never joined into
a path.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import mujoco
import numpy as np
import yaml
from gymnasium.spaces import Box
from scipy.spatial.transform import Rotation

from sop.config import CONFIG_DIR, ConfigError, config_from_dict

log = logging.getLogger(__name__)

NOMINAL: Final = "nominal"
PRESET_FOLDER: Final = "deployments"
_PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Bounds that keep every task solvable and the simulation stable: objects stay on the table and within the
# arm's reach, dynamics within an order of magnitude, latency under 0.2 s of simulated time.
MAX_POSITION_OFFSET: Final = 0.15
MAX_RANGE_SCALE: Final = 3.0
SCALE_BOUNDS: Final = (0.1, 10.0)
MAX_LATENCY_STEPS: Final = 16
MAX_NOISE_STD: Final = 0.05
MAX_CAMERA_OFFSET: Final = 0.5
MAX_CAMERA_ROTATION_DEG: Final = 45.0
LIGHT_SCALE_BOUNDS: Final = (0.0, 3.0)
# What the arm executes while a latency queue is still empty: no hand motion, gripper open (effort -1).
HOLD_ACTION: Final = (0.0, 0.0, 0.0, -1.0)
# State slices the sensing noise applies to (see sim/metaworld_env.py for the layout).
_HAND: Final = slice(0, 3)
_OBJECTS: Final = (slice(4, 7), slice(11, 14))
_FRAME: Final = 18
# The distractor: a 4 cm box of 100 g, parked out of the scene until a reset places it on the table within
# the region below, at least DISTRACTOR_CLEARANCE (x/y, metres) from the hand, the object, the goal and the
# object's straight path to the goal.
DISTRACTOR_BODY: Final = "sop_distractor"
_DISTRACTOR_HALF_SIZE: Final = 0.02
_DISTRACTOR_PARKED: Final = (2.0, 2.0, -1.0)
DISTRACTOR_REGION: Final = ((-0.35, 0.45), (0.35, 0.9))
DISTRACTOR_CLEARANCE: Final = 0.1
_DISTRACTOR_TRIES: Final = 200


def _floats(owner: str, value: Any, length: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(f"deployment.{owner} must be {length} numbers, got {value!r}")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"deployment.{owner} must be {length} numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"deployment.{owner} must be finite, got {value!r}")
    return numbers


def _number(owner: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"deployment.{owner} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DeploymentConfig:
    """Conditions a robot is deployed under; all defaults: the nominal world the demonstrations come from."""

    name: str = field(default=NOMINAL, metadata={"help": "the preset's name, shown in reports"})
    object_offset: tuple[float, float] = field(
        default=(0.0, 0.0), metadata={"help": "metres added to the sampled object position (x, y)"}
    )
    goal_offset: tuple[float, float] = field(
        default=(0.0, 0.0),
        metadata={"help": "metres added to the sampled goal position (x, y), for tasks that sample one"},
    )
    range_scale: float = field(
        default=1.0, metadata={"help": "x/y width of the object and goal ranges, times the nominal width"}
    )
    friction_scale: float = field(default=1.0, metadata={"help": "sliding friction of every geom, times"})
    object_mass_scale: float = field(
        default=1.0, metadata={"help": "mass and inertia of the moving task bodies, times"}
    )
    action_latency_steps: int = field(
        default=0, metadata={"help": "control steps between commanding an action and executing it"}
    )
    hand_noise_std: float = field(default=0.0, metadata={"help": "noise on the observed hand xyz, metres"})
    object_noise_std: float = field(
        default=0.0, metadata={"help": "noise on the observed object positions, metres"}
    )
    camera_offset: tuple[float, float, float] = field(
        default=(0.0, 0.0, 0.0), metadata={"help": "metres the image camera is moved (world x, y, z)"}
    )
    camera_rotation_deg: tuple[float, float, float] = field(
        default=(0.0, 0.0, 0.0), metadata={"help": "degrees the image camera is turned about its own x, y, z"}
    )
    light_scale: float = field(default=1.0, metadata={"help": "brightness of every light, times"})
    distractor: bool = field(
        default=False, metadata={"help": "a loose box on the table, placed clear of the task at every reset"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _PRESET_NAME.fullmatch(self.name):
            raise ValueError(
                f"deployment.name must be lower-case letters, digits, '-' or '_', got {self.name!r}"
            )
        for name, length, bound in (
            ("object_offset", 2, MAX_POSITION_OFFSET),
            ("goal_offset", 2, MAX_POSITION_OFFSET),
            ("camera_offset", 3, MAX_CAMERA_OFFSET),
            ("camera_rotation_deg", 3, MAX_CAMERA_ROTATION_DEG),
        ):
            values = _floats(name, getattr(self, name), length)
            if any(abs(v) > bound for v in values):
                raise ValueError(f"deployment.{name} entries must be within ±{bound}, got {list(values)}")
            object.__setattr__(self, name, values)
        for name, (low, high) in (
            ("range_scale", (0.0, MAX_RANGE_SCALE)),
            ("friction_scale", SCALE_BOUNDS),
            ("object_mass_scale", SCALE_BOUNDS),
            ("light_scale", LIGHT_SCALE_BOUNDS),
            ("hand_noise_std", (0.0, MAX_NOISE_STD)),
            ("object_noise_std", (0.0, MAX_NOISE_STD)),
        ):
            object.__setattr__(self, name, _number(name, getattr(self, name), low, high))
        if not isinstance(self.distractor, bool):
            raise ValueError(f"deployment.distractor must be true or false, got {self.distractor!r}")
        latency = self.action_latency_steps
        if isinstance(latency, bool) or not isinstance(latency, int) or not 0 <= latency <= MAX_LATENCY_STEPS:
            raise ValueError(
                f"deployment.action_latency_steps must be an integer in [0, {MAX_LATENCY_STEPS}], got {latency!r}"
            )

    @property
    def is_nominal(self) -> bool:
        """Every condition at its default (the name aside): the environment is today's, bit for bit."""
        return self.shifts() == {}

    def shifts(self) -> dict[str, Any]:
        """The fields that differ from nominal, by name (for reports)."""
        default = DeploymentConfig()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name) != getattr(default, f.name)
        }


# Presets ----------------------------------------------------------------------------------------------------


def preset_folders() -> list[Path]:
    """Where presets are found: the working directory's configs/deployments, then the packaged ones."""
    return [Path("configs") / PRESET_FOLDER, CONFIG_DIR / PRESET_FOLDER]


def available_deployments() -> dict[str, Path]:
    """Preset name -> its file, from listing the preset folders (the first folder wins a name)."""
    found: dict[str, Path] = {}
    for folder in preset_folders():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                if _PRESET_NAME.fullmatch(path.stem):
                    found.setdefault(path.stem, path)
    return found


def load_deployment(name: str) -> DeploymentConfig:
    """The preset called `name`; an unknown name (or one that is no preset name at all) is refused with the
    list of presets. `name` is only ever compared with the names of files that exist."""
    if not isinstance(name, str):
        raise ConfigError(f"deployment must be a preset name, got {type(name).__name__}")
    presets = available_deployments()
    path = presets.get(name)
    if path is None:
        if name == NOMINAL:  # nominal needs no file: it is the defaults
            return DeploymentConfig()
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ConfigError(
            f"deployment {shown!r} is not a preset; choose one of {sorted({NOMINAL, *presets})} "
            f"(files in configs/{PRESET_FOLDER}/)"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of deployment keys, got {type(values).__name__}")
    values.setdefault("name", name)
    if values["name"] != name:
        raise ConfigError(f"{path}: name {values['name']!r} must be the file's name {name!r}")
    try:
        return config_from_dict(DeploymentConfig, values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def as_deployment(value: DeploymentConfig | str | Mapping[str, Any] | None) -> DeploymentConfig:
    """A deployment from a config, a preset name, or a config's plain-data form (`dataclasses.asdict`)."""
    if value is None:
        return DeploymentConfig()
    if isinstance(value, DeploymentConfig):
        return value
    if isinstance(value, str):
        return load_deployment(value)
    if isinstance(value, Mapping):
        return DeploymentConfig(**dict(value))
    raise TypeError(f"deployment must be a DeploymentConfig or a preset name, got {type(value).__name__}")


# Applying a deployment to one Meta-World environment ------------------------------------------------------------


def _moving_task_bodies(model: Any) -> list[int]:
    """Bodies outside the arm (root `base`), the mocap and the distractor that move: a body with a joint,
    and its children."""
    not_task = ("base", "mocap", DISTRACTOR_BODY)
    arm_roots = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name) for name in not_task}
    moving = []
    for body in range(1, model.nbody):
        if int(model.body_rootid[body]) in arm_roots:
            continue
        ancestor = body
        while ancestor != 0 and model.body_jntnum[ancestor] == 0:
            ancestor = int(model.body_parentid[ancestor])
        if ancestor != 0:
            moving.append(body)
    return moving


def simulator_class(config: DeploymentConfig, env_cls: type) -> type:
    """The Meta-World class to build: `env_cls` itself, or with a distractor body in its model."""
    if not config.distractor:
        return env_cls

    def _initialize_simulation(self: Any) -> tuple[Any, Any]:
        spec = mujoco.MjSpec.from_file(self.fullpath)
        body = spec.worldbody.add_body(name=DISTRACTOR_BODY, pos=list(_DISTRACTOR_PARKED))
        body.add_freejoint(name=f"{DISTRACTOR_BODY}_joint")
        side = 2 * _DISTRACTOR_HALF_SIZE
        body.mass, body.explicitinertial, body.ipos = 0.1, True, [0.0, 0.0, 0.0]
        body.inertia = [0.1 * side * side / 6] * 3
        body.add_geom(
            name=f"{DISTRACTOR_BODY}_geom",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[_DISTRACTOR_HALF_SIZE] * 3,
            rgba=[0.85, 0.25, 0.6, 1.0],
        )
        model = spec.compile()
        # As gymnasium's own loader does: the off-screen buffer is never smaller than the image asked for.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    return type(
        f"{env_cls.__name__}WithDistractor", (env_cls,), {"_initialize_simulation": _initialize_simulation}
    )


def _distance_to_segment(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    direction = end - start
    length = float(direction @ direction)
    t = 0.0 if length == 0 else float(np.clip((point - start) @ direction / length, 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * direction)))


def _shifted_box(box: Box, offsets: Sequence[tuple[float, float]], scale: float) -> Box:
    """`box` with x/y of each 3-block moved by its offset and widened by `scale` about its centre."""
    low, high = np.array(box.low, dtype=np.float64), np.array(box.high, dtype=np.float64)
    for block, offset in enumerate(offsets):
        xy = slice(3 * block, 3 * block + 2)
        if xy.stop > low.size:
            break
        centre = (low[xy] + high[xy]) / 2 + np.asarray(offset)
        half = (high[xy] - low[xy]) / 2 * scale
        low[xy], high[xy] = centre - half, centre + half
    return Box(low, high, dtype=np.float64)


class DeploymentConditions:
    """One environment's deployment: changes its Meta-World model once, then acts at every reset and step."""

    def __init__(self, config: DeploymentConfig, sim: Any, camera: str) -> None:
        self.config = config
        self._latency: deque[np.ndarray] = deque()
        self._noise_rng: np.random.Generator | None = None
        self._previous_frame: np.ndarray | None = None
        self._distractor_rng: np.random.Generator | None = None
        if config.is_nominal:
            return
        self._move_ranges(sim)
        model = sim.model
        if config.friction_scale != 1.0:
            model.geom_friction[:, 0] *= config.friction_scale
        if config.object_mass_scale != 1.0:
            for body in _moving_task_bodies(model):
                model.body_mass[body] *= config.object_mass_scale
                model.body_inertia[body] *= config.object_mass_scale
        if any(config.camera_offset) or any(config.camera_rotation_deg):
            cam = model.camera(camera).id
            model.cam_pos[cam] += np.asarray(config.camera_offset)
            w, x, y, z = model.cam_quat[cam]
            turned = Rotation.from_quat([x, y, z, w]) * Rotation.from_euler(
                "xyz", config.camera_rotation_deg, degrees=True
            )
            qx, qy, qz, qw = turned.as_quat()
            model.cam_quat[cam] = (qw, qx, qy, qz)
        if config.light_scale != 1.0:
            scale = config.light_scale
            for array in (model.light_diffuse, model.light_specular, model.light_ambient):
                array *= scale
            headlight = model.vis.headlight
            headlight.diffuse = np.asarray(headlight.diffuse) * scale
            headlight.ambient = np.asarray(headlight.ambient) * scale
            headlight.specular = np.asarray(headlight.specular) * scale

    def _move_ranges(self, sim: Any) -> None:
        config = self.config
        if not (any(config.object_offset) or any(config.goal_offset) or config.range_scale != 1.0):
            return
        nominal = sim._random_reset_space
        moved = _shifted_box(nominal, (config.object_offset, config.goal_offset), config.range_scale)
        sim._random_reset_space = moved
        # The observed goal is clipped to `goal_space` (Meta-World's observation bounds): widen it by as far as
        # the object or the goal can now move, or a moved goal would be observed at the old range's edge.
        reach = np.zeros(3)
        reach[:2] = np.abs(moved.low - nominal.low).reshape(-1, 3)[:, :2].max(axis=0)
        reach[:2] = np.maximum(reach[:2], np.abs(moved.high - nominal.high).reshape(-1, 3)[:, :2].max(axis=0))
        goal = sim.goal_space
        sim.goal_space = Box(goal.low - reach, goal.high + reach, dtype=np.float64)
        sim.__dict__.pop("sawyer_observation_space", None)

    def reset(self, np_random: np.random.Generator, sim: Any, state: np.ndarray) -> None:
        """Start an episode (after the simulator's reset, whose true state is `state`): empty latency queue,
        a sensing-noise stream drawn from the episode's seed, the distractor placed."""
        config = self.config
        self._latency = deque(
            np.array(HOLD_ACTION, dtype=np.float64) for _ in range(config.action_latency_steps)
        )
        self._previous_frame = None
        if config.hand_noise_std > 0 or config.object_noise_std > 0:
            self._noise_rng = np.random.default_rng(int(np_random.integers(0, 2**63 - 1)))
        if config.distractor:
            self._place_distractor(np.random.default_rng(int(np_random.integers(0, 2**63 - 1))), sim, state)

    @staticmethod
    def _place_distractor(rng: np.random.Generator, sim: Any, state: np.ndarray) -> None:
        model, data = sim.model, sim.data
        address = int(model.joint(f"{DISTRACTOR_BODY}_joint").qposadr[0])
        velocity = int(model.joint(f"{DISTRACTOR_BODY}_joint").dofadr[0])
        geom = model.geom(f"{DISTRACTOR_BODY}_geom").id
        table = {model.body("tablelink").id}
        hand, obj, goal = state[0:2], state[4:6], state[36:38]
        low, high = DISTRACTOR_REGION
        for _ in range(_DISTRACTOR_TRIES):
            spot = rng.uniform(low, high)
            if min(np.linalg.norm(spot - p) for p in (hand, obj, goal)) < DISTRACTOR_CLEARANCE:
                continue
            if _distance_to_segment(spot, obj, goal) < DISTRACTOR_CLEARANCE:
                continue
            data.qpos[address : address + 7] = [*spot, _DISTRACTOR_HALF_SIZE + 1e-4, 1.0, 0.0, 0.0, 0.0]
            data.qvel[velocity : velocity + 6] = 0.0
            mujoco.mj_forward(model, data)
            touching = {
                int(model.body_rootid[model.geom_bodyid[other]])
                for contact in data.contact[: data.ncon]
                if geom in (contact.geom1, contact.geom2)
                for other in (contact.geom2 if contact.geom1 == geom else contact.geom1,)
            }
            if touching <= table:
                return
        data.qpos[address : address + 7] = [*_DISTRACTOR_PARKED, 1.0, 0.0, 0.0, 0.0]
        mujoco.mj_forward(model, data)
        log.warning("no clear spot on the table for the distractor in %d tries: parked", _DISTRACTOR_TRIES)

    def executed_action(self, commanded: np.ndarray) -> np.ndarray:
        """The action the arm executes now: the one commanded `action_latency_steps` steps ago."""
        if not self._latency:
            return commanded
        self._latency.append(commanded)
        return self._latency.popleft()

    def observed_state(self, state: np.ndarray) -> np.ndarray:
        """The state as the robot's sensors report it (the true state when there is no noise)."""
        if self._noise_rng is None:
            return state
        noisy = np.array(state, dtype=np.float64)
        config = self.config
        if config.hand_noise_std > 0:
            noisy[_HAND] += self._noise_rng.normal(0.0, config.hand_noise_std, size=3)
        if config.object_noise_std > 0:
            for part in _OBJECTS:
                # A task with one object pads the second with zeros: padding is not sensed.
                if np.any(state[part.start : part.start + 7]):
                    noisy[part] += self._noise_rng.normal(0.0, config.object_noise_std, size=3)
        frame = noisy[:_FRAME].copy()
        noisy[_FRAME : 2 * _FRAME] = frame if self._previous_frame is None else self._previous_frame
        self._previous_frame = frame
        return noisy
