"""The demo's `learner:` mapping: any key of configs/learner.yaml, passed through to `sop learner serve`; its
`sampler:`, the policy's typed sampler config, passed through to the robots and the evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fleet import FleetBenchConfig
from benchmarks.soak import SoakBenchConfig
from fleet_harness.demo import (
    FleetDemoConfig,
    learner_config,
    learner_training_args,
    sampler_as_run,
    sampler_flags,
)
from sop.config import ConfigError, config_from_dict, config_to_dict, parse_config
from sop.policies import DDIMColdStartConfig, DDIMSamplerConfig, RTISamplerConfig


def _trainer_figures(overrides: dict[str, object]) -> tuple[int, int, int, float]:
    learner = learner_config(overrides)
    trainer = learner.trainer
    return (
        trainer.batch_size,
        trainer.num_threads,
        trainer.publish_every_steps,
        learner.algorithm.optimizer.lr,
    )


@pytest.mark.parametrize("name", ["demo.yaml", "demo_quick.yaml"])
def test_the_demo_configs_train_the_learner_as_before(name: str) -> None:
    config = parse_config(FleetDemoConfig, [], default_config=name)
    assert _trainer_figures(config.learner) == (64, 1, 25, 3e-4)


def test_the_bench_configs_train_the_learner_as_before() -> None:
    fleet = parse_config(FleetBenchConfig, [], default_config="bench_fleet.yaml").fleet
    assert _trainer_figures(fleet.learner) == (64, 1, 25, 3e-4)
    soak = parse_config(SoakBenchConfig, [], default_config="bench_soak.yaml")
    assert _trainer_figures(soak.fleet().learner) == (32, 1, 50, 3e-4)


def test_a_learner_key_set_on_the_command_line_reaches_the_learner(tmp_path: Path) -> None:
    config = parse_config(
        FleetDemoConfig,
        ["--learner.trainer.batch_size", "32", "--learner.replay.initial_online_share", "0.25"],
        default_config="demo.yaml",
    )
    assert _trainer_figures(config.learner) == (32, 1, 25, 3e-4)  # the file's other keys stay
    args = learner_training_args(config, tmp_path / "learner", tmp_path / "base", [tmp_path / "demos"])
    assert args[args.index("--trainer.batch_size") + 1] == "32"
    assert args[args.index("--algorithm.optimizer.lr") + 1] == "0.0003"
    assert args[args.index("--replay.initial_online_share") + 1] == "0.25"


def test_a_bad_or_harness_owned_learner_key_stops_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="batch_sise"):
        parse_config(FleetDemoConfig, ["--learner.trainer.batch_sise", "32"], default_config="demo.yaml")
    with pytest.raises(ConfigError, match=r"learner\.trainer\.base_checkpoint: the harness sets this"):
        parse_config(FleetDemoConfig, ["--learner.trainer.base_checkpoint", "x"], default_config="demo.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "demo_quick.yaml"])
def test_the_demo_and_fleet_bench_sample_with_rti_and_the_soak_with_ddim_10(name: str) -> None:
    """Issue 12: robots and evaluation run RTI, with DDIM-10 from noise at episode start and after a swap."""
    rti = RTISamplerConfig(cold_start=DDIMColdStartConfig(steps=10))
    assert parse_config(FleetDemoConfig, [], default_config=name).sampler == rti
    assert parse_config(FleetBenchConfig, [], default_config="bench_fleet.yaml").fleet.sampler == rti
    # The soak measures the data plane: the cheapest policy step leaves the cores to ingest and the learner.
    assert (
        parse_config(SoakBenchConfig, [], default_config="bench_soak.yaml").fleet().sampler
        == DDIMSamplerConfig()
    )


def test_the_sampler_reaches_the_robots_and_the_evaluation_as_it_is_configured() -> None:
    from robot_client.config import RobotConfig
    from sim.evaluate import EvalConfig

    sampler = RTISamplerConfig(timesteps=(3, 1, 0), cold_start=DDIMColdStartConfig(steps=4), seed=2)
    for chosen in (DDIMSamplerConfig(), sampler, RTISamplerConfig()):
        robot = parse_config(
            RobotConfig, ["--config", "robot.yaml", *sampler_flags("policy.sampler", chosen)]
        )
        assert robot.policy.sampler == chosen
        evaluation = parse_config(EvalConfig, ["--checkpoint", "ckpt", *sampler_flags("sampler", chosen)])
        assert evaluation.sampler == chosen


def test_a_run_folder_from_before_the_typed_sampler_still_loads() -> None:
    # config.json of a demo or fleet-bench run written while `sampler` was a bare kind name
    assert (
        config_from_dict(FleetDemoConfig, {"tasks": ["reach-v3"], "sampler": "ddim"}).sampler
        == DDIMSamplerConfig()
    )
    ran = config_from_dict(FleetBenchConfig, {"fleet": {"tasks": ["reach-v3"], "sampler": "rti"}})
    assert ran.fleet.sampler == RTISamplerConfig()
    assert FleetDemoConfig(sampler="ddim").sampler == DDIMSamplerConfig()  # type: ignore[arg-type]


def test_the_run_summary_spells_out_the_timesteps_rti_ran() -> None:
    policy = FleetDemoConfig().base.policy
    assert sampler_as_run(RTISamplerConfig(), policy)["timesteps"] == [20, 10, 0]
    assert sampler_as_run(RTISamplerConfig(timesteps=(2, 1, 0)), policy)["timesteps"] == [2, 1, 0]
    assert sampler_as_run(DDIMSamplerConfig(), policy) == config_to_dict(DDIMSamplerConfig())


def test_the_deployment_reaches_the_robots_and_the_evaluation_and_defaults_to_nominal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sim.evaluate
    from fleet_harness.demo import evaluate_checkpoint, robot_args, write_fleet_trust
    from robot_client.config import RobotConfig
    from sim.deployment import load_deployment

    assert parse_config(FleetDemoConfig, [], default_config="demo.yaml").deployment == "nominal"
    config = parse_config(FleetDemoConfig, ["--deployment", "latency"], default_config="demo_quick.yaml")
    trust = write_fleet_trust(tmp_path, ["robot-0"])
    args = robot_args(config, tmp_path, 0, "robot-0", 5000, tmp_path, trust)
    assert args[:2] == ["robot", "run"]
    assert parse_config(RobotConfig, args[2:]).robot.deployment == "latency"

    seen = {}

    def fake_evaluation(*args: object, env_config: object, **kwargs: object) -> dict[str, object]:
        seen["env_config"] = env_config
        return {"tasks": {"reach-v3": {"successes": 1, "episodes": 2}}}

    monkeypatch.setattr(sim.evaluate, "evaluate_checkpoint_parallel", fake_evaluation)
    evaluate_checkpoint(tmp_path, config, workers=1)
    assert seen["env_config"].deployment == load_deployment("latency")  # type: ignore[attr-defined]


def test_an_unknown_deployment_stops_the_demo_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="'shifted' is not a preset; choose one of"):
        parse_config(FleetDemoConfig, ["--deployment", "shifted"], default_config="demo_quick.yaml")


def test_robots_can_run_without_an_operator_for_recap(tmp_path: Path) -> None:
    from fleet_harness.demo import robot_args, write_fleet_trust
    from robot_client.config import RobotConfig

    demo = parse_config(FleetDemoConfig, [], default_config="demo_quick.yaml")
    trust = write_fleet_trust(tmp_path, ["robot-0"])
    args = robot_args(demo, tmp_path, 0, "robot-0", 5000, tmp_path, trust)
    assert parse_config(RobotConfig, args[2:]).operator.type == "simulated"  # the default demo: unchanged
    alone = parse_config(
        FleetDemoConfig,
        ["--operator", "none", "--learner.algorithm.type", "recap"],
        default_config="demo_quick.yaml",
    )
    args = robot_args(alone, tmp_path, 0, "robot-0", 5000, tmp_path, trust)
    assert parse_config(RobotConfig, args[2:]).operator.type == "none"
    assert learner_config(alone.learner).algorithm.type == "recap"
    with pytest.raises(ValueError, match="operator must be simulated or none, got 'console'"):
        parse_config(FleetDemoConfig, ["--operator", "console"], default_config="demo_quick.yaml")
