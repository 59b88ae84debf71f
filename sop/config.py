"""Typed configs: dataclasses loaded from `configs/*.yaml` and overridden from the command line.

draccus (what lerobot uses) does the parsing; this module gives every command the same entry point and
turns draccus' and `__post_init__`'s errors into one `ConfigError` that names the offending key.

    cfg = parse_config(LearnerConfig, ["--config", "configs/learner.yaml", "--trainer.batch_size", "64"])
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import draccus
import yaml

# The configs that ship inside the package. In the repository `sop/configs` is a link to the top-level
# `configs/`, the one copy users read and edit; a built wheel holds the files themselves (pyproject.toml,
# package-data), so an installed `sop demo` finds `demo.yaml` without a checkout.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass: unknown key, bad value, failed check."""


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Accept `--config FILE` / `--config=FILE` (the draccus spelling `--config_path` works too)."""
    rest: list[str] = []
    path: str | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "--config_path"):
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a file path")
            path = args[i + 1]
            i += 2
            continue
        if arg.startswith(("--config=", "--config_path=")):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def resolve_config_path(path: str | Path) -> Path:
    """The config file a user named: the path as given if it exists; a config named by its file name
    (`demo.yaml`, or `configs/demo.yaml` outside the repository) comes from the working directory's `configs/`
    first, then from the configs shipped in the package.

    Any other path that does not exist is an error rather than a packaged stand-in: a mistyped
    `/etc/sop/robot.yaml` must not run a robot on the default config.
    """
    candidate = Path(path)
    if candidate.exists():
        return candidate
    named = len(candidate.parts) == 1 or (len(candidate.parts) == 2 and candidate.parts[0] == "configs")
    if named:
        for folder in (Path("configs"), CONFIG_DIR):
            found = folder / candidate.name
            if found.is_file():
                return found
        shipped = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(
            f"config file {str(path)!r} does not exist (looked in ., ./configs and the configs shipped with "
            f"sop: {shipped}): give the path of an existing file or one of those names"
        )
    raise ConfigError(f"config file {str(path)!r} does not exist: give a path to an existing YAML file")


def _explain(exc: BaseException) -> str:
    """draccus wraps a failed `__post_init__` check; surface the check's own message, which names the field,
    without draccus' "Couldn't instantiate class ... using the given arguments." preamble."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, yaml.YAMLError):  # the config file itself
        return f"not valid YAML: {' '.join(str(cause).split())}"
    if isinstance(cause, (ValueError, TypeError)) and str(exc).startswith("Couldn't instantiate"):
        return str(cause)
    return f"{exc} {cause}" if isinstance(cause, (ValueError, TypeError)) else str(exc)


def parse_config[T](cls: type[T], argv: Sequence[str] = (), default_config: str | Path | None = None) -> T:
    """Build `cls` from an optional YAML file plus `--dotted.key value` overrides.

    Raises `ConfigError` for an unknown key in the file or on the command line, a value of the wrong type, or
    a failed validation; the `sop` front door prints it as one line. `--help` still prints the options.
    """
    path, rest = _split_config_flag(argv)
    chosen = path if path is not None else default_config
    config_path = str(resolve_config_path(chosen)) if chosen is not None else None
    sources = " + ".join([*([config_path] if config_path else []), *(["the command line"] if rest else [])])
    where = f" ({sources})" if sources else ""
    try:
        return draccus.parse(config_class=cls, config_path=config_path, args=rest, exit_on_error=False)
    except argparse.ArgumentError as exc:  # a flag without its value, or an unknown choice
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:  # a flag's value (`--tasks "[a,"`) is not YAML
        raise ConfigError(f"not valid YAML{where}: {' '.join(str(exc).split())}") from None
    except draccus.utils.DraccusException as exc:
        raise ConfigError(f"bad config{where}: {_explain(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def config_from_dict[T](cls: type[T], values: Mapping[str, Any]) -> T:
    """Build `cls` from a plain mapping (a YAML document already loaded, or a manifest's JSON)."""
    try:
        return draccus.decode(cls, dict(values))
    except draccus.utils.DraccusException as exc:
        raise ConfigError(f"bad {cls.__name__}: {_explain(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def load_config_file[T](cls: type[T], path: str | Path) -> T:
    """Build `cls` from a YAML file alone."""
    resolved = resolve_config_path(path)
    try:
        values = yaml.safe_load(resolved.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{resolved} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{resolved} must hold a mapping of config keys, got {type(values).__name__}")
    return config_from_dict(cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config (for manifests and run folders)."""
    encoded = draccus.encode(config)
    assert isinstance(encoded, dict)
    return encoded
