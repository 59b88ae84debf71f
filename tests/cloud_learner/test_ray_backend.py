"""The learner's Ray backend (`backend: ray`): the data-parallel trainer group and a learner serving robots.

One Ray cluster for the whole module (starting one costs ~3 s and ~800 MiB), in a short temporary
directory of its own (RAY_TMPDIR: Ray's socket paths must stay under 107 characters).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from learner_fixtures import RunningLearner, auth, chunks_of, upload, write_base_checkpoint

from cloud_learner.algorithms import FrameSelection, HGDaggerConfig, RecapConfig
from cloud_learner.config import (
    AuthConfig,
    LearnerBackend,
    LearnerConfig,
    RayConfig,
    ReplayConfig,
    TrainerConfig,
)
from cloud_learner.replay import Replay
from cloud_learner.trainer import LocalUpdateStep, UpdateStep
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import Source
from sop.hashing import sha256_hex
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.v1 import fleet_pb2

ray = pytest.importorskip("ray")
from cloud_learner.ray_backend.train_group import (  # noqa: E402  (after the skip when ray is missing)
    RayTrainGroup,
    TrainingWorkerLost,
    combine_metrics,
    split_batch,
)

StartLearner = Callable[..., RunningLearner]
State = dict[str, torch.Tensor]
OPEN = AuthConfig(allow_unauthenticated=True)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU Ray cluster for this module's tests, stopped (and its directory removed) at the end."""
    temp = tempfile.mkdtemp(prefix="sop-ray-", dir="/tmp")
    saved = {name: os.environ.get(name) for name in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled")
    ray.init(num_cpus=2, include_dashboard=False, namespace="sop-test", _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp, ignore_errors=True)


def intervention_pattern(num_steps: int, start: int, stop: int) -> np.ndarray:
    flags = np.zeros(num_steps, bool)
    flags[start:stop] = True
    return flags


def ray_config(
    run_dir: Path, base: Path, num_workers: int, batch_size: int = 16, **trainer: Any
) -> LearnerConfig:
    return LearnerConfig(
        run_dir=str(run_dir),
        auth=OPEN,
        backend=LearnerBackend.RAY,
        ray=RayConfig(cpus_per_train_worker=0.5),
        trainer=TrainerConfig(
            base_checkpoint=str(base), batch_size=batch_size, num_workers=num_workers, **trainer
        ),
    )


def test_a_batch_splits_into_ordered_slices_and_their_metrics_combine_to_the_whole_batchs() -> None:
    batch = {
        "task": ["a"] * 5,
        "observation.state": np.arange(5 * 2).reshape(5, 2),
        "source": ["online", "offline", "online", "online", "offline"],
        "weight": np.array([1.0, 2.0, 0.0, 1.0, 1.0]),
        "note": "not per sample",
    }
    parts = split_batch(batch, 2)
    assert [len(p["task"]) for p in parts] == [2, 3]
    np.testing.assert_array_equal(
        np.concatenate([p["observation.state"] for p in parts]), batch["observation.state"]
    )
    assert parts[1]["source"] == ["online", "online", "offline"] and parts[1]["note"] == "not per sample"
    # Slice 0: weights 1, 2 (share 3/5); slice 1: 0, 1, 1 (share 2/5).
    metrics = [
        {
            "loss": 1.0,
            "lr": 0.1,
            "fraction_online": 0.5,
            "loss_online": 2.0,
            "fraction_offline": 0.5,
            "loss_offline": 4.0,
        },
        {
            "loss": 3.0,
            "lr": 0.1,
            "fraction_online": 2 / 3,
            "loss_online": 5.0,
            "fraction_offline": 1 / 3,
            "loss_offline": 1.0,
        },
    ]
    combined = combine_metrics(metrics, [0.6, 0.4], [2, 3])
    assert combined["loss"] == pytest.approx(0.6 * 1.0 + 0.4 * 3.0)
    assert combined["fraction_online"] == pytest.approx(3 / 5)
    assert combined["loss_online"] == pytest.approx((2.0 + 2 * 5.0) / 3)
    assert combined["loss_offline"] == pytest.approx((4.0 + 1.0) / 2)
    assert combined["lr"] == 0.1


def test_configs_the_backends_cannot_run_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend: ray"):
        LearnerConfig(run_dir=str(tmp_path), auth=OPEN, trainer=TrainerConfig(num_workers=2))
    with pytest.raises(ValueError, match="gpus_per_train_worker"):
        LearnerConfig(
            run_dir=str(tmp_path), auth=OPEN, backend=LearnerBackend.RAY, trainer=TrainerConfig(device="cuda")
        )
    with pytest.raises(ValueError, match="'recap'"):
        LearnerConfig(run_dir=str(tmp_path), auth=OPEN, backend=LearnerBackend.RAY, algorithm=RecapConfig())


@pytest.fixture(scope="module")
def training_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Replay]:
    root = tmp_path_factory.mktemp("ray-train")
    episodes = [
        make_episode(40, seed=70, source=Source.OFFLINE, cameras=()),
        make_episode(40, seed=71, source=Source.OFFLINE, cameras=()),
        make_episode(40, seed=72, cameras=(), intervention=intervention_pattern(40, 5, 30), policy_version=1),
    ]
    base = write_base_checkpoint(root / "base", episodes)
    store = EpisodeStore(root / "replay", durable=False)
    for episode in episodes:
        store.append(episode)
    replay = Replay(store, ReplayConfig(), FrameSelection(), 2, 16)
    return base, replay


