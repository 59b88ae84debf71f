"""The policy interface every runner talks to: `reset()`, `act(observation)`, chunks, save / load.

An observation is what the environment hands over each control step:

    {"state": float32 (D,), "instruction": str, "task": str, optional "image": uint8 (H, W, 3)}
    (several cameras: "images": {camera: uint8 (H, W, 3)})

The same step has three spellings, one per layer, and they stay distinct on purpose (this table is their one
home):

    robot (typed)                        policy input (this dict)     episode / wire key (`sop.episode`)
    robot_client.robots.Observation      mapping                      per-step array in the store
    .state                               "state"                      "observation.state"  (`STATE`)
    .images[camera]                      "image" / "images"[camera]   "observation.images.<camera>"
    .instruction, .task                  "instruction", "task"        episode metadata, not per step

`Observation.policy_input()` converts the first to the second; the robot's recorder and the learner's
window sampler read and write the third, which are storage and wire names and never change.

`act` returns one action per control step. Behind it sits action chunking (Diffusion Policy): the policy
keeps the last To observations, predicts a chunk of Tp actions spanning those To steps and the future, and
executes Ta of them (from the current step on) before predicting again. The history is filled with the
first observation after `reset()` (the peers' async-inference bug was a history that was never filled).
`act` is the synchronous composition of two parts a robot may run on different threads: `observe` (the
history) and `plan_chunk` (the next chunk from a history snapshot, warm-started from the previous chunk
shifted by the control steps between their observations); robot_client/async_inference.py plans on an
inference thread while the robot executes.

Counters (`last_denoiser_calls`, ...) feed the robot's metrics; `version` is the checkpoint version the
robot records per frame. `invalidate_warm_start()` forces the next chunk to be a full solve and drops the
queued actions: the robot calls it after swapping in a new policy and when the policy's output was refused.
When the operator hands control back, the arm is no longer where the queued chunk assumed, but the robot
knows what it just executed: `continue_from_actions(executed)` drops the queue and lets a warm-starting
sampler (RTI) start the next chunk from those actions instead of a full solve inside the control grid.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sop.checkpoint import Checkpoint

Observation = Mapping[str, Any]


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the key and the problem."""


@dataclass(frozen=True)
class ActionChunk:
    """One prediction: the actions to execute from the current step on, and what the sampler produced."""

    actions: np.ndarray  # (H, A) float32, environment units; actions[0] is for the current step
    trajectory: torch.Tensor | None  # (Tp, A) sampler output in the network's space (warm starts), if any
    denoiser_calls: int
    warm_started: bool


