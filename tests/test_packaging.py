"""What `pip install` gives each role: the extras of pyproject.toml and the configs inside the wheel.

A robot's edge computer installs `sop[robot]` and must not need MuJoCo, Meta-World, Ray or TensorBoard; an
installed `sop demo` must find its configs without a checkout. The dependency checks read the installed
distributions' metadata (what pip would resolve), the import checks parse every module (nothing is imported).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIRST_PARTY = frozenset({"sop", "robot_client", "cloud_learner", "sim", "fleet_harness", "benchmarks"})

# package -> the extra its role installs ("" is the base every role shares)
ROLE_OF_PACKAGE = {
    "sop": "",
    "robot_client": "robot",
    "cloud_learner": "learner",
    "sim": "sim",
    "fleet_harness": "sim",
    "benchmarks": "sim",
}

# Modules that need a distribution other than the one that owns their top-level name.
IMPORTED_THROUGH = {"torch.utils.tensorboard": "tensorboard"}

# The simulator and the training stack: never on a robot.
NOT_ON_A_ROBOT = frozenset({"mujoco", "metaworld", "ray", "tensorboard"})


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _role_requirements(extra: str) -> list[Requirement]:
    """The requirements `pip install sop[extra]` asks for, with sop's own extras (`sop[robot,learner]`) expanded."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    found = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in extras[name]:
            requirement = Requirement(text)
            if _norm(requirement.name) == "sop":
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def _installed_closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution those requirements pull in, from the installed metadata (markers evaluated here)."""
    closure: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = _norm(requirement.name)
        closure.add(name)
        if (name, frozenset(requirement.extras)) in visited:
            continue
        visited.add((name, frozenset(requirement.extras)))
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not for this platform
        for text in requires:
            child = Requirement(text)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(child)
    return closure


def _optional_imports(tree: ast.AST) -> set[ast.AST]:
    """Import statements inside a `try:` that catches ImportError: the code works without the module (e.g. a
    plot skipped with a log line), so the role need not install it."""
    optional: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers
        ):
            for statement in node.body:
                optional.update(n for n in ast.walk(statement) if isinstance(n, ast.Import | ast.ImportFrom))
    return optional


def _third_party_imports(package: str) -> dict[str, list[str]]:
    """Imported module -> where, for every import of a module outside the standard library and this project
    that the code cannot do without."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if node in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(name, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


@functools.cache
def _owners() -> dict[str, list[str]]:
    """Top-level import name -> the installed distributions that provide it (a scan of every one: slow)."""
    return dict(metadata.packages_distributions())


def _distributions_for(module: str) -> set[str]:
    for prefix, distribution in IMPORTED_THROUGH.items():
        if module == prefix or module.startswith(prefix + "."):
            return {distribution}
    return {_norm(d) for d in _owners().get(module.partition(".")[0], [])}


@pytest.mark.parametrize("package", sorted(ROLE_OF_PACKAGE))
def test_each_package_imports_only_what_its_role_installs(package: str) -> None:
    if not (REPO / package).is_dir():
        pytest.skip(f"{package}/ is not in this tree")
    extra = ROLE_OF_PACKAGE[package]
    installed = _installed_closure(_role_requirements(extra))
    missing = [
        f"{module} ({', '.join(where[:3])})"
        for module, where in sorted(_third_party_imports(package).items())
        if not _distributions_for(module) & installed
    ]
    role = f"sop[{extra}]" if extra else "sop (the base dependencies)"
    assert not missing, f"{package}/ imports what {role} does not install; declare it there:\n" + "\n".join(
        missing
    )


def test_a_robot_install_leaves_out_the_simulator_and_training_stack() -> None:
    for extra in ("", "robot"):
        pulled = _installed_closure(_role_requirements(extra)) & NOT_ON_A_ROBOT
        assert not pulled, f"sop[{extra}] pulls {sorted(pulled)}"
    assert not _installed_closure(_role_requirements("learner")) & {"mujoco", "metaworld"}


def test_dev_installs_every_role() -> None:
    """`make setup` installs `.[dev]`: the whole suite and every command must work from it."""
    everything = {_norm(r.name) for r in _role_requirements("dev")}
    for extra in ("robot", "learner", "sim"):
        assert {_norm(r.name) for r in _role_requirements(extra)} <= everything


def _copy_of_the_source(destination: Path) -> Path:
    """The sources a wheel is built from, without caches, runs or the virtual environment."""
    skipped = {".git", ".venv", "runs", "build", "dist", "tests", "__pycache__", ".mypy_cache", ".ruff_cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in skipped or n.endswith(".egg-info") or n.startswith(".pytest")}

    shutil.copytree(REPO, destination, symlinks=True, ignore=ignore)
    return destination


def test_the_wheel_ships_every_config_and_an_installed_sop_finds_them(tmp_path: Path) -> None:
    source = _copy_of_the_source(tmp_path / "src")
    # --no-build-isolation: the venv's setuptools, so the test needs no index.
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "wheels", str(source)]
    built = subprocess.run(
        [sys.executable, "-m", *pip_wheel],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("sop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("sop/configs/")}
        archive.extractall(tmp_path / "site")
    configs = source / "configs"
    expected = {f"sop/configs/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*.yaml")}
    assert "sop/configs/deployments/shifted-objects.yaml" in expected and shipped == expected

    # The unpacked wheel is what a non-editable install puts in site-packages; the working directory has no
    # configs/, so `configs/demo.yaml` and `demo.yaml` must come from inside the package.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    probe = (
        "import sop.config as c; "
        "print(c.resolve_config_path('configs/demo.yaml')); print(c.resolve_config_path('robot.yaml'))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr[-3000:]
    demo, robot = (Path(line) for line in found.stdout.split())
    assert demo == tmp_path / "site" / "sop" / "configs" / "demo.yaml"
    assert robot == tmp_path / "site" / "sop" / "configs" / "robot.yaml"
    assert demo.read_text() == (REPO / "configs" / "demo.yaml").read_text()


def test_the_package_configs_are_the_top_level_configs() -> None:
    """One copy: `sop/configs` links to `configs/`, so the shipped configs cannot drift from the ones users edit."""
    from sop.config import CONFIG_DIR

    assert CONFIG_DIR.resolve() == (REPO / "configs").resolve()
