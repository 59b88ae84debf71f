from __future__ import annotations

import numpy as np

from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats


def test_stats_from_episodes_keep_each_feature_apart() -> None:
    episodes = [make_episode(num_steps=6) for _ in range(3)]
    stats = NormalizationStats.from_episodes(episodes, (STATE, ACTION))
    assert stats[STATE].dim == episodes[0].steps[STATE].shape[1]
    assert stats[ACTION].dim == episodes[0].steps[ACTION].shape[1]
    expected = NormalizationStats.from_arrays({STATE: [e.steps[STATE] for e in episodes]})
    assert np.allclose(
        np.asarray(stats[STATE].to_dict()["min"]), np.asarray(expected[STATE].to_dict()["min"])
    )
