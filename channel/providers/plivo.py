"""Plivo Message API: sending with Basic auth, and its signed form webhooks.

Sending is one ``POST {base}/v1/Account/{auth_id}/Message/`` per message, with the auth
id and token as Basic credentials. Each message names its own status callback ``url``,
whose query carries our RequestId. Plivo dedupes nothing: an answer lost after the
request left is an unknown outcome, never POSTed again blindly.

Webhooks (status callbacks and inbound messages) are form posts signed with the auth
token. ``X-Plivo-Signature-V3`` covers the URL Plivo called, its query and every form
field; ``X-Plivo-Signature-V2`` covers only the URL without its query and a nonce, so
a V2-signed call is genuine only the first time its nonce is seen, and its query (our
RequestId) is never trusted: it is correlated by the MessageUUID recorded at send.
(https://www.plivo.com/docs/messaging/concepts/signature-validation, and the SDK's
``plivo/utils/signature_v3.py``)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from channel.budget import Budget
from channel.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from channel.logs import printable
from channel.phone import MAX_NUMBER_CHARS, international, mask
from channel.providers import forms
from channel.providers.base import (
    MAX_ID_CHARS,
    Accepted,
    DeliveryState,
    Nonce,
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
    Webhook,
    WebhookReply,
    received_text,
    unsendable,
    webhook_field,
)
from channel.providers.rest import json_object, post_once, retry_after

if TYPE_CHECKING:
    from channel.config import Settings, SettingsReader

log = logging.getLogger(__name__)

CORRELATION_PARAM = "rid"
"""Query parameter of our status-callback URL that carries the RequestId (covered by the
V3 signature, not by V2)."""
MAX_TEXT_CHARS = 1600
"""The longest text Plivo takes in one message: a reply's text is cut there."""

_CONFIGURATION_STATUSES = {401, 402, 403, 404}
"""Credentials refused (401), no credit (402), a country or number the account may not
use (403, the SDK's ForbiddenError / GeoPermissionError), a wrong auth id or base URL
(404): about our account, not this message. An operator must act: 503, never NotSent."""


