"""Robot credentials: how a robot proves who it is on every gRPC call, and how the learner checks it.

Each call carries two metadata entries: `x-sop-robot-id: <robot id>` and `authorization: Bearer <token>`.
The learner keeps only sha256 hashes of tokens, so a leaked token-hash file does not leak credentials.

The token-hash file (YAML or JSON) maps each id to its token's hash and, optionally, a role:

    robot-1: 3f5a...e9            # a hex hash alone: role robot (the original format, still written so)
    teleop-station:
      sha256: 8c21...04
      role: demonstrator          # robot | demonstrator | operator

A role decides what its holder may do: a robot uploads its own online episodes, a demonstrator uploads
offline demonstrations (which the learner trains on as ground truth, so an ordinary robot token must not be
able to add them), an operator uploads nothing. Ids are checked against `[A-Za-z0-9_.-]{1,64}` because they
end up in logs, metrics labels and file names.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from sop.safe_logging import client_str

ROBOT_ID_METADATA_KEY = "x-sop-robot-id"
AUTHORIZATION_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
ROBOT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")


class Role(enum.StrEnum):
    """What a token may do."""

    ROBOT = "robot"  # register, heartbeat, watch and fetch policies, upload its own online episodes
    DEMONSTRATOR = "demonstrator"  # upload offline demonstrations
    OPERATOR = "operator"  # operate robots; uploads nothing


class CredentialsError(ValueError):
    """A token file or token-hash file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Identity:
    """Who an accepted call comes from."""

    robot_id: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_robot_id(robot_id: object) -> str:
    """`robot_id` if it is 1-64 characters of `[A-Za-z0-9_.-]`; `CredentialsError` naming it otherwise."""
    if not isinstance(robot_id, str) or not ROBOT_ID_PATTERN.fullmatch(robot_id):
        raise CredentialsError(
            f"robot id {client_str(robot_id)} must be 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return robot_id


def call_metadata(robot_id: str, token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a robot attaches to every call."""
    return ((ROBOT_ID_METADATA_KEY, robot_id), (AUTHORIZATION_METADATA_KEY, BEARER_PREFIX + token))


def read_token_file(path: str | Path) -> str:
    """A robot's token file holds the token alone (surrounding whitespace ignored)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise CredentialsError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise CredentialsError(f"token file {path} must hold one token without whitespace")
    return token


def _parse_entry(robot_id: object, entry: object) -> tuple[str, str, Role]:
    """One (robot id, hash, role) from a hash-file entry: a hex hash, or {sha256: hex, role: name}."""
    robot_id = check_robot_id(robot_id)
    name = client_str(robot_id)
    role = Role.ROBOT
    digest = entry
    if isinstance(entry, Mapping):
        unknown = sorted(str(k) for k in entry if k not in ("sha256", "role"))
        if unknown:
            raise CredentialsError(
                f"entry of robot {name}: unknown key {client_str(unknown[0])} (expected sha256 and role)"
            )
        digest = entry.get("sha256")
        try:
            role = Role(entry.get("role", Role.ROBOT.value))
        except ValueError:
            raise CredentialsError(
                f"role of robot {name}: {client_str(entry.get('role'))} is not one of {[r.value for r in Role]}"
            ) from None
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise CredentialsError(f"token hash of robot {name} must be a 64-character hex sha256")
    return robot_id, digest.lower(), role


class TokenRegistry:
    """Robot id -> token hash and role, checked in constant time."""

    def __init__(self, entries: Mapping[str, str | Mapping[str, str]]) -> None:
        self._hashes: dict[str, str] = {}
        self._roles: dict[str, Role] = {}
        for robot_id, entry in entries.items():
            robot_id, digest, role = _parse_entry(robot_id, entry)
            self._hashes[robot_id] = digest
            self._roles[robot_id] = role

    @classmethod
    def from_file(cls, path: str | Path) -> TokenRegistry:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise CredentialsError(f"cannot read token-hash file {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise CredentialsError(f"token-hash file {path} is not valid: {exc}") from None
        if not isinstance(data, dict):
            raise CredentialsError(f"token-hash file {path} must map robot id -> sha256 of its token")
        try:
            return cls(data)
        except CredentialsError as exc:
            raise CredentialsError(f"token-hash file {path}: {exc}") from None

    def write(self, path: str | Path) -> None:
        """Robots as a bare hash (readable by older learners), other roles as {sha256, role}."""
        data: dict[str, str | dict[str, str]] = {
            robot_id: digest
            if self._roles[robot_id] is Role.ROBOT
            else {"sha256": digest, "role": self._roles[robot_id].value}
            for robot_id, digest in self._hashes.items()
        }
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def add(self, robot_id: str, token: str, role: Role = Role.ROBOT) -> None:
        self._hashes[check_robot_id(robot_id)] = hash_token(token)
        self._roles[robot_id] = Role(role)

    def __contains__(self, robot_id: object) -> bool:
        return robot_id in self._hashes

    def role_of(self, robot_id: str) -> Role | None:
        return self._roles.get(robot_id)

    def check(self, robot_id: str, token: str) -> bool:
        expected = self._hashes.get(robot_id)
        if expected is None:
            # Compare anyway so an unknown robot id costs the same time as a wrong token.
            hmac.compare_digest(hash_token(token), "0" * 64)
            return False
        return hmac.compare_digest(hash_token(token), expected)

    def identify(self, metadata: Mapping[str, str]) -> Identity | None:
        """Who the call's credentials name, or None when they are missing or wrong."""
        robot_id = metadata.get(ROBOT_ID_METADATA_KEY)
        authorization = metadata.get(AUTHORIZATION_METADATA_KEY, "")
        if not robot_id or not authorization.startswith(BEARER_PREFIX):
            return None
        if not self.check(robot_id, authorization.removeprefix(BEARER_PREFIX)):
            return None
        return Identity(robot_id, self._roles[robot_id])

    def check_metadata(self, metadata: Mapping[str, str]) -> str | None:
        """The authenticated robot id, or None when the call's credentials are missing or wrong."""
        identity = self.identify(metadata)
        return None if identity is None else identity.robot_id
