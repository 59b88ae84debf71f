"""The learner's trainer without a fleet: fine-tune the base policy on stored demonstrations only.

This is the offline arm of `sop bench fleet`'s online-vs-offline comparison (SOP: hours of online data
beat many more hours of extra offline data). It runs the very trainer `sop learner serve` runs — same
algorithm, window sampling, SOP mixing, optimiser and publication schedule — in this process, with no gRPC server
and no robots, so every sample is an offline demonstration from `replay.offline_stores`. Checkpoints land
in `run_dir/checkpoints` exactly as the service would publish them, and a second call with the same
`run_dir` continues from the newest one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cloud_learner.checkpoint_store import CheckpointRecord, CheckpointStore
from cloud_learner.config import LearnerConfig
from cloud_learner.publisher import Publisher
from cloud_learner.replay import import_offline_stores, open_replay_store
from cloud_learner.trainer import Trainer, TrainerError

logger = logging.getLogger(__name__)


def train_offline(config: LearnerConfig, steps: int) -> CheckpointRecord:
    """Train until the trainer has done `steps` steps in total (publishing every
    `trainer.publish_every_steps` and once at the end); returns the last published checkpoint."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not config.replay.offline_stores:
        raise ValueError("replay.offline_stores: name at least one demonstration store to train on")
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    store = open_replay_store(config)
    imported = import_offline_stores(store, config.replay.offline_stores)
    logger.info("offline training on %d demonstrations (%d new)", len(store), imported)
    checkpoints = CheckpointStore(config.checkpoint_dir, keep_last=config.trainer.keep_last)
    checkpoints.remove_leftover_temporaries()
    publisher = Publisher(checkpoints)
    if config.trainer.base_checkpoint is not None:
        publisher.publish_base(config.trainer.base_checkpoint)
    trainer = Trainer(config, store, checkpoints, publisher)
    trainer.prepare()
    torch.set_num_threads(config.trainer.num_threads)
    try:
        trainer.run(max_steps=max(0, steps - trainer.step))
        latest = publisher.latest
        if latest is None or latest.train_step != trainer.step:
            trainer.publish(trainer.last_metrics)
    finally:
        trainer.stop()
        publisher.close()
    record = checkpoints.latest()
    if record is None:  # prepare() guarantees a published version; this is only for the type checker
        raise TrainerError("offline training published nothing")
    return record
