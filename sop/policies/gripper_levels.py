"""Per-task gripper commands found in the training data: which two values the robot sends, and where to cut.

RTI-DP sends a discrete gripper command. Pooling tasks breaks a global cut: Meta-World's gripper is driven by
an effort in [-1, 1], and the experts' commands differ per task (drawer-open -1 throughout, button-press +1,
push 0 while approaching and 0.6 to hold the puck, pick-place 0 and 1, peg-insert -1 and 0.6). With the action
normalized over the pool, the sign of the prediction cuts at effort 0, exactly where push's "relaxed"
command sits: the base policy closed its hand on most steps of held-out push episodes.

So each task gets its own two levels, the medians of the two sides of a two-means split of its recorded
gripper commands (demonstrations carry the expert's value plus noise), and the cut halfway between them. A task whose
expert never changes its command gets two levels within the noise of that one value, which is harmless:
either is what the expert sends. The levels live in the policy's config, so every checkpoint carries the
levels its training data implied; a task without levels (new to the policy) falls back to the sign in the
network's space.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Two-means iterations; a 1-D split converges in a handful.
_MAX_ITERATIONS = 50


@dataclass(frozen=True)
class GripperLevels:
    """One task's two gripper commands (environment units): `released` < `closed`."""

    task: str
    released: float
    closed: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.released) and np.isfinite(self.closed)):
            raise ValueError(
                f"gripper levels of {self.task!r} must be finite, got {self.released}, {self.closed}"
            )
        if self.released > self.closed:
            raise ValueError(
                f"gripper levels of {self.task!r}: released ({self.released}) must not exceed closed ({self.closed})"
            )

    @property
    def threshold(self) -> float:
        """Commands above this mean "closed"."""
        return (self.released + self.closed) / 2.0

    def as_tuple(self) -> tuple[str, float, float]:
        return (self.task, self.released, self.closed)


def two_level_split(values: npt.ArrayLike) -> tuple[float, float]:
    """The medians of the two sides of a 1-D two-means split (low, high); one distinct value gives it twice."""
    data = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if data.size == 0:
        raise ValueError("no gripper commands to find levels in")
    if not np.isfinite(data).all():
        raise ValueError("gripper commands contain NaN or infinite values")
    if data[0] == data[-1]:
        return float(data[0]), float(data[-1])
    # Started from the 10th and 90th percentiles, not the extremes: a rare third command (an extreme)
    # would otherwise claim a side of its own.
    low, high = float(np.percentile(data, 10)), float(np.percentile(data, 90))
    if low == high:
        low, high = float(data[0]), float(data[-1])
    for _ in range(_MAX_ITERATIONS):
        cut = (low + high) / 2.0
        below, above = data[data <= cut], data[data > cut]
        new_low = float(below.mean()) if below.size else low
        new_high = float(above.mean()) if above.size else high
        if new_low == low and new_high == high:
            break
        low, high = new_low, new_high
    # Each level is its side's median: a few commands of a third kind (push's expert reopening the
    # fingers at -1 now and then) must not drag the level the robot sends.
    cut = (low + high) / 2.0
    below, above = data[data <= cut], data[data > cut]
    return (
        float(np.median(below)) if below.size else low,
        float(np.median(above)) if above.size else high,
    )


def find_gripper_levels(
    actions_by_task: Mapping[str, Iterable[npt.ArrayLike]], gripper_index: int
) -> tuple[GripperLevels, ...]:
    """Each task's levels from its recorded (T, A) action arrays (e.g. one per episode), tasks sorted."""
    levels = []
    for task in sorted(actions_by_task):
        columns = [np.asarray(a, dtype=np.float64)[:, gripper_index] for a in actions_by_task[task]]
        if not columns:
            continue
        released, closed = two_level_split(np.concatenate(columns))
        levels.append(GripperLevels(task, released, closed))
    return tuple(levels)


def levels_by_task(entries: Iterable[tuple[str, float, float]]) -> dict[str, GripperLevels]:
    """The config's `gripper_levels` entries (task, released, closed) as a lookup."""
    return {str(task): GripperLevels(str(task), float(low), float(high)) for task, low, high in entries}
