"""PolicySync: watch the learner's announcements, fetch new checkpoints, verify them, load them in the
background and hand them to the control loop, which swaps them in at a boundary.

Peers push the whole state dict every few seconds (LeRobot HIL-SERL) or load weights once at start. Here:

- `WatchPolicy` is a long-lived stream with a deadline; it is re-opened after it ends or breaks, with
  exponential back-off and jitter while the learner is unreachable.
- With `policy.checkpoint_public_key_file` set, an announcement must carry the learner's Ed25519 signature
  over version, parent, sha256 and size (`sop.fleet_trust`), checked before a byte is fetched; the blob is
  then held to the signed sha256. Unsigned or wrongly signed: rejected like a bad hash.
- `FetchCheckpoint` downloads into a `.part` file and resumes from its size after a cut.
- The blob's sha256 must equal the announced one before it is parsed; `checkpoint_from_bytes` then checks
  the weights against the manifest. A checkpoint that fails either check is rejected (metric + log), never
  fetched again under the same hash, and the robot keeps running the policy it has.
- Loading (building the network, reading weights) happens on this thread, never on the control thread.
- A loaded checkpoint is dry-run on a recorded observation of this robot (`dry_run.py`: shapes, finite
  output, time) before it is swapped in or kept; one that fails is refused like a bad hash.
- The last good checkpoint is kept in `policy/` so a restart without the learner runs it. Only a
  checkpoint that passed its dry run becomes last good.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from robot_client.config import RobotConfig
from robot_client.dry_run import DryRunFailed, PolicyCheck
from robot_client.learner_channel import Backoff, LearnerChannel, rpc_code, rpc_details
from robot_client.metrics import RobotMetrics
from sop.durable_files import write_atomically, write_json_atomically
from sop.fleet_trust import CheckpointVerifier, SignatureError
from sop.hashing import sha256_hex
from sop.policies.base import ActionChunk
from sop.safe_logging import client_str
from sop.v1 import fleet_pb2

log = logging.getLogger(__name__)


class Policy(Protocol):
    """What the control loop needs from a policy (`sop.policies` implements it)."""

    @property
    def version(self) -> int: ...

    @property
    def observation_horizon(self) -> int: ...

    @property
    def execution_horizon(self) -> int: ...

    def reset(self) -> None: ...

    def warm_up(self) -> None: ...

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...

    def plan_chunk(self, history: Sequence[dict[str, Any]], steps_since_last_chunk: int) -> ActionChunk: ...

    def invalidate_warm_start(self) -> None: ...

    def continue_from_actions(self, executed: np.ndarray) -> None: ...

    def load_weights_in_place(self, blob: bytes, expected_sha256: str | None = None) -> bool: ...


# (blob, expected sha256 or None) -> a ready policy. Raises (CheckpointError or anything) when it cannot.
PolicyLoader = Callable[[bytes, "str | None"], Policy]


@dataclass
class LoadedPolicy:
    policy: Policy
    version: int
    sha256: str
    source: str  # "base", "last_good" or "learner"
    refillable: bool = True  # built by the robot (not a caller's object): may be refilled once retired


class PolicySlot:
    """The hand-over point between PolicySync (writer) and the control loop (reader): one pending policy,
    the newest wins. The control loop takes it only at a boundary, so a swap never happens mid-chunk.

    It also keeps one *spare*: a policy nobody runs any more (the one a swap replaced, or a pending one a
    newer checkpoint superseded). PolicySync refills the spare with the next checkpoint's weights when they
    fit (`Policy.load_weights_in_place`) instead of building a policy from scratch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: LoadedPolicy | None = None
        self._spare: Policy | None = None
        self.available = threading.Event()

    def offer(self, loaded: LoadedPolicy) -> None:
        with self._lock:
            if self._pending is None or loaded.version > self._pending.version:
                if self._pending is not None:
                    self._spare = self._pending.policy
                self._pending = loaded
                self.available.set()

    def retire(self, policy: Policy) -> None:
        """The control loop no longer runs `policy` (and never will): it may be refilled."""
        with self._lock:
            self._spare = policy

    def take_spare(self) -> Policy | None:
        with self._lock:
            spare, self._spare = self._spare, None
            return spare

    def take(self) -> LoadedPolicy | None:
        with self._lock:
            pending, self._pending = self._pending, None
            self.available.clear()
            return pending

    @property
    def pending_version(self) -> int | None:
        with self._lock:
            return None if self._pending is None else self._pending.version


