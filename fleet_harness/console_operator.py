"""The simulated operator acting through the operator console, as a person at the page does.

The daemon's `simulated` operator kind sits on the robot and sees every control step. This one sits where a
person sits: logged into the console (`ConsoleClient`), one live connection per robot it watches, seeing
what the page shows (the state vector, the policy's proposal, the step and episode of each fleet update),
and acting with the page's commands: take over, teleop actions, hand back. Everything it does crosses the
real path: the console's session, roles and leases, the learner's relay, the robot's operator session, the
intervention gate; the robot records the frames as driven by this console user.

It decides with `sim.operator.SimulatedOperator`, fed once per fleet update rather than once per control
step, so its windows (stall, reaction delay) count updates: at the console's `update_interval_s` of 0.25 s
a 20-update stall window is 5 s of robot time, where the on-robot operator's is 20 control steps. That is
the person's view too (the page refreshes at that rate); set `console.update_interval_s` lower for a faster
operator. The teleop action it sends is held by the robot until the next one or `teleop_timeout_s`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_learner.console.client import ConsoleClient, ConsoleCommandError, LiveConnection
from sim.operator import SimulatedOperator, SimulatedOperatorConfig

log = logging.getLogger(__name__)


@dataclass
class ConsoleOperatorStats:
    take_overs: int = 0
    hand_backs: int = 0
    teleops: int = 0
    episodes: int = 0
    refused: list[str] = field(default_factory=list)


class ConsoleSimulatedOperator:
    """Watches `robot_tasks` ({robot id: task}) through the console at `url` as `username`; `start()` runs
    one thread per robot until `stop()`."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        robot_tasks: dict[str, str],
        *,
        config: SimulatedOperatorConfig | None = None,
        seed: int = 0,
        ca_file: str | None = None,
    ) -> None:
        self.client = ConsoleClient(url, username, password, ca_file=ca_file)
        self.robot_tasks = dict(robot_tasks)
        self.config = config
        self.seed = seed
        self.stats = {robot_id: ConsoleOperatorStats() for robot_id in robot_tasks}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index, robot_id in enumerate(self.robot_tasks):
            thread = threading.Thread(
                target=self._watch, args=(robot_id, index), name=f"console-operator-{robot_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self.client.close()

    def _watch(self, robot_id: str, index: int) -> None:
        try:
            with self.client.live() as live:
                live.watch(robot_id)
                self._operate(
                    live,
                    robot_id,
                    SimulatedOperator(self.robot_tasks[robot_id], self.config, self.seed + index),
                )
        except Exception:  # one robot's watcher failing must not stop the others; it is logged
            if not self._stop.is_set():
                log.exception("console operator for %s stopped", robot_id)

    def _operate(self, live: LiveConnection, robot_id: str, operator: SimulatedOperator) -> None:
        stats = self.stats[robot_id]
        episode_id = ""
        last_step = -1
        holding = False
        while not self._stop.is_set():
            try:
                update = live.next_update(timeout_s=2.0)
            except TimeoutError:
                continue
            view: dict[str, Any] | None = update.get("robot")
            if not view or view.get("robot_id") != robot_id or view.get("state_vector") is None:
                continue
            state = np.asarray([np.nan if v is None else v for v in view["state_vector"]], np.float64)
            if not np.isfinite(state).all():
                continue
            if view.get("episode_id", "") != episode_id:  # a new episode: watch it from its start
                if holding:
                    self._command(live.hand_back, robot_id, stats, "episode ended")
                    holding = False
                episode_id = view.get("episode_id", "")
                last_step = int(view.get("step") or 0)
                operator.reset(state)
                stats.episodes += 1
                continue
            step = int(view.get("step") or 0)
            if step == last_step:
                continue  # no new telemetry since the last update
            last_step = step
            proposal = view.get("policy_action")
            proposed = None
            if proposal is not None and None not in proposal and len(proposal) == 4:
                proposed = np.asarray(proposal, np.float64)
            decision = operator.step(state, proposed, {"success": view.get("outcome") == "success"})
            if decision.intervening and not holding:
                holding = self._command(live.take_over, robot_id, stats, "stalled")
                stats.take_overs += holding
            elif not decision.intervening and holding:
                self._command(live.hand_back, robot_id, stats, "back on track")
                stats.hand_backs += 1
                holding = False
            if holding and decision.action is not None:
                live.teleop(robot_id, [float(v) for v in decision.action])
                stats.teleops += 1
        if holding:
            self._command(live.hand_back, robot_id, stats, "operator leaving")

    @staticmethod
    def _command(action: Any, robot_id: str, stats: ConsoleOperatorStats, reason: str) -> bool:
        try:
            action(robot_id, reason=reason)
        except ConsoleCommandError as exc:  # e.g. a person holds the robot: leave it to them
            stats.refused.append(str(exc))
            log.info("console operator: %s", exc)
            return False
        return True
