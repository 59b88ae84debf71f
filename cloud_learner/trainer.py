"""The asynchronous trainer: samples the replay, updates the policy, publishes a checkpoint every K steps.

It runs in its own thread and never waits for robots: new episodes only set a flag that the next step
picks up (`Replay.refresh()`), and ingest never waits for the trainer. Its only shared state with
the gRPC side is the checkpoint store (written here, read by the publisher) and the replay store (written
by the ingest writer, read here), both safe for that.

Start and resume:

- First run: the service publishes the base checkpoint (`trainer.base_checkpoint`, e.g. from
  `sop train bc`) as v1 (parent 0) before it accepts robots, so every robot gets a policy at once.
- Restart: the newest intact published checkpoint and its optimiser state are loaded and training continues
  at its step count, with every committed episode in the replay. Steps after the last publication are
  lost (at most `publish_every_steps`), never data.

Logged every `trainer.log_every_steps` to TensorBoard (`run_dir/tensorboard`), the terminal and
`run_dir/train.jsonl`: loss (all, online, offline), each task's online share and losses, staleness (how
many versions the policy that produced an online sample lags the newest one: mean and max), samples/s and
the replay's size (episodes in the store, frames held for sampling, online episodes evicted by the frame
bound). Each publication adds a `train.jsonl` line with `published_version` (the fleet report reads `step`,
`loss`, `time` and `published_version`).

Where the update runs (`learner.backend`) is the one thing that differs between backends, behind
`UpdateStep`: `LocalUpdateStep` runs the algorithm in this process; with `backend: ray` a
`cloud_learner.ray_backend.train_group.RayTrainGroup` splits each batch across `trainer.num_workers`
data-parallel workers. Sampling, mixing, logging and publication stay here, the same for both.

One episode never stops the trainer: the replay checks every episode against the features of the policy
being trained (read from its checkpoint manifest) and moves one that does not fit, or does not read, to
`replay/quarantine/` (see `cloud_learner/replay.py`). Each time that happens a `train.jsonl` line says so
(`quarantined_episodes`: the total so far in this process, `newly_quarantined`: ids and reasons), a warning
is logged, and the count is logged as `replay/quarantined_episodes` with the other scalars.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from cloud_learner.algorithms import Algorithm, UpdateResult
from cloud_learner.checkpoint_store import CheckpointRecord, CheckpointStore
from cloud_learner.config import LearnerBackend, LearnerConfig
from cloud_learner.publisher import Publisher
from cloud_learner.replay import Replay
from sop.checkpoint import checkpoint_from_bytes
from sop.data.episode_store import EpisodeStore
from sop.episode import POLICY_VERSION, Episode, Source
from sop.policies import policy_from_checkpoint
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.policy_features import PolicyFeatures
from sop.safe_logging import RateLimitedLog, client_str

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)
throttled_log = RateLimitedLog(logger, interval_s=10.0)

# At most this many quarantined episodes are named (with their reasons) in one train.jsonl line.
MAX_QUARANTINED_PER_LOG_LINE = 20


class TrainerError(ValueError):
    """The trainer cannot start: no policy to train, or a checkpoint it cannot use."""


def staleness(batch: Mapping[str, Any], current_version: int) -> tuple[float, float]:
    """Mean and max lag (in versions) of the online samples' policy behind `current_version`."""
    versions = np.asarray(batch.get(POLICY_VERSION, []))
    sources = np.asarray(batch.get("source", []))
    if versions.size == 0 or sources.size == 0:
        return 0.0, 0.0
    if versions.ndim > 1:  # per-frame versions of each window: the anchor frame's
        versions = versions[:, 0]
    online = versions[sources == Source.ONLINE.value]
    if online.size == 0:
        return 0.0, 0.0
    lag = np.maximum(current_version - online, 0)
    return float(lag.mean()), float(lag.max())


class UpdateStep(Protocol):
    """One optimisation step on a sampled batch, and the state a publication stores: what differs between the
    local backend and the Ray backend's data-parallel group."""

    def update(self, batch: dict[str, Any]) -> UpdateResult: ...

    def publishable_blob(self, version: int, parent_version: int) -> bytes:
        """The policy robots get (checkpoint bytes, sop/checkpoint.py format)."""
        ...

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What a restart resumes from (optimiser, EMA, step), stored beside the published checkpoint."""
        ...

    def close(self) -> None: ...


class LocalUpdateStep:
    """The algorithm's update in this process (`backend: local`)."""

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm

    def update(self, batch: dict[str, Any]) -> UpdateResult:
        return self.algorithm.update(batch)

    def publishable_blob(self, version: int, parent_version: int) -> bytes:
        return self.algorithm.publishable_policy().to_bytes(version=version, parent_version=parent_version)

    def training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.algorithm.training_state()

    def close(self) -> None:
        pass