class FetchIncomplete(Exception):
    """The fetch stream ended before the whole blob arrived; the next attempt resumes from the offset."""


class CheckpointRejected(Exception):
    """A checkpoint that must not run; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_checkpoint_blob(path: str | Path) -> bytes:
    """The blob of a checkpoint directory (`checkpoint.safetensors`) or a bare blob file."""
    location = Path(path)
    if location.is_dir():
        location = location / "checkpoint.safetensors"
    return location.read_bytes()


class LastGoodCheckpoint:
    """The newest checkpoint that verified and loaded, kept on disk for a restart without the learner.

    `current.json` names the blob file; it is replaced atomically after the blob is on disk, so a crash at
    any point leaves either the old or the new checkpoint in force, never half of one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pointer = directory / "current.json"

    def load(self) -> tuple[bytes, int, str] | None:
        """(blob, version, sha256) of the last good checkpoint, or None when there is none or it is damaged."""
        if not self.pointer.is_file():
            return None
        try:
            pointer = json.loads(self.pointer.read_text())
            blob = (self.directory / str(pointer["file"])).read_bytes()
            version, digest = int(pointer["version"]), str(pointer["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("last good checkpoint in %s is unreadable (%s); ignoring it", self.directory, exc)
            return None
        if sha256_hex(blob) != digest:
            log.error("last good checkpoint in %s does not match its sha256; ignoring it", self.directory)
            return None
        return blob, version, digest

    def save(self, blob: bytes, version: int, digest: str) -> None:
        name = f"v{version}-{digest[:16]}.safetensors"
        write_atomically(self.directory / name, blob, durable=True)
        write_json_atomically(
            self.pointer, {"version": version, "sha256": digest, "file": name}, durable=True
        )
        for old in self.directory.glob("v*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)


class PolicySync:
    """Two threads: one keeps the WatchPolicy stream open, one fetches, verifies and loads."""

    def __init__(
        self,
        config: RobotConfig,
        link: LearnerChannel,
        loader: PolicyLoader,
        slot: PolicySlot,
        metrics: RobotMetrics,
        current_version: Callable[[], int],
        check: PolicyCheck | None = None,
    ) -> None:
        self.config = config
        self.check = check
        self.link = link
        self.loader = loader
        self.slot = slot
        self.metrics = metrics
        self.current_version = current_version
        self.last_good = LastGoodCheckpoint(config.policy_dir)
        key_file = config.policy.checkpoint_public_key_file
        self.verifier = CheckpointVerifier.from_file(key_file) if key_file else None
        self.incoming = config.policy_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.rejected: set[tuple[int, str]] = set()
        self.latest_version_seen = 0
        self.loaded_in_place = 0  # checkpoints taken into a spare policy rather than a newly built one
        self._announcement: fleet_pb2.PolicyAnnouncement | None = None
        self._announced = threading.Condition()
        self._stop = threading.Event()
        self._watch_call: Any = None
        self._fetch_call: Any = None
        self._threads: list[threading.Thread] = []

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("watch", self._watch_loop), ("fetch", self._fetch_loop)):
            thread = threading.Thread(
                target=target, name=f"{self.config.robot_id}-policy-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for call in (self._watch_call, self._fetch_call):
            if call is not None:
                call.cancel()
        with self._announced:
            self._announced.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    # Watching ---------------------------------------------------------------------------------------------

    def _wanted(self, announcement: fleet_pb2.PolicyAnnouncement) -> bool:
        pending = self.slot.pending_version or 0
        return (
            announcement.version > max(self.current_version(), pending)
            and (announcement.version, announcement.sha256) not in self.rejected
        )

    def _watch_loop(self) -> None:
        backoff = Backoff(self.config.learner.reconnect_initial_s, self.config.learner.reconnect_max_s)
        while not self._stop.is_set():
            try:
                call = self.link.fleet.WatchPolicy(
                    fleet_pb2.WatchPolicyRequest(
                        robot_id=self.config.robot_id, current_version=self.current_version()
                    ),
                    timeout=self.config.learner.stream_timeout_s,
                    metadata=self.link.metadata,
                )
                self._watch_call = call
                for announcement in call:
                    backoff.reset()
                    self.latest_version_seen = max(self.latest_version_seen, int(announcement.version))
                    if self._wanted(announcement):
                        log.info(
                            "policy v%d announced (%d bytes, sha256 %s…)",
                            announcement.version,
                            announcement.size_bytes,
                            announcement.sha256[:12],
                        )
                        with self._announced:
                            if (
                                self._announcement is None
                                or announcement.version >= self._announcement.version
                            ):
                                self._announcement = announcement
                            self._announced.notify_all()
                # The learner ended the stream (its lifetime cap): re-open after a short pause.
                self._stop.wait(self.config.learner.reconnect_initial_s)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = rpc_code(exc)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # our own stream lifetime: re-open at once
                self.metrics.rpc_errors.labels("WatchPolicy", code.name).inc()
                delay = backoff.next_delay()
                log.warning(
                    "WatchPolicy failed (%s: %s); reconnecting in %.1f s", code.name, rpc_details(exc), delay
                )
                self._stop.wait(delay)

    # Fetching ---------------------------------------------------------------------------------------------

    def _next_announcement(self) -> fleet_pb2.PolicyAnnouncement | None:
        with self._announced:
            while not self._stop.is_set():
                if self._announcement is not None and self._wanted(self._announcement):
                    return self._announcement
                self._announcement = None
                self._announced.wait(1.0)
        return None

    def _fetch_loop(self) -> None:
        backoff = Backoff(self.config.learner.reconnect_initial_s, self.config.learner.reconnect_max_s)
        while not self._stop.is_set():
            announcement = self._next_announcement()
            if announcement is None:
                return
            try:
                blob = self.fetch(announcement)
                self._accept(announcement, blob)
                backoff.reset()
            except CheckpointRejected as exc:
                self.rejected.add((announcement.version, announcement.sha256))
                self.metrics.checkpoints_rejected.labels(exc.reason).inc()
                self.metrics.last_rejected_checkpoint_version.set(announcement.version)
                log.error(
                    "checkpoint v%d rejected (%s): %s; still running v%d",
                    announcement.version,
                    exc.reason,
                    exc,
                    self.current_version(),
                )
            except (grpc.RpcError, FetchIncomplete) as exc:
                if self._stop.is_set():
                    return
                code = rpc_code(exc)
                self.metrics.rpc_errors.labels("FetchCheckpoint", code.name).inc()
                if code == grpc.StatusCode.NOT_FOUND:
                    # Superseded and deleted by the learner; a newer announcement follows.
                    log.warning(
                        "checkpoint v%d is gone from the learner; waiting for a newer one",
                        announcement.version,
                    )
                    with self._announced:
                        if self._announcement is announcement:
                            self._announcement = None
                    continue
                delay = backoff.next_delay()
                log.warning(
                    "FetchCheckpoint v%d failed (%s: %s); resuming in %.1f s",
                    announcement.version,
                    code.name,
                    rpc_details(exc),
                    delay,
                )
                self._stop.wait(delay)
            except OSError as exc:  # the policy directory: full disk, permissions
                self.metrics.rpc_errors.labels("FetchCheckpoint", "LOCAL_OS_ERROR").inc()
                log.error("cannot store checkpoint v%d (%s); retrying", announcement.version, exc)
                self._stop.wait(backoff.next_delay())

    def _part_path(self, announcement: fleet_pb2.PolicyAnnouncement) -> Path:
        return self.incoming / f"v{announcement.version}-{announcement.sha256[:16]}.part"

    def verify_signature(self, announcement: fleet_pb2.PolicyAnnouncement) -> None:
        """Raise CheckpointRejected unless the announcement is signed by the learner key this robot trusts."""
        if self.verifier is None:
            return
        try:
            self.verifier.verify(
                announcement.signature,
                announcement.version,
                announcement.parent_version,
                announcement.sha256,
                announcement.size_bytes,
            )
        except SignatureError as exc:
            reason = "unsigned" if not announcement.signature else "bad_signature"
            raise CheckpointRejected(reason, str(exc)) from None

    def fetch(self, announcement: fleet_pb2.PolicyAnnouncement) -> bytes:
        """Check the announcement's signature, download the announced blob (resuming a partial download) and
        check its size and sha256 against the signed ones."""
        self.verify_signature(announcement)
        part = self._part_path(announcement)
        for stale in self.incoming.glob("*.part"):
            if stale != part:
                stale.unlink(missing_ok=True)
        expected_size = int(announcement.size_bytes)
        offset = part.stat().st_size if part.exists() else 0
        if offset > expected_size:
            part.unlink()
            offset = 0
        if offset < expected_size:
            if offset:
                log.info(
                    "resuming checkpoint v%d at byte %d of %d", announcement.version, offset, expected_size
                )
            call = self.link.fleet.FetchCheckpoint(
                fleet_pb2.FetchCheckpointRequest(version=announcement.version, offset=offset),
                timeout=self.config.learner.fetch_timeout_s,
                metadata=self.link.metadata,
            )
            self._fetch_call = call
            with open(part, "ab") as handle:
                for chunk in call:
                    if chunk.version != announcement.version:
                        raise CheckpointRejected(
                            "wrong_version", f"learner sent v{chunk.version} for v{announcement.version}"
                        )
                    if chunk.sha256 and chunk.sha256 != announcement.sha256:
                        raise CheckpointRejected(
                            "sha256_mismatch",
                            "the learner's chunks carry a different sha256 than its announcement",
                        )
                    if chunk.offset != offset:
                        raise CheckpointRejected(
                            "bad_offset", f"chunk at offset {chunk.offset}, expected {offset}"
                        )
                    if offset + len(chunk.data) > expected_size:
                        part.unlink(missing_ok=True)
                        raise CheckpointRejected(
                            "too_large", f"blob exceeds its announced {expected_size} bytes"
                        )
                    handle.write(chunk.data)
                    offset += len(chunk.data)
                handle.flush()
            self._fetch_call = None
        blob = part.read_bytes()
        if len(blob) != expected_size:
            raise FetchIncomplete(f"fetch ended at byte {len(blob)} of {expected_size}")
        digest = sha256_hex(blob)
        part.unlink(missing_ok=True)
        if digest != announcement.sha256:
            raise CheckpointRejected(
                "sha256_mismatch",
                f"blob hashes to {digest[:16]}…, the learner announced {announcement.sha256[:16]}…",
            )
        return blob

    def _refill_spare(self, blob: bytes, digest: str) -> Policy | None:
        """The slot's spare policy holding this blob's weights, or None (no spare, or they do not fit)."""
        spare = self.slot.take_spare()
        if spare is None:
            return None
        try:
            refilled = spare.load_weights_in_place(blob, digest)
        except Exception as exc:  # the loader below gets the blob too and rejects it with the reason
            log.debug("spare policy not refilled: %s: %s", type(exc).__name__, client_str(exc, 200))
            return None
        if refilled:
            self.loaded_in_place += 1
        return spare if refilled else None

    def _accept(self, announcement: fleet_pb2.PolicyAnnouncement, blob: bytes) -> None:
        try:
            policy = self._refill_spare(blob, announcement.sha256)
            if policy is None:
                policy = self.loader(blob, announcement.sha256)
        except Exception as exc:  # any failure to build the policy rejects the checkpoint, never the robot
            raise CheckpointRejected("load_failed", f"{type(exc).__name__}: {exc}") from exc
        if int(policy.version) != int(announcement.version):
            raise CheckpointRejected(
                "version_mismatch",
                f"the blob holds v{policy.version}, the learner announced v{announcement.version}",
            )
        checked = True
        if self.check is not None:
            try:
                checked = self.check.run(policy, f"checkpoint v{announcement.version}")
            except DryRunFailed as exc:
                raise CheckpointRejected(f"dry_run_{exc.reason}", f"dry run failed: {exc}") from exc
        self.metrics.checkpoints_fetched.inc()
        if checked:
            self.last_good.save(blob, int(announcement.version), announcement.sha256)
        self.slot.offer(LoadedPolicy(policy, int(announcement.version), announcement.sha256, "learner"))
        log.info(
            "checkpoint v%d verified and loaded; swapping at the next %s boundary",
            announcement.version,
            self.config.policy.swap_at,
        )