def train(step: UpdateStep, replay: Replay, steps: int, batch_size: int) -> list[float]:
    """`steps` updates on the same sequence of batches (seeded), whatever does the update."""
    rng = np.random.default_rng(5)
    losses = []
    for _ in range(steps):
        batch = replay.sample(batch_size, rng)
        assert batch is not None
        result = step.update(batch)
        assert result.sample_losses.shape == (batch_size,)
        losses.append(result.metrics["loss"])
    return losses


def train_locally(
    base: Path, replay: Replay, steps: int, batch_size: int, seed: int
) -> tuple[list[float], State]:
    torch.manual_seed(seed)
    step = LocalUpdateStep(HGDaggerConfig().build(DiffusionPolicy.load(base)))
    return train(step, replay, steps, batch_size), step.training_state()[0]


def test_two_data_parallel_workers_train_like_one_process_on_the_whole_batch(
    ray_cluster: None, training_data: tuple[Path, Replay], tmp_path: Path
) -> None:
    """The same batches in the same order: 2 Ray workers (DDP) against the local backend's update.

    The diffusion noise each sample draws differs between any two runs, so "the same" is measured against
    that noise: two local runs with different seeds set how far apart two equivalent runs are.
    """
    base, replay = training_data
    steps, batch_size = 12, 32
    local, local_state = train_locally(base, replay, steps, batch_size, seed=0)
    other, other_state = train_locally(base, replay, steps, batch_size, seed=1)

    blob = DiffusionPolicy.load(base).to_bytes(version=1, parent_version=0)  # as the learner publishes it
    group = RayTrainGroup.start(
        ray_config(tmp_path / "run", base, 2, batch_size), blob, sha256_hex(blob), None, 0
    )
    try:
        parallel = train(group, replay, steps, batch_size)
        states = group.worker_states()
        ray.kill(group.workers[1])  # a worker lost (its node died): the step fails with what to do
        with pytest.raises(TrainingWorkerLost, match="restart the learner"):
            train(group, replay, 1, batch_size)
    finally:
        group.close()
    # Both ranks hold the same weights, EMA and optimiser state after the all-reduced steps.
    assert [meta["step"] for _, meta in states] == [steps, steps]
    for name, value in states[1][0].items():
        if not name.startswith("rng."):
            torch.testing.assert_close(value, states[0][0][name], msg=name)

    noise = abs(np.mean(other) - np.mean(local))
    assert abs(np.mean(parallel) - np.mean(local)) <= max(3 * noise, 0.05 * np.mean(local))

    def distance(a: State, b: State) -> float:
        return sum(float((a[k] - b[k]).norm()) for k in a if k.startswith("model."))

    initial = {f"model.{k}": v for k, v in DiffusionPolicy.load(base).network.state_dict().items()}
    moved = distance(local_state, initial)
    assert moved > 0
    assert distance(states[0][0], local_state) <= 1.5 * distance(other_state, local_state)
    assert distance(states[0][0], initial) == pytest.approx(moved, rel=0.25)


