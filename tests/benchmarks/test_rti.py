"""`sop bench rti` without the simulator: which rows a config asks for, the per-control-step figures computed
from an evaluation's counters (`sim.evaluate.summarize_records`, the function `evaluate_policy` returns
through), and the report built from them."""

from __future__ import annotations

from typing import Any

import pytest

import benchmarks.rti
from benchmarks.machine import describe_machine
from benchmarks.rti import (
    DEFAULT_TASKS,
    RTIBenchConfig,
    _markdown,
    benchmark_rows,
    control_step_figures,
    reproducing_command,
)
from sim.evaluate import EpisodeRecords, summarize_records
from sim.tasks import TASK_NAMES
from sop.config import ConfigError, parse_config
from sop.policies import DDIMSamplerConfig, DDPMSamplerConfig, RTISamplerConfig
from sop.success_rate import format_success


def _table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ")
    ]


def _records(task: str, steps: list[int], chunk_calls: list[int], successes: int) -> EpisodeRecords:
    """What `run_episodes` would record: one timing per step, a chunk time per chunk."""
    return EpisodeRecords(
        task,
        0,
        success=[i < successes for i in range(len(steps))],
        steps=steps,
        returns=[0.0] * len(steps),
        step_ms=[1.0] * (sum(steps) - len(chunk_calls)) + [20.0] * len(chunk_calls),
        chunk_ms=[20.0] * len(chunk_calls),
        chunk_calls=chunk_calls,
    )


def _evaluation(label: str) -> dict[str, Any]:
    """Two tasks of two episodes with different step counts: RTI-like on reach (a DDIM-10 cold start per
    episode, then 3 calls a step), DDIM-10 at Ta = 8 on push (chunks of 8 steps, the last one cut short)."""
    records = {
        "reach-v3": _records("reach-v3", [60, 40], [10] + [3] * 59 + [10] + [3] * 39, successes=2),
        "push-v3": _records("push-v3", [20, 12], [10] * 3 + [10] * 2, successes=1),
    }
    report = summarize_records(records, episodes=2, seed_offset=1_000_000, policy_version=0)
    report["label"] = label
    return report


def test_default_rows_pair_each_rti_k_with_ddim_k_at_ta_1() -> None:
    rows = benchmark_rows(RTIBenchConfig(checkpoint="runs/bc"), checkpoint_horizon=8)
    assert [row.label for row in rows] == [
        "DDPM-100 (Ta=8)",
        "DDIM-10 (Ta=8)",
        "DDIM-3 (Ta=8)",
        "DDIM-10 (Ta=1)",
        "DDIM-3 (Ta=1)",
        "DDIM-2 (Ta=1)",
        "RTI K'=2 (Ta=1)",
        "RTI K'=2 from t=20 (Ta=1)",
        "RTI K'=3 (Ta=1)",
        "RTI K'=3 from t=20 (Ta=1)",
        "DDIM-4 (Ta=1)",
        "RTI K'=4 (Ta=1)",
        "RTI K'=4 from t=20 (Ta=1)",
        "DDIM-5 (Ta=1)",
        "RTI K'=5 (Ta=1)",
        "RTI K'=5 from t=20 (Ta=1)",
    ]
    by_label = {row.label: row for row in rows}
    assert by_label["DDPM-100 (Ta=8)"].sampler == DDPMSamplerConfig()
    assert by_label["DDIM-3 (Ta=8)"].sampler == DDIMSamplerConfig(steps=3)
    assert by_label["DDIM-3 (Ta=1)"].sampler == DDIMSamplerConfig(steps=3, execution_horizon=1)
    assert by_label["RTI K'=3 (Ta=1)"].sampler == RTISamplerConfig(timesteps=(2, 1, 0), execution_horizon=1)
    spaced = {k: by_label[f"RTI K'={k} from t=20 (Ta=1)"].sampler.timesteps for k in (2, 3, 4, 5)}
    assert spaced == {2: (20, 0), 3: (20, 10, 0), 4: (20, 13, 7, 0), 5: (20, 15, 10, 5, 0)}
    assert [row.execution_horizon for row in rows] == [8, 8, 8] + [1] * 13


@pytest.mark.parametrize("ddim_steps", [[10, 3], [10], []])
def test_every_rti_row_has_a_ddim_row_with_its_calls_and_ta(ddim_steps: list[int]) -> None:
    config = RTIBenchConfig(
        checkpoint="runs/bc", ddim_steps=ddim_steps, rti_steps=[3, 7], rti_execution_horizons=[4, 8, 1]
    )
    rows = benchmark_rows(config, checkpoint_horizon=8)
    labels = [row.label for row in rows]
    assert len(labels) == len(set(labels)), "a row asked for twice must run once"
    rti_rows = [row for row in rows if isinstance(row.sampler, RTISamplerConfig)]
    assert {(len(row.sampler.timesteps), row.execution_horizon) for row in rti_rows} == {
        (k, ta) for k in (3, 7) for ta in (1, 4, 8)
    }
    ddim = {
        (row.sampler.steps, row.execution_horizon)
        for row in rows
        if isinstance(row.sampler, DDIMSamplerConfig)
    }
    for row in rti_rows:
        assert (len(row.sampler.timesteps), row.execution_horizon) in ddim, row.label
    assert {(k, 1) for k in ddim_steps} <= ddim  # and every cold DDIM row re-planning every step


