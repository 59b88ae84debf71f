"""Typed configs of the diffusion policy (architecture, stored in the checkpoint) and its sampler (run time).

The architecture config travels inside every checkpoint, so a robot rebuilds exactly the network the learner
trained. The sampler config is chosen where the policy runs: a choice type selected by `type:`
(`sampler: {type: ddim, steps: 10}`, `--policy.sampler.type rti --policy.sampler.timesteps 3,1,0`), each
kind with only its own fields and building its own sampler. The same weights serve every sampler, which is
what lets the RTI benchmark compare them on one checkpoint.

Defaults are the model we actually run: state-only, instruction-conditioned through a frozen sentence
encoder, a 1-D U-Net small enough for < 5 ms per denoiser call on one CPU core, Diffusion Policy's horizons
(2 observed steps, 16 predicted, 8 executed) and its schedule (100 DDPM steps, squared cosine, epsilon).
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import draccus

from sop.policies.gripper_levels import levels_by_task

if TYPE_CHECKING:
    from sop.policies.samplers import DDIMSampler, DDPMSampler, RTISampler


class InstructionEncoderKind(enum.StrEnum):
    SENTENCE = "sentence"  # frozen all-MiniLM-L6-v2 embedding of the instruction text, learned projection
    TASK = "task"  # a learned embedding per task id (fallback without the sentence encoder)


class GripperMode(enum.StrEnum):
    """How RTI keeps a discrete gripper dimension usable in warm starts (RTI-DP, section on discrete actions).

    With clip or scale the sent gripper command is discrete too, as in RTI-DP: the sign of the prediction
    in the network's space picks one of the gripper's two extremes in the data (±1 for a binary gripper;
    Meta-World's "relaxed" 0 vs "grasp" 0.6 effort for push-v3). Rounding at 0 in environment units instead
    would close Meta-World's hand before it reaches the puck.
    """

    NONE = "none"  # the gripper is treated like any other dimension
    CLIP = "clip"  # after each prediction the warm start's gripper value is snapped to ±1/factor
    SCALE = "scale"  # the gripper is trained and sampled divided by factor, so warm-start errors stay small


class SamplerKind(enum.StrEnum):
    """The samplers' names, as `sampler.type` spells them (each kind's config is registered under its name)."""

    DDPM = "ddpm"
    DDIM = "ddim"
    RTI = "rti"


class NormalizationChoice(enum.StrEnum):
    MIN_MAX = "min_max"
    MEAN_STD = "mean_std"


def _coerce_enums(config: object, **fields: type[enum.StrEnum]) -> None:
    """Accept plain strings for enum fields (Python callers, JSON manifests) and name the field on a bad one."""
    for name, kind in fields.items():
        value = getattr(config, name)
        try:
            object.__setattr__(config, name, kind(value))
        except ValueError:
            raise ValueError(f"{name} is {value!r}, expected one of {[k.value for k in kind]}") from None
    # Tuples may arrive as lists from Python callers; frozen configs should hold hashable values.
    for name, value in vars(config).items():
        if isinstance(value, list):
            object.__setattr__(config, name, tuple(value))


@dataclass(frozen=True)
class DiffusionPolicyConfig:
    """Architecture and data layout of the diffusion policy; stored in the checkpoint manifest."""

    state_dim: int = field(default=39, metadata={"help": "length of observation.state"})
    action_dim: int = field(
        default=4, metadata={"help": "length of the action (Meta-World: xyz delta + gripper)"}
    )
    observation_horizon: int = field(
        default=2, metadata={"help": "To: observed steps the policy conditions on"}
    )
    prediction_horizon: int = field(default=16, metadata={"help": "Tp: actions per predicted chunk"})
    execution_horizon: int = field(default=8, metadata={"help": "Ta: actions executed before the next chunk"})

    state_hidden_dim: int = 256
    state_feature_dim: int = 64
    instruction_encoder: InstructionEncoderKind = InstructionEncoderKind.SENTENCE
    instruction_feature_dim: int = 32
    tasks: tuple[str, ...] = field(
        default=(), metadata={"help": "task ids (required for the task embedding)"}
    )

    cameras: tuple[str, ...] = field(default=(), metadata={"help": "camera names; empty: state-only"})
    image_channels: tuple[int, ...] = (32, 64, 64)
    image_keypoints: int = 32
    image_feature_dim: int = 64

    down_dims: tuple[int, ...] = field(default=(64, 128, 256), metadata={"help": "U-Net channels per level"})
    kernel_size: int = 5
    num_groups: int = 8
    timestep_embed_dim: int = 64

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    state_normalization: NormalizationChoice = NormalizationChoice.MIN_MAX

    gripper_index: int | None = field(
        default=3, metadata={"help": "action index of a discrete gripper, or null"}
    )
    gripper_mode: GripperMode = GripperMode.CLIP
    gripper_factor: float = 10.0
    gripper_levels: tuple[tuple[str, float, float], ...] = field(
        default=(),
        metadata={
            "help": "per task (task, released, closed): the two gripper commands found in the training data "
            "(sop.policies.gripper_levels); filled in by training, empty: the sign in the network's space"
        },
    )

    advantage_conditioning: bool = field(
        default=False,
        metadata={
            "help": "RECAP: the network takes a binary 'good action' indicator (an embedding added to the FiLM "
            "condition; unknown / good / not good) and the robot samples conditioned on 'good'. Off: the "
            "network and its predictions are exactly those of a plain diffusion policy"
        },
    )
    guidance_beta: float = field(
        default=1.0,
        metadata={
            "help": "RECAP's classifier-free guidance weight at inference: 1 conditions on 'good' (one denoiser "
            "pass); beta != 1 mixes eps_unknown + beta (eps_good - eps_unknown) (two). Needs "
            "advantage_conditioning"
        },
    )

    def __post_init__(self) -> None:
        _coerce_enums(
            self,
            instruction_encoder=InstructionEncoderKind,
            gripper_mode=GripperMode,
            state_normalization=NormalizationChoice,
        )
        for name in (
            "state_dim",
            "action_dim",
            "observation_horizon",
            "prediction_horizon",
            "execution_horizon",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.observation_horizon - 1 + self.execution_horizon > self.prediction_horizon:
            raise ValueError(
                f"execution_horizon {self.execution_horizon} does not fit: observation_horizon - 1 + "
                f"execution_horizon must be <= prediction_horizon ({self.prediction_horizon})"
            )
        if not self.down_dims:
            raise ValueError("down_dims must name at least one U-Net level")
        factor = 2 ** (len(self.down_dims) - 1)
        if self.prediction_horizon % factor != 0:
            raise ValueError(
                f"prediction_horizon {self.prediction_horizon} must be a multiple of {factor} "
                f"(the U-Net halves it {len(self.down_dims) - 1} times for down_dims {self.down_dims})"
            )
        for dim in self.down_dims:
            if dim % self.num_groups != 0:
                raise ValueError(f"down_dims entry {dim} is not divisible by num_groups {self.num_groups}")
        for channels in self.image_channels:
            if channels % self.num_groups != 0:
                raise ValueError(
                    f"image_channels entry {channels} is not divisible by num_groups {self.num_groups}"
                )
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks has duplicates: {self.tasks}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras has duplicates: {self.cameras}")
        if self.gripper_index is not None and not 0 <= self.gripper_index < self.action_dim:
            raise ValueError(
                f"gripper_index {self.gripper_index} is outside the action (dim {self.action_dim})"
            )
        if self.gripper_mode is not GripperMode.NONE and self.gripper_index is None:
            raise ValueError(f"gripper_mode {self.gripper_mode.value!r} needs a gripper_index")
        if self.gripper_factor <= 0:
            raise ValueError(f"gripper_factor must be positive, got {self.gripper_factor}")
        if not math.isfinite(self.guidance_beta) or self.guidance_beta < 0:
            raise ValueError(f"guidance_beta must be finite and >= 0, got {self.guidance_beta}")
        if self.guidance_beta != 1.0 and not self.advantage_conditioning:
            raise ValueError(
                f"guidance_beta {self.guidance_beta} needs advantage_conditioning (a policy without the "
                "indicator has nothing to guide with); leave guidance_beta at 1"
            )
        if self.gripper_levels:
            if self.gripper_index is None:
                raise ValueError("gripper_levels need a gripper_index")
            try:
                levels = levels_by_task(self.gripper_levels)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"gripper_levels: {exc}") from None
            if len(levels) != len(self.gripper_levels):
                raise ValueError("gripper_levels name a task twice")
            object.__setattr__(self, "gripper_levels", tuple(level.as_tuple() for level in levels.values()))

    @property
    def gripper_handled(self) -> bool:
        return self.gripper_mode is not GripperMode.NONE and self.gripper_index is not None


# Samplers ----------------------------------------------------------------------------------------------------
#
# A sampler is a draccus choice type: `sampler: {type: ddim, steps: 10}` in YAML, `--sampler.type ddim
# --sampler.steps 10` on the command line. Each kind holds only its own fields and builds its sampler
# (`build`), so adding a sampler is one config class here plus its class in `sop.policies.samplers`.


@dataclass(frozen=True)
class ColdStartConfig(draccus.ChoiceRegistry, abc.ABC):
    """RTI's solve from noise (episode start, after a swap): `cold_start: {type: ddim, steps: 10}`.

    DDIM-10 by default: RTI-DP's 100 DDPM steps (~1.2 s on this CPU) would stall a 30 Hz robot after every
    checkpoint swap; a hand-back needs no solve from noise (it warm-starts from the executed actions)."""

    @property
    def type(self) -> str:
        return str(self.get_choice_name(self.__class__))

    @classmethod
    def default_choice_name(cls) -> str:
        return SamplerKind.DDIM.value

    @abc.abstractmethod
    def build(self, config: DiffusionPolicyConfig) -> DDPMSampler | DDIMSampler:
        """The cold-start sampler for a policy of this architecture."""


@ColdStartConfig.register_subclass(SamplerKind.DDPM.value)
@dataclass(frozen=True)
class DDPMColdStartConfig(ColdStartConfig):
    steps: int | None = field(
        default=None, metadata={"help": "DDPM steps; null: all training steps (RTI-DP)"}
    )

    def __post_init__(self) -> None:
        _at_least_one("cold_start.steps", self.steps)

    def build(self, config: DiffusionPolicyConfig) -> DDPMSampler:
        from sop.policies.samplers import DDPMSampler

        return DDPMSampler(config, self.steps)


@ColdStartConfig.register_subclass(SamplerKind.DDIM.value)
@dataclass(frozen=True)
class DDIMColdStartConfig(ColdStartConfig):
    steps: int = field(default=10, metadata={"help": "DDIM steps: a shorter stall than DDPM's"})

    def __post_init__(self) -> None:
        _at_least_one("cold_start.steps", self.steps)

    def build(self, config: DiffusionPolicyConfig) -> DDIMSampler:
        from sop.policies.samplers import DDIMSampler

        return DDIMSampler(config, self.steps)


@dataclass(frozen=True)
class SamplerConfig(draccus.ChoiceRegistry, abc.ABC):
    """How chunks are drawn at run time; not part of the weights. `type:` picks the kind (default: rti).

    The fields here are every kind's; each registered kind below adds only its own.
    """

    execution_horizon: int | None = field(
        default=None,
        metadata={"help": "Ta: actions executed per chunk; null: the checkpoint's execution_horizon"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the sampling noise"})

    @property
    def type(self) -> str:
        return str(self.get_choice_name(self.__class__))

    @classmethod
    def default_choice_name(cls) -> str:
        return SamplerKind.RTI.value

    @classmethod
    def of_kind(cls, kind: str) -> SamplerConfig:
        """The default config of a kind named by its `type` (`"ddim"` -> DDIM-10)."""
        try:
            return cls.get_choice_class(str(kind))()  # type: ignore[no-any-return]
        except KeyError:
            raise ValueError(
                f"sampler type is {kind!r}, expected one of {sorted(cls.get_known_choices())}"
            ) from None

    @classmethod
    def upgrade_stored(cls, values: Any) -> Any:
        """A sampler config stored in an older spelling, rewritten to today's (`sop.config` calls this
        before decoding a file or a stored mapping, so existing robot.yaml files and run folders load):

        - a bare kind name (`sampler: ddim`, the fleet harness's field before it was typed) -> `{type: ddim}`;
        - the flat form with every kind's fields (`{kind: rti, ddim_steps: 10, rti_timesteps: [2, 1, 0],
          rti_execution_horizon: 1, rti_cold_start: ddpm, ddpm_steps: null, execution_horizon: null, seed: 0}`)
          -> the chosen kind's own fields.
        """
        if isinstance(values, str):
            return {"type": values}
        if not isinstance(values, dict) or "kind" not in values or "type" in values:
            return values
        old = dict(values)
        kind = str(old.pop("kind"))
        new: dict[str, Any] = {"type": kind}
        for name in ("seed", "execution_horizon"):
            if name in old:
                new[name] = old.pop(name)
        ddpm_steps, ddim_steps = old.pop("ddpm_steps", None), old.pop("ddim_steps", None)
        rti_horizon = old.pop("rti_execution_horizon", None)
        rti_timesteps, rti_cold_start = old.pop("rti_timesteps", None), old.pop("rti_cold_start", None)
        if kind == SamplerKind.DDPM.value and ddpm_steps is not None:
            new["steps"] = ddpm_steps
        elif kind == SamplerKind.DDIM.value and ddim_steps is not None:
            new["steps"] = ddim_steps
        elif kind == SamplerKind.RTI.value:
            if rti_timesteps is not None:
                new["timesteps"] = rti_timesteps
            if new.get("execution_horizon") is None:  # the old override was null: RTI's own Ta applied
                new["execution_horizon"] = 1 if rti_horizon is None else rti_horizon
            cold = str(rti_cold_start or SamplerKind.DDPM.value)
            steps = ddim_steps if cold == SamplerKind.DDIM.value else ddpm_steps
            new["cold_start"] = {"type": cold, **({} if steps is None else {"steps": steps})}
        return {**new, **old}  # anything left is no field of either form: decoding names it

    def __post_init__(self) -> None:
        _at_least_one("execution_horizon", self.execution_horizon)

    def resolved_execution_horizon(self, checkpoint_horizon: int) -> int:
        """Ta for this sampler: its own, or the checkpoint's when it has none."""
        return checkpoint_horizon if self.execution_horizon is None else self.execution_horizon

    @abc.abstractmethod
    def build(self, config: DiffusionPolicyConfig) -> DDPMSampler | DDIMSampler | RTISampler:
        """The sampler for a policy of this architecture (`sop.policies.samplers.make_sampler`)."""


@SamplerConfig.register_subclass(SamplerKind.DDPM.value)
@dataclass(frozen=True)
class DDPMSamplerConfig(SamplerConfig):
    """The full ancestral schedule from noise: the reference, and the slowest (100 denoiser calls)."""

    steps: int | None = field(default=None, metadata={"help": "DDPM steps; null: all training steps"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("steps", self.steps)

    def build(self, config: DiffusionPolicyConfig) -> DDPMSampler:
        from sop.policies.samplers import DDPMSampler

        return DDPMSampler(config, self.steps)


@SamplerConfig.register_subclass(SamplerKind.DDIM.value)
@dataclass(frozen=True)
class DDIMSamplerConfig(SamplerConfig):
    """k deterministic DDIM steps from noise for every chunk."""

    steps: int = field(default=10, metadata={"help": "DDIM steps per chunk"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("steps", self.steps)

    def build(self, config: DiffusionPolicyConfig) -> DDIMSampler:
        from sop.policies.samplers import DDIMSampler

        return DDIMSampler(config, self.steps)


@SamplerConfig.register_subclass(SamplerKind.RTI.value)
@dataclass(frozen=True)
class RTISamplerConfig(SamplerConfig):
    """RTI-DP: each chunk warm-starts from the previous one and runs only the last few timesteps."""

    execution_horizon: int | None = field(
        default=1,
        metadata={"help": "Ta: RTI-DP re-plans every control step (3 calls each); null: the checkpoint's"},
    )
    timesteps: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "the K' timesteps run on a warm start (DDPM index space), decreasing; null: 20 %% and 10 %% "
            "of the checkpoint's num_train_timesteps, then 0 ((20, 10, 0) at 100); RTI-DP's (2, 1, 0) start "
            "too low to turn a plan (samplers.py)"
        },
    )
    cold_start: ColdStartConfig = field(
        default_factory=DDIMColdStartConfig,
        metadata={
            "help": "the solve from noise at episode start and after a swap: {type: ddim, steps: 10} (a short "
            "stall) or {type: ddpm} (RTI-DP's 100 steps)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.timesteps, list):
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        if self.timesteps is None:
            return
        if not self.timesteps:
            raise ValueError("timesteps must list at least one timestep")
        if any(t < 0 for t in self.timesteps):
            raise ValueError(f"timesteps must be >= 0, got {self.timesteps}")
        if list(self.timesteps) != sorted(set(self.timesteps), reverse=True):
            raise ValueError(f"timesteps must be strictly decreasing, got {self.timesteps}")

    def build(self, config: DiffusionPolicyConfig) -> RTISampler:
        from sop.policies.samplers import RTISampler

        return RTISampler(config, self.resolved_timesteps(config), self.cold_start.build(config))

    def resolved_timesteps(self, config: DiffusionPolicyConfig) -> tuple[int, ...]:
        """The warm-start timesteps this sampler runs for a checkpoint with `config`."""
        return self.timesteps or default_rti_timesteps(config.num_train_timesteps)


def default_rti_timesteps(num_train_timesteps: int) -> tuple[int, ...]:
    """RTI's warm-start timesteps when the config names none: 20 % and 10 % of the schedule, then 0
    ((20, 10, 0) of 100; noise levels 0.33 and 0.18 on the squared cosine schedule), fewer where they coincide."""
    spaced = (round(0.2 * num_train_timesteps), round(0.1 * num_train_timesteps), 0)
    return tuple(sorted(set(spaced), reverse=True))


def _at_least_one(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
