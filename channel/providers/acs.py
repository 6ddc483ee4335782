"""Azure Communication Services SMS: sending over plain REST, and Event Grid webhooks.

Sending is one ``POST {endpoint}/sms`` per message, signed with the resource's access
key (HMAC-SHA256) or authorised with a managed-identity token. Each message carries an
ACS repeatability pair derived from our RequestId, so ACS executes it at most once
however often it is POSTed: an attempt whose answer was lost may be repeated at once.

Delivery reports and inbound messages reach us as Event Grid events; what is Event
Grid's (schemas, handshakes, batches, the shared secret) is in ``eventgrid``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from channel.budget import Budget
from channel.contracts import MAX_REQUEST_ID_CHARS
from channel.errors import BadRequest, NotConfigured
from channel.logs import printable
from channel.phone import MAX_NUMBER_CHARS, international, mask
from channel.providers import eventgrid
from channel.providers.base import (
    MAX_ID_CHARS,
    Accepted,
    DeliveryState,
    OutboundSms,
    OutcomeUnknown,
    OwnSettings,
    ProviderMisconfigured,
    ProviderSpec,
    ReceivedSms,
    Rejected,
    SafeToRepeat,
    SendOutcome,
    StatusReport,
    Throttled,
    Tokens,
    Webhook,
    WebhookReply,
    received_text,
    unsendable,
    verify_query_secret,
    webhook_field,
)
from channel.providers.rest import READ_TIMEOUT, json_object, post_once, retry_after

if TYPE_CHECKING:
    from channel.config import Settings, SettingsReader
    from channel.identity import TokenSource

log = logging.getLogger(__name__)

# The newest stable version of the SMS data plane (azure-rest-api-specs,
# specification/communication/data-plane/Sms/stable/2026-01-23). It keeps every field we
# send (from, smsRecipients[].to / repeatabilityRequestId / repeatabilityFirstSent,
# message, smsSendOptions.enableDeliveryReport / tag) and the per-recipient 202 reply of
# 2021-03-07 (the version azure-communication-sms 1.1 still pins); what it adds
# (deliveryReportTimeoutInSeconds, messagingConnect, the opt-out operations) is optional
# and unused here.
API_VERSION = "2026-01-23"
SCOPE = "https://communication.azure.com//.default"
"""Entra ID scope of ACS, double slash included, as azure-communication-sms writes it."""
MAX_RECEIVED_CHARS = 2048
"""The longest SMS text ACS handles (2,048 bytes, auto-concatenated): a reply is cut there."""
REPEATABILITY_NAMESPACE = uuid.UUID("7e65c13f-975c-4865-8225-e913449bd418")
"""Fixed namespace of the UUIDv5 repeatabilityRequestId of each RequestId. Never change it:
a deployment with another one would not be deduped against attempts made before it."""
_SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"


def repeatability_request_id(request_id: str) -> str:
    """The repeatabilityRequestId of our RequestId: the same in every process, forever."""
    return str(uuid.uuid5(REPEATABILITY_NAMESPACE, request_id))


def http_date(timestamp: float) -> str:
    """RFC 1123 date in English (``Tue, 26 Mar 2019 16:06:51 GMT``) whatever the locale.

    ``strftime("%a, %d %b ...")`` would follow LC_TIME; ACS accepts only the English form.
    """
    return formatdate(timestamp, usegmt=True)


def hmac_headers(
    *, key: bytes, method: str, path_and_query: str, host: str, date: str, body: bytes
) -> dict[str, str]:
    """The headers of ACS's HMAC-SHA256 scheme for one request.

    The string to sign is the verb, the path and query, and ``x-ms-date;host;hash`` on
    three lines, the hash being of exactly the bytes sent (azure-communication-sms,
    HMACCredentialsPolicy).
    """
    content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    to_sign = f"{method}\n{path_and_query}\n{date};{host};{content_hash}"
    digest = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode("ascii")
    return {
        "x-ms-date": date,
        "x-ms-content-sha256": content_hash,
        "Authorization": f"HMAC-SHA256 SignedHeaders={_SIGNED_HEADERS}&Signature={signature}",
    }


class AcsProvider:
    """Sends one message per call to ACS's ``/sms`` operation."""

    id = "acs"

    def __init__(
        self,
        *,
        endpoint: str,
        session: requests.Session,
        access_key: bytes | None = None,
        tokens: TokenSource | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        if (access_key is None) == (tokens is None):
            raise ValueError("give exactly one of access_key and tokens")
        self.url = f"{endpoint.rstrip('/')}/sms?api-version={api_version}"
        parts = urlsplit(self.url)
        self._path_and_query = f"{parts.path}?{parts.query}"
        # The host as the endpoint names it, with its port when it has one: what the
        # official SDK signs (it strips only the scheme from the endpoint).
        self._host = parts.netloc
        self._key = access_key
        self._tokens = tokens
        self._session = session

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message and classify ACS's answer for our one recipient."""
        try:
            body = self.body(sms)
        except Exception as exc:  # nothing was sent: never taken for an unknown outcome
            raise unsendable(sms, "ACS", exc) from exc
        headers = self.headers(body)
        reply = post_once(
            self._session,
            self.url,
            provider="ACS",
            budget=budget,
            # A repeat carries the same repeatability pair, so ACS executes it only if
            # the first one never got there.
            deduped=True,
            read_timeout=READ_TIMEOUT,
            data=body,
            headers=headers,
        )
        return self._outcome(reply, sms)

    def body(self, sms: OutboundSms) -> bytes:
        """The exact bytes of the send request (what is hashed is what is sent)."""
        recipient = {
            "to": sms.to,
            # The same pair on every attempt that may repeat an earlier one, in any
            # process: ACS then executes the message once. The first-sent time is the
            # ledger's first_attempt_at (rendered the same way each time), not this
            # attempt's clock; it starts anew only after provably unsent attempts, which
            # keeps a late retry of a throttled request inside ACS's 5-minute window.
            "repeatabilityRequestId": repeatability_request_id(sms.correlation),
            "repeatabilityFirstSent": http_date(sms.first_attempt_at),
        }
        request = {
            "from": sms.sender,
            "smsRecipients": [recipient],
            "message": sms.text,
            # The tag comes back in the delivery report: our correlation (the RequestId).
            "smsSendOptions": {"enableDeliveryReport": True, "tag": sms.correlation},
        }
        return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def headers(self, body: bytes) -> dict[str, str]:
        """Content type and authentication for a request carrying ``body``."""
        headers = {"Content-Type": "application/json"}
        if self._key is not None:
            return headers | hmac_headers(
                key=self._key,
                method="POST",
                path_and_query=self._path_and_query,
                host=self._host,
                date=http_date(time.time()),
                body=body,
            )
        assert self._tokens is not None  # noqa: S101 - the constructor guarantees one of them
        try:
            token = self._tokens.token(SCOPE)
        except Exception as exc:  # azure-identity raises its own hierarchy
            # Before any POST: nothing was sent. Usually no identity or no role assigned.
            raise ProviderMisconfigured(
                f"no Entra ID token for ACS ({type(exc).__name__}): check the managed "
                "identity and its role on the Communication Services resource"
            ) from exc
        return headers | {"Authorization": f"Bearer {token}"}

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        if status == 429:
            raise Throttled(retry_after(reply))
        if status in (401, 403, 404):
            raise ProviderMisconfigured(
                f"ACS refused the request (HTTP {status}): check ACS_ENDPOINT and the access "
                "key or the managed identity's role"
            )
        if status == 409:  # a repeat while the first attempt is still being processed
            raise SafeToRepeat("ACS is still processing an earlier attempt")
        if status == 412:
            raise OutcomeUnknown(_REPEAT_WINDOW)
        if status >= 500:
            raise SafeToRepeat(
                f"ACS answered HTTP {status}",
                retry_after=retry_after(reply),
            )
        body = json_object(reply)
        if 400 <= status < 500:
            error = body.get("error")
            reason = str(error.get("message") or "") if isinstance(error, dict) else ""
            log.info("acs rejected the message to %s: HTTP %s", mask(sms.to), status)
            log.debug("acs rejection detail: %s", reason)
            return Rejected(code=str(status), reason=reason)
        items = body.get("value")
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise SafeToRepeat(f"ACS answered HTTP {status} without a result per recipient")
        return self._recipient(items[0], reply, sms)

    def _recipient(
        self, item: dict[str, Any], reply: requests.Response, sms: OutboundSms
    ) -> SendOutcome:
        """ACS answers 202 even when the recipient failed: its own status decides."""
        code = item.get("httpStatusCode")
        code = code if isinstance(code, int) else None
        message_id = item.get("messageId")
        if item.get("successful") is True and isinstance(message_id, str) and message_id:
            log.info("acs accepted %s for %s", message_id, mask(sms.to))
            return Accepted(message_id)
        if str(item.get("repeatabilityResult") or "").lower() == "rejected" or code == 412:
            # ACS refused to execute this repeat (not the recipient's fault): it cannot
            # tell us whether an earlier attempt was executed.
            raise OutcomeUnknown(_REPEAT_WINDOW)
        if code == 429:
            raise Throttled(retry_after(reply))
        if code in (401, 403):
            raise ProviderMisconfigured(f"ACS refused the recipient for our account (HTTP {code})")
        if code is None or code == 409 or code >= 500 or code < 400:
            raise SafeToRepeat(f"ACS answered HTTP {code} for the recipient")
        # 400: the number is invalid or unreachable; other 4xx are as permanent.
        # errorMessage may quote the number: keep it below INFO.
        log.info("acs rejected the message to %s: recipient HTTP %s", mask(sms.to), code)
        log.debug("acs rejection detail: %s", item.get("errorMessage"))
        return Rejected(code=str(code), reason=str(item.get("errorMessage") or ""))


_REPEAT_WINDOW = (
    "ACS refused to repeat an earlier attempt (its repeatability window is 5 minutes from "
    "the first attempt); whether that attempt was sent is unknown"
)


# -- Settings ----------------------------------------------------------------------------

AMBIGUOUS_GRACE_SECONDS = 60.0
"""A new attempt repeats the first one's repeatability pair, which ACS dedupes for 5
minutes after its first-sent time: the new attempt must come well within them."""


@dataclass(frozen=True)
class AcsSettings:
    """The ACS_* settings."""

    endpoint: str | None = None
    access_key: str | None = field(default=None, repr=False)


def read_settings(reader: SettingsReader) -> OwnSettings[AcsSettings]:
    """Read ACS_* and say what keeps ACS from sending."""
    own = AcsSettings(endpoint=reader.url("ACS_ENDPOINT"), access_key=reader.get("ACS_ACCESS_KEY"))
    problems, notes = [], []
    if reader.get("ACS_ENDPOINT") is None:  # a malformed one is a problem already
        problems.append("ACS_ENDPOINT is not set (provider acs)")
    if own.access_key is not None and not _is_base64(own.access_key):
        problems.append(
            "ACS_ACCESS_KEY is not base64: copy a Key of the resource (Keys blade), "
            "not its connection string"
        )
    if reader.get("CHANNEL_WEBHOOK_SECRET") is None:
        notes.append(
            "CHANNEL_WEBHOOK_SECRET not set: ACS delivery reports and replies "
            "(Event Grid) are refused until it is"
        )
    return OwnSettings(own, tuple(problems), tuple(notes))


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


def sender(
    own: AcsSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> AcsProvider:
    """Build the ACS adapter: HMAC with ACS_ACCESS_KEY, else the app's managed identity."""
    assert own.endpoint is not None  # noqa: S101 - read_settings guarantees it
    if own.access_key is not None:
        key = base64.b64decode(own.access_key)  # read_settings checked it is base64
        return AcsProvider(endpoint=own.endpoint, session=session, access_key=key)
    if tokens is None:
        raise NotConfigured(["ACS_ACCESS_KEY is not set and no managed identity is available"])
    return AcsProvider(endpoint=own.endpoint, session=session, tokens=tokens())


# -- Webhooks: ACS's SMS events, delivered by Event Grid (channel.providers.eventgrid) -----
# https://learn.microsoft.com/azure/event-grid/communication-services-telephony-sms-events

DELIVERY_REPORT_EVENT = "microsoft.communication.smsdeliveryreportreceived"
RECEIVED_EVENT = "microsoft.communication.smsreceived"
_ROUTE_OF = {DELIVERY_REPORT_EVENT: "delivery-report/acs", RECEIVED_EVENT: "inbound/acs"}


class AcsWebhooks:
    """Authenticates Event Grid calls by the shared secret and reads ACS's SMS events."""

    id = "acs"
    max_body_bytes = eventgrid.MAX_BATCH_BYTES

    def __init__(self, *, secret: str, default_region: str = "US") -> None:
        self._secret = secret.encode("utf-8")
        self.default_region = default_region

    def verify(self, hook: Webhook) -> None:
        """Accept the call only if its query carries ``secret`` equal to ours."""
        verify_query_secret(hook, self._secret)

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """The answer to Event Grid's subscription validation, in either schema."""
        return eventgrid.handshake(hook)

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """One report per SMSDeliveryReportReceived event; other events are acknowledged."""
        return eventgrid.each_event(hook, DELIVERY_REPORT_EVENT, self._report, routes=_ROUTE_OF)

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """One customer message per SMSReceived event; other events are acknowledged."""
        return eventgrid.each_event(hook, RECEIVED_EVENT, self._received, routes=_ROUTE_OF)

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """Any 2xx tells Event Grid the delivery succeeded."""
        return WebhookReply(status=200)

    def _report(self, data: Mapping[str, Any]) -> StatusReport:
        message_id = _text(data, "messageId")
        status = data.get("deliverystatus")
        status = status.strip() if isinstance(status, str) else ""
        if status.lower() == "delivered":
            state = DeliveryState.DELIVERED
        elif status.lower() == "failed":  # a delivery-report timeout is reported as Failed
            state = DeliveryState.NOT_DELIVERED
        else:
            state = DeliveryState.PENDING
        tag = data.get("tag")
        correlation = None
        if isinstance(tag, str) and tag:
            # Our RequestId, which never holds what webhook_field refuses.
            correlation = webhook_field(tag, "data.tag", MAX_REQUEST_ID_CHARS)
        return StatusReport(message_id, state, correlation, detail=printable(status))

    def _received(self, data: Mapping[str, Any]) -> ReceivedSms:
        message_id = _text(data, "messageId")
        customer = _text(data, "from", MAX_NUMBER_CHARS)
        ours = _text(data, "to", MAX_NUMBER_CHARS)
        raw = data.get("message")
        raw = raw if isinstance(raw, str) else ""
        text = received_text(raw, MAX_RECEIVED_CHARS)
        if text != raw:
            log.warning(
                "inbound %s: text of %d characters kept as %d valid ones (ACS's maximum is %d)",
                message_id,
                len(raw),
                len(text),
                MAX_RECEIVED_CHARS,
            )
        return ReceivedSms(
            message_id=message_id,
            customer=international(customer, self.default_region),
            our_number=international(ours, self.default_region),
            text=text,
        )


def _text(data: Mapping[str, Any], name: str, limit: int = MAX_ID_CHARS) -> str:
    value = data.get(name.lower())
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"data.{name}", "is required")
    return webhook_field(value.strip(), f"data.{name}", limit)


def webhooks(own: AcsSettings, settings: Settings) -> AcsWebhooks:
    """Build the webhook side of ACS: needs CHANNEL_WEBHOOK_SECRET."""
    if settings.webhook_secret is None:
        raise NotConfigured(
            ["CHANNEL_WEBHOOK_SECRET is not set: Event Grid calls for ACS cannot be authenticated"]
        )
    return AcsWebhooks(secret=settings.webhook_secret, default_region=settings.default_region)


SPEC = ProviderSpec(
    "acs",
    read_settings=read_settings,
    sender=sender,
    webhooks=webhooks,
    ambiguous_grace_seconds=AMBIGUOUS_GRACE_SECONDS,
)
