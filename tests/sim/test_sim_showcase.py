"""`sop sim showcase`: the weak policy alone fails, with the operator it succeeds, and the table says so."""

from __future__ import annotations

import pytest
from rich.console import Console

from sim.showcase import ShowcaseConfig, WeakPolicy, main, results_table, run_showcase
from sop.config import ConfigError, parse_config


def test_operator_turns_a_frozen_policy_into_successes_and_counts_its_interventions() -> None:
    config = ShowcaseConfig(tasks=["reach-v3"], episodes=2, policy=WeakPolicy.ZERO)
    (result,) = run_showcase(config)
    assert result.policy_successes == 0
    assert result.assisted_successes == 2
    assert result.takeovers >= 2
    assert 0 < result.intervention_frames < result.frames
    console = Console(record=True, width=200)
    console.print(results_table([result], config))
    text = console.export_text()
    assert "reach-v3" in text and "0/2" in text and "2/2" in text


def test_showcase_command_runs_from_its_yaml_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--tasks",
        "button-press-topdown-v3",
        "--episodes",
        "1",
        "--policy",
        "random",
        "--env.max_episode_steps",
        "40",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "button-press-topdown-v3" in out and "random" in out


def test_showcase_config_rejects_unknown_tasks_and_policies() -> None:
    with pytest.raises(ConfigError):
        parse_config(ShowcaseConfig, ["--tasks", "[reach-v3,teleport-v3]"])
    with pytest.raises(ConfigError, match="policy"):
        parse_config(ShowcaseConfig, ["--policy", "clever"])
