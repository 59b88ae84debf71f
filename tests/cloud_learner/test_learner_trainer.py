"""Replay mixing, the HG-DAgger update, and the asynchronous trainer inside a running learner."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from learner_fixtures import RunningLearner, auth, chunks_of, upload, write_base_checkpoint

from cloud_learner.algorithms import HGDaggerConfig, SamplerSettings
from cloud_learner.config import ReplayConfig, TrainerConfig
from cloud_learner.replay import LossMixer, Replay, online_share
from cloud_learner.trainer import staleness
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import INTERVENTION, Source
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.v1 import fleet_pb2

StartLearner = Callable[..., RunningLearner]


def intervention_pattern(num_steps: int, start: int, stop: int) -> np.ndarray:
    flags = np.zeros(num_steps, bool)
    flags[start:stop] = True
    return flags


def test_online_share_follows_the_sop_formula_and_is_clipped() -> None:
    config = ReplayConfig(mixing_alpha=2.0)
    loss_on, loss_off = 0.3, 0.4
    expected = np.exp(2.0 * loss_on) / (np.exp(2.0 * loss_on) + np.exp(loss_off))
    assert online_share(loss_on, loss_off, config) == pytest.approx(expected)
    assert online_share(50.0, 0.0, config) == 0.8
    assert online_share(0.0, 50.0, config) == 0.2


def test_loss_mixer_uses_the_last_window_of_steps_per_task() -> None:
    mixer = LossMixer(ReplayConfig(loss_window_steps=2, mixing_alpha=1.5))
    tasks, sources = ["a", "a", "b"], ["online", "offline", "offline"]
    mixer.record(tasks, sources, np.array([9.0, 1.0, 1.0]))  # falls out of the window below
    mixer.record(tasks, sources, np.array([0.2, 0.4, 1.0]))
    mixer.record(tasks, sources, np.array([0.4, 0.4, 1.0]))
    state = mixer.share("a")
    assert state.loss_online == pytest.approx(0.3) and state.loss_offline == pytest.approx(0.4)
    assert state.online_share == pytest.approx(online_share(0.3, 0.4, mixer.config))
    assert mixer.share("b").online_share == 0.5  # no online loss yet: the initial share


def test_hg_dagger_replay_samples_only_operator_frames_of_online_episodes(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    store.append(make_episode(40, seed=1, source=Source.OFFLINE, cameras=()))
    store.append(make_episode(40, seed=2, cameras=(), intervention=intervention_pattern(40, 10, 20)))
    replay = Replay(store, ReplayConfig(), SamplerSettings(autonomous_frame_weight=0.0), 2, 16)
    batch = replay.sample(512, np.random.default_rng(0))
    assert batch is not None
    online = np.asarray(batch["source"]) == "online"
    assert 0.3 < online.mean() < 0.7  # the initial 50/50 share of the task
    assert batch[INTERVENTION][online, 1].all()  # anchor frame (index To-1) of every online window
    assert set(batch["frame_index"][online]) <= set(range(10, 20))


def test_replay_waits_for_trainable_data(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    replay = Replay(store, ReplayConfig(), SamplerSettings(), 2, 16)
    assert replay.sample(8, np.random.default_rng(0)) is None
    store.append(make_episode(20, seed=3, source=Source.OFFLINE, cameras=()))
    assert replay.refresh() == 1
    assert replay.sample(8, np.random.default_rng(0)) is not None


def test_hg_dagger_masks_autonomous_steps_and_reports_exact_per_sample_losses(tmp_path: Path) -> None:
    episodes = [
        make_episode(40, seed=4, source=Source.OFFLINE, cameras=()),
        make_episode(40, seed=5, cameras=(), intervention=intervention_pattern(40, 10, 16)),
    ]
    policy = DiffusionPolicy.load(write_base_checkpoint(tmp_path / "base", episodes))
    store = EpisodeStore(tmp_path / "replay", durable=False)
    for episode in episodes:
        store.append(episode)
    replay = Replay(store, ReplayConfig(), SamplerSettings(), 2, 16)
    batch = replay.sample(8, np.random.default_rng(1))
    assert batch is not None
    algorithm = HGDaggerConfig().build(policy)
    mask = algorithm.loss_mask(batch)
    online = np.asarray(batch["source"]) == "online"
    np.testing.assert_array_equal(mask[online], ~batch[INTERVENTION][online])
    assert not mask[~online].any()  # offline windows: nothing masked, padding included

    before = copy.deepcopy(policy.network.state_dict())
    torch.manual_seed(123)
    losses = algorithm.update(batch).sample_losses
    # The same draws with a one-hot weight give that sample's loss directly.
    reference = DiffusionPolicy.load(tmp_path / "base")
    reference.network.load_state_dict(before)
    for j in (0, 5):
        one_hot = np.zeros(8, np.float32)
        one_hot[j] = 1.0
        torch.manual_seed(123)
        direct = reference.compute_loss(dict(batch, weight=one_hot, action_is_pad=mask), mask_padding=True)
        assert losses[j].item() == pytest.approx(direct.item(), rel=1e-4, abs=1e-6)


def test_staleness_is_measured_on_online_samples_only() -> None:
    batch = {"policy_version": np.array([5, 3, 0, 7]), "source": ["online", "online", "offline", "online"]}
    assert staleness(batch, 7) == (pytest.approx(2.0), 4.0)


def test_trainer_publishes_every_k_steps_and_a_restart_resumes(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    offline = [make_episode(40, seed=10 + i, source=Source.OFFLINE, cameras=()) for i in range(2)]
    base = write_base_checkpoint(tmp_path / "base", offline)
    demos = EpisodeStore(tmp_path / "demos", durable=False)
    for episode in offline:
        demos.append(episode)
    trainer_config = TrainerConfig(
        base_checkpoint=str(base),
        batch_size=8,
        publish_every_steps=2,
        keep_last=2,
        log_every_steps=2,
        max_steps=6,
    )
    learner = start_learner(
        trainer=trainer_config, replay=ReplayConfig(offline_stores=[str(tmp_path / "demos")])
    )
    stub = learner.fleet()
    watch = stub.WatchPolicy(fleet_pb2.WatchPolicyRequest(robot_id="robot-1"), metadata=auth(), timeout=60)
    assert next(watch).version == 1  # the base, published before the first robot connects
    online = make_episode(
        40, seed=20, cameras=(), intervention=intervention_pattern(40, 5, 30), policy_version=1
    )
    assert upload(stub, chunks_of(online)).committed
    announced = [next(watch).version]
    while announced[-1] < 4:
        announced.append(next(watch).version)
    assert announced == sorted(set(announced))  # newer versions only (a quick trainer may skip some)
    watch.cancel()
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 30
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.failure is None and trainer.step == 6
    checkpoints = learner.service.checkpoints
    assert checkpoints.versions() == [3, 4]
    record = checkpoints.record(4)
    assert record is not None and record.parent_version == 3 and record.train_step == 6
    assert "staleness/mean_versions" in trainer.last_metrics
    assert any((Path(learner.config.run_dir) / "tensorboard").iterdir())
    rows = [json.loads(line) for line in learner.config.train_log_path.read_text().splitlines()]
    assert [r["published_version"] for r in rows if "published_version" in r] == [2, 3, 4]
    assert all(isinstance(r["step"], int) and r["time"] > 0 for r in rows)

    learner.restart()  # resumes at step 6 from v4, with its optimiser and EMA state
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 30
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.step == 12
    assert learner.service.checkpoints.versions() == [6, 7]
    assert len(learner.service.store) == 3  # the demos were not imported twice
