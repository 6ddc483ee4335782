"""Twilio Programmable Messaging: sending over plain REST, and its signed webhooks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from channel.budget import Budget
from channel.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from channel.logs import printable
from channel.phone import MAX_NUMBER_CHARS, mask
from channel.providers import forms
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

MAX_BODY_CHARS = 1600
"""The longest message body Twilio handles (docs: Messages resource, ``Body``): a reply's
text is cut there, so a forged or broken one cannot outgrow the ledger."""
CORRELATION_PARAM = "rid"
"""Query parameter of our status-callback URL that carries the RequestId (it is covered
by Twilio's signature, so a callback's correlation cannot be forged)."""
DEFINITION_PARAM = "def"
FROM_PARAM = "from"
TAG_PARAM = "tag"
"""The request's ChannelDefinitionId and ``From`` ride in the callback URL too, with our
own MAC over them and the RequestId (``tag``): a final report whose tag matches is
forwarded without reading the request from the ledger (one Table round trip fewer on an
instance that did not send the message). Twilio's signature proves Twilio called the URL;
the tag proves this app wrote those fields for that RequestId. A URL without a matching
tag (an older version's, or one edited and signed by whoever holds the auth token) is
read from the ledger as before."""

# https://www.twilio.com/docs/api/errors - 20429 is "Too Many Requests".
_THROTTLED_CODES = {20429}
# 20003: authentication failed; 20404 (or any 404): wrong account or base URL. These are
# about our settings, not this message: NotSent would lose every message until someone
# noticed, so they answer 503 and the plugin retries once the settings are fixed.
_CONFIGURATION_CODES = {20003, 20404}


class TwilioProvider:
    """Sends one message per call to Twilio's Messages resource."""

    id = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        session: requests.Session,
        base_url: str = "https://api.twilio.com",
        messaging_service_sid: str | None = None,
    ) -> None:
        self.messages_url = f"{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._tag_key = auth_token.encode("utf-8")
        self._session = session
        self._service = messaging_service_sid

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message once and classify Twilio's answer."""
        try:
            # Encoded here, as requests would, so that a failure is known to come before
            # anything was sent (a text that is not valid Unicode fails right here).
            body = urlencode(self.form(sms)).encode("ascii")
        except Exception as exc:
            raise unsendable(sms, "Twilio", exc) from exc
        reply = post_once(
            self._session,
            self.messages_url,
            provider="Twilio",
            budget=budget,
            deduped=False,  # Twilio has no idempotency key: a lost answer is unknown
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=self._auth,
        )
        return self._outcome(reply, sms)

    def form(self, sms: OutboundSms) -> dict[str, str]:
        """The form fields of the Messages POST."""
        form = {"To": sms.to, "Body": sms.text}
        if self._service is not None:
            # The Messaging Service picks the sender from its pool (and handles opt-out).
            form["MessagingServiceSid"] = self._service
        else:
            form["From"] = sms.sender
        if sms.status_callback_url is not None:
            fields = {CORRELATION_PARAM: sms.correlation}
            if sms.channel_definition_id is not None and sms.requested_from is not None:
                fields[DEFINITION_PARAM] = sms.channel_definition_id
                fields[FROM_PARAM] = sms.requested_from
                fields[TAG_PARAM] = callback_tag(
                    self._tag_key, sms.correlation, sms.channel_definition_id, sms.requested_from
                )
            form["StatusCallback"] = f"{sms.status_callback_url}?{urlencode(fields)}"
        return form

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = json_object(reply)
        code = _int(body.get("code"))
        if 200 <= status < 300:
            sid = body.get("sid")
            if not isinstance(sid, str) or not sid:
                raise OutcomeUnknown(f"Twilio answered {status} without a message sid")
            log.info("twilio accepted %s for %s", sid, mask(sms.to))
            return Accepted(sid)
        if status == 429 or code in _THROTTLED_CODES:
            raise Throttled(retry_after(reply))
        if status in (401, 404) or code in _CONFIGURATION_CODES:
            raise ProviderMisconfigured(
                f"Twilio refused the account credentials (HTTP {status}, code {code})"
            )
        if 400 <= status < 500:
            # Twilio's messages quote the recipient's number: keep them below INFO.
            reason = str(body.get("message") or body.get("detail") or body.get("title") or "")
            log.info(
                "twilio rejected the message to %s: HTTP %s code %s", mask(sms.to), status, code
            )
            log.debug("twilio rejection detail: %s", reason)
            return Rejected(code=str(code or status), reason=reason)
        raise OutcomeUnknown(f"Twilio answered HTTP {status}")


