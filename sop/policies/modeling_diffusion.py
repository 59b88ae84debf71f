"""The diffusion policy: one multi-task, instruction-conditioned network behind the `Policy` interface.

`DiffusionNetwork` holds the weights (observation encoder + 1-D U-Net); `DiffusionPolicy` adds what turns
weights into behaviour: normalization statistics, the sampler (DDPM / DDIM / RTI), the warm start, and the
checkpoint round trip. Training goes through `compute_loss(batch)` so the offline BC trainer and the cloud
learner share one loss (per-sample weights included: HG-DAgger and RECAP weight frames differently).

RECAP's advantage conditioning (`config.advantage_conditioning`) is one more term of the FiLM condition: a
learned embedding of the "good action" indicator (`ADVANTAGE_UNKNOWN` / `ADVANTAGE_NEGATIVE` /
`ADVANTAGE_POSITIVE`) added to the observation features. It starts at zero, so a policy converted from an
unconditioned base (`with_advantage_conditioning`) first predicts exactly what the base did. At inference a
conditioned policy asks for "good"; with `guidance_beta` != 1 the denoiser the samplers call is the
classifier-free-guided one, eps_unknown + beta (eps_good - eps_unknown), both halves in one batched U-Net
pass, so DDPM, DDIM and RTI's warm-started steps all sample the guided model. Without the flag the network has
no embedding and every code path is the plain policy's.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sop.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    load_checkpoint,
    save_checkpoint,
)
from sop.config import ConfigError, config_from_dict, config_to_dict
from sop.episode import ACTION, IMAGE_PREFIX, STATE
from sop.normalization import NormalizationError, NormalizationMode, NormalizationStats, Normalizer
from sop.policies.base import ActionChunk, Observation, ObservationError, Policy
from sop.policies.conditional_unet1d import ConditionalUnet1d
from sop.policies.configuration_diffusion import (
    DiffusionPolicyConfig,
    GripperMode,
    InstructionEncoderKind,
    RTISamplerConfig,
    SamplerConfig,
)
from sop.policies.gripper_levels import levels_by_task
from sop.policies.instruction_encoder import shared_sentence_encoder
from sop.policies.observation_encoders import ObservationEncoder, global_condition_dim
from sop.policies.samplers import make_ddpm_scheduler, make_sampler, rti_warm_start, snap_gripper

POLICY_TYPE = "diffusion"

# The batch key holding each sample's indicator index (B,) int, read by a conditioned policy's compute_loss.
ADVANTAGE_CONDITION: Final = "advantage_condition"
# Indicator indices: "unknown" is the dropped (classifier-free) value and the unconditional half of guidance.
ADVANTAGE_UNKNOWN: Final = 0
ADVANTAGE_NEGATIVE: Final = 1
ADVANTAGE_POSITIVE: Final = 2

log = logging.getLogger(__name__)


class DiffusionNetwork(nn.Module):
    """All trainable weights: observations -> FiLM condition, (noisy chunk, timestep, condition) -> noise."""

    def __init__(self, config: DiffusionPolicyConfig) -> None:
        super().__init__()
        self.observations = ObservationEncoder(config)
        self.unet = ConditionalUnet1d(
            action_dim=config.action_dim,
            global_cond_dim=global_condition_dim(config),
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            num_groups=config.num_groups,
            timestep_embed_dim=config.timestep_embed_dim,
        )
        if config.advantage_conditioning:
            # Zero at first: conditioning adds nothing until training tells "good" from "not good" apart.
            self.advantage = nn.Embedding(3, global_condition_dim(config))
            nn.init.zeros_(self.advantage.weight)


def advantage_condition(
    positive: np.ndarray | Sequence[bool], dropout: float, generator: np.random.Generator
) -> np.ndarray:
    """(B,) int64 indicator indices for training: positive -> ADVANTAGE_POSITIVE, else ADVANTAGE_NEGATIVE,
    each replaced by ADVANTAGE_UNKNOWN with probability `dropout` (what teaches the unconditional model that
    classifier-free guidance needs)."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    flags = np.asarray(positive, dtype=bool)
    indices = np.where(flags, ADVANTAGE_POSITIVE, ADVANTAGE_NEGATIVE).astype(np.int64)
    indices[generator.random(flags.shape) < dropout] = ADVANTAGE_UNKNOWN
    return indices


