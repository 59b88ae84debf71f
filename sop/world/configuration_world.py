"""The world model's architecture: one frozen dataclass, stored in the world folder's manifest."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorldModelConfig:
    state_dim: int = field(default=39, metadata={"help": "length of observation.state (from the data)"})
    action_dim: int = field(default=4, metadata={"help": "length of action (from the data)"})
    tasks: tuple[str, ...] = field(
        default=(), metadata={"help": "task ids (from the data); one embedding each"}
    )
    history: int = field(
        default=2,
        metadata={
            "help": "k: states the model conditions on (Meta-World's state already holds the previous frame)"
        },
    )
    action_bins: int = field(
        default=21, metadata={"help": "K: two-hot bins per action dimension (World4RL: 21)"}
    )
    action_low: float = -1.0
    action_high: float = 1.0
    hidden_dim: int = field(default=128, metadata={"help": "width of the residual MLP blocks"})
    num_blocks: int = field(default=3, metadata={"help": "residual blocks of the denoiser and the baseline"})
    task_embed_dim: int = 16
    noise_embed_dim: int = 32
    sampling_steps: int = field(default=4, metadata={"help": "Euler steps per predicted state"})
    sigma_data: float = field(default=1.0, metadata={"help": "EDM sigma_data: the target is z-scored"})
    sigma_min: float = 0.002
    sigma_max: float = field(default=5.0, metadata={"help": "the first sampling step's noise (DIAMOND: 5)"})
    p_mean: float = field(
        default=-0.4,
        metadata={
            "help": "mean of ln(sigma) in training; DIAMOND's -0.4 rather than EDM's -1.2, since with few "
            "sampling steps the first, high-noise steps must already predict from the condition alone"
        },
    )
    p_std: float = 1.2
    success_hidden_dim: int = 128

    def __post_init__(self) -> None:
        for name in ("state_dim", "action_dim", "history", "hidden_dim", "num_blocks", "sampling_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"world model {name} must be >= 1, got {getattr(self, name)}")
        if self.action_bins < 2:
            raise ValueError(f"action_bins must be >= 2, got {self.action_bins}")
        if not self.action_high > self.action_low:
            raise ValueError(f"action range [{self.action_low}, {self.action_high}] is empty")
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
