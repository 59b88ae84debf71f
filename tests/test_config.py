from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sop.config import ConfigError, config_from_dict, load_config_file, parse_config


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
