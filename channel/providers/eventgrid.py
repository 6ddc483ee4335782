"""Event Grid webhook delivery: its shared secret, its handshakes and its event batches.

Event Grid delivers a provider's events (ACS's SMS events) in the Event Grid schema or
as CloudEvents 1.0, one event or a batch per call. It signs nothing: the subscription
URL carries ``CHANNEL_WEBHOOK_SECRET`` as the query parameter ``secret``
(``base.verify_query_secret``, shared with Sinch).
https://learn.microsoft.com/azure/event-grid/webhook-event-delivery
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from channel.errors import BadRequest
from channel.logs import printable
from channel.providers.base import Webhook, WebhookReply

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH_BYTES = 1024 * 1024
"""Event Grid delivers batches of up to 1 MB (and drops an event answered 413)."""
VALIDATION_EVENT = "microsoft.eventgrid.subscriptionvalidationevent"


def handshake(hook: Webhook) -> WebhookReply | None:
    """The answer to Event Grid's subscription validation, in either schema."""
    if hook.method.upper() == "OPTIONS":
        # CloudEvents 1.0 abuse protection: grant the origin that asks.
        origin = hook.headers.get("webhook-request-origin")
        if not origin:
            return WebhookReply(status=200, headers={"Allow": "POST, OPTIONS"})
        return WebhookReply(
            status=200,
            headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"},
        )
    for event in _events(hook):
        if _type(event) == VALIDATION_EVENT:
            code = _data(event).get("validationcode")
            if not isinstance(code, str) or not code:
                raise BadRequest("data.validationCode", "is required")
            log.info("event grid subscription validated on %s", urlsplit(hook.url).path)
            return WebhookReply(
                status=200,
                body=json.dumps({"validationResponse": code}),
                mimetype="application/json",
            )
    return None


def each_event(
    hook: Webhook,
    wanted: str,
    read: Callable[[Mapping[str, Any]], T],
    *,
    routes: Mapping[str, str],
) -> list[T]:
    """``read`` applied to the data of each ``wanted`` event, every other event logged.

    ``read`` gets the event's data with its keys in lower case. An event type found in
    ``routes`` belongs on the route it names (a misconfigured subscription: a warning).
    A malformed event among good ones is skipped (answering 400 would make Event Grid
    drop the whole batch); a call with no usable event at all is a 400.
    """
    found: list[T] = []
    malformed: list[BadRequest] = []
    for event in _events(hook):
        kind = _type(event)
        if kind == wanted:
            try:
                found.append(read(_data(event)))
            except BadRequest as exc:
                malformed.append(exc)
                log.warning("event %s skipped: %s", _text_or(event, "id"), exc.detail)
        elif kind in routes:
            log.warning(
                "a %s event reached %s: it is handled at /api/%s (check the Event Grid "
                "subscription's endpoint and event types)",
                kind,
                urlsplit(hook.url).path,
                routes[kind],
            )
        else:
            log.info("event type %s acknowledged and ignored", printable(kind) or "(none)")
    if malformed and not found:
        raise malformed[0]
    return found


def _events(hook: Webhook) -> list[dict[str, Any]]:
    """The events of a call: an Event Grid array, a CloudEvents batch or a single event."""
    try:
        body = json.loads(hook.body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "not a JSON event or array of events") from None
    except RecursionError:  # e.g. "[" * 60000: deeper than the parser goes
        raise BadRequest("body", "JSON nested too deeply") from None
    events = body if isinstance(body, list) else [body]
    if not all(isinstance(event, dict) for event in events):
        raise BadRequest("body", "every event must be a JSON object")
    return [_folded(event) for event in events]


def _folded(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping with its keys in lower case, so they are read case-insensitively.

    The Event Grid schema writes data keys in camelCase, CloudEvents in PascalCase (and
    ``specversion`` as ``specVersion`` at times).
    """
    return {str(key).lower(): value for key, value in mapping.items()}


def _type(event: Mapping[str, Any]) -> str:
    kind = event.get("eventtype", event.get("type"))
    return kind.lower() if isinstance(kind, str) else ""


def _data(event: Mapping[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    if not isinstance(data, dict):
        raise BadRequest("data", "every event must carry a data object")
    return _folded(data)


def _text_or(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return printable(value) if isinstance(value, str) else "-"
