"""The trainer's update step as a data-parallel group of Ray actors (`backend: ray`, `trainer.num_workers`).

Why actors running torch.distributed, and not Ray Train's `TorchTrainer`: the online trainer never ends and
exchanges something with the learner at every step. The replay (one per learner: SOP's mixing reads every
sample's loss, new episodes arrive between any two steps) and the publisher (announces to the robots
connected to this process) live in the learner, and `TorchTrainer.fit()` is a batch job whose workers
talk back only through `report()`, collected when it ends. So the learner's `Trainer` keeps its loop
(sample, update, record losses, publish) and only its `UpdateStep` is this group: each step it splits
the sampled batch into `num_workers` contiguous slices, every worker runs the algorithm's own update on
its slice with the policy wrapped in `DistributedDataParallel` (gloo on CPU, NCCL on GPU), and returns its
samples' losses. Gradients are all-reduced before the optimiser step, so every worker holds the same weights,
EMA and optimiser state, and rank 0's are what get published, through the same publisher as the local
backend.

Same update as one worker on the whole batch: the algorithms' loss is a *weighted* mean over the batch
(sum(w l) / sum(w)), so a plain gradient average over workers would be wrong whenever the slices' weight
sums differ. The all-reduce hook scales each worker's gradient by its slice's share of the batch's weight
before summing, which gives exactly the gradient of the whole batch's weighted mean. What still differs from
one worker is only the diffusion noise drawn for each sample (each worker draws its own).

Failure: a worker that dies fails the step with `TrainingWorkerLost`; the trainer stops with that error
(`Trainer.failure`, the console's learner view) and the learner keeps ingesting; a learner restart resumes
from the newest published checkpoint as always (at most `publish_every_steps` steps lost, never data).
Rebuilding the group in place from that checkpoint is not done yet.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cloud_learner.algorithms import Algorithm, AlgorithmConfig, UpdateResult
from cloud_learner.config import LearnerConfig
from sop.checkpoint import checkpoint_from_bytes
from sop.policies import policy_from_checkpoint
from sop.policies.base import Policy

logger = logging.getLogger(__name__)

# How long a collective waits for the other workers before it fails the step (a dead or wedged worker).
COLLECTIVE_TIMEOUT = timedelta(minutes=5)
# How long the first worker may take to be placed and start (importing torch on a busy node takes a while).
WORKER_START_TIMEOUT_S = 300.0
# Seeds of the workers' noise draws are this far apart, so no two workers draw the same noise.
RANK_SEED_STRIDE = 1_000_003

TrainingState = tuple[dict[str, torch.Tensor], dict[str, Any]]


class TrainingWorkerLost(RuntimeError):
    """A worker of the group died mid-step; the group cannot go on without it."""


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """`parts` contiguous slices of a sampled batch (sizes differ by at most one), in order: concatenated
    they are the batch, so per-sample results line up with it again."""
    size = len(batch["task"])
    bounds = np.linspace(0, size, parts + 1).astype(int)
    return [
        {key: value[start:stop] if _is_per_sample(value, size) else value for key, value in batch.items()}
        for start, stop in itertools.pairwise(bounds)
    ]


def _is_per_sample(value: Any, size: int) -> bool:
    return isinstance(value, np.ndarray | torch.Tensor | list | tuple) and len(value) == size


def sample_weights(batch: Mapping[str, Any]) -> np.ndarray:
    """The per-sample weights the algorithms' weighted loss uses (absent: all 1, as there)."""
    return np.asarray(batch.get("weight", np.ones(len(batch["task"]))), np.float64)


def combine_metrics(
    metrics: Sequence[Mapping[str, float]], weight_shares: Sequence[float], sizes: Sequence[int]
) -> dict[str, float]:
    """The whole batch's metrics from the workers' (one dict per slice).

    `loss` is the weighted mean over the batch; `fraction_<source>` the share of the batch's samples from
    that source and `loss_<source>` the mean loss of those samples (`weighted_bc_update`'s per-source
    metrics); everything else (lr, grad_norm, EMA decay) is the same on every worker after the all-reduce,
    and rank 0's is taken.
    """
    combined = dict(metrics[0])
    total = float(sum(sizes))
    combined["loss"] = float(sum(m["loss"] * share for m, share in zip(metrics, weight_shares, strict=True)))
    for key in [k for k in combined if k.startswith("fraction_")]:
        counts = [m.get(key, 0.0) * n for m, n in zip(metrics, sizes, strict=True)]
        combined[key] = float(sum(counts) / total)
        loss_key = "loss_" + key.removeprefix("fraction_")
        with_loss = [
            (m[loss_key], c) for m, c in zip(metrics, counts, strict=True) if loss_key in m and c > 0
        ]
        if with_loss:
            combined[loss_key] = float(sum(v * c for v, c in with_loss) / sum(c for _, c in with_loss))
        else:
            combined.pop(loss_key, None)
    return combined


