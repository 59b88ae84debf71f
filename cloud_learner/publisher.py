"""Checkpoint publication: announce each new version to every watching robot and serve its bytes.

Broadcast cost is what matters when many robots fetch the same 50-800 MB blob at once, so each version is
prepared once, when it is published: the blob is cut into <= 1 MiB pieces and every piece is serialized as
a complete `CheckpointChunk` message. A fetch then hands these ready-made messages to gRPC (the Fleet
service registers FetchCheckpoint with a pass-through serializer), so N robots cost N socket writes and no
per-robot protobuf work or copies. A fetch that resumes at an offset inside a piece gets one freshly built
message for the rest of that piece (a memoryview slice of the blob), then the prepared ones.

Watchers wait on one condition variable with a timeout and re-check that their call is still active, so a
robot that disappears frees its thread within `watch_check_interval_s`.

With a signing key (`trainer.signing_key_file`) every announcement carries the learner's Ed25519 signature
over the checkpoint's version, parent, sha256 and size (`sop.fleet_trust`), made once per version and kept
with its prepared bytes; robots holding the public key refuse a checkpoint without it.

**Pinning (and rolling back).** An admin can pin the fleet to a version (`pin`): robots are told about that
version and no other until `unpin`, while the trainer goes on training and storing newer versions (they are
announced at `unpin`). Robots only take a version newer than the one they run (a replayed old announcement
must not downgrade them), so pinning to an older version republishes its weights as the next version number
(`republished_from` in its manifest, parent = the old version): that is the roll-back. The pin survives a
learner restart (`pin.json` in the checkpoint store) and its version is never pruned. It applies to the whole
fleet; one robot alone cannot be pinned yet.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud_learner.checkpoint_store import (
    CheckpointRecord,
    CheckpointStore,
    as_first_version,
    read_checkpoint_blob,
    republished,
)
from sop.checkpoint import CheckpointError
from sop.durable_files import write_json_atomically
from sop.fleet_trust import CheckpointSigner
from sop.v1 import fleet_pb2

logger = logging.getLogger(__name__)

MAX_FETCH_CHUNK_BYTES = 1 << 20
PIN_NAME = "pin.json"
MAX_PIN_REASON_CHARS = 200


@dataclass(frozen=True)
class FleetPin:
    """The fleet is held at `version` (what robots are told about); `requested` is the version the admin
    asked for (differs when it was republished under a new number)."""

    version: int
    requested: int
    by: str
    reason: str
    at: float


class CheckpointNotFoundError(KeyError):
    """A fetch for a version the learner does not hold (never published, or pruned)."""


class FetchOffsetError(ValueError):
    """A fetch offset beyond the end of the blob."""


def announcement_for(
    record: CheckpointRecord, signer: CheckpointSigner | None = None
) -> fleet_pb2.PolicyAnnouncement:
    """The announcement of `record`, signed when the learner has a signing key."""
    signature = (
        b""
        if signer is None
        else signer.sign(record.version, record.parent_version, record.sha256, record.size_bytes)
    )
    return fleet_pb2.PolicyAnnouncement(
        version=record.version,
        parent_version=record.parent_version,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        signature=signature,
    )


@dataclass(frozen=True)
class PreparedCheckpoint:
    """A version's blob plus its pre-serialized `CheckpointChunk` messages at aligned offsets."""

    record: CheckpointRecord
    blob: bytes
    chunk_bytes: int
    frames: tuple[bytes, ...]

    @classmethod
    def prepare(
        cls, record: CheckpointRecord, blob: bytes, chunk_bytes: int = MAX_FETCH_CHUNK_BYTES
    ) -> PreparedCheckpoint:
        if not 0 < chunk_bytes <= MAX_FETCH_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_FETCH_CHUNK_BYTES}, got {chunk_bytes}")
        view = memoryview(blob)
        frames = tuple(
            cls._frame(record, offset, view[offset : offset + chunk_bytes])
            for offset in range(0, len(blob), chunk_bytes)
        )
        return cls(record=record, blob=blob, chunk_bytes=chunk_bytes, frames=frames)

    @staticmethod
    def _frame(record: CheckpointRecord, offset: int, data: memoryview) -> bytes:
        return fleet_pb2.CheckpointChunk(
            version=record.version,
            offset=offset,
            data=data.tobytes(),
            total_bytes=record.size_bytes,
            sha256=record.sha256,
        ).SerializeToString()

    def frames_from(self, offset: int) -> Iterator[bytes]:
        """Serialized chunks covering blob[offset:], each at most `chunk_bytes` of data."""
        size = len(self.blob)
        if not 0 <= offset <= size:
            raise FetchOffsetError(f"offset {offset} is outside the {size}-byte checkpoint")
        return self._frames_from(offset)

    def _frames_from(self, offset: int) -> Iterator[bytes]:
        size = len(self.blob)
        index, inside = divmod(offset, self.chunk_bytes)
        if inside:
            end = min((index + 1) * self.chunk_bytes, size)
            yield self._frame(self.record, offset, memoryview(self.blob)[offset:end])
            index += 1
        yield from self.frames[index:]


