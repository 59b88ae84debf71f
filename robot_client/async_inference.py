"""Asynchronous inference: the control thread reads actions from a queue, an inference thread computes the
next chunk while the current one executes.

Timing model. Ticks are numbered from the episode's start. A chunk is planned from the history that ends
with tick s's observation, and its `actions[i]` is meant for tick s + i (`sop.policies.base.ActionChunk`).
The control thread at tick k:

1. takes a chunk the inference thread has finished, if any: planned at tick s, it arrives d = k - s >= 1
   ticks late (ticks s..k-1 already ran the previous chunk's actions), so the queue becomes
   `actions[d:]` — the delay is skipped, not replayed;
2. starts the next chunk when none is being computed and `execution_horizon - lead_steps` ticks have run
   since the current chunk's observation (or the queue is empty): the inference thread gets a copy of the
   history and the number of ticks since the previous chunk's observation, by which RTI shifts its warm
   start (`Policy.plan_chunk`), so the warm start lines up with the new chunk's own time base;
3. pops tick k's action. An empty queue means inference is late: `action()` returns None, the loop
   executes the robot's hold action and counts the tick (`sop_robot_inference_late_steps`).

With inference shorter than `lead_steps` ticks a chunk replaces the previous one after about
`execution_horizon` executed actions, as in synchronous execution; a slower chunk lets the robot go on
with the rest of the previous chunk (up to its full prediction horizon) before anything is held.

All calls into the policy (planning, `reset`, `invalidate_warm_start`, `continue_from_actions`) run on the
inference thread, in order, so the policy's warm-start state never sees two threads. The control thread
only touches this object's queue. Swapping the policy (`set_policy`) waits for a chunk in flight to finish.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_client.policy_sync import Policy
from sop.policies.base import ActionChunk
from sop.safe_logging import RateLimitedLog, client_str

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    """One job for the inference thread."""

    history: list[dict[str, Any]]
    tick: int  # the tick of the history's last observation
    observed_at: float  # perf_counter() at that tick's start
    steps_since_last_chunk: int
    generation: int  # a chunk asked for before the last `invalidate` / hand-back is dropped on arrival
    # What to do to the policy first: "" (nothing), "reset" (a new episode or policy), "cold" (invalidate the
    # warm start) or "handoff" (continue from `executed`).
    prepare: str = ""
    executed: np.ndarray | None = None  # the robot's last executed actions, for "handoff"


@dataclass(frozen=True)
class _Result:
    request: _Request
    version: int  # the version of the policy that planned it
    chunk: ActionChunk | None
    error: Exception | None
    seconds: float


class AsyncChunkRunner:
    """Drives one policy from a control loop without ever waiting for inference inside a tick."""

    def __init__(
        self,
        lead_steps: int,
        on_chunk: Callable[[float, bool], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if lead_steps < 0:
            raise ValueError(f"lead_steps must be >= 0, got {lead_steps}")
        self.lead_steps = lead_steps
        self._on_chunk = on_chunk  # (seconds, warm_started) of every chunk computed
        self._on_error = on_error
        self.throttled = RateLimitedLog(log, interval_s=5.0)
        self._policy: Policy | None = None
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._results: queue.Queue[_Result] = queue.Queue()
        self._in_flight = False
        self._actions: collections.deque[np.ndarray] = collections.deque()
        self._history: collections.deque[dict[str, Any]] = collections.deque()
        self._chunk_tick = 0  # the observation tick of the chunk now executing
        self._last_planned_tick = 0  # the observation tick of the last chunk asked for
        self._prepare = ""
        self._executed: np.ndarray | None = None
        self._generation = 0
        # perf_counter() at the start of the tick whose observation the executing chunk was planned on.
        self.chunk_observed_at: float | None = None
        # The version of the policy whose chunk the queued actions come from (after a swap at a chunk
        # boundary the previous policy's chunk runs on until the new one's first chunk arrives).
        self.chunk_version = 0
        self.late_steps = 0
        self.chunks = 0
        self.delays: collections.deque[int] = collections.deque(maxlen=256)  # arrival delay d, in ticks
        self._thread = threading.Thread(target=self._serve, name="sop-inference", daemon=True)
        self._thread.start()

    # ---- the inference thread -----------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            policy = self._policy
            assert policy is not None
            version = int(policy.version)
            t0 = time.perf_counter()
            try:
                if request.prepare == "reset":
                    policy.reset()
                elif request.prepare == "cold":
                    policy.invalidate_warm_start()
                elif request.prepare == "handoff" and request.executed is not None:
                    policy.continue_from_actions(request.executed)
                chunk = policy.plan_chunk(request.history, request.steps_since_last_chunk)
                actions = np.asarray(chunk.actions, dtype=np.float32)
                if actions.ndim != 2 or not len(actions):
                    raise ValueError(f"the policy's chunk has shape {actions.shape}, expected (H, A)")
                result = _Result(request, version, chunk, None, time.perf_counter() - t0)
            except Exception as exc:  # one bad chunk must not end the thread: the loop holds and retries cold
                result = _Result(request, version, None, exc, time.perf_counter() - t0)
            self._results.put(result)

    # ---- the control thread -------------------------------------------------------------------------------

    @property
    def policy(self) -> Policy | None:
        return self._policy

    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def _wait_idle(self) -> _Result | None:
        """Block until the chunk in flight (if any) is back; returns it."""
        if not self._in_flight:
            return None
        result = self._results.get()
        self._in_flight = False
        return result

    def start_episode(self, policy: Policy, observation: dict[str, Any]) -> np.ndarray | None:
        """A new episode with `policy`: the first chunk is solved here, before the control grid starts (the
        robot stands at its start pose); returns tick 0's action (None when the policy failed)."""
        self._wait_idle()
        self._policy = policy
        self._actions.clear()
        self._history = collections.deque(maxlen=policy.observation_horizon)
        for _ in range(policy.observation_horizon):
            self._history.append(observation)
        self._chunk_tick = self._last_planned_tick = 0
        self._prepare, self._executed = "", None
        self._submit(_Request(list(self._history), 0, time.perf_counter(), 0, self._generation, "reset"))
        self._take(self._wait_idle(), tick=0)
        return self._actions.popleft() if self._actions else None

    def set_policy(self, policy: Policy) -> None:
        """A new policy from the next chunk on (a cold solve: its first chunk has nothing to warm-start from);
        the current queue keeps executing meanwhile. Call it where `at_chunk_boundary` is true: a chunk in
        flight is waited for and dropped."""
        self._wait_idle()
        self._policy = policy
        self._prepare, self._executed = "reset", None

    def invalidate(self) -> None:
        """The queued actions must not run (the policy's output was refused): drop them; the next chunk is a
        full solve."""
        self._actions.clear()
        self._prepare, self._executed = "cold", None
        self._generation += 1

    def continue_from_actions(self, executed: np.ndarray) -> None:
        """Control comes back from the operator: drop the queue; the next chunk starts now and warm-starts
        from what the robot executed (`Policy.continue_from_actions`). Until it arrives the robot holds."""
        self._actions.clear()
        self._prepare, self._executed = "handoff", np.asarray(executed, dtype=np.float32).copy()
        self._generation += 1

    def at_chunk_boundary(self, tick: int) -> bool:
        """True when this tick would start the next chunk (a checkpoint swapped now costs no actions)."""
        return not self._in_flight and self._due(tick)

    def _due(self, tick: int) -> bool:
        assert self._policy is not None
        start_after = max(1, self._policy.execution_horizon - self.lead_steps)
        return not self._actions or tick - self._chunk_tick >= start_after

    def action(self, tick: int, observation: dict[str, Any], observed_at: float) -> np.ndarray | None:
        """Tick `tick`'s action (`observation` is this tick's); None when no chunk is ready (inference is
        late, or the last chunk failed and a full solve is under way): the caller holds the robot.
        `observed_at`: perf_counter() at this tick's start (for `chunk_observed_at`). Never
        waits for inference. A failed chunk is reported once, through `on_error`."""
        if tick > 0:
            self._history.append(observation)
        if self._in_flight:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                result = None
            if result is not None:
                self._in_flight = False
                self._take(result, tick)
        if not self._in_flight and self._due(tick):
            steps = tick - self._last_planned_tick
            self._submit(
                _Request(
                    list(self._history),
                    tick,
                    observed_at,
                    max(0, steps),
                    self._generation,
                    self._prepare,
                    self._executed,
                )
            )
            self._prepare, self._executed = "", None
        if self._actions:
            return self._actions.popleft()
        self.late_steps += 1
        return None

    def _submit(self, request: _Request) -> None:
        self._in_flight = True
        self._last_planned_tick = request.tick
        self._requests.put(request)

    def _take(self, result: _Result | None, tick: int | None) -> None:
        """Make a finished chunk the one that executes (`tick` None: a swap discards it)."""
        if result is None or tick is None or result.request.generation != self._generation:
            return  # dropped: the robot's situation changed after it was asked for
        if result.chunk is None:
            assert result.error is not None
            self.throttled.warning(
                "chunk-error",
                "the policy raised %s planning a chunk: %s; the robot holds and the next chunk is a full solve",
                type(result.error).__name__,
                client_str(result.error, 200),
            )
            if self._on_error is not None:
                self._on_error(result.error)
            self._actions.clear()
            self._prepare = "cold"
            return
        if self._on_chunk is not None:
            self._on_chunk(result.seconds, result.chunk.warm_started)
        delay = tick - result.request.tick
        self.delays.append(delay)
        self.chunks += 1
        self._chunk_tick = result.request.tick
        self.chunk_observed_at = result.request.observed_at
        self.chunk_version = result.version
        self._actions = collections.deque(
            np.asarray(a, dtype=np.float32) for a in result.chunk.actions[delay:]
        )

    def end_episode(self) -> None:
        """Wait for a chunk in flight and drop it (the next episode starts from its own observation)."""
        self._wait_idle()
        self._actions.clear()

    def close(self) -> None:
        self._wait_idle()
        self._requests.put(None)
        self._thread.join(timeout=5.0)