def test_a_learner_on_ray_trains_on_a_robot_upload_and_robots_load_what_it_publishes(
    ray_cluster: None, start_learner: StartLearner, tmp_path: Path
) -> None:
    offline = [make_episode(40, seed=80 + i, source=Source.OFFLINE, cameras=()) for i in range(2)]
    base = write_base_checkpoint(tmp_path / "base", offline)
    demos = EpisodeStore(tmp_path / "demos", durable=False)
    for episode in offline:
        demos.append(episode)
    learner = start_learner(
        backend=LearnerBackend.RAY,
        ray=RayConfig(cpus_per_train_worker=0.5),
        trainer=TrainerConfig(
            base_checkpoint=str(base),
            batch_size=8,
            num_workers=2,
            publish_every_steps=2,
            log_every_steps=2,
            max_steps=6,
        ),
        replay=ReplayConfig(offline_stores=[str(tmp_path / "demos")]),
    )
    stub = learner.fleet()
    watch = stub.WatchPolicy(fleet_pb2.WatchPolicyRequest(robot_id="robot-1"), metadata=auth(), timeout=60)
    assert next(watch).version == 1
    online = make_episode(
        40, seed=90, cameras=(), intervention=intervention_pattern(40, 5, 30), policy_version=1
    )
    receipt = upload(stub, chunks_of(online))
    assert receipt.committed
    announced = [next(watch).version]
    while announced[-1] < 4:
        announced.append(next(watch).version)
    watch.cancel()
    trainer = learner.service.trainer
    assert trainer is not None
    deadline = time.monotonic() + 60
    while trainer.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trainer.failure is None and trainer.step == 6
    assert online.episode_id in {info.episode_id for info in learner.service.store.list()}
    record = learner.service.checkpoints.record(4)
    assert record is not None and record.parent_version == 3 and record.train_step == 6

    # A robot holding the base policy takes the published weights in place, unchanged, and acts with them.
    blob = learner.service.publisher.prepared(4).blob
    robot_policy = DiffusionPolicy.load(base)
    assert robot_policy.load_weights_in_place(blob, record.sha256)
    assert robot_policy.version == 4
    action = robot_policy.act({"state": online.steps["observation.state"][0], "task": online.task})
    assert action.shape == (4,) and np.isfinite(action).all()
    learner.close()
    assert learner.service.ray is None and ray.is_initialized()  # it reused the test's cluster, left it up


def test_fleet_processes_on_ray_run_sop_commands_on_the_cluster_and_report_them(
    ray_cluster: None, tmp_path: Path
) -> None:
    from fleet_harness.ray_fleet import RayFleetConfig, RayFleetProcesses

    processes = RayFleetProcesses(tmp_path / "logs", RayFleetConfig(cpus_per_robot=0.1, cpus_learner=0.1))
    assert not processes.owned  # it joined the test's cluster, and leaves it up
    assert processes.learner_ray_flags() == ["--backend", "ray", "--ray.address", processes.address]
    child = processes.start("robot-0", ["--help"], {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while child.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes.dead() == [child] and child.process.returncode == 0
    assert "usage: sop" in processes.tail(child, lines=100)
    assert (tmp_path / "logs" / "robot-0.log").is_file()
    assert processes.stop_all() == {"robot-0": 0}
    assert ray.is_initialized()
