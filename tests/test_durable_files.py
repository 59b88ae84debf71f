"""Atomic and durable writes: what a reader sees, what permissions a file gets, what a failure leaves."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sop.durable_files import (
    fsync_path,
    sync_tree,
    write_atomically,
    write_json_atomically,
    write_synced,
    write_text_atomically,
)
from sop.hashing import sha256_hex


@pytest.mark.parametrize("durable", [False, True])
def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    write_atomically(path, b"new", durable=durable)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_text_and_json_forms(tmp_path: Path) -> None:
    write_text_atomically(tmp_path / "a.txt", "héllo\n", durable=False)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    write_json_atomically(tmp_path / "b.json", {"b": 1, "a": [2]}, durable=True, indent=1, sort_keys=True)
    assert (tmp_path / "b.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=1, sort_keys=True)


def test_private_files_are_owner_only_and_others_follow_the_umask(tmp_path: Path) -> None:
    write_atomically(tmp_path / "key.pem", b"secret", durable=True, private=True)
    write_atomically(tmp_path / "public.json", b"{}", durable=False)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "public.json").stat().st_mode) & 0o044  # group/other may read


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_json_atomically(path, {"not json": object()}, durable=False)
    with pytest.raises(TypeError):
        write_atomically(path, "text is not bytes", durable=False)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_synced_writes_and_tree_sync(tmp_path: Path) -> None:
    group = tmp_path / "group"
    (group / "array").mkdir(parents=True)
    write_synced(group / "array" / "c.0", b"chunk")
    sync_tree(group)
    fsync_path(tmp_path)
    assert (group / "array" / "c.0").read_bytes() == b"chunk"


def test_sha256_hex_is_the_lower_case_hex_digest() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(memoryview(b"abc")) == sha256_hex(bytearray(b"abc"))
