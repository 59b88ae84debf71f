"""Client strings in logs (sop/safe_logging.py): quoted, cut, control and bidi characters escaped; throttling."""

from __future__ import annotations

import logging

import pytest

from sop.safe_logging import RateLimitedLog, client_str


@pytest.mark.parametrize(
    ("raw", "forbidden"),
    [
        ("robot-1\n2026-01-01 ERROR forged", "\n"),
        ("a\rb", "\r"),
        ("\u202etxt.exe", "\u202e"),
        ("zero\u200bwidth", "\u200b"),
        ("tab\there", "\t"),
        ("esc\x1b[31mred", "\x1b"),
    ],
)
def test_control_and_format_characters_are_escaped(raw: str, forbidden: str) -> None:
    shown = client_str(raw)
    assert forbidden not in shown
    assert f"\\u{ord(forbidden):04x}" in shown


def test_long_strings_are_cut_and_say_how_long_they_were() -> None:
    shown = client_str("x" * 10_000)
    assert len(shown) < 120
    assert "10000 chars" in shown


def test_plain_names_stay_readable() -> None:
    assert client_str("reach-v3") == "'reach-v3'"
    assert client_str("it's") == "'it\\'s'"


def test_repeated_warnings_are_throttled_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    throttled = RateLimitedLog(logging.getLogger("test.throttle"), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        assert throttled.warning("kind-a", "bad upload %d", 1)
        for i in range(50):
            assert not throttled.warning("kind-a", "bad upload %d", i)
        assert throttled.warning("kind-b", "another kind")
    assert [r.getMessage() for r in caplog.records] == ["bad upload 1", "another kind"]
    throttled.interval_s = 0.0
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        throttled.warning("kind-a", "bad upload again")
    assert "50 more like this" in caplog.records[-1].getMessage()
