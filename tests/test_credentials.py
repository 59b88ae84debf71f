from __future__ import annotations

from pathlib import Path

import pytest

from sop.credentials import (
    CredentialsError,
    TokenRegistry,
    call_metadata,
    hash_token,
    new_token,
    read_token_file,
)


def test_metadata_round_trip(tmp_path: Path) -> None:
    token = new_token()
    registry = TokenRegistry({"robot-1": hash_token(token)})
    path = tmp_path / "tokens.json"
    registry.write(path)
    loaded = TokenRegistry.from_file(path)
    assert loaded.check_metadata(dict(call_metadata("robot-1", token))) == "robot-1"
    assert loaded.check_metadata(dict(call_metadata("robot-1", token + "x"))) is None
    assert loaded.check_metadata(dict(call_metadata("robot-2", token))) is None
    assert loaded.check_metadata({}) is None


def test_bad_hash_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("robot-1: not-a-hash\n")
    with pytest.raises(CredentialsError, match="robot-1"):
        TokenRegistry.from_file(path)


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")
    assert read_token_file(path) == "abc"
    path.write_text("a b")
    with pytest.raises(CredentialsError, match="whitespace"):
        read_token_file(path)
    with pytest.raises(CredentialsError, match="cannot read"):
        read_token_file(tmp_path / "missing")