def _int(value: object) -> int | None:
    """An error code as Twilio writes it (a number, or its digits), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if isinstance(value, str) and 0 < len(value) <= 9 and value.isascii() and value.isdigit():
        return int(value)
    return None


# -- Settings ----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.twilio.com"
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class TwilioSettings:
    """The TWILIO_* settings."""

    account_sid: str | None = None
    auth_token: str | None = dataclasses.field(default=None, repr=False)
    messaging_service_sid: str | None = None
    base_url: str = DEFAULT_BASE_URL


def read_settings(reader: SettingsReader) -> OwnSettings[TwilioSettings]:
    """Read TWILIO_* and say what keeps Twilio from sending."""
    own = TwilioSettings(
        account_sid=reader.get("TWILIO_ACCOUNT_SID"),
        auth_token=reader.get("TWILIO_AUTH_TOKEN"),
        messaging_service_sid=reader.get("TWILIO_MESSAGING_SERVICE_SID"),
        base_url=reader.url("TWILIO_BASE_URL") or DEFAULT_BASE_URL,
    )
    problems = []
    if own.account_sid is None:
        problems.append("TWILIO_ACCOUNT_SID is not set (provider twilio)")
    elif not _ACCOUNT_SID.fullmatch(own.account_sid):
        problems.append("TWILIO_ACCOUNT_SID must look like AC followed by 32 hex")
    if own.auth_token is None:
        problems.append("TWILIO_AUTH_TOKEN is not set (provider twilio)")
    service = own.messaging_service_sid
    if service is not None and not _SERVICE_SID.fullmatch(service):
        problems.append("TWILIO_MESSAGING_SERVICE_SID must look like MG followed by 32 hex")
    return OwnSettings(own, tuple(problems))


def sender(
    own: TwilioSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> TwilioProvider:
    """Build the Twilio adapter from TWILIO_* settings (read_settings checked them)."""
    assert own.account_sid is not None  # noqa: S101 - read_settings guarantees it
    assert own.auth_token is not None  # noqa: S101 - read_settings guarantees it
    return TwilioProvider(
        account_sid=own.account_sid,
        auth_token=own.auth_token,
        session=session,
        base_url=own.base_url,
        messaging_service_sid=own.messaging_service_sid,
    )


# -- Webhooks: status callbacks and inbound messages ---------------------------------
# https://www.twilio.com/docs/usage/webhooks/webhooks-security
# https://www.twilio.com/docs/messaging/guides/track-outbound-message-status

_DELIVERED = {"delivered", "read"}
_NOT_DELIVERED = {"undelivered", "failed", "canceled"}


MAX_WEBHOOK_BODY_BYTES = 64 * 1024
"""Twilio's callbacks are small forms (an SMS body is at most 1,600 characters): a body
over 64 KiB is not Twilio's, and refusing it unread keeps a forger from making us parse
and sign a megabyte."""


class TwilioWebhooks:
    """Verifies ``X-Twilio-Signature`` and reads Twilio's form posts."""

    id = "twilio"
    max_body_bytes = MAX_WEBHOOK_BODY_BYTES

    def __init__(self, *, auth_token: str, public_url: str) -> None:
        self._key = auth_token.encode("utf-8")
        self.public_url = public_url

    def verify(self, hook: Webhook) -> None:
        """Accept the call only if its signature matches the URL Twilio called and its form."""
        signature = hook.headers.get("x-twilio-signature")
        if not signature:
            raise Unauthorized("the X-Twilio-Signature header is missing")
        url = self.signed_url(hook)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        if "bodySHA256" in query:
            # JSON bodies: the URL carries the body's hash and the signature covers the URL.
            digest = hashlib.sha256(hook.body).hexdigest()
            # Compared as bytes: compare_digest raises TypeError on a non-ASCII str, which
            # made a forged bodySHA256 (e.g. %C3%A9) a 500 instead of a 403.
            if not hmac.compare_digest(digest.encode(), query["bodySHA256"][0].encode()):
                raise Forbidden("the body does not match its bodySHA256")
            params: forms.Form = {}
        else:
            try:
                params = forms.form(hook)
            except BadRequest:
                # Twilio signs UTF-8 form data: a body that is not fails authentication
                # (403), it is not a malformed genuine call (400).
                raise Forbidden("the body is not the form data Twilio signs") from None
        # Twilio signs some URLs with the default port and some without: accept either.
        # The parameters' part of the signed data is the same for each: built once.
        signed_params = _signed_params(params)
        for candidate in _port_variants(url):
            expected = _signature(self._key, candidate + signed_params)
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return
        raise Forbidden("the X-Twilio-Signature does not match")

    def signed_url(self, hook: Webhook) -> str:
        """The URL Twilio called: our public base URL, the route path and the raw query.

        Never the Host of the request: behind Front Door or a proxy it is not what
        Twilio signed, and a forger controls it.
        """
        parts = urlsplit(hook.url)
        url = self.public_url + parts.path
        return f"{url}?{parts.query}" if parts.query else url

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """Twilio has no subscription handshake."""
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The one status a callback carries, with our RequestId from its URL."""
        form = forms.form(hook)
        sid = forms.one(form, "MessageSid") or forms.one(form, "SmsSid")
        status = (forms.one(form, "MessageStatus") or forms.one(form, "SmsStatus") or "").lower()
        if not sid or not status:
            raise BadRequest("MessageSid" if not sid else "MessageStatus", "is required")
        webhook_field(sid, "MessageSid", MAX_ID_CHARS)
        webhook_field(status, "MessageStatus", MAX_ID_CHARS)
        query = parse_qs(urlsplit(hook.url).query)
        correlation = query.get(CORRELATION_PARAM, [None])[0]
        definition, requested_from = self._carried(query, correlation)
        if status in _DELIVERED:
            state = DeliveryState.DELIVERED
        elif status in _NOT_DELIVERED:
            state = DeliveryState.NOT_DELIVERED
        else:  # queued, accepted, scheduled, sending, sent, receiving, and any new one
            state = DeliveryState.PENDING
        error = printable(forms.one(form, "ErrorCode") or "")
        return [
            StatusReport(
                sid,
                state,
                correlation,
                detail=f"{status} {error}".strip(),
                channel_definition_id=definition,
                requested_from=requested_from,
            )
        ]

    def _carried(
        self, query: dict[str, list[str]], correlation: str | None
    ) -> tuple[str | None, str | None]:
        """The request's ChannelDefinitionId and ``From`` from the URL, if our tag vouches."""
        definition = query.get(DEFINITION_PARAM, [None])[0]
        requested_from = query.get(FROM_PARAM, [None])[0]
        tag = query.get(TAG_PARAM, [None])[0]
        if correlation is None or definition is None or requested_from is None or tag is None:
            return None, None
        expected = callback_tag(self._key, correlation, definition, requested_from)
        if not hmac.compare_digest(expected.encode(), tag.encode("utf-8", "replace")):
            log.info("status callback fields without a matching tag: read from the ledger")
            return None, None
        return definition, requested_from

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer's message of an inbound call."""
        form = forms.form(hook)
        for field, limit in (("MessageSid", MAX_ID_CHARS), ("From", MAX_NUMBER_CHARS)):
            if not forms.one(form, field):
                raise BadRequest(field, "is required")
            webhook_field(forms.one(form, field), field, limit)
        if not forms.one(form, "To"):
            raise BadRequest("To", "is required")
        webhook_field(forms.one(form, "To"), "To", MAX_NUMBER_CHARS)
        sid, body = forms.one(form, "MessageSid"), forms.one(form, "Body")
        text = received_text(body, MAX_BODY_CHARS)
        if text != body:
            log.warning(
                "inbound %s: text of %d characters cut to Twilio's maximum of %d",
                sid,
                len(body),
                MAX_BODY_CHARS,
            )
        return [
            ReceivedSms(
                message_id=sid,
                customer=forms.one(form, "From"),
                our_number=forms.one(form, "To"),
                text=text,
            )
        ]

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """An empty TwiML response: Twilio treats an empty body as error 12300."""
        return WebhookReply(body=EMPTY_TWIML, mimetype="text/xml")


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def _signed_params(params: forms.Form) -> str:
    """Each name and value, names and values sorted: what follows the URL in signed data."""
    return "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))


