"""The `sop` console script: `sop <group> <command> [--config FILE] [--field value ...]`.

Each command lives in the module that owns its concept and exposes `main(argv: list[str]) -> int`; this
file only routes. Modules are imported lazily so `sop --help` stays fast and a command's heavy imports
(torch, MuJoCo, Ray) are paid only by that command.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass


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
    "robot run": Command("robot_client.daemon", "run the robot daemon"),
    "learner serve": Command("cloud_learner.service", "serve the fleet: ingest, train, publish"),
    "demo": Command("sim.fleet_demo", "the fleet demo: online post-training end to end"),
    "export lerobot": Command(
        "sop.data.lerobot_dataset", "export an episode store as a LeRobotDataset v3", "export_main"
    ),
    "import lerobot": Command(
        "sop.data.lerobot_dataset", "import a LeRobotDataset as offline demonstrations", "import_main"
    ),
    "bench env": Command("sim.benchmark", "Meta-World env steps/s with and without rendering"),
    "bench data": Command("sop.data.benchmark", "codec, store and window-sampler throughput"),
    "bench rti": Command("sim.rti_benchmark", "RTI vs DDPM/DDIM success and latency"),
    "bench robot": Command("robot_client.benchmark", "control-loop timing while uploading and swapping"),
    "bench learner": Command("cloud_learner.benchmark", "ingest, broadcast and trainer throughput"),
    "bench fleet": Command("sim.fleet_benchmark", "success vs per-robot steps for 1, 2, 4 robots"),
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


def _usage(commands: dict[str, Command]) -> str:
    width = max((len(n) for n in commands), default=0)
    lines = ["usage: sop <command> [options]   (sop <command> --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in sorted(commands.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not args or args[0] in ("-h", "--help"):
        print(_usage(commands))
        return 0
    for words in (2, 1):
        name = " ".join(args[:words])
        if name in commands:
            command = commands[name]
            entry: Callable[[list[str]], int] = getattr(
                importlib.import_module(command.module), command.function
            )
            return int(entry(args[words:]) or 0)
    print(f"sop: unknown command {' '.join(args[:2])!r}\n\n{_usage(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
