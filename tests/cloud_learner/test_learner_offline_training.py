"""The learner's trainer without a fleet (the offline arm of `sop bench fleet`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from learner_fixtures import write_base_checkpoint

from cloud_learner.checkpoint_store import CheckpointStore
from cloud_learner.config import AuthConfig, LearnerConfig, ReplayConfig, TrainerConfig
from cloud_learner.offline_training import train_offline
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import Source
from sop.policies import load_policy
from sop.policies.modeling_diffusion import DiffusionPolicy


def _config(tmp_path: Path, demos: Path, base: Path) -> LearnerConfig:
    return LearnerConfig(
        run_dir=str(tmp_path / "learner"),
        auth=AuthConfig(allow_unauthenticated=True),  # no server here: nobody to authenticate
        replay=ReplayConfig(offline_stores=[str(demos)]),
        trainer=TrainerConfig(base_checkpoint=str(base), batch_size=8, publish_every_steps=2, keep_last=10),
    )


def test_offline_training_publishes_like_the_service_and_continues(tmp_path: Path) -> None:
    offline = [make_episode(40, seed=10 + i, source=Source.OFFLINE, cameras=()) for i in range(2)]
    base = write_base_checkpoint(tmp_path / "base", offline)
    demos = EpisodeStore(tmp_path / "demos", durable=False)
    for episode in offline:
        demos.append(episode)
    config = _config(tmp_path, tmp_path / "demos", base)

    record = train_offline(config, steps=5)
    # v1 is the base; then every 2 steps; then the last step (5) once more.
    assert record.version == 4 and record.train_step == 5
    store = CheckpointStore(config.checkpoint_dir)
    assert store.versions() == [1, 2, 3, 4]
    assert [store.record(v).train_step for v in store.versions()] == [0, 2, 4, 5]  # type: ignore[union-attr]
    before, after = (load_policy(source) for source in (base, store.read_blob(4)))
    assert isinstance(before, DiffusionPolicy) and isinstance(after, DiffusionPolicy)
    before_weights, after_weights = before.network.state_dict(), after.network.state_dict()
    changed = [name for name in before_weights if not torch.equal(before_weights[name], after_weights[name])]
    assert changed, "offline training left every weight as it was"

    again = train_offline(config, steps=7)  # the same run_dir continues from step 5, imports nothing twice
    assert again.train_step == 7 and again.version == 6  # v5 at step 6, v6 at the last step
    assert len(EpisodeStore(config.replay_dir, create=False)) == 2


def test_offline_training_needs_demonstrations(tmp_path: Path) -> None:
    config = LearnerConfig(run_dir=str(tmp_path / "learner"), auth=AuthConfig(allow_unauthenticated=True))
    with pytest.raises(ValueError, match="offline_stores"):
        train_offline(config, steps=3)
