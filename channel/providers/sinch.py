"""Sinch SMS REST API ("xms"): sending batches with the service plan's token, and its webhooks.

Sending is one ``POST {base}/xms/v1/{service_plan_id}/batches`` per message, one
recipient per batch, with the plan's API token as bearer token. Each batch carries our
RequestId as ``client_reference`` (echoed in every delivery report) and its own
``callback_url``. Sinch dedupes nothing, so an answer lost after the request left is an
unknown outcome; before a new attempt for such a request the adapter asks Sinch for a
batch with that ``client_reference`` (the batches list filter) and takes it if found.
(https://developers.sinch.com/docs/sms/api-reference/sms/tag/Batches/)

Webhooks: with SINCH_WEBHOOK_SECRET (signing is enabled per account by Sinch) every call
must carry ``x-sinch-webhook-signature``, the base64 HMAC-SHA256 of
``"{raw body}.{nonce}.{timestamp}"``; without it, the callback URLs carry
CHANNEL_WEBHOOK_SECRET as ``?secret=``, as for ACS. Sinch retries 5xx and 429 answers
(5 s doubling, for about 23 hours) and drops every other 4xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import requests

from channel.budget import Budget
from channel.contracts import MAX_REQUEST_ID_CHARS
from channel.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from channel.logs import printable
from channel.phone import MAX_NUMBER_CHARS, international, mask
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
    SendOutcome,
    StatusReport,
    Throttled,
    Tokens,
    Unreachable,
    Webhook,
    WebhookReply,
    received_text,
    unsendable,
    verify_query_secret,
    webhook_field,
)
from channel.providers.rest import CONNECT_TIMEOUT, json_object, post_once, retry_after

if TYPE_CHECKING:
    from channel.config import Settings, SettingsReader

log = logging.getLogger(__name__)

LOOKUP_READ_TIMEOUT = 5.0
"""A list of batches filtered by one client_reference is small: well under the send's."""
LOOKBACK_SECONDS = 86400.0
"""How far before the first attempt the lookup searches (Sinch lists 14 days of batches;
without a start date, only the last 24 hours)."""
LIST_HORIZON_SECONDS = 13 * 86400.0
"""The oldest start date asked for: inside the 14 days Sinch lists."""
MIN_SEND_SECONDS = 2.0
"""Budget a POST needs left after the lookup: this is the last attempt the ledger allows,
and one cut short by the deadline would only end in another unknown outcome."""


