"""Trainer samples/s on the Ray backend vs the number of data-parallel workers, and vs the local backend.

    python -m benchmarks.ray_trainer [--workers 1,2] [--steps 30] [--batch_size 64] [--num_cpus 2]

The same sequence of replay batches is trained by the local backend's update (`LocalUpdateStep`, in this
process) and by `RayTrainGroup`s of each size on a local Ray cluster started here (in a short RAY_TMPDIR,
stopped at the end). Reported: samples/s after a warm-up, scaling efficiency (samples/s per worker relative to
one worker) and the Ray-vs-local overhead ratio (local samples/s / Ray-1-worker samples/s). On a machine with
fewer free cores than workers the workers share cores, and efficiency measures that, not Ray.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cloud_learner.algorithms import FrameSelection, HGDaggerConfig
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
from sop.episode import ACTION, STATE, Source
from sop.hashing import sha256_hex
from sop.normalization import NormalizationStats
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
from sop.policies.modeling_diffusion import DiffusionPolicy

WARMUP_STEPS = 3


def samples_per_s(step: UpdateStep, replay: Replay, steps: int, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    batches = [replay.sample(batch_size, rng) for _ in range(steps + WARMUP_STEPS)]
    for batch in batches[:WARMUP_STEPS]:
        assert batch is not None
        step.update(batch)
    started = time.perf_counter()
    for batch in batches[WARMUP_STEPS:]:
        assert batch is not None
        step.update(batch)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_cpus", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="sop-rb-", dir="/tmp"))
    try:
        episodes = [make_episode(200, seed=i, source=Source.OFFLINE, cameras=()) for i in range(4)]
        store = EpisodeStore(root / "replay", durable=False)
        for episode in episodes:
            store.append(episode)
        policy_config = DiffusionPolicyConfig(
            state_dim=39,
            action_dim=4,
            instruction_encoder=InstructionEncoderKind.TASK,
            tasks=("reach-v3",),
            down_dims=(32, 64, 128),  # the demo's policy (configs/demo.yaml), state only
        )
        stats = NormalizationStats.from_arrays({k: [e.steps[k] for e in episodes] for k in (STATE, ACTION)})
        torch.manual_seed(0)
        base = DiffusionPolicy(policy_config, stats, version=0).save(root / "base")
        replay = Replay(store, ReplayConfig(), FrameSelection(), 2, policy_config.prediction_horizon)

        local = samples_per_s(
            LocalUpdateStep(HGDaggerConfig().build(DiffusionPolicy.load(base))),
            replay,
            args.steps,
            args.batch_size,
        )
        print(
            f"local backend: {local:.0f} samples/s (batch {args.batch_size}, {args.steps} steps)", flush=True
        )

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ["RAY_TMPDIR"] = str(root / "ray")
        import ray

        from cloud_learner.ray_backend.train_group import RayTrainGroup

        ray.init(num_cpus=args.num_cpus, include_dashboard=False, _temp_dir=str(root / "ray"))
        blob = DiffusionPolicy.load(base).to_bytes(version=1, parent_version=0)
        rows = []
        try:
            for workers in [int(w) for w in args.workers.split(",")]:
                config = LearnerConfig(
                    run_dir=str(root / "run"),
                    auth=AuthConfig(allow_unauthenticated=True),
                    backend=LearnerBackend.RAY,
                    ray=RayConfig(cpus_per_train_worker=args.num_cpus / workers),
                    trainer=TrainerConfig(batch_size=args.batch_size, num_workers=workers),
                )
                group = RayTrainGroup.start(config, blob, sha256_hex(blob), None, 0)
                try:
                    rate = samples_per_s(group, replay, args.steps, args.batch_size)
                finally:
                    group.close()
                rows.append((workers, rate))
                print(f"ray backend, {workers} worker(s): {rate:.0f} samples/s", flush=True)
        finally:
            ray.shutdown()
        one = rows[0][1] if rows and rows[0][0] == 1 else None
        print("\n| trainer | workers | samples/s | efficiency | local / this |")
        print("|---|---|---|---|---|")
        print(f"| local | 1 | {local:.0f} | | 1.00 |")
        for workers, rate in rows:
            efficiency = f"{rate / (one * workers):.2f}" if one else ""
            print(f"| ray | {workers} | {rate:.0f} | {efficiency} | {local / rate:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
