"""The small pieces: config checks that name the field, the command-line flags, back-off, the pacer's
deadline accounting, and the policy slot."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from robot_fakes import FakePolicy

from robot_client.config import (
    ControlConfig,
    LearnerLinkConfig,
    PolicyConfig,
    RobotConfig,
    RobotPluginConfig,
    SpoolConfig,
    UploadConfig,
)
from robot_client.control_loop import Pacer
from robot_client.learner_channel import Backoff, LearnerChannel
from robot_client.metrics import RobotMetrics
from robot_client.policy_sync import LoadedPolicy, PolicySlot
from sop.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LearnerLinkConfig(address="no-port"), "learner.address"),
        (lambda: LearnerLinkConfig(token_file="/nonexistent/token"), "learner.token_file"),
        (lambda: ControlConfig(rate_hz=0), "control.rate_hz"),
        (lambda: ControlConfig(realtime_priority=120), "control.realtime_priority"),
        (lambda: RobotPluginConfig(type="lerobot"), "robot.lerobot_config"),
        (lambda: RobotPluginConfig(type="humanoid"), "robot.type"),
        (lambda: PolicyConfig(swap_at="whenever"), "policy.swap_at"),
        (lambda: SpoolConfig(partial_episodes="keep"), "spool.partial_episodes"),
        (lambda: UploadConfig(max_chunk_bytes=2 << 20), "upload.max_chunk_bytes"),
        (lambda: RobotConfig(robot_id="a/b"), "robot_id"),
    ],
)
def test_bad_values_name_their_field(make: object, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()  # type: ignore[operator]


def test_flags_are_the_yaml_keys_on_top_of_the_yaml_file() -> None:
    argv = [
        "--config",
        "configs/robot.yaml",
        "--learner.address",
        "10.0.0.2:7000",
        "--robot_id=arm-3",
        "--control.max_episodes",
        "4",
    ]
    config = parse_config(RobotConfig, argv)
    assert (config.learner.address, config.robot_id, config.control.max_episodes) == (
        "10.0.0.2:7000",
        "arm-3",
        4,
    )
    assert config.robot_dir.name == "arm-3"
    with pytest.raises(ConfigError, match="rate_hz"):
        parse_config(RobotConfig, ["--control.rate_hz", "-3"])


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("--robot-id", "--robot_id"),
        ("--data-dir", "--data_dir"),
        ("--max-episodes", "--control.max_episodes"),
        ("--token-file", "--learner.token_file"),
        ("--drain", "--drain_timeout_s"),
        ("--learner", "--learner.address"),
    ],
)
def test_a_dashed_or_short_flag_is_refused_with_the_key_it_probably_meant(typed: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=f"{typed}[;: ].*{meant.replace('.', '[.]')}") as raised:
        parse_config(RobotConfig, [typed, "x"])
    assert "\n" not in str(raised.value)


def test_backoff_grows_with_jitter_and_respects_floor_and_cap() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(0))
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.next_delay(floor_s=5.0) == 5.0
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_pacer_counts_an_overrun_and_reanchors_instead_of_bursting() -> None:
    metrics = RobotMetrics("pacer")
    pacer = Pacer(0.01, free_running=False, metrics=metrics)
    pacer.restart()
    starts = []
    for tick in range(6):
        pacer.wait()
        starts.append(time.perf_counter())
        if tick == 2:
            time.sleep(0.035)  # overruns three slots
        pacer.done()
    assert metrics.snapshot()["deadline_misses"] == 1
    periods = [b - a for a, b in itertools.pairwise(starts)]
    assert periods[2] > 0.03  # the late tick shows up as a long period...
    assert all(p > 0.008 for p in periods[3:])  # ...and is not followed by a catch-up burst
    assert metrics.loop_period.count == 5


def test_free_running_pacer_does_not_wait_or_count_periods() -> None:
    metrics = RobotMetrics("free")
    pacer = Pacer(1.0, free_running=True, metrics=metrics)
    pacer.restart()
    begin = time.perf_counter()
    for _ in range(5):
        pacer.wait()
        pacer.done()
    assert time.perf_counter() - begin < 0.5
    assert metrics.snapshot()["steps"] == 5 and metrics.loop_period.count == 0


def test_policy_slot_keeps_the_newest() -> None:
    slot = PolicySlot()
    slot.offer(LoadedPolicy(FakePolicy(3), 3, "", "learner"))
    slot.offer(LoadedPolicy(FakePolicy(2), 2, "", "learner"))
    assert slot.pending_version == 3
    taken = slot.take()
    assert taken is not None and taken.version == 3 and slot.take() is None


def test_policy_slot_keeps_a_policy_nobody_runs_as_its_spare() -> None:
    slot = PolicySlot()
    assert slot.take_spare() is None
    superseded, newer = FakePolicy(2), FakePolicy(3)
    slot.offer(LoadedPolicy(superseded, 2, "", "learner"))
    slot.offer(LoadedPolicy(newer, 3, "", "learner"))  # v2 was never taken: nobody will run it
    assert slot.take_spare() is superseded and slot.take_spare() is None
    retired = FakePolicy(1)
    slot.retire(retired)  # the control loop swapped it out
    assert slot.take_spare() is retired


def test_channel_sends_the_robot_token(tmp_path: object) -> None:
    channel = LearnerChannel(LearnerLinkConfig(address="127.0.0.1:9"), "robot-7", token="s3cret")
    try:
        assert dict(channel.metadata) == {"x-sop-robot-id": "robot-7", "authorization": "Bearer s3cret"}
    finally:
        channel.close()


def test_the_robot_sampler_is_the_policys_typed_sampler_config() -> None:
    from sop.policies import DDIMColdStartConfig, DDIMSamplerConfig, RTISamplerConfig

    shipped = parse_config(RobotConfig, ["--config", "configs/robot.yaml"])
    assert shipped.policy.sampler == RTISamplerConfig() == RobotConfig().policy.sampler  # RTI, as before
    # Another kind on the command line starts from that kind's defaults: the file's RTI keys do not apply.
    tuned = parse_config(
        RobotConfig,
        ["--config", "configs/robot.yaml", "--policy.sampler.type", "ddim", "--policy.sampler.steps", "5"],
    )
    assert tuned.policy.sampler == DDIMSamplerConfig(steps=5)
    rti = parse_config(RobotConfig, ["--policy.sampler.timesteps", "3,1,0"])
    assert rti.policy.sampler == RTISamplerConfig(timesteps=(3, 1, 0))
    cold = parse_config(
        RobotConfig, ["--config", "configs/robot.yaml", "--policy.sampler.cold_start.type", "ddim"]
    )
    assert cold.policy.sampler == RTISamplerConfig(cold_start=DDIMColdStartConfig(steps=10))
    with pytest.raises(ConfigError, match="timesteps"):
        parse_config(RobotConfig, ["--policy.sampler.timesteps", "0,1"])
    with pytest.raises(ConfigError, match="steps"):  # DDIM's key on the file's RTI sampler
        parse_config(RobotConfig, ["--config", "configs/robot.yaml", "--policy.sampler.steps", "5"])
