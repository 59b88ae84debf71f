"""Direct, synchronous reads and writes of the zarr 3 arrays and groups the episode store is made of.

Why not zarr-python's Array API: every call goes through zarr's asyncio event loop thread, which costs about
1 ms per read here, against ~40 us to decode the same Blosc chunk directly; window sampling reads one small
slice per window, so that overhead would be the whole cost. The files written here follow the zarr v3
specification exactly (`zarr.json` metadata, regular chunk grid, default chunk keys with the "." separator,
`c.<i>.0...`, so chunk files sit side by side instead of one directory per chunk (mkdir is the dearest call
when writing here), `bytes` then `blosc` codecs, edge chunks stored at full chunk size), so `zarr.open_group(<episode dir>)` reads every
episode (tests check this against zarr itself). Only the subset the store writes is supported: chunking along
axis 0 only, little-endian, Blosc-compressed, dtypes of the episode schema.

    ArraySpec(shape, chunk_steps, dtype, cname="zstd", clevel=3, shuffle="shuffle")
    write_array(array_dir, values, spec)                 whole array (staging directory: plain writes)
    ArrayAppender(array_dir, spec)  .append(block)       grow along axis 0; every file replaced atomically
    ArrayReader(array_dir)  .read(start, stop)  .read_all()
    truncate_array(array_dir, length)                    shrink (recovery of a crashed recording)
    write_group(group_dir, attributes)   read_group_attributes(group_dir)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from numcodecs import blosc

from sop.durable_files import write_atomically

METADATA_FILE: Final = "zarr.json"
SUPPORTED_DTYPES: Final = frozenset({"float32", "float64", "int64", "int32", "uint8", "bool"})
_SHUFFLES: Final = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}


class ZarrLayoutError(ValueError):
    """A zarr.json outside the subset the episode store writes (or not valid at all)."""


@dataclass(frozen=True)
class ArraySpec:
    """Shape, chunking along time and compression of one per-step array."""

    shape: tuple[int, ...]
    chunk_steps: int
    dtype: np.dtype
    cname: str = "zstd"
    clevel: int = 3
    shuffle: str = "shuffle"
    separator: str = "."  # "/" only for arrays written with zarr-python's defaults

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return (self.chunk_steps, *self.shape[1:])

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_steps)

    def with_length(self, length: int) -> ArraySpec:
        return replace(self, shape=(length, *self.shape[1:]))

    def metadata(self) -> dict[str, Any]:
        bytes_codec: dict[str, Any] = {"name": "bytes"}
        if self.dtype.itemsize > 1:
            bytes_codec["configuration"] = {"endian": "little"}
        return {
            "shape": list(self.shape),
            "data_type": self.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(self.chunk_shape)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": self.separator}},
            "fill_value": np.zeros((), self.dtype).item(),
            "codecs": [
                bytes_codec,
                {
                    "name": "blosc",
                    "configuration": {
                        "typesize": self.dtype.itemsize,
                        "cname": self.cname,
                        "clevel": self.clevel,
                        "shuffle": self.shuffle,
                        "blocksize": 0,
                    },
                },
            ],
            "attributes": {},
            "zarr_format": 3,
            "node_type": "array",
            "storage_transformers": [],
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], where: str) -> ArraySpec:
        try:
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
                raise ZarrLayoutError(f"{where}: not a zarr 3 array")
            dtype_name = meta["data_type"]
            if dtype_name not in SUPPORTED_DTYPES:
                raise ZarrLayoutError(f"{where}: data_type {dtype_name!r} is not supported")
            shape = tuple(int(d) for d in meta["shape"])
            chunks = tuple(int(d) for d in meta["chunk_grid"]["configuration"]["chunk_shape"])
            if meta["chunk_grid"]["name"] != "regular" or chunks[1:] != shape[1:] or not shape:
                raise ZarrLayoutError(f"{where}: only chunking along axis 0 is supported, got {chunks}")
            encoding = meta["chunk_key_encoding"]
            separator = encoding.get("configuration", {}).get("separator", "/")
            if encoding["name"] != "default" or separator not in (".", "/"):
                raise ZarrLayoutError(f"{where}: chunk key encoding must be 'default', got {encoding}")
            codecs = meta["codecs"]
            if [c["name"] for c in codecs] != ["bytes", "blosc"]:
                raise ZarrLayoutError(f"{where}: codecs must be bytes then blosc, got {codecs}")
            if codecs[0].get("configuration", {}).get("endian", "little") != "little":
                raise ZarrLayoutError(f"{where}: only little-endian arrays are supported")
            config = codecs[1]["configuration"]
            fill = meta.get("fill_value", 0)
            if fill not in (0, False):
                raise ZarrLayoutError(f"{where}: fill_value must be zero, got {fill!r}")
            return cls(
                shape=shape,
                chunk_steps=chunks[0],
                dtype=np.dtype(dtype_name),
                cname=str(config["cname"]),
                clevel=int(config["clevel"]),
                shuffle=str(config["shuffle"]),
                separator=separator,
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ZarrLayoutError(f"{where}: malformed zarr.json ({exc!r})") from None


def _write_file(path: Path, data: bytes | memoryview, *, atomic: bool) -> None:
    """Plain write inside a staging directory; temporary name + rename where a reader may be looking.

    Never fsynced here: the episode store makes a whole group durable at once before publishing it.
    """
    if not atomic:
        with open(path, "wb") as f:
            f.write(data)
        return
    write_atomically(path, data, durable=False)


def _write_json(path: Path, data: dict[str, Any], *, atomic: bool) -> None:
    _write_file(path, json.dumps(data).encode(), atomic=atomic)


def _chunk_path(array_dir: Path, spec: ArraySpec, index: int) -> Path:
    return array_dir / spec.separator.join(["c", str(index), *("0" for _ in spec.shape[1:])])


def _encode_chunk(spec: ArraySpec, block: np.ndarray) -> bytes:
    """Blosc-compress one chunk, padded with zeros to the full chunk shape (zarr stores edge chunks whole)."""
    if block.shape[0] < spec.chunk_steps:
        padded = np.zeros(spec.chunk_shape, spec.dtype)
        padded[: block.shape[0]] = block
        block = padded
    block = np.ascontiguousarray(block, dtype=spec.dtype.newbyteorder("<"))
    return blosc.compress(
        block, spec.cname.encode(), spec.clevel, _SHUFFLES[spec.shuffle], 0, spec.dtype.itemsize
    )


def _write_chunks(
    array_dir: Path, spec: ArraySpec, values: np.ndarray, first_chunk: int, *, atomic: bool
) -> int:
    """Write `values` as chunks first_chunk, first_chunk + 1, ... (values start at a chunk boundary).

    Returns the bytes written.
    """
    steps = spec.chunk_steps
    written = 0
    for offset in range(0, values.shape[0], steps):
        encoded = _encode_chunk(spec, values[offset : offset + steps])
        _write_file(_chunk_path(array_dir, spec, first_chunk + offset // steps), encoded, atomic=atomic)
        written += len(encoded)
    return written


def write_array(array_dir: Path, values: np.ndarray, spec: ArraySpec) -> int:
    """Write a whole array into a fresh directory (not atomic per file: the caller stages and renames).

    Returns the bytes written.
    """
    array_dir.mkdir(parents=True)
    metadata = json.dumps(spec.metadata()).encode()
    _write_file(array_dir / METADATA_FILE, metadata, atomic=False)
    return len(metadata) + _write_chunks(array_dir, spec, values, 0, atomic=False)


def write_group(group_dir: Path, attributes: dict[str, Any], *, atomic: bool = True) -> None:
    group_dir.mkdir(parents=True, exist_ok=True)
    _write_json(
        group_dir / METADATA_FILE,
        {"attributes": attributes, "zarr_format": 3, "node_type": "group"},
        atomic=atomic,
    )


def read_group_attributes(group_dir: Path) -> dict[str, Any]:
    with open(group_dir / METADATA_FILE, "rb") as f:
        meta = json.loads(f.read())
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise ZarrLayoutError(f"{group_dir}: not a zarr 3 group")
    attributes = meta.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ZarrLayoutError(f"{group_dir}: group attributes are not a mapping")
    return attributes


def read_array_spec(array_dir: Path) -> ArraySpec:
    with open(array_dir / METADATA_FILE, "rb") as f:
        meta = json.loads(f.read())
    return ArraySpec.from_metadata(meta, str(array_dir))


class ArrayReader:
    """Reads slices along axis 0, decompressing only the chunks that hold them.

    zarr reads a chunk that was never written as the fill value. The store writes every chunk, so for it a
    missing chunk means the episode was deleted under the reader: `strict=True` raises FileNotFoundError
    then instead of handing out zeros.
    """

    def __init__(self, array_dir: Path, *, strict: bool = False) -> None:
        self.array_dir = array_dir
        self.spec = read_array_spec(array_dir)
        self.strict = strict
        # Chunk paths as plain strings: pathlib costs more than the decompression of a small chunk.
        self._prefix = os.path.join(str(array_dir), "c") + self.spec.separator
        self._suffix = "".join(self.spec.separator + "0" for _ in self.spec.shape[1:])

    @property
    def length(self) -> int:
        return self.spec.shape[0]

    def _decode_into(self, index: int, out: np.ndarray) -> None:
        """Decode chunk `index` into `out` (a C-contiguous array of the full chunk shape); zeros if absent."""
        try:
            with open(f"{self._prefix}{index}{self._suffix}", "rb", buffering=0) as f:
                data = f.readall()
        except FileNotFoundError:
            if self.strict:
                raise
            out[...] = 0  # zarr semantics: a chunk never written holds the fill value
            return
        blosc.decompress(data, out)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop (0 <= start <= stop <= length) as a new writable array."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.array_dir}: rows {start}:{stop} outside 0:{self.length}")
        spec = self.spec
        steps = spec.chunk_steps
        out = np.empty((stop - start, *spec.shape[1:]), spec.dtype)
        scratch: np.ndarray | None = None
        row = start
        while row < stop:
            index = row // steps
            chunk_start = index * steps
            take_stop = min(stop, chunk_start + steps)
            if row == chunk_start and take_stop == chunk_start + steps:
                self._decode_into(index, out[row - start : take_stop - start])
            else:
                if scratch is None:
                    scratch = np.empty(spec.chunk_shape, spec.dtype)
                self._decode_into(index, scratch)
                out[row - start : take_stop - start] = scratch[row - chunk_start : take_stop - chunk_start]
            row = take_stop
        return out

    def read_all(self) -> np.ndarray:
        return self.read(0, self.length)


class ArrayAppender:
    """Grows an array along axis 0, crash-safe for readers of the rows already written.

    Each chunk file and the metadata are replaced atomically, the chunks before the metadata, so at any
    instant the files describe a prefix of what was appended (a reader may see a shorter array, never a torn
    one). The partially filled last chunk is kept in memory and rewritten whole on the next append.
    """

    def __init__(self, array_dir: Path, spec: ArraySpec) -> None:
        self.array_dir = array_dir
        self.spec = spec.with_length(0)
        self._tail = np.empty((0, *spec.shape[1:]), spec.dtype)
        array_dir.mkdir(parents=True)
        _write_json(array_dir / METADATA_FILE, self.spec.metadata(), atomic=True)

    @property
    def length(self) -> int:
        return self.spec.shape[0]

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.spec.shape[1:]:
            raise ValueError(f"{self.array_dir}: block shape {block.shape} does not fit {self.spec.shape}")
        steps = self.spec.chunk_steps
        pending = np.concatenate([self._tail, block.astype(self.spec.dtype, copy=False)])
        first_chunk = (self.length - len(self._tail)) // steps
        _write_chunks(self.array_dir, self.spec, pending, first_chunk, atomic=True)
        self.spec = self.spec.with_length(self.length + block.shape[0])
        _write_json(self.array_dir / METADATA_FILE, self.spec.metadata(), atomic=True)
        keep = len(pending) % steps
        self._tail = pending[len(pending) - keep :].copy() if keep else pending[:0].copy()


def truncate_array(array_dir: Path, length: int) -> ArraySpec:
    """Shrink an array to `length` rows (drop chunks past the end); returns the new spec."""
    spec = read_array_spec(array_dir)
    if length > spec.shape[0]:
        raise ValueError(f"{array_dir}: cannot truncate {spec.shape[0]} rows to {length}")
    new = spec.with_length(length)
    _write_json(array_dir / METADATA_FILE, new.metadata(), atomic=True)
    for index in range(new.num_chunks, spec.num_chunks):
        _chunk_path(array_dir, spec, index).unlink(missing_ok=True)
        if spec.separator == "/":  # zarr-python's nested layout: drop the emptied directories too
            shutil.rmtree(array_dir / "c" / str(index), ignore_errors=True)
    return new
