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

from cloud_learner.algorithms import FrameSelection, HGDaggerConfig
from cloud_learner.config import MixingLossScale, ReplayConfig, TrainerConfig
from cloud_learner.replay import LossMixer, Replay, online_share
from cloud_learner.trainer import staleness
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import INTERVENTION, Source
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.policy_features import PolicyFeatures
from sop.v1 import fleet_pb2

StartLearner = Callable[..., RunningLearner]


def intervention_pattern(num_steps: int, start: int, stop: int) -> np.ndarray:
    flags = np.zeros(num_steps, bool)
    flags[start:stop] = True
    return flags


def test_online_share_follows_the_sop_formula_and_is_clipped() -> None:
    config = ReplayConfig(mixing_alpha=2.0, mixing_loss_scale=MixingLossScale.RAW)
    loss_on, loss_off = 0.3, 0.4
    expected = np.exp(2.0 * loss_on) / (np.exp(2.0 * loss_on) + np.exp(loss_off))
    assert online_share(loss_on, loss_off, config) == pytest.approx(expected)
    assert online_share(50.0, 0.0, config) == 0.8
    assert online_share(0.0, 50.0, config) == 0.2


def test_online_share_responds_at_a_small_policys_loss_scale() -> None:
    """Raw, losses of 0.04-0.15 keep the share at ~0.5; divided by the task's mean loss it follows the ratio."""
    raw = ReplayConfig(mixing_loss_scale=MixingLossScale.RAW)
    scaled = ReplayConfig()
    assert scaled.mixing_loss_scale is MixingLossScale.TASK_MEAN
    assert abs(online_share(0.10, 0.05, raw) - 0.5) < 0.03
    # Only the ratio counts: the same ratio at any loss scale gives the same share.
    for loss_off in (0.05, 0.5, 5.0):
        assert online_share(2 * loss_off, loss_off, scaled) == pytest.approx(
            1 / (1 + np.exp(-(1.5 * 4 / 3 - 2 / 3)))
        )
    assert online_share(0.10, 0.05, scaled) > 0.75  # online frames fit worse: more of them
    assert online_share(0.05, 0.10, scaled) < 0.45  # online frames fit better: fewer
    assert online_share(0.05, 0.05, scaled) == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert online_share(0.0, 0.0, scaled) == pytest.approx(online_share(0.0, 0.0, raw))
    with pytest.raises(ValueError, match="mixing_loss_scale"):
        ReplayConfig(mixing_loss_scale="mean")  # type: ignore[arg-type]


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
    replay = Replay(store, ReplayConfig(), FrameSelection(autonomous_frame_weight=0.0), 2, 16)
    batch = replay.sample(512, np.random.default_rng(0))
    assert batch is not None
    online = np.asarray(batch["source"]) == "online"
    assert 0.3 < online.mean() < 0.7  # the initial 50/50 share of the task
    assert batch[INTERVENTION][online, 1].all()  # anchor frame (index To-1) of every online window
    assert set(batch["frame_index"][online]) <= set(range(10, 20))


