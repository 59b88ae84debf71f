"""Typed configs: dataclasses loaded from `configs/*.yaml` and overridden from the command line.

draccus (what lerobot uses) does the parsing; this module gives every command the same entry point and
turns draccus' and `__post_init__`'s errors into one `ConfigError` that names the offending key.

    cfg = parse_config(LearnerConfig, ["--config", "configs/learner.yaml", "--trainer.batch_size", "64"])

One spelling for every flag of every command: `--config FILE` picks the YAML file, and any other flag is a
config key exactly as the YAML spells it, dotted for a nested section, with underscores
(`--robot_id r1`, `--learner.address host:port`, `--budget_s 5`). This is also the one place a flag is
rewritten: a list-typed key takes a comma list (`--tasks a,b` is `--tasks [a,b]`), whichever config it is in.
A key of a mapping-typed field (a free-form mapping such as the demo's `learner:` overrides) is dotted the
same way: `--learner.trainer.batch_size 32` sets `batch_size` inside `learner: {trainer: ...}`. Nothing else
translates flags; a dashed or shortened spelling (`--robot-id`, `--learner`) is an unknown flag, and the error
says which key was probably meant.

Choices are spelled one of two ways, by whether the choice carries parameters of its own:

- A choice with its own parameters is a draccus choice type (a `draccus.ChoiceRegistry` base, one registered
  subclass per kind holding only that kind's fields), selected by `type:` — the learner's `algorithm`, the
  policy's `sampler` (`sampler: {type: ddim, steps: 10}`, `--policy.sampler.type ddim`). Setting another
  `type` on the command line than the file's starts that section from the new kind's defaults (the file's
  keys belong to the old kind); keys without a `type` apply to the kind the file or the default chose.
- A choice without parameters is an `enum.StrEnum` field, written by its value (`swap_at: episode`); draccus
  parses it by value, and a wrong value is a one-line `ConfigError` that lists the allowed ones.

A stored config (a config file, a run folder's `config.json`) in an older spelling still loads: a config class
whose layout changed has a classmethod `upgrade_stored(values) -> values`, applied here before decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import enum
import json
import tempfile
import types
import typing
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


def _decode_str_enum(kind: type[enum.StrEnum], raw_value: Any, path: Sequence[str]) -> enum.StrEnum:
    """A choice without parameters, by its value; a wrong value names the allowed ones (draccus' own decoder
    lets a KeyError escape with a two-line message that does not)."""
    if raw_value in {member.value for member in kind}:
        return kind(raw_value)
    allowed = [member.value for member in kind]
    raise draccus.utils.DecodingError(path, f"must be one of {allowed}, got {raw_value!r}")


draccus.decode.register(enum.StrEnum, _decode_str_enum, include_subclasses=True)


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
    (`demo.yaml`, `demo`, or `configs/demo.yaml` outside the repository) comes from the working directory's
    `configs/` first, then from the configs shipped in the package.

    Any other path that does not exist is an error rather than a packaged stand-in: a mistyped
    `/etc/sop/robot.yaml` must not run a robot on the default config.
    """
    candidate = Path(path)
    if candidate.exists():
        return candidate
    named = len(candidate.parts) == 1 or (len(candidate.parts) == 2 and candidate.parts[0] == "configs")
    if named:
        names = [candidate.name] if candidate.suffix else [candidate.name, candidate.name + ".yaml"]
        for folder in (Path("configs"), CONFIG_DIR):
            for name in names:
                found = folder / name
                if found.is_file():
                    return found
        shipped = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))) or "none"
        raise ConfigError(
            f"config file {str(path)!r} does not exist (looked in ., ./configs and the configs shipped with "
            f"sop: {shipped}): give the path of an existing file or one of those names"
        )
    raise ConfigError(f"config file {str(path)!r} does not exist: give a path to an existing YAML file")


@dataclasses.dataclass(frozen=True)
class _Keys:
    """The keys a config class accepts on the command line."""

    values: dict[str, Any]  # dotted key -> its annotation (a leaf: takes a value)
    sections: frozenset[str]  # dotted keys of nested configs (`learner`, `trainer`)
    open_sections: frozenset[str]  # choice-typed sections whose keys depend on the chosen `type`
    mappings: frozenset[str]  # dotted keys of free-form mapping fields (`dict[str, Any]`): any key inside


