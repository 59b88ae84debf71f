from __future__ import annotations

import subprocess
import sys

import pytest

from sop.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sim showcase" in out


def test_unknown_command_fails_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fly", "away"]) == 2
    assert "unknown command 'fly away'" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sop.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "usage: sop" in done.stdout
