"""SmolVLA (lerobot) behind SOP's Policy interface, built offline from a tiny random backbone folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sop.episode import ACTION, STATE
from sop.normalization import NormalizationStats
from sop.policies import load_policy
from sop.policies.lerobot_adapter import FlowWarmStart, LeRobotPolicyAdapter
from sop.policies.lerobot_offline import tiny_smolvla_config, write_tiny_smolvlm

STATE_DIM, ACTION_DIM, CHUNK, IMAGE = 39, 4, 8, 32


def make_smolvla(backbone: Path, **changes: Any) -> Any:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = tiny_smolvla_config(backbone, state_dim=STATE_DIM, action_dim=ACTION_DIM, image_size=IMAGE)
    for name, value in changes.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    return SmolVLAPolicy(config)


def stats(action_offset: float = 0.0) -> NormalizationStats:
    rng = np.random.default_rng(0)
    return NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(64, STATE_DIM)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(64, ACTION_DIM)).astype(np.float32) + action_offset],
        }
    )


def observation(step: int = 0, instruction: str = "pick up the red cube") -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "state": rng.normal(size=STATE_DIM).astype(np.float32),
        "image": rng.integers(0, 256, size=(IMAGE, IMAGE, 3), dtype=np.uint8),
        "instruction": instruction,
        "task": "pick-place-v3",
    }


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm"), image_size=IMAGE)


def seeded_chunk(policy: LeRobotPolicyAdapter, obs: dict[str, Any], seed: int = 0) -> np.ndarray:
    policy.reseed(seed)
    return policy.predict_chunk(obs).actions


def test_smolvla_predicts_chunks_through_lerobots_processors(backbone: Path) -> None:
    adapter = LeRobotPolicyAdapter(make_smolvla(backbone), stats())
    chunk = adapter.predict_chunk(observation())
    assert chunk.actions.shape == (CHUNK, ACTION_DIM) and chunk.actions.dtype == np.float32
    assert np.isfinite(chunk.actions).all()
    assert chunk.denoiser_calls == 4  # num_steps velocity calls, counted on action_out_proj
    # The instruction reaches the VLM as tokens: another instruction, same noise, other actions.
    same = seeded_chunk(adapter, observation())
    assert np.array_equal(same, seeded_chunk(adapter, observation()))
    assert not np.allclose(same, seeded_chunk(adapter, observation(instruction="open the drawer")))
    # The image is read too.
    other_image = dict(observation(), image=observation(5)["image"])
    assert not np.allclose(same, seeded_chunk(adapter, other_image))
    # The post-processor un-normalizes with SOP's statistics (MEAN_STD): shifting the data shifts actions.
    shifted = LeRobotPolicyAdapter(adapter.network, stats(action_offset=5.0))
    np.testing.assert_allclose(seeded_chunk(shifted, observation()), same + 5.0, atol=1e-4)
    # act() serves the chunk's first n_action_steps, then plans again.
    adapter.reset(seed=0)
    actions = np.stack([adapter.act(observation(step)) for step in range(5)])
    assert actions.shape == (5, ACTION_DIM) and adapter.chunks_predicted == 2


def test_smolvla_checkpoint_round_trip_needs_no_backbone_folder(backbone: Path, tmp_path: Path) -> None:
    own_backbone = shutil.copytree(backbone, tmp_path / "backbone")
    adapter = LeRobotPolicyAdapter(make_smolvla(own_backbone), stats(), version=3, tasks=("pick-place-v3",))
    blob = adapter.to_bytes()
    shutil.rmtree(own_backbone)  # the checkpoint carries the backbone's config and tokenizer
    loaded = load_policy(blob)
    assert isinstance(loaded, LeRobotPolicyAdapter)
    assert loaded.version == 3 and loaded.tasks == ("pick-place-v3",)
    assert loaded.lerobot_config.type == "smolvla"
    assert Path(loaded.lerobot_config.vlm_model_name) != own_backbone
    np.testing.assert_array_equal(seeded_chunk(adapter, observation()), seeded_chunk(loaded, observation()))
    directory = loaded.save(tmp_path / "ckpt")
    again = load_policy(directory)
    np.testing.assert_array_equal(seeded_chunk(again, observation()), seeded_chunk(loaded, observation()))


def training_batch(size: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        STATE: rng.normal(size=(size, 1, STATE_DIM)).astype(np.float32),
        "observation.images.camera": rng.integers(0, 256, size=(size, 1, IMAGE, IMAGE, 3), dtype=np.uint8),
        ACTION: rng.uniform(-1, 1, size=(size, CHUNK, ACTION_DIM)).astype(np.float32),
        "action_is_pad": np.zeros((size, CHUNK), bool),
        "instruction": ["pick up the red cube"] * size,
        "task": ["pick-place-v3"] * size,
        "source": np.array(["online", "offline"] * (size // 2)),
        "weight": np.ones(size, np.float32),
    }


def fixed_noise_loss(adapter: LeRobotPolicyAdapter, batch: dict[str, Any]) -> float:
    torch.manual_seed(123)  # the same flow-matching noise and times for every evaluation
    with torch.no_grad():
        return float(adapter.compute_loss(batch))


@pytest.mark.slow
def test_hg_dagger_steps_lower_the_smolvla_loss(backbone: Path) -> None:
    from cloud_learner.algorithms.hg_dagger import HGDaggerConfig
    from sop.training.trainer import OptimizerConfig

    adapter = LeRobotPolicyAdapter(make_smolvla(backbone), stats())
    assert adapter.prediction_horizon == CHUNK and adapter.cameras == ("camera",)
    algorithm = HGDaggerConfig(
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0, schedule="constant", ema_max_decay=0.0)
    ).build(adapter)
    batch = training_batch()
    before = fixed_noise_loss(adapter, batch)
    for _ in range(40):
        result = algorithm.update(dict(batch))
        assert np.isfinite(result.metrics["loss"])
    assert fixed_noise_loss(adapter, batch) < 0.8 * before
    published = algorithm.publishable_policy()
    assert isinstance(published, LeRobotPolicyAdapter) and published.lerobot_config.type == "smolvla"
    # HG-DAgger's padding mask reaches lerobot's loss: fully masked windows have zero loss.
    masked = dict(batch, action_is_pad=np.ones((4, CHUNK), bool))
    with torch.no_grad():
        assert float(adapter.compute_loss(masked, mask_padding=True)) == 0.0
        assert float(adapter.compute_loss(masked, mask_padding=False)) > 0.0


def test_flow_matching_warm_start_integrates_few_steps_from_the_shifted_chunk(backbone: Path) -> None:
    adapter = LeRobotPolicyAdapter(
        make_smolvla(backbone), stats(), warm_start=FlowWarmStart(time=0.3, steps=2)
    )
    adapter.reset(seed=0)
    for step in range(5):
        adapter.act(observation(step))
    assert adapter.chunks_predicted == 2
    assert adapter.last_chunk_warm_started and adapter.last_denoiser_calls == 2  # not num_steps (4)
    adapter.invalidate_warm_start()  # a swap or a refused output: a full solve again
    adapter.act(observation(6))
    assert not adapter.last_chunk_warm_started and adapter.last_denoiser_calls == 4
    # Started close to t = 0 the result stays with the guess: two guesses, same noise, differ as the guesses do.
    near = LeRobotPolicyAdapter(adapter.network, stats(), warm_start=FlowWarmStart(time=0.02, steps=1))
    first = torch.zeros(CHUNK, ACTION_DIM)
    second = torch.full((CHUNK, ACTION_DIM), 0.5)
    outputs = []
    for guess in (first, second):
        near.reseed(0)
        chunk = near.predict_chunk(observation(), warm_start=guess)
        assert chunk.warm_started and chunk.trajectory is not None
        outputs.append(chunk.trajectory)
    np.testing.assert_allclose((outputs[1] - outputs[0]).numpy(), 0.49, atol=0.03)
    with pytest.raises(ValueError, match="warm_start"):
        LeRobotPolicyAdapter(adapter.network, stats()).predict_chunk(observation(), warm_start=first)


def test_sop_policy_commands_round_trip_smolvla_through_lerobots_folder(
    backbone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from sop.cli import main

    adapter = LeRobotPolicyAdapter(make_smolvla(backbone), stats(), version=2)
    checkpoint = adapter.save(tmp_path / "sop-ckpt")
    folder = tmp_path / "lerobot-folder"
    assert main(["policy", "export-lerobot", "--checkpoint", str(checkpoint), "--out", str(folder)]) == 0
    assert {"config.json", "model.safetensors", "policy_preprocessor.json"} <= {
        p.name for p in folder.iterdir()
    }
    # lerobot itself reads the folder offline: the backbone's files were written beside it.
    native = SmolVLAPolicy.from_pretrained(str(folder))
    assert Path(native.config.vlm_model_name) == (folder / "vlm_backbone").resolve()
    for name, value in adapter.network.state_dict().items():
        assert torch.equal(native.state_dict()[name], value), name

    imported_dir = tmp_path / "imported"
    args = ["policy", "import-lerobot", "--folder", str(folder), "--out", str(imported_dir), "--version", "7"]
    assert main([*args, "--warm_start", "true"]) == 0
    imported = load_policy(imported_dir)
    assert isinstance(imported, LeRobotPolicyAdapter)
    assert imported.version == 7 and imported.warm_start == FlowWarmStart()
    # Same weights, same statistics (read back from lerobot's normalizer): the same actions.
    np.testing.assert_allclose(
        seeded_chunk(imported, observation()), seeded_chunk(adapter, observation()), atol=1e-5
    )
    # A folder that exists is refused with one line, not overwritten.
    capsys.readouterr()
    assert main(["policy", "export-lerobot", "--checkpoint", str(checkpoint), "--out", str(folder)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_export_lerobot_refuses_a_non_lerobot_checkpoint(
    tmp_path: Path, policy_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from sop.cli import main

    checkpoint = policy_factory().save(tmp_path / "diffusion")
    assert (
        main(["policy", "export-lerobot", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 1
    )
    assert "only lerobot policies" in capsys.readouterr().err
    assert main(["policy", "import-lerobot", "--folder", str(tmp_path), "--out", str(tmp_path / "y")]) == 1
    assert "not a lerobot policy folder" in capsys.readouterr().err


def test_hand_back_warm_starts_from_the_operators_last_action(backbone: Path) -> None:
    adapter = LeRobotPolicyAdapter(
        make_smolvla(backbone), stats(), warm_start=FlowWarmStart(time=0.02, steps=1)
    )
    adapter.reset(seed=0)
    adapter.act(observation(0))
    executed = np.array([[0.1, -0.2, 0.3, 0.0], [0.4, -0.5, 0.6, 0.2]], np.float32)
    adapter.continue_from_actions(executed)
    action = adapter.act(observation(1))
    assert adapter.last_chunk_warm_started and adapter.last_denoiser_calls == 1
    # Started at t0 = 0.02 from the held action, the chunk stays next to what the operator did last.
    np.testing.assert_allclose(action, executed[-1], atol=0.1)
    cold = LeRobotPolicyAdapter(adapter.network, stats())  # no warm start: a full solve after the hand-back
    cold.reset(seed=0)
    cold.act(observation(0))
    cold.continue_from_actions(executed)
    cold.act(observation(1))
    assert not cold.last_chunk_warm_started and cold.last_denoiser_calls == 4


def test_lerobots_normalizer_matches_sops_including_constant_dimensions(backbone: Path) -> None:
    from sop.normalization import NormalizationMode, Normalizer

    rng = np.random.default_rng(2)
    states = rng.normal(size=(64, STATE_DIM)).astype(np.float32)
    states[:, -5:] = 0.0  # Meta-World pads its state with zeros: SOP only centres these dimensions
    data = NormalizationStats.from_arrays(
        {STATE: [states], ACTION: [rng.uniform(-1, 1, size=(64, ACTION_DIM)).astype(np.float32)]}
    )
    adapter = LeRobotPolicyAdapter(make_smolvla(backbone), data)
    state = torch.as_tensor(rng.normal(size=(1, 1, STATE_DIM)).astype(np.float32))
    image = torch.zeros(1, 3, IMAGE, IMAGE)
    ours = adapter.preprocessor({STATE: state[:, -1], "observation.images.camera": image, "task": ["reach"]})[
        STATE
    ]
    sops = Normalizer(data, {STATE: NormalizationMode.MEAN_STD}).normalize(STATE, state[:, -1])
    np.testing.assert_allclose(ours.numpy(), sops.numpy(), rtol=1e-5, atol=1e-5)
    assert float(ours.abs().max()) < 10.0


def test_loading_a_checkpoint_registers_lerobots_third_party_plugins(
    backbone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lerobot.utils.import_utils as import_utils

    from sop.policies.lerobot_adapter import register_lerobot_plugins

    calls: list[bool] = []
    monkeypatch.setattr(import_utils, "register_third_party_plugins", lambda: calls.append(True))
    register_lerobot_plugins.cache_clear()
    blob = LeRobotPolicyAdapter(make_smolvla(backbone), stats()).to_bytes()
    load_policy(blob)
    load_policy(blob)
    register_lerobot_plugins.cache_clear()
    assert calls == [True]  # once per process, before the first policy type is looked up by name


def test_a_lerobot_diffusion_folder_imports_with_its_min_max_statistics(tmp_path: Path) -> None:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    from sop.policies.lerobot_folder import export_lerobot_policy, import_lerobot_policy

    torch.manual_seed(0)
    config = DiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
            "observation.environment_state": PolicyFeature(FeatureType.ENV, (STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        num_inference_steps=4,
        device="cpu",
    )
    adapter = LeRobotPolicyAdapter(DiffusionPolicy(config), stats())
    folder = export_lerobot_policy(adapter, tmp_path / "diffusion")
    imported = import_lerobot_policy(folder, tasks=("reach-v3",))
    for key in (STATE, ACTION):
        for name in ("min", "max"):
            np.testing.assert_allclose(
                getattr(imported.stats[key], name), getattr(adapter.stats[key], name), rtol=1e-6
            )
    np.testing.assert_allclose(
        seeded_chunk(imported, observation()), seeded_chunk(adapter, observation()), atol=1e-5
    )


def test_a_robot_swaps_smolvla_weights_in_place(backbone: Path) -> None:
    adapter = LeRobotPolicyAdapter(make_smolvla(backbone), stats(), version=1)
    trained = LeRobotPolicyAdapter(make_smolvla(backbone), stats(), version=1)
    with torch.no_grad():
        for parameter in trained.network.model.action_out_proj.parameters():
            parameter.add_(0.5)
    blob = trained.to_bytes(version=2, parent_version=1)
    loaded = load_policy(blob)  # the robot received it with another backbone path: still the same network
    assert isinstance(loaded, LeRobotPolicyAdapter)
    assert loaded.load_weights_in_place(adapter.to_bytes(version=3))
    assert adapter.load_weights_in_place(blob)
    assert adapter.version == 2 and adapter.parent_version == 1
    np.testing.assert_array_equal(seeded_chunk(adapter, observation()), seeded_chunk(trained, observation()))
    # Another architecture or other statistics: not taken, the robot builds a new policy.
    other = LeRobotPolicyAdapter(make_smolvla(backbone, chunk_size=6, n_action_steps=3), stats())
    assert not adapter.load_weights_in_place(other.to_bytes())
    assert not adapter.load_weights_in_place(LeRobotPolicyAdapter(trained.network, stats(1.0)).to_bytes())
    assert adapter.version == 2