def _resolved_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a forward reference only a type checker can resolve: fall back to the raw fields
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _config_keys(cls: type) -> _Keys:
    values: dict[str, Any] = {}
    sections: set[str] = set()
    open_sections: set[str] = set()
    mappings: set[str] = set()

    def walk(owner: type, prefix: str) -> None:
        hints = _resolved_hints(owner)
        for item in dataclasses.fields(owner):
            key = prefix + item.name
            kind = hints.get(item.name, item.type)
            if isinstance(kind, type) and issubclass(kind, draccus.ChoiceRegistry):
                sections.add(key)
                open_sections.add(key)
                values[key + ".type"] = str
                for choice in kind.get_known_choices().values():
                    if isinstance(choice, type) and dataclasses.is_dataclass(choice):
                        walk(choice, key + ".")
            elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
                sections.add(key)
                walk(kind, key + ".")
            else:
                values[key] = kind
                if typing.get_origin(kind) in (dict, Mapping) or kind is dict:
                    mappings.add(key)

    walk(cls, "")
    return _Keys(values, frozenset(sections), frozenset(open_sections), frozenset(mappings))


def _is_list_type(kind: Any) -> bool:
    """list[...], tuple[...], set[...] or a Sequence, also inside `X | None`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_type(arg) for arg in typing.get_args(kind) if arg is not type(None))
    return origin in (list, tuple, set, frozenset, Sequence) or kind in (list, tuple, set, frozenset)


_NULLS = frozenset({"null", "None", "~"})


def _as_list(value: str) -> str:
    """`a,b` -> `[a,b]`; a value already in brackets, or null, stays as it is."""
    stripped = value.strip()
    if stripped.startswith("[") or stripped in _NULLS:
        return value
    return f"[{stripped}]"


def _flag_name(arg: str) -> str | None:
    """`--a.b` / `--a.b=value` -> `a.b`; anything else (a value, `-h`) -> None."""
    if not arg.startswith("--") or len(arg) == 2:
        return None
    return arg[2:].partition("=")[0]


def _expand_lists(args: Sequence[str], keys: _Keys) -> list[str]:
    """The only rewrite of a flag: a comma list for a list-typed key."""
    out = list(args)
    for i, arg in enumerate(out):
        name = _flag_name(arg)
        if name is None or not _is_list_type(keys.values.get(name)):
            continue
        if "=" in arg:
            out[i] = f"--{name}={_as_list(arg.partition('=')[2])}"
        elif i + 1 < len(out) and _flag_name(out[i + 1]) is None:
            out[i + 1] = _as_list(out[i + 1])
    return out


def _mapping_of(name: str, keys: _Keys) -> str | None:
    """The mapping field a dotted flag reaches into (`learner` for `learner.trainer.lr`), or None."""
    return next((m for m in keys.mappings if name.startswith(m + ".")), None)


def _fold_mapping_flags(args: Sequence[str], keys: _Keys) -> list[str]:
    """`--learner.trainer.batch_size 32 --learner.algorithm.optimizer.lr 1e-3` -> one
    `--learner '{"trainer": {"batch_size": 32}, ...}'`, which draccus merges into the file's mapping."""
    out: list[str] = []
    folded: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name = _flag_name(arg)
        mapping = _mapping_of(name, keys) if name is not None else None
        if mapping is None or name is None:
            out.append(arg)
            i += 1
            continue
        if "=" in arg:
            text = arg.partition("=")[2]
            i += 1
        elif i + 1 < len(args):
            text = args[i + 1]
            i += 2
        else:
            raise ConfigError(f"--{name} needs a value")
        node = folded.setdefault(mapping, {})
        *parents, leaf = name.removeprefix(mapping + ".").split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--{name}: {part!r} is set to a value and cannot also hold keys")
            node = child
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError:
            node[leaf] = text
    for mapping, values in folded.items():
        out.append(f"--{mapping}={json.dumps(values)}")
    return out


