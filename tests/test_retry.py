"""The retry policy: Retry-After read defensively, whatever a provider or Dataverse sends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channel.retry import MAX_RETRY_AFTER_SECONDS, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("30", 30.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Sun, 01 Mar 2026 12:01:30 GMT", 90.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("3601", MAX_RETRY_AFTER_SECONDS),
        ("1" * 400, MAX_RETRY_AFTER_SECONDS),  # float() of it is inf, and round(inf) raises
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_SECONDS),
        ("\u00b2", None),  # str.isdigit() says yes, float() says no
        ("\u0663\u0660", None),  # Arabic-Indic digits: not HTTP's delta-seconds
        ("-1", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_retry_after_is_none_or_within_bounds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
