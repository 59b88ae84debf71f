"""End to end on an easy Meta-World task: a weak base policy, a robot with the simulated operator uploading
its corrected episodes over gRPC, the learner's asynchronous HG-DAgger trainer, and a higher success rate
for the checkpoint it publishes than for the base, on the same held-out seeds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from learner_fixtures import RunningLearner, chunks_of, upload

from cloud_learner.algorithms import HGDaggerConfig
from cloud_learner.config import ReplayConfig, TrainerConfig
from sim.demonstrations import record_demonstrations
from sim.evaluate import evaluate_policy
from sim.metaworld_env import EnvConfig, make_env
from sim.operator import SimulatedOperator
from sop.data.episode_store import EpisodeStore
from sop.data.window_sampler import WindowSampler
from sop.episode import (
    ACTION,
    INTERVENTION,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    Outcome,
    new_episode_id,
)
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import (
    DDIMSamplerConfig,
    DiffusionPolicyConfig,
    InstructionEncoderKind,
)
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.training.trainer import BCTrainer, OptimizerConfig

StartLearner = Callable[..., RunningLearner]
TASK = "reach-v3"
ENV = EnvConfig(max_episode_steps=150)
SAMPLER = DDIMSamplerConfig(steps=10)
EVAL_EPISODES = 20


def weak_base_policy(demos: EpisodeStore, steps: int) -> DiffusionPolicy:
    """A small policy cloned briefly from a few demonstrations: it reaches the goal only sometimes."""
    stats = NormalizationStats.from_store(demos, (STATE, ACTION))
    config = DiffusionPolicyConfig(
        state_dim=39,
        action_dim=4,
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=(TASK,),
        state_hidden_dim=64,
        state_feature_dim=32,
        instruction_feature_dim=8,
        down_dims=(32, 64),
        timestep_embed_dim=32,
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, stats)
    trainer = BCTrainer(policy, OptimizerConfig(lr=1e-3, warmup_steps=10), total_steps=steps)
    sampler = WindowSampler(demos, config.observation_horizon, config.prediction_horizon)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        trainer.step(sampler.sample(64, rng))
    return trainer.ema_policy()


def success_rate(policy: DiffusionPolicy) -> float:
    policy.set_sampler(SAMPLER)
    return float(evaluate_policy(policy, [TASK], EVAL_EPISODES, env_config=ENV)["success_rate"])


def corrected_episode(policy: DiffusionPolicy, seed: int, robot_id: str, version: int) -> Episode:
    """One online episode: the policy drives, the simulated operator takes over when it stalls."""
    env = make_env(TASK, ENV)
    operator = SimulatedOperator(TASK, seed=seed)
    observation, info = env.reset(seed=seed)
    policy.reset(seed=seed)
    operator.reset(observation)
    columns: dict[str, list[object]] = {k: [] for k in (STATE, ACTION, POLICY_ACTION, INTERVENTION, REWARD)}
    success = False
    started = time.time()
    try:
        while True:
            proposal = policy.act(dict(observation, task=TASK))
            decision = operator.step(observation, proposal, info)
            action = decision.action if decision.intervening and decision.action is not None else proposal
            if decision.event is not None and not decision.intervening:
                policy.invalidate_warm_start()  # handed back: the queued chunk no longer fits the arm
            columns[STATE].append(observation["state"])
            columns[ACTION].append(np.asarray(action, np.float32))
            columns[POLICY_ACTION].append(np.asarray(proposal, np.float32))
            columns[INTERVENTION].append(decision.intervening)
            observation, reward, terminated, truncated, info = env.step(action)
            columns[REWARD].append(float(reward))
            if info["success"]:
                success = True
                break
            if terminated or truncated:
                break
    finally:
        env.close()
    steps = len(columns[ACTION])
    return Episode(
        episode_id=new_episode_id(),
        robot_id=robot_id,
        task=TASK,
        instruction=str(observation["instruction"]),
        outcome=Outcome.SUCCESS if success else Outcome.TIMEOUT,
        started_at=started,
        ended_at=max(time.time(), started),
        steps={
            STATE: np.stack(columns[STATE]).astype(np.float32),  # type: ignore[arg-type]
            ACTION: np.stack(columns[ACTION]).astype(np.float32),  # type: ignore[arg-type]
            POLICY_ACTION: np.stack(columns[POLICY_ACTION]).astype(np.float32),  # type: ignore[arg-type]
            INTERVENTION: np.asarray(columns[INTERVENTION], np.bool_),
            POLICY_VERSION: np.full(steps, version, np.int64),
            TIMESTAMP: np.arange(steps, dtype=np.float64) / 30.0,
            REWARD: np.asarray(columns[REWARD], np.float32),
        },
    )


@pytest.mark.slow
def test_hg_dagger_on_operator_corrections_raises_success(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    demo_store = EpisodeStore(tmp_path / "demos", durable=False)
    for demo in record_demonstrations(TASK, 3, seed=0):
        demo_store.append(demo)
    base = weak_base_policy(demo_store, steps=300)
    base_dir = base.save(tmp_path / "base")
    before = success_rate(DiffusionPolicy.load(base_dir))
    assert before <= 0.5, f"the base policy should be weak, succeeds {before:.0%}"

    # The robot runs the base (v1) with the simulated operator; its corrected episodes go to the learner.
    robot_policy = DiffusionPolicy.load(base_dir)
    robot_policy.set_sampler(SAMPLER)
    online = [corrected_episode(robot_policy, 10_000 + i, "robot-1", version=1) for i in range(20)]
    intervened = sum(int(e.steps[INTERVENTION].sum()) for e in online)
    assert intervened > 100, "the operator should have corrected the weak policy"

    # The episodes reach the replay before training starts (an ingest-only learner, then a restart with the
    # trainer on the same run_dir), so the run is reproducible; in a live fleet they arrive while it trains.
    replay = ReplayConfig(offline_stores=[str(tmp_path / "demos")])
    ingest_only = start_learner(
        trainer=TrainerConfig(base_checkpoint=str(base_dir), enabled=False), replay=replay
    )
    stub = ingest_only.fleet()
    for episode in online:
        assert upload(stub, chunks_of(episode)).committed
    ingest_only.close()
    steps = 500
    learner = start_learner(
        trainer=TrainerConfig(
            base_checkpoint=str(base_dir),
            batch_size=64,
            publish_every_steps=100,
            log_every_steps=100,
            max_steps=steps,
        ),
        replay=replay,
        algorithm=HGDaggerConfig(optimizer=OptimizerConfig(lr=1e-3, warmup_steps=10)),
    )
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 300
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer.failure is None and trainer.step == steps
    assert trainer.last_metrics.get("train/fraction_online", 0.0) > 0.1  # the corrections were trained on

    latest = learner.service.checkpoints.latest()
    assert latest is not None and latest.version == 1 + steps // 100
    after = success_rate(DiffusionPolicy.from_bytes(learner.service.checkpoints.read_blob(latest.version)))
    assert after >= before + 0.2, f"success {before:.0%} -> {after:.0%}"