@dataclass
class _GradShare:
    """This worker's slice's share of the batch's weight, set before each step (read by the all-reduce hook)."""

    value: float = 1.0


def _weighted_allreduce(share: _GradShare, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Sum of the workers' gradients, each scaled by its slice's weight share: the whole batch's gradient."""
    buffer = bucket.buffer()
    buffer.mul_(share.value)
    future = dist.all_reduce(buffer, async_op=True).get_future()  # type: ignore[union-attr]
    return future.then(lambda done: done.value()[0])


# DDP checks a hook's annotations as objects; this module's are strings (`from __future__ import annotations`).
_weighted_allreduce.__annotations__["bucket"] = dist.GradBucket
_weighted_allreduce.__annotations__["return"] = torch.futures.Future[torch.Tensor]


class _PolicyLoss(torch.nn.Module):
    """The policy's loss as a module's forward, so that DDP sees the forward and syncs its gradients."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.network = policy.network
        self.policy = policy

    def forward(self, batch: Mapping[str, Any], mask_padding: bool) -> torch.Tensor:
        loss: torch.Tensor = self.policy.compute_loss(batch, mask_padding=mask_padding)
        return loss


class DataParallelPolicy:
    """The policy an algorithm trains inside a worker: its loss goes through DDP; all else is the policy's."""

    def __init__(self, policy: Policy, ddp: DistributedDataParallel) -> None:
        self._policy = policy
        self._ddp = ddp

    def compute_loss(self, batch: Mapping[str, Any], mask_padding: bool = False) -> torch.Tensor:
        loss: torch.Tensor = self._ddp(batch, mask_padding)
        return loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


class TrainWorker:
    """One data-parallel rank (a Ray actor): the policy, its algorithm and optimiser, in step with the others."""

    def __init__(
        self, rank: int, world_size: int, algorithm: AlgorithmConfig, device: str, threads: int
    ) -> None:
        # Ray starts its workers at a low CPU priority; the trainer is the learner's bottleneck: back to the
        # default where allowed.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        torch.set_num_threads(threads)
        self.rank = rank
        self.world_size = world_size
        self.algorithm_config = algorithm
        self.device = device
        self.share = _GradShare()
        self.algorithm: Algorithm | None = None

    def rendezvous_address(self) -> str:
        """host:port for the process group's TCP store (asked of rank 0 only)."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return f"{ray.util.get_node_ip_address()}:{port}"

    def setup(
        self, rendezvous: str, blob: bytes, sha256: str, state: TrainingState | None, step: int, seed: int
    ) -> None:
        on_gpu = self.device.startswith("cuda")
        dist.init_process_group(
            "nccl" if on_gpu else "gloo",
            init_method=f"tcp://{rendezvous}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        policy = policy_from_checkpoint(checkpoint_from_bytes(blob, sha256), device=device)
        ddp = DistributedDataParallel(
            _PolicyLoss(policy), device_ids=[device.index] if on_gpu else None, broadcast_buffers=False
        )
        ddp.register_comm_hook(self.share, _weighted_allreduce)
        self.algorithm = self.algorithm_config.build(DataParallelPolicy(policy, ddp))  # type: ignore[arg-type]
        if state is not None:
            self.algorithm.load_training_state(*state)
        torch.manual_seed(seed + step + RANK_SEED_STRIDE * self.rank)

    def update(self, batch: dict[str, Any], weight_share: float) -> tuple[dict[str, float], np.ndarray]:
        assert self.algorithm is not None
        self.share.value = weight_share
        # Ray hands numpy arrays over read-only (zero copy); torch wants tensors it may write to.
        batch = {
            k: v.copy() if isinstance(v, np.ndarray) and not v.flags.writeable else v
            for k, v in batch.items()
        }
        result = self.algorithm.update(batch)
        return result.metrics, result.sample_losses.cpu().numpy()

    def publishable_blob(self, version: int, parent_version: int) -> bytes:
        assert self.algorithm is not None
        return self.algorithm.publishable_policy().to_bytes(version=version, parent_version=parent_version)

    def training_state(self) -> TrainingState:
        assert self.algorithm is not None
        return self.algorithm.training_state()


class RayTrainGroup:
    """The `UpdateStep` of `backend: ray`: `trainer.num_workers` `TrainWorker` actors, one DDP group."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    @classmethod
    def start(
        cls, config: LearnerConfig, blob: bytes, sha256: str, state: TrainingState | None, step: int
    ) -> RayTrainGroup:
        """Start the workers from the checkpoint being trained (and its optimiser state) on the cluster this
        process joined (`RayConnection`); returns once the process group is formed."""
        if not ray.is_initialized():
            raise RuntimeError(
                "backend: ray needs a Ray connection first (cloud_learner.ray_backend.cluster)"
            )
        trainer, resources = config.trainer, config.ray
        actor: Any = ray.remote(TrainWorker).options(  # untyped: Ray's stubs do not know the actor's methods
            num_cpus=resources.cpus_per_train_worker, num_gpus=resources.gpus_per_train_worker
        )
        workers: list[Any] = [
            actor.remote(rank, trainer.num_workers, config.algorithm, trainer.device, trainer.num_threads)
            for rank in range(trainer.num_workers)
        ]
        group = cls(workers)
        try:
            try:
                rendezvous = ray.get(workers[0].rendezvous_address.remote(), timeout=WORKER_START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"no training worker started within {WORKER_START_TIMEOUT_S:.0f} s: the Ray cluster "
                    f"({ray.available_resources()} free) may have no room for trainer.num_workers="
                    f"{trainer.num_workers} workers of ray.cpus_per_train_worker={resources.cpus_per_train_worker}"
                    f" CPUs and ray.gpus_per_train_worker={resources.gpus_per_train_worker} GPUs; lower them or "
                    "add nodes"
                ) from None
            blob_ref, state_ref = ray.put(blob), ray.put(state)
            ray.get(
                [w.setup.remote(rendezvous, blob_ref, sha256, state_ref, step, trainer.seed) for w in workers]
            )
        except BaseException:
            group.close()
            raise
        logger.info(
            "trainer: %d data-parallel workers on Ray (%s, rendezvous %s)",
            len(workers),
            "nccl" if trainer.device.startswith("cuda") else "gloo",
            rendezvous,
        )
        return group

    def update(self, batch: dict[str, Any]) -> UpdateResult:
        parts = split_batch(batch, len(self.workers))
        weight_sums = [float(sample_weights(part).sum()) for part in parts]
        total = sum(weight_sums)
        shares = [w / total if total > 0 else 1.0 / len(parts) for w in weight_sums]
        try:
            results = ray.get(
                [
                    worker.update.remote(part, share)
                    for worker, part, share in zip(self.workers, parts, shares, strict=True)
                ]
            )
        except ray.exceptions.RayActorError as exc:
            raise TrainingWorkerLost(
                f"a training worker died ({type(exc).__name__}: its process or node is gone); the trainer "
                "stops here and the learner keeps ingesting: restart the learner to resume from the newest "
                "published checkpoint"
            ) from exc
        sizes = [len(part["task"]) for part in parts]
        metrics = combine_metrics([m for m, _ in results], shares, sizes)
        sample_losses = torch.from_numpy(np.concatenate([losses for _, losses in results]))
        return UpdateResult(metrics=metrics, sample_losses=sample_losses)

    def publishable_blob(self, version: int, parent_version: int) -> bytes:
        blob: bytes = ray.get(self.workers[0].publishable_blob.remote(version, parent_version))
        return blob

    def training_state(self) -> TrainingState:
        state: TrainingState = ray.get(self.workers[0].training_state.remote())
        return state

    def worker_states(self) -> list[TrainingState]:
        """Every worker's training state (for checks that the ranks stay in step)."""
        return list(ray.get([worker.training_state.remote() for worker in self.workers]))

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
