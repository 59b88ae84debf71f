"""Post-training algorithms behind one interface (`base.Algorithm`); each is one file plus its config.

    algorithm:
      type: hg_dagger          # configs/learner.yaml, or --algorithm.type=hg_dagger
      type: recap              # configs/learner_recap.yaml: value model + advantage-conditioned policy

A new method (RECAP, World4RL) adds `algorithms/<name>.py` with a config registered under its name whose
`build(policy)` returns its `Algorithm`, and one import line here so the registry knows it.
"""

from __future__ import annotations

from cloud_learner.algorithms.base import Algorithm, AlgorithmConfig, FrameSelection, UpdateResult
from cloud_learner.algorithms.hg_dagger import HGDagger, HGDaggerConfig
from cloud_learner.algorithms.recap import Recap, RecapConfig

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "FrameSelection",
    "HGDagger",
    "HGDaggerConfig",
    "Recap",
    "RecapConfig",
    "UpdateResult",
]
