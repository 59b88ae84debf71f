"""Child processes of a fleet run: started in their own sessions, always stopped, never orphaned.

The fleet harness starts the learner and every robot daemon as separate OS processes (they talk gRPC on
127.0.0.1 exactly as they would across machines, over mutual TLS with signed checkpoints: see
`fleet_harness.demo` and `sop.fleet_trust`). Whatever happens to the harness — normal end, Ctrl-C,
an exception — `FleetProcesses.stop_all()` sends SIGTERM (daemons flush their spools and exit), waits, and
SIGKILLs what is left, process group and all. On Linux each child also gets PR_SET_PDEATHSIG, so even a
SIGKILLed harness leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the harness dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_setup(niceness: int) -> Callable[[], None]:
    """What runs in the child between fork and exec (after its setsid): die with the harness, and lower
    its CPU priority by `niceness` (0: as the harness).

    Each child leads its own session, and with the kernel's autogroup scheduling (on by default on
    desktop and many server kernels) every session is a scheduling group of its own: a process's nice
    value then ranks it only within its group, and the groups share the CPU by the group's nice value
    (`/proc/<pid>/autogroup`). So both are set. Measured in a demo run: with only os.nice the niced robots
    still took as much CPU as the learner; with the autogroup's nice as well the learner's samples/s
    doubled.
    """

    def setup() -> None:
        _die_with_parent()
        if niceness:
            os.nice(niceness)
            with contextlib.suppress(OSError):  # no autogroup scheduling on this kernel
                Path("/proc/self/autogroup").write_text(str(niceness))

    return setup


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something listens on host:port; fail early when `process` died first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout_s:.0f} s")


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class FleetProcesses:
    """The set of child processes of one run."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[ManagedProcess] = []

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None, niceness: int = 0
    ) -> ManagedProcess:
        """Start `python -m sop.cli <args>` (the same interpreter as the harness) with output to a log file,
        `niceness` lower in CPU priority than the harness (`os.nice`)."""
        if not 0 <= niceness <= 19:
            raise ValueError(f"niceness must be in [0, 19], got {niceness}")
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        child_env = {**os.environ, **(env or {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "sop.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
            preexec_fn=_child_setup(niceness),
        )
        managed = ManagedProcess(name, process, log_path, log)
        self.children.append(managed)
        return managed

    def stop(self, child: ManagedProcess, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL the child's whole process group."""
        if child.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
            try:
                child.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=10)
        # Reap anything the child left in its group (it should have left nothing).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child._log.close()
        return child.process.returncode

    def stop_all(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """Stop robots first (they flush to the learner), then the learner: children in reverse start order."""
        codes = {}
        for child in reversed(self.children):
            codes[child.name] = self.stop(child, timeout_s)
        return codes

    def dead(self) -> list[ManagedProcess]:
        return [c for c in self.children if not c.alive]

    def tail(self, child: ManagedProcess, lines: int = 20) -> str:
        try:
            return "\n".join(child.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
