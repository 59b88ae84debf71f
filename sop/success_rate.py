"""Success rates with their uncertainty: k successes in n seeded episodes, and its Wilson 95 % score interval.

Evaluations here are small (20 to 80 episodes per task), so a bare rate hides how much two numbers can differ
by chance: 16/20 is 0.80 [0.58, 0.92]. Every place that reports a success rate (`sop sim eval`, the fleet
demo's report, the benchmarks) takes the interval and its printed form from this module.

Why Wilson and not the normal approximation p ± z·sqrt(p(1-p)/n): at 0/n or n/n the normal interval has zero
width, and near the ends it leaves [0, 1]; the Wilson score interval stays inside [0, 1], is never empty, and
holds its coverage for small n (Brown, Cai & DasGupta 2001).

The mean success over tasks that each ran the same number of episodes equals the pooled rate (all successes
over all episodes), and its interval here is the pooled Wilson interval. That treats the tasks as one
binomial; the mean of independent per-task rates varies less than that (sum p_i(1-p_i) <= T·p(1-p)), so the
pooled interval is a little wide, never too narrow.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Z_95: Final = 1.96  # the two-sided 95 % standard normal quantile, as the literature rounds it


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer count, got {value!r}")
    return int(value)


def wilson_interval(successes: int, episodes: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) for `successes` out of `episodes` (95 % at the default z)."""
    k, n = _count("successes", successes), _count("episodes", episodes)
    if n < 1:
        raise ValueError(f"episodes must be >= 1, got {n}: no interval for a rate of nothing")
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, episodes={n}], got {k}")
    if not (isinstance(z, numbers.Real) and math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive finite number, got {z!r}")
    p = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    # At k = 0 and k = n the bounds are exactly 0 and 1; the formula only gets there up to rounding.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


@dataclass(frozen=True)
class SuccessCount:
    """`successes` of `episodes` evaluated episodes: what a rate and its interval are computed from."""

    successes: int
    episodes: int

    def __post_init__(self) -> None:
        wilson_interval(self.successes, self.episodes)  # the same checks, one place

    @property
    def rate(self) -> float:
        return self.successes / self.episodes

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def __str__(self) -> str:
        return format_success(self.successes, self.episodes)


def pooled(counts: Iterable[SuccessCount]) -> SuccessCount:
    """All successes over all episodes of tasks that each ran the same number of episodes; its rate is the
    mean of the per-task rates and its `ci95` the interval reported for that mean (see the module docstring).
    Unequal episode counts are refused: then the mean of the rates is not the pooled rate."""
    counts = list(counts)
    if not counts:
        raise ValueError("pooled: no success counts to pool")
    sizes = sorted({c.episodes for c in counts})
    if len(sizes) > 1:
        raise ValueError(
            f"pooled: the tasks ran different numbers of episodes ({sizes}); the mean of their rates has no "
            "pooled interval — evaluate every task on the same number of episodes"
        )
    return SuccessCount(sum(c.successes for c in counts), sum(c.episodes for c in counts))


def format_rate(rate: float, interval: Sequence[float], episodes: int | None = None, digits: int = 2) -> str:
    """A stored rate and interval as printed: `0.78 [0.67, 0.85]`, with ` (n=80)` when `episodes` is given."""
    lo, hi = interval
    text = f"{rate:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text if episodes is None else f"{text} (n={episodes})"


def format_success(successes: int, episodes: int, digits: int = 2, show_n: bool = True) -> str:
    """`0.78 [0.67, 0.85] (n=80)`: the rate, its Wilson 95 % interval and the number of episodes."""
    interval = wilson_interval(successes, episodes)
    return format_rate(successes / episodes, interval, episodes if show_n else None, digits)


def successes_from_rate(rate: float, episodes: int) -> int:
    """The count behind a stored rate k/n (reports that kept only the rate); refuses a rate no count gives."""
    n = _count("episodes", episodes)
    if n < 1:
        raise ValueError(f"episodes must be >= 1, got {n}")
    k = round(rate * n)
    if not 0 <= k <= n or abs(k - rate * n) > 1e-6 * n:
        raise ValueError(f"a success rate of {rate!r} is not a count out of {n} episodes")
    return int(k)


def format_stored_rate(rate: float, episodes: int | None, digits: int = 2) -> str:
    """A rate kept without its count (a benchmark's results.json, an older run's summary), with its interval
    when it is a count out of `episodes` (the mean of tasks that each ran the same episodes is one, out of
    all of them), else as the bare rate."""
    if episodes is not None:
        try:
            return format_success(successes_from_rate(rate, episodes), episodes, digits, show_n=False)
        except (TypeError, ValueError):
            pass  # not a count out of `episodes`: no interval to give
    return f"{rate:.{digits}f}"
