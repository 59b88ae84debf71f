"""RECAP's value model and advantages (π*0.6): learner-side only, the robot never loads them.

- `value_model`: normalized returns (-1 per step, a failure penalty, scaled per task by its episode-length
  cap into [-1, 0]), the distributional value network (201 bins, the policy's observation encoders) and its
  trainer.
- `advantages`: n-step advantages per frame, the per-task threshold that makes ≈30 % of frames "good", and
  the labeller that turns a replay store into per-frame indicators.
"""

from __future__ import annotations

from sop.values.advantages import AdvantageLabeller, indicators, nstep_advantages, positive_threshold
from sop.values.value_model import (
    ValueModel,
    ValueModelConfig,
    ValueTrainer,
    episode_length_caps,
    normalized_returns,
)

__all__ = [
    "AdvantageLabeller",
    "ValueModel",
    "ValueModelConfig",
    "ValueTrainer",
    "episode_length_caps",
    "indicators",
    "normalized_returns",
    "nstep_advantages",
    "positive_threshold",
]
