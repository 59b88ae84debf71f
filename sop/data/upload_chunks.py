"""Episode uploads in chunks: split a serialized episode into `EpisodeChunk`s and reassemble them safely.

Peers send large payloads in fixed chunks with no id, sequence number or checksum; here every chunk names
its episode, its index, the chunk count and the total size, and the last chunk carries the sha256 of the
whole payload (`sop.hashing.sha256_hex`), so the learner can keep the pieces of an interrupted upload, say
which ones it still needs (`ChunkSet.missing()`, answered by `Fleet.QueryUpload`) and refuse a corrupt or
inconsistent reassembly.

Public API:

    MAX_CHUNK_BYTES = 1 << 20
    split_into_chunks(episode_id, payload, max_chunk_bytes=MAX_CHUNK_BYTES) -> list[fleet_pb2.EpisodeChunk]
    ChunkSet(episode_id=None, *, max_chunk_bytes=MAX_CHUNK_BYTES, max_total_bytes=DEFAULT_MAX_EPISODE_BYTES,
             min_chunk_bytes=1)
        .add(chunk) -> bool        True when new, False for an identical resend; CodecError otherwise
        seq in chunk_set           whether chunk `seq` is held
        .missing() -> list[int]    chunk indices not yet received
        .received_seqs() -> list[int]
        .complete -> bool
        .assemble() -> bytes       checks total_bytes and sha256 (CodecError on mismatch)

A `ChunkSet.add` that raises leaves the set unchanged.

`min_chunk_bytes` is a floor on every chunk but the last: without it a peer could announce a 512 MiB episode in
512 Mi one-byte chunks, and every chunk costs a message, a dict entry and (when staged) a file.
"""

from __future__ import annotations

import math
import re
from typing import Final

from sop.data.codec import DEFAULT_MAX_EPISODE_BYTES, CodecError
from sop.hashing import sha256_hex
from sop.v1 import fleet_pb2

MAX_CHUNK_BYTES: Final = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def split_into_chunks(
    episode_id: str, payload: bytes, max_chunk_bytes: int = MAX_CHUNK_BYTES
) -> list[fleet_pb2.EpisodeChunk]:
    """Cut `payload` into chunks of at most `max_chunk_bytes`; the last one carries the payload's sha256."""
    if not 0 < max_chunk_bytes <= MAX_CHUNK_BYTES:
        raise CodecError("max_chunk_bytes", f"{max_chunk_bytes} is not in 1..{MAX_CHUNK_BYTES}")
    if not payload:
        raise CodecError("payload", "is empty; there is nothing to upload")
    total = len(payload)
    count = math.ceil(total / max_chunk_bytes)
    digest = sha256_hex(payload)
    view = memoryview(payload)
    return [
        fleet_pb2.EpisodeChunk(
            episode_id=episode_id,
            seq=seq,
            total_chunks=count,
            total_bytes=total,
            payload=bytes(view[seq * max_chunk_bytes : (seq + 1) * max_chunk_bytes]),
            sha256=digest if seq == count - 1 else "",
        )
        for seq in range(count)
    ]


