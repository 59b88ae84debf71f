"""The packages import each other only the way the design allows.

`robot_client` runs on an edge computer beside a real arm: it must not drag in the simulator (MuJoCo,
Meta-World) or the learner (Ray, training). `robot_client` and `cloud_learner` meet only through the wire
contract, and `sop` is the core both sides share, so it imports neither side nor the simulator. `sim` is the
environments, the simulated operator and the scripted experts: it knows neither side of the fleet. Where the
simulator meets the fleet (the demo, the robot and operator plug-ins) is `fleet_harness/`, which may import
them all. Kinds of robots and operators reach the daemon as plug-ins (robot_client/kinds.py), not as imports.

Every module is parsed, not imported: imports inside functions and under `TYPE_CHECKING` count too, and so
does `importlib.import_module("<literal>")`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sop", "robot_client", "cloud_learner", "sim", "fleet_harness")

# package -> the packages it must never import
# (`benchmarks/` is scripts beside the product: nothing shipped imports it.)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "robot_client": ("sim", "cloud_learner", "fleet_harness", "benchmarks"),
    "cloud_learner": ("robot_client", "sim", "fleet_harness", "benchmarks"),
    "sim": ("robot_client", "cloud_learner", "fleet_harness", "benchmarks"),
    "fleet_harness": ("benchmarks",),
    "sop": ("robot_client", "cloud_learner", "sim", "fleet_harness", "benchmarks"),
}


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a parsed module named `module`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _violations(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    violations = []
    for path in sorted((REPO / package).rglob("*.py")):
        relative = path.relative_to(REPO)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        if relative.name == "__init__.py":
            module += ".__init__"  # so a relative import resolves against the package itself
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in _imported_modules(tree, module):
            top = name.partition(".")[0]
            if top in forbidden:
                violations.append(f"{relative}:{line} imports {name}")
    return violations


def test_parser_sees_every_kind_of_import() -> None:
    source = (
        "import sim.tasks\n"
        "from cloud_learner import service\n"
        "def f():\n"
        "    from sim.operator import SimulatedOperator\n"
        "    importlib.import_module('cloud_learner.replay')\n"
        "from . import config\n"
        "from ..sop import episode\n"
    )
    found = _imported_modules(ast.parse(source), "robot_client.sub.module")
    assert sorted(found) == [
        (1, "sim.tasks"),
        (2, "cloud_learner"),
        (4, "sim.operator"),
        (5, "cloud_learner.replay"),
        (6, "robot_client.sub"),
        (7, "robot_client.sop"),
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    assert (REPO / package / "__init__.py").is_file(), f"{package}/ is not a package any more"
    violations = _violations(package)
    assert not violations, (
        f"{package} must not import {' or '.join(FORBIDDEN[package])} (kinds are plug-ins found by name, not imports):\n"
        + "\n".join(violations)
    )
