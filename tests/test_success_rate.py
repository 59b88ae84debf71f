"""Success rates and their Wilson 95 % intervals (`sop.success_rate`), checked against published values."""

from __future__ import annotations

import numpy as np
import pytest

from sop.success_rate import (
    SuccessCount,
    format_rate,
    format_stored_rate,
    format_success,
    pooled,
    successes_from_rate,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("successes", "episodes", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),
        (0, 20, (0.0, 0.1611)),
        (20, 20, (0.8389, 1.0)),
        (50, 100, (0.4038, 0.5962)),
        (62, 80, (0.6721, 0.8527)),  # BENCHMARKS.md's quick demo: 0.78 [0.67, 0.85]
        (1, 1, (0.2065, 1.0)),
    ],
)
def test_wilson_interval_matches_known_values(
    successes: int, episodes: int, expected: tuple[float, float]
) -> None:
    lo, hi = wilson_interval(successes, episodes)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= lo <= successes / episodes <= hi <= 1.0


def test_the_ends_are_exact_and_a_wider_z_widens() -> None:
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    lo95, hi95 = wilson_interval(30, 60)
    lo99, hi99 = wilson_interval(30, 60, z=2.576)
    assert lo99 < lo95 < 0.5 < hi95 < hi99
    assert wilson_interval(30, 60) == pytest.approx((1 - hi95, 1 - lo95))  # symmetric at p = 0.5
    assert wilson_interval(np.int64(3), np.int64(4)) == wilson_interval(3, 4)  # type: ignore[arg-type]  # numpy counts are counts


@pytest.mark.parametrize(
    ("successes", "episodes", "z", "error", "match"),
    [
        (1, 0, 1.96, ValueError, "episodes must be >= 1"),
        (-1, 5, 1.96, ValueError, r"successes must be in \[0, episodes=5\]"),
        (6, 5, 1.96, ValueError, r"successes must be in \[0, episodes=5\]"),
        (1, 5, 0.0, ValueError, "z must be a positive finite number"),
        (1, 5, float("nan"), ValueError, "z must be a positive finite number"),
        (0.5, 5, 1.96, TypeError, "successes must be an integer count"),
        (1, True, 1.96, TypeError, "episodes must be an integer count"),
    ],
)
def test_wilson_interval_refuses_what_is_not_a_count(
    successes: object, episodes: object, z: float, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        wilson_interval(successes, episodes, z)  # type: ignore[arg-type]


def test_the_printed_form() -> None:
    assert format_success(62, 80) == "0.78 [0.67, 0.85] (n=80)"
    assert format_success(12, 80, show_n=False) == "0.15 [0.09, 0.24]"
    assert format_success(1, 3, digits=3) == "0.333 [0.061, 0.792] (n=3)"
    assert format_rate(0.5, [0.25, 0.75], episodes=8) == "0.50 [0.25, 0.75] (n=8)"
    assert str(SuccessCount(20, 20)) == "1.00 [0.84, 1.00] (n=20)"


def test_the_mean_of_equal_sized_tasks_gets_the_pooled_interval() -> None:
    tasks = [SuccessCount(10, 20), SuccessCount(20, 20), SuccessCount(0, 20), SuccessCount(15, 20)]
    mean = pooled(tasks)
    assert mean == SuccessCount(45, 80)
    assert mean.rate == pytest.approx(np.mean([t.rate for t in tasks]))
    assert mean.ci95 == wilson_interval(45, 80)
    with pytest.raises(ValueError, match="different numbers of episodes"):
        pooled([SuccessCount(1, 10), SuccessCount(1, 20)])
    with pytest.raises(ValueError, match="no success counts"):
        pooled([])
    with pytest.raises(ValueError, match="successes must be in"):
        SuccessCount(3, 2)


def test_a_stored_rate_gets_its_interval_back_only_when_it_is_a_count() -> None:
    assert successes_from_rate(0.775, 80) == 62
    assert format_stored_rate(0.775, 80) == "0.78 [0.67, 0.85]"
    assert format_stored_rate(0.82, 80) == "0.82"  # 65.6 of 80: not a count, no interval
    assert format_stored_rate(0.5, None) == "0.50"
    with pytest.raises(ValueError, match="not a count out of 80"):
        successes_from_rate(0.82, 80)
