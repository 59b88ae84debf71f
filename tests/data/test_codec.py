from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sop.data.codec import (
    WIRE_DTYPES,
    CodecError,
    decode_episode,
    decode_tensor,
    encode_episode,
    encode_tensor,
    episode_to_record,
)
from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, INTERVENTION, STATE, EpisodeError, Outcome, Source
from sop.v1 import tensor_pb2

DTYPES = [np.dtype(name) for name in WIRE_DTYPES]


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_tensor_round_trip_is_exact(array: np.ndarray) -> None:
    decoded = decode_tensor(encode_tensor(array), "x")
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # bitwise, NaN payloads included


def test_decoded_tensor_is_a_read_only_view() -> None:
    decoded = decode_tensor(encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)), "x")
    assert not decoded.flags.writeable
    with pytest.raises(ValueError):
        decoded[0, 0] = 1.0


def test_torch_tensor_and_non_contiguous_and_big_endian_inputs() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert np.array_equal(decode_tensor(encode_tensor(t), "t"), t.numpy())
    strided = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]
    assert np.array_equal(decode_tensor(encode_tensor(strided), "s"), strided)
    big = np.arange(5, dtype=">f4")
    msg = encode_tensor(big)
    assert msg.dtype == "float32"
    assert msg.data == np.arange(5, dtype="<f4").tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.complex64, np.uint16, object])
