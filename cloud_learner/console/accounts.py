"""Operator accounts of the console, and `sop console`: create the first admin, print the URL.

    sop console --config configs/learner.yaml --admin alice [--password-file FILE] [--console.address ...]

Accounts live in `run_dir/console/operators.json` (owner-only, replaced atomically), one entry per user
name: the role and a salted scrypt hash of the password, never the password. scrypt because it is in the
standard library and costs memory as well as time, so a stolen file is expensive to attack; each user has
their own random salt, so equal passwords do not show.

The running console re-reads the file when it changes, so an account added by `sop console` or by an
admin on the page is usable at once. Roles: a viewer watches; an operator also takes over, drives and
labels outcomes; an admin also manages accounts.
"""

from __future__ import annotations

import argparse
import enum
import getpass
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sop.durable_files import write_json_atomically
from sop.safe_logging import client_str

ACCOUNTS_FILE = "operators.json"
USERNAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_PASSWORD_CHARS: Final = 8
MAX_PASSWORD_CHARS: Final = 256
# scrypt cost: ~16 MiB and ~50 ms per check on this machine; stored per account so it can be raised later.
SCRYPT_N: Final = 1 << 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_FORMAT_VERSION = 1


class AccountError(ValueError):
    """A user name, password, role or accounts file that cannot be used; the message says which and why."""


class ConsoleRole(enum.StrEnum):
    """What a console user may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"  # watch the fleet, the robots and the learner
    OPERATOR = "operator"  # also take over, drive, hand back, label outcomes
    ADMIN = "admin"  # also create accounts

    def allows(self, needed: ConsoleRole) -> bool:
        order = list(ConsoleRole)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class Account:
    username: str
    role: ConsoleRole
    salt: str  # hex
    password_hash: str  # hex scrypt(password, salt, n, r, p)
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    created_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "kdf": "scrypt",
            "salt": self.salt,
            "hash": self.password_hash,
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "created_at": self.created_at,
        }


def check_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise AccountError(
            f"username {client_str(username)} must be 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return username


def check_password(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(f"password: must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def check_role(role: object) -> ConsoleRole:
    if isinstance(role, str) and role in {r.value for r in ConsoleRole}:
        return ConsoleRole(role)
    raise AccountError(f"role {client_str(role)} is not one of {[r.value for r in ConsoleRole]}")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * n * r * 2, dklen=32
    )


def hash_password(password: str) -> tuple[str, str]:
    """(salt hex, hash hex) for a new password."""
    salt = secrets.token_bytes(16)
    return salt.hex(), _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()


# Checked against when the user name is unknown, so a login takes as long whether or not the name exists.
_DUMMY = Account("-", ConsoleRole.VIEWER, "00" * 16, "00" * 32)


class Accounts:
    """The accounts file of one run directory; thread-safe, re-read when another process changed it."""

    def __init__(self, console_dir: str | Path) -> None:
        self.path = Path(console_dir) / ACCOUNTS_FILE
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._stamp: tuple[int, int] | None = None
        self._reload()

    def _reload(self) -> None:
        """Read the file if it changed since the last read (caller holds the lock, or is __init__)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._accounts, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            document = json.loads(self.path.read_text())
            entries = document["operators"]
            accounts = {}
            for name, entry in entries.items():
                accounts[check_username(name)] = Account(
                    username=name,
                    role=check_role(entry["role"]),
                    salt=str(entry["salt"]),
                    password_hash=str(entry["hash"]),
                    n=int(entry["n"]),
                    r=int(entry["r"]),
                    p=int(entry["p"]),
                    created_at=float(entry.get("created_at", 0.0)),
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AccountError(
                f"{self.path}: not a console accounts file ({exc}); restore it or move it away and run "
                "`sop console --admin NAME` again"
            ) from None
        self._accounts, self._stamp = accounts, stamp

    def _write(self, accounts: dict[str, Account]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "version": _FORMAT_VERSION,
            "operators": {name: account.to_json() for name, account in sorted(accounts.items())},
        }
        write_json_atomically(self.path, document, durable=True, private=True, indent=1)
        self._accounts = accounts
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def list(self) -> list[Account]:
        with self._lock:
            self._reload()
            return sorted(self._accounts.values(), key=lambda a: a.username)

    def get(self, username: str) -> Account | None:
        with self._lock:
            self._reload()
            return self._accounts.get(username)

    def add(self, username: str, password: str, role: ConsoleRole | str) -> Account:
        """Create an account; AccountError when the name is taken or a value is refused."""
        check_username(username)
        check_password(password)
        checked_role = check_role(role)
        salt, password_hash = hash_password(password)
        account = Account(username, checked_role, salt, password_hash, created_at=time.time())
        with self._lock:
            self._reload()
            if username in self._accounts:
                raise AccountError(f"username {client_str(username)} is taken")
            self._write({**self._accounts, username: account})
        return account

    def verify(self, username: str, password: str) -> Account | None:
        """The account when `password` is its password; None otherwise (unknown name included)."""
        account = self.get(username) if USERNAME_PATTERN.fullmatch(username) else None
        checked = account or _DUMMY
        try:
            computed = _scrypt(password, bytes.fromhex(checked.salt), checked.n, checked.r, checked.p)
        except ValueError:
            return None
        matches = hmac.compare_digest(computed.hex(), checked.password_hash)
        return account if matches and account is not None else None


# ---- `sop console` ---------------------------------------------------------------------------------------


def console_url(address: str | None, tls: bool) -> str | None:
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "localhost"
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def _read_password(password_file: str | None, username: str) -> str:
    if password_file is not None:
        lines = Path(password_file).read_text().splitlines()
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for the password on: give --password-file FILE")
    first = getpass.getpass(f"password for {username}: ")
    if first != getpass.getpass("again: "):
        raise AccountError("the two passwords differ; run the command again")
    return first


def main(argv: list[str]) -> int:
    from cloud_learner.config import LearnerConfig
    from sop.config import parse_config

    parser = argparse.ArgumentParser(
        prog="sop console",
        description="Create the console's first admin in the learner's run_dir and print the console URL. "
        "Other options are the learner's (--config FILE, --run_dir DIR, --console.address HOST:PORT).",
    )
    parser.add_argument("--admin", help="user name of the first admin (a fresh run directory only)")
    parser.add_argument("--password-file", help="file whose first line is the admin's password")
    known, rest = parser.parse_known_args(argv)  # --help: argparse prints it and exits
    config = parse_config(LearnerConfig, rest, default_config="learner.yaml")
    accounts = Accounts(config.console_dir)
    existing = accounts.list()
    if known.admin is not None:
        if existing:
            raise AccountError(
                f"{accounts.path} already has {len(existing)} account(s); the first admin is created only "
                "in a fresh run directory (an admin adds more on the page)"
            )
        username = check_username(known.admin)
        password = check_password(_read_password(known.password_file, username))
        accounts.add(username, password, ConsoleRole.ADMIN)
        print(f"created admin {username} in {accounts.path}")
    elif not existing:
        raise AccountError(
            f"{accounts.path} has no accounts yet: give --admin NAME to create the first admin"
        )
    url = console_url(config.console.address, config.server.tls.enabled)
    if url is None:
        print(
            "console.address is not set in the learner config: set it (e.g. --console.address 127.0.0.1:8080) "
            "and start `sop learner serve` with the same setting"
        )
    else:
        print(f"console: {url}  (served by `sop learner serve` with this config)")
    return 0