def test_replay_holds_at_most_its_bound_of_online_frames_per_task(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    store.append(make_episode(40, seed=1, source=Source.OFFLINE, cameras=()))
    replay = Replay(
        store,
        ReplayConfig(max_online_frames_per_task=100),
        FrameSelection(autonomous_frame_weight=1.0),
        2,
        16,
    )
    for seed in range(2, 12):
        store.append(make_episode(40, seed=seed, cameras=()))
        replay.refresh()
    assert replay.windows.held_frames(source="online") <= 100
    assert replay.windows.held_frames(source="offline") == 40
    assert replay.windows.num_evicted == 8
    with pytest.raises(ValueError, match=r"replay\.max_online_frames_per_task must be positive"):
        ReplayConfig(max_online_frames_per_task=0)


def test_replay_waits_for_trainable_data(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    replay = Replay(store, ReplayConfig(), FrameSelection(), 2, 16)
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
    replay = Replay(store, ReplayConfig(), FrameSelection(), 2, 16)
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


def start_trainer_on_demos(
    start_learner: StartLearner, tmp_path: Path, keep_last: int, max_steps: int
) -> RunningLearner:
    """A learner training a fresh base on two offline demos: batch 8, a publication every 2 steps."""
    offline = [make_episode(40, seed=10 + i, source=Source.OFFLINE, cameras=()) for i in range(2)]
    base = write_base_checkpoint(tmp_path / "base", offline)
    demos = EpisodeStore(tmp_path / "demos", durable=False)
    for episode in offline:
        demos.append(episode)
    trainer_config = TrainerConfig(
        base_checkpoint=str(base),
        batch_size=8,
        publish_every_steps=2,
        keep_last=keep_last,
        log_every_steps=2,
        max_steps=max_steps,
    )
    return start_learner(
        trainer=trainer_config, replay=ReplayConfig(offline_stores=[str(tmp_path / "demos")])
    )


def test_trainer_publishes_every_k_steps_and_a_restart_resumes(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    learner = start_trainer_on_demos(start_learner, tmp_path, keep_last=2, max_steps=6)
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


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_trainer_quarantines_episodes_its_policy_cannot_train_on_and_keeps_training(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    offline = [make_episode(40, seed=30 + i, source=Source.OFFLINE, cameras=()) for i in range(2)]
    base = write_base_checkpoint(tmp_path / "base", offline)  # state 39, action 4, task embedding of reach-v3
    # A run directory that already holds what the policy cannot train on (an older learner, another writer).
    replay_before_start = EpisodeStore(tmp_path / "run" / "replay", durable=False)
    for episode in offline:
        replay_before_start.append(episode)
    narrow = replay_before_start.append(make_episode(40, seed=40, cameras=(), state_dim=5)).episode_id
    unknown_task = replay_before_start.append(
        make_episode(40, seed=41, cameras=(), task="made-up-v1")
    ).episode_id

    learner = start_learner(
        trainer=TrainerConfig(
            base_checkpoint=str(base), batch_size=8, publish_every_steps=1000, log_every_steps=2
        )
    )
    trainer = learner.service.trainer
    assert trainer is not None
    wait_until(lambda: trainer.step >= 2 or not trainer.running)
    assert trainer.failure is None and trainer.running
    reasons = {entry.original_name: entry.reason for entry in learner.service.store.quarantined()}
    assert set(reasons) == {narrow, unknown_task}
    assert "observation.state" in reasons[narrow] and "(T, 39)" in reasons[narrow]
    assert "task" in reasons[unknown_task] and "made-up-v1" in reasons[unknown_task]

    # One that slips in while training (written by another process) goes the same way.
    late = make_episode(40, seed=42, cameras=(), action_dim=3, source=Source.OFFLINE)
    EpisodeStore(tmp_path / "run" / "replay", durable=False).append(late)
    trainer.notify_new_episode(late)
    step_after_late = trainer.step
    wait_until(lambda: trainer.quarantined_episodes == 3 and trainer.step >= step_after_late + 4)
    assert trainer.failure is None and trainer.running
    assert trainer.last_metrics["replay/quarantined_episodes"] == 3.0
    assert sorted(i.episode_id for i in learner.service.store.list()) == sorted(e.episode_id for e in offline)
    rows = [json.loads(line) for line in learner.config.train_log_path.read_text().splitlines()]
    reported = [row for row in rows if "newly_quarantined" in row]
    assert {q["episode_id"] for row in reported for q in row["newly_quarantined"]} == {
        narrow,
        unknown_task,
        late.episode_id,
    }
    assert reported[-1]["quarantined_episodes"] == 3

    learner.restart()  # the run directory stays usable: the learner starts and trains
    trainer = learner.service.trainer
    assert trainer is not None
    step = trainer.step
    wait_until(lambda: trainer.step >= step + 2 or not trainer.running)
    assert trainer.failure is None and trainer.running and trainer.quarantined_episodes == 0
    assert len(learner.service.store.quarantined()) == 3


def test_replay_quarantines_episodes_that_do_not_fit_the_policy_features(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    good = store.append(make_episode(20, seed=1, cameras=())).episode_id
    narrow = store.append(make_episode(20, seed=2, cameras=(), state_dim=5)).episode_id
    unknown_task = store.append(make_episode(20, seed=3, cameras=(), task="made-up-v1")).episode_id
    features = PolicyFeatures(state_dim=39, action_dim=4, tasks=("reach-v3",))
    replay = Replay(
        store, ReplayConfig(), FrameSelection(autonomous_frame_weight=1.0), 2, 16, features=features
    )
    assert replay.windows.num_episodes == 1 and replay.num_quarantined == 2
    assert {e.original_name for e in store.quarantined()} == {narrow, unknown_task}
    batch = replay.sample(16, np.random.default_rng(0))
    assert batch is not None and set(batch["episode_id"]) == {good}


def test_replay_returns_nothing_when_its_last_episode_stops_reading(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    only = store.append(make_episode(20, seed=3, source=Source.OFFLINE)).episode_id
    replay = Replay(store, ReplayConfig(), FrameSelection(), 2, 16, cameras=("top",))
    assert replay.sample(4, np.random.default_rng(0)) is not None
    for chunk in (tmp_path / "replay" / "episodes" / only / "observation.images.top").glob("c.*"):
        chunk.write_bytes(b"\x00garbage" * 8)  # a damaged disk, after the episode was indexed
    assert replay.sample(4, np.random.default_rng(1)) is None
    assert replay.num_quarantined == 1 and [e.original_name for e in store.quarantined()] == [only]


def test_while_the_fleet_is_pinned_the_trainer_stores_its_versions_in_its_own_lineage(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    learner = start_trainer_on_demos(start_learner, tmp_path, keep_last=5, max_steps=4)
    publisher = learner.service.publisher
    publisher.pin(1, by="root", reason="hold the base while we look")
    stub = learner.fleet()
    online = make_episode(
        40, seed=20, cameras=(), intervention=intervention_pattern(40, 5, 30), policy_version=1
    )
    assert upload(stub, chunks_of(online)).committed
    trainer = learner.service.trainer
    assert trainer is not None
    wait_until(lambda: not trainer.running)
    assert trainer.failure is None and trainer.step == 4
    checkpoints = learner.service.checkpoints
    assert checkpoints.versions() == [1, 2, 3]  # trained and stored ...
    assert publisher.fleet_version is not None and publisher.fleet_version.version == 1  # ... not announced
    heartbeat = stub.Heartbeat(fleet_pb2.HeartbeatRequest(robot_id="robot-1"), metadata=auth(), timeout=10)
    assert heartbeat.latest_policy_version == 1
    # Unpinned, the fleet gets v3; rolled back to v2, it gets v2's weights as v4. The trainer's next version
    # descends from its own v3, and a restart resumes from v3, not from the republished v4.
    assert publisher.unpin(by="root").version == 3  # type: ignore[union-attr]
    pin = publisher.pin(2, by="root")
    assert pin.version == 4 and checkpoints.record(4).republished_from == 2  # type: ignore[union-attr]
    learner.restart()
    trainer = learner.service.trainer
    assert trainer is not None
    wait_until(lambda: not trainer.running)
    assert trainer.step == 8
    checkpoints = learner.service.checkpoints
    assert [checkpoints.record(v).parent_version for v in (5, 6)] == [3, 5]  # type: ignore[union-attr]
    assert learner.service.publisher.fleet_version.version == 4  # type: ignore[union-attr]