class Trainer:
    """Owns the policy being trained, the algorithm, the replay and the publication schedule."""

    def __init__(
        self, config: LearnerConfig, store: EpisodeStore, checkpoints: CheckpointStore, publisher: Publisher
    ) -> None:
        self.config = config
        self.store = store
        self.checkpoints = checkpoints
        self.publisher = publisher
        self.step = 0
        self.policy: DiffusionPolicy | None = None
        self.algorithm: Algorithm | None = None
        self.replay: Replay | None = None
        self.features: PolicyFeatures | None = None
        self.update_step: UpdateStep | None = None
        self.trained_from = 0  # the version the weights being trained descend from (set by prepare)
        self._quarantined_reported = 0  # of replay.num_quarantined, already written to train.jsonl
        self.last_metrics: dict[str, float] = {}
        self.samples_trained = 0
        self._new_data = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: SummaryWriter | None = None
        self._failure: BaseException | None = None

    # ---- setup -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the policy to train: the newest checkpoint training produced (the service published the base
        as v1 on a first run); a roll-back an admin republished is what robots run, not where training
        resumes."""
        latest = self.checkpoints.latest_trained() or self.publisher.latest
        if latest is None:
            raise TrainerError(
                "trainer.base_checkpoint is not set and run_dir holds no checkpoint: give a base policy "
                "(e.g. from `sop train bc`), or set trainer.enabled=false to only ingest"
            )
        blob = self.publisher.prepared(latest.version).blob
        # With the Ray backend the workers train; this copy only describes the policy (features, horizons).
        on_ray = self.config.backend is LearnerBackend.RAY
        device = torch.device("cpu" if on_ray else self.config.trainer.device)
        checkpoint = checkpoint_from_bytes(blob, latest.sha256, source=f"v{latest.version}")
        policy = policy_from_checkpoint(checkpoint, device=device)
        if not isinstance(policy, DiffusionPolicy):
            raise TrainerError(
                f"checkpoint v{latest.version} holds a {policy.policy_type!r} policy; the learner trains SOP's "
                "diffusion policy (policy_type 'diffusion')"
            )
        self.policy = policy
        self.features = PolicyFeatures.from_policy_config(checkpoint.manifest.policy_config)
        self.algorithm = self.config.algorithm.build(self.policy)
        self.algorithm.attach_replay(self.store)
        state = self.checkpoints.read_trainer_state(latest.version)
        if state is not None:
            self.algorithm.load_training_state(*state)
        self.step = latest.train_step
        self.trained_from = latest.version
        if on_ray:
            from cloud_learner.ray_backend.train_group import RayTrainGroup  # ray loads only here

            self.update_step = RayTrainGroup.start(self.config, blob, latest.sha256, state, self.step)
        else:
            self.update_step = LocalUpdateStep(self.algorithm)
        self.replay = Replay(
            self.store,
            self.config.replay,
            self.algorithm.frame_selection(),
            observation_horizon=self.policy.config.observation_horizon,
            action_horizon=self.policy.config.prediction_horizon,
            cameras=self.policy.config.cameras,
            features=self.features,
        )
        self._report_quarantined()
        logger.info(
            "trainer starts from v%d at step %d (%s)", latest.version, self.step, self.config.algorithm.type
        )

    def notify_new_episode(self, episode: Episode) -> None:
        """Called by the ingest writer after a commit; cheap, never blocks."""
        self._new_data.set()

    # ---- running -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.policy is None:
            raise TrainerError("prepare() found no policy to train")
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.update_step is not None and not self.running:
            self.update_step.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def _run(self) -> None:
        torch.set_num_threads(self.config.trainer.num_threads)
        try:
            self.run(stop=self._stop)
        except Exception as exc:  # surfaced through .failure and the log; the service keeps ingesting
            self._failure = exc
            logger.exception("trainer stopped on an error at step %d", self.step)

    def run(self, stop: threading.Event | None = None, max_steps: int | None = None) -> int:
        """Train until `stop` is set or `max_steps` (or trainer.max_steps) steps are done; returns steps run."""
        assert self.update_step is not None and self.replay is not None
        trainer_config = self.config.trainer
        limit = max_steps if max_steps is not None else trainer_config.max_steps
        rng = np.random.default_rng(trainer_config.seed + self.step)
        torch.manual_seed(trainer_config.seed + self.step)
        ran = 0
        window_start, window_samples = time.perf_counter(), 0
        while not (stop is not None and stop.is_set()):
            if limit is not None and ran >= limit:
                break
            if self._new_data.is_set():
                self._new_data.clear()
                self.replay.refresh()
            batch = self.replay.sample(trainer_config.batch_size, rng)
            self._report_quarantined()  # by the refresh, or by the sample (an image that no longer reads)
            if batch is None:
                (stop or threading.Event()).wait(trainer_config.idle_sleep_s)
                continue
            result = self.update_step.update(batch)
            self.replay.record_losses(batch, result.sample_losses.numpy())
            self.step += 1
            ran += 1
            batch_size = int(result.sample_losses.shape[0])
            self.samples_trained += batch_size
            window_samples += batch_size
            if self.step % trainer_config.publish_every_steps == 0:
                self.publish(result.metrics)
            if self.step % trainer_config.log_every_steps == 0:
                elapsed = time.perf_counter() - window_start
                self._log(batch, result.metrics, window_samples / max(elapsed, 1e-9))
                window_start, window_samples = time.perf_counter(), 0
        return ran

    # ---- publication and logs ----------------------------------------------------------------------------

    @property
    def quarantined_episodes(self) -> int:
        """Episodes moved to replay/quarantine/ by this learner process (unreadable, or unusable for the
        policy); the store object is the one ingest commits into, so this counts both kinds."""
        return self.store.num_quarantined

    def _report_quarantined(self) -> None:
        """One train.jsonl line and a warning when the replay quarantined episodes since the last report."""
        assert self.replay is not None
        total = self.replay.num_quarantined
        new = total - self._quarantined_reported
        if new <= 0:
            return
        self._quarantined_reported = total
        named = self.replay.windows.recently_quarantined[-min(new, MAX_QUARANTINED_PER_LOG_LINE) :]
        self._append_train_log(
            {
                "step": self.step,
                "quarantined_episodes": self.quarantined_episodes,
                "newly_quarantined": [
                    {"episode_id": episode_id, "reason": reason[:400]} for episode_id, reason in named
                ],
            }
        )
        throttled_log.warning(
            "quarantined",
            "trainer: %d episode(s) the policy cannot train on moved to replay/quarantine/ (e.g. %s: %s); "
            "training goes on without them",
            new,
            named[-1][0] if named else "?",
            client_str(named[-1][1] if named else "", 300),
        )

    def publish(self, metrics: Mapping[str, float] | None = None) -> CheckpointRecord:
        """Store the current weights as the next version and announce it to every robot (held back while an
        admin has pinned the fleet). Its parent is the version these weights were trained from: this
        trainer's previous publication, or the checkpoint it started from, never a republished roll-back."""
        update_step = self.update_step
        assert update_step is not None
        parent = self.trained_from
        record = self.publisher.publish_next(
            lambda version: update_step.publishable_blob(version, parent),
            train_step=self.step,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            trainer_state=update_step.training_state(),
        )
        self.trained_from = record.version
        self._append_train_log(
            {"step": self.step, "loss": (metrics or {}).get("loss"), "published_version": record.version}
        )
        return record

    def _append_train_log(self, row: dict[str, Any]) -> None:
        row = {"time": time.time(), **row}
        with self.config.train_log_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def _summary_writer(self) -> SummaryWriter:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.config.tensorboard_dir))
        return self._writer

    def _log(self, batch: Mapping[str, Any], metrics: Mapping[str, float], samples_per_s: float) -> None:
        assert self.replay is not None
        latest = self.publisher.latest
        current = 0 if latest is None else latest.version
        lag_mean, lag_max = staleness(batch, current)
        mix = self.replay.mix_states()
        scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
        scalars.update(
            {
                "staleness/mean_versions": lag_mean,
                "staleness/max_versions": lag_max,
                "throughput/samples_per_s": samples_per_s,
                "replay/episodes": float(len(self.store)),
                "replay/quarantined_episodes": float(self.quarantined_episodes),
                "replay/held_frames": float(self.replay.windows.held_frames()),
                "replay/evicted_episodes": float(self.replay.windows.num_evicted),
                "policy/version": float(current),
            }
        )
        for state in mix:
            scalars[f"mix/{state.task}/online_share"] = state.online_share
            if state.loss_online is not None:
                scalars[f"mix/{state.task}/loss_online"] = state.loss_online
            if state.loss_offline is not None:
                scalars[f"mix/{state.task}/loss_offline"] = state.loss_offline
        self.last_metrics = scalars
        self._append_train_log({"step": self.step, "loss": metrics.get("loss"), **scalars})
        writer = self._summary_writer()
        for name, value in scalars.items():
            writer.add_scalar(name, value, self.step)
        writer.flush()
        shares = " ".join(f"{s.task}={s.online_share:.2f}" for s in mix)
        logger.info(
            "step %d v%d loss %.4f | online share %s | staleness mean %.1f max %.0f | %.0f samples/s | %d episodes",
            self.step,
            current,
            metrics.get("loss", float("nan")),
            shares or "-",
            lag_mean,
            lag_max,
            samples_per_s,
            len(self.store),
        )
