"""The `sop` console script: `sop <group> <command> [--config FILE] [--field value ...]`.

Each command lives in the module that owns its concept and exposes `main(argv: list[str]) -> int`; this
file only routes. Modules are imported lazily so `sop --help` stays fast and a command's heavy imports
(torch, MuJoCo, Ray) are paid only by that command.

This is also the one place that decides what a user sees when a command fails. A *user error* (a bad config
key or value, an unknown task, a missing file, a port in use, a refused checkpoint or token) is an exception
of a type listed in `USER_ERRORS`, raised with a message that names the problem and the fix; the front door
prints it as one line on stderr and exits 2 (usage and config) or 1 (runtime). Any other exception is a bug
and keeps its traceback. Commands therefore raise and do not catch-and-print.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_USAGE = 2  # the command line or config is wrong: fix it and run again
EXIT_RUNTIME = 1  # the command was well formed but could not do its work (a file, a port, a checkpoint)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

# Exception types whose messages are written for the user, by "module.QualName" so that this table imports
# nothing (a command's modules may pull torch; an exception of a type whose module was never imported cannot
# occur anyway). Subclasses count. tests/test_cli.py checks every name still resolves to an exception class.
USER_ERRORS: dict[str, int] = {
    "sop.config.ConfigError": EXIT_USAGE,  # unknown key, bad value, failed check, missing config file
    "sim.tasks.UnknownTaskError": EXIT_USAGE,  # "did you mean 'push-v3'?"
    "argparse.ArgumentError": EXIT_USAGE,
    "sop.credentials.CredentialsError": EXIT_RUNTIME,  # a token file that is missing, unreadable or refused
    "sop.checkpoint.CheckpointError": EXIT_RUNTIME,  # a checkpoint that is not one, or is corrupt
    "sop.fleet_trust.TrustError": EXIT_RUNTIME,  # certificates, signing keys, signatures
    "cloud_learner.trainer.TrainerError": EXIT_RUNTIME,  # e.g. no base checkpoint to train
    "cloud_learner.console.accounts.AccountError": EXIT_RUNTIME,  # a refused user name, password, accounts file
    "sop.world.modeling_world.WorldModelError": EXIT_RUNTIME,  # not a world-model folder, mismatched data
    # A file or folder the user named is missing, already there, or not theirs to write.
    "builtins.FileNotFoundError": EXIT_RUNTIME,
    "builtins.FileExistsError": EXIT_RUNTIME,
    "builtins.PermissionError": EXIT_RUNTIME,
    "builtins.IsADirectoryError": EXIT_RUNTIME,
    "builtins.NotADirectoryError": EXIT_RUNTIME,
}

# Plain OSErrors that describe the user's machine rather than a bug: the port is taken, the disk is full.
# Other errnos (EBADF, EINVAL, ...) point at the code and keep the traceback.
USER_OS_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENOSPC, errno.EROFS, errno.EDQUOT})


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    function: str = "main"


COMMANDS: dict[str, Command] = {
    "sim showcase": Command("sim.showcase", "a weak policy with the simulated operator on a few tasks"),
    "sim eval": Command("sim.evaluate", "evaluate a checkpoint on seeded held-out episodes"),
    "sim demos": Command("sim.demonstrations", "record scripted demonstrations into an episode store"),
    "train bc": Command("sop.training.bc", "behaviour cloning on an episode store"),
    "world train": Command("sop.world.train", "fit a diffusion world model + success model on a store"),
    "world eval": Command("sop.world.evaluate", "world-model error vs an MLP baseline on held-out episodes"),
    "world refine": Command("sop.world.refine", "refine a policy inside a world model, zero env steps"),
    "robot run": Command("robot_client.daemon", "run the robot daemon"),
    "learner serve": Command("cloud_learner.service", "serve the fleet: ingest, train, publish"),
    "console": Command(
        "cloud_learner.console.accounts", "create the operator console's first admin and print its URL"
    ),
    "fleet init": Command(
        "sop.fleet_trust", "create a fleet's CA, TLS certificates, tokens and checkpoint-signing key"
    ),
    "demo": Command("fleet_harness.demo", "the fleet demo: online post-training end to end"),
    "export lerobot": Command(
        "sop.data.lerobot_dataset", "export an episode store as a LeRobotDataset v3", "export_main"
    ),
    "import lerobot": Command(
        "sop.data.lerobot_dataset", "import a LeRobotDataset as offline demonstrations", "import_main"
    ),
    "policy import-lerobot": Command(
        "sop.policies.lerobot_folder", "wrap a lerobot policy folder as an SOP checkpoint", "import_main"
    ),
    "policy export-lerobot": Command(
        "sop.policies.lerobot_folder",
        "write an SOP checkpoint of a lerobot policy as a lerobot folder",
        "export_main",
    ),
    "bench env": Command("benchmarks.env", "Meta-World env steps/s with and without rendering"),
    "bench data": Command("benchmarks.data", "codec, store and window-sampler throughput"),
    "bench rti": Command("benchmarks.rti", "RTI vs DDPM/DDIM success and latency"),
    "bench robot": Command("benchmarks.robot", "control-loop timing while uploading and swapping"),
    "bench policy-latency": Command(
        "benchmarks.policy_latency", "policy latency per chunk and step (CPU or GPU)"
    ),
    "bench learner": Command("benchmarks.learner", "ingest, broadcast and trainer throughput"),
    "bench fleet": Command("benchmarks.fleet", "success vs per-robot steps for 1, 2, 4 robots"),
    "bench retrain": Command("benchmarks.retrain", "retrain a run's replay at fixed learner steps, evaluate"),
    "bench online-vs-offline": Command(
        "benchmarks.online_vs_offline",
        "HG-DAgger online vs extra demos at equal labelled frames, under shifts",
    ),
    "bench console": Command(
        "benchmarks.console", "operator command to robot action through the console (p50/p99)"
    ),
    "bench soak": Command("benchmarks.soak", "a fleet under sustained load: learner memory, 0 lost, latency"),
}


def _available() -> dict[str, Command]:
    """Commands whose module is present in this installation."""
    found = {}
    for name, command in COMMANDS.items():
        try:
            spec = importlib.util.find_spec(command.module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = command
    return found


def _groups(commands: dict[str, Command]) -> dict[str, dict[str, Command]]:
    """Commands by their first word (`robot` -> {`robot run`: ...}); a one-word command is its own group."""
    groups: dict[str, dict[str, Command]] = {}
    for name, command in commands.items():
        groups.setdefault(name.split()[0], {})[name] = command
    return groups


def _table(commands: dict[str, Command]) -> list[str]:
    width = max((len(n) for n in commands), default=0)
    return [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in sorted(commands.items())]


def _usage(commands: dict[str, Command]) -> str:
    lines = ["usage: sop <command> [options]   (sop <command> --help for its options)", ""]
    lines += ["groups (sop <group> --help lists a group):", "  " + "  ".join(sorted(_groups(commands))), ""]
    lines += ["commands:", *_table(commands)]
    return "\n".join(lines)


def _group_usage(group: str, commands: dict[str, Command]) -> str:
    lines = [f"usage: sop {group} <command> [options]   (sop {group} <command> --help for its options)", ""]
    return "\n".join([*lines, "commands:", *_table(commands)])


def _unknown(args: list[str], commands: dict[str, Command]) -> str:
    """One line naming what was typed and, when one is close, the command that was probably meant."""
    words = [arg for arg in args[:2] if not arg.startswith("-")] or args[:1]
    typed = " ".join(words)
    names = [*commands, *_groups(commands)]
    close = difflib.get_close_matches(typed, names, n=1)
    if not close and len(words) > 1:  # `sop dmo tasks`, `sop robto run`: the first word alone
        close = difflib.get_close_matches(words[0], names, n=1)
    hint = f"did you mean 'sop {close[0]}'? " if close else ""
    listing = f"sop {words[0]} --help" if words and words[0] in _groups(commands) else "sop --help"
    return f"sop: unknown command {typed!r}; {hint}`{listing}` lists the commands"


def user_error_exit_code(exc: BaseException) -> int | None:
    """The exit code for a user error, or None for a bug (which keeps its traceback)."""
    for cls in type(exc).__mro__:
        code = USER_ERRORS.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    if isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS:
        return EXIT_RUNTIME
    return None


def user_error_message(exc: BaseException) -> str:
    """The exception's message on one line; an OSError as "what: which file" without the errno prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename is not None else "")
        if exc.errno == errno.EADDRINUSE and "port" not in text:
            text += " (another process holds the port: stop it or choose another port)"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def run_command(name: str, command: Command, argv: list[str]) -> int:
    """Run one command's main; a user error becomes one line on stderr and an exit code.

    `--help` prints the command's module docstring (what it does, its files) before the command prints its
    options, so no command sniffs for `--help` itself.
    """
    module = importlib.import_module(command.module)
    entry: Callable[[list[str]], int] = getattr(module, command.function)
    if ("-h" in argv or "--help" in argv) and module.__doc__:
        print(module.__doc__.strip() + "\n")
    try:
        return int(entry(argv) or 0)
    except KeyboardInterrupt:
        print(f"sop {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = user_error_exit_code(exc)
        if code is None:
            raise
        hint = f" (`sop {name} --help` lists its options)" if code == EXIT_USAGE else ""
        print(f"sop {name}: {user_error_message(exc)}{hint}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not args or args[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0
    for words in (2, 1):
        name = " ".join(args[:words])
        if name in commands:
            return run_command(name, commands[name], args[words:])
    group = _groups(commands).get(args[0])
    if group is not None and (len(args) == 1 or args[1] in ("-h", "--help")):
        print(_group_usage(args[0], group), file=sys.stdout if len(args) > 1 else sys.stderr)
        return 0 if len(args) > 1 else EXIT_USAGE
    print(_unknown(args, commands), file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
