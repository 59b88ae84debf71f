"""Published checkpoints on disk: versioned, written atomically, the last N kept.

Layout (each version is a checkpoint directory in `sop/checkpoint.py`'s format, plus the learner's files):

    checkpoints/
      v000007/
        checkpoint.safetensors    the blob robots fetch (byte-for-byte what was announced)
        manifest.json             a copy of the manifest inside the blob
        publication.json          sha256 and size of the blob, publish time, trainer step and metrics
        training_state.json       optimiser / EMA / schedule state, so a restarted learner continues (optional):
        training_state.*.safetensors  the resume layout of `sop.training.resume_state`, shared with `sop train bc`
                                  (versions written before it hold `trainer_state.{json,safetensors}`; still read)

A version is written into a hidden `.v000007.tmp-*` directory, every file fsynced, then renamed into place and
the parent directory fsynced: after a crash a version is either fully there or absent, never half-written.
A version directory whose blob does not hash to its publication record is ignored (and reported), so a
damaged disk cannot make the learner announce bytes that robots would refuse.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sop.checkpoint import (
    BLOB_NAME,
    MANIFEST_NAME,
    CheckpointError,
    build_checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    read_manifest_from_bytes,
)
from sop.durable_files import fsync_path, write_synced
from sop.hashing import sha256_hex
from sop.training.resume_state import load_training_state, save_training_state

PUBLICATION_NAME = "publication.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointRecord:
    """One published version, as announced to robots and recorded on disk."""

    version: int
    parent_version: int
    sha256: str
    size_bytes: int
    created_at: float
    train_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # Set when this version is an older one's weights published again (a roll-back): that version.
    republished_from: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str) -> CheckpointRecord:
        try:
            values = json.loads(text)
            return cls(
                version=int(values["version"]),
                parent_version=int(values["parent_version"]),
                sha256=str(values["sha256"]),
                size_bytes=int(values["size_bytes"]),
                created_at=float(values["created_at"]),
                train_step=int(values.get("train_step", 0)),
                metrics={str(k): float(v) for k, v in dict(values.get("metrics", {})).items()},
                republished_from=int(values.get("republished_from", 0)),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: not a valid publication record ({exc})") from None


def version_dir_name(version: int) -> str:
    return f"v{version:06d}"


class CheckpointStore:
    """The versions a learner has published. Thread-safe; one writer (the trainer), many readers."""

    def __init__(self, root: str | Path, keep_last: int = 5) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last
        self._lock = threading.Lock()
        self._records: dict[int, CheckpointRecord] = {}
        # Versions pruning leaves alone however old (the version the fleet is pinned to).
        self.protected: set[int] = set()
        self._scan()

    def remove_leftover_temporaries(self) -> int:
        """Delete the hidden temporary directories a crash mid-publish leaves (never announced, ignored by
        readers). Only the writer calls this, at start: a reader in another process must not delete the
        writer's publication in progress."""
        removed = 0
        for entry in self.root.iterdir():
            if entry.name.startswith(".") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def _scan(self) -> None:
        for entry in sorted(self.root.iterdir()):
            if not (entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit()):
                continue
            try:
                record = CheckpointRecord.from_json(
                    (entry / PUBLICATION_NAME).read_text(), str(entry / PUBLICATION_NAME)
                )
                size = (entry / BLOB_NAME).stat().st_size
            except (OSError, CheckpointError) as exc:
                logger.warning("ignoring checkpoint %s: %s", entry, exc)
                continue
            if record.version != int(entry.name[1:]) or size != record.size_bytes:
                logger.warning(
                    "ignoring checkpoint %s: its files disagree with its publication record", entry
                )
                continue
            self._records[record.version] = record

    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._records)

    def latest(self) -> CheckpointRecord | None:
        """The newest version whose files are intact (verified by hash on first use, see `read_blob`)."""
        with self._lock:
            return self._records[max(self._records)] if self._records else None

    def latest_trained(self) -> CheckpointRecord | None:
        """The newest version that is not a republication: where training resumes after a restart."""
        with self._lock:
            trained = [v for v, record in self._records.items() if not record.republished_from]
            return self._records[max(trained)] if trained else None

    def record(self, version: int) -> CheckpointRecord | None:
        with self._lock:
            return self._records.get(version)

    def path(self, version: int) -> Path:
        return self.root / version_dir_name(version)

    def read_blob(self, version: int) -> bytes:
        """The blob of `version`, checked against its recorded sha256 (CheckpointError when damaged)."""
        record = self.record(version)
        if record is None:
            raise KeyError(version)
        blob_path = self.path(version) / BLOB_NAME
        try:
            blob = blob_path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{blob_path}: cannot read ({exc.strerror})") from None
        if sha256_hex(blob) != record.sha256:
            raise CheckpointError(f"{blob_path}: sha256 differs from the published {record.sha256}")
        return blob

    def read_trainer_state(self, version: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The training state saved with `version`, or None when it was published without one."""
        return load_training_state(self.path(version))

    def discard(self, version: int, reason: str) -> None:
        """Forget a damaged version so `latest()` falls back to the previous one."""
        logger.error("discarding checkpoint v%d: %s", version, reason)
        with self._lock:
            self._records.pop(version, None)
        shutil.rmtree(self.path(version), ignore_errors=True)

    def publish(
        self,
        blob: bytes,
        *,
        train_step: int = 0,
        metrics: dict[str, float] | None = None,
        trainer_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
        republished_from: int = 0,
    ) -> CheckpointRecord:
        """Store a checkpoint blob atomically; its version and parent come from the manifest inside it."""
        manifest = read_manifest_from_bytes(blob, "published checkpoint")
        with self._lock:
            newest = max(self._records, default=0)
        if manifest.version <= newest:
            raise CheckpointError(
                f"checkpoint version {manifest.version} is not newer than the published v{newest}; versions "
                "must increase monotonically"
            )
        record = CheckpointRecord(
            version=manifest.version,
            parent_version=manifest.parent_version or 0,
            sha256=sha256_hex(blob),
            size_bytes=len(blob),
            created_at=time.time(),
            train_step=train_step,
            metrics=dict(metrics or {}),
            republished_from=republished_from,
        )
        final = self.path(record.version)
        temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=self.root))
        try:
            write_synced(temporary / BLOB_NAME, blob)
            write_synced(temporary / MANIFEST_NAME, manifest.to_json().encode())
            if trainer_state is not None:
                save_training_state(temporary, *trainer_state)
            write_synced(temporary / PUBLICATION_NAME, record.to_json().encode())
            fsync_path(temporary)
            os.replace(temporary, final)
            fsync_path(self.root)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        with self._lock:
            self._records[record.version] = record
            stale = [v for v in sorted(self._records)[: -self.keep_last] if v not in self.protected]
            for version in stale:
                del self._records[version]
        for version in stale:
            shutil.rmtree(self.path(version), ignore_errors=True)
        return record

    def describe(self) -> dict[str, Any]:
        latest = self.latest()
        return {"versions": self.versions(), "latest": None if latest is None else asdict(latest)}


def republished(blob: bytes, version: int, extra: dict[str, Any]) -> bytes:
    """`blob`'s policy as version `version` (parent: the version it was), `extra` added to its manifest: how
    an older checkpoint goes back to robots that only take newer versions (a roll-back)."""
    checkpoint = checkpoint_from_bytes(blob, source="checkpoint to republish")
    manifest = checkpoint.manifest
    return checkpoint_to_bytes(
        build_checkpoint(
            checkpoint.tensors,
            policy_type=manifest.policy_type,
            version=version,
            parent_version=manifest.version,
            policy_config=manifest.policy_config,
            normalization=manifest.normalization,
            extra={**manifest.extra, **extra},
        )
    )


def read_checkpoint_blob(path: str | Path) -> bytes:
    """A checkpoint directory or a bare blob file, as bytes."""
    location = Path(path)
    try:
        return (location / BLOB_NAME if location.is_dir() else location).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None


def as_first_version(blob: bytes) -> bytes:
    """A base checkpoint as a publishable v1 (parent 0): versions start at 1 because 0 means "none yet"."""
    checkpoint = checkpoint_from_bytes(blob, source="base checkpoint")
    manifest = checkpoint.manifest
    if manifest.version >= 1:
        return blob
    return checkpoint_to_bytes(
        build_checkpoint(
            checkpoint.tensors,
            policy_type=manifest.policy_type,
            version=1,
            parent_version=0,
            policy_config=manifest.policy_config,
            normalization=manifest.normalization,
            extra={**manifest.extra, "base_version": manifest.version},
        )
    )
