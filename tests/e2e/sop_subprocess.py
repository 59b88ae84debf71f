"""Helper for the end-to-end tests: run the `sop` command line as a real child process.

A uniquely named module (not conftest.py) so test files can import it by name.
"""

from __future__ import annotations

import subprocess
import sys


def run_sop(*args: str, timeout_s: float = 850) -> subprocess.CompletedProcess[str]:
    """`python -m sop.cli ARGS`; fails the test with the output's tails when it exits non-zero."""
    done = subprocess.run(
        [sys.executable, "-m", "sop.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
