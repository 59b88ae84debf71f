"""Typed configs of the diffusion policy (architecture, stored in the checkpoint) and its sampler (run time).

The architecture config travels inside every checkpoint, so a robot rebuilds exactly the network the learner
trained. The sampler config is chosen where the policy runs (`--sampler rti|ddpm|ddim`): the same weights
serve every sampler, which is what lets the RTI benchmark compare them on one checkpoint.

Defaults are the model we actually run: state-only, instruction-conditioned through a frozen sentence
encoder, a 1-D U-Net small enough for < 5 ms per denoiser call on one CPU core, Diffusion Policy's horizons
(2 observed steps, 16 predicted, 8 executed) and its schedule (100 DDPM steps, squared cosine, epsilon).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


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

    @property
    def gripper_handled(self) -> bool:
        return self.gripper_mode is not GripperMode.NONE and self.gripper_index is not None


@dataclass(frozen=True)
class SamplerConfig:
    """How chunks are sampled at run time; not part of the weights."""

    kind: SamplerKind = field(default=SamplerKind.RTI, metadata={"help": "rti | ddpm | ddim"})
    ddpm_steps: int | None = field(default=None, metadata={"help": "DDPM steps; null: all training steps"})
    ddim_steps: int = 10
    rti_timesteps: tuple[int, ...] = field(
        default=(2, 1, 0),
        metadata={"help": "RTI: the last K' timesteps run on a warm start (DDPM index space)"},
    )
    rti_execution_horizon: int = field(
        default=1, metadata={"help": "Ta under RTI: RTI-DP re-plans every control step, 3 calls each"}
    )
    rti_cold_start: SamplerKind = field(
        default=SamplerKind.DDPM,
        metadata={"help": "RTI's full solve: ddpm (all steps, RTI-DP) or ddim (ddim_steps)"},
    )
    execution_horizon: int | None = field(
        default=None,
        metadata={
            "help": "override Ta for every sampler; null: the checkpoint's (rti_execution_horizon for RTI)"
        },
    )
    seed: int = 0

    def __post_init__(self) -> None:
        _coerce_enums(self, kind=SamplerKind, rti_cold_start=SamplerKind)
        if self.ddpm_steps is not None and self.ddpm_steps < 1:
            raise ValueError(f"ddpm_steps must be >= 1, got {self.ddpm_steps}")
        if self.ddim_steps < 1:
            raise ValueError(f"ddim_steps must be >= 1, got {self.ddim_steps}")
        if not self.rti_timesteps:
            raise ValueError("rti_timesteps must list at least one timestep")
        if any(t < 0 for t in self.rti_timesteps):
            raise ValueError(f"rti_timesteps must be >= 0, got {self.rti_timesteps}")
        if list(self.rti_timesteps) != sorted(self.rti_timesteps, reverse=True) or len(
            set(self.rti_timesteps)
        ) != len(self.rti_timesteps):
            raise ValueError(f"rti_timesteps must be strictly decreasing, got {self.rti_timesteps}")
        if self.execution_horizon is not None and self.execution_horizon < 1:
            raise ValueError(f"execution_horizon must be >= 1, got {self.execution_horizon}")
        if self.rti_execution_horizon < 1:
            raise ValueError(f"rti_execution_horizon must be >= 1, got {self.rti_execution_horizon}")
        if self.rti_cold_start is SamplerKind.RTI:
            raise ValueError("rti_cold_start must be ddpm or ddim")

    def resolved_execution_horizon(self, checkpoint_horizon: int) -> int:
        """Ta for this sampler: the explicit override, RTI's own, or the checkpoint's."""
        if self.execution_horizon is not None:
            return self.execution_horizon
        if self.kind is SamplerKind.RTI:
            return self.rti_execution_horizon
        return checkpoint_horizon
