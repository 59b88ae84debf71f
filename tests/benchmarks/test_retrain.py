"""`sop bench retrain` on a tiny run folder made as `sop demo` leaves one (its config.json, its learner's
replay, its base policy in the demo's cache): the settings it refuses, the replay it copies without touching
the run's, the learner's own trainer run once with snapshots that change nothing in training, and the
held-out evaluation of every snapshot with every sampler."""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.retrain import (
    RetrainBenchConfig,
    copy_replay,
    reproducing_command,
    retrain_learner_config,
    run_base_checkpoint,
    run_retrain,
    train_with_snapshots,
)
from cloud_learner.checkpoint_store import CheckpointStore
from fleet_harness.demo import BasePolicyConfig, FleetDemoConfig, demo_learner_overrides, open_run_dir
from sop.config import ConfigError, config_from_dict, parse_config
from sop.data.episode_store import EpisodeStore
from sop.data.synthetic_episodes import make_episode
from sop.episode import ACTION, STATE, Source
from sop.normalization import NormalizationStats
from sop.policies import DDIMSamplerConfig, RTISamplerConfig, load_policy
from sop.policies.configuration_diffusion import DiffusionPolicyConfig, InstructionEncoderKind
from sop.policies.modeling_diffusion import DiffusionPolicy

TASKS = ["reach-v3", "push-v3"]


def _run_folder(root: Path) -> Path:
    """A `sop demo` run folder in miniature: per task two demonstrations and two online episodes whose
    first half is under intervention (what HG-DAgger trains on), a learner log, and a tiny base policy
    where the demo caches the run's base."""
    run = root / "run"
    demo = FleetDemoConfig(
        tasks=TASKS, out=str(run), live=False, base=BasePolicyConfig(cache_dir=str(root / "cache"))
    )
    open_run_dir(demo.out, "", demo)
    store = EpisodeStore(run / "learner" / "replay", durable=False)
    episodes = []
    for t, task in enumerate(TASKS):
        for i in range(2):
            episodes.append(make_episode(30, seed=10 * t + i, task=task, source=Source.OFFLINE, cameras=()))
            intervention = np.arange(30) < 15
            episodes.append(
                make_episode(
                    30,
                    seed=100 + 10 * t + i,
                    task=task,
                    source=Source.ONLINE,
                    cameras=(),
                    intervention=intervention,
                    policy_version=1,
                )
            )
    for episode in episodes:
        store.append(episode)
    (run / "learner" / "train.jsonl").write_text(json.dumps({"step": 3, "published_version": 2}) + "\n")
    torch.manual_seed(0)
    stats = NormalizationStats.from_arrays({key: [e.steps[key] for e in episodes] for key in (STATE, ACTION)})
    config = DiffusionPolicyConfig(
        instruction_encoder=InstructionEncoderKind.TASK,
        tasks=tuple(TASKS),
        state_hidden_dim=32,
        state_feature_dim=16,
        instruction_feature_dim=8,
        down_dims=(16, 32),
        timestep_embed_dim=16,
    )
    DiffusionPolicy(config, stats, version=0).save(run_base_checkpoint(demo))
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_folder(tmp_path_factory.mktemp("retrain"))


