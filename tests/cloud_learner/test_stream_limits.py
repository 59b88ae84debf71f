"""Per-robot stream caps (cloud_learner/stream_limits.py): counted per robot and kind, and in all."""

from __future__ import annotations

import pytest

from cloud_learner.stream_limits import StreamKind, StreamLimiter, StreamLimitExceeded, StreamLimitsConfig


def test_a_robot_gets_its_kind_limit_and_no_more_while_others_are_unaffected() -> None:
    limiter = StreamLimiter(StreamLimitsConfig(watch=2), max_streams=100)
    limiter.acquire("r1", StreamKind.WATCH)
    limiter.acquire("r1", StreamKind.WATCH)
    with pytest.raises(StreamLimitExceeded, match=r"server\.stream_limits\.watch = 2"):
        limiter.acquire("r1", StreamKind.WATCH)
    limiter.acquire("r2", StreamKind.WATCH)  # another robot
    limiter.acquire("r1", StreamKind.UPLOAD)  # another kind
    assert limiter.open_streams("r1") == 3
    assert limiter.open_streams(kind=StreamKind.WATCH) == 3
    assert limiter.refused() == {"watch": 1}


def test_released_slots_are_reusable() -> None:
    limiter = StreamLimiter(StreamLimitsConfig(operator=1), max_streams=100)
    for _ in range(5):
        with limiter.admit("r1", StreamKind.OPERATOR):
            assert limiter.open_streams("r1", StreamKind.OPERATOR) == 1
    assert limiter.open_streams() == 0


def test_the_server_wide_cap_keeps_threads_for_unary_calls() -> None:
    limiter = StreamLimiter(StreamLimitsConfig(), max_streams=3)
    for robot in ("a", "b", "c"):
        limiter.acquire(robot, StreamKind.WATCH)
    with pytest.raises(StreamLimitExceeded, match="unary_reserve_workers"):
        limiter.acquire("d", StreamKind.WATCH)
    limiter.release("a", StreamKind.WATCH)
    limiter.acquire("d", StreamKind.WATCH)


def test_a_release_without_acquire_is_a_bug_not_a_negative_count() -> None:
    limiter = StreamLimiter(StreamLimitsConfig(), max_streams=3)
    with pytest.raises(RuntimeError):
        limiter.release("a", StreamKind.FETCH)


@pytest.mark.parametrize("value", [0, -1])
def test_limits_below_one_are_refused_naming_the_key(value: int) -> None:
    with pytest.raises(ValueError, match=r"server\.stream_limits\.fetch"):
        StreamLimitsConfig(fetch=value)
