"""The diffusion policy behind the Policy interface: history, chunking, RTI warm starts, gripper, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sop.checkpoint import CheckpointError
from sop.hashing import sha256_hex
from sop.policies import (
    DDIMColdStartConfig,
    DDIMSamplerConfig,
    ObservationError,
    RTISamplerConfig,
    load_policy,
)
from sop.policies.configuration_diffusion import GripperMode
from sop.policies.modeling_diffusion import DiffusionPolicy
from sop.policies.samplers import SampleResult, shift_chunk


class SamplerSpy:
    """Wraps a policy's sampler and records the warm start of every call."""

    def __init__(self, policy: DiffusionPolicy) -> None:
        self.inner = policy.sampler
        self.name = self.inner.name
        self.uses_warm_start = self.inner.uses_warm_start
        self.warm_starts: list[torch.Tensor | None] = []
        self.results: list[SampleResult] = []
        policy.sampler = self  # type: ignore[assignment]

    def sample(
        self, denoise: Any, shape: Any, generator: Any, device: Any, warm_start: Any = None
    ) -> SampleResult:
        self.warm_starts.append(None if warm_start is None else warm_start.clone())
        result = self.inner.sample(denoise, shape, generator, device, warm_start)
        self.results.append(result)
        return result


def test_act_returns_one_action_per_step_and_chunks_every_ta_steps(
    policy_factory: Any, obs_factory: Any
) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=2))
    policy.reset(seed=0)
    for step in range(17):
        action = policy.act(obs_factory(step))
        assert action.shape == (4,) and action.dtype == np.float32
    assert policy.chunks_predicted == 3  # steps 0, 8 and 16
    assert policy.last_denoiser_calls == 2


def test_history_is_filled_with_the_first_observation_after_reset(
    policy_factory: Any, obs_factory: Any
) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=1))
    seen: list[list[Any]] = []
    original = policy.predict_chunk

    def spy(observation: Any, warm_start: Any = None) -> Any:
        seen.append(list(observation))
        return original(observation, warm_start)

    policy.predict_chunk = spy
    first = obs_factory(1)
    policy.act(first)
    assert len(seen[0]) == policy.observation_horizon
    assert all(item is first for item in seen[0])
    later = [obs_factory(step) for step in range(2, 10)]
    for item in later:
        policy.act(item)
    # Eight actions per chunk: the second chunk comes with the 9th observation and sees the 8th and 9th.
    assert len(seen) == 2 and seen[1][0] is later[-2] and seen[1][1] is later[-1]
    policy.reset()
    policy.act(obs_factory(20))
    assert all(item["state"] is seen[2][0]["state"] for item in seen[2])


def test_rti_warm_start_is_exactly_the_shifted_previous_chunk(policy_factory: Any, obs_factory: Any) -> None:
    policy = policy_factory(RTISamplerConfig(timesteps=(2, 1, 0), execution_horizon=3))
    spy = SamplerSpy(policy)
    policy.reset(seed=0)
    for step in range(9):
        policy.act(obs_factory(step))
    assert [w is None for w in spy.warm_starts] == [True, False, False]
    assert [r.denoiser_calls for r in spy.results] == [10, 3, 3]  # DDIM-10 from noise, then K' = 3
    ta = policy.execution_horizon
    assert ta == 3
    for previous, warm_start in zip(spy.results[:-1], spy.warm_starts[1:], strict=True):
        assert warm_start is not None
        assert torch.equal(warm_start[0], shift_chunk(previous.trajectory[0], ta))
    assert policy.metrics["denoiser_calls_last_chunk"] == 3.0
    assert policy.last_chunk_warm_started


