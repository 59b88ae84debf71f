"""Robot and operator kinds are plug-ins looked up by name: entry points of installed packages, or kinds
registered in-process. A daemon without the simulator installed still runs, and asking it for a simulated
kind says what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from robot_fakes import FakeRobot, ScriptedOperator

from robot_client.config import ControlConfig, OperatorConfig, RobotConfig, RobotPluginConfig
from robot_client.kinds import (
    OPERATOR_KINDS,
    ROBOT_KINDS,
    KindError,
    register_operator_kind,
    register_robot_kind,
)
from robot_client.operators import make_local_operator
from robot_client.robots import make_robot
from sop.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def test_kinds() -> Iterator[None]:
    """`test_arm` (a FakeRobot) and `test_operator` (a ScriptedOperator), registered for one test."""
    register_robot_kind("test_arm", lambda config, control: FakeRobot())
    register_operator_kind("test_operator", lambda config, robot_config, robot: ScriptedOperator(1, 2))
    yield
    ROBOT_KINDS.unregister("test_arm")
    OPERATOR_KINDS.unregister("test_operator")


def test_the_shipped_kinds_are_entry_points() -> None:
    assert {"metaworld", "lerobot", "factory"} <= set(ROBOT_KINDS.names())
    assert {"none", "simulated", "lerobot_teleop", "factory"} <= set(OPERATOR_KINDS.names())


@pytest.mark.usefixtures("test_kinds")
def test_a_kind_registered_in_process_is_built_by_name() -> None:
    config = RobotPluginConfig(type="test_arm", task="anything")
    robot = make_robot(config, ControlConfig())
    assert isinstance(robot, FakeRobot)
    operator = make_local_operator(OperatorConfig(type="test_operator"), config, robot)
    assert isinstance(operator, ScriptedOperator)
    assert make_local_operator(OperatorConfig(type="none"), config, robot) is None


@pytest.mark.usefixtures("test_kinds")
def test_a_taken_name_needs_replace() -> None:
    with pytest.raises(ValueError, match=r"robot\.type 'test_arm' is already provided.*replace=True"):
        register_robot_kind("test_arm", lambda config, control: FakeRobot())
    with pytest.raises(ValueError, match=r"operator\.type 'simulated' is already provided"):
        register_operator_kind("simulated", lambda config, robot_config, robot: None)
    register_robot_kind("test_arm", lambda config, control: FakeRobot(success_at_step=1), replace=True)
    robot = make_robot(RobotPluginConfig(type="test_arm"), ControlConfig())
    assert isinstance(robot, FakeRobot) and robot.success_at_step == 1


def test_a_kind_that_builds_the_wrong_thing_is_refused() -> None:
    register_robot_kind("test_not_a_robot", lambda config, control: object())
    try:
        with pytest.raises(ValueError, match=r"robot\.type 'test_not_a_robot' built a object, not a Robot"):
            make_robot(RobotPluginConfig(type="test_not_a_robot"), ControlConfig())
    finally:
        ROBOT_KINDS.unregister("test_not_a_robot")


def test_an_unknown_kind_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(KindError) as caught:
        RobotPluginConfig(type="metawrold")
    message = str(caught.value)
    assert "\n" not in message
    assert "robot.type 'metawrold' is not a known kind (did you mean 'metaworld'?)" in message
    assert "known: factory, lerobot, metaworld" in message
    with pytest.raises(ConfigError, match=r"operator\.type 'puppet' is not a known kind.*simulated"):
        parse_config(RobotConfig, ["--operator.type", "puppet"])


def test_lerobot_teleop_needs_a_lerobot_robot() -> None:
    config = OperatorConfig(type="lerobot_teleop", teleop_config=str(REPO / "pyproject.toml"))
    with pytest.raises(ValueError, match=r"needs a robot with named action keys \(robot\.type lerobot\)"):
        make_local_operator(config, RobotPluginConfig(), FakeRobot())


def _run_without(blocked: tuple[str, ...], body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter in which the top-level packages `blocked` cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {blocked!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Blocker())
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_daemon_runs_without_simulator_or_learner_and_says_what_to_install() -> None:
    """An edge computer: no MuJoCo, no Meta-World, no learner. Every robot_client module imports; the
    default config (robot.type metaworld) still parses; building the Meta-World robot names the package."""
    result = _run_without(
        ("mujoco", "metaworld", "cloud_learner", "ray"),
        """
        import importlib, pkgutil
        import robot_client
        for module in pkgutil.iter_modules(robot_client.__path__):
            importlib.import_module(f"robot_client.{module.name}")
        from robot_client.config import ControlConfig, RobotConfig
        from robot_client.kinds import KindError
        from robot_client.robots import make_robot
        config = RobotConfig()
        assert not [m for m in sys.modules if m.partition(".")[0] == "sim"], "robot_client imported sim"
        try:
            make_robot(config.robot, config.control)
        except KindError as exc:
            print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()
    assert line.startswith(
        "robot.type 'metaworld' comes from fleet_harness.robot_plugins:make_metaworld_robot"
    )
    assert "missing module" in line and "pip install" in line
    assert "metaworld" in line.split("missing module", 1)[1] or "mujoco" in line.split("missing module", 1)[1]


def test_a_missing_simulated_operator_plugin_names_its_package() -> None:
    result = _run_without(
        ("sim",),
        """
        from robot_client.config import OperatorConfig, RobotPluginConfig
        from robot_client.kinds import KindError
        from robot_client.operators import make_local_operator
        try:
            make_local_operator(OperatorConfig(type="simulated"), RobotPluginConfig(), None)
        except KindError as exc:
            print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "operator.type 'simulated' comes from fleet_harness.robot_plugins:make_simulated_operator (package sop), "
        "which needs the missing module 'sim': pip install sop"
    )


def test_fake_robot_is_still_a_robot_for_the_factory_kind() -> None:
    config = RobotPluginConfig(type="factory", factory="robot_fakes:make_fake_robot")
    robot = make_robot(config, ControlConfig())
    assert isinstance(robot, FakeRobot)
    assert np.array_equal(robot.safe_action(robot.start_episode()), np.zeros(2, np.float32))
