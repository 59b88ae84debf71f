"""Robot credentials: how a robot proves who it is on every gRPC call, and how the learner checks it.

Each call carries two metadata entries: `x-sop-robot-id: <robot id>` and `authorization: Bearer <token>`.
The learner keeps only sha256 hashes of tokens (a YAML/JSON mapping robot id -> hex hash), so a leaked
token file on the learner side does not leak credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml

ROBOT_ID_METADATA_KEY = "x-sop-robot-id"
AUTHORIZATION_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "


class CredentialsError(ValueError):
    """A token file or token-hash file that cannot be used; the message names the file and the problem."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


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


class TokenRegistry:
    """Robot id -> token hash, checked in constant time."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        for robot_id, digest in hashes.items():
            if not isinstance(robot_id, str) or not robot_id:
                raise CredentialsError(f"robot id {robot_id!r} must be a non-empty string")
            if not isinstance(digest, str) or len(digest) != 64:
                raise CredentialsError(f"token hash of robot {robot_id!r} must be a 64-character hex sha256")
            try:
                bytes.fromhex(digest)
            except ValueError:
                raise CredentialsError(f"token hash of robot {robot_id!r} is not hex") from None
        self._hashes = {k: v.lower() for k, v in hashes.items()}

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
        return cls(data)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self._hashes, indent=2, sort_keys=True) + "\n")

    def add(self, robot_id: str, token: str) -> None:
        self._hashes[robot_id] = hash_token(token)

    def __contains__(self, robot_id: object) -> bool:
        return robot_id in self._hashes

    def check(self, robot_id: str, token: str) -> bool:
        expected = self._hashes.get(robot_id)
        if expected is None:
            # Compare anyway so an unknown robot id costs the same time as a wrong token.
            hmac.compare_digest(hash_token(token), "0" * 64)
            return False
        return hmac.compare_digest(hash_token(token), expected)

    def check_metadata(self, metadata: Mapping[str, str]) -> str | None:
        """The authenticated robot id, or None when the call's credentials are missing or wrong."""
        robot_id = metadata.get(ROBOT_ID_METADATA_KEY)
        authorization = metadata.get(AUTHORIZATION_METADATA_KEY, "")
        if not robot_id or not authorization.startswith(BEARER_PREFIX):
            return None
        return robot_id if self.check(robot_id, authorization.removeprefix(BEARER_PREFIX)) else None
