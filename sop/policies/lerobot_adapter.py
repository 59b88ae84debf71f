"""A lerobot `PreTrainedPolicy` behind SOP's `Policy` interface, so a lerobot policy can be post-trained here.

The adapter keeps SOP's side of the contract (observation history filled at reset, action queue, counters,
checkpoint format) and hands lerobot what it expects:

- Normalization: lerobot 0.6 normalizes in processor pipelines outside the model; the adapter normalizes
  with SOP's statistics instead, following the policy config's `normalization_mapping` (MIN_MAX, MEAN_STD,
  IDENTITY) for STATE/ENV inputs and the action.
- Inputs: SOP's `state` feeds every STATE and ENV feature of the config (Meta-World's state vector holds
  both the arm and the objects; lerobot's diffusion policy wants an image or an ENV input besides STATE),
  camera images feed VISUAL features as float [0, 1] (B, To, 3, H, W) frames, the instruction goes in as
  `task` for language-conditioned policies.
- Chunks: `predict_action_chunk` when the policy has it (diffusion, ACT, pi0, ...), otherwise one
  `select_action` per chunk. Denoiser calls are counted with a forward hook on the policy's `unet` module
  (lerobot's diffusion); for other policies they read 0.
- Training: `compute_loss(batch)` builds lerobot's training batch from a window-sampler batch and calls
  `policy.forward`; lerobot returns a batch mean, so per-sample weights must be uniform.

Checkpoint: the lerobot state dict as safetensors, the lerobot config as JSON (`draccus.encode`), rebuilt
through lerobot's config registry (`PreTrainedConfig.get_choice_class(type)`). No hub access.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor

from sop.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    load_checkpoint,
    save_checkpoint,
)
from sop.episode import ACTION, IMAGE_PREFIX, STATE
from sop.normalization import NormalizationMode, NormalizationStats, Normalizer
from sop.policies.base import ActionChunk, Observation, ObservationError, Policy

POLICY_TYPE: Final = "lerobot"
_MODES: Final = {"MIN_MAX": NormalizationMode.MIN_MAX, "MEAN_STD": NormalizationMode.MEAN_STD}


def _feature_kind(feature: Any) -> str:
    kind = getattr(feature, "type", "")
    return str(getattr(kind, "value", kind))


class LeRobotPolicyAdapter(Policy):
    policy_type = POLICY_TYPE

    def __init__(
        self,
        policy: Any,
        stats: NormalizationStats,
        version: int = 0,
        parent_version: int | None = None,
        device: str | torch.device = "cpu",
        execution_horizon: int | None = None,
        tasks: Sequence[str] = (),
    ) -> None:
        config = policy.config
        observation_horizon = int(getattr(config, "n_obs_steps", 1))
        horizon = execution_horizon or int(getattr(config, "n_action_steps", 1))
        super().__init__(observation_horizon, horizon, version)
        self.parent_version = parent_version
        self.tasks = tuple(tasks)
        self.device = torch.device(device)
        self.network = policy.to(self.device).eval()
        self.lerobot_config = config
        self.stats = stats
        mapping = {
            str(getattr(k, "value", k)): str(getattr(v, "value", v))
            for k, v in config.normalization_mapping.items()
        }
        self.normalizer = Normalizer(
            stats,
            {
                STATE: _MODES.get(mapping.get("STATE", "IDENTITY"), NormalizationMode.IDENTITY),
                ACTION: _MODES.get(mapping.get("ACTION", "IDENTITY"), NormalizationMode.IDENTITY),
            },
        ).to(self.device)
        self._state_keys = [
            k for k, f in config.input_features.items() if _feature_kind(f) in ("STATE", "ENV")
        ]
        self._image_keys = [k for k, f in config.input_features.items() if _feature_kind(f) == "VISUAL"]
        if not self._state_keys:
            raise ValueError(
                "the lerobot policy config has no STATE or ENV input feature to feed 'state' into"
            )
        # lerobot's diffusion policy stacks observation steps even when there is one; others take (B, D).
        self._stack_steps = observation_horizon > 1 or getattr(config, "type", "") == "diffusion"
        self._denoiser_calls = 0
        for name, module in self.network.named_modules():
            if name.split(".")[-1] == "unet":
                module.register_forward_hook(self._count_denoiser_call)
                break

    def _count_denoiser_call(self, *_: Any) -> None:
        self._denoiser_calls += 1

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.network.reset()

    def reseed(self, seed: int) -> None:
        # lerobot samples its initial noise from torch's global generator.
        torch.manual_seed(seed)

    # ---- batches -----------------------------------------------------------------------------------------

    def _state_batch(self, states: Tensor) -> dict[str, Tensor]:
        """states (B, To, D) in environment units -> lerobot's STATE/ENV inputs, normalized."""
        normalized = self.normalizer.normalize(STATE, states)
        value = normalized if self._stack_steps else normalized[:, -1]
        return {key: value for key in self._state_keys}

    def _image_batch(self, frames: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """camera -> uint8 (B, To, H, W, 3) -> lerobot VISUAL inputs, float [0, 1] (B, To, 3, H, W)."""
        batch = {}
        for key in self._image_keys:
            camera = key.removeprefix(IMAGE_PREFIX)
            images = frames[camera].permute(0, 1, 4, 2, 3).float() / 255.0
            batch[key] = images if self._stack_steps else images[:, -1]
        return batch

    def _observation_frames(self, history: list[Observation]) -> dict[str, Tensor]:
        frames = {}
        for key in self._image_keys:
            camera = key.removeprefix(IMAGE_PREFIX)
            stack = []
            for observation in history:
                if "images" in observation and camera in observation["images"]:
                    stack.append(observation["images"][camera])
                elif "image" in observation and len(self._image_keys) == 1:
                    stack.append(observation["image"])
                else:
                    raise ObservationError(f"observation has no image for camera {camera!r}")
            frames[camera] = torch.as_tensor(np.stack(stack)[None], device=self.device)
        return frames

    # ---- inference ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_chunk(
        self, observation: Observation | Sequence[Observation], warm_start: Tensor | None = None
    ) -> ActionChunk:
        if warm_start is not None:
            raise ValueError("lerobot policies start every chunk from scratch; pass warm_start=None")
        history = self._as_history(observation)
        states = torch.as_tensor(
            np.stack([np.asarray(o["state"], dtype=np.float32) for o in history])[None], device=self.device
        )
        batch: dict[str, Any] = self._state_batch(states)
        batch.update(self._image_batch(self._observation_frames(history)))
        batch["task"] = [str(history[-1].get("instruction", history[-1].get("task", "")))]
        self._denoiser_calls = 0
        try:
            actions = self.network.predict_action_chunk(batch)
        except NotImplementedError:
            actions = self.network.select_action(batch)[:, None]
        actions = self.normalizer.unnormalize(ACTION, actions[0].float())
        return ActionChunk(
            actions=actions.cpu().numpy().astype(np.float32),
            trajectory=None,
            denoiser_calls=self._denoiser_calls,
            warm_started=False,
        )

    # ---- training ----------------------------------------------------------------------------------------

    def compute_loss(self, batch: Mapping[str, Any], mask_padding: bool = False) -> Tensor:
        """lerobot's own loss on a window-sampler batch (`mask_padding` follows the lerobot config)."""
        weights = batch.get("weight")
        if weights is not None and not np.allclose(np.asarray(weights), np.asarray(weights).reshape(-1)[0]):
            raise ValueError(
                "weight: lerobot policies return a batch-mean loss; use uniform weights (sample mode)"
            )
        states = torch.as_tensor(np.asarray(batch[STATE]), dtype=torch.float32, device=self.device)
        actions = torch.as_tensor(np.asarray(batch[ACTION]), dtype=torch.float32, device=self.device)
        lerobot_batch: dict[str, Any] = self._state_batch(states)
        frames = {
            key.removeprefix(IMAGE_PREFIX): torch.as_tensor(np.asarray(batch[key]), device=self.device)
            for key in self._image_keys
        }
        lerobot_batch.update(self._image_batch(frames))
        lerobot_batch[ACTION] = self.normalizer.normalize(ACTION, actions)
        lerobot_batch["action_is_pad"] = torch.as_tensor(
            np.asarray(batch["action_is_pad"]), device=self.device
        )
        lerobot_batch["task"] = list(batch.get("instruction") or [])
        loss, _ = self.network.forward(lerobot_batch)
        out: Tensor = loss
        return out

    def with_weights(
        self, state_dict: Mapping[str, Tensor], version: int | None = None
    ) -> LeRobotPolicyAdapter:
        """A new adapter around a copy of the lerobot policy holding the given weights (e.g. the EMA)."""
        network = copy.deepcopy(self.network)
        network.load_state_dict(dict(state_dict))
        return LeRobotPolicyAdapter(
            network,
            self.stats,
            self.version if version is None else version,
            self.parent_version,
            self.device,
            self.execution_horizon,
            self.tasks,
        )

    # ---- checkpoints -------------------------------------------------------------------------------------

    def to_checkpoint(self, version: int | None = None, parent_version: int | None = None) -> Checkpoint:
        import draccus

        return build_checkpoint(
            self.network.state_dict(),
            policy_type=POLICY_TYPE,
            version=self.version if version is None else version,
            parent_version=self.parent_version if parent_version is None else parent_version,
            policy_config={
                "lerobot_type": self.lerobot_config.type,
                "lerobot_config": draccus.encode(self.lerobot_config),
                "execution_horizon": self.execution_horizon,
                "tasks": list(self.tasks),
            },
            normalization=self.stats.to_dict(),
        )

    def save(self, path: str | Path, version: int | None = None, parent_version: int | None = None) -> Path:
        return save_checkpoint(self.to_checkpoint(version, parent_version), path)

    def to_bytes(self, version: int | None = None, parent_version: int | None = None) -> bytes:
        return checkpoint_to_bytes(self.to_checkpoint(version, parent_version))

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: str | torch.device = "cpu"
    ) -> LeRobotPolicyAdapter:
        import draccus
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        manifest = checkpoint.manifest
        if manifest.policy_type != POLICY_TYPE:
            raise CheckpointError(f"policy_type is {manifest.policy_type!r}, expected {POLICY_TYPE!r}")
        values = manifest.policy_config
        try:
            kind = str(values["lerobot_type"])
            config_class = PreTrainedConfig.get_choice_class(kind)
            config = draccus.decode(config_class, values["lerobot_config"])
            policy = get_policy_class(kind)(config)
        except (KeyError, ValueError, TypeError, draccus.utils.DraccusException) as exc:
            raise CheckpointError(f"policy_config: cannot rebuild the lerobot policy ({exc})") from None
        missing, unexpected = policy.load_state_dict(checkpoint.tensors, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"weights do not fit the lerobot config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return cls(
            policy,
            NormalizationStats.from_dict(manifest.normalization),
            manifest.version,
            manifest.parent_version,
            device,
            values.get("execution_horizon"),
            values.get("tasks", ()),
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LeRobotPolicyAdapter:
        return cls.from_checkpoint(load_checkpoint(path), device)

    @classmethod
    def from_bytes(
        cls, blob: bytes, expected_sha256: str | None = None, device: str | torch.device = "cpu"
    ) -> LeRobotPolicyAdapter:
        return cls.from_checkpoint(checkpoint_from_bytes(blob, expected_sha256), device)
