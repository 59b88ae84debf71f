"""The sim configs: the bundled YAML files load, and bad keys or values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.demonstrations import DemosConfig
from sim.showcase import ShowcaseConfig
from sop.config import CONFIG_DIR, ConfigError, load_config_file, parse_config


def test_bundled_yaml_files_match_the_dataclass_defaults() -> None:
    assert load_config_file(ShowcaseConfig, CONFIG_DIR / "sim_showcase.yaml") == ShowcaseConfig()
    assert load_config_file(DemosConfig, CONFIG_DIR / "sim_demos.yaml") == DemosConfig()


def test_unknown_key_in_a_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "showcase.yaml"
    path.write_text("episodes: 2\noperator:\n  reaction_dleay: 3\n")
    with pytest.raises(ConfigError, match="reaction_dleay"):
        parse_config(ShowcaseConfig, ["--config", str(path)])


def test_value_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"operator\.reaction_delay"):
        parse_config(ShowcaseConfig, ["--operator.reaction_delay", "soon"])
    with pytest.raises(ConfigError, match=r"env\.image_height"):
        parse_config(DemosConfig, ["--env.image_height", "tall"])


def test_value_failing_validation_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config(ShowcaseConfig, ["--env.image_width", "0"])
    with pytest.raises(ConfigError):
        parse_config(DemosConfig, ["--episodes", "0"])


def test_comma_separated_task_lists_are_accepted_on_the_command_line() -> None:
    config = parse_config(DemosConfig, ["--tasks", "reach-v3,push-v3", "--seed", "1"])
    assert (config.tasks, config.seed) == (["reach-v3", "push-v3"], 1)
    assert parse_config(DemosConfig, ["--tasks=reach-v3"]).tasks == ["reach-v3"]
