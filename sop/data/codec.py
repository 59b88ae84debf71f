"""The tensor and episode codec: numpy arrays and episodes <-> `sop.v1` protobuf records. No pickle, ever.

A tensor travels as `(dtype, shape, raw little-endian bytes)` (`sop.v1.tensor_pb2.Tensor`); an episode as
one `EpisodeRecord` holding its metadata and one tensor per schema key. The receiving side never interprets
a byte before the dtype is on the whitelist, the rank and size are under the caps and the byte length equals
`prod(shape) * itemsize`; after decoding, the episode is checked against the schema (`sop.episode`).

Public API (the robot client and the cloud learner rely on these names):

    encode_tensor(array, *, field="tensor") -> tensor_pb2.Tensor
        numpy array or torch tensor (moved to CPU, `.numpy()`) -> record; bytes are C-order little-endian.
    decode_tensor(msg, field, *, max_bytes=DEFAULT_MAX_TENSOR_BYTES, require_finite=False) -> np.ndarray
        record -> array. Zero-copy over the message's bytes (`np.frombuffer`): the array is READ-ONLY;
        call `.copy()` before writing into it.
    encode_episode(episode, *, validate=True) -> bytes
        `Episode` -> serialized `EpisodeRecord`.
    decode_episode(data, *, max_bytes=DEFAULT_MAX_EPISODE_BYTES) -> Episode
        serialized `EpisodeRecord` -> validated `Episode` (its step arrays are read-only, see above).
    CodecError(field, reason)
        every rejection; subclasses `sop.episode.EpisodeError` (so `ValueError`), has `.field` and `.reason`,
        and its message names both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from google.protobuf.message import DecodeError

from sop.episode import MAX_EXTRA_CHARS as MAX_EXTRA_CHARS  # the caps live with the schema; re-exported
from sop.episode import MAX_EXTRA_ENTRIES as MAX_EXTRA_ENTRIES
from sop.episode import Episode, EpisodeError, Outcome, Source, check_extra, check_step_key
from sop.v1 import tensor_pb2

# Dtype names on the wire (always little-endian) and the numpy dtype each one decodes to.
WIRE_DTYPES: Final[dict[str, np.dtype]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
MAX_RANK: Final = 8
# One tensor and one whole episode may not exceed these unless the caller raises the cap. Protobuf itself
# refuses messages over 2 GiB, so the episode cap stays below that.
DEFAULT_MAX_TENSOR_BYTES: Final = 1 << 30
DEFAULT_MAX_EPISODE_BYTES: Final = (1 << 31) - (1 << 20)


class CodecError(EpisodeError):
    """A record that cannot be encoded or decoded. `.field` names where, `.reason` says what is wrong.

    Subclasses `EpisodeError` (itself a `ValueError`), so `except EpisodeError` and `except ValueError`
    both catch schema violations and wire-format violations alike.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field

    @classmethod
    def from_episode_error(cls, error: EpisodeError) -> CodecError:
        if isinstance(error, CodecError):
            return error
        return cls(error.field_name, error.reason)


