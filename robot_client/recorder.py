"""The recorder: every control step goes into the local spool (a zarr `EpisodeStore`) while the episode
runs, through a writer thread, so the control loop never waits on the disk.

Crash recovery. A daemon killed mid-episode leaves the episode under the store's `.partial/`. On the next
start `Spool.recover_partials` decides, per `spool.partial_episodes`:

- `upload_aborted` (default): commit what was flushed, labelled `aborted`, and upload it like any other
  episode. Its intervention frames are valid expert labels (the operator's action in a state the policy
  reached) and its autonomous frames are valid on-policy data; only its outcome is unknown, which the
  learner sees from the label. Losing them would throw away the scarcest data a robot produces.
- `discard`: delete it (counted and logged; for deployments whose learner must never see an
  outcome-less episode).

Size cap. `spool.max_bytes` bounds the spool on disk. Before a new episode is recorded above the cap, the
oldest fully autonomous episodes (no intervention frame) are evicted, each logged and counted in
`sop_robot_spool_evicted_episodes`; when only episodes with interventions remain, the new episode runs
but is not recorded (logged, `sop_robot_episodes_not_recorded`). Nothing is dropped silently.

Quarantine. An episode the learner refuses as invalid (or that cannot be read back) is moved to
`quarantine/<episode_id>/` with a `reason.json`, reported, and never retried.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_client.config import SpoolConfig
from robot_client.metrics import RobotMetrics
from sop.data.episode_store import (
    EPISODES_DIR,
    EpisodeInfo,
    EpisodeNotFoundError,
    EpisodeStore,
    EpisodeWriter,
)
from sop.episode import INTERVENTION, Episode, EpisodeError, Outcome, Source

log = logging.getLogger(__name__)


class Spool:
    """The robot's episode store plus its policies: recovery after a crash, the size cap, quarantine."""

    def __init__(self, root: Path, quarantine_dir: Path, config: SpoolConfig, metrics: RobotMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.store = EpisodeStore(root, create=True, durable=config.durable)
        self.quarantine_dir = quarantine_dir
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._intervention_cache: dict[str, bool] = {}
        self.update_gauges()

    # Start-up recovery ------------------------------------------------------------------------------------

    def recover_partials(self) -> list[str]:
        """Deal with the episodes a killed daemon left half-written; returns the ids committed as aborted."""
        recovered = []
        for partial in self.store.partial_episodes():
            if partial.writer_alive:
                continue
            episode_id = partial.episode_id
            if self.config.partial_episodes == "discard":
                self.store.discard_partial(episode_id)
                self.metrics.partial_episodes.labels("discarded").inc()
                log.warning(
                    "discarded the partial episode %s (%d steps flushed) left by a previous run "
                    "(spool.partial_episodes=discard)",
                    episode_id,
                    partial.num_steps_flushed,
                )
                continue
            try:
                info = self.store.recover_partial(episode_id, Outcome.ABORTED)
            except EpisodeError as exc:
                self.store.discard_partial(episode_id)
                self.metrics.partial_episodes.labels("unrecoverable").inc()
                log.error("partial episode %s cannot be recovered (%s); discarded", episode_id, exc)
                continue
            if info is None:
                self.metrics.partial_episodes.labels("empty").inc()
                log.warning("partial episode %s had no flushed step; removed", episode_id)
                continue
            self.metrics.partial_episodes.labels("recovered").inc()
            recovered.append(episode_id)
            log.warning(
                "recovered the partial episode %s (%d steps) left by a previous run; it will be uploaded "
                "as aborted",
                episode_id,
                info.num_steps,
            )
        self.update_gauges()
        return recovered

    # Reading and deleting ---------------------------------------------------------------------------------

    def pending(self) -> list[EpisodeInfo]:
        """Committed episodes awaiting upload, oldest first."""
        return self.store.list()

    def read(self, episode_id: str) -> Episode:
        return self.store.get(episode_id)

    def delete(self, episode_id: str) -> None:
        """Forget an episode the learner has receipted; one already gone (evicted) is fine."""
        try:
            self.store.delete(episode_id)
        except EpisodeNotFoundError:
            log.debug("episode %s was already gone from the spool", episode_id)
        self._intervention_cache.pop(episode_id, None)
        self.update_gauges()

    def quarantine(self, episode_id: str, reason: str) -> Path:
        """Move an episode aside with the reason; it is never uploaded again, and never silently lost."""
        target = self.quarantine_dir / episode_id
        source = self.store.root / EPISODES_DIR / episode_id
        if source.is_dir():
            shutil.copytree(source, target / "episode.zarr", dirs_exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        (target / "reason.json").write_text(
            json.dumps({"episode_id": episode_id, "reason": reason, "quarantined_at": time.time()}, indent=1)
        )
        self.delete(episode_id)
        self.metrics.uploads_quarantined.inc()
        log.error("episode %s quarantined in %s: %s", episode_id, target, reason)
        return target

    def quarantined(self) -> list[str]:
        return sorted(p.name for p in self.quarantine_dir.iterdir() if (p / "reason.json").is_file())

    # The size cap -----------------------------------------------------------------------------------------

    def has_interventions(self, episode_id: str) -> bool:
        cached = self._intervention_cache.get(episode_id)
        if cached is None:
            flags = self.store.read_columns(episode_id, [INTERVENTION])[INTERVENTION]
            cached = bool(np.asarray(flags).any())
            self._intervention_cache[episode_id] = cached
        return cached

    def make_room(self, busy: Callable[[], set[str]]) -> bool:
        """Bring the spool under its cap before a new recording; False: it cannot, do not record."""
        size = self.store.size_bytes()
        if size < self.config.max_bytes:
            return True
        for info in self.pending():
            if info.episode_id in busy():
                continue
            try:
                if self.has_interventions(info.episode_id):
                    continue
                self.store.delete(info.episode_id)
            except EpisodeNotFoundError:
                continue  # uploaded meanwhile
            self._intervention_cache.pop(info.episode_id, None)
            self.metrics.spool_evicted.inc()
            log.warning(
                "spool full (%.1f MB >= cap %.1f MB): evicted the autonomous-only episode %s (%d steps) "
                "before it was uploaded",
                size / 1e6,
                self.config.max_bytes / 1e6,
                info.episode_id,
                info.num_steps,
            )
            size = self.store.size_bytes()
            if size < self.config.max_bytes:
                self.update_gauges()
                return True
        self.update_gauges()
        return False

    def update_gauges(self) -> None:
        self.metrics.spool_depth.set(len(self.store))
        self.metrics.spool_bytes.set(self.store.size_bytes())


@dataclass(frozen=True)
class _Begin:
    episode_id: str
    robot_id: str
    task: str
    instruction: str
    fps: float
    started_at: float


@dataclass(frozen=True)
class _Finish:
    outcome: Outcome | None  # None: abort (throw the recording away)
    ended_at: float
    extra: dict[str, str] = field(
        default_factory=dict
    )  # metadata known at the end (`sop.episode.OPERATOR_FRAMES`)
    written: threading.Event = field(default_factory=threading.Event)  # set once the writer handled it


_STOP = object()


class EpisodeRecorder:
    """Takes steps from the control thread without blocking and writes them to the spool on its own thread.

    The control thread calls `begin`, `add_step` and `finish`. On a real-time robot `add_step` never
    blocks: a full queue drops the step, counted and logged, because a late control step is worse than a
    gap in the record. A free-running (simulated) robot has no deadline, so there `add_step` waits for the
    writer instead (`wait_when_full`): dropping steps would only cut holes in episodes for nothing (and, at
    simulator speed on a busy machine, whole episodes came out empty). The writer flushes to disk every
    `flush_every` steps, which bounds what a crash can lose.
    """

    def __init__(
        self,
        spool: Spool,
        config: SpoolConfig,
        metrics: RobotMetrics,
        on_committed: Callable[[str], None] = lambda episode_id: None,
        busy: Callable[[], set[str]] = set,
        wait_when_full: bool = False,
    ) -> None:
        self.spool = spool
        self.wait_when_full = wait_when_full
        self.metrics = metrics
        self.on_committed = on_committed
        self.busy = busy
        self.flush_every = config.flush_every_steps
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.recorder_queue_steps)
        self._writer: EpisodeWriter | None = None
        self._dropping_episode = False
        self._thread: threading.Thread | None = None
        self._last_drop_log = 0.0
        self.committed: list[str] = []

    # Control-thread side ----------------------------------------------------------------------------------

    def begin(
        self, episode_id: str, robot_id: str, task: str, instruction: str, fps: float, started_at: float
    ) -> None:
        self._queue.put(_Begin(episode_id, robot_id, task, instruction, fps, started_at))

    def add_step(self, step: Mapping[str, Any]) -> None:
        try:
            if self.wait_when_full:
                # Wait for the writer, but never for a writer that is gone (then the step is dropped below).
                while True:
                    try:
                        self._queue.put(step, timeout=0.5)
                        return
                    except queue.Full:
                        if self._thread is None or not self._thread.is_alive():
                            raise
            self._queue.put_nowait(step)
        except queue.Full:
            self.metrics.recorder_dropped_steps.inc()
            now = time.monotonic()
            if now - self._last_drop_log > 5.0:
                self._last_drop_log = now
                log.error(
                    "spool writer is behind: a step was dropped (queue of %d full)", self._queue.maxsize
                )

    def finish(
        self, outcome: Outcome | None, ended_at: float, extra: Mapping[str, str] | None = None
    ) -> None:
        """Commit the episode with `outcome`, or throw it away with None. A free-running robot
        (`wait_when_full`) also waits until the spool holds it: with no deadline to keep, an episode the
        control loop calls finished is then one a kill -9 cannot take back (else up to a queue of episodes
        could sit in memory when the simulator outruns the disk)."""
        item = _Finish(outcome, ended_at, dict(extra or {}))
        self._queue.put(item)
        if self.wait_when_full:
            while not item.written.wait(0.5):
                if self._thread is None or not self._thread.is_alive():
                    return

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued has been written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Write what is queued, then stop; True when the writer finished within `timeout_s`. An episode
        still open (or still being written when time ran out) stays partial: recovered at the next start."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=max(timeout_s, 1e-3))
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False
        self._thread = None
        return True

    # Writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    if self._writer is not None:
                        self._writer.flush()
                    return
                if isinstance(item, _Begin):
                    self._begin(item)
                elif isinstance(item, _Finish):
                    try:
                        self._finish(item)
                    finally:
                        item.written.set()
                elif self._writer is not None:
                    self._add(item)
            except Exception:  # the writer must outlive any one bad write; each failure is counted and logged
                self.metrics.recorder_errors.inc()
                log.exception("spool write failed")
            finally:
                self._queue.task_done()

    def _begin(self, item: _Begin) -> None:
        if self._writer is not None:
            log.error(
                "episode %s began before %s was finished; aborting the older one",
                item.episode_id,
                self._writer.episode_id,
            )
            self._writer.abort()
            self._writer = None
        if not self.spool.make_room(self.busy):
            self.metrics.episodes_not_recorded.inc()
            log.error(
                "spool is full of episodes with interventions (cap %.1f MB): episode %s runs but is NOT recorded",
                self.spool.config.max_bytes / 1e6,
                item.episode_id,
            )
            return
        self._writer = self.spool.store.begin_episode(
            item.episode_id,
            item.robot_id,
            item.task,
            item.instruction,
            source=Source.ONLINE,
            fps=item.fps,
            started_at=item.started_at,
            flush_every=self.flush_every,
        )

    def _add(self, step: Mapping[str, Any]) -> None:
        assert self._writer is not None
        try:
            self._writer.add_step(step)
        except EpisodeError as exc:
            self.metrics.recorder_errors.inc()
            log.error(
                "step refused by the spool (%s); the step is left out of episode %s",
                exc,
                self._writer.episode_id,
            )

    def _finish(self, item: _Finish) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if item.outcome is None:
            writer.abort()
            return
        if writer.num_steps == 0:
            writer.abort()
            log.warning("episode %s had no step; nothing recorded", writer.episode_id)
            return
        try:
            info = writer.commit(item.outcome, ended_at=item.ended_at, extra=item.extra)
        except EpisodeError as exc:
            writer.abort()
            self.metrics.recorder_errors.inc()
            log.error("episode %s breaks the schema and was not recorded: %s", writer.episode_id, exc)
            return
        self.committed.append(info.episode_id)
        self.spool.update_gauges()
        self.on_committed(info.episode_id)
