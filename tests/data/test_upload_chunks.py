from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sop.data.codec import CodecError, decode_episode, encode_episode
from sop.data.synthetic_episodes import make_episode
from sop.data.upload_chunks import MAX_CHUNK_BYTES, ChunkSet, split_into_chunks
from sop.hashing import sha256_hex
from sop.v1 import fleet_pb2

EPISODE_ID = "0b1f2a6e-0d7a-4f5e-9b1c-2f3a4b5c6d7e"


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=3000),
    chunk_bytes=st.integers(1, 700),
    order_seed=st.randoms(use_true_random=False),
)
def test_split_and_reassemble_in_any_order_with_resends(payload: bytes, chunk_bytes: int, order_seed) -> None:  # type: ignore[no-untyped-def]
    chunks = split_into_chunks(EPISODE_ID, payload, chunk_bytes)
    assert all(len(c.payload) <= chunk_bytes for c in chunks)
    assert {c.total_chunks for c in chunks} == {len(chunks)}
    assert {c.total_bytes for c in chunks} == {len(payload)}
    assert chunks[-1].sha256 == sha256_hex(payload)
    shuffled = list(chunks)
    order_seed.shuffle(shuffled)
    received = ChunkSet(EPISODE_ID, max_chunk_bytes=chunk_bytes)
    for chunk in shuffled[: len(shuffled) // 2]:
        assert received.add(chunk)
        assert received.add(chunk) is False  # identical resend is harmless
    assert received.complete == (len(shuffled) // 2 == len(chunks))
    for chunk in shuffled[len(shuffled) // 2 :]:
        received.add(chunk)
    assert received.complete and received.missing() == []
    assert received.assemble() == payload


def test_missing_reports_what_a_resumed_upload_must_send() -> None:
    chunks = split_into_chunks(EPISODE_ID, bytes(range(250)) * 10, 100)
    received = ChunkSet()
    assert received.missing() == []
    for seq in (0, 3, 24):
        received.add(chunks[seq])
    assert received.received_seqs() == [0, 3, 24]
    assert received.missing() == [s for s in range(25) if s not in (0, 3, 24)]
    with pytest.raises(CodecError, match="incomplete"):
        received.assemble()


def test_real_episode_survives_chunking() -> None:
    episode = make_episode(40, image_size=(64, 64))
    data = encode_episode(episode)
    received = ChunkSet(episode.episode_id, max_chunk_bytes=MAX_CHUNK_BYTES)
    for chunk in split_into_chunks(episode.episode_id, data, 64 * 1024):
        received.add(chunk)
    assert decode_episode(received.assemble()).episode_id == episode.episode_id


def _chunk(**fields) -> fleet_pb2.EpisodeChunk:  # type: ignore[no-untyped-def]
    base = {"episode_id": EPISODE_ID, "seq": 0, "total_chunks": 2, "total_bytes": 8, "payload": b"abcd"}
    base.update(fields)
    return fleet_pb2.EpisodeChunk(**base)


@pytest.mark.parametrize(
    ("first", "bad", "field"),
    [
        (None, _chunk(seq=2), "seq"),
        (None, _chunk(total_chunks=0), "total_chunks"),
        (None, _chunk(total_bytes=0), "total_bytes"),
        (None, _chunk(total_chunks=20, total_bytes=8), "total_chunks"),
        (None, _chunk(seq=1, sha256=""), "sha256"),
        (None, _chunk(sha256="XYZ"), "sha256"),
        (None, _chunk(episode_id="11111111-0d7a-4f5e-9b1c-2f3a4b5c6d7e"), "episode_id"),
        (None, _chunk(payload=b"x" * 17, total_bytes=40, total_chunks=3), "payload"),
        (_chunk(), _chunk(total_chunks=3, total_bytes=8), "total_chunks"),
        (_chunk(), _chunk(total_bytes=9), "total_bytes"),
        (_chunk(), _chunk(payload=b"abce"), "seq"),
        (_chunk(), _chunk(seq=1, payload=b"abcde", sha256="0" * 64), "payload"),
        (_chunk(seq=1, sha256="0" * 64), _chunk(seq=0, sha256="1" * 64), "sha256"),
    ],
)
def test_bad_chunks_are_refused_and_change_nothing(
    first: fleet_pb2.EpisodeChunk | None, bad: fleet_pb2.EpisodeChunk, field: str
) -> None:
    received = ChunkSet(EPISODE_ID, max_chunk_bytes=16)
    if first is not None:
        received.add(first)
    before = (received.received_seqs(), received.total_chunks, received.total_bytes, received.sha256)
    with pytest.raises(CodecError) as info:
        received.add(bad)
    assert info.value.field == field
    assert field in str(info.value)
    assert (received.received_seqs(), received.total_chunks, received.total_bytes, received.sha256) == before


def test_assemble_detects_a_wrong_hash() -> None:
    chunks = split_into_chunks(EPISODE_ID, b"hello world", 4)
    chunks[1].payload = b"HELL"[: len(chunks[1].payload)]
    received = ChunkSet(EPISODE_ID, max_chunk_bytes=4)
    for chunk in chunks:
        received.add(chunk)
    with pytest.raises(CodecError) as info:
        received.assemble()
    assert info.value.field == "sha256"


def test_split_rejects_empty_payload_and_oversize_chunks() -> None:
    with pytest.raises(CodecError, match="payload"):
        split_into_chunks(EPISODE_ID, b"")
    with pytest.raises(CodecError, match="max_chunk_bytes"):
        split_into_chunks(EPISODE_ID, b"x", MAX_CHUNK_BYTES + 1)


def test_chunks_below_the_minimum_are_refused_except_the_last() -> None:
    payload = bytes(range(10))
    received = ChunkSet(EPISODE_ID, max_chunk_bytes=8, min_chunk_bytes=4)
    small = split_into_chunks(EPISODE_ID, payload, 3)  # 3 + 3 + 3 + 1: below the minimum
    with pytest.raises(CodecError) as info:
        received.add(small[0])
    assert info.value.field == "total_chunks"  # 4 chunks cannot carry 10 bytes in chunks of 4..8
    same_count = _chunk(seq=0, total_chunks=3, total_bytes=10, payload=b"abc")
    with pytest.raises(CodecError, match="minimum chunk size of 4") as info:
        received.add(same_count)
    assert info.value.field == "payload" and received.received_seqs() == []
    for chunk in split_into_chunks(EPISODE_ID, payload, 4):  # 4 + 4 + 2: only the last one is smaller
        assert received.add(chunk)
    assert received.assemble() == payload
    assert 2 in received and 3 not in received
    with pytest.raises(ValueError, match="min_chunk_bytes"):
        ChunkSet(max_chunk_bytes=4, min_chunk_bytes=5)