class Publisher:
    """The newest published version, its watchers, and the prepared bytes of recent versions."""

    def __init__(
        self, store: CheckpointStore, cache_versions: int = 2, signer: CheckpointSigner | None = None
    ) -> None:
        self.store = store
        self.signer = signer
        # The announcement of the newest version, signed once (not once per watching robot).
        self._announcement: fleet_pb2.PolicyAnnouncement | None = None
        self.cache_versions = max(1, cache_versions)
        self._cache: OrderedDict[int, PreparedCheckpoint] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._condition = threading.Condition()
        self._latest: CheckpointRecord | None = None  # the newest stored version
        self._fleet: CheckpointRecord | None = None  # the version robots are told about (the pin, or newest)
        self._pin: FleetPin | None = None
        # One version number at a time (trainer, base, republication); re-entrant: `pin` republishes under it.
        self._publish_lock = threading.RLock()
        self._closed = False
        self.fetches_served = 0
        latest = store.latest()
        while latest is not None:
            try:
                self._prepare(latest)
            except CheckpointError as exc:
                store.discard(latest.version, str(exc))
                latest = store.latest()
                continue
            self._latest = self._fleet = latest
            self._announcement = announcement_for(latest, signer)
            break
        self._restore_pin()

    @property
    def latest(self) -> CheckpointRecord | None:
        """The newest stored version (what the trainer numbers from)."""
        with self._condition:
            return self._latest

    @property
    def fleet_version(self) -> CheckpointRecord | None:
        """The version robots are told to run: the pinned one, else the newest."""
        with self._condition:
            return self._fleet

    @property
    def pin_state(self) -> FleetPin | None:
        with self._condition:
            return self._pin

    def publish_next(self, make_blob: Callable[[int], bytes], **record: Any) -> CheckpointRecord:
        """Store and announce the next version: `make_blob(version)` builds its blob, `record` goes to
        `CheckpointStore.publish` (train_step, metrics, trainer_state). Serialized, so the trainer and a
        republication never pick the same number."""
        with self._publish_lock:
            newest = self.store.latest()
            blob = make_blob(1 if newest is None else newest.version + 1)
            stored = self.store.publish(blob, **record)
            self.announce(stored, blob)
            return stored

    def pin(self, version: int, by: str, reason: str = "") -> FleetPin:
        """Hold the fleet at `version` (republished as the next number when robots may run a newer one).
        KeyError-like `CheckpointNotFoundError` when the learner no longer holds `version`."""
        with self._publish_lock:  # no trainer publication between the republication and the pin
            record = self.store.record(version)
            if record is None:
                raise CheckpointNotFoundError(
                    f"checkpoint v{version} is not held (kept: {self.store.versions()}); pin one of those"
                )
            current = self.fleet_version
            if current is not None and version < current.version:
                extra = {"republished_from": version, "republished_by": by, "republished_at": time.time()}
                blob = self.store.read_blob(version)
                record = self.publish_next(
                    lambda number: republished(blob, number, extra), republished_from=version
                )
            pin = FleetPin(record.version, version, by, reason[:MAX_PIN_REASON_CHARS], time.time())
            write_json_atomically(self.store.root / PIN_NAME, asdict(pin), durable=True)
            self.store.protected = {record.version}
            with self._condition:
                self._pin = pin
                self._fleet = record
                self._announcement = announcement_for(record, self.signer)
                self._condition.notify_all()
        logger.warning(
            "fleet pinned to v%d by %s%s (%s)",
            version,
            by,
            f" (republished as v{record.version})" if record.version != version else "",
            reason or "no reason given",
        )
        return pin

    def unpin(self, by: str) -> CheckpointRecord | None:
        """Let the fleet follow the newest version again; the newest, announced."""
        with self._publish_lock, self._condition:
            (self.store.root / PIN_NAME).unlink(missing_ok=True)
            self.store.protected = set()
            was, self._pin = self._pin, None
            self._fleet = self._latest
            if self._latest is not None:
                self._announcement = announcement_for(self._latest, self.signer)
            self._condition.notify_all()
            newest = self._latest
        if was is not None:
            logger.warning("fleet unpinned from v%d by %s", was.version, by)
        return newest

    def _restore_pin(self) -> None:
        path = self.store.root / PIN_NAME
        if not path.exists():
            return
        try:
            pin = FleetPin(**json.loads(path.read_text()))
            record = self.store.record(int(pin.version))
        except (OSError, ValueError, TypeError) as exc:
            logger.error(
                "ignoring the fleet pin %s: unreadable (%s); the fleet follows the newest", path, exc
            )
            return
        if record is None:
            logger.error(
                "ignoring the fleet pin to v%d: the version is gone; the fleet follows the newest",
                pin.version,
            )
            return
        self.store.protected = {record.version}
        self._pin, self._fleet = pin, record
        self._announcement = announcement_for(record, self.signer)
        logger.warning("the fleet stays pinned to v%d (pinned by %s)", pin.version, pin.by)

    def _prepare(self, record: CheckpointRecord, blob: bytes | None = None) -> PreparedCheckpoint:
        with self._cache_lock:
            prepared = self._cache.get(record.version)
            if prepared is not None:
                self._cache.move_to_end(record.version)
                return prepared
        if blob is None:
            blob = self.store.read_blob(record.version)
        prepared = PreparedCheckpoint.prepare(record, blob)
        with self._cache_lock:
            self._cache[record.version] = prepared
            self._cache.move_to_end(record.version)
            while len(self._cache) > self.cache_versions:
                self._cache.popitem(last=False)
        return prepared

    def announce(self, record: CheckpointRecord, blob: bytes | None = None) -> None:
        """Make `record` (already durable in the store) the newest version and wake every watcher."""
        self._prepare(record, blob)
        announcement = announcement_for(record, self.signer)
        with self._condition:
            if self._latest is None or record.version > self._latest.version:
                self._latest = record
                if self._pin is None:
                    self._fleet = record
                    self._announcement = announcement
            self._condition.notify_all()
        logger.info(
            "published checkpoint v%d (%d bytes, sha256 %s, %s)",
            record.version,
            record.size_bytes,
            record.sha256[:12],
            "signed" if announcement.signature else "unsigned",
        )

    def publish_base(self, path: str | Path) -> CheckpointRecord | None:
        """First run only: publish the base checkpoint at `path` as v1 (parent 0) so robots get a policy at
        once. Returns its record, or None when the store already holds a version (a restart)."""
        if self.latest is not None:
            return None
        blob = as_first_version(read_checkpoint_blob(path))
        with self._publish_lock:
            record = self.store.publish(blob, train_step=0)
            self.announce(record, blob)
        return record

    def close(self) -> None:
        """Wake every watcher so its stream ends (the learner is stopping)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def watch(
        self,
        current_version: int,
        is_active: Callable[[], bool],
        check_interval_s: float,
        max_lifetime_s: float,
    ) -> Iterator[fleet_pb2.PolicyAnnouncement]:
        """The newest announcement at once (when there is one), then each newer one as it is published.

        Ends when the call goes inactive, the learner closes, or `max_lifetime_s` passes (the robot then
        re-opens the stream); never waits longer than `check_interval_s` without re-checking.
        """
        deadline = time.monotonic() + max_lifetime_s
        sent: int | None = None
        while True:
            with self._condition:
                while not self._closed and (self._fleet is None or self._fleet.version == sent):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not is_active():
                        return
                    self._condition.wait(timeout=min(check_interval_s, remaining))
                if self._closed:
                    return
                latest, announcement = self._fleet, self._announcement
            assert latest is not None and announcement is not None
            if sent is None and latest.version < current_version:
                logger.warning(
                    "a robot runs v%d, newer than the learner's newest v%d; announcing v%d",
                    current_version,
                    latest.version,
                    latest.version,
                )
            sent = latest.version
            yield announcement

    def prepared(self, version: int) -> PreparedCheckpoint:
        """The prepared bytes of `version` (0: the newest). CheckpointNotFoundError if not held."""
        if version == 0:
            latest = self.fleet_version
            if latest is None:
                raise CheckpointNotFoundError("no checkpoint has been published yet")
            record: CheckpointRecord | None = latest
        else:
            record = self.store.record(version)
            if record is None:
                with self._cache_lock:
                    cached = self._cache.get(version)
                if cached is not None:
                    return cached
                raise CheckpointNotFoundError(
                    f"checkpoint v{version} is not held (never published, or pruned)"
                )
        assert record is not None
        try:
            return self._prepare(record)
        except (CheckpointError, KeyError) as exc:
            raise CheckpointNotFoundError(f"checkpoint v{version} cannot be served: {exc}") from None

    def fetch_frames(self, version: int, offset: int) -> Iterator[bytes]:
        """Serialized `CheckpointChunk`s for `version` from `offset`; raises before yielding on bad input."""
        prepared = self.prepared(version)
        frames = prepared.frames_from(offset)
        self.fetches_served += 1
        return frames