def _base(run: Path) -> Path:
    return run_base_checkpoint(
        config_from_dict(FleetDemoConfig, json.loads((run / "config.json").read_text()))
    )


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content hash and modification time."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _weights(source: str | Path | bytes) -> dict[str, torch.Tensor]:
    policy = load_policy(source)
    assert isinstance(policy, DiffusionPolicy)
    return policy.network.state_dict()


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ([], "run"),
        (["--run", "{root}/no-such-run"], "run"),
        (["--run", "{run}", "--steps", "4,2"], "steps"),
        (["--run", "{run}", "--steps", "0,2"], "steps"),
        (["--run", "{run}", "--tasks", "reach-v9"], "reach-v9"),
        (
            ["--run", "{run}", "--tasks", "reach-v3", "--exclude_online_tasks", "push-v3"],
            "exclude_online_tasks",
        ),
        (["--run", "{run}", "--tasks", "reach-v3", "--eval_tasks", "push-v3"], "eval_tasks"),
        (["--replay", "{run}/learner/replay", "--steps", "2"], "base_checkpoint"),
        (["--run", "{run}", "--base_checkpoint", "{root}/no-such-checkpoint"], "base_checkpoint"),
        (["--run", "{run}", "--replay", "{root}"], "replay"),
        (["--replay", "{run}/learner/replay", "--base_checkpoint", "{run}"], "steps"),
        (["--run", "{run}", "--eval_episodes", "0"], "eval_episodes"),
        (["--run", "{run}", "--samplers", "[]"], "samplers"),
        (["--run", "{run}", "--samplers", "[{type: ddim}, {type: ddim}]"], "samplers"),
        (["--run", "{run}", "--learner.trainer.max_steps", "10"], "learner.trainer.max_steps"),
        (["--run", "{run}", "--learner.trainer.base_checkpoint", "{run}"], "learner.trainer.base_checkpoint"),
        (["--run", "{run}", "--learner.trainer.batch_sise", "8"], "learner.trainer.batch_sise"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(run_folder: Path, flags: list[str], field: str) -> None:
    args = [
        flag.replace("{run}", str(run_folder)).replace("{root}", str(run_folder.parent)) for flag in flags
    ]
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(RetrainBenchConfig, args)


def test_inputs_the_run_does_not_have_are_named_before_anything_is_written(
    run_folder: Path, tmp_path: Path
) -> None:
    moved = _run_folder(tmp_path)
    base = _base(moved)
    base.rename(base.with_name("elsewhere"))
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="base_checkpoint"):
        run_retrain(RetrainBenchConfig(run=str(moved), out=str(out)), report=lambda _: None)
    assert not out.exists()

    (out / "learner").mkdir(parents=True)  # a retrain already ran here: never train into it again
    with pytest.raises(FileExistsError, match="out"):
        run_retrain(RetrainBenchConfig(run=str(run_folder), out=str(out)), report=lambda _: None)


def test_the_reproducing_command_parses_back_to_the_same_config(run_folder: Path, tmp_path: Path) -> None:
    config = RetrainBenchConfig(
        run=str(run_folder),
        steps=[1000, 4850],
        learner={"algorithm": {"optimizer": {"weight_decay": 0.01}}, "trainer": {"batch_size": 32}},
        samplers=[
            RTISamplerConfig(),
            RTISamplerConfig(timesteps=(2, 1, 0)),
            DDIMSamplerConfig(steps=10, execution_horizon=1),
        ],
        exclude_online_tasks=["push-v3"],
        out=str(tmp_path / "out dir"),
    )
    command = reproducing_command(config)
    assert command.startswith(f"sop bench retrain --run {run_folder} --steps 1000,4850")
    assert "--learner.algorithm.optimizer.weight_decay 0.01" in command
    assert parse_config(RetrainBenchConfig, shlex.split(command)[3:]) == config
    # The flags are set over the demo's learner settings, not instead of them.
    assert config.learner_overrides == {
        "trainer": {"batch_size": 32, "num_threads": 1, "publish_every_steps": 25},
        "algorithm": {"optimizer": {"lr": 3e-4, "weight_decay": 0.01}},
    }


def test_snapshots_leave_the_training_as_it_would_be_without_them(run_folder: Path, tmp_path: Path) -> None:
    base = _base(run_folder)
    final: list[dict[str, torch.Tensor]] = []
    for name, steps in (("with", [1, 2, 4]), ("without", [4])):
        learner_dir = tmp_path / name / "learner"
        copy_replay(run_folder / "learner" / "replay", learner_dir, [])
        learner = retrain_learner_config(demo_learner_overrides(), TASKS, learner_dir, base, threads=1)
        training = train_with_snapshots(learner, steps, tmp_path / name / "snapshots", report=lambda _: None)
        assert [s.learner_step for s in training.snapshots] == steps
        assert training.steps == 4 and training.samples == 4 * learner.trainer.batch_size
        final.append(_weights(training.snapshots[-1].path))
    with_snapshots, without = final
    assert all(torch.equal(with_snapshots[name], without[name]) for name in without)


