"""Post-training algorithms behind one interface (`base.Algorithm`); each is one file plus its config.

    algorithm:
      type: hg_dagger          # configs/learner.yaml, or --algorithm.type=hg_dagger

A new method (RECAP, World4RL) adds `algorithms/<name>.py` with a config registered under its name whose
`build(policy)` returns its `Algorithm`, and one import line here so the registry knows it.
"""

from __future__ import annotations

from cloud_learner.algorithms.base import Algorithm, AlgorithmConfig, FrameSelection, UpdateResult
from cloud_learner.algorithms.hg_dagger import HGDagger, HGDaggerConfig

__all__ = ["Algorithm", "AlgorithmConfig", "FrameSelection", "HGDagger", "HGDaggerConfig", "UpdateResult"]
