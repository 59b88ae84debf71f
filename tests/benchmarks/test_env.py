"""`sop bench env` writes a markdown table with the command and the machine beside the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.env import EnvBenchConfig, main
from sop.config import ConfigError, parse_config


def test_env_benchmark_writes_its_markdown_table(tmp_path: Path) -> None:
    output = tmp_path / "env.md"
    argv = [
        "--tasks", "reach-v3", "--state_steps", "20", "--image_steps", "3", "--default_quality_steps", "2",
        "--resets", "1", "--repeats", "1", "--output", str(output),
    ]  # fmt: skip
    assert main(argv) == 0
    text = output.read_text()
    assert "sop bench env --tasks reach-v3" in text
    assert "CPU cores" in text and "MuJoCo" in text
    row = next(line for line in text.splitlines() if line.startswith("| reach-v3 |"))
    state_rate, image_rate = (float(cell) for cell in row.split("|")[2:4])
    assert state_rate > image_rate > 0


def test_an_unknown_camera_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config(EnvBenchConfig, ["--camera", "ceiling"])
