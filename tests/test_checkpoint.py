"""The checkpoint format: round trips, and refusal of anything tampered with, truncated or incomplete."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from sop.checkpoint import (
    BLOB_NAME,
    MANIFEST_NAME,
    CheckpointError,
    build_checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from sop.hashing import sha256_hex


def _checkpoint(version: int = 3):
    tensors = {
        "layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "layer.bias": torch.ones(3),
    }
    return build_checkpoint(
        tensors,
        policy_type="diffusion",
        version=version,
        parent_version=version - 1,
        policy_config={"state_dim": 39, "down_dims": [64, 128]},
        normalization={"action": {"min": [-1.0], "max": [1.0], "mean": [0.0], "std": [0.5], "count": 10}},
        extra={"training_step": 100},
    )


def test_blob_round_trip_keeps_tensors_and_manifest() -> None:
    checkpoint = _checkpoint()
    blob = checkpoint_to_bytes(checkpoint)
    loaded = checkpoint_from_bytes(blob, expected_sha256=sha256_hex(blob))
    assert loaded.manifest == checkpoint.manifest
    assert loaded.manifest.version == 3 and loaded.manifest.parent_version == 2
    for name, tensor in checkpoint.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)


def test_blob_is_a_plain_safetensors_file_with_the_manifest_in_its_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "blob.safetensors"
    path.write_bytes(checkpoint_to_bytes(_checkpoint()))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert set(handle.keys()) == {"layer.weight", "layer.bias"}
    assert metadata["format"] == "sop.checkpoint"
    assert json.loads(metadata["manifest"])["version"] == 3
    assert load_checkpoint(path).manifest.version == 3  # a bare blob loads too


def test_directory_round_trip_and_manifest_copy(tmp_path: Path) -> None:
    checkpoint = _checkpoint()
    directory = save_checkpoint(checkpoint, tmp_path / "ckpt")
    assert (
        json.loads((directory / MANIFEST_NAME).read_text())["weights_sha256"]
        == checkpoint.manifest.weights_sha256
    )
    assert read_manifest(directory) == checkpoint.manifest
    assert load_checkpoint(directory).manifest == checkpoint.manifest


def test_wrong_announced_hash_is_refused() -> None:
    blob = checkpoint_to_bytes(_checkpoint())
    with pytest.raises(CheckpointError, match="does not match the announced"):
        checkpoint_from_bytes(blob, expected_sha256="0" * 64)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    directory = save_checkpoint(_checkpoint(), tmp_path / "ckpt")
    blob = bytearray((directory / BLOB_NAME).read_bytes())
    blob[-1] ^= 0x01  # flip one bit of the last tensor's data
    (directory / BLOB_NAME).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"weights sha256 .* does not match the manifest"):
        load_checkpoint(directory)


def test_tampered_manifest_copy_is_refused(tmp_path: Path) -> None:
    directory = save_checkpoint(_checkpoint(), tmp_path / "ckpt")
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="disagrees with the manifest inside"):
        load_checkpoint(directory)


def test_missing_manifest_copy_is_refused(tmp_path: Path) -> None:
    directory = save_checkpoint(_checkpoint(), tmp_path / "ckpt")
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="manifest is missing"):
        load_checkpoint(directory)


def test_plain_safetensors_without_manifest_is_refused() -> None:
    from safetensors.torch import save

    with pytest.raises(CheckpointError, match="no manifest"):
        checkpoint_from_bytes(save({"w": torch.zeros(2)}))


def test_manifest_with_a_missing_field_is_refused() -> None:
    from safetensors.torch import save

    checkpoint = _checkpoint()
    manifest = json.loads(checkpoint.manifest.to_json())
    del manifest["normalization"]
    blob = save(checkpoint.tensors, metadata={"format": "sop.checkpoint", "manifest": json.dumps(manifest)})
    with pytest.raises(CheckpointError, match="'normalization' is missing"):
        checkpoint_from_bytes(blob)


def test_truncated_blob_is_refused() -> None:
    blob = checkpoint_to_bytes(_checkpoint())
    with pytest.raises(CheckpointError, match=r"truncated|cannot be read"):
        checkpoint_from_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="too short"):
        checkpoint_from_bytes(blob[:5])
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoint_from_bytes(struct.pack("<Q", 10**6) + b"{}")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"no {BLOB_NAME}"):
        load_checkpoint(tmp_path / "empty")


def test_unserialisable_config_fails_at_build_time() -> None:
    with pytest.raises(TypeError):
        build_checkpoint(
            {"w": torch.zeros(1)},
            policy_type="diffusion",
            version=0,
            parent_version=None,
            policy_config={"bad": object()},
            normalization={},
        )


def test_every_dtype_and_an_empty_tensor_round_trip() -> None:
    tensors = {
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "i64": torch.arange(-3, 4),
        "u8": torch.arange(7, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }
    checkpoint = build_checkpoint(
        tensors, policy_type="fake", version=1, parent_version=None, policy_config={}, normalization={}
    )
    loaded = checkpoint_from_bytes(checkpoint_to_bytes(checkpoint))
    for name, tensor in tensors.items():
        assert loaded.tensors[name].dtype == tensor.dtype and torch.equal(loaded.tensors[name], tensor), name


def _with_header(blob: bytes, edit: Any) -> bytes:
    """The blob with its safetensors header rewritten by `edit(header)` (the data section unchanged)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + blob[8 + length :]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["layer.bias"].update(dtype="F8_E9"), "dtype 'F8_E9' unknown"),
        (lambda h: h["layer.bias"].update(shape=[4]), "12 bytes for shape \\[4\\]"),
        (lambda h: h["layer.bias"].update(shape="3"), "shape is not a list"),
        (lambda h: h["layer.bias"].update(data_offsets=[0, 10**9]), "data_offsets outside"),
        (lambda h: h["layer.bias"].update(data_offsets=[-12, 0]), "data_offsets outside"),
        (lambda h: h.update(extra=h["layer.bias"]), "overlap or leave a gap"),
        (lambda h: h.__setitem__("layer.bias", [1, 2]), "not an object"),
        (lambda h: h.pop("layer.bias"), "overlap or leave a gap|bytes after the last one"),
    ],
)
def test_a_tampered_tensor_table_is_refused_with_its_reason(edit: Any, message: str) -> None:
    blob = _with_header(checkpoint_to_bytes(_checkpoint()), edit)
    with pytest.raises(CheckpointError, match=f"tensors cannot be read.*({message})"):
        checkpoint_from_bytes(blob)