class SinchProvider:
    """Sends one batch of one recipient per call to the SMS REST API."""

    id = "sinch"

    def __init__(
        self,
        *,
        service_plan_id: str,
        api_token: str,
        session: requests.Session,
        base_url: str,
        callback_secret: str | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/xms/v1/{quote(service_plan_id, safe='')}/batches"
        self._authorization = f"Bearer {api_token}"
        self._session = session
        # Without signed callbacks, the reports' URL must carry our shared secret.
        self._callback_query = (
            None if callback_secret is None else urlencode({"secret": callback_secret})
        )

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the batch once (after looking for an earlier one) and classify the answer."""
        try:
            body = self.body(sms)
        except Exception as exc:  # nothing was sent: never taken for an unknown outcome
            raise unsendable(sms, "Sinch", exc) from exc
        if sms.maybe_sent_before:
            earlier = self.find_batch(sms, budget)
            if earlier is not None:
                log.info(
                    "sinch batch %s found for request %s: the earlier attempt was sent",
                    earlier,
                    sms.correlation,
                )
                return Accepted(earlier)
            if not budget.allows(MIN_SEND_SECONDS):
                raise Unreachable("no earlier Sinch batch, and too little time left to send")
        reply = post_once(
            self._session,
            self.url,
            provider="Sinch",
            budget=budget,
            deduped=False,  # Sinch has no idempotency key: a lost answer is unknown
            data=body,
            headers=self._headers() | {"Content-Type": "application/json"},
        )
        return self._outcome(reply, sms)

    def body(self, sms: OutboundSms) -> bytes:
        """The JSON of the send request: our RequestId as client_reference."""
        request: dict[str, Any] = {
            "from": sms.sender,
            "to": [sms.to],
            "body": sms.text,
            # One report per status of the recipient (Queued, Dispatched, then final).
            "delivery_report": "per_recipient",
            "client_reference": sms.correlation,
        }
        if sms.status_callback_url is not None:
            query = self._callback_query
            url = sms.status_callback_url
            request["callback_url"] = url if query is None else f"{url}?{query}"
        return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def find_batch(self, sms: OutboundSms, budget: Budget) -> str | None:
        """The id of a batch already created for this RequestId and recipient, or None.

        A GET changes nothing at Sinch: whatever goes wrong, this attempt sent nothing,
        so a failure is ``Unreachable`` (the caller answers 503 and a retry looks again)
        and never lets the POST go out blind.
        """
        now = time.time()
        since = max(min(sms.first_attempt_at, now) - LOOKBACK_SECONDS, now - LIST_HORIZON_SECONDS)
        params = {
            "client_reference": sms.correlation,
            "start_date": datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "page_size": "10",
        }
        try:
            reply = self._session.get(
                self.url,
                params=params,
                headers=self._headers(),
                timeout=budget.timeout(CONNECT_TIMEOUT, LOOKUP_READ_TIMEOUT),
            )
        except requests.RequestException as exc:
            raise Unreachable(
                f"could not look for an earlier Sinch batch ({type(exc).__name__}); nothing "
                "was sent"
            ) from exc
        status = reply.status_code
        if status == 429:
            raise Throttled(retry_after(reply))
        if status in (401, 403, 404):
            raise ProviderMisconfigured(_refused(status, ""))
        batches = json_object(reply).get("batches")
        if status != 200 or not isinstance(batches, list):
            raise Unreachable(
                f"Sinch answered HTTP {status} when asked for an earlier batch; nothing was sent"
            )
        recipient = sms.to.removeprefix("+")
        for batch in batches:
            if not isinstance(batch, dict):
                continue
            batch_id, to = batch.get("id"), batch.get("to")
            # The filter is Sinch's: check the batch is ours, for this recipient.
            if (
                isinstance(batch_id, str)
                and batch_id
                and batch.get("client_reference") == sms.correlation
                and isinstance(to, list)
                and any(isinstance(n, str) and n.removeprefix("+") == recipient for n in to)
            ):
                return batch_id
        return None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json"}

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = json_object(reply)
        code = body.get("code")
        code = printable(code) if isinstance(code, str) else ""
        if status in (200, 201):
            batch_id = body.get("id")
            if not isinstance(batch_id, str) or not batch_id:
                raise OutcomeUnknown(f"Sinch answered {status} without a batch id")
            log.info("sinch accepted batch %s for %s", batch_id, mask(sms.to))
            return Accepted(batch_id)
        if status == 429:
            raise Throttled(retry_after(reply))
        if status in (401, 403, 404):
            # 403 also says blocked_account, or a number type the account may not use:
            # an operator must act on the account, so never NotSent.
            raise ProviderMisconfigured(_refused(status, code))
        if 400 <= status < 500:
            # syntax_invalid_parameter_format (e.g. a malformed number),
            # syntax_constraint_violation, ...: this message is refused for good. The
            # text may quote the recipient's number: keep it below INFO.
            log.info("sinch rejected the message to %s: HTTP %s %s", mask(sms.to), status, code)
            log.debug("sinch rejection detail: %s", body.get("text"))
            return Rejected(code=code or str(status), reason=str(body.get("text") or ""))
        # 5xx ("rare") or an unexpected answer: the batch may have been created.
        raise OutcomeUnknown(f"Sinch answered HTTP {status} {code}".rstrip())


def _refused(status: int, code: str) -> str:
    return (
        f"Sinch refused the request (HTTP {status} {code}".rstrip()
        + "): check SINCH_SERVICE_PLAN_ID, SINCH_API_TOKEN, SINCH_BASE_URL (the plan's "
        "region) and the account"
    )


# -- Settings ----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://us.sms.api.sinch.com"
_PLAN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")
"""Printable ASCII without spaces: what a bearer token header can carry."""


@dataclass(frozen=True)
class SinchSettings:
    """The SINCH_* settings."""

    service_plan_id: str | None = None
    api_token: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    webhook_secret: str | None = field(default=None, repr=False)


def read_settings(reader: SettingsReader) -> OwnSettings[SinchSettings]:
    """Read SINCH_* and say what keeps Sinch from sending."""
    own = SinchSettings(
        service_plan_id=reader.get("SINCH_SERVICE_PLAN_ID"),
        api_token=reader.get("SINCH_API_TOKEN"),
        base_url=reader.url("SINCH_BASE_URL") or DEFAULT_BASE_URL,
        webhook_secret=reader.get("SINCH_WEBHOOK_SECRET"),
    )
    problems, notes = [], []
    if own.service_plan_id is None:
        problems.append("SINCH_SERVICE_PLAN_ID is not set (provider sinch)")
    elif not _PLAN_ID.fullmatch(own.service_plan_id):
        problems.append(
            "SINCH_SERVICE_PLAN_ID must be the service plan id of the SMS dashboard "
            "(letters and digits)"
        )
    if own.api_token is None:
        problems.append("SINCH_API_TOKEN is not set (provider sinch)")
    elif not _TOKEN.fullmatch(own.api_token):
        problems.append(
            "SINCH_API_TOKEN must be the service plan's API token alone (no spaces, line "
            "breaks or 'Bearer ')"
        )
    if own.webhook_secret is None and reader.get("CHANNEL_WEBHOOK_SECRET") is None:
        notes.append(
            "SINCH_WEBHOOK_SECRET and CHANNEL_WEBHOOK_SECRET not set: Sinch delivery "
            "reports and replies are refused until one is"
        )
    return OwnSettings(own, tuple(problems), tuple(notes))


def sender(
    own: SinchSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> SinchProvider:
    """Build the Sinch adapter from SINCH_* settings (read_settings checked them)."""
    assert own.service_plan_id is not None  # noqa: S101 - read_settings guarantees it
    assert own.api_token is not None  # noqa: S101 - read_settings guarantees it
    return SinchProvider(
        service_plan_id=own.service_plan_id,
        api_token=own.api_token,
        session=session,
        base_url=own.base_url,
        # Signed callbacks need no secret in the URL (and a ?secret= alone is refused).
        callback_secret=settings.webhook_secret if own.webhook_secret is None else None,
    )


# -- Webhooks: recipient delivery reports and inbound (MO) messages ------------------------
# https://developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/
# https://developers.sinch.com/docs/sms/api-reference/sms/tag/Inbounds/

RECIPIENT_REPORT = "recipient_delivery_report_sms"
BATCH_REPORT = "delivery_report_sms"
MO_TEXT = "mo_text"
TIMESTAMP_TOLERANCE = 300
MAX_RECEIVED_CHARS = 2000
"""The longest MO text Sinch delivers: a reply is cut there."""
_DELIVERED = {"delivered"}
_NOT_DELIVERED = {"aborted", "cancelled", "rejected", "deleted", "failed", "expired"}
"""Final failures ("Deleted": an invalid number or an opted-out subscriber). ``Unknown``
is final for Sinch but says nothing of the handset: it stays intermediate, as do Queued
and Dispatched. Sinch writes them capitalised, its SDK upper case: compared lower case."""
_SIGNATURE = "x-sinch-webhook-signature"
_NONCE = "x-sinch-webhook-signature-nonce"
_TIMESTAMP = "x-sinch-webhook-signature-timestamp"


class SinchWebhooks:
    """Verifies Sinch's signature (or the shared secret) and reads its JSON callbacks."""

    id = "sinch"
    # One report or one MO (at most 2,000 characters of text) per call: a few KiB.
    max_body_bytes = 64 * 1024

    def __init__(
        self,
        *,
        signing_secret: str | None = None,
        query_secret: str | None = None,
        default_region: str = "US",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if signing_secret is None and query_secret is None:
            raise ValueError("give signing_secret or query_secret")
        self._signing_key = None if signing_secret is None else signing_secret.encode("utf-8")
        self._query_secret = None if query_secret is None else query_secret.encode("utf-8")
        self.default_region = default_region
        self._clock = clock

    def verify(self, hook: Webhook) -> None:
        """Accept the call only if Sinch signed it (with a signing secret) or it has our secret."""
        if self._signing_key is None:
            assert self._query_secret is not None  # noqa: S101 - the constructor guarantees it
            verify_query_secret(hook, self._query_secret)
            return
        # With signing on, the query secret proves nothing: it is not what Sinch signs.
        signature = hook.headers.get(_SIGNATURE, "").strip()
        nonce = hook.headers.get(_NONCE, "").strip()
        timestamp = hook.headers.get(_TIMESTAMP, "").strip()
        if not signature or not nonce or not timestamp:
            raise Unauthorized(
                "the x-sinch-webhook-signature, -nonce or -timestamp header is missing"
            )
        if not (timestamp.isascii() and timestamp.isdigit()) or (
            abs(self._clock() - int(timestamp)) > TIMESTAMP_TOLERANCE
        ):
            raise Forbidden("the x-sinch-webhook-signature-timestamp is not within 5 minutes")
        signed = b".".join((hook.body, nonce.encode("utf-8"), timestamp.encode("ascii")))
        digest = hmac.new(self._signing_key, signed, hashlib.sha256).digest()
        # Compared as bytes: compare_digest raises TypeError on a non-ASCII str.
        if not hmac.compare_digest(base64.b64encode(digest), signature.encode("utf-8")):
            raise Forbidden("the x-sinch-webhook-signature does not match")

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """Sinch has no subscription handshake."""
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The status of a recipient delivery report, with our RequestId as correlation."""
        body = _body(hook)
        kind = body.get("type")
        if kind != RECIPIENT_REPORT:
            if kind == MO_TEXT:
                log.warning(
                    "an inbound message reached %s: set the service plan's callback URL "
                    "for inbound messages to /api/inbound/sinch",
                    urlsplit(hook.url).path,
                )
            else:  # batch summaries (delivery_report other than per_recipient), MMS, ...
                log.info("sinch event %s acknowledged and ignored", _printable_type(kind))
            return []
        batch_id = _text(body, "batch_id", MAX_ID_CHARS)
        status = body.get("status")
        status = status.strip() if isinstance(status, str) else ""
        if status.lower() in _DELIVERED:
            state = DeliveryState.DELIVERED
        elif status.lower() in _NOT_DELIVERED:
            state = DeliveryState.NOT_DELIVERED
        else:  # Queued, Dispatched, Unknown, and any new one
            state = DeliveryState.PENDING
        reference = body.get("client_reference")
        correlation = None
        if isinstance(reference, str) and reference:
            # Our RequestId, which never holds what webhook_field refuses.
            correlation = webhook_field(reference, "client_reference", MAX_REQUEST_ID_CHARS)
        code = body.get("code")
        detail = printable(f"{status} {code}" if isinstance(code, int) else status)
        return [StatusReport(batch_id, state, correlation, detail, same_message_only=True)]

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer's message of an ``mo_text`` call; other types are acknowledged."""
        body = _body(hook)
        kind = body.get("type")
        if kind != MO_TEXT:
            if kind in (RECIPIENT_REPORT, BATCH_REPORT):
                log.warning(
                    "a delivery report reached %s: reports are handled at "
                    "/api/delivery-report/sinch",
                    urlsplit(hook.url).path,
                )
            else:  # mo_binary, mo_media, ...
                log.info("sinch message %s acknowledged and ignored", _printable_type(kind))
            return []
        message_id = _text(body, "id", MAX_ID_CHARS)
        customer = _text(body, "from", MAX_NUMBER_CHARS)
        ours = _text(body, "to", MAX_NUMBER_CHARS)
        raw = body.get("body")
        raw = raw if isinstance(raw, str) else ""
        text = received_text(raw, MAX_RECEIVED_CHARS)
        if text != raw:
            log.warning(
                "inbound %s: text of %d characters kept as %d valid ones (Sinch's maximum is %d)",
                message_id,
                len(raw),
                len(text),
                MAX_RECEIVED_CHARS,
            )
        return [
            ReceivedSms(
                message_id=message_id,
                # Sinch writes numbers without '+' (12015555555).
                customer=international(customer, self.default_region),
                our_number=international(ours, self.default_region),
                text=text,
            )
        ]

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """Any 2xx; Sinch retries 5xx and 429 answers and drops other 4xx."""
        return WebhookReply(status=200)


def _body(hook: Webhook) -> dict[str, Any]:
    try:
        body = json.loads(hook.body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "not a JSON object") from None
    except RecursionError:  # e.g. "[" * 60000: deeper than the parser goes
        raise BadRequest("body", "JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "not a JSON object")
    return body


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(name, "is required")
    return webhook_field(value.strip(), name, limit)


def _printable_type(kind: object) -> str:
    return printable(kind, 64) if isinstance(kind, str) and kind else "(no type)"


def webhooks(own: SinchSettings, settings: Settings) -> SinchWebhooks:
    """Build the webhook side of Sinch: SINCH_WEBHOOK_SECRET, else CHANNEL_WEBHOOK_SECRET."""
    if own.webhook_secret is None and settings.webhook_secret is None:
        raise NotConfigured(
            [
                "SINCH_WEBHOOK_SECRET and CHANNEL_WEBHOOK_SECRET are not set: Sinch webhooks "
                "cannot be authenticated"
            ]
        )
    return SinchWebhooks(
        signing_secret=own.webhook_secret,
        query_secret=settings.webhook_secret,
        default_region=settings.default_region,
    )


SPEC = ProviderSpec("sinch", read_settings=read_settings, sender=sender, webhooks=webhooks)
