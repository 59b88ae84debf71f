"""`sop bench online-vs-offline`: equal labelled frames, the same learner for every arm, and its report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from benchmarks.online_vs_offline import (
    EXPERT_ID,
    EXTRA_DEMO_SEED,
    BudgetWatch,
    OnlineVsOfflineConfig,
    arm_result,
    as_labelled,
    labelled_frames_per_task,
    merge_results,
    offline_learner_config,
    plot_results,
    record_until,
    results_table,
    select_labelled,
    train_offline_arm,
    verdict,
    write_markdown,
)
from cloud_learner.checkpoint_store import CheckpointStore
from cloud_learner.config import LearnerConfig
from fleet_harness.demo import (
    BasePolicyConfig,
    FleetDemoConfig,
    FleetView,
    learner_training_args,
    prepare_base_policy,
)
from sim.demonstrations import DemosConfig
from sim.deployment import load_deployment
from sim.metaworld_env import EnvConfig
from sop.checkpoint import build_checkpoint, checkpoint_to_bytes
from sop.config import ConfigError, config_to_dict, parse_config
from sop.data.episode_store import EpisodeStore
from sop.episode import (
    ACTION,
    INTERVENTION,
    OPERATOR_FRAMES,
    POLICY_ACTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    TIMESTAMP,
    Episode,
    Outcome,
    Source,
    encode_operator_frames,
    new_episode_id,
    operator_frames,
)
from sop.success_rate import SuccessCount


def _episode(steps: int, task: str = "reach-v3", drivers: list[str | None] | None = None) -> Episode:
    """An offline demonstration of `steps` steps, or with `drivers` an online episode those operators drove."""
    action = np.zeros((steps, 4), dtype=np.float32)
    intervention = np.array([d is not None for d in drivers or [None] * steps])
    episode = Episode(
        episode_id=new_episode_id(),
        robot_id="r",
        task=task,
        instruction="reach",
        outcome=Outcome.SUCCESS,
        started_at=0.0,
        ended_at=1.0,
        steps={
            STATE: np.zeros((steps, 39), dtype=np.float32),
            ACTION: action,
            POLICY_ACTION: action.copy(),
            INTERVENTION: intervention,
            POLICY_VERSION: np.full(steps, -1 if drivers is None else 1, dtype=np.int64),
            TIMESTAMP: np.arange(steps, dtype=np.float64) / 30.0,
            REWARD: np.zeros(steps, dtype=np.float32),
        },
        source=Source.OFFLINE if drivers is None else Source.ONLINE,
        extra={} if drivers is None else {OPERATOR_FRAMES: encode_operator_frames(drivers)},
    )
    episode.validate()
    return episode


def test_the_shipped_configs_parse_with_100_episodes_per_arm_and_nested_budgets() -> None:
    full = parse_config(OnlineVsOfflineConfig, [], default_config="bench_online_vs_offline.yaml")
    assert full.fleet.eval_episodes * len(full.fleet.tasks) >= 100
    assert len(full.deployments) >= 2 and "nominal" not in full.deployments
    assert full.budget_targets() == [2000, 4000, 6000]
    quick = parse_config(OnlineVsOfflineConfig, [], default_config="bench_online_vs_offline_quick.yaml")
    assert quick.results == "" and quick.results_json == ""  # a smoke run never overwrites the report


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--deployments", "[no-such-shift]"], "no-such-shift"),
        (["--deployments", "[]"], "deployments"),
        (["--labelled_frames", "0"], "labelled_frames"),
        (["--budgets", "0"], "budgets"),
    ],
)
def test_bad_settings_are_refused_by_name(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(OnlineVsOfflineConfig, flags)


def test_sim_demos_records_under_a_named_deployment() -> None:
    assert parse_config(DemosConfig, []).env.deployment.name == "nominal"
    config = parse_config(DemosConfig, ["--deployment", "shifted-objects"])
    assert config.env.deployment.name == "shifted-objects"
    with pytest.raises(ConfigError, match="not a preset"):
        parse_config(DemosConfig, ["--deployment", "no-such-shift"])


def test_demonstrations_are_selected_to_hold_exactly_the_labelled_frames() -> None:
    demos = [_episode(40), _episode(50), _episode(30)]
    selected = select_labelled(demos, 70)
    assert [e.num_steps for e in selected] == [40, 50]  # whole episodes; the last one only partly labelled
    assert [int(e.steps[INTERVENTION].sum()) for e in selected] == [40, 30]
    assert [e.episode_id for e in selected] == [demos[0].episode_id, demos[1].episode_id]
    last = selected[-1]
    assert last.source == Source.ONLINE  # the same kind of data as the online arm's, so the same sampling
    assert operator_frames(last.extra, last.num_steps, last.steps[INTERVENTION]) == {EXPERT_ID: [(0, 30)]}
    assert sum(int(e.steps[INTERVENTION].sum()) for e in select_labelled(demos, 120)) == 120
    assert select_labelled(demos, 0) == []
    with pytest.raises(ValueError, match="fewer than the 121"):
        select_labelled(demos, 121)
    with pytest.raises(ValueError, match="frames must be in"):
        as_labelled(demos[0], 41)


def test_labelled_frames_are_counted_from_a_store_online_operator_frames_only(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay", create=True, durable=False)
    store.append(_episode(60))  # a base demonstration: not operator effort
    store.append(_episode(6, drivers=[None, "local:sim", "local:sim", None, "ana", None]))  # 3 labelled
    store.append(_episode(4, drivers=[None] * 4))  # autonomous: none
    between = time.time()
    time.sleep(0.01)
    store.append(_episode(5, task="push-v3", drivers=["ana"] * 5))
    infos = EpisodeStore(tmp_path / "replay", create=False, durable=False).list()
    assert labelled_frames_per_task(infos) == {"reach-v3": 3, "push-v3": 5}
    assert labelled_frames_per_task(infos, committed_by=between, tasks=["reach-v3", "push-v3"]) == {
        "reach-v3": 3,
        "push-v3": 0,
    }
    relabelled = [as_labelled(_episode(40), 25)]
    for episode in relabelled:
        store.append(episode)
    assert labelled_frames_per_task(store.list())["reach-v3"] == 3 + 25


def _blob(version: int) -> bytes:
    checkpoint = build_checkpoint(
        {"weight": torch.full((4,), float(version))},
        policy_type="test",
        version=version,
        parent_version=version - 1,
        policy_config={},
        normalization={},
    )
    return checkpoint_to_bytes(checkpoint)


def test_the_watch_snapshots_the_first_checkpoint_after_each_budget_and_stops_after_the_last(
    tmp_path: Path,
) -> None:
    checkpoints = CheckpointStore(tmp_path / "learner" / "checkpoints")
    view = FleetView(tmp_path, {})
    watch = BudgetWatch(tmp_path, [10, 20])
    checkpoints.publish(_blob(1), train_step=0)
    assert watch(view) is False  # no replay yet
    replay = EpisodeStore(tmp_path / "learner" / "replay", create=True, durable=False)
    replay.append(_episode(100))  # the base demonstrations count for nothing
    replay.append(_episode(12, drivers=["op"] * 12))
    assert watch(view) is False and watch.snapshots == []  # crossed 10; v1 predates the crossing
    time.sleep(0.01)
    checkpoints.publish(_blob(2), train_step=25)
    assert watch(view) is False
    replay.append(_episode(9, drivers=["op"] * 9))
    assert watch(view) is False  # crossed 20, waits for a checkpoint trained with that data in the replay
    time.sleep(0.01)
    checkpoints.publish(_blob(3), train_step=50)
    assert watch(view) is True
    assert [(s.target, s.version, s.learner_step, s.frames_at_crossing) for s in watch.snapshots] == [
        (10, 2, 25, 12),
        (20, 3, 50, 21),
    ]
    for snapshot in watch.snapshots:  # a copy of the published blob, safe from the learner's clean-up
        assert Path(snapshot.path).read_bytes() == checkpoints.read_blob(snapshot.version)


def test_at_the_time_cap_the_last_checkpoint_stands_for_the_budgets_left(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(tmp_path / "learner" / "checkpoints")
    watch = BudgetWatch(tmp_path, [10, 20, 30])
    replay = EpisodeStore(tmp_path / "learner" / "replay", create=True, durable=False)
    replay.append(_episode(12, drivers=["op"] * 12))
    checkpoints.publish(_blob(1), train_step=0)
    assert watch(FleetView(tmp_path, {})) is False
    checkpoints.publish(_blob(2), train_step=25)  # the fleet stops before the watch looks again
    watch.finish()
    assert [(s.target, s.version) for s in watch.snapshots] == [(10, 2), (20, 2), (30, 2)]


def test_every_arm_trains_with_the_online_learners_config_except_its_folder(tmp_path: Path) -> None:
    fleet = FleetDemoConfig(tasks=["reach-v3", "push-v3"], live=False)
    base, demos = tmp_path / "base", tmp_path / "demos"
    base.mkdir()

    def without_folder(config: LearnerConfig) -> dict[str, object]:
        values = config_to_dict(config)
        values.pop("run_dir")
        return values

    online = parse_config(LearnerConfig, learner_training_args(fleet, tmp_path / "online", base, [demos]))
    nominal = offline_learner_config(fleet, tmp_path / "nominal", base, demos)
    shifted = offline_learner_config(fleet, tmp_path / "shifted", base, demos)
    assert without_folder(online) == without_folder(nominal) == without_folder(shifted)
    assert nominal.run_dir != shifted.run_dir
    assert nominal.replay.offline_stores == [str(demos)]  # the base demonstrations, mixed as online's are
    assert nominal.algorithm.type == "hg_dagger"


def _rows(online: int, nominal: int, shifted: int, frames: int = 300) -> list[dict[str, object]]:
    labelled = {"reach-v3": frames}
    return [
        arm_result("online", 1, {"reach-v3": SuccessCount(online, 100)}, labelled, 200, "a"),
        arm_result("offline-nominal", 1, {"reach-v3": SuccessCount(nominal, 100)}, labelled, 200, "b"),
        arm_result("offline-shifted", 1, {"reach-v3": SuccessCount(shifted, 100)}, labelled, 200, "c"),
        arm_result("base", 0, {"reach-v3": SuccessCount(30, 100)}, {"reach-v3": 0}, 0, "d"),
    ]


def test_each_arm_reports_success_wilson_interval_frames_and_steps() -> None:
    row = arm_result(
        "online",
        2,
        {"reach-v3": SuccessCount(40, 50), "push-v3": SuccessCount(30, 50)},
        {"reach-v3": 7},
        9,
        "x",
    )
    assert row["success"] == pytest.approx(0.7) and row["episodes"] == 100
    low, high = row["interval"]
    assert low < 0.7 < high and high - low == pytest.approx(0.18, abs=0.01)  # pooled Wilson 95 %
    assert (row["labelled_frames"], row["learner_steps"], row["budget"]) == (7, 9, 2)
    assert row["per_task"] == {"reach-v3": [40, 50], "push-v3": [30, 50]}


def test_the_verdict_needs_15_points_and_intervals_apart() -> None:
    assert verdict(_rows(80, 50, 85))["met"] is True
    close = verdict(_rows(62, 50, 85))  # 12 points: not enough
    assert close["met"] is False and close["online_minus_offline_nominal"] == pytest.approx(0.12)
    overlapping = verdict(_rows(66, 50, 85))  # 16 points, but 100 episodes leave the intervals touching
    assert overlapping["intervals_apart"] is False and overlapping["met"] is False


def test_the_report_merges_presets_and_states_the_verdict(tmp_path: Path) -> None:
    preset = {
        "command": "sop bench online-vs-offline --deployments [x]",
        "tasks": ["reach-v3"],
        "eval_episodes_per_task": 100,
        "sampler": "rti",
        "machine": "2 cores",
    }
    path = tmp_path / "results.json"
    merge_results(path, {"presets": {"shifted-objects": {**preset, "rows": _rows(80, 50, 85)}}})
    first = json.loads(path.read_text())["presets"]["shifted-objects"]
    first["verdict"] = verdict(first["rows"])
    merge_results(path, {"presets": {"shifted-objects": first}})
    second = {**preset, "rows": _rows(55, 50, 70), "verdict": verdict(_rows(55, 50, 70))}
    results = merge_results(path, {"presets": {"heavy-objects": second}})
    assert list(json.loads(path.read_text())["presets"]) == ["shifted-objects", "heavy-objects"]
    for row in results["presets"]["heavy-objects"]["rows"]:
        assert {"success", "interval", "labelled_frames", "learner_steps"} <= set(row)

    table = "\n".join(results_table(results))
    assert "| shifted-objects | online | 1 | 300 | 200 | 0.80" in table
    plot = plot_results(tmp_path / "plot.png", results)
    report = write_markdown(tmp_path / "md" / "online_vs_offline.md", results, plot)
    text = report.read_text()
    assert "sop bench online-vs-offline" in text and (tmp_path / "md" / "online_vs_offline.png").is_file()
    assert "shifted-objects: at 300 labelled frames online minus offline-nominal = +0.30" in text
    assert "heavy-objects" in text and "does not meet" in text
    assert "(1 of 2 presets)" in text and "NOT met" in text


@pytest.mark.slow
def test_an_offline_arm_trains_exactly_the_labelled_frames_for_exactly_the_steps(tmp_path: Path) -> None:
    """The offline arms' real path (demonstrations under a shift, labelled, into the learner's replay as the
    online arm's data, the learner's trainer) with a one-step base policy; the whole benchmark runs robot
    daemons for minutes and is not a test (its smoke: --config bench_online_vs_offline_quick)."""
    fleet = FleetDemoConfig(
        tasks=["reach-v3"],
        live=False,
        base=BasePolicyConfig(demos_per_task=1, bc_steps=1, cache_dir=str(tmp_path / "cache")),
    )
    base, demos = prepare_base_policy(fleet, Console(quiet=True))
    env = EnvConfig(max_episode_steps=60, deployment=load_deployment("shifted-objects"))
    pool = record_until("reach-v3", 70, EXTRA_DEMO_SEED, 0.1, env)
    assert sum(e.num_steps for e in pool) >= 70
    checkpoint = train_offline_arm(fleet, base, demos, select_labelled(pool, 70), 3, tmp_path / "arm")
    assert checkpoint.name.endswith("step000003.safetensors")
    replay = EpisodeStore(tmp_path / "arm" / "learner" / "replay", create=False, durable=False).list()
    assert labelled_frames_per_task(replay) == {"reach-v3": 70}
    assert {info.source for info in replay} == {Source.ONLINE, Source.OFFLINE}  # + the base demonstration
