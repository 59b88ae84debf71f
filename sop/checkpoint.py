"""The checkpoint format: one self-describing safetensors blob, the same on disk and on the wire.

A checkpoint is a safetensors file whose header metadata holds the manifest as JSON:

    [8-byte little-endian header length][header JSON: tensor offsets + "__metadata__"][raw tensor bytes]
    __metadata__ = {"format": "sop.checkpoint", "manifest": "<manifest JSON>"}

The manifest names the policy type, its version and parent version, the policy config, the normalization
statistics, the creation time and `weights_sha256`: a hash over the tensors (sorted names, dtype, shape,
bytes), so it does not depend on how safetensors lays the file out. The learner announces the sha256 of the
whole blob; the robot fetches the bytes, checks that hash, then `checkpoint_from_bytes` re-checks the
weights against the manifest. Nothing is ever unpickled.

On disk a checkpoint is a directory holding the blob (`checkpoint.safetensors`) and a copy of its manifest
(`manifest.json`) for people and tools that only want to read metadata; the copy must agree with the blob.
A bare `.safetensors` file in this format loads as well.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from safetensors.torch import save as safetensors_save

from sop.durable_files import write_atomically
from sop.hashing import sha256_hex

FORMAT: Final = "sop.checkpoint"
FORMAT_VERSION: Final = 1
BLOB_NAME: Final = "checkpoint.safetensors"
MANIFEST_NAME: Final = "manifest.json"
# A header larger than this is not one we wrote; refuse it before parsing.
MAX_HEADER_BYTES: Final = 64 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file or field and the problem."""


@dataclass(frozen=True)
class CheckpointManifest:
    """What a checkpoint is, where it came from, and everything besides tensors needed to run it."""

    policy_type: str
    version: int
    parent_version: int | None
    policy_config: dict[str, Any]
    normalization: dict[str, Any]
    weights_sha256: str
    created_at: float
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": self.format_version,
                "policy_type": self.policy_type,
                "version": self.version,
                "parent_version": self.parent_version,
                "created_at": self.created_at,
                "weights_sha256": self.weights_sha256,
                "policy_config": self.policy_config,
                "normalization": self.normalization,
                "extra": self.extra,
            },
            sort_keys=True,
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> CheckpointManifest:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: must be a JSON object")
        if values.get("format") != FORMAT:
            raise CheckpointError(f"{source}: format is {values.get('format')!r}, expected {FORMAT!r}")
        if values.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: format_version {values.get('format_version')!r} is not supported "
                f"(this build reads {FORMAT_VERSION})"
            )
        checks: dict[str, tuple[type, ...]] = {
            "policy_type": (str,),
            "version": (int,),
            "created_at": (int, float),
            "weights_sha256": (str,),
            "policy_config": (dict,),
            "normalization": (dict,),
            "extra": (dict,),
        }
        for name, types in checks.items():
            if name not in values:
                raise CheckpointError(f"{source}: field {name!r} is missing")
            value = values[name]
            if not isinstance(value, types) or isinstance(value, bool):
                raise CheckpointError(f"{source}: field {name!r} has type {type(value).__name__}")
        parent = values.get("parent_version")
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)):
            raise CheckpointError(f"{source}: field 'parent_version' must be an integer or null")
        if values["version"] < 0:
            raise CheckpointError(f"{source}: field 'version' must be >= 0, got {values['version']}")
        digest = values["weights_sha256"]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise CheckpointError(f"{source}: field 'weights_sha256' is not a hex sha256")
        return cls(
            policy_type=values["policy_type"],
            version=values["version"],
            parent_version=parent,
            policy_config=values["policy_config"],
            normalization=values["normalization"],
            weights_sha256=digest,
            created_at=float(values["created_at"]),
            format_version=values["format_version"],
            extra=values["extra"],
        )


@dataclass(frozen=True)
class Checkpoint:
    manifest: CheckpointManifest
    tensors: dict[str, torch.Tensor]


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of the tensors alone (names, dtypes, shapes, bytes), independent of the file layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(b"\0" + str(tensor.dtype).encode() + b"\0" + repr(tuple(tensor.shape)).encode() + b"\0")
        # uint8 view: numpy has no bfloat16, bytes are bytes.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # hashed in place, the GIL released
    return digest.hexdigest()


def build_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    *,
    policy_type: str,
    version: int,
    parent_version: int | None,
    policy_config: dict[str, Any],
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
    created_at: float | None = None,
) -> Checkpoint:
    """A checkpoint with its weights hashed into the manifest; tensors are copied to CPU."""
    cpu = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    manifest = CheckpointManifest(
        policy_type=policy_type,
        version=int(version),
        parent_version=None if parent_version is None else int(parent_version),
        policy_config=dict(policy_config),
        normalization=dict(normalization),
        weights_sha256=weights_sha256(cpu),
        created_at=time.time() if created_at is None else float(created_at),
        extra=dict(extra or {}),
    )
    # Round-trip through JSON now so an unserialisable config fails at save time, not on a robot.
    CheckpointManifest.from_json(manifest.to_json())
    return Checkpoint(manifest=manifest, tensors=cpu)


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    """The one byte string that is stored, broadcast and verified."""
    metadata = {"format": FORMAT, "manifest": checkpoint.manifest.to_json()}
    return safetensors_save(checkpoint.tensors, metadata=metadata)


