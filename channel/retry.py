"""Retry policy shared by every outbound call: what may be retried, and when."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
import urllib3.exceptions

MAX_ATTEMPTS = 5
BASE_DELAY = 0.25
MAX_DELAY = 4.0


MAX_RETRY_AFTER_SECONDS = 3600.0
"""The longest wait a ``Retry-After`` can ask of us; a larger one is read as this."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None.

    Whatever the header holds, the answer is None or 0 to MAX_RETRY_AFTER_SECONDS: a
    provider's odd header must never turn a provably unsent attempt into an error.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit() alone also takes "²"
        return (
            MAX_RETRY_AFTER_SECONDS if len(text) > 6 else min(float(text), MAX_RETRY_AFTER_SECONDS)
        )
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff for attempt 1, 2, ...; spreads retries of many callers."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def never_sent(exc: requests.RequestException) -> bool:
    """Whether a failed request provably never reached the server (connect or TLS failure).

    Only such failures may be retried blindly: after a read timeout or a broken
    connection the server may have acted on the request.
    """
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, urllib3.exceptions.NewConnectionError)