def test_retrain_copies_the_replay_trains_to_each_step_and_evaluates_every_snapshot(
    run_folder: Path, tmp_path: Path
) -> None:
    source = run_folder / "learner" / "replay"
    before = _fingerprint(source)
    out = tmp_path / "retrain"
    config = RetrainBenchConfig(
        run=str(run_folder),
        steps=[2, 4],
        samplers=[DDIMSamplerConfig(steps=2), RTISamplerConfig(timesteps=(2, 1, 0))],
        eval_episodes=1,
        max_episode_steps=4,
        eval_workers=1,
        exclude_online_tasks=["push-v3"],
        threads=1,
        out=str(out),
    )
    lines: list[str] = []
    results = run_retrain(config, report=lines.append)

    assert _fingerprint(source) == before, "the run's replay was modified"
    copy = EpisodeStore(out / "learner" / "replay", create=False)
    assert len(copy.list(task="push-v3", source=Source.ONLINE)) == 0
    assert len(copy.list(task="push-v3", source=Source.OFFLINE)) == 2
    assert len(copy.list(task="reach-v3", source=Source.ONLINE)) == 2
    assert results["replay"]["excluded_online_episodes"] == {"push-v3": 2}

    # The learner's checkpoint store holds the base (v1) and the snapshots at steps 2 and 4, as published.
    store = CheckpointStore(out / "learner" / "checkpoints")
    snapshots = results["training"]["snapshots"]
    assert [s["learner_step"] for s in snapshots] == [2, 4]
    for snapshot in snapshots:
        record = store.record(snapshot["version"])
        assert record is not None and record.train_step == snapshot["learner_step"]
        assert Path(snapshot["path"]).read_bytes() == store.read_blob(snapshot["version"])
    weights = [_weights(results["inputs"]["base_checkpoint"])] + [_weights(s["path"]) for s in snapshots]
    for earlier, later in itertools.pairwise(weights):
        assert any(not torch.equal(earlier[name], later[name]) for name in later), "training changed nothing"
    assert results["training"]["steps"] == 4 and results["training"]["samples_per_s"] > 0

    written = json.loads((out / "results.json").read_text())
    assert written["evaluations"] == json.loads(json.dumps(results["evaluations"]))
    assert written["config"]["steps"] == [2, 4] and written["machine"]["cpu_cores"] >= 1
    rows = written["evaluations"]
    assert [(row["learner_step"], row["sampler"]["type"]) for row in rows] == [
        (2, "ddim"),
        (2, "rti"),
        (4, "ddim"),
        (4, "rti"),
    ]
    for row in rows:
        assert list(row["tasks"]) == TASKS
        for figures in row["tasks"].values():
            assert figures["n"] == config.eval_episodes
            assert figures["rate"] == figures["successes"] / figures["n"]
            assert figures["ci95"][0] <= figures["rate"] <= figures["ci95"][1]
        assert row["pooled"]["n"] == config.eval_episodes * len(TASKS)

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ") and "learner step" not in line]
    assert [line.split("|")[1].strip() for line in table] == ["2", "2", "4", "4"]
    assert "DDIM-2 (Ta=8)" in report and "RTI t=2,1,0 (Ta=1)" in report
    assert any("steps/s" in line for line in lines), "no progress line while training"


def test_eval_tasks_evaluate_some_of_the_tasks_trained_on(run_folder: Path, tmp_path: Path) -> None:
    config = RetrainBenchConfig(
        run=str(run_folder),
        steps=[2],
        eval_tasks=["reach-v3"],
        samplers=[DDIMSamplerConfig(steps=2)],
        eval_episodes=1,
        max_episode_steps=4,
        eval_workers=1,
        threads=1,
        out=str(tmp_path / "retrain"),
    )
    results = run_retrain(config, report=lambda line: None)
    assert results["inputs"]["tasks"] == TASKS and results["inputs"]["eval_tasks"] == ["reach-v3"]
    assert [list(row["tasks"]) for row in results["evaluations"]] == [["reach-v3"]]
