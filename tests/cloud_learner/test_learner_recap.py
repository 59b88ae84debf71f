"""`algorithm.type: recap` inside a running learner: value model, per-frame indicators in the batch, an
advantage-conditioned policy published to robots, and RECAP's scalars in train.jsonl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch
from learner_fixtures import RunningLearner, write_base_checkpoint

from cloud_learner.algorithms import RecapConfig
from cloud_learner.algorithms.recap import Recap, ValueRetrain
from cloud_learner.config import LearnerConfig, ReplayConfig, TrainerConfig
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.window_sampler import WindowSampler
from sop.episode import Episode, Outcome, Source
from sop.policies.modeling_diffusion import (
    ADVANTAGE_CONDITION,
    ADVANTAGE_NEGATIVE,
    ADVANTAGE_POSITIVE,
    ADVANTAGE_UNKNOWN,
    DiffusionPolicy,
)
from sop.training.trainer import OptimizerConfig
from sop.values import ValueModelConfig

StartLearner = Callable[..., RunningLearner]
TASK = "reach-v3"


def episodes() -> list[Episode]:
    intervention = np.zeros(40, bool)
    intervention[5:15] = True
    return [
        make_episode(30, seed=1, cameras=(), source=Source.OFFLINE),
        make_episode(20, seed=2, cameras=(), outcome=Outcome.SUCCESS),
        make_episode(40, seed=3, cameras=(), outcome=Outcome.TIMEOUT, intervention=intervention),
        make_episode(40, seed=4, cameras=(), outcome=Outcome.FAILURE),
    ]


def quick_recap(**overrides: object) -> RecapConfig:
    values: dict[str, object] = dict(
        advantage_steps=5,
        value_every_steps=3,
        value=ValueModelConfig(hidden_dim=32, train_steps=5, batch_size=16),
    )
    values.update(overrides)
    return RecapConfig(**values)  # type: ignore[arg-type]


def test_recap_config_is_chosen_by_type_and_checks_its_values(tmp_path: Path) -> None:
    path = tmp_path / "learner.yaml"
    path.write_text(
        "auth: {allow_unauthenticated: true}\n"
        "algorithm: {type: recap, guidance_beta: 1.5, value_retrain: continue, value: {num_bins: 101}}\n"
    )
    config = draccus.parse(LearnerConfig, config_path=str(path), args=[])
    assert isinstance(config.algorithm, RecapConfig) and config.algorithm.type == "recap"
    assert config.algorithm.value_retrain is ValueRetrain.CONTINUE
    assert config.algorithm.value.num_bins == 101 and config.algorithm.guidance_beta == 1.5
    for bad in ({"positive_fraction": 1.0}, {"indicator_dropout": -0.1}, {"value_retrain": "sometimes"}):
        with pytest.raises(ValueError, match="algorithm"):
            RecapConfig(**bad)  # type: ignore[arg-type]


def test_recap_update_conditions_on_the_value_models_indicator(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    for episode in episodes():
        store.append(episode)
    base = DiffusionPolicy.load(write_base_checkpoint(tmp_path / "base", episodes()))
    algorithm = quick_recap(
        indicator_dropout=0.0, guidance_beta=2.0, optimizer=OptimizerConfig(lr=1e-3, warmup_steps=0)
    ).build(base)
    assert isinstance(algorithm, Recap)
    assert algorithm.policy.config.advantage_conditioning and algorithm.policy.config.guidance_beta == 2.0
    algorithm.attach_replay(store)
    sampler = WindowSampler(store, 2, 16)
    batch = sampler.sample(32, np.random.default_rng(0))
    condition = algorithm.make_policy_condition(batch)
    assert condition is not None
    indices = condition[ADVANTAGE_CONDITION].numpy()
    expected = algorithm.positive(batch)
    assert np.array_equal(indices == 2, expected) and (indices != ADVANTAGE_UNKNOWN).all()
    assert expected.any() and not expected.all()
    embedding = algorithm.policy.network.advantage.weight
    assert torch.count_nonzero(embedding) == 0  # converted from the plain base: the indicator starts at zero
    result = algorithm.update(batch)
    assert result.sample_losses.shape == (32,)
    # The update trained on the batch's indicators: both "good" and "not good" rows moved, "unknown" did not
    # (no dropout here).
    assert embedding[ADVANTAGE_POSITIVE].abs().sum() > 0 and embedding[ADVANTAGE_NEGATIVE].abs().sum() > 0
    assert embedding[ADVANTAGE_UNKNOWN].abs().sum() == 0
    for name in ("value_loss", "value_abs_error", f"positive_fraction/{TASK}", "guidance_beta"):
        assert name in result.metrics, name
    assert result.metrics["guidance_beta"] == 2.0
    published = algorithm.publishable_policy()
    assert isinstance(published, DiffusionPolicy) and published.config.advantage_conditioning


def test_value_model_retrains_from_base_or_continues(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    for episode in episodes():
        store.append(episode)
    base = DiffusionPolicy.load(write_base_checkpoint(tmp_path / "base", episodes()))
    for retrain in ValueRetrain:
        algorithm = quick_recap(value_retrain=retrain).build(base)
        assert isinstance(algorithm, Recap)
        algorithm.attach_replay(store)
        algorithm.train_value_model()
        first = algorithm.value_model
        trained = {k: v.clone() for k, v in algorithm.value_model.state_dict().items()}  # type: ignore[union-attr]
        algorithm.train_value_model()
        assert (algorithm.value_model is first) == (retrain is ValueRetrain.CONTINUE)
        if retrain is ValueRetrain.FROM_BASE:  # every round starts from the same initialisation
            fresh = (algorithm._new_value_model().state_dict() for _ in range(2))
            assert all(torch.equal(a, b) for a, b in zip(*(s.values() for s in fresh), strict=True))
        else:  # the second round went on from the first's weights
            assert any(not torch.equal(trained[k], v) for k, v in algorithm.value_model.state_dict().items())  # type: ignore[union-attr]


def test_learner_runs_recap_and_logs_its_scalars(start_learner: StartLearner, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = episodes()
    base = write_base_checkpoint(tmp_path / "base", data)
    store = EpisodeStore(tmp_path / "demos", durable=False)
    for episode in data:  # a store to import: offline and online episodes alike reach the replay
        store.append(episode)
    learner = start_learner(
        trainer=TrainerConfig(
            base_checkpoint=str(base), batch_size=8, publish_every_steps=3, log_every_steps=3, max_steps=6
        ),
        replay=ReplayConfig(offline_stores=[str(tmp_path / "demos")]),
        algorithm=quick_recap(guidance_beta=1.5),
    )
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 60
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.failure is None and trainer.step == 6
    latest = learner.service.checkpoints.latest()
    assert latest is not None and latest.version == 3
    published = DiffusionPolicy.from_bytes(learner.service.checkpoints.read_blob(latest.version))
    assert published.config.advantage_conditioning and published.config.guidance_beta == 1.5
    rows = [json.loads(line) for line in learner.config.train_log_path.read_text().splitlines()]
    logged = [row for row in rows if "train/value_loss" in row]
    assert logged, rows
    assert logged[-1]["train/guidance_beta"] == 1.5
    assert 0.0 < logged[-1][f"train/positive_fraction/{TASK}"] < 1.0

    learner.restart()  # resumes at step 6 from v3: the conditioned policy, its value model and schedule
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 60
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.failure is None and trainer.step == 12
    algorithm = trainer.algorithm
    assert isinstance(algorithm, Recap) and algorithm.value_model is not None


def test_the_shipped_recap_config_loads() -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / "learner_recap.yaml"
    config = draccus.parse(LearnerConfig, config_path=str(path), args=[])
    assert isinstance(config.algorithm, RecapConfig)
    assert config.algorithm.positive_fraction == 0.3 and config.algorithm.indicator_dropout == 0.3
    assert config.algorithm.value.num_bins == 201 and config.algorithm.guidance_beta == 1.0


def test_a_resumed_recap_keeps_its_value_model_and_schedule(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    for episode in episodes():
        store.append(episode)
    base = DiffusionPolicy.load(write_base_checkpoint(tmp_path / "base", episodes()))
    batch = WindowSampler(store, 2, 16).sample(16, np.random.default_rng(0))
    first = quick_recap(value_every_steps=100).build(base)
    first.attach_replay(store)
    first.update(batch)
    tensors, meta = first.training_state()
    resumed = quick_recap(value_every_steps=100).build(base)
    assert isinstance(first, Recap) and isinstance(resumed, Recap)
    resumed.attach_replay(store)
    resumed.load_training_state(tensors, meta)
    assert resumed.value_model is not None and first.value_model is not None
    for name, value in first.value_model.state_dict().items():
        assert torch.equal(resumed.value_model.state_dict()[name], value), name
    assert np.array_equal(resumed.positive(batch), first.positive(batch))  # labels from the restored model
    restored = resumed.value_model
    resumed.update(batch)  # step 1 of 100: no value training due, the restored model stays
    assert resumed.value_model is restored