class Policy(abc.ABC):
    """Base of every SOP policy: owns the observation history, the action queue and the counters."""

    policy_type: str = ""
    # Task ids the policy was trained on (evaluation defaults to these); empty when unknown.
    tasks: tuple[str, ...] = ()

    def __init__(self, observation_horizon: int, execution_horizon: int, version: int = 0) -> None:
        if observation_horizon < 1 or execution_horizon < 1:
            raise ValueError(
                f"observation_horizon ({observation_horizon}) and execution_horizon ({execution_horizon}) must be >= 1"
            )
        self.observation_horizon = observation_horizon
        self.execution_horizon = execution_horizon
        self.version = version
        self._history: collections.deque[Observation] = collections.deque(maxlen=observation_horizon)
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._last_chunk: ActionChunk | None = None
        self._warm_start_valid = False
        self._handoff_warm_start: torch.Tensor | None = None
        self._executed_from_last_chunk = 0
        self.last_denoiser_calls = 0
        self.last_chunk_warm_started = False
        self.total_denoiser_calls = 0
        self.chunks_predicted = 0

    # ---- episode lifecycle -------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: empty history and queue, next chunk fully solved; optionally reseed sampling."""
        self._history.clear()
        self.invalidate_warm_start()
        if seed is not None:
            self.reseed(seed)

    @abc.abstractmethod
    def reseed(self, seed: int) -> None:
        """Make the policy's sampling reproducible from here on."""

    def invalidate_warm_start(self) -> None:
        """The next `act` predicts a fresh chunk with a full solve; queued actions are dropped."""
        self._queue.clear()
        self._last_chunk = None
        self._warm_start_valid = False
        self._handoff_warm_start = None

    def continue_from_actions(self, executed: np.ndarray | Sequence[np.ndarray]) -> None:
        """Control comes back after someone else drove: `executed` (k, A) are the last actions the robot
        executed, oldest first. The queue is dropped; the next chunk warm-starts from those actions where
        the sampler can (`_warm_start_from_actions`), else it is a full solve."""
        self.invalidate_warm_start()
        actions = np.asarray(executed, dtype=np.float32)
        if actions.ndim != 2 or len(actions) == 0:
            return
        guess = self._warm_start_from_actions(actions)
        if guess is not None:
            self._handoff_warm_start = guess
            self._warm_start_valid = True

    def _warm_start_from_actions(self, executed: np.ndarray) -> torch.Tensor | None:
        """The initial guess for the next chunk when others drove the last steps; None: a full solve."""
        return None

    # ---- acting ------------------------------------------------------------------------------------------

    def act(self, observation: Observation) -> np.ndarray:
        """One action (A,) float32 for this control step (synchronous: a step that needs a chunk computes it)."""
        self.observe(observation)
        if not self._queue:
            chunk = self.plan_chunk(self.history(), self._executed_from_last_chunk)
            executable = chunk.actions[: self.execution_horizon]
            self._queue.extend(np.asarray(a, dtype=np.float32) for a in executable)
        self._executed_from_last_chunk += 1
        return self._queue.popleft()

    def observe(self, observation: Observation) -> None:
        """Add this control step's observation to the history (the first one after `reset` fills it)."""
        self._check_observation(observation)
        if not self._history:
            for _ in range(self.observation_horizon):
                self._history.append(observation)
        else:
            self._history.append(observation)

    def history(self) -> list[Observation]:
        """The last To observations, oldest first (a copy: the caller may hand it to another thread)."""
        return list(self._history)

    def plan_chunk(self, history: Sequence[Observation], steps_since_last_chunk: int) -> ActionChunk:
        """The next chunk from `history`, warm-started where the sampler can: after a hand-back from the
        executed actions, else from the previous chunk shifted by `steps_since_last_chunk` (the control steps
        between the previous chunk's last observation and this one's). Updates the warm-start state and the
        counters but not the history or the action queue, so an asynchronous runner (robot_client) can call
        it from its inference thread with a history snapshot while the robot executes the previous chunk.
        """
        self._executed_from_last_chunk = steps_since_last_chunk
        warm_start = None
        if self._handoff_warm_start is not None:
            warm_start, self._handoff_warm_start = self._handoff_warm_start, None
        elif self._warm_start_valid:
            warm_start = self._next_warm_start()
        chunk = self.predict_chunk(list(history), warm_start=warm_start)
        if len(chunk.actions) == 0:
            raise RuntimeError(f"{type(self).__name__}.predict_chunk returned no actions")
        self._last_chunk = chunk
        self._executed_from_last_chunk = 0
        self._warm_start_valid = chunk.trajectory is not None
        self.last_denoiser_calls = chunk.denoiser_calls
        self.last_chunk_warm_started = chunk.warm_started
        self.total_denoiser_calls += chunk.denoiser_calls
        self.chunks_predicted += 1
        return chunk

    def warm_up(self) -> None:
        """Do the once-per-network work (compiling, tracing) now, so that the first chunks a robot asks for
        do not pay for it. A robot calls it before its control loop starts: TorchScript tracing and the graph
        executor's first optimisation passes hold the GIL for up to a few hundred milliseconds, which on a
        background thread would stall the control thread. Leaves the policy as `reset()` does. This default
        has nothing to prepare."""
        return None

    def _next_warm_start(self) -> torch.Tensor | None:
        """The initial guess for the next chunk from the last one; None means a full solve."""
        return None

    @abc.abstractmethod
    def predict_chunk(
        self, observation: Observation | Sequence[Observation], warm_start: torch.Tensor | None = None
    ) -> ActionChunk:
        """Predict a chunk from one observation (repeated To times) or the last To observations.

        `warm_start` is an initial guess in the sampler's space (see `ActionChunk.trajectory`); None solves
        from scratch. This call does not touch the policy's history or queue.
        """

    def _as_history(self, observation: Observation | Sequence[Observation]) -> list[Observation]:
        if isinstance(observation, Mapping):
            history = [observation] * self.observation_horizon
        else:
            history = list(observation)
            if len(history) < self.observation_horizon:
                if not history:
                    raise ObservationError("observation: the history is empty")
                history = [history[0]] * (self.observation_horizon - len(history)) + history
            history = history[-self.observation_horizon :]
        for item in history:
            self._check_observation(item)
        return history

    def _check_observation(self, observation: Observation) -> None:
        if not isinstance(observation, Mapping):
            raise ObservationError(f"observation must be a mapping, got {type(observation).__name__}")
        if "state" not in observation:
            raise ObservationError("observation: key 'state' is missing")

    # ---- metrics and persistence -------------------------------------------------------------------------

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "policy_version": float(self.version),
            "denoiser_calls_last_chunk": float(self.last_denoiser_calls),
            "last_chunk_warm_started": float(self.last_chunk_warm_started),
            "denoiser_calls_total": float(self.total_denoiser_calls),
            "chunks_predicted": float(self.chunks_predicted),
        }

    @abc.abstractmethod
    def save(self, path: str | Path, version: int | None = None, parent_version: int | None = None) -> Path:
        """Write a verified checkpoint directory (see sop/checkpoint.py)."""

    @abc.abstractmethod
    def to_bytes(self, version: int | None = None, parent_version: int | None = None) -> bytes:
        """The checkpoint blob that travels over gRPC (the same bytes `save` writes)."""

    def load_weights_in_place(self, blob: bytes, expected_sha256: str | None = None) -> bool:
        """Take a checkpoint blob's weights and version into this policy, if it was built for the same network.

        For a robot that swaps checkpoints every few seconds: a policy it no longer runs is refilled instead of
        building a new one (which for the diffusion policy also means tracing its U-Net again). True when the
        weights were taken; False when they do not fit (the caller builds a new policy); a blob that does not
        read raises as loading it would. This default takes nothing.
        """
        return False

    def _take_weights(self, network: torch.nn.Module, checkpoint: Checkpoint) -> bool:
        """The end of `load_weights_in_place` once a subclass found the checkpoint's config and statistics
        equal to its own: its tensors must be `network`'s (same names and shapes); they are copied into it, so
        traced copies of the network stay valid. True when taken: the policy then carries the checkpoint's
        version and starts afresh."""
        own = network.state_dict()
        if set(checkpoint.tensors) != set(own) or any(
            tensor.shape != own[name].shape for name, tensor in checkpoint.tensors.items()
        ):
            return False
        with torch.no_grad():
            network.load_state_dict(checkpoint.tensors, strict=True)
        self.version = checkpoint.manifest.version
        self.parent_version = checkpoint.manifest.parent_version
        self.reset()
        return True