def _signature(key: bytes, data: str) -> str:
    """base64(HMAC-SHA1(auth token, URL + the signed parameters))."""
    return base64.b64encode(hmac.new(key, data.encode("utf-8"), hashlib.sha1).digest()).decode()


def callback_tag(key: bytes, request_id: str, definition: str, requested_from: str) -> str:
    """Our MAC over the request's fields a status-callback URL carries (128 bits, base64url).

    Keyed by the auth token, under a label of its own so it can never be taken for a
    Twilio signature. The fields hold no line break (the contracts refuse them).
    """
    data = "\n".join(("d365-sms-channel status callback", request_id, definition, requested_from))
    digest = hmac.new(key, data.encode("utf-8"), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _port_variants(url: str) -> Iterator[str]:
    """``url`` as called, then without its port, then with the default one.

    Lazily: a genuine call matches the first, which needs no parsing.
    """
    yield url
    parts = urlsplit(url)
    host = parts.hostname or ""
    yield parts._replace(netloc=host).geturl()
    default = 443 if parts.scheme == "https" else 80
    yield parts._replace(netloc=f"{host}:{parts.port or default}").geturl()


def webhooks(own: TwilioSettings, settings: Settings) -> TwilioWebhooks:
    """Build the webhook side of Twilio: needs the auth token and the public URL."""
    problems = []
    if own.auth_token is None:
        problems.append("TWILIO_AUTH_TOKEN is not set: Twilio webhooks cannot be verified")
    if settings.public_url is None:
        problems.append("CHANNEL_PUBLIC_URL is not set: Twilio webhooks cannot be verified")
    if problems:
        raise NotConfigured(problems)
    assert own.auth_token is not None  # noqa: S101 - checked just above
    assert settings.public_url is not None  # noqa: S101 - checked just above
    return TwilioWebhooks(auth_token=own.auth_token, public_url=settings.public_url)


SPEC = ProviderSpec("twilio", read_settings=read_settings, sender=sender, webhooks=webhooks)