def _suggestion(name: str, keys: _Keys) -> str:
    """The key a mistyped flag probably meant, as ` (did you mean --x?)`, or ``."""
    candidates = sorted(keys.values)
    underscored = name.replace("-", "_")
    if underscored in keys.values:
        return f"; did you mean --{underscored}?"
    if name in keys.sections:
        inside = [k for k in candidates if k.startswith(name + ".")]
        return f": set one of its keys, e.g. --{inside[0]}" if inside else ""
    leaves = {k: k.rpartition(".")[2] for k in candidates}
    close = (
        [k for k, leaf in leaves.items() if leaf == underscored]
        or difflib.get_close_matches(underscored, candidates, n=1, cutoff=0.75)
        or [k for k, leaf in leaves.items() if leaf.startswith(underscored + "_")]
    )
    return f"; did you mean --{close[0]}?" if close else ""


def _misspelled_flag(args: Sequence[str], keys: _Keys) -> str | None:
    """The first flag that is no key of the config (or names a whole section), with a hint; else None."""
    for arg in args:
        name = _flag_name(arg)
        if name is None or name in keys.values or name in ("help", "config_path"):
            continue
        if any(name.startswith(s + ".") for s in keys.open_sections | keys.mappings):
            continue  # a key of a choice-typed section: draccus knows which choice it belongs to
        if name in keys.sections and "=" not in arg:
            return f"--{name} is a section of the config, not a key{_suggestion(name, keys)}"
        if name not in keys.sections:
            return f"unknown flag --{name}{_suggestion(name, keys)}"
    return None


def _explain(exc: BaseException) -> str:
    """draccus wraps a failed `__post_init__` check; surface the check's own message, which names the field,
    without draccus' "Couldn't instantiate class ... using the given arguments." preamble."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, yaml.YAMLError):  # the config file itself
        return f"not valid YAML: {' '.join(str(cause).split())}"
    if isinstance(cause, (ValueError, TypeError)) and str(exc).startswith("Couldn't instantiate"):
        return str(cause)
    return f"{exc} {cause}" if isinstance(cause, (ValueError, TypeError)) else str(exc)


def _choice_class(kind: type, values: Mapping[str, Any]) -> type | None:
    """The registered class a choice section's mapping selects (its `type`, else the default kind)."""
    name = values.get("type", kind.default_choice_name())  # type: ignore[attr-defined]
    try:
        chosen = kind.get_choice_class(name)  # type: ignore[attr-defined]
    except (KeyError, TypeError):
        return None  # an unknown kind: decoding names it
    return chosen if isinstance(chosen, type) else None


def _upgrade_stored(cls: type, values: Any) -> Any:
    """`values` with every section in an older spelling rewritten by its class's `upgrade_stored`."""
    upgrade = getattr(cls, "upgrade_stored", None)
    if upgrade is not None:
        values = upgrade(values)
    if not isinstance(values, dict):
        return values
    if issubclass(cls, draccus.ChoiceRegistry) and "_choice_registry" in vars(cls):
        chosen = _choice_class(cls, values)
        if chosen is None:
            return values
        cls = chosen
    if not dataclasses.is_dataclass(cls):
        return values
    hints = _resolved_hints(cls)
    out = dict(values)
    for item in dataclasses.fields(cls):
        kind = hints.get(item.name, item.type)
        if item.name in out and isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out[item.name] = _upgrade_stored(kind, out[item.name])
    return out


def _flag_values(args: Sequence[str]) -> dict[str, str]:
    """`--a.b value` / `--a.b=value` -> {"a.b": "value"} (the last one wins, as in draccus)."""
    values: dict[str, str] = {}
    for i, arg in enumerate(args):
        name = _flag_name(arg)
        if name is None:
            continue
        if "=" in arg:
            values[name] = arg.partition("=")[2]
        elif i + 1 < len(args) and _flag_name(args[i + 1]) is None:
            values[name] = args[i + 1]
    return values


def _section_class(cls: type, dotted: str) -> type | None:
    """The declared class of a nested section (`policy.sampler` -> SamplerConfig)."""
    owner: type = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(owner):
            return None
        kind = _resolved_hints(owner).get(part)
        if not isinstance(kind, type):
            return None
        owner = kind
    return owner