def test_clip_gripper_mode_snaps_the_warm_start_and_rounds_the_command(
    policy_factory: Any, obs_factory: Any
) -> None:
    policy = policy_factory(
        RTISamplerConfig(execution_horizon=8),
        gripper_mode=GripperMode.CLIP,
        gripper_factor=10.0,
    )
    spy = SamplerSpy(policy)
    actions = [policy.act(obs_factory(step)) for step in range(9)]
    assert spy.warm_starts[1] is not None
    warm_start = spy.warm_starts[1][0]
    assert torch.allclose(warm_start[:, 3].abs(), torch.full((16,), 0.1))
    expected = shift_chunk(spy.results[0].trajectory[0], 8)
    assert torch.equal(warm_start[:, :3], expected[:, :3])
    assert torch.equal(torch.sign(warm_start[:, 3]), torch.where(expected[:, 3] > 0, 1.0, -1.0))
    # The command is discrete: one of the gripper's two extremes in the data (±1 for a binary gripper).
    low, high = policy.stats["action"].min[3], policy.stats["action"].max[3]
    assert all(np.isclose(a[3], low, atol=1e-5) or np.isclose(a[3], high, atol=1e-5) for a in actions)


def test_scale_gripper_mode_divides_the_gripper_in_model_space(policy_factory: Any) -> None:
    policy = policy_factory(
        DDIMSamplerConfig(steps=2),
        gripper_mode=GripperMode.SCALE,
        gripper_factor=10.0,
    )
    plain = policy_factory(gripper_mode=GripperMode.NONE)
    actions = torch.tensor([[0.5, -0.5, 0.25, 1.0], [0.0, 0.1, -0.2, -1.0]])
    scaled, normal = policy.actions_to_model(actions), plain.actions_to_model(actions)
    assert torch.allclose(scaled[:, :3], normal[:, :3])
    assert torch.allclose(scaled[:, 3], normal[:, 3] / 10.0)
    assert torch.allclose(policy.actions_from_model(scaled), actions, atol=1e-6)
    command = policy.predict_chunk(
        {"state": np.zeros(39, np.float32), "instruction": "x", "task": "reach-v3"}
    )
    low, high = policy.stats["action"].min[3], policy.stats["action"].max[3]
    assert all(np.isclose(g, low, atol=1e-5) or np.isclose(g, high, atol=1e-5) for g in command.actions[:, 3])


@pytest.mark.parametrize("interrupt", ["invalidate", "reset"])
def test_hand_back_and_reset_force_a_full_solve(
    policy_factory: Any, obs_factory: Any, interrupt: str
) -> None:
    policy = policy_factory(RTISamplerConfig(execution_horizon=8))
    for step in range(9):
        policy.act(obs_factory(step))
    assert policy.last_denoiser_calls == 3
    policy.act(obs_factory(9))  # mid-chunk: a queued action, no new chunk
    if interrupt == "invalidate":
        policy.invalidate_warm_start()
    else:
        policy.reset()
    chunks = policy.chunks_predicted
    policy.act(obs_factory(10))  # queue dropped: a new chunk right away, fully solved
    assert policy.chunks_predicted == chunks + 1
    assert policy.last_denoiser_calls == 10 and not policy.last_chunk_warm_started  # DDIM-10 from noise


def test_rti_replans_every_step_by_default_and_can_cold_start_with_ddim(
    policy_factory: Any, obs_factory: Any
) -> None:
    policy = policy_factory(RTISamplerConfig(cold_start=DDIMColdStartConfig(steps=4)))
    calls = []
    for step in range(4):
        policy.act(obs_factory(step))
        calls.append(policy.last_denoiser_calls)
    assert policy.execution_horizon == 1 and policy.chunks_predicted == 4
    assert calls == [4, 3, 3, 3]


def test_same_seed_same_actions(policy_factory: Any, obs_factory: Any) -> None:
    policy = policy_factory(RTISamplerConfig())
    runs = []
    for seed in (3, 3, 4):
        policy.reset(seed=seed)
        runs.append(np.stack([policy.act(obs_factory(step)) for step in range(10)]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_predict_chunk_covers_the_future_from_the_current_step(policy_factory: Any, obs_factory: Any) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=2))
    chunk = policy.predict_chunk(obs_factory(0))
    config = policy.config
    assert chunk.actions.shape == (
        config.prediction_horizon - config.observation_horizon + 1,
        config.action_dim,
    )
    assert chunk.trajectory is not None and chunk.trajectory.shape == (
        config.prediction_horizon,
        config.action_dim,
    )
    assert chunk.denoiser_calls == 2