def instruction_input(
    config: DiffusionPolicyConfig, tasks: Sequence[str], instructions: Sequence[str], device: torch.device
) -> Tensor:
    """What `InstructionConditioner` reads: task indices ('task') or frozen sentence embeddings ('sentence');
    shared by the policy and the value model (`sop.values`) so both condition on the instruction alike."""
    if config.instruction_encoder is InstructionEncoderKind.TASK:
        indices = []
        for task in tasks:
            if task not in config.tasks:
                raise ObservationError(f"task {task!r} is not one this policy knows ({list(config.tasks)})")
            indices.append(config.tasks.index(task))
        return torch.as_tensor(indices, dtype=torch.long, device=device)
    return shared_sentence_encoder().embed(instructions, device)


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


class DiffusionPolicy(Policy):
    policy_type = POLICY_TYPE

    def __init__(
        self,
        config: DiffusionPolicyConfig,
        stats: NormalizationStats,
        sampler: SamplerConfig | None = None,
        version: int = 0,
        parent_version: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        sampler = sampler or RTISamplerConfig()
        super().__init__(config.observation_horizon, config.execution_horizon, version)
        if config.instruction_encoder is InstructionEncoderKind.TASK and not config.tasks:
            raise ValueError("tasks must list the task ids when instruction_encoder is 'task'")
        self.config = config
        self.tasks = config.tasks
        self.parent_version = parent_version
        for key, dim in ((STATE, config.state_dim), (ACTION, config.action_dim)):
            if stats[key].dim != dim:
                raise NormalizationError(
                    f"{key} statistics have {stats[key].dim} dimensions, the config says {dim}"
                )
        self.stats = stats
        self.device = torch.device(device)
        self.network = DiffusionNetwork(config).to(self.device)
        self.normalizer = Normalizer(
            stats,
            {STATE: NormalizationMode(config.state_normalization.value), ACTION: NormalizationMode.MIN_MAX},
        ).to(self.device)
        self.noise_scheduler = make_ddpm_scheduler(config)
        if config.instruction_encoder is InstructionEncoderKind.SENTENCE:
            shared_sentence_encoder()  # fail now, with a clear message, rather than on the first action
        self._gripper_levels = levels_by_task(config.gripper_levels)
        self._traced_unets: dict[tuple[Any, ...], Callable[..., Tensor]] = {}
        self._last_task = ""
        self.generator = torch.Generator(device="cpu")
        self.set_sampler(sampler)

    # ---- configuration -----------------------------------------------------------------------------------

    def set_sampler(self, sampler: SamplerConfig) -> None:
        """Switch how chunks are drawn (same weights); the next chunk is a full solve."""
        horizon = sampler.resolved_execution_horizon(self.config.execution_horizon)
        if self.config.observation_horizon - 1 + horizon > self.config.prediction_horizon:
            raise ValueError(
                f"execution_horizon {horizon} does not fit prediction_horizon {self.config.prediction_horizon} "
                f"with observation_horizon {self.config.observation_horizon}"
            )
        self.sampler_config = sampler
        self.sampler = make_sampler(self.config, sampler)
        self.execution_horizon = horizon
        self.generator.manual_seed(sampler.seed)
        self.invalidate_warm_start()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _inference_unet(self, sample: Tensor, timesteps: Tensor, cond: Tensor) -> Callable[..., Tensor]:
        """The U-Net for sampling: traced once per input shape (TorchScript), the eager module if that fails.

        The denoiser is small, so on a CPU its Python module calls cost as much as its arithmetic: the traced
        graph halves a call (1.8 -> 0.95 ms here), which is most of an RTI step. The trace shares the
        module's parameters, so weights loaded or updated in place are what it computes with.
        """
        key = (str(sample.device), tuple(sample.shape), tuple(cond.shape))
        unet = self._traced_unets.get(key)
        if unet is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings about Python values: shapes are fixed
                    unet = torch.jit.trace(self.network.unet, (sample, timesteps, cond), check_trace=False)
            except Exception as exc:  # tracing is an optimisation: sample with the eager module instead
                log.warning(
                    "sampling with the eager U-Net: tracing it failed (%s: %s)", type(exc).__name__, exc
                )
                unet = self.network.unet
            self._traced_unets[key] = unet
        return unet

    def to(self, device: str | torch.device) -> DiffusionPolicy:
        self._traced_unets.clear()
        self.device = torch.device(device)
        self.network.to(self.device)
        self.normalizer.to(self.device)
        return self

    # ---- spaces ------------------------------------------------------------------------------------------

    def _scale_gripper(self, actions: Tensor, inverse: bool) -> Tensor:
        if self.config.gripper_mode is not GripperMode.SCALE or self.config.gripper_index is None:
            return actions
        factor = self.config.gripper_factor if inverse else 1.0 / self.config.gripper_factor
        scaled = actions.clone()
        scaled[..., self.config.gripper_index] *= factor
        return scaled

    def actions_to_model(self, actions: Tensor) -> Tensor:
        """Environment units -> the space the sampler works in ([-1, 1], gripper scaled in "scale" mode)."""
        return self._scale_gripper(self.normalizer.normalize(ACTION, actions), inverse=False)

    def actions_from_model(self, trajectory: Tensor) -> Tensor:
        return self.normalizer.unnormalize(ACTION, self._scale_gripper(trajectory, inverse=True))

    def _instruction_input(self, tasks: Sequence[str], instructions: Sequence[str]) -> Tensor:
        return instruction_input(self.config, tasks, instructions, self.device)

    def _condition(
        self,
        state: Tensor,
        images: dict[str, Tensor],
        tasks: Sequence[str],
        instructions: Sequence[str],
        advantage: Tensor | None = None,
    ) -> Tensor:
        """The FiLM condition; `advantage` (B,) indicator indices for a conditioned policy (None: unknown)."""
        normalized = self.normalizer.normalize(STATE, state)
        cond: Tensor = self.network.observations(
            normalized, images, self._instruction_input(tasks, instructions)
        )
        if self.config.advantage_conditioning:
            if advantage is None:
                advantage = torch.full(
                    (cond.shape[0],), ADVANTAGE_UNKNOWN, dtype=torch.long, device=self.device
                )
            cond = cond + self.network.advantage(advantage)
        elif advantage is not None:
            raise ValueError(
                f"the batch carries {ADVANTAGE_CONDITION!r} but this policy was built without "
                "advantage_conditioning (convert it with with_advantage_conditioning)"
            )
        return cond

    # ---- training ----------------------------------------------------------------------------------------

    def compute_loss(self, batch: Mapping[str, Any], mask_padding: bool = False) -> Tensor:
        """Weighted epsilon-prediction loss on a window batch (numpy or torch values).

        batch: "observation.state" (B, To, D), "action" (B, Tp, A), "task" / "instruction" list[str],
        optional "weight" (B,) per-sample weights, "action_is_pad" (B, Tp), "observation.images.<cam>",
        and for a conditioned policy ADVANTAGE_CONDITION (B,) indicator indices (absent: all unknown).
        Padded actions (copies of the episode's last action) are trained on unless `mask_padding`, as in
        Diffusion Policy, which teaches the policy to hold still once a task is done.
        """
        state = _as_tensor(batch[STATE], torch.float32, self.device)
        actions = _as_tensor(batch[ACTION], torch.float32, self.device)
        batch_size = state.shape[0]
        to, tp = self.config.observation_horizon, self.config.prediction_horizon
        if state.ndim != 3 or state.shape[1] != to or state.shape[2] != self.config.state_dim:
            raise ValueError(
                f"{STATE} has shape {tuple(state.shape)}, expected (B, {to}, {self.config.state_dim})"
            )
        if actions.shape != (batch_size, tp, self.config.action_dim):
            raise ValueError(
                f"{ACTION} has shape {tuple(actions.shape)}, expected ({batch_size}, {tp}, {self.config.action_dim})"
            )
        images = {
            camera: _as_tensor(batch[IMAGE_PREFIX + camera], torch.uint8, self.device)
            for camera in self.config.cameras
        }
        tasks = list(batch.get("task") or [""] * batch_size)
        instructions = list(batch.get("instruction") or tasks)
        advantage = batch.get(ADVANTAGE_CONDITION)
        cond = self._condition(
            state,
            images,
            tasks,
            instructions,
            None if advantage is None else _as_tensor(advantage, torch.long, self.device),
        )

        trajectory = self.actions_to_model(actions)
        noise = torch.randn_like(trajectory)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (batch_size,), device=self.device)
        noisy = self.noise_scheduler.add_noise(trajectory, noise, cast(torch.IntTensor, timesteps))
        prediction = self.network.unet(noisy, timesteps, cond)
        per_element = F.mse_loss(prediction, noise, reduction="none")
        if mask_padding and "action_is_pad" in batch:
            valid = ~_as_tensor(batch["action_is_pad"], torch.bool, self.device)
            per_sample = (per_element * valid[..., None]).sum((1, 2)) / (
                valid.sum(1) * per_element.shape[-1]
            ).clamp_min(1)
        else:
            per_sample = per_element.mean(dim=(1, 2))
        if "weight" in batch and batch["weight"] is not None:
            weights = _as_tensor(batch["weight"], torch.float32, self.device)
            return (per_sample * weights).sum() / weights.sum().clamp_min(1e-8)
        return per_sample.mean()

    # ---- inference ---------------------------------------------------------------------------------------

    def _check_observation(self, observation: Observation) -> None:
        super()._check_observation(observation)
        state = observation["state"]
        shape = np.shape(state)
        if shape != (self.config.state_dim,):
            raise ObservationError(
                f"observation 'state' has shape {shape}, expected ({self.config.state_dim},)"
            )

    def _observation_images(self, history: list[Observation]) -> dict[str, Tensor]:
        images = {}
        for camera in self.config.cameras:
            frames = []
            for observation in history:
                if "images" in observation and camera in observation["images"]:
                    frames.append(observation["images"][camera])
                elif "image" in observation and len(self.config.cameras) == 1:
                    frames.append(observation["image"])
                else:
                    raise ObservationError(f"observation has no image for camera {camera!r}")
            images[camera] = torch.as_tensor(np.stack(frames)[None], dtype=torch.uint8, device=self.device)
        return images

    @torch.inference_mode()
    def predict_chunk(
        self, observation: Observation | Sequence[Observation], warm_start: Tensor | None = None
    ) -> ActionChunk:
        history = self._as_history(observation)
        state = torch.as_tensor(
            np.stack([np.asarray(o["state"], dtype=np.float32) for o in history])[None], device=self.device
        )
        current = history[-1]
        task = str(current.get("task", ""))
        instruction = str(current.get("instruction", task))
        if self.network.training:  # eval() walks every module: 1.6 ms, a fifth of an RTI step on this CPU
            self.network.eval()
        images = self._observation_images(history)
        if self.config.advantage_conditioning:
            denoise = self._guided_denoiser(state, images, task, instruction)
        else:
            cond = self._condition(state, images, [task], [instruction])

            def denoise(sample: Tensor, timesteps: Tensor) -> Tensor:
                out: Tensor = self._inference_unet(sample, timesteps, cond)(sample, timesteps, cond)
                return out

        shape = (1, self.config.prediction_horizon, self.config.action_dim)
        initial = None if warm_start is None else warm_start.reshape(shape)
        result = self.sampler.sample(denoise, shape, self.generator, self.device, warm_start=initial)
        trajectory = result.trajectory[0]
        self._last_task = task
        actions = self._actions_to_send(trajectory, task)
        start = self.config.observation_horizon - 1
        return ActionChunk(
            actions=actions[start:].cpu().numpy().astype(np.float32),
            trajectory=trajectory.detach().clone(),
            denoiser_calls=result.denoiser_calls,
            warm_started=result.warm_started,
        )

    def warm_up(self) -> None:
        """Trace the U-Net and run the graph executor's first passes on a zero observation: a full solve and
        a warm-started chunk, as a robot's first two chunks are. The sampling generator is restored after."""
        observation: dict[str, Any] = {
            "state": np.zeros(self.config.state_dim, dtype=np.float32),
            "task": self.config.tasks[0] if self.config.tasks else "",
            "instruction": "",
            "images": {camera: np.zeros((64, 64, 3), dtype=np.uint8) for camera in self.config.cameras},
        }
        generator_state = self.generator.get_state()
        try:
            first = self.predict_chunk(observation)
            if self.sampler.uses_warm_start and first.trajectory is not None:
                self.predict_chunk(observation, warm_start=first.trajectory)
        except Exception as exc:  # an optimisation only: the first real chunk traces instead
            log.warning("warm-up skipped: %s: %s", type(exc).__name__, exc)
        finally:
            self.generator.set_state(generator_state)
            self.reset()

    def _guided_denoiser(
        self, state: Tensor, images: dict[str, Tensor], task: str, instruction: str
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """RECAP's denoiser: conditioned on "good"; with guidance_beta != 1, classifier-free guidance
        eps_unknown + beta (eps_good - eps_unknown), the two halves as one batch of two (one U-Net pass)."""
        beta = self.config.guidance_beta
        good = torch.tensor([ADVANTAGE_POSITIVE], dtype=torch.long, device=self.device)
        cond_good = self._condition(state, images, [task], [instruction], good)
        if beta == 1.0:

            def conditioned(sample: Tensor, timesteps: Tensor) -> Tensor:
                out: Tensor = self._inference_unet(sample, timesteps, cond_good)(sample, timesteps, cond_good)
                return out

            return conditioned
        unknown = torch.tensor([ADVANTAGE_UNKNOWN], dtype=torch.long, device=self.device)
        cond_both = torch.cat([cond_good, self._condition(state, images, [task], [instruction], unknown)])

        def guided(sample: Tensor, timesteps: Tensor) -> Tensor:
            samples, steps = torch.cat([sample, sample]), torch.cat([timesteps, timesteps])
            eps_good, eps_unknown = self._inference_unet(samples, steps, cond_both)(
                samples, steps, cond_both
            ).chunk(2)
            return eps_unknown + beta * (eps_good - eps_unknown)

        return guided

    def _gripper_cut(self, task: str) -> float:
        """Where "closed" starts for `task`, in the sampler's space: its data's cut, else 0 (the sign)."""
        levels = self._gripper_levels.get(task)
        if levels is None or self.config.gripper_index is None:
            return 0.0
        command = torch.zeros(self.config.action_dim, device=self.device)
        command[self.config.gripper_index] = levels.threshold
        return float(self.actions_to_model(command)[self.config.gripper_index])

    def _actions_to_send(self, trajectory: Tensor, task: str) -> Tensor:
        """A chunk in environment units; with a handled gripper its command is one of two levels (RTI-DP).

        The cut and the two levels are the task's, found in the training data (`gripper_levels`): a cut at
        effort 0 for every task would close Meta-World's hand whenever push's expert sends "relaxed" (0).
        A task without levels takes the sign in the sampler's space, whose ±1 are the data's extremes.
        """
        actions = self.actions_from_model(trajectory)
        index = self.config.gripper_index
        if not self.config.gripper_handled or index is None:
            return actions
        closed = trajectory[:, index] > self._gripper_cut(task)
        levels = self._gripper_levels.get(task)
        if levels is not None:
            actions[:, index] = torch.where(
                closed, torch.tensor(levels.closed), torch.tensor(levels.released)
            ).to(actions.dtype)
            return actions
        magnitude = 1.0 / self.config.gripper_factor if self.config.gripper_mode is GripperMode.SCALE else 1.0
        discrete = trajectory.clone()
        discrete[:, index] = torch.where(closed, magnitude, -magnitude)
        return self.actions_from_model(discrete)

    def _warm_start_from_actions(self, executed: np.ndarray) -> Tensor | None:
        """After a hand-back: a chunk made of what the robot executed, in the sampler's space.

        The next chunk spans the last To-1 steps and the future (see `predict_chunk`): its past positions
        get the executed actions, every later one repeats the last executed action (what the operator was
        doing), which RTI refines with its K' steps like any shifted chunk. Only for warm-starting samplers.
        """
        if not self.sampler.uses_warm_start or executed.shape[-1] != self.config.action_dim:
            return None
        past = self.config.observation_horizon - 1
        rows = list(executed[-past:]) if past > 0 else []
        rows = [executed[0]] * (past - len(rows)) + rows
        rows += [executed[-1]] * (self.config.prediction_horizon - len(rows))
        guess = self.actions_to_model(
            torch.as_tensor(np.stack(rows), dtype=torch.float32, device=self.device)
        )
        if self.config.gripper_mode is GripperMode.CLIP and self.config.gripper_index is not None:
            guess = snap_gripper(
                guess,
                self.config.gripper_index,
                1.0 / self.config.gripper_factor,
                self._gripper_cut(self._last_task),
            )
        return guess.clamp(-1.0, 1.0)

    def _next_warm_start(self) -> Tensor | None:
        if (
            not self.sampler.uses_warm_start
            or self._last_chunk is None
            or self._last_chunk.trajectory is None
        ):
            return None
        clip_to = None
        if self.config.gripper_mode is GripperMode.CLIP:
            clip_to = 1.0 / self.config.gripper_factor
        return rti_warm_start(
            self._last_chunk.trajectory,
            self._executed_from_last_chunk,
            self.config.gripper_index,
            clip_to,
            gripper_cut=self._gripper_cut(self._last_task),
        )

    # ---- checkpoints -------------------------------------------------------------------------------------

    def to_checkpoint(
        self,
        version: int | None = None,
        parent_version: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Checkpoint:
        return build_checkpoint(
            self.network.state_dict(),
            policy_type=POLICY_TYPE,
            version=self.version if version is None else version,
            parent_version=self.parent_version if parent_version is None else parent_version,
            policy_config=config_to_dict(self.config),
            normalization=self.stats.to_dict(),
            extra=extra,
        )

    def save(self, path: str | Path, version: int | None = None, parent_version: int | None = None) -> Path:
        return save_checkpoint(self.to_checkpoint(version, parent_version), path)

    def to_bytes(self, version: int | None = None, parent_version: int | None = None) -> bytes:
        return checkpoint_to_bytes(self.to_checkpoint(version, parent_version))

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, sampler: SamplerConfig | None = None, device: str | torch.device = "cpu"
    ) -> DiffusionPolicy:
        manifest = checkpoint.manifest
        if manifest.policy_type != POLICY_TYPE:
            raise CheckpointError(f"policy_type is {manifest.policy_type!r}, expected {POLICY_TYPE!r}")
        try:
            config = config_from_dict(DiffusionPolicyConfig, manifest.policy_config)
        except ConfigError as exc:
            raise CheckpointError(f"policy_config: {exc}") from None
        try:
            stats = NormalizationStats.from_dict(manifest.normalization)
        except NormalizationError as exc:
            raise CheckpointError(f"normalization: {exc}") from None
        policy = cls(config, stats, sampler, manifest.version, manifest.parent_version, device)
        missing, unexpected = policy.network.load_state_dict(checkpoint.tensors, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return policy

    @classmethod
    def load(
        cls, path: str | Path, sampler: SamplerConfig | None = None, device: str | torch.device = "cpu"
    ) -> DiffusionPolicy:
        return cls.from_checkpoint(load_checkpoint(path), sampler, device)

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        expected_sha256: str | None = None,
        sampler: SamplerConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> DiffusionPolicy:
        return cls.from_checkpoint(checkpoint_from_bytes(blob, expected_sha256), sampler, device)

    def load_weights_in_place(self, blob: bytes, expected_sha256: str | None = None) -> bool:
        """`Policy.load_weights_in_place`: the same config and statistics are required; the tensors are copied
        into this policy's own, so its traced U-Nets (which share them) stay valid: no re-trace (~0.2-0.4 s
        of CPU per checkpoint on a robot, a fifth of a demo robot's CPU when the learner published every few
        seconds)."""
        checkpoint = checkpoint_from_bytes(blob, expected_sha256)
        manifest = checkpoint.manifest
        if manifest.policy_type != POLICY_TYPE:
            return False
        try:
            config = config_from_dict(DiffusionPolicyConfig, manifest.policy_config)
            stats = NormalizationStats.from_dict(manifest.normalization)
        except (ConfigError, NormalizationError):
            return False  # building a policy from it names the problem
        if config != self.config or stats.to_dict() != self.stats.to_dict():
            return False
        return self._take_weights(self.network, checkpoint)

    def with_advantage_conditioning(self, guidance_beta: float = 1.0) -> DiffusionPolicy:
        """A RECAP copy of this policy: same weights and statistics, plus the advantage indicator (a new
        embedding at zero, so it predicts what this one does until trained) and `guidance_beta`. On a policy
        that is conditioned already only beta changes."""
        config = dataclasses.replace(self.config, advantage_conditioning=True, guidance_beta=guidance_beta)
        with torch.random.fork_rng(devices=[]):
            policy = DiffusionPolicy(
                config, self.stats, self.sampler_config, self.version, self.parent_version, self.device
            )
        missing, unexpected = policy.network.load_state_dict(self.network.state_dict(), strict=False)
        if unexpected or any(not name.startswith("advantage.") for name in missing):
            raise CheckpointError(f"weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return policy

    def with_weights(self, state_dict: Mapping[str, Tensor], version: int | None = None) -> DiffusionPolicy:
        """A new policy with this one's config, statistics and sampler and the given weights (e.g. the EMA).

        Built under a forked RNG: the throwaway initialisation must not move a training run's random stream,
        or a run that checkpoints would diverge from one that resumes from that checkpoint."""
        with torch.random.fork_rng(devices=[]):
            policy = DiffusionPolicy(
                self.config,
                self.stats,
                self.sampler_config,
                self.version if version is None else version,
                self.parent_version,
                self.device,
            )
        policy.network.load_state_dict(dict(state_dict))
        return policy
