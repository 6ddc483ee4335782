"""Telnyx Messaging v2: idempotent sending, and its Ed25519-signed webhooks.

Sending is one ``POST {base}/v2/messages`` per message with the API key as bearer token.
Every attempt of a RequestId carries the same ``Idempotency-Key`` and byte-identical body,
so Telnyx executes it at most once and answers a repeat with the first answer (for 24
hours): an attempt whose answer was lost may be repeated at once, as with ACS.
(https://developers.telnyx.com/docs/development/api-fundamentals/idempotency)

Webhooks are signed: ``telnyx-signature-ed25519`` is the Ed25519 signature of
``"{telnyx-timestamp}|{raw body}"``, checked with the account's public key, the timestamp
within 5 minutes. Telnyx echoes nothing of ours, only its message id: the ledger records
which RequestId each id belongs to when the send returns (see ``Accepted``).
(https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from channel.budget import Budget
from channel.config import is_guid
from channel.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from channel.phone import mask
from channel.providers.base import (
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
    webhook_json,
)
from channel.providers.rest import json_object, post_once, retry_after

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from channel.config import Settings, SettingsReader

log = logging.getLogger(__name__)

IDEMPOTENCY_NAMESPACE = uuid.UUID("3b0f8a52-9d1e-4c6b-a7e5-2f4d8c1b6a90")
"""Fixed namespace of the UUIDv5 Idempotency-Key of each RequestId. Never change it: a
deployment with another one would not be deduped against attempts made before it."""
TIMESTAMP_TOLERANCE = 300

# https://support.telnyx.com/en/articles/6505121 and the opt-out guide
_PERMANENT_CODES = {10002, 40300}
"""Invalid phone number; blocked because the recipient sent STOP."""
_TRANSIENT_CODES = {10007}
"""Unexpected error, "retry": the request may have been acted on, and is deduped."""
_CREDENTIAL_CODES = {10009}


def idempotency_key(request_id: str) -> str:
    """The Idempotency-Key of our RequestId: the same in every process, forever.

    A UUID fits Telnyx's key pattern whatever characters the RequestId holds.
    """
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, request_id))


class TelnyxProvider:
    """Sends one message per call to Telnyx's ``/v2/messages``."""

    id = "telnyx"

    def __init__(
        self,
        *,
        api_key: str,
        session: requests.Session,
        base_url: str,
        messaging_profile_id: str | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v2/messages"
        self._authorization = f"Bearer {api_key}"
        self._profile = messaging_profile_id
        self._session = session

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message and classify Telnyx's answer."""
        reply = post_once(
            self._session,
            self.url,
            provider="Telnyx",
            budget=budget,
            deduped=True,
            data=self.body(sms),
            headers={
                "Authorization": self._authorization,
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Idempotency-Key": idempotency_key(sms.correlation),
            },
        )
        return self._outcome(reply, sms)

    def body(self, sms: OutboundSms) -> bytes:
        """The exact bytes of the send request: the same for every attempt of a RequestId.

        Telnyx treats a repeat of a key with a body that differs by one byte as a
        conflict (422), so the encoding is fixed.
        """
        request = {"from": sms.sender, "to": sms.to, "text": sms.text}
        if sms.status_callback_url is not None:
            request["webhook_url"] = sms.status_callback_url
        if self._profile is not None:
            request["messaging_profile_id"] = self._profile
        return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = json_object(reply)
        if 200 <= status < 300:
            data = body.get("data")
            message_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(message_id, str) or not message_id:
                raise SafeToRepeat(f"Telnyx answered {status} without a message id")
            log.info("telnyx accepted %s for %s", message_id, mask(sms.to))
            return Accepted(message_id, correlated_by_id=SPEC.correlated_by_id)
        codes = _error_codes(body)
        if codes & _PERMANENT_CODES:
            # Telnyx's detail may quote the recipient's number: keep it below INFO.
            log.info("telnyx rejected the message to %s: HTTP %s %s", mask(sms.to), status, codes)
            log.debug("telnyx rejection detail: %s", body.get("errors"))
            return Rejected(code=str(min(codes & _PERMANENT_CODES)), reason=_title(body))
        if status == 429:
            raise Throttled(retry_after(reply))
        if status in (401, 403, 404) or codes & _CREDENTIAL_CODES:
            raise ProviderMisconfigured(
                f"Telnyx refused the request (HTTP {status}, codes {sorted(codes)}): check "
                "TELNYX_API_KEY, TELNYX_MESSAGING_PROFILE_ID and the sender number"
            )
        if status >= 500 or status == 409 or codes & _TRANSIENT_CODES:
            # 409: an earlier attempt with this key is still being processed.
            raise SafeToRepeat(f"Telnyx answered HTTP {status}", retry_after=retry_after(reply))
        if status == 422 or status < 400:
            # 422 is also how Telnyx answers a repeat of a key whose first attempt it
            # executed (with another body): the message may be out, so never NotSent.
            raise OutcomeUnknown(f"Telnyx answered HTTP {status} (codes {sorted(codes)})")
        log.info("telnyx rejected the message to %s: HTTP %s %s", mask(sms.to), status, codes)
        log.debug("telnyx rejection detail: %s", body.get("errors"))
        return Rejected(code=str(min(codes, default=status)), reason=_title(body))


def _error_codes(body: dict[str, Any]) -> set[int]:
    """The codes of Telnyx's ``{"errors": [{"code": "40300", ...}]}`` (strings or ints)."""
    errors = body.get("errors")
    codes = set()
    for error in errors if isinstance(errors, list) else []:
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
            codes.add(int(code))
    return codes


def _title(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    return str(first.get("title") or "") if isinstance(first, dict) else ""


# -- Settings ----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.telnyx.com"
AMBIGUOUS_GRACE_SECONDS = 60.0
"""Telnyx dedupes an Idempotency-Key for 24 hours: a new attempt is as safe as with ACS,
so as soon."""


@dataclass(frozen=True)
class TelnyxSettings:
    """The TELNYX_* settings."""

    api_key: str | None = field(default=None, repr=False)
    public_key: str | None = None
    messaging_profile_id: str | None = None
    base_url: str = DEFAULT_BASE_URL


def read_settings(reader: SettingsReader) -> OwnSettings[TelnyxSettings]:
    """Read TELNYX_* and say what keeps Telnyx from sending."""
    own = TelnyxSettings(
        api_key=reader.get("TELNYX_API_KEY"),
        public_key=reader.get("TELNYX_PUBLIC_KEY"),
        messaging_profile_id=reader.get("TELNYX_MESSAGING_PROFILE_ID"),
        base_url=reader.url("TELNYX_BASE_URL") or DEFAULT_BASE_URL,
    )
    problems = []
    if own.api_key is None:
        problems.append("TELNYX_API_KEY is not set (provider telnyx)")
    if own.public_key is None:
        problems.append(
            "TELNYX_PUBLIC_KEY is not set (provider telnyx): delivery reports and "
            "replies cannot be verified"
        )
    elif not is_ed25519_public_key(own.public_key):
        problems.append(
            "TELNYX_PUBLIC_KEY is not a base64 Ed25519 public key (32 bytes): copy the "
            "Public Key of the Telnyx portal's Keys & Credentials page"
        )
    profile = own.messaging_profile_id
    if profile is not None and not is_guid(profile):
        problems.append("TELNYX_MESSAGING_PROFILE_ID must be a GUID")
    return OwnSettings(own, tuple(problems))


def is_ed25519_public_key(value: str) -> bool:
    """True for a base64 string of 32 bytes (the form Telnyx shows its public key in)."""
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except ValueError:
        return False


def sender(
    own: TelnyxSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> TelnyxProvider:
    """Build the Telnyx adapter from TELNYX_* settings (read_settings checked them)."""
    assert own.api_key is not None  # noqa: S101 - read_settings guarantees it
    return TelnyxProvider(
        api_key=own.api_key,
        session=session,
        base_url=own.base_url,
        messaging_profile_id=own.messaging_profile_id,
    )


# -- Webhooks: message.sent / message.finalized and message.received --------------------

FINALIZED = "message.finalized"
RECEIVED = "message.received"
_DELIVERED = {"delivered"}
_NOT_DELIVERED = {"sending_failed", "delivery_failed", "expired"}
"""Final failures. ``delivery_unconfirmed`` is final for Telnyx but says nothing of the
handset: it stays intermediate (no notification), as the SPEC says."""


class TelnyxWebhooks:
    """Verifies Telnyx's Ed25519 signature and reads its messaging events."""

    id = "telnyx"
    # One event per webhook (a message's JSON): a few KiB, well under this limit.
    max_body_bytes = 64 * 1024

    def __init__(self, *, public_key: str, clock: Callable[[], float] = time.time) -> None:
        # cryptography: imported by the process that uses Telnyx only.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._key: Ed25519PublicKey = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(public_key)
        )
        self._clock = clock

    def verify(self, hook: Webhook) -> None:
        """Accept the call only if Telnyx signed this timestamp and this exact body."""
        from cryptography.exceptions import InvalidSignature

        signature = hook.headers.get("telnyx-signature-ed25519", "").strip()
        timestamp = hook.headers.get("telnyx-timestamp", "").strip()
        if not signature or not timestamp:
            raise Unauthorized("the telnyx-signature-ed25519 or telnyx-timestamp header is missing")
        if not timestamp.isdigit() or abs(self._clock() - int(timestamp)) > TIMESTAMP_TOLERANCE:
            raise Forbidden("the telnyx-timestamp is not within 5 minutes of now")
        try:
            raw = base64.b64decode(signature, validate=True)
            self._key.verify(raw, timestamp.encode("ascii") + b"|" + hook.body)
        except (binascii.Error, ValueError, InvalidSignature):
            raise Forbidden("the telnyx-signature-ed25519 does not match") from None

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """Telnyx has no subscription handshake."""
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The status of a message.sent / message.finalized event, named by message id."""
        kind, payload = _event(hook)
        if kind == RECEIVED:
            log.warning(
                "a message.received event reached the delivery-report route: set the "
                "messaging profile's inbound webhook URL to /api/inbound/telnyx"
            )
            return []
        if not kind.startswith("message."):
            log.info("event type %s acknowledged and ignored", kind or "(none)")
            return []
        message_id = _text(payload, "id", "data.payload.id")
        status = _recipient_status(payload)
        if kind == FINALIZED and status in _DELIVERED:
            state = DeliveryState.DELIVERED
        elif kind == FINALIZED and status in _NOT_DELIVERED:
            state = DeliveryState.NOT_DELIVERED
        else:  # message.sent, queued, sending, sent, delivery_unconfirmed, any new one
            state = DeliveryState.PENDING
        return [
            StatusReport(
                message_id, state, None, f"{kind} {status}", correlated_by_id=SPEC.correlated_by_id
            )
        ]

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer's message of a message.received event; other events are ignored."""
        kind, payload = _event(hook)
        if kind != RECEIVED:
            log.info("event type %s acknowledged and ignored", kind or "(none)")
            return []
        sender = payload.get("from")
        to = payload.get("to")
        first = to[0] if isinstance(to, list) and to else None
        text = payload.get("text")
        return [
            ReceivedSms(
                message_id=_text(payload, "id", "data.payload.id"),
                customer=_text(sender, "phone_number", "data.payload.from.phone_number"),
                our_number=_text(first, "phone_number", "data.payload.to[0].phone_number"),
                text=text if isinstance(text, str) else "",
            )
        ]

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """Any 2xx within 2 seconds; otherwise Telnyx retries, then tries the failover URL."""
        return WebhookReply(status=200)


def _event(hook: Webhook) -> tuple[str, dict[str, Any]]:
    """The event type and payload of a call: ``{"data": {"event_type", "payload"}}``."""
    body = webhook_json(hook, "a JSON event")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise BadRequest("data", "every event must carry a data object")
    kind = data.get("event_type")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise BadRequest("data.payload", "every event must carry a payload object")
    return (kind if isinstance(kind, str) else ""), payload


def _recipient_status(payload: dict[str, Any]) -> str:
    """``to[0].status``: we send one recipient per message."""
    to = payload.get("to")
    first = to[0] if isinstance(to, list) and to else None
    status = first.get("status") if isinstance(first, dict) else None
    return status.lower() if isinstance(status, str) else ""


def _text(mapping: object, name: str, field: str) -> str:
    value = mapping.get(name) if isinstance(mapping, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(field, "is required")
    return value.strip()


def webhooks(own: TelnyxSettings, settings: Settings) -> TelnyxWebhooks:
    """Build the webhook side of Telnyx: needs TELNYX_PUBLIC_KEY."""
    key = own.public_key
    if key is None or not is_ed25519_public_key(key):
        raise NotConfigured(
            [
                "TELNYX_PUBLIC_KEY is not set or not a base64 Ed25519 key: Telnyx webhooks "
                "cannot be verified"
            ]
        )
    return TelnyxWebhooks(public_key=key)


SPEC = ProviderSpec(
    "telnyx",
    read_settings=read_settings,
    sender=sender,
    webhooks=webhooks,
    ambiguous_grace_seconds=AMBIGUOUS_GRACE_SECONDS,
    correlated_by_id=True,
)