def _read_header(blob: bytes, source: str) -> dict[str, Any]:
    if len(blob) < 8:
        raise CheckpointError(f"{source}: {len(blob)} bytes is too short for a safetensors header")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(blob):
        raise CheckpointError(
            f"{source}: header length {length} does not fit a {len(blob)}-byte file (truncated?)"
        )
    try:
        header = json.loads(blob[8 : 8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: safetensors header is not a JSON object")
    return header


# safetensors dtype names -> torch dtypes (the ones a checkpoint may hold).
_DTYPES: Final = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _read_tensors(blob: bytes, header: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors blob, checked as strictly as safetensors checks them (known dtypes,
    shapes that match their byte ranges, ranges that tile the data section with no gap or overlap).

    Each tensor is copied out of the blob by torch, which releases the GIL while it copies; safetensors'
    own loader holds it for the whole blob (~5 ms for a 19 MB checkpoint on a 2 GHz core), and a robot
    loads checkpoints on a background thread while its control thread must wake every few milliseconds.
    """
    (length,) = struct.unpack("<Q", blob[:8])
    data = memoryview(blob)[8 + length :]

    def refused(name: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: tensors cannot be read: {name[:80]!r}: {why}")

    ranges: list[tuple[int, int, str]] = []
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise refused(name, "its header entry is not an object")
        dtype = _DTYPES.get(str(info.get("dtype")))
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if dtype is None:
            raise refused(name, f"dtype {str(info.get('dtype'))[:20]!r} unknown")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise refused(name, "shape is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= len(data)
        ):
            raise refused(name, "data_offsets outside the data section")
        numel = math.prod(shape)
        begin, end = offsets
        if end - begin != numel * torch.empty((), dtype=dtype).element_size():
            raise refused(name, f"{end - begin} bytes for shape {shape} of {info['dtype']}")
        ranges.append((begin, end, name))
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer": the view is copied at once
            view = torch.frombuffer(data, dtype=dtype, count=numel, offset=begin)
        tensors[name] = view.reshape(shape).clone()
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise refused(name, "its bytes overlap or leave a gap")
        position = end
    if position != len(data):
        raise CheckpointError(
            f"{source}: tensors cannot be read: {len(data) - position} bytes after the last one"
        )
    return tensors


def read_manifest_from_bytes(blob: bytes, source: str = "checkpoint") -> CheckpointManifest:
    """The manifest alone, without touching the tensors (cheap; no hash check)."""
    metadata = _read_header(blob, source).get("__metadata__")
    if not isinstance(metadata, dict) or "manifest" not in metadata:
        raise CheckpointError(f"{source}: no manifest in the safetensors metadata; not an SOP checkpoint")
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{source}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    return CheckpointManifest.from_json(metadata["manifest"], source=f"{source} manifest")


def checkpoint_from_bytes(
    blob: bytes, expected_sha256: str | None = None, source: str = "checkpoint"
) -> Checkpoint:
    """Verify and decode a blob: the announced hash (when given), the manifest, then the weights hash."""
    if expected_sha256 is not None:
        actual = sha256_hex(blob)
        if actual != expected_sha256.lower():
            raise CheckpointError(f"{source}: sha256 {actual} does not match the announced {expected_sha256}")
    manifest = read_manifest_from_bytes(blob, source)
    tensors = _read_tensors(blob, _read_header(blob, source), source)
    actual_weights = weights_sha256(tensors)
    if actual_weights != manifest.weights_sha256:
        raise CheckpointError(
            f"{source}: weights sha256 {actual_weights} does not match the manifest's "
            f"{manifest.weights_sha256}; the file was altered or corrupted"
        )
    return Checkpoint(manifest=manifest, tensors=tensors)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write `path/checkpoint.safetensors` and `path/manifest.json`; returns the directory."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # Durable, and owner-only as these files have always been written.
    write_atomically(directory / BLOB_NAME, checkpoint_to_bytes(checkpoint), durable=True, private=True)
    write_atomically(
        directory / MANIFEST_NAME, checkpoint.manifest.to_json().encode(), durable=True, private=True
    )
    return directory


def _blob_path(path: Path) -> Path:
    if path.is_dir():
        blob = path / BLOB_NAME
        if not blob.is_file():
            raise CheckpointError(f"{path}: no {BLOB_NAME} in this checkpoint directory")
        return blob
    if path.is_file():
        return path
    raise CheckpointError(f"{path}: no such checkpoint file or directory")


def _check_manifest_copy(path: Path, manifest: CheckpointManifest) -> None:
    copy_path = path / MANIFEST_NAME
    if not copy_path.is_file():
        raise CheckpointError(f"{copy_path}: manifest is missing from the checkpoint directory")
    copy = CheckpointManifest.from_json(copy_path.read_text(), source=str(copy_path))
    if copy != manifest:
        raise CheckpointError(f"{copy_path}: disagrees with the manifest inside {BLOB_NAME}")


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint directory (or bare blob file)."""
    location = Path(path)
    blob_path = _blob_path(location)
    checkpoint = checkpoint_from_bytes(blob_path.read_bytes(), expected_sha256, source=str(blob_path))
    if location.is_dir():
        _check_manifest_copy(location, checkpoint.manifest)
    return checkpoint


def read_manifest(path: str | Path) -> CheckpointManifest:
    """The manifest of a checkpoint on disk without reading its tensors."""
    blob_path = _blob_path(Path(path))
    with blob_path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{blob_path}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(f"{blob_path}: header length {length} is implausible")
        header = prefix + handle.read(length)
    return read_manifest_from_bytes(header, source=str(blob_path))
