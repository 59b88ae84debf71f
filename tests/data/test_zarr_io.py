"""The store's direct zarr I/O must produce and read exactly what zarr-python itself does."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from zarr.codecs import BloscCodec

from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.data.zarr_io import (
    ArrayAppender,
    ArrayReader,
    ArraySpec,
    ZarrLayoutError,
    read_array_spec,
    truncate_array,
    write_array,
)

DTYPES = ["float32", "float64", "int64", "int32", "uint8", "bool"]
FIXTURE = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _arrays() -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
    )


@FIXTURE
@given(values=_arrays(), chunk_steps=st.integers(1, 10), shuffle=st.sampled_from(["shuffle", "noshuffle"]))
def test_zarr_reads_what_we_write(tmp_path: Path, values: np.ndarray, chunk_steps: int, shuffle: str) -> None:
    path = tmp_path / uuid.uuid4().hex
    write_array(path, values, ArraySpec(values.shape, chunk_steps, values.dtype, "zstd", 3, shuffle))
    read_back = zarr.open_array(str(path), mode="r")[...]
    assert read_back.dtype == values.dtype
    assert np.array_equal(read_back, values, equal_nan=values.dtype.kind == "f")


@FIXTURE
@given(values=_arrays(), chunk_steps=st.integers(1, 10), data=st.data())
def test_we_read_what_zarr_writes(
    tmp_path: Path, values: np.ndarray, chunk_steps: int, data: st.DataObject
) -> None:
    path = tmp_path / uuid.uuid4().hex
    array = zarr.create_array(
        str(path),
        shape=values.shape,
        chunks=(chunk_steps, *values.shape[1:]),
        dtype=values.dtype,
        compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        fill_value=np.zeros((), values.dtype).item(),
    )
    array[...] = values
    start = data.draw(st.integers(0, values.shape[0]))
    stop = data.draw(st.integers(start, values.shape[0]))
    got = ArrayReader(path).read(start, stop)
    assert got.flags.writeable
    assert np.array_equal(got, values[start:stop], equal_nan=values.dtype.kind == "f")


def test_appender_grows_in_uneven_blocks_and_truncates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((23, 3)).astype(np.float32)
    appender = ArrayAppender(tmp_path / "a", ArraySpec((0, 3), 4, np.dtype(np.float32)))
    for lo, hi in [(0, 1), (1, 7), (7, 8), (8, 20), (20, 23)]:
        appender.append(values[lo:hi])
        assert np.array_equal(ArrayReader(tmp_path / "a").read_all(), values[:hi])
        assert np.array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], values[:hi])
    spec = truncate_array(tmp_path / "a", 9)
    assert spec.shape == (9, 3) and read_array_spec(tmp_path / "a").shape == (9, 3)
    assert np.array_equal(ArrayReader(tmp_path / "a").read_all(), values[:9])
    assert sorted(p.name for p in (tmp_path / "a").glob("c.*")) == ["c.0.0", "c.1.0", "c.2.0"]
    with pytest.raises(IndexError):
        ArrayReader(tmp_path / "a").read(5, 10)


def test_layouts_outside_the_subset_are_refused(tmp_path: Path) -> None:
    zarr.create_array(str(tmp_path / "grid"), shape=(4, 4), chunks=(2, 2), dtype="float32")
    with pytest.raises(ZarrLayoutError, match="axis 0"):
        ArrayReader(tmp_path / "grid")
    zarr.create_array(str(tmp_path / "f16"), shape=(4,), chunks=(2,), dtype="float16")
    with pytest.raises(ZarrLayoutError, match="float16"):
        ArrayReader(tmp_path / "f16")


def test_zarr_opens_a_stored_episode(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "store", durable=False)
    episode = make_episode(30, image_size=(16, 16), cameras=("top", "wrist"))
    store.append(episode)
    group = zarr.open_group(str(store.root / "episodes" / episode.episode_id), mode="r")
    assert group.attrs["sop_episode"]["task"] == episode.task
    for key, values in episode.steps.items():
        assert np.array_equal(group[key][...], values), key
