"""Small stand-ins for the robot tests: a cheap robot, a policy on the real `Policy` base class whose
checkpoints use the real blob format (so verification is real), and a tiny real diffusion checkpoint for
the subprocess tests (which load policies the way a deployed daemon does)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_client.config import ControlConfig, RobotConfig, RobotPluginConfig
from robot_client.operators import OperatorDecision, OperatorInput
from robot_client.robots import Observation, Robot, StepResult
from sop.checkpoint import (
    Checkpoint,
    build_checkpoint,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    save_checkpoint,
)
from sop.episode import ACTION, STATE
from sop.policies.base import ActionChunk, Policy

TASK = "fake-task"
# The `robot_config` fixture: `robot_config(address, **overrides) -> RobotConfig`.
ConfigFactory = Callable[..., RobotConfig]
STATE_DIM = 4
ACTION_DIM = 2


class FakeRobot(Robot):
    """A point that moves by the action; succeeds when `success_at_step` is reached (if set)."""

    def __init__(self, success_at_step: int | None = None, cameras: tuple[str, ...] = ()) -> None:
        self.task = TASK
        self.state_dim = STATE_DIM
        self.action_dim = ACTION_DIM
        self.cameras = cameras
        self.success_at_step = success_at_step
        self.position = np.zeros(2, dtype=np.float32)
        self.steps = 0
        self.episodes = 0
        self.actions: list[np.ndarray] = []
        self.closed = False

    def _observation(self) -> Observation:
        state = np.array([*self.position, self.steps, self.episodes], dtype=np.float32)
        images = {name: np.full((8, 8, 3), self.steps % 255, dtype=np.uint8) for name in self.cameras}
        return Observation(state, "move the point", TASK, images)

    def start_episode(self) -> Observation:
        self.position[:] = 0
        self.steps = 0
        self.episodes += 1
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        self.actions.append(np.asarray(action, dtype=np.float32).copy())
        self.position += np.asarray(action, dtype=np.float32)
        self.steps += 1
        success = self.success_at_step is not None and self.steps >= self.success_at_step
        return StepResult(self._observation(), reward=-1.0, success=success)

    def hold_action(self, observation: Observation) -> np.ndarray:
        return np.zeros(ACTION_DIM, dtype=np.float32)

    def close(self) -> None:
        self.closed = True


def make_fake_robot(config: RobotPluginConfig, control: ControlConfig) -> FakeRobot:
    """`robot.type=factory` entry point for subprocess daemons."""
    return FakeRobot()


class StuckOnCloseRobot(FakeRobot):
    """A robot whose driver hangs when it is released: close() touches $SOP_TEST_CLOSING, then blocks."""

    def close(self) -> None:
        marker = os.environ.get("SOP_TEST_CLOSING")
        if marker:
            Path(marker).touch()
        time.sleep(3600)


def make_stuck_robot(config: RobotPluginConfig, control: ControlConfig) -> FakeRobot:
    """`robot.type=factory` entry point: a robot whose close() never returns."""
    return StuckOnCloseRobot()


class FakePolicy(Policy):
    """Actions filled with `version / 100`, so every executed action says which policy produced it."""

    policy_type = "fake"

    def __init__(
        self, version: int, execution_horizon: int = 4, action_dim: int = ACTION_DIM, weight_elems: int = 16
    ) -> None:
        super().__init__(observation_horizon=2, execution_horizon=execution_horizon, version=version)
        self.action_dim = action_dim
        self.weight_elems = weight_elems
        self.acts = 0
        self.invalidations = 0
        self.handoffs: list[np.ndarray] = []  # the executed actions each hand-back passed
        self.warm_ups = 0

    def invalidate_warm_start(self) -> None:
        self.invalidations += 1
        super().invalidate_warm_start()

    def continue_from_actions(self, executed: Any) -> None:
        self.handoffs.append(np.array(executed))
        super().continue_from_actions(executed)

    def reseed(self, seed: int) -> None:
        """Its actions are deterministic already: nothing to seed."""

    def warm_up(self) -> None:
        self.warm_ups += 1

    def act(self, observation: Any) -> np.ndarray:
        self.acts += 1
        return super().act(observation)

    def _next_warm_start(self) -> torch.Tensor | None:
        """Warm-start like RTI: from the previous chunk (full solves after reset / invalidation)."""
        return None if self._last_chunk is None else self._last_chunk.trajectory

    def predict_chunk(self, observation: Any, warm_start: torch.Tensor | None = None) -> ActionChunk:
        self._as_history(observation)
        actions = np.full((8, self.action_dim), self.version / 100.0, dtype=np.float32)
        return ActionChunk(
            actions, torch.zeros(8, self.action_dim), denoiser_calls=1, warm_started=warm_start is not None
        )

    def policy_config(self) -> dict[str, Any]:
        return {"execution_horizon": self.execution_horizon, "action_dim": self.action_dim}

    def to_checkpoint(self) -> Checkpoint:
        return build_checkpoint(
            {"weight": torch.full((self.weight_elems,), float(self.version))},
            policy_type="fake",
            version=self.version,
            parent_version=None,
            policy_config=self.policy_config(),
            normalization={},
        )

    def save(self, path: str | Path, version: int | None = None, parent_version: int | None = None) -> Path:
        return save_checkpoint(self.to_checkpoint(), path)

    def to_bytes(self, version: int | None = None, parent_version: int | None = None) -> bytes:
        return checkpoint_to_bytes(self.to_checkpoint())


def fake_blob(
    version: int, execution_horizon: int = 4, weight_elems: int = 16, action_dim: int = ACTION_DIM
) -> bytes:
    return FakePolicy(version, execution_horizon, action_dim=action_dim, weight_elems=weight_elems).to_bytes()


class FaultyPolicy(FakePolicy):
    """A FakePolicy whose chunks number `bad_chunks` (0-based, counted over its life) go wrong: `nan` fills
    them with NaN, `long` gives them one action value too many, `raise` raises instead of answering."""

    policy_type = "fake"

    def __init__(self, version: int, fault: str, bad_chunks: set[int] | None = None) -> None:
        super().__init__(version)
        self.fault = fault
        self.bad_chunks = bad_chunks
        self.chunk_calls = 0

    def predict_chunk(self, observation: Any, warm_start: torch.Tensor | None = None) -> ActionChunk:
        index = self.chunk_calls
        self.chunk_calls += 1
        chunk = super().predict_chunk(observation, warm_start)
        if self.bad_chunks is not None and index not in self.bad_chunks:
            return chunk
        if self.fault == "raise":
            raise RuntimeError(f"fault injected in chunk {index}")
        if self.fault == "long":
            actions = np.full((8, self.action_dim + 1), self.version / 100.0, dtype=np.float32)
        else:
            actions = np.full((8, self.action_dim), np.nan, dtype=np.float32)
        return ActionChunk(actions, chunk.trajectory, chunk.denoiser_calls, chunk.warm_started)

    def policy_config(self) -> dict[str, Any]:
        return {**super().policy_config(), "fault": self.fault}


class RefillableFakePolicy(FakePolicy):
    """A FakePolicy that takes another fake checkpoint's version in place (`Policy.load_weights_in_place`)."""

    def load_weights_in_place(self, blob: bytes, expected_sha256: str | None = None) -> bool:
        loaded = fake_policy_loader(blob, expected_sha256)
        if loaded.policy_config() != self.policy_config():
            return False
        self.version = loaded.version
        self.reset()
        return True