def test_encode_rejects_dtype_off_whitelist(dtype: type) -> None:
    with pytest.raises(CodecError) as info:
        encode_tensor(np.zeros(3, dtype=dtype), field="observation.state")
    assert info.value.field == "observation.state"
    assert "observation.state" in str(info.value) and "dtype" in str(info.value)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (tensor_pb2.Tensor(dtype="float16", shape=[2], data=b"\0" * 4), "dtype"),
        (tensor_pb2.Tensor(dtype="object", shape=[1], data=b"\0" * 8), "dtype"),
        (tensor_pb2.Tensor(dtype="float32", shape=[3], data=b"\0" * 8), "bytes"),
        (tensor_pb2.Tensor(dtype="float32", shape=[2, -1], data=b""), "negative"),
        (tensor_pb2.Tensor(dtype="uint8", shape=[1] * 9, data=b"\0"), "rank"),
        (tensor_pb2.Tensor(dtype="uint8", shape=[1 << 40, 1 << 40], data=b""), "cap"),
        (tensor_pb2.Tensor(dtype="bool", shape=[2], data=b"\x00\x07"), "bool"),
    ],
)
def test_decode_rejects_malformed_tensor(msg: tensor_pb2.Tensor, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        decode_tensor(msg, "action")
    assert info.value.field == "action"
    assert reason in info.value.reason
    assert str(info.value).startswith("action: ")


def test_decode_size_cap_and_finite_check() -> None:
    msg = encode_tensor(np.zeros(100, np.float32))
    with pytest.raises(CodecError, match="cap of 399"):
        decode_tensor(msg, "x", max_bytes=399)
    assert decode_tensor(msg, "x", max_bytes=400).shape == (100,)
    nan = encode_tensor(np.array([1.0, np.nan], np.float32))
    assert np.isnan(decode_tensor(nan, "x")[1])
    with pytest.raises(CodecError, match="NaN"):
        decode_tensor(nan, "x", require_finite=True)


def assert_episodes_equal(a, b) -> None:  # type: ignore[no-untyped-def]
    for name in ("episode_id", "robot_id", "task", "instruction", "outcome", "source", "extra"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("started_at", "ended_at", "fps"):
        assert getattr(a, name) == getattr(b, name), name
    assert sorted(a.steps) == sorted(b.steps)
    for key in a.steps:
        assert a.steps[key].dtype == b.steps[key].dtype, key
        assert np.array_equal(a.steps[key], b.steps[key]), key


@settings(max_examples=30, deadline=None)
@given(
    num_steps=st.integers(1, 40),
    state_dim=st.integers(1, 12),
    action_dim=st.integers(1, 7),
    cameras=st.lists(st.sampled_from(["top", "wrist", "side"]), unique=True, max_size=2),
    seed=st.integers(0, 2**31),
    outcome=st.sampled_from(list(Outcome)),
    source=st.sampled_from(list(Source)),
    extra=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_episode_round_trip(
    num_steps: int,
    state_dim: int,
    action_dim: int,
    cameras: list[str],
    seed: int,
    outcome: Outcome,
    source: Source,
    extra: dict[str, str],
) -> None:
    episode = make_episode(
        num_steps,
        state_dim=state_dim,
        action_dim=action_dim,
        cameras=cameras,
        seed=seed,
        outcome=outcome,
        source=source,
        image_size=(4, 6),
    )
    episode.extra = extra
    rng = np.random.default_rng(seed)
    episode.steps[INTERVENTION] = rng.random(num_steps) < 0.3
    assert_episodes_equal(decode_episode(encode_episode(episode)), episode)


def _encoded_with(mutate) -> bytes:  # type: ignore[no-untyped-def]
    record = episode_to_record(make_episode(6))
    mutate(record)
    return record.SerializeToString()


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda r: r.steps.__delitem__(ACTION), ACTION, "missing"),
        (lambda r: r.steps[STATE].CopyFrom(encode_tensor(np.zeros((6, 39), np.float64))), STATE, "dtype"),
        # Map order on the wire is unspecified, so either side of the step-count mismatch may be named.
        (lambda r: r.steps[STATE].CopyFrom(encode_tensor(np.zeros((5, 39), np.float32))), "*", "steps"),
        (
            lambda r: r.steps[ACTION].CopyFrom(encode_tensor(np.full((6, 4), np.nan, np.float32))),
            ACTION,
            "NaN",
        ),
        (lambda r: r.steps[ACTION].shape.__setitem__(0, 7), ACTION, "bytes"),
        (
            lambda r: r.steps["observation.weird"].CopyFrom(encode_tensor(np.zeros(6, np.float32))),
            "'observation.weird'",  # a key the client made up is named quoted (safe_logging.client_str)
            "schema",
        ),
        (
            lambda r: r.steps["observation.images.x/../../../../outside"].CopyFrom(
                encode_tensor(np.zeros((6, 8, 8, 3), np.uint8))
            ),
            "'observation.images.x/../../../../outside'",
            "camera name",
        ),
        (
            lambda r: r.steps["observation.images.top\n"].CopyFrom(
                encode_tensor(np.zeros((6, 8, 8, 3), np.uint8))
            ),
            "'observation.images.top\\u000a'",  # control characters escaped, never raw in a message
            "camera name",
        ),
        (lambda r: setattr(r, "outcome", "won"), "outcome", "not one of"),
        (lambda r: setattr(r, "source", ""), "source", "not one of"),
        (lambda r: setattr(r, "episode_id", "not-a-uuid"), "episode_id", "UUID"),
        (lambda r: setattr(r, "ended_at", float("nan")), "ended_at", "finite"),
    ],
)
def test_decode_episode_rejects_malformed(mutate, field: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodecError) as info:
        decode_episode(_encoded_with(mutate))
    if field != "*":
        assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{info.value.field}: ")


def test_decode_episode_rejects_truncated_oversize_and_garbage() -> None:
    data = encode_episode(make_episode(6))
    for cut in (1, 7, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError):
            decode_episode(data[:cut])
    with pytest.raises(CodecError, match="cap"):
        decode_episode(data, max_bytes=len(data) - 1)
    with pytest.raises(CodecError, match="EpisodeRecord"):
        decode_episode(b"\xff" * 64)


def test_codec_error_is_caught_as_value_error_and_episode_error() -> None:
    bad = make_episode(4)
    bad.steps[ACTION] = bad.steps[ACTION].astype(np.float64)
    with pytest.raises(ValueError):
        encode_episode(bad)
    with pytest.raises(EpisodeError) as info:
        encode_episode(bad)
    assert isinstance(info.value, CodecError)
    assert info.value.field == ACTION and info.value.field_name == ACTION