def test_bad_observations_are_refused_with_the_key_named(policy_factory: Any, obs_factory: Any) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=1))
    with pytest.raises(ObservationError, match="'state' has shape"):
        policy.act({"state": np.zeros(5, np.float32), "instruction": "x", "task": "reach-v3"})
    with pytest.raises(ObservationError, match="'state' is missing"):
        policy.act({"instruction": "x"})
    with pytest.raises(ObservationError, match="task 'door-open-v3' is not one this policy knows"):
        policy.act(obs_factory(0, task="door-open-v3"))


def test_image_encoder_path(policy_factory: Any, obs_factory: Any) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=1), cameras=("corner2",))
    image = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    action = policy.act(dict(obs_factory(0), image=image))
    assert action.shape == (4,)
    batch = {
        "observation.state": np.zeros((2, 2, 39), np.float32),
        "action": np.zeros((2, 16, 4), np.float32),
        "observation.images.corner2": np.zeros((2, 2, 32, 32, 3), np.uint8),
        "task": ["reach-v3", "push-v3"],
        "instruction": ["a", "b"],
    }
    assert policy.compute_loss(batch).ndim == 0
    with pytest.raises(ObservationError, match="no image for camera 'corner2'"):
        policy.predict_chunk(obs_factory(0))


def test_zero_weight_samples_do_not_affect_the_loss(policy_factory: Any) -> None:
    policy = policy_factory()
    rng = np.random.default_rng(0)
    batch = {
        "observation.state": rng.normal(size=(4, 2, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(4, 16, 4)).astype(np.float32),
        "task": ["reach-v3"] * 4,
        "instruction": ["x"] * 4,
        "weight": np.array([1, 1, 0, 0], np.float32),
    }
    changed = dict(batch)
    changed["action"] = batch["action"].copy()
    changed["action"][2:] = -batch["action"][2:]  # different targets where the weight is 0
    losses = []
    for candidate in (
        batch,
        changed,
        dict(batch, weight=np.array([3, 3, 0, 0], np.float32)),
        dict(batch, weight=None),
    ):
        torch.manual_seed(1)  # same noise and timesteps for every call
        losses.append(policy.compute_loss(candidate).item())
    assert losses[0] == pytest.approx(losses[1])  # zero-weight samples are ignored
    assert losses[0] == pytest.approx(losses[2])  # weights are relative
    assert losses[0] != pytest.approx(losses[3])  # and they do select samples
    with pytest.raises(ValueError, match=r"observation\.state has shape"):
        policy.compute_loss(dict(batch, **{"observation.state": np.zeros((4, 3, 39), np.float32)}))


def test_checkpoint_round_trip_gives_identical_actions(
    tmp_path: Path, policy_factory: Any, obs_factory: Any
) -> None:
    policy = policy_factory(DDIMSamplerConfig(steps=3))
    policy.version = 7
    directory = policy.save(tmp_path / "ckpt", parent_version=6)
    blob = policy.to_bytes(parent_version=6)
    for loaded in (
        load_policy(directory, DDIMSamplerConfig(steps=3)),
        load_policy(blob, DDIMSamplerConfig(steps=3), expected_sha256=sha256_hex(blob)),
    ):
        assert isinstance(loaded, DiffusionPolicy)
        assert loaded.version == 7 and loaded.parent_version == 6
        assert loaded.config == policy.config
        for p in (policy, loaded):
            p.reset(seed=5)
        np.testing.assert_array_equal(
            np.stack([policy.act(obs_factory(s)) for s in range(3)]),
            np.stack([loaded.act(obs_factory(s)) for s in range(3)]),
        )


def test_weights_that_do_not_fit_the_config_are_refused(policy_factory: Any) -> None:
    from sop.checkpoint import Checkpoint

    policy = policy_factory()
    checkpoint = policy.to_checkpoint()
    tensors = dict(checkpoint.tensors)
    tensors.pop(next(iter(tensors)))
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        DiffusionPolicy.from_checkpoint(Checkpoint(checkpoint.manifest, tensors))


def test_default_model_stays_small_enough_for_the_cpu_budget(stats_factory: Any) -> None:
    """The < 5 ms per denoiser call budget (one core) holds for the default U-Net of ~4.7 M parameters;
    `sop bench rti` measures the time itself. A default that grows past 6 M parameters breaks the budget."""
    from sop.policies.configuration_diffusion import DiffusionPolicyConfig

    policy = DiffusionPolicy(
        DiffusionPolicyConfig(instruction_encoder="task", tasks=("reach-v3",)), stats_factory()
    )
    assert sum(p.numel() for p in policy.network.parameters()) < 6_000_000


def test_hand_back_warm_starts_rti_from_the_executed_actions(policy_factory: Any, obs_factory: Any) -> None:
    """No cold solve inside the control grid after a hand-back: RTI refines a chunk made of what was executed."""
    policy = policy_factory(RTISamplerConfig(timesteps=(2, 1, 0), execution_horizon=1))
    for step in range(3):
        policy.act(obs_factory(step))
    spy = SamplerSpy(policy)
    executed = np.array([[0.1, -0.2, 0.3, 0.5], [0.2, -0.1, 0.3, 0.5], [0.3, 0.0, 0.3, -0.5]], np.float32)
    policy.continue_from_actions(executed)
    policy.act(obs_factory(3))
    (warm_start,) = spy.warm_starts
    assert warm_start is not None and policy.last_denoiser_calls == 3 and policy.last_chunk_warm_started
    guess = policy.actions_from_model(warm_start[0])
    # To = 2: position 0 is the last executed step; every later one repeats the last executed action.
    assert torch.allclose(guess, torch.as_tensor(executed[-1]).expand(16, 4), atol=1e-5)
    # A cold sampler cannot use it: the next chunk is a full solve.
    cold = policy_factory(DDIMSamplerConfig(steps=2))
    cold.act(obs_factory(0))
    cold.continue_from_actions(executed)
    cold_spy = SamplerSpy(cold)
    cold.act(obs_factory(1))
    assert cold_spy.warm_starts == [None]


def test_the_traced_denoiser_samples_what_the_eager_one_does(policy_factory: Any, obs_factory: Any) -> None:
    traced = policy_factory(DDIMSamplerConfig(steps=3))
    eager = policy_factory(DDIMSamplerConfig(steps=3))
    eager._inference_unet = lambda *_: eager.network.unet  # type: ignore[method-assign]
    for policy in (traced, eager):
        policy.reseed(0)
    first = traced.predict_chunk(obs_factory(0))
    assert np.array_equal(first.actions, eager.predict_chunk(obs_factory(0)).actions)
    assert any(isinstance(unet, torch.jit.ScriptModule) for unet in traced._traced_unets.values())
    # Weights changed in place (a loaded state dict) are what the trace computes with.
    with torch.no_grad():
        for policy in (traced, eager):
            next(policy.network.unet.parameters()).add_(0.25)
            policy.reseed(0)
    changed = traced.predict_chunk(obs_factory(0))
    assert not np.array_equal(changed.actions, first.actions)
    assert np.array_equal(changed.actions, eager.predict_chunk(obs_factory(0)).actions)


def test_a_policy_takes_another_checkpoint_of_its_network_in_place_without_tracing_again(  # type: ignore[no-untyped-def]
    policy_factory, obs_factory
) -> None:
    make_policy, observation = policy_factory, obs_factory
    robot = make_policy(DDIMSamplerConfig(steps=3))
    robot.act(observation(0))  # traces the sampling U-Net
    traced = dict(robot._traced_unets)
    assert traced
    torch.manual_seed(1)
    newer = make_policy(DDIMSamplerConfig(steps=3))
    with torch.no_grad():
        for parameter in newer.network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    blob = newer.to_bytes(version=7, parent_version=6)

    assert robot.load_weights_in_place(blob)
    assert (robot.version, robot.parent_version) == (7, 6)
    assert robot._traced_unets == traced  # the same traced graphs, now computing with v7's weights
    robot.reset(seed=3)
    newer.reset(seed=3)
    np.testing.assert_allclose(robot.act(observation(1)), newer.act(observation(1)), atol=1e-5)

    other_network = make_policy(DDIMSamplerConfig(steps=3), down_dims=(16, 16))
    assert not robot.load_weights_in_place(other_network.to_bytes(version=8))
    assert robot.version == 7  # unchanged
    with pytest.raises(CheckpointError):
        robot.load_weights_in_place(blob, expected_sha256="0" * 64)