def _switch_choices(cls: type, values: dict[str, Any], args: Sequence[str], keys: _Keys) -> dict[str, Any]:
    """The file's mapping without each choice section whose `type` the command line changes: those keys belong
    to the file's kind, and the new kind starts from its own defaults plus the command line's keys."""
    flags = _flag_values(args)
    out = json.loads(json.dumps(values))  # a deep copy of plain YAML data
    for section in sorted(keys.open_sections, key=lambda name: name.count(".")):
        chosen = flags.get(section + ".type")
        *parents, leaf = section.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if chosen is None or not isinstance(node, dict) or not isinstance(node.get(leaf), dict):
            continue
        kind = _section_class(cls, section)
        current = node[leaf].get("type", kind.default_choice_name() if kind is not None else None)  # type: ignore[attr-defined]
        if str(current) != yaml.safe_load(chosen):
            del node[leaf]
    return out


def _file_as_decoded(cls: type, config_path: str, args: Sequence[str], keys: _Keys) -> dict[str, Any] | None:
    """The config file's mapping as it must be decoded (older spellings upgraded, choice sections the command
    line switches dropped), or None when the file is fine as it is or is not a YAML mapping (draccus says so)."""
    try:
        values = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(values, dict):
        return None
    prepared = _switch_choices(cls, _upgrade_stored(cls, values), args, keys)
    return None if prepared == values else prepared


def parse_config[T](cls: type[T], argv: Sequence[str] = (), default_config: str | Path | None = None) -> T:
    """Build `cls` from an optional YAML file plus `--dotted.key value` overrides.

    Raises `ConfigError` for an unknown key in the file or on the command line, a value of the wrong type, or
    a failed validation; the `sop` front door prints it as one line. `--help` still prints the options.
    A list-typed key also takes a comma list (`--tasks a,b`); see the module docstring for the spelling.
    """
    path, rest = _split_config_flag(argv)
    chosen = path if path is not None else default_config
    config_path = str(resolve_config_path(chosen)) if chosen is not None else None
    sources = " + ".join([*([config_path] if config_path else []), *(["the command line"] if rest else [])])
    where = f" ({sources})" if sources else ""
    keys = _config_keys(cls)
    rest = _fold_mapping_flags(_expand_lists(rest, keys), keys)
    with contextlib.ExitStack() as stack:
        prepared = _file_as_decoded(cls, config_path, rest, keys) if config_path is not None else None
        if prepared is not None:  # draccus reads a file: hand it the prepared mapping as one
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sop-config-"))
            config_path = str(Path(folder) / "config.yaml")
            Path(config_path).write_text(yaml.safe_dump(prepared, sort_keys=False))
        return _parse(cls, config_path, rest, keys, where)


def _parse[T](cls: type[T], config_path: str | None, rest: list[str], keys: _Keys, where: str) -> T:
    try:
        return draccus.parse(config_class=cls, config_path=config_path, args=rest, exit_on_error=False)
    except argparse.ArgumentError as exc:  # a flag without its value, or an unknown choice
        misspelled = _misspelled_flag(rest, keys)
        raise ConfigError(f"bad config{where}: {misspelled}" if misspelled else str(exc)) from None
    except yaml.YAMLError as exc:  # a flag's value (`--tasks "[a,"`) is not YAML
        raise ConfigError(f"not valid YAML{where}: {' '.join(str(exc).split())}") from None
    except draccus.utils.DraccusException as exc:
        misspelled = _misspelled_flag(rest, keys)
        raise ConfigError(f"bad config{where}: {misspelled or _explain(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def config_from_dict[T](cls: type[T], values: Mapping[str, Any]) -> T:
    """Build `cls` from a plain mapping (a YAML document already loaded, a manifest's or a run folder's JSON);
    sections in an older spelling are upgraded first (`upgrade_stored`)."""
    try:
        return draccus.decode(cls, _upgrade_stored(cls, dict(values)))
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
    """The plain-data form of a config (for manifests, run folders and child processes' flags); a choice
    (a sampler config on its own, say) keeps its `type`, so it decodes back to the same kind."""
    registry = next((c for c in type(config).__mro__ if "_choice_registry" in vars(c)), None)
    encoded = draccus.encode(config, registry) if registry is not None else draccus.encode(config)
    assert isinstance(encoded, dict)
    return encoded