def test_calls_per_control_step_pool_tasks_by_their_steps() -> None:
    figures = control_step_figures(_evaluation("RTI K'=3 (Ta=1)"))
    reach, push = figures["tasks"]["reach-v3"], figures["tasks"]["push-v3"]
    assert (reach["denoiser_calls"], reach["control_steps"]) == (2 * 10 + 98 * 3, 100)
    assert reach["denoiser_calls_per_step"] == pytest.approx(314 / 100)
    assert (push["denoiser_calls"], push["control_steps"]) == (50, 32)
    assert push["denoiser_calls_per_step"] == pytest.approx(50 / 32)
    # Pooled over every step, not the mean of the tasks' figures (2.35).
    assert (figures["denoiser_calls"], figures["control_steps"]) == (364, 132)
    assert figures["denoiser_calls_per_step"] == pytest.approx(364 / 132)


def test_report_leads_with_success_calls_per_step_and_step_times() -> None:
    config = RTIBenchConfig(
        checkpoint="runs/bc", tasks=["reach-v3", "push-v3"], episodes=2, ddim_steps=[10], rti_steps=[3]
    )
    results = [_evaluation("DDPM-100 (Ta=8)"), _evaluation("RTI K'=3 (Ta=1)")]
    results[1]["success_rate"] = 0.5  # as if it had failed on reach
    peer = {"lerobot_parameters": 2e6, "ours_parameters": 1e6}
    peer |= {f"{who}_{label}_ms": 10.0 for who in ("lerobot", "ours") for label in ("DDPM-100", "DDIM-10")}
    text = _markdown(config, results, peer, elapsed=60.0)
    assert "Command: `sop bench rti --checkpoint runs/bc --tasks reach-v3,push-v3 --episodes 2" in text
    assert describe_machine().summary() in text
    rows = _table_rows(text)
    assert rows[0][:5] == [
        "sampler (Ta: actions executed per chunk)",
        "success (mean over tasks)",
        "calls/step",
        "ms/step (mean)",
        "ms/step (p99)",
    ]
    assert rows[0][7:] == ["reach", "push", "vs DDPM-100"]
    step_ms = [1.0] * (132 - 105) + [20.0] * 105
    p99 = sorted(step_ms)[-1]  # more than 1 % of the steps predicted a chunk
    assert rows[1] == [
        "DDPM-100 (Ta=8)",
        format_success(3, 4, digits=3, show_n=False),
        f"{364 / 132:.2f}",
        f"{sum(step_ms) / len(step_ms):.2f}",
        f"{p99:.1f}",
        "3",  # most chunks are RTI's 3-call ones
        "20.0",
        format_success(2, 2, show_n=False),
        format_success(1, 2, show_n=False),
        "+0.0 pts",
    ]
    assert rows[2][0] == "RTI K'=3 (Ta=1)" and rows[2][-1] == "-25.0 pts"
    assert "Success: rate [Wilson 95 % interval]" in text and "DDIM-10 solve from noise" in text
    assert rows[-1] == ["DDIM-10", "10.0", "10.0", "1.00x"]


def test_report_command_reproduces_the_config() -> None:
    config = RTIBenchConfig(
        checkpoint="runs/bc",
        tasks=["reach-v3", "pick-place-v3"],
        episodes=3,
        ddim_steps=[5],
        rti_steps=[3, 4],
        rti_execution_horizons=[8],
        ddpm=False,
        max_steps=150,
    )
    command = reproducing_command(config)
    assert command.startswith(
        "sop bench rti --checkpoint runs/bc --tasks reach-v3,pick-place-v3 --episodes 3"
    )
    assert "--lerobot_peer" not in command and "--seed_offset" not in command  # defaults left out
    assert parse_config(RTIBenchConfig, command.split()[3:]) == config


def test_defaults_include_harder_tasks_and_match_the_docstring_command() -> None:
    config = RTIBenchConfig(checkpoint="runs/bc")
    assert config.episodes >= 50
    assert set(config.tasks) <= set(TASK_NAMES)
    assert {"reach-v3", "push-v3", "button-press-topdown-v3"} < set(config.tasks) == set(DEFAULT_TASKS)
    assert len(config.tasks) >= 5
    example = " ".join((benchmarks.rti.__doc__ or "").split("\n\n")[1].replace("\\", "").split())
    assert example == f"sop bench rti --checkpoint runs/bc --tasks {','.join(config.tasks)} --episodes 50"


def test_rti_needs_a_checkpoint_and_positive_step_counts() -> None:
    with pytest.raises(ConfigError, match="checkpoint"):
        parse_config(RTIBenchConfig, [])
    with pytest.raises(ConfigError, match="ddim_steps"):
        parse_config(RTIBenchConfig, ["--checkpoint", "runs/bc", "--ddim_steps", "10,0"])
