"""What the fleet's episodes say over time: per-robot recent figures and the series the page plots.

Read from the episode store's metadata only (no step array is opened): the outcome, the number of steps and
the operator frame ranges each robot records (`sop.episode.OPERATOR_FRAMES`). An online episode counts as an
*autonomous success* when it succeeded with no frame driven by an operator; the *intervention rate* is the
share of frames an operator drove. Offline demonstrations are not fleet behaviour and are left out.

Robots record the ranges with every online episode (`{}` when the policy drove throughout). An episode
without them (a robot older than the ranges) counts its frames as policy-driven; `unattributed` says how many
such episodes there are, so nobody mistakes a missing record for a clean run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sop.data.episode_store_format import EpisodeInfo
from sop.episode import OPERATOR_FRAMES, EpisodeError, Outcome, Source, operator_frames

RECENT_EPISODES: Final = 20  # the fleet table's window per robot
MAX_SERIES_POINTS: Final = 60
REFRESH_INTERVAL_S: Final = 2.0


@dataclass(frozen=True)
class EpisodeFigures:
    robot_id: str
    task: str
    ended_at: float
    num_steps: int
    success: bool
    operator_frames: int
    attributed: bool  # the episode records who drove which frames

    @property
    def autonomous_success(self) -> bool:
        return self.success and self.operator_frames == 0


def figures_of(info: EpisodeInfo) -> EpisodeFigures:
    driven, attributed = 0, OPERATOR_FRAMES in info.extra
    if attributed:
        try:
            ranges = operator_frames(info.extra, info.num_steps)
        except EpisodeError:
            attributed = False
        else:
            driven = sum(stop - start for spans in ranges.values() for start, stop in spans)
    return EpisodeFigures(
        info.robot_id,
        info.task,
        info.ended_at,
        info.num_steps,
        info.outcome is Outcome.SUCCESS,
        driven,
        attributed,
    )


def online_figures(infos: Iterable[EpisodeInfo]) -> list[EpisodeFigures]:
    """The fleet's own episodes, oldest first."""
    figures = [figures_of(info) for info in infos if info.source is Source.ONLINE]
    figures.sort(key=lambda f: f.ended_at)
    return figures


def _rates(figures: Sequence[EpisodeFigures]) -> dict[str, Any]:
    frames = sum(f.num_steps for f in figures)
    return {
        "episodes": len(figures),
        "autonomous_success": sum(f.autonomous_success for f in figures) / len(figures) if figures else None,
        "success": sum(f.success for f in figures) / len(figures) if figures else None,
        "intervention_rate": sum(f.operator_frames for f in figures) / frames if frames else None,
    }


def recent_by_robot(
    figures: Sequence[EpisodeFigures], window: int = RECENT_EPISODES
) -> dict[str, dict[str, Any]]:
    """Per robot: autonomous success, success and intervention rate over its last `window` episodes."""
    by_robot: dict[str, list[EpisodeFigures]] = {}
    for figure in figures:
        by_robot.setdefault(figure.robot_id, []).append(figure)
    return {robot_id: _rates(episodes[-window:]) for robot_id, episodes in by_robot.items()}


def series(figures: Sequence[EpisodeFigures], points: int = MAX_SERIES_POINTS) -> dict[str, Any]:
    """The fleet's success and intervention rate over time: the online episodes cut into at most `points`
    consecutive groups of equal size (by end time), each plotted at its last episode's end time."""
    if not figures:
        return {"points": [], "episodes": 0, "unattributed": 0}
    size = max(1, math.ceil(len(figures) / points))
    result = []
    for start in range(0, len(figures), size):
        group = figures[start : start + size]
        result.append({"t": group[-1].ended_at, **_rates(group)})
    return {
        "points": result,
        "episodes": len(figures),
        "episodes_per_point": size,
        "unattributed": sum(not f.attributed for f in figures),
    }


class FleetHistory:
    """The figures above for the console, recomputed at most every `refresh_interval_s` (each page update
    asks; an episode's metadata is parsed once, when it first appears in the store)."""

    def __init__(
        self,
        list_episodes: Callable[[], Iterable[EpisodeInfo]],
        refresh_interval_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._list_episodes = list_episodes
        self.refresh_interval_s = refresh_interval_s
        self._known: dict[str, EpisodeFigures | None] = {}  # None: not an online episode
        self._lock = threading.Lock()
        self._refreshed_at = -math.inf
        self._recent: dict[str, dict[str, Any]] = {}
        self._series: dict[str, Any] = series([])

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at < self.refresh_interval_s:
            return
        self._refreshed_at = now
        present: dict[str, EpisodeFigures | None] = {}
        for info in self._list_episodes():
            known = self._known.get(info.episode_id, ...)
            if known is ...:
                known = figures_of(info) if info.source is Source.ONLINE else None
            present[info.episode_id] = known
        self._known = present  # episodes the store dropped are forgotten
        figures = sorted((f for f in present.values() if f is not None), key=lambda f: f.ended_at)
        self._recent = recent_by_robot(figures)
        self._series = series(figures)

    def recent(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._refresh()
            return self._recent

    def series(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            return self._series
