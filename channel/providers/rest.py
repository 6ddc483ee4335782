"""One POST to a provider's REST API, and what its failures mean for a resend.

Every provider adapter needs the same three readings of a failed request: it never left
(connect or TLS failure: ``Unreachable``, resend freely), it may have been acted on (read
timeout, reset: ``OutcomeUnknown``, never resend blindly), or it may have been acted on
but the provider dedupes a repeat of it (an idempotency key: ``SafeToRepeat``).
"""

from __future__ import annotations

from typing import Any

import requests

from channel.budget import Budget
from channel.providers.base import OutcomeUnknown, SafeToRepeat, Unreachable
from channel.retry import never_sent, parse_retry_after

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
"""Leaves room in the 20 s budget for one repeat after a read timeout."""


def post_once(
    session: requests.Session,
    url: str,
    *,
    provider: str,
    budget: Budget,
    deduped: bool,
    read_timeout: float = READ_TIMEOUT,
    **kwargs: Any,
) -> requests.Response:
    """POST once within ``budget``; a failure raises what it means for a resend.

    ``deduped``: the request carries the provider's idempotency key, so a repeat cannot
    create a second message (SafeToRepeat instead of OutcomeUnknown).
    """
    try:
        return session.post(url, timeout=budget.timeout(CONNECT_TIMEOUT, read_timeout), **kwargs)
    except requests.RequestException as exc:
        kind = type(exc).__name__
        if never_sent(exc):
            raise Unreachable(f"could not connect to {provider}: {kind}") from exc
        # Anything else (read timeout, reset, a reply cut off mid-body) came after the
        # request went out: the provider may have created the message.
        if deduped:
            raise SafeToRepeat(f"no usable answer from {provider}: {kind}") from exc
        raise OutcomeUnknown(f"no usable answer from {provider}: {kind}") from exc


def json_object(reply: requests.Response) -> dict[str, Any]:
    """The reply's JSON object, or an empty one when the body is not a JSON object."""
    try:
        body = reply.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return {}
    return body if isinstance(body, dict) else {}


def retry_after(reply: requests.Response) -> float | None:
    """Seconds the reply's ``Retry-After`` asks us to wait, or None."""
    return parse_retry_after(reply.headers.get("Retry-After"))
