"""RECAP's value model and advantages (`sop.values`) on tiny synthetic stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.window_sampler import WindowSampler
from sop.episode import ACTION, STATE, Episode, Outcome, Source
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
from sop.values import (
    AdvantageLabeller,
    ValueModel,
    ValueModelConfig,
    ValueTrainer,
    episode_length_caps,
    indicators,
    normalized_returns,
    nstep_advantages,
    positive_threshold,
)
from sop.values.value_model import step_reward, two_hot

TASK = "reach-v3"
CAP = 40


def policy_config() -> DiffusionPolicyConfig:
    return DiffusionPolicyConfig(
        state_dim=6,
        action_dim=4,
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=(TASK,),
        state_hidden_dim=32,
        state_feature_dim=16,
        instruction_feature_dim=4,
        down_dims=(16, 32),
        timestep_embed_dim=16,
    )


def episode(length: int, outcome: Outcome, seed: int, marker: float, **kwargs: object) -> Episode:
    """A state-only episode whose state[:, 1] tells the two kinds apart (what the value model must find)."""
    made = make_episode(length, state_dim=6, cameras=(), seed=seed, outcome=outcome, **kwargs)  # type: ignore[arg-type]
    made.steps[STATE][:, 1] = marker
    made.steps[STATE][:, 0] /= CAP  # progress in [0, 1)
    return made


def test_normalized_returns_are_minus_steps_to_success_and_penalise_timeouts() -> None:
    penalty = 1.0
    success = normalized_returns(np.arange(10), 10, Outcome.SUCCESS.value, CAP, penalty)
    assert success[-1] == 0.0  # the step that succeeds
    assert success[0] == pytest.approx(-9 / (CAP * 2))
    assert np.all(np.diff(success) > 0)
    timeout = normalized_returns(np.arange(CAP), CAP, Outcome.TIMEOUT.value, CAP, penalty)
    assert timeout[0] == pytest.approx(-1.0)
    assert timeout.max() < success.min()  # any failure is worse than any success
    assert np.isnan(normalized_returns(0, 10, Outcome.ABORTED.value, CAP, penalty))


def test_two_hot_targets_keep_the_return_exactly() -> None:
    returns = torch.tensor([-1.0, -0.3337, 0.0, -0.0049])
    target = two_hot(returns, 201)
    assert torch.allclose(target.sum(-1), torch.ones(4))
    assert torch.allclose((target * torch.linspace(-1, 0, 201)).sum(-1), returns, atol=1e-6)


def test_value_model_ranks_a_quick_success_above_a_timeout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    store = EpisodeStore(tmp_path / "replay", durable=False)
    for i in range(4):
        store.append(episode(12, Outcome.SUCCESS, seed=i, marker=1.0, source=Source.OFFLINE))
        store.append(episode(CAP, Outcome.TIMEOUT, seed=10 + i, marker=-1.0))
    stats = NormalizationStats.from_store(store, (STATE, ACTION))
    model = ValueModel(policy_config(), stats, ValueModelConfig(hidden_dim=64, lr=3e-3))
    trainer = ValueTrainer(model)
    sampler = WindowSampler(store, 2, 2)
    caps = episode_length_caps(store)
    assert caps == {TASK: CAP}
    rng = np.random.default_rng(0)
    losses = [trainer.step(sampler.sample(64, rng), caps)["value_loss"] for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    labeller = AdvantageLabeller(store, model, n=5, positive_fraction=0.3)
    infos = store.list()
    success = [labeller.episode_values(i) for i in infos if i.outcome == Outcome.SUCCESS]
    timeout = [labeller.episode_values(i) for i in infos if i.outcome == Outcome.TIMEOUT]
    # Frame by frame (the same progress), a state of a quick success is worth more than one of a timeout.
    assert min(v[0] for v in success) > max(v[0] for v in timeout) + 0.2
    assert np.mean(np.concatenate(success)) > np.mean(np.concatenate(timeout)) + 0.3
    assert np.mean([v[-1] for v in success]) > -0.15  # about to succeed: near 0


def test_nstep_advantage_bootstraps_and_uses_the_exact_return_at_the_end() -> None:
    values = np.linspace(-0.5, -0.1, 8)
    n, penalty = 3, 1.0
    advantages = nstep_advantages(values, Outcome.TIMEOUT.value, n, CAP, penalty)
    r = step_reward(CAP, penalty)
    assert advantages[0] == pytest.approx(n * r + values[3] - values[0])
    assert advantages[4] == pytest.approx(n * r + values[7] - values[4])
    exact = normalized_returns(np.arange(8), 8, Outcome.TIMEOUT.value, CAP, penalty)
    assert advantages[5] == pytest.approx(exact[5] - values[5])  # ends within n steps: its real return
    aborted = nstep_advantages(values, Outcome.ABORTED.value, n, CAP, penalty)
    assert aborted[6] == pytest.approx(r + values[7] - values[6])  # no return: bootstrap from the last frame


def test_threshold_gives_the_positive_fraction_and_interventions_are_positive() -> None:
    rng = np.random.default_rng(0)
    advantages = rng.normal(size=10_000)
    threshold = positive_threshold(advantages, 0.3)
    intervention = np.zeros(10_000, bool)
    intervention[:500] = True
    labels = indicators(advantages, threshold, intervention)
    assert (labels[500:]).mean() == pytest.approx(0.3, abs=0.02)
    assert labels[:500].all()


def test_labeller_sets_a_per_task_threshold_and_marks_operator_frames(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", durable=False)
    intervention = np.zeros(CAP, bool)
    intervention[10:20] = True
    for i in range(3):
        store.append(episode(15 + i, Outcome.SUCCESS, seed=i, marker=1.0))
        store.append(episode(CAP, Outcome.TIMEOUT, seed=10 + i, marker=-1.0, intervention=intervention))
    stats = NormalizationStats.from_store(store, (STATE, ACTION))
    torch.manual_seed(0)
    model = ValueModel(policy_config(), stats, ValueModelConfig(hidden_dim=32))
    labeller = AdvantageLabeller(store, model, n=4, positive_fraction=0.3)
    tasks = labeller.relabel()
    autonomous, operator = [], []
    for info in store.list():
        frames = np.arange(info.num_steps)
        labels = labeller.positive([info.episode_id] * info.num_steps, frames)
        driven = store.read_columns(info.episode_id, ["intervention"])["intervention"]
        autonomous.append(labels[~driven])
        operator.append(labels[driven])
    assert np.concatenate(autonomous).mean() == pytest.approx(0.3, abs=0.03)
    assert np.concatenate(operator).all() and len(np.concatenate(operator)) == 30
    assert tasks[TASK].frames == sum(i.num_steps for i in store.list())
    # An episode committed after the relabel is labelled on first use with the task's threshold.
    late = store.append(episode(20, Outcome.SUCCESS, seed=99, marker=1.0))
    assert labeller.positive([late.episode_id], np.array([3])).shape == (1,)
