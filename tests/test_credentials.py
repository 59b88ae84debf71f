from __future__ import annotations

import json
from pathlib import Path

import pytest

from sop.credentials import (
    CredentialsError,
    Identity,
    Role,
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


def test_roles_round_trip_and_old_files_mean_robot(tmp_path: Path) -> None:
    registry = TokenRegistry({})
    registry.add("robot-1", "t1")
    registry.add("teleop-station", "t2", Role.DEMONSTRATOR)
    registry.add("operator-1", "t3", Role.OPERATOR)
    path = tmp_path / "tokens.json"
    registry.write(path)
    written = json.loads(path.read_text())
    assert written["robot-1"] == hash_token("t1")  # robots keep the original format
    assert written["teleop-station"] == {"sha256": hash_token("t2"), "role": "demonstrator"}
    loaded = TokenRegistry.from_file(path)
    assert loaded.identify(dict(call_metadata("robot-1", "t1"))) == Identity("robot-1", Role.ROBOT)
    assert loaded.identify(dict(call_metadata("teleop-station", "t2"))) == Identity(
        "teleop-station", Role.DEMONSTRATOR
    )
    assert loaded.identify(dict(call_metadata("operator-1", "t3"))) == Identity("operator-1", Role.OPERATOR)
    assert loaded.identify(dict(call_metadata("teleop-station", "t1"))) is None
    yaml_path = tmp_path / "tokens.yaml"
    yaml_path.write_text(
        f"robot-2: {hash_token('t4')}\nstation-2:\n  sha256: {hash_token('t5')}\n  role: demonstrator\n"
    )
    from_yaml = TokenRegistry.from_file(yaml_path)
    assert from_yaml.role_of("robot-2") is Role.ROBOT and from_yaml.role_of("station-2") is Role.DEMONSTRATOR


@pytest.mark.parametrize(
    ("robot_id", "quoted"),
    [
        ("robot\n1", r"'robot\u000a1'"),
        ("../etc", "'../etc'"),
        ("r" * 65, "'" + "r" * 65 + "'"),
        ("robot\u202e1", r"'robot\u202e1'"),
        ("", "''"),
    ],
)
def test_bad_robot_ids_are_refused_naming_the_entry(tmp_path: Path, robot_id: str, quoted: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"robot-1": hash_token("a"), robot_id: hash_token("b")}))
    with pytest.raises(CredentialsError) as error:
        TokenRegistry.from_file(path)
    message = str(error.value)
    assert str(path) in message and f"robot id {quoted}" in message  # quoted, escaped: one safe line
    assert "\n" not in message and "\u202e" not in message
    with pytest.raises(CredentialsError, match="letters, digits"):
        TokenRegistry({}).add(robot_id, "token")


def test_unknown_role_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"robot-1:\n  sha256: {hash_token('a')}\n  role: admin\n")
    with pytest.raises(CredentialsError, match=r"role of robot 'robot-1': 'admin' is not one of"):
        TokenRegistry.from_file(path)
    path.write_text(f"robot-1:\n  sha256: {hash_token('a')}\n  roles: demonstrator\n")
    with pytest.raises(CredentialsError, match="unknown key 'roles'"):
        TokenRegistry.from_file(path)
    path.write_text("robot-1:\n  role: demonstrator\n")
    with pytest.raises(CredentialsError, match="token hash of robot 'robot-1'"):
        TokenRegistry.from_file(path)