class ChunkSet:
    """The chunks received so far for one episode, validated as they arrive.

    The first accepted chunk fixes `episode_id` (unless given), `total_chunks` and `total_bytes`; every
    later chunk must agree. A resend of a chunk with the same bytes is accepted and ignored (an upload that
    resumes after a cut may repeat the chunk in flight); a resend with different bytes is refused.
    """

    def __init__(
        self,
        episode_id: str | None = None,
        *,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        max_total_bytes: int = DEFAULT_MAX_EPISODE_BYTES,
        min_chunk_bytes: int = 1,
    ) -> None:
        if not 0 < min_chunk_bytes <= max_chunk_bytes:
            raise ValueError(f"min_chunk_bytes must be in 1..{max_chunk_bytes}, got {min_chunk_bytes}")
        self.episode_id = episode_id
        self.max_chunk_bytes = max_chunk_bytes
        self.max_total_bytes = max_total_bytes
        self.min_chunk_bytes = min_chunk_bytes
        self.total_chunks: int | None = None
        self.total_bytes: int | None = None
        self.sha256: str | None = None
        self._payloads: dict[int, bytes] = {}
        self._received_bytes = 0

    def _check(self, chunk: fleet_pb2.EpisodeChunk) -> bool:
        """Validate `chunk` against itself and the set; return False for an identical duplicate."""
        if self.episode_id is not None and chunk.episode_id != self.episode_id:
            raise CodecError(
                "episode_id", f"chunk is for {chunk.episode_id!r}, this upload is {self.episode_id!r}"
            )
        if not chunk.episode_id:
            raise CodecError("episode_id", "is empty")
        total_chunks, total_bytes, seq = int(chunk.total_chunks), int(chunk.total_bytes), int(chunk.seq)
        if self.total_chunks is None or self.total_bytes is None:
            if total_bytes <= 0:
                raise CodecError("total_bytes", "must be positive")
            if total_bytes > self.max_total_bytes:
                raise CodecError("total_bytes", f"{total_bytes} exceed the cap of {self.max_total_bytes}")
            least = math.ceil(total_bytes / self.max_chunk_bytes)
            most = math.ceil(total_bytes / self.min_chunk_bytes)
            if not least <= total_chunks <= most:
                raise CodecError(
                    "total_chunks",
                    f"{total_chunks} chunks cannot carry {total_bytes} bytes (need {least}..{most} chunks of "
                    f"{self.min_chunk_bytes}..{self.max_chunk_bytes} bytes, the last one may be smaller)",
                )
        else:
            if total_chunks != self.total_chunks:
                raise CodecError(
                    "total_chunks", f"{total_chunks} disagrees with earlier chunks ({self.total_chunks})"
                )
            if total_bytes != self.total_bytes:
                raise CodecError(
                    "total_bytes", f"{total_bytes} disagrees with earlier chunks ({self.total_bytes})"
                )
        if seq >= total_chunks:
            raise CodecError("seq", f"{seq} is out of range for {total_chunks} chunks")
        size = len(chunk.payload)
        if size > self.max_chunk_bytes:
            raise CodecError("payload", f"{size} bytes exceed the chunk cap of {self.max_chunk_bytes}")
        if size == 0:
            raise CodecError("payload", f"chunk {seq} is empty")
        if size < self.min_chunk_bytes and seq != total_chunks - 1:
            raise CodecError(
                "payload",
                f"chunk {seq} holds {size} bytes, below the minimum chunk size of {self.min_chunk_bytes} "
                "(only the last chunk may be smaller)",
            )
        if chunk.sha256:
            if not _SHA256_HEX.fullmatch(chunk.sha256):
                raise CodecError("sha256", f"{chunk.sha256[:80]!r} is not a lower-case hex sha256")
            if self.sha256 is not None and chunk.sha256 != self.sha256:
                raise CodecError("sha256", "disagrees with the hash sent in an earlier chunk")
        elif seq == total_chunks - 1:
            raise CodecError("sha256", "is required on the last chunk")
        previous = self._payloads.get(seq)
        if previous is not None:
            if previous != chunk.payload:
                raise CodecError("seq", f"chunk {seq} was already received with different bytes")
            return False
        if self._received_bytes + size > total_bytes:
            raise CodecError(
                "payload",
                f"chunks hold more than total_bytes ({self._received_bytes + size} > {total_bytes})",
            )
        return True

    def add(self, chunk: fleet_pb2.EpisodeChunk) -> bool:
        """Accept a chunk: True when it was new, False for an identical resend. `CodecError` otherwise."""
        if not self._check(chunk):
            return False
        self.episode_id = chunk.episode_id
        self.total_chunks = int(chunk.total_chunks)
        self.total_bytes = int(chunk.total_bytes)
        if chunk.sha256:
            self.sha256 = chunk.sha256
        self._payloads[int(chunk.seq)] = chunk.payload
        self._received_bytes += len(chunk.payload)
        return True

    def __contains__(self, seq: object) -> bool:
        return seq in self._payloads

    def received_seqs(self) -> list[int]:
        return sorted(self._payloads)

    def missing(self) -> list[int]:
        """Chunk indices still needed; empty before the first chunk (the count is unknown then)."""
        if self.total_chunks is None:
            return []
        return [seq for seq in range(self.total_chunks) if seq not in self._payloads]

    @property
    def received_bytes(self) -> int:
        return self._received_bytes

    @property
    def complete(self) -> bool:
        return self.total_chunks is not None and len(self._payloads) == self.total_chunks

    def assemble(self) -> bytes:
        """The whole payload, after checking the chunk count, the total size and the sha256."""
        if not self.complete or self.total_chunks is None:
            missing = self.missing()
            raise CodecError("seq", f"upload is incomplete: missing chunks {missing[:16]}")
        payload = b"".join(self._payloads[seq] for seq in range(self.total_chunks))
        if len(payload) != self.total_bytes:
            raise CodecError("total_bytes", f"chunks hold {len(payload)} bytes, expected {self.total_bytes}")
        digest = sha256_hex(payload)
        if digest != self.sha256:
            raise CodecError("sha256", f"payload hashes to {digest}, the upload announced {self.sha256}")
        return payload
