"""Robot kinds and operator kinds: looked up by name, provided by the package that implements them.

`robot.type: metaworld` and `operator.type: simulated` name *kinds*. The daemon does not import the code
behind a kind; it asks a registry, which the providing package fills in one of two ways:

- An installed package declares its kinds as Python entry points, the standard way for third-party
  plug-ins (`fleet_harness` does this for `metaworld` and `simulated`, in this repository's pyproject.toml):

      [project.entry-points."sop.robot_kinds"]
      metaworld = "fleet_harness.robot_plugins:make_metaworld_robot"

  An entry point is imported only when its kind is used. So a daemon on a real arm never imports the
  simulator, and a kind whose dependencies are missing breaks only itself: using it stops with a line that
  names the package to install.
- Code that builds robots itself (tests, a notebook, a custom launcher) registers in-process:
  `register_robot_kind("my_arm", make_my_arm)`. An in-process kind wins over an entry point of the same
  name only when registered with `replace=True`.

robot_client's own kinds (`lerobot`, `factory`; operators `none`, `lerobot_teleop`, `factory`) come through
the same entry points, so nothing distinguishes a built-in kind from a plug-in.

The factories a kind provides:

    robot kind     (RobotPluginConfig, ControlConfig) -> Robot
    operator kind  (OperatorConfig, RobotPluginConfig, Robot) -> OperatorInput | None   (None: no local operator)
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robot_client.config import ControlConfig, OperatorConfig, RobotPluginConfig
    from robot_client.operators import OperatorInput
    from robot_client.robots import Robot

    RobotFactory = Callable[[RobotPluginConfig, ControlConfig], Robot]
    OperatorFactory = Callable[[OperatorConfig, RobotPluginConfig, Robot], OperatorInput | None]

ROBOT_KINDS_GROUP = "sop.robot_kinds"
OPERATOR_KINDS_GROUP = "sop.operator_kinds"


class KindError(ValueError):
    """A kind no package provides, or whose providing package cannot be imported here."""


@functools.cache
def _entry_points(group: str) -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """The installed entry points of a group by name (read once per process: ~10 ms per scan)."""
    found: dict[str, tuple[metadata.EntryPoint, ...]] = {}
    for entry in metadata.entry_points(group=group):
        if all(entry.value != seen.value for seen in found.get(entry.name, ())):
            found[entry.name] = (*found.get(entry.name, ()), entry)
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _install_hint(missing_module: str, entry: metadata.EntryPoint) -> str:
    """What to pip-install for a module an entry point could not import: the providing distribution's
    extra that requires it when there is one, else the requirement itself, else the module's name."""
    top = missing_module.partition(".")[0]
    distribution = entry.dist
    if distribution is None:
        return f"pip install {top}"
    own_packages = (distribution.read_text("top_level.txt") or "").split()
    if top == entry.module.partition(".")[0] or top in own_packages:
        return f"pip install {distribution.name}"  # a package of the plug-in's own distribution: reinstall it
    for requirement in distribution.requires or ():
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name is None or _normalized(name.group(0)) != _normalized(top):
            continue
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if extra is not None:
            return f"pip install '{distribution.name}[{extra.group(1)}]'"
        return f"pip install '{requirement.partition(';')[0].strip()}'"
    return f"pip install {top}"


class KindRegistry[FactoryT: Callable[..., object]]:
    """Names -> factories of one kind of thing: in-process registrations first, then entry points."""

    def __init__(self, key: str, group: str, register_function: str) -> None:
        self.key = key  # the config key that names a kind, for messages ("robot.type")
        self.group = group
        self.register_function = register_function
        self._registered: dict[str, FactoryT] = {}

    def register(self, name: str, factory: FactoryT, *, replace: bool = False) -> None:
        """Make `name` mean `factory` in this process. Taking a name that is already provided needs
        `replace=True`, so two plug-ins cannot silently fight over one name."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"{self.key}: a kind name must be a non-empty word, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.key} {name!r}: the factory must be callable, got {factory!r}")
        if not replace and name in self.names():
            raise ValueError(
                f"{self.key} {name!r} is already provided; pass replace=True to {self.register_function}"
            )
        self._registered[name] = factory

    def unregister(self, name: str) -> None:
        """Forget an in-process registration (entry points stay)."""
        self._registered.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every kind known here, sorted; entry points are listed without being imported."""
        return tuple(sorted({*self._registered, *_entry_points(self.group)}))

    def check(self, name: str) -> None:
        """Raise `KindError` naming the known kinds unless `name` is one (nothing is imported)."""
        known = self.names()
        if name in known:
            return
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KindError(
            f"{self.key} {name!r} is not a known kind{hint}; known: {', '.join(known) or 'none'}. "
            f"A package adds a kind with a {self.group!r} entry point, code with {self.register_function}()"
        )

    def load(self, name: str) -> FactoryT:
        """The factory of kind `name`, importing its entry point if it is one."""
        if name in self._registered:
            return self._registered[name]
        self.check(name)
        entries = _entry_points(self.group)[name]
        if len(entries) > 1:
            providers = ", ".join(f"{e.value} ({e.dist.name if e.dist else '?'})" for e in entries)
            raise KindError(
                f"{self.key} {name!r} is provided twice: {providers}; uninstall one of those packages"
            )
        (entry,) = entries
        provider = f"{entry.value} (package {entry.dist.name if entry.dist else '?'})"
        try:
            factory = entry.load()
        except ModuleNotFoundError as exc:
            missing = exc.name or str(exc)
            raise KindError(
                f"{self.key} {name!r} comes from {provider}, which needs the missing module {missing!r}: "
                f"{_install_hint(missing, entry)}"
            ) from exc
        except (ImportError, AttributeError) as exc:
            raise KindError(f"{self.key} {name!r}: {provider} cannot be loaded here: {exc}") from exc
        if not callable(factory):
            raise KindError(f"{self.key} {name!r}: {provider} is not callable")
        return factory  # type: ignore[no-any-return]


ROBOT_KINDS: KindRegistry[RobotFactory] = KindRegistry("robot.type", ROBOT_KINDS_GROUP, "register_robot_kind")
OPERATOR_KINDS: KindRegistry[OperatorFactory] = KindRegistry(
    "operator.type", OPERATOR_KINDS_GROUP, "register_operator_kind"
)


def register_robot_kind(name: str, factory: RobotFactory, *, replace: bool = False) -> None:
    """Make `robot.type: <name>` build robots with `factory(robot_config, control_config)`."""
    ROBOT_KINDS.register(name, factory, replace=replace)


def register_operator_kind(name: str, factory: OperatorFactory, *, replace: bool = False) -> None:
    """Make `operator.type: <name>` build operator inputs with `factory(operator_config, robot_config, robot)`."""
    OPERATOR_KINDS.register(name, factory, replace=replace)