class PlivoProvider:
    """Sends one message per call to Plivo's Message resource."""

    id = "plivo"

    def __init__(
        self, *, auth_id: str, auth_token: str, session: requests.Session, base_url: str
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/Account/{auth_id}/Message/"
        self._auth = (auth_id, auth_token)
        self._session = session

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message once and classify Plivo's answer."""
        try:
            # Encoded here, as requests would, so that a failure is known to come before
            # anything was sent (a text that is not valid Unicode fails right here).
            body = json.dumps(self.body(sms), ensure_ascii=False).encode("utf-8")
        except Exception as exc:
            raise unsendable(sms, "Plivo", exc) from exc
        reply = post_once(
            self._session,
            self.url,
            provider="Plivo",
            budget=budget,
            deduped=False,  # Plivo has no idempotency key: a lost answer is unknown
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            auth=self._auth,
        )
        return self._outcome(reply, sms)

    def body(self, sms: OutboundSms) -> dict[str, str]:
        """The JSON of the send request, with our RequestId in the status URL's query."""
        body = {"src": sms.sender, "dst": sms.to, "text": sms.text}
        if sms.status_callback_url is not None:
            query = urlencode({CORRELATION_PARAM: sms.correlation})
            body["url"] = f"{sms.status_callback_url}?{query}"
            body["method"] = "POST"
        return body

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = json_object(reply)
        if 200 <= status < 300:
            ids = body.get("message_uuid")
            message_id = ids[0] if isinstance(ids, list) and ids else None
            if not isinstance(message_id, str) or not message_id:
                raise OutcomeUnknown(f"Plivo answered {status} without a message_uuid")
            log.info("plivo accepted %s for %s", message_id, mask(sms.to))
            return Accepted(message_id, correlated_by_id=SPEC.correlated_by_id)
        if status == 429:
            raise Throttled(retry_after(reply))
        if status in _CONFIGURATION_STATUSES:
            raise ProviderMisconfigured(
                f"Plivo refused the account (HTTP {status}): check PLIVO_AUTH_ID, "
                "PLIVO_AUTH_TOKEN, PLIVO_BASE_URL and the account's credit and permissions"
            )
        if 400 <= status < 500:
            # 400 (ValidationError: e.g. an invalid dst or src), 422 and the rest: a
            # refusal of this message. Plivo's error text may quote numbers: below INFO.
            log.info("plivo rejected the message to %s: HTTP %s", mask(sms.to), status)
            log.debug("plivo rejection detail: %s", body.get("error"))
            error = body.get("error")
            return Rejected(code=str(status), reason=error if isinstance(error, str) else "")
        raise OutcomeUnknown(f"Plivo answered HTTP {status}")


# -- Settings ----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.plivo.com"
_AUTH_ID = re.compile(r"(MA|SA)[A-Z0-9]{18}")
"""A main account's or a subaccount's auth id, as the SDK checks it."""


@dataclass(frozen=True)
class PlivoSettings:
    """The PLIVO_* settings."""

    auth_id: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL


def read_settings(reader: SettingsReader) -> OwnSettings[PlivoSettings]:
    """Read PLIVO_* and say what keeps Plivo from sending."""
    own = PlivoSettings(
        auth_id=reader.get("PLIVO_AUTH_ID"),
        auth_token=reader.get("PLIVO_AUTH_TOKEN"),
        base_url=reader.url("PLIVO_BASE_URL") or DEFAULT_BASE_URL,
    )
    problems = []
    if own.auth_id is None:
        problems.append("PLIVO_AUTH_ID is not set (provider plivo)")
    elif not _AUTH_ID.fullmatch(own.auth_id):
        problems.append("PLIVO_AUTH_ID must look like MA or SA followed by 18 letters or digits")
    if own.auth_token is None:
        problems.append(
            "PLIVO_AUTH_TOKEN is not set (provider plivo): nothing can be sent, and "
            "delivery reports and replies cannot be verified"
        )
    return OwnSettings(own, tuple(problems))


def sender(
    own: PlivoSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> PlivoProvider:
    """Build the Plivo adapter from PLIVO_* settings (read_settings checked them)."""
    assert own.auth_id is not None  # noqa: S101 - read_settings guarantees it
    assert own.auth_token is not None  # noqa: S101 - read_settings guarantees it
    return PlivoProvider(
        auth_id=own.auth_id, auth_token=own.auth_token, session=session, base_url=own.base_url
    )


# -- Webhooks: status callbacks and inbound messages -------------------------------------
# https://www.plivo.com/docs/messaging/api/message/message-status-callbacks
# https://www.plivo.com/docs/messaging/xml/request

_DELIVERED = {"delivered"}
_NOT_DELIVERED = {"undelivered", "failed", "rejected"}
_OPTED_OUT = "200"
"""ErrorCode of a message Plivo blocked because the recipient sent STOP: never delivered,
whatever status carries it."""

MAX_WEBHOOK_BODY_BYTES = 64 * 1024
"""Plivo's callbacks are small forms (a text is at most 1,600 characters): a body over
64 KiB is not Plivo's, and refusing it unread keeps a forger from making us parse and
sign a megabyte."""
MAX_NONCE_CHARS = 128
"""Plivo's nonces are about 20 digits: a longer one is not Plivo's, and is not kept."""

V3 = "x-plivo-signature-v3"
V3_NONCE = "x-plivo-signature-v3-nonce"
V2 = "x-plivo-signature-v2"
V2_NONCE = "x-plivo-signature-v2-nonce"

EMPTY_RESPONSE = '<?xml version="1.0" encoding="utf-8"?><Response/>'
"""Plivo XML that does nothing: no reply is sent to the customer."""


class PlivoWebhooks:
    """Verifies Plivo's V3 (or V2 and a new nonce) signatures and reads its form posts."""

    id = "plivo"
    max_body_bytes = MAX_WEBHOOK_BODY_BYTES

    def __init__(self, *, auth_token: str, public_url: str, default_region: str = "US") -> None:
        self._key = auth_token.encode("utf-8")
        self.public_url = public_url
        self.default_region = default_region

    def verify(self, hook: Webhook) -> Nonce | None:
        """Accept a valid V3 signature, or a valid V2 one whose nonce the ledger must find new.

        With a V3 signature present, V3 alone decides: falling back to V2 when it fails
        would accept a call whose query or form was changed.
        """
        nonce = hook.headers.get(V2_NONCE, "")
        if hook.headers.get(V3):
            self._verify_v3(hook)
            # Plivo may sign the same call both ways: its V2 nonce is kept, so that no
            # one can reuse it later with a changed form and the V2 signature alone.
            if self._v2_matches(hook) and _is_nonce(nonce):
                return Nonce(nonce, must_be_new=False)
            return None
        if not hook.headers.get(V2):
            raise Unauthorized("the X-Plivo-Signature-V3 (or -V2) header is missing")
        if not nonce:
            raise Unauthorized("the X-Plivo-Signature-V2-Nonce header is missing")
        if not self._v2_matches(hook):
            raise Forbidden("the X-Plivo-Signature-V2 does not match")
        if not _is_nonce(nonce):
            raise Forbidden("the X-Plivo-Signature-V2-Nonce is not a nonce Plivo sends")
        return Nonce(nonce)

    def _verify_v3(self, hook: Webhook) -> None:
        nonce = hook.headers.get(V3_NONCE, "")
        if not nonce:
            raise Unauthorized("the X-Plivo-Signature-V3-Nonce header is missing")
        try:
            params = forms.form(hook)
        except BadRequest:
            # Plivo signs UTF-8 form data: a body that is not fails authentication (403),
            # it is not a malformed genuine call (400).
            raise Forbidden("the body is not the form data Plivo signs") from None
        signed = v3_signed_url(self.signed_url(hook), params)
        expected = _signature(self._key, f"{signed}.{nonce}")
        # The header may hold several comma-separated signatures: one must match (as the
        # SDK's validate_v3_signature decides).
        for candidate in hook.headers[V3].split(","):
            if hmac.compare_digest(expected, candidate.strip().encode("utf-8")):
                return
        raise Forbidden("the X-Plivo-Signature-V3 does not match")

    def _v2_matches(self, hook: Webhook) -> bool:
        """Whether the call carries a V2 signature of our URL (no query) and its nonce."""
        signature = hook.headers.get(V2, "")
        nonce = hook.headers.get(V2_NONCE, "")
        if not signature or not nonce:
            return False
        url = self.public_url + urlsplit(hook.url).path
        expected = _signature(self._key, url + nonce)
        return hmac.compare_digest(expected, signature.strip().encode("utf-8"))

    def signed_url(self, hook: Webhook) -> str:
        """The URL Plivo called: our public base URL, the route path and the raw query.

        Never the Host of the request: behind Front Door or a proxy it is not what Plivo
        signed, and a forger controls it.
        """
        parts = urlsplit(hook.url)
        url = self.public_url + parts.path
        return f"{url}?{parts.query}" if parts.query else url

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """Plivo has no subscription handshake."""
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The one status a callback carries; our RequestId only from a V3-signed query."""
        form = forms.form(hook)
        message_id = forms.one(form, "MessageUUID")
        status = forms.one(form, "Status").lower()
        if not message_id or not status:
            raise BadRequest("MessageUUID" if not message_id else "Status", "is required")
        webhook_field(message_id, "MessageUUID", MAX_ID_CHARS)
        webhook_field(status, "Status", MAX_ID_CHARS)
        error = printable(forms.one(form, "ErrorCode"))
        if status in _DELIVERED:
            state = DeliveryState.DELIVERED
        elif status in _NOT_DELIVERED or error == _OPTED_OUT:
            state = DeliveryState.NOT_DELIVERED
        else:  # queued, sent, and any new one
            state = DeliveryState.PENDING
        correlation = None
        if hook.headers.get(V3):
            # verify() accepted this call on its V3 signature, which covers the query.
            query = parse_qs(urlsplit(hook.url).query)
            correlation = query.get(CORRELATION_PARAM, [None])[0]
        return [
            StatusReport(
                message_id,
                state,
                correlation,
                detail=f"{status} {error}".strip(),
                correlated_by_id=SPEC.correlated_by_id,
            )
        ]

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer's message of an inbound call, numbers in E.164."""
        form = forms.form(hook)
        for name, limit in (
            ("MessageUUID", MAX_ID_CHARS),
            ("From", MAX_NUMBER_CHARS),
            ("To", MAX_NUMBER_CHARS),
        ):
            if not forms.one(form, name):
                raise BadRequest(name, "is required")
            webhook_field(forms.one(form, name), name, limit)
        message_id, text = forms.one(form, "MessageUUID"), forms.one(form, "Text")
        kept = received_text(text, MAX_TEXT_CHARS)
        if kept != text:
            log.warning(
                "inbound %s: text of %d characters cut to Plivo's maximum of %d",
                message_id,
                len(text),
                MAX_TEXT_CHARS,
            )
        return [
            ReceivedSms(
                message_id=message_id,
                customer=international(forms.one(form, "From"), self.default_region),
                our_number=international(forms.one(form, "To"), self.default_region),
                text=kept,
            )
        ]

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """An empty Plivo XML response: acknowledged, no reply sent."""
        return WebhookReply(body=EMPTY_RESPONSE, mimetype="text/xml")


def v3_signed_url(url: str, params: forms.Form) -> str:
    """What V3 signs before ``.{nonce}``, built as the SDK's ``construct_post_url`` does.

    The URL without its query; then ``?`` and the query's fields sorted as ``k=v`` joined
    by ``&`` (decoded, not re-encoded); then, for a form, ``.`` (only after a query) and
    every form field's name and value, sorted, with nothing between them. A form with no
    query still gets the ``?``: Plivo's quirk, the SDK's too.
    """
    parts = urlsplit(url)
    signed = f"{parts.scheme}://{parts.netloc}{parts.path}"
    # Decoded as UTF-8. (The SDK parses the query as bytes, which fails on anything but
    # ASCII once unquoted; our own query, ``rid=<RequestId>``, is ASCII in practice.)
    query = parse_qs(parts.query, keep_blank_values=True)
    sorted_query = "&".join(
        f"{name}={value}" for name in sorted(query) for value in sorted(query[name])
    )
    if params:
        signed += f"?{sorted_query}." if sorted_query else "?"
        signed += "".join(name + value for name in sorted(params) for value in sorted(params[name]))
    elif sorted_query:
        signed += f"?{sorted_query}"
    return signed


def _is_nonce(value: str) -> bool:
    """Whether ``value`` can be one of Plivo's nonces (about 20 digits), to be kept."""
    return 0 < len(value) <= MAX_NONCE_CHARS and value.isprintable()


def _signature(key: bytes, data: str) -> bytes:
    """base64(HMAC-SHA256(auth token, data)), as bytes for compare_digest."""
    return base64.b64encode(hmac.new(key, data.encode("utf-8"), hashlib.sha256).digest())


def webhooks(own: PlivoSettings, settings: Settings) -> PlivoWebhooks:
    """Build the webhook side of Plivo: needs the auth token and the public URL."""
    problems = []
    if own.auth_token is None:
        problems.append("PLIVO_AUTH_TOKEN is not set: Plivo webhooks cannot be verified")
    if settings.public_url is None:
        problems.append("CHANNEL_PUBLIC_URL is not set: Plivo webhooks cannot be verified")
    if problems:
        raise NotConfigured(problems)
    assert own.auth_token is not None  # noqa: S101 - checked just above
    assert settings.public_url is not None  # noqa: S101 - checked just above
    return PlivoWebhooks(
        auth_token=own.auth_token,
        public_url=settings.public_url,
        default_region=settings.default_region,
    )


SPEC = ProviderSpec(
    "plivo", read_settings=read_settings, sender=sender, webhooks=webhooks, correlated_by_id=True
)
"""``correlated_by_id``: a V2-signed status names nothing of ours that can be trusted but
the MessageUUID, so every send records which RequestId its MessageUUID belongs to."""
