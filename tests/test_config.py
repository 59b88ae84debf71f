from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sop.config import (
    CONFIG_DIR,
    ConfigError,
    config_from_dict,
    load_config_file,
    parse_config,
    resolve_config_path,
)


@dataclass
class CameraConfig:
    width: int = 64
    height: int = 64

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")


@dataclass
class ExampleConfig:
    name: str = "reach"
    episodes: int = 3
    camera: CameraConfig = field(default_factory=CameraConfig)
    tasks: list[str] = field(default_factory=lambda: ["reach"])
    sizes: tuple[int, ...] = (1, 2)
    stores: list[str] | None = None
    robot_id: str = "r0"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: push\ncamera:\n  width: 32\n")
    cfg = parse_config(ExampleConfig, ["--config", str(path), "--episodes", "7", "--camera.height", "48"])
    assert cfg == ExampleConfig(name="push", episodes=7, camera=CameraConfig(width=32, height=48))


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("episods: 3\n")
    with pytest.raises(ConfigError, match="episods"):
        parse_config(ExampleConfig, ["--config", str(path)])


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match="episodes"):
        parse_config(ExampleConfig, ["--episodes", "many"])


def test_post_init_check_surfaces_as_config_error() -> None:
    with pytest.raises(ConfigError, match="camera size"):
        parse_config(ExampleConfig, ["--camera.width", "-1"])


def test_unknown_flag_is_named() -> None:
    with pytest.raises(ConfigError, match="--bogus"):
        parse_config(ExampleConfig, ["--bogus", "1"])
    with pytest.raises(ConfigError, match="--episodes"):
        parse_config(ExampleConfig, ["--episodes"])


def test_a_list_key_takes_a_comma_list_whatever_its_name() -> None:
    cfg = parse_config(ExampleConfig, ["--tasks", "a,b", "--sizes=3,4,5", "--stores", "x"])
    assert (cfg.tasks, cfg.sizes, cfg.stores) == (["a", "b"], (3, 4, 5), ["x"])
    assert parse_config(ExampleConfig, ["--tasks", "[a, b]", "--stores", "null"]).stores is None
    assert parse_config(ExampleConfig, ["--name", "a,b"]).name == "a,b"  # not a list: left alone


@pytest.mark.parametrize(
    ("typed", "hint"),
    [
        ("--robot-id", "did you mean --robot_id?"),
        ("--camera-width", "did you mean --camera.width?"),
        ("--episods", "did you mean --episodes?"),
        ("--camera", "set one of its keys, e.g. --camera.height"),
    ],
)
def test_a_misspelled_flag_is_one_line_naming_it_and_the_key_meant(typed: str, hint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(ExampleConfig, [typed, "1"])
    message = str(raised.value)
    assert typed in message and hint in message and "\n" not in message


def test_help_still_prints_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(ExampleConfig, ["--help"])
    assert exited.value.code == 0 and "--camera.width" in capsys.readouterr().out


def test_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        parse_config(ExampleConfig, ["--config", "nowhere.yaml"])


def test_dict_and_file_loading(tmp_path: Path) -> None:
    assert config_from_dict(ExampleConfig, {"episodes": 2}).episodes == 2
    with pytest.raises(ConfigError, match="nme"):
        config_from_dict(ExampleConfig, {"nme": "x"})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(ExampleConfig, path)


def test_a_named_config_comes_from_the_package_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert CONFIG_DIR.parent == Path(__file__).resolve().parents[1] / "sop"
    assert resolve_config_path("configs/demo.yaml") == CONFIG_DIR / "demo.yaml"
    assert resolve_config_path("demo.yaml") == CONFIG_DIR / "demo.yaml"


def test_the_working_directory_comes_before_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("episodes: 1\n")
    assert resolve_config_path("demo.yaml") == Path("configs/demo.yaml")
    assert resolve_config_path("configs/demo.yaml") == Path("configs/demo.yaml")
    (tmp_path / "demo.yaml").write_text("episodes: 2\n")
    assert resolve_config_path("demo.yaml") == Path("demo.yaml")


def test_a_config_is_found_by_its_name_without_the_suffix() -> None:
    assert resolve_config_path("demo_quick").name == "demo_quick.yaml"


def test_a_missing_path_is_not_replaced_by_a_shipped_config(tmp_path: Path) -> None:
    """A mistyped folder must not quietly run on the default config of the same name."""
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config_path(tmp_path / "etc" / "robot.yaml")
    with pytest.raises(ConfigError, match=r"'nowhere\.yaml' does not exist .*demo\.yaml"):
        resolve_config_path("nowhere.yaml")


def test_a_choice_without_parameters_is_parsed_by_value_and_a_wrong_one_lists_the_allowed() -> None:
    from robot_client.config import PartialEpisodePolicy, RobotConfig, SwapPoint

    shipped = parse_config(RobotConfig, ["--config", "robot.yaml"])
    assert (shipped.policy.swap_at, shipped.spool.partial_episodes) == (
        SwapPoint.EPISODE,
        PartialEpisodePolicy.UPLOAD_ABORTED,
    )
    assert parse_config(RobotConfig, ["--policy.swap_at", "chunk"]).policy.swap_at is SwapPoint.CHUNK
    with pytest.raises(ConfigError) as caught:
        parse_config(RobotConfig, ["--config", "robot.yaml", "--policy.swap_at", "never"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith("`policy.swap_at`: must be one of ['episode', 'chunk'], got 'never'")
    with pytest.raises(
        ConfigError, match=r"partial_episodes`: must be one of \['upload_aborted', 'discard'\]"
    ):
        parse_config(RobotConfig, ["--spool.partial_episodes", "keep"])


def test_switching_a_choice_on_the_command_line_starts_it_from_the_new_kinds_defaults() -> None:
    from robot_client.config import RobotConfig
    from sop.policies import DDIMSamplerConfig, DDPMSamplerConfig

    # `sop robot run --config robot.yaml --policy.sampler.type ddim --policy.sampler.steps 5`
    argv = ["--config", "robot.yaml", "--policy.sampler.type", "ddim", "--policy.sampler.steps", "5"]
    assert parse_config(RobotConfig, argv).policy.sampler == DDIMSamplerConfig(steps=5)
    assert parse_config(RobotConfig, ["--policy.sampler.type=ddpm"]).policy.sampler == DDPMSamplerConfig()
    with pytest.raises(ConfigError, match="invalid choice: 'fast'"):
        parse_config(RobotConfig, ["--policy.sampler.type", "fast"])