def fake_policy_loader(blob: bytes, expected_sha256: str | None) -> FakePolicy:
    """The daemon's loader contract: verify (sha256 + weights hash, the real checks), then build."""
    checkpoint = checkpoint_from_bytes(blob, expected_sha256)
    manifest = checkpoint.manifest
    if manifest.policy_type != "fake":
        raise ValueError(f"policy_type {manifest.policy_type!r} is not 'fake'")
    config = manifest.policy_config
    if "fault" in config:  # every chunk goes wrong
        return FaultyPolicy(manifest.version, str(config["fault"]))
    return FakePolicy(manifest.version, int(config["execution_horizon"]), int(config["action_dim"]))


def tamper(blob: bytes) -> bytes:
    """The same blob with one weight byte flipped (the header still parses)."""
    data = bytearray(blob)
    data[-3] ^= 0xFF
    return bytes(data)


class ScriptedOperator(OperatorInput):
    """Takes over for steps [start, stop) of every episode with a constant action."""

    def __init__(self, start: int, stop: int, action: float = 0.5) -> None:
        self.start, self.stop, self.value = start, stop, action
        self.step_index = 0

    def begin_episode(self, episode_id: str, observation: Observation) -> None:
        self.step_index = 0

    def step(self, observation: Observation, policy_action: np.ndarray, success: bool) -> OperatorDecision:
        index = self.step_index
        self.step_index += 1
        if self.start <= index < self.stop:
            return OperatorDecision(True, np.full(ACTION_DIM, self.value, dtype=np.float32))
        return OperatorDecision(False)


def write_tiny_diffusion_checkpoint(path: Path, version: int = 1) -> Path:
    """A small real diffusion policy (task embedding, no sentence encoder) for subprocess daemons."""
    from sop.normalization import NormalizationStats
    from sop.policies.configuration_diffusion import (
        DiffusionPolicyConfig,
        GripperMode,
        InstructionEncoderKind,
    )
    from sop.policies.modeling_diffusion import DiffusionPolicy

    config = DiffusionPolicyConfig(
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        prediction_horizon=8,
        execution_horizon=4,
        state_hidden_dim=32,
        state_feature_dim=16,
        instruction_encoder=InstructionEncoderKind.TASK,
        instruction_feature_dim=8,
        tasks=(TASK,),
        down_dims=(16, 32),
        timestep_embed_dim=16,
        num_train_timesteps=10,
        gripper_index=None,
        gripper_mode=GripperMode.NONE,
    )
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_arrays(
        {
            STATE: [rng.normal(size=(64, STATE_DIM)).astype(np.float32)],
            ACTION: [rng.uniform(-1, 1, size=(64, ACTION_DIM)).astype(np.float32)],
        }
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, stats, version=version)
    return policy.save(path, version=version)


LEAVE_PARTIAL = """
import os, signal, sys, numpy as np
from sop.data.episode_store import EpisodeStore
from sop.episode import new_episode_id
store = EpisodeStore(sys.argv[1], durable=True)
writer = store.begin_episode(new_episode_id(), "robot-1", "fake-task", "move the point", flush_every=5)
for i in range(int(sys.argv[2])):
    writer.add_step({
        "observation.state": np.zeros(4, np.float32), "action": np.full(2, 0.5, np.float32),
        "policy_action": np.zeros(2, np.float32), "intervention": np.bool_(i % 2),
        "policy_version": np.int64(1), "timestamp": np.float64(1000.0 + i), "reward": np.float32(0),
    })
print(writer.episode_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def leave_partial_episode(root: Path, steps: int) -> str:
    """A spool with an episode a killed process left half-written (its writer is dead); returns its id."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", LEAVE_PARTIAL, str(root), str(steps)], capture_output=True, text=True
    )
    assert result.returncode == -9, result.stderr
    return result.stdout.strip()
