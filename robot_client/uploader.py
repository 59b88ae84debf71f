"""The uploader: a background thread that drains the spool into the learner, resumably, without ever
touching the control loop.

For each spooled episode (oldest first):

1. serialise it deterministically (map fields sorted, so the bytes and their sha256 are the same after a
   daemon restart and a resumed upload lines up with the chunks the learner already holds);
2. `QueryUpload`: committed already -> delete it locally; else the chunk indices the learner holds;
3. `UploadEpisode` with only the missing chunks (the last one carries the episode's sha256);
4. delete the episode from the spool only when the receipt says `committed=True`.

Errors: INVALID_ARGUMENT (the learner says the episode is bad) -> quarantine at once; FAILED_PRECONDITION
(chunks disagree) -> retried a few times, then quarantined; RESOURCE_EXHAUSTED (the learner sheds load)
-> back off at least `resource_exhausted_min_s`; anything else (UNAVAILABLE, DEADLINE_EXCEEDED, a cut
stream) -> exponential back-off with jitter and a retry that resumes. Every call has a deadline.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from robot_client.config import RobotConfig
from robot_client.learner_channel import Backoff, LearnerChannel, rpc_code, rpc_details
from robot_client.metrics import RobotMetrics
from robot_client.recorder import Spool
from sop.data.codec import CodecError, encode_episode
from sop.data.episode_store import EpisodeNotFoundError
from sop.data.upload_chunks import split_into_chunks
from sop.episode import EpisodeError
from sop.v1 import fleet_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerLimits:
    """What the learner accepts (from RegisterResponse); defaults until the robot has registered."""

    max_chunk_bytes: int = 1 << 20
    max_episode_bytes: int = (1 << 31) - (1 << 20)


class NotCommitted(Exception):
    """The learner stored the chunks but did not commit the episode; the next attempt resumes."""


class RefusedEpisode(Exception):
    """An episode that must not be retried; it goes to quarantine with this reason."""


class Uploader:
    def __init__(
        self,
        config: RobotConfig,
        link: LearnerChannel,
        spool: Spool,
        metrics: RobotMetrics,
        limits: Callable[[], LearnerLimits] = LearnerLimits,
    ) -> None:
        self.config = config
        self.link = link
        self.spool = spool
        self.metrics = metrics
        self.limits = limits
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: str | None = None
        self._payload_cache: tuple[str, bytes] | None = None
        self._precondition_failures: dict[str, int] = {}
        self._call: grpc.Future | None = None
        self.uploaded: list[str] = []

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.config.robot_id}-uploader", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():  # else a later stop() (the daemon's second pass) waits again
                self._thread = None

    def wake(self, episode_id: str = "") -> None:
        """A new episode is in the spool."""
        self._wake.set()

    def busy(self) -> set[str]:
        """The episode being uploaded (the spool must not evict it)."""
        current = self._current
        return {current} if current else set()

    # Work ---------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        upload = self.config.upload
        backoff = Backoff(upload.backoff_initial_s, upload.backoff_max_s)
        while not self._stop.is_set():
            pending = self.spool.pending()
            if not pending:
                self._wake.wait(upload.poll_interval_s)
                self._wake.clear()
                continue
            episode_id = pending[0].episode_id
            self._current = episode_id
            try:
                self.upload_one(episode_id)
                backoff.reset()
            except RefusedEpisode as exc:
                self._forget(episode_id)
                self.spool.quarantine(episode_id, str(exc))
            except EpisodeNotFoundError:
                self._forget(episode_id)  # evicted by the spool's size cap meanwhile (counted there)
            except (grpc.RpcError, NotCommitted) as exc:
                if self._stop.is_set():
                    break
                self._retry_or_quarantine(episode_id, exc, backoff)
            except grpc.FutureCancelledError:
                break  # stop() cancelled the call in flight; the episode stays spooled
            except Exception:  # a bug or a disk error must not end the uploads for good: log, wait, go on
                log.exception("upload of %s failed unexpectedly", episode_id)
                self.metrics.upload_retries.labels("CLIENT_ERROR").inc()
                self._stop.wait(backoff.next_delay())
            finally:
                self._current = None
                self._call = None

    def _forget(self, episode_id: str) -> None:
        self._precondition_failures.pop(episode_id, None)
        if self._payload_cache is not None and self._payload_cache[0] == episode_id:
            self._payload_cache = None

    def _retry_or_quarantine(self, episode_id: str, exc: Exception, backoff: Backoff) -> None:
        code = rpc_code(exc) if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNKNOWN
        details = rpc_details(exc)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._forget(episode_id)
            self.spool.quarantine(episode_id, f"learner refused it: INVALID_ARGUMENT: {details}")
            return
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            failures = self._precondition_failures.get(episode_id, 0) + 1
            self._precondition_failures[episode_id] = failures
            if failures >= self.config.upload.max_precondition_failures:
                self._forget(episode_id)
                self.spool.quarantine(
                    episode_id,
                    f"learner's chunks disagree with ours {failures} times: FAILED_PRECONDITION: {details}",
                )
                return
        label = code.name if isinstance(exc, grpc.RpcError) else "NOT_COMMITTED"
        self.metrics.upload_retries.labels(label).inc()
        floor = (
            self.config.upload.resource_exhausted_min_s if code == grpc.StatusCode.RESOURCE_EXHAUSTED else 0.0
        )
        delay = backoff.next_delay(floor)
        log.warning("upload of %s failed (%s: %s); retrying in %.1f s", episode_id, label, details, delay)
        self._stop.wait(delay)

    def _payload(self, episode_id: str) -> bytes:
        if self._payload_cache is not None and self._payload_cache[0] == episode_id:
            return self._payload_cache[1]
        try:
            payload = encode_episode(self.spool.read(episode_id))
        except EpisodeNotFoundError:
            raise
        except (CodecError, EpisodeError, KeyError, ValueError, OSError) as exc:
            raise RefusedEpisode(f"cannot be read back from the spool: {exc}") from exc
        limit = self.limits().max_episode_bytes
        if len(payload) > limit:
            raise RefusedEpisode(f"{len(payload)} bytes exceed the learner's max_episode_bytes {limit}")
        self._payload_cache = (episode_id, payload)
        return payload

    def upload_one(self, episode_id: str) -> None:
        """One attempt at one episode; returns once the learner has committed it (and it is deleted here)."""
        payload = self._payload(episode_id)
        query = self.link.unary(
            self.link.fleet.QueryUpload, fleet_pb2.QueryUploadRequest(episode_id=episode_id)
        )
        if query.committed:
            self._committed(episode_id, duplicate=True)
            return
        chunk_bytes = min(self.config.upload.max_chunk_bytes, self.limits().max_chunk_bytes)
        held = set(query.received_seqs)
        if query.total_chunks and query.total_chunks != math.ceil(len(payload) / chunk_bytes):
            # The learner holds a split made with another chunk size (the config changed): keep its count.
            log.warning(
                "learner holds %d chunks of %s; re-splitting to match", query.total_chunks, episode_id
            )
            chunk_bytes = math.ceil(len(payload) / query.total_chunks)
        chunks = split_into_chunks(episode_id, payload, chunk_bytes)
        missing = [c for c in chunks if c.seq not in held]
        if not missing:
            missing = [
                chunks[-1]
            ]  # everything is there but not committed: the last chunk asks for the commit
        skipped = len(chunks) - len(missing)
        if skipped:
            self.metrics.upload_chunks_skipped.inc(skipped)
            log.info(
                "resuming upload of %s: %d of %d chunks already at the learner",
                episode_id,
                skipped,
                len(chunks),
            )
        future = self.link.fleet.UploadEpisode.future(
            iter(missing), timeout=self.config.learner.upload_timeout_s, metadata=self.link.metadata
        )
        self._call = future
        if self._stop.is_set():
            future.cancel()
        receipt = future.result()
        self.metrics.upload_bytes.inc(sum(len(c.payload) for c in missing))
        if not receipt.committed:
            raise NotCommitted(f"learner stored the chunks of {episode_id} but did not commit it")
        self._committed(episode_id, duplicate=receipt.duplicate)

    def _committed(self, episode_id: str, duplicate: bool) -> None:
        self._forget(episode_id)
        self.spool.delete(episode_id)
        self.metrics.uploads_ok.inc()
        self.uploaded.append(episode_id)
        log.info("episode %s committed by the learner%s", episode_id, " (already held)" if duplicate else "")