def _as_numpy(array: Any, field: str) -> np.ndarray:
    """Accept numpy arrays, numpy scalars and torch tensors (without importing torch here)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach") and hasattr(array, "numpy"):  # a torch.Tensor
        return np.asarray(array.detach().cpu().numpy())
    if isinstance(array, np.generic | bool | int | float):
        return np.asarray(array)
    raise CodecError(field, f"cannot encode a {type(array).__name__}; expected a numpy array or torch tensor")


def encode_tensor(array: Any, *, field: str = "tensor") -> tensor_pb2.Tensor:
    """Encode an array as `(dtype, shape, raw bytes)`; raise `CodecError` for a dtype off the whitelist."""
    arr = _as_numpy(array, field)
    name = arr.dtype.name
    if name not in WIRE_DTYPES:
        raise CodecError(field, f"dtype {arr.dtype} is not one of {sorted(WIRE_DTYPES)}")
    if arr.ndim > MAX_RANK:
        raise CodecError(field, f"rank {arr.ndim} exceeds {MAX_RANK}")
    wire = WIRE_DTYPES[name]
    if arr.dtype != wire:  # big-endian input: swap to the wire byte order
        arr = arr.astype(wire)
    return tensor_pb2.Tensor(dtype=name, shape=arr.shape, data=np.ascontiguousarray(arr).tobytes())


def decode_tensor(
    msg: tensor_pb2.Tensor,
    field: str,
    *,
    max_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
    require_finite: bool = False,
) -> np.ndarray:
    """Decode a tensor record after checking dtype, rank, size cap and byte length (in that order).

    The result is a read-only view of the message's bytes (no copy); `require_finite` rejects NaN/inf in
    float tensors and `bool` tensors must hold only 0/1 bytes.
    """
    dtype = WIRE_DTYPES.get(msg.dtype)
    if dtype is None:
        raise CodecError(field, f"dtype {msg.dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) > MAX_RANK:
        raise CodecError(field, f"rank {len(shape)} exceeds {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise CodecError(field, f"shape {shape} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on hostile shapes
    if expected > max_bytes:
        raise CodecError(field, f"{expected} bytes exceed the cap of {max_bytes}")
    data = msg.data
    if len(data) != expected:
        raise CodecError(field, f"has {len(data)} bytes, shape {shape} x {dtype.itemsize} needs {expected}")
    if dtype.kind == "b" and expected and np.frombuffer(data, dtype=np.uint8).max() > 1:
        raise CodecError(field, "bool tensor holds bytes other than 0 and 1")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if require_finite and dtype.kind == "f" and not np.isfinite(array).all():
        raise CodecError(field, "contains NaN or infinite values")
    return array


def episode_to_record(episode: Episode, *, validate: bool = True) -> tensor_pb2.EpisodeRecord:
    """The `EpisodeRecord` message for an episode (validated first unless `validate=False`)."""
    if validate:
        try:
            episode.validate()
        except EpisodeError as exc:
            raise CodecError.from_episode_error(exc) from None
    return tensor_pb2.EpisodeRecord(
        episode_id=episode.episode_id,
        robot_id=episode.robot_id,
        task=episode.task,
        instruction=episode.instruction,
        outcome=str(episode.outcome),
        started_at=float(episode.started_at),
        ended_at=float(episode.ended_at),
        source=str(episode.source),
        fps=float(episode.fps),
        steps={key: encode_tensor(value, field=key) for key, value in episode.steps.items()},
        extra=dict(episode.extra),
    )


def encode_episode(episode: Episode, *, validate: bool = True) -> bytes:
    """Serialize a whole episode as one `EpisodeRecord` (what the robot hashes and uploads in chunks)."""
    return episode_to_record(episode, validate=validate).SerializeToString(deterministic=True)


def _check_extra(extra: Mapping[str, str]) -> dict[str, str]:
    try:
        return check_extra(dict(extra))
    except EpisodeError as exc:
        raise CodecError.from_episode_error(exc) from None


def record_to_episode(
    record: tensor_pb2.EpisodeRecord, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> Episode:
    """Decode and validate a parsed `EpisodeRecord`; any problem raises `CodecError` naming the field."""
    try:
        outcome = Outcome(record.outcome)
    except ValueError:
        raise CodecError(
            "outcome", f"{record.outcome!r} is not one of {[o.value for o in Outcome]}"
        ) from None
    try:
        source = Source(record.source)
    except ValueError:
        raise CodecError("source", f"{record.source!r} is not one of {[s.value for s in Source]}") from None
    try:  # a key names a directory in the store: refuse a hostile one before reading its bytes
        for key in record.steps:
            check_step_key(key)
    except EpisodeError as exc:
        raise CodecError.from_episode_error(exc) from None
    steps = {
        key: decode_tensor(tensor, key, max_bytes=max_tensor_bytes) for key, tensor in record.steps.items()
    }
    if not steps:
        raise CodecError("steps", "episode record has no per-step arrays")
    episode = Episode(
        episode_id=record.episode_id,
        robot_id=record.robot_id,
        task=record.task,
        instruction=record.instruction,
        outcome=outcome,
        started_at=record.started_at,
        ended_at=record.ended_at,
        steps=steps,
        source=source,
        fps=record.fps,
        extra=_check_extra(record.extra),
    )
    try:
        episode.validate()
    except EpisodeError as exc:
        raise CodecError.from_episode_error(exc) from None
    return episode


def decode_episode(data: bytes, *, max_bytes: int = DEFAULT_MAX_EPISODE_BYTES) -> Episode:
    """Parse, decode and validate a serialized `EpisodeRecord`; any failure raises `CodecError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("episode", f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CodecError("episode", f"{len(data)} bytes exceed the cap of {max_bytes}")
    record = tensor_pb2.EpisodeRecord()
    try:
        record.ParseFromString(bytes(data) if not isinstance(data, bytes) else data)
    except DecodeError as exc:
        raise CodecError("episode", f"not a valid EpisodeRecord (truncated or corrupt): {exc}") from None
    return record_to_episode(record, max_tensor_bytes=min(max_bytes, DEFAULT_MAX_TENSOR_BYTES))
