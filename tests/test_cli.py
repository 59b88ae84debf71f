"""The `sop` front door: routing, group help, and user errors as one line (exit 2 usage, 1 runtime), while a
bug keeps its traceback. The user-error cases run the real console entry as a child process and fail before
any heavy work, so each takes only the command's import time."""

from __future__ import annotations

import errno
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

from sop.cli import USER_ERRORS, Command, main, run_command
from sop.config import ConfigError


def sop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sop.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def one_line_error(done: subprocess.CompletedProcess[str], exit_code: int, prefix: str) -> str:
    """stderr is exactly one line starting with `prefix`, and the exit code is `exit_code`."""
    assert done.returncode == exit_code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr[-3000:]
    return lines[0]


def test_help_lists_groups_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sim showcase" in out and "bench soak" in out and "fleet init" in out
    assert "robot" in out.split("commands:")[0]  # the groups line


def test_console_script_is_installed() -> None:
    done = sop("--help")
    assert done.returncode == 0 and "usage: sop" in done.stdout


@pytest.mark.parametrize(
    ("group", "commands"),
    [("robot", ["robot run"]), ("bench", ["bench env", "bench fleet", "bench soak", "bench learner"])],
)
def test_group_help_lists_its_commands_with_summaries(group: str, commands: list[str]) -> None:
    done = sop(group, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: sop {group} <command>" in done.stdout
    for name in commands:
        assert any(
            line.strip().startswith(name) and len(line.split()) > 2 for line in done.stdout.splitlines()
        )
    assert "learner serve" not in done.stdout  # only the group's own commands


@pytest.mark.parametrize(
    ("command", "described", "option"),
    [
        (["learner", "serve"], "the gRPC face of the learner", "--trainer.batch_size"),
        (["robot", "run"], "robot", "--learner.address"),
    ],
)
def test_command_help_says_what_it_does_then_lists_its_config_keys(
    command: list[str], described: str, option: str
) -> None:
    done = sop(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert described in done.stdout.split("usage:")[0]  # the module's description comes first
    assert option in done.stdout


def test_a_group_without_its_command_lists_the_group_and_fails() -> None:
    done = sop("robot")
    assert done.returncode == 2 and "robot run" in done.stderr


@pytest.mark.parametrize(
    ("args", "typed", "meant"),
    [
        (["lerner", "serve"], "lerner serve", "learner serve"),
        (["bench", "fleat"], "bench fleat", "bench fleet"),
    ],
)
def test_unknown_command_suggests_the_nearest(args: list[str], typed: str, meant: str) -> None:
    done = sop(*args)
    line = one_line_error(done, 2, "sop: unknown command")
    assert f"'{typed}'" in line and f"did you mean 'sop {meant}'?" in line
    assert done.stdout == ""


def test_unknown_command_without_a_near_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fly", "away"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fly away'" in err and "did you mean" not in err and len(err.splitlines()) == 1


def test_unknown_task_is_one_line_before_the_demo_starts(tmp_path: Path) -> None:
    done = sop("demo", "--tasks", "nonexistent-v3", "--config", "demo_quick", cwd=tmp_path)
    line = one_line_error(done, 2, "sop demo: ")
    assert "'nonexistent-v3' is not in the Meta-World suite" in line and "sop demo --help" in line
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


def test_a_dashed_flag_is_one_line_naming_the_key_meant(tmp_path: Path) -> None:
    done = sop("robot", "run", "--robot-id", "r1", cwd=tmp_path)
    line = one_line_error(done, 2, "sop robot run: ")
    assert "unknown flag --robot-id; did you mean --robot_id?" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "flag"])
def test_bad_learner_config_key_is_one_line(tmp_path: Path, where: str) -> None:
    if where == "file":
        config = tmp_path / "learner.yaml"
        config.write_text("run_dir: runs/x\nbogus_key: 1\n")
        args = ["--config", str(config)]
    else:
        args = ["--bogus.key", "1"]
    done = sop("learner", "serve", *args, cwd=tmp_path)
    line = one_line_error(done, 2, "sop learner serve: ")
    assert "bogus" in line


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    done = sop("robot", "run", "--config", "nowhere.yaml", cwd=tmp_path)
    line = one_line_error(done, 2, "sop robot run: ")
    assert "'nowhere.yaml' does not exist" in line


def fake_command(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> Command:
    def fail(argv: list[str]) -> int:
        raise error

    module = types.ModuleType("fake_sop_command")
    module.main = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_sop_command", module)
    return Command("fake_sop_command", "fails")


@pytest.mark.parametrize(
    ("error", "exit_code", "text"),
    [
        (ConfigError("steps: must be >= 1\n(got 0)"), 2, "steps: must be >= 1 (got 0)"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "a.ckpt"),
            1,
            "No such file or directory: a.ckpt",
        ),
        (OSError(errno.EADDRINUSE, "Address already in use"), 1, "Address already in use"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_user_errors_are_one_line_with_their_exit_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    exit_code: int,
    text: str,
) -> None:
    assert run_command("fake", fake_command(monkeypatch, error), []) == exit_code
    err = capsys.readouterr().err
    assert err.startswith(f"sop fake: {text}") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "bug",
    [KeyError("episode"), ValueError("shapes (3,) and (4,) not aligned"), OSError(errno.EBADF, "Bad fd")],
)
def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, bug: Exception) -> None:
    with pytest.raises(type(bug)):
        run_command("fake", fake_command(monkeypatch, bug), [])


def test_every_user_error_name_is_an_exception_class() -> None:
    """The table names types by string (so `sop --help` imports nothing); a moved or renamed class fails here."""
    for name in USER_ERRORS:
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        assert isinstance(cls, type) and issubclass(cls, BaseException), name


def test_a_learner_port_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = sop(
            "learner", "serve", "--run_dir", str(tmp_path / "run"), "--auth.allow_unauthenticated", "true",
            "--trainer.enabled", "false", "--server.address", f"127.0.0.1:{port}",
        )  # fmt: skip
    # Log lines may come before it (the learner logs as it starts); the error itself is the last line.
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("sop learner serve:") and "in use" in line and "--server.address" in line
