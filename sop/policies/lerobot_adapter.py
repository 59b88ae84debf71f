"""A lerobot `PreTrainedPolicy` behind SOP's `Policy` interface, so a lerobot policy can be post-trained here.

The adapter keeps SOP's side of the contract (observation history filled at reset, action queue, counters,
checkpoint format) and hands everything lerobot-specific to lerobot itself:

- Processors: lerobot 0.6 normalizes, batches, tokenizes the instruction and moves data to the device in
  processor pipelines outside the model; the adapter builds them with `make_pre_post_processors` from the
  policy config and SOP's statistics (`lerobot_dataset_stats`) and runs every observation and training
  batch through them, so a VLA (SmolVLA, π0) gets exactly the tokens and normalization it would get in
  lerobot. (π0 / π0.5 go through the same path, but lerobot 0.6.1 fixes their tokenizer to the hub's
  `google/paligemma-3b-pt-224` and their sizes to gemma_300m / gemma_2b, so they cannot be built offline
  or small; SmolVLA's backbone is a config field, see `sop.policies.lerobot_offline`.)
  `register_third_party_plugins` runs before a policy type is looked up by name (as lerobot's own
  scripts do), so a `lerobot_policy_*` package's policy loads like a built-in one.
- Inputs: SOP's `state` feeds every STATE and ENV feature of the config (Meta-World's state vector holds
  both the arm and the objects), camera images feed VISUAL features as float [0, 1] (B, To, 3, H, W)
  frames, the instruction goes in as `task`.
- Chunks: `predict_action_chunk` when the policy has it, otherwise one `select_action` per chunk; SmolVLA
  samples through the adapter's own loop (below). Denoiser calls are counted with a forward hook on the
  denoiser's output module (`unet` for diffusion, `action_out_proj` for the flow-matching VLAs).
- SmolVLA's sampling: Euler integration of a velocity field from t = 1 (noise) to t = 0 along
  x_t = t * noise + (1 - t) * actions, run by the adapter through the model's own `embed_prefix` /
  `denoise_step`, for two reasons. lerobot's loop always starts at t = 1, and RTI's idea needs a start in
  between (`FlowWarmStart`: the previous chunk shifted by the executed steps, last action repeated, or
  after a hand-back the operator's last action held, is re-noised to x_t0 and integrated in a few steps
  from t0 to 0; the first chunk after a reset, a swap or a refused output is the full `num_steps` solve
  from noise). And lerobot 0.6.1's own `sample_actions` fails under transformers 5 (`_PrefixCache`).
  RTC guidance (`rtc_config`) is not applied on this path.
- Training: `compute_loss(batch)` builds lerobot's training batch from a window-sampler batch, runs the
  pre-processor and calls `policy.forward`; lerobot returns a batch mean, so per-sample weights must be
  uniform.

Checkpoint: the lerobot state dict as safetensors, the lerobot config as JSON (`draccus.encode`), rebuilt
through lerobot's config registry; SOP's statistics in the manifest. A VLA's backbone folder (config,
tokenizer, processor: small JSON files, see `sop.policies.lerobot_offline`) travels in the manifest too, so
no hub access is needed to rebuild it.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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
from sop.normalization import CONSTANT_DIMENSION_EPS, NormalizationStats
from sop.policies.base import ActionChunk, Observation, ObservationError, Policy
from sop.policies.samplers import shift_chunk

POLICY_TYPE: Final = "lerobot"
# lerobot policies whose sampler the adapter can start from a warm x_t (see the module docstring).
FLOW_WARM_START_TYPES: Final = ("smolvla",)


@dataclass(frozen=True)
class FlowWarmStart:
    """RTI for flow matching: re-noise the shifted previous chunk to `time` and integrate `steps` Euler steps.

    The default starts at t0 = 0.3 (30 % noise, where the velocity field still re-plans while the warm start
    carries the plan; RTI's diffusion default starts at sigma 0.33) with 3 velocity calls per chunk instead
    of the config's `num_steps` (10).
    """

    time: float = 0.3
    steps: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.time <= 1.0:
            raise ValueError(f"warm_start.time must be in (0, 1], got {self.time}")
        if self.steps < 1:
            raise ValueError(f"warm_start.steps must be >= 1, got {self.steps}")


def _feature_kind(feature: Any) -> str:
    kind = getattr(feature, "type", "")
    return str(getattr(kind, "value", kind))


@functools.cache
def register_lerobot_plugins() -> None:
    """Import installed `lerobot_policy_*` (etc.) packages once, so their types are known by name."""
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()


def lerobot_dataset_stats(stats: NormalizationStats, config: Any) -> dict[str, dict[str, Tensor]]:
    """SOP's statistics as lerobot's `dataset_stats`: `observation.state` for every STATE / ENV input, the
    action for the action. Dimensions SOP treats as constant (only centred) get a unit std and a unit
    half-range, so lerobot's normalizer maps them exactly as SOP's does instead of dividing by ~0."""

    def convert(key: str) -> dict[str, Tensor]:
        feature = stats[key]
        std = np.where(feature.std < CONSTANT_DIMENSION_EPS, 1.0, feature.std)
        centre = (feature.max + feature.min) / 2.0
        constant = (feature.max - feature.min) / 2.0 < CONSTANT_DIMENSION_EPS
        low = np.where(constant, centre - 1.0, feature.min)
        high = np.where(constant, centre + 1.0, feature.max)
        values = {"mean": feature.mean, "std": std, "min": low, "max": high}
        return {name: torch.as_tensor(value, dtype=torch.float32) for name, value in values.items()}

    result = {}
    for key, feature in config.input_features.items():
        if _feature_kind(feature) in ("STATE", "ENV") and STATE in stats.features:
            result[key] = convert(STATE)
    if ACTION in stats.features:
        for key in config.output_features:
            result[key] = convert(ACTION)
    return result


class _PrefixCache:
    """SmolVLA's KV cache with the `crop(length)` it was written for.

    lerobot 0.6.1's `denoise_step` restores the prefix after each velocity call with
    `past_key_values.crop(prefix_len)`, the pre-5 transformers meaning "keep the first prefix_len tokens";
    transformers 5 refuses a positive length (DynamicLayer.crop raises), so lerobot's own `sample_actions`
    fails with a KV cache. Everything else is the wrapped `DynamicCache`.
    """

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def crop(self, length: int) -> None:
        for layer in self._cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys.shape[-2] > length:
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]


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
        warm_start: FlowWarmStart | None = None,
    ) -> None:
        from lerobot.policies.factory import make_pre_post_processors

        config = policy.config
        observation_horizon = int(getattr(config, "n_obs_steps", 1))
        horizon = execution_horizon or int(getattr(config, "n_action_steps", 1))
        super().__init__(observation_horizon, horizon, version)
        self.parent_version = parent_version
        self.tasks = tuple(tasks)
        self.device = torch.device(device)
        config.device = str(self.device)
        self.network = policy.to(self.device).eval()
        self.lerobot_config = config
        self.stats = stats
        if warm_start is not None and (
            config.type not in FLOW_WARM_START_TYPES or getattr(config, "adapt_to_pi_aloha", False)
        ):
            raise ValueError(
                f"warm_start: the adapter warm-starts {list(FLOW_WARM_START_TYPES)} policies (without "
                f"adapt_to_pi_aloha), not {config.type!r}; pass warm_start=None"
            )
        self.warm_start = warm_start
        self._flow_matching = config.type in FLOW_WARM_START_TYPES and not getattr(
            config, "adapt_to_pi_aloha", False
        )
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            config, dataset_stats=lerobot_dataset_stats(stats, config)
        )
        if self._flow_matching and not getattr(config, "use_cache", True):
            raise ValueError("use_cache: SmolVLA's sampling loop needs its KV cache; set use_cache=true")
        self._state_keys = [
            k for k, f in config.input_features.items() if _feature_kind(f) in ("STATE", "ENV")
        ]
        self._image_keys = [
            k
            for k, f in config.input_features.items()
            if _feature_kind(f) == "VISUAL" and ".empty_camera_" not in k
        ]
        if not self._state_keys:
            raise ValueError(
                "the lerobot policy config has no STATE or ENV input feature to feed 'state' into"
            )
        # lerobot's diffusion policy stacks observation steps even when there is one; others take (B, D).
        self._stack_steps = observation_horizon > 1 or getattr(config, "type", "") == "diffusion"
        self._denoiser_calls = 0
        self._denoiser_hook = self._hook_denoiser()

    def _hook_denoiser(self) -> Any:
        for name, module in self.network.named_modules():
            if name.split(".")[-1] in ("unet", "action_out_proj"):
                return module.register_forward_hook(self._count_denoiser_call)
        return None

    def _count_denoiser_call(self, *_: Any) -> None:
        self._denoiser_calls += 1

    @property
    def prediction_horizon(self) -> int:
        """Tp: the actions one chunk spans (what the window sampler must deliver for training)."""
        config = self.lerobot_config
        for name in ("horizon", "chunk_size", "n_action_steps"):
            if isinstance(getattr(config, name, None), int):
                return int(getattr(config, name))
        return 1

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(key.removeprefix(IMAGE_PREFIX) for key in self._image_keys)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.network.reset()

    def reseed(self, seed: int) -> None:
        # lerobot samples its initial noise from torch's global generator.
        torch.manual_seed(seed)

    # ---- batches -----------------------------------------------------------------------------------------

    def _raw_batch(
        self, states: Tensor, frames: Mapping[str, Tensor], tasks: Sequence[str]
    ) -> dict[str, Any]:
        """states (B, To, D) in environment units, camera -> uint8 (B, To, H, W, 3) frames -> the batch
        lerobot's pre-processor takes (un-normalized; float [0, 1] (B, [To,] 3, H, W) images)."""
        batch: dict[str, Any] = {
            key: states if self._stack_steps else states[:, -1] for key in self._state_keys
        }
        for key in self._image_keys:
            camera = key.removeprefix(IMAGE_PREFIX)
            images = frames[camera].permute(0, 1, 4, 2, 3).float() / 255.0
            batch[key] = images if self._stack_steps else images[:, -1]
        batch["task"] = list(tasks)
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
        if warm_start is not None and self.warm_start is None:
            raise ValueError(
                "this lerobot policy starts every chunk from scratch (no FlowWarmStart); pass warm_start=None"
            )
        history = self._as_history(observation)
        states = torch.as_tensor(
            np.stack([np.asarray(o["state"], dtype=np.float32) for o in history])[None], device=self.device
        )
        instruction = str(history[-1].get("instruction", history[-1].get("task", "")))
        batch = self.preprocessor(self._raw_batch(states, self._observation_frames(history), [instruction]))
        self._denoiser_calls = 0
        if self._flow_matching:
            guess = None if warm_start is None else warm_start.to(self.device)
            normalized = self._sample_flow(batch, guess)
        else:
            try:
                normalized = self.network.predict_action_chunk(batch)
            except NotImplementedError:
                normalized = self.network.select_action(batch)[:, None]
        actions = self.postprocessor(normalized)
        return ActionChunk(
            actions=actions[0].float().cpu().numpy().astype(np.float32),
            trajectory=normalized[0].float().clone() if self.warm_start is not None else None,
            denoiser_calls=self._denoiser_calls,
            warm_started=warm_start is not None,
        )

    def _sample_flow(self, batch: Mapping[str, Any], guess: Tensor | None) -> Tensor:
        """SmolVLA's Euler loop, run here: from noise at t = 1 in `num_steps` (what lerobot's
        `sample_actions` does), or from the guess (T, A) re-noised to t0 in `warm_start.steps`."""
        from lerobot.policies.common.vla_utils import make_att_2d_masks
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        policy = self.network
        model = policy.model
        config = self.lerobot_config
        images, image_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        prefix, prefix_pad, prefix_att = model.embed_prefix(
            images, image_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state
        )
        _, cache = model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(prefix_pad, prefix_att),
            position_ids=torch.cumsum(prefix_pad, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[prefix, None],
            use_cache=True,
        )
        cache = _PrefixCache(cache)
        shape = (state.shape[0], config.chunk_size, config.max_action_dim)
        noise = model.sample_noise(shape, self.device)
        if guess is None:
            start, steps, x_t = 1.0, int(config.num_steps), noise
        else:
            assert self.warm_start is not None
            start, steps = self.warm_start.time, self.warm_start.steps
            padded = torch.nn.functional.pad(guess.float(), (0, config.max_action_dim - guess.shape[-1]))
            x_t = start * noise + (1.0 - start) * padded.expand(shape)
        times = torch.linspace(start, 0.0, steps + 1, device=self.device)
        for now, following in itertools.pairwise(times):
            velocity = model.denoise_step(
                prefix_pad_masks=prefix_pad,
                past_key_values=cache,
                x_t=x_t,
                timestep=now.expand(shape[0]),
            )
            x_t = x_t + (following - now) * velocity
        out: Tensor = x_t[:, :, : config.action_feature.shape[0]]
        return out

    def _warm_start_from_actions(self, executed: np.ndarray) -> Tensor | None:
        """After a hand-back: the last executed action held for the whole chunk, in the network's space
        (SmolVLA's chunk starts at the current step), refined by the warm start's few steps."""
        if self.warm_start is None or executed.shape[-1] != self.lerobot_config.action_feature.shape[0]:
            return None
        action_key = next(iter(self.lerobot_config.output_features))
        stats = lerobot_dataset_stats(self.stats, self.lerobot_config)[action_key]
        last = torch.as_tensor(executed[-1], dtype=torch.float32)
        mode = str(getattr(self.lerobot_config.normalization_mapping.get("ACTION"), "value", "IDENTITY"))
        if mode == "MEAN_STD":
            last = (last - stats["mean"]) / (stats["std"] + 1e-8)
        elif mode == "MIN_MAX":
            last = 2.0 * (last - stats["min"]) / (stats["max"] - stats["min"] + 1e-8) - 1.0
        return last.expand(self.prediction_horizon, -1).clone().to(self.device)

    def _next_warm_start(self) -> Tensor | None:
        if self.warm_start is None or self._last_chunk is None or self._last_chunk.trajectory is None:
            return None
        return shift_chunk(self._last_chunk.trajectory, self._executed_from_last_chunk)

    # ---- training ----------------------------------------------------------------------------------------

    def compute_loss(self, batch: Mapping[str, Any], mask_padding: bool = False) -> Tensor:
        """lerobot's own loss on a window-sampler batch; steps marked in `action_is_pad` are left out of
        the loss when `mask_padding` (how HG-DAgger masks the policy-driven steps)."""
        weights = batch.get("weight")
        if weights is not None:
            values = torch.as_tensor(weights).detach().cpu().float().reshape(-1)
            if not torch.allclose(values, values[0].expand_as(values)):
                raise ValueError(
                    "weight: lerobot policies return a batch-mean loss; use uniform weights (sample mode)"
                )
        states = torch.as_tensor(np.asarray(batch[STATE]), dtype=torch.float32, device=self.device)
        actions = torch.as_tensor(np.asarray(batch[ACTION]), dtype=torch.float32, device=self.device)
        frames = {
            key.removeprefix(IMAGE_PREFIX): torch.as_tensor(np.asarray(batch[key]), device=self.device)
            for key in self._image_keys
        }
        tasks = list(batch.get("instruction") or batch.get("task") or [""] * len(states))
        raw = self._raw_batch(states, frames, [str(t) for t in tasks])
        raw[ACTION] = actions
        is_pad = torch.as_tensor(np.asarray(batch["action_is_pad"]), dtype=torch.bool, device=self.device)
        raw["action_is_pad"] = is_pad if mask_padding else torch.zeros_like(is_pad)
        loss, _ = self.network.forward(self.preprocessor(raw))
        out: Tensor = loss
        return out

    def with_weights(
        self, state_dict: Mapping[str, Tensor], version: int | None = None
    ) -> LeRobotPolicyAdapter:
        """A new adapter around a copy of the lerobot policy holding the given weights (e.g. the EMA)."""
        # Without the counting hook: a deep copy of it would copy this whole adapter along.
        if self._denoiser_hook is not None:
            self._denoiser_hook.remove()
        try:
            network = copy.deepcopy(self.network)
        finally:
            self._denoiser_hook = self._hook_denoiser()
        network.load_state_dict(dict(state_dict))
        return LeRobotPolicyAdapter(
            network,
            self.stats,
            self.version if version is None else version,
            self.parent_version,
            self.device,
            self.execution_horizon,
            self.tasks,
            self.warm_start,
        )

    # ---- checkpoints -------------------------------------------------------------------------------------

    def to_checkpoint(self, version: int | None = None, parent_version: int | None = None) -> Checkpoint:
        return build_checkpoint(
            self.network.state_dict(),
            policy_type=POLICY_TYPE,
            version=self.version if version is None else version,
            parent_version=self.parent_version if parent_version is None else parent_version,
            policy_config=self._policy_config(),
            normalization=self.stats.to_dict(),
        )

    def _policy_config(self) -> dict[str, Any]:
        import draccus

        from sop.policies.lerobot_offline import vlm_folder_files

        config = self.lerobot_config
        action = next(iter(config.output_features.values()))
        policy_config: dict[str, Any] = {
            "lerobot_type": config.type,
            "lerobot_config": draccus.encode(config),
            "execution_horizon": self.execution_horizon,
            "tasks": list(self.tasks),
            "warm_start": None if self.warm_start is None else asdict(self.warm_start),
            # The served-policy features (sop/policy_features.py) the learner checks episodes against.
            "state_dim": int(config.input_features[self._state_keys[0]].shape[-1]),
            "action_dim": int(action.shape[-1]),
            "cameras": list(self.cameras),
        }
        backbone = getattr(config, "vlm_model_name", None)
        if isinstance(backbone, str) and Path(backbone).is_dir():
            policy_config["vlm_files"] = vlm_folder_files(backbone)
        return policy_config

    def load_weights_in_place(self, blob: bytes, expected_sha256: str | None = None) -> bool:
        """`Policy.load_weights_in_place`: the same lerobot config (but for where the backbone folder and the
        device are), statistics and tensor shapes are required; rebuilding a VLA means reading its
        tokenizer and processors again, which a robot swapping every few seconds does not need."""
        checkpoint = checkpoint_from_bytes(blob, expected_sha256)
        manifest = checkpoint.manifest
        if manifest.policy_type != POLICY_TYPE:
            return False

        def comparable(values: Mapping[str, Any]) -> dict[str, Any]:
            encoded = dict(values.get("lerobot_config") or {})
            for key in ("vlm_model_name", "device"):
                encoded.pop(key, None)
            return {**values, "lerobot_config": encoded}

        if comparable(manifest.policy_config) != comparable(self._policy_config()):
            return False
        if manifest.normalization != self.stats.to_dict():
            return False
        return self._take_weights(self.network, checkpoint)

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

        from sop.policies.lerobot_offline import materialize_vlm_folder

        manifest = checkpoint.manifest
        if manifest.policy_type != POLICY_TYPE:
            raise CheckpointError(f"policy_type is {manifest.policy_type!r}, expected {POLICY_TYPE!r}")
        values = manifest.policy_config
        register_lerobot_plugins()
        try:
            kind = str(values["lerobot_type"])
            config_class = PreTrainedConfig.get_choice_class(kind)
            config = draccus.decode(config_class, values["lerobot_config"])
            if values.get("vlm_files"):
                # The backbone's architecture and tokenizer come with the checkpoint; its weights are in
                # the tensors, so nothing is downloaded.
                config.vlm_model_name = str(materialize_vlm_folder(values["vlm_files"]))
                config.load_vlm_weights = False
            policy = get_policy_class(kind)(config)
            warm = values.get("warm_start")
            warm_start = FlowWarmStart(**warm) if isinstance(warm, dict) else None
        except (KeyError, ValueError, TypeError, OSError, draccus.utils.DraccusException) as exc:
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
            warm_start,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LeRobotPolicyAdapter:
        return cls.from_checkpoint(load_checkpoint(path), device)

    @classmethod
    def from_bytes(
        cls, blob: bytes, expected_sha256: str | None = None, device: str | torch.device = "cpu"
    ) -> LeRobotPolicyAdapter:
        return cls.from_checkpoint(checkpoint_from_bytes(blob, expected_sha256), device)
