"""Twilio Programmable Messaging over plain REST (one pooled session, explicit timeouts)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import requests
import urllib3.exceptions

from channel.budget import Budget
from channel.config import Settings
from channel.phone import mask
from channel.providers.base import (
    Accepted,
    OutboundSms,
    OutcomeUnknown,
    ProviderMisconfigured,
    Rejected,
    SendOutcome,
    Throttled,
    Unreachable,
)
from channel.retry import parse_retry_after

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
CORRELATION_PARAM = "rid"
"""Query parameter of our status-callback URL that carries the RequestId (it is covered
by Twilio's signature, so a callback's correlation cannot be forged)."""

# https://www.twilio.com/docs/api/errors - 20429 is "Too Many Requests".
_THROTTLED_CODES = {20429}
# 20003: authentication failed; 20404: wrong account in the URL. Both are about our
# settings, not this message: NotSent would lose every message until someone noticed.
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
        self._session = session
        self._service = messaging_service_sid

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message once and classify Twilio's answer."""
        try:
            reply = self._session.post(
                self.messages_url,
                data=self.form(sms),
                auth=self._auth,
                timeout=budget.timeout(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        except requests.ConnectionError as exc:
            if _never_sent(exc):
                raise Unreachable(f"could not connect to Twilio: {type(exc).__name__}") from exc
            raise OutcomeUnknown(f"connection to Twilio broke: {type(exc).__name__}") from exc
        except requests.Timeout as exc:  # a read timeout: the request went out
            raise OutcomeUnknown("Twilio did not answer in time") from exc
        except requests.RequestException as exc:
            # Any other failure (e.g. ChunkedEncodingError: the reply broke off mid-body)
            # came after the request went out: Twilio may have created the message.
            # Without this it escaped as an unexpected error and the caller got a 500.
            raise OutcomeUnknown(f"Twilio's reply broke off: {type(exc).__name__}") from exc
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
            query = urlencode({CORRELATION_PARAM: sms.correlation})
            form["StatusCallback"] = f"{sms.status_callback_url}?{query}"
        return form

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = _json(reply)
        code = _int(body.get("code"))
        if 200 <= status < 300:
            sid = body.get("sid")
            if not isinstance(sid, str) or not sid:
                raise OutcomeUnknown(f"Twilio answered {status} without a message sid")
            log.info("twilio accepted %s for %s", sid, mask(sms.to))
            return Accepted(sid)
        if status == 429 or code in _THROTTLED_CODES:
            raise Throttled(parse_retry_after(reply.headers.get("Retry-After")))
        if status == 401 or code in _CONFIGURATION_CODES:
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


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the error happened before any byte of the request left (connect, TLS)."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _json(reply: requests.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def from_settings(settings: Settings, session: requests.Session) -> TwilioProvider:
    """Build the Twilio adapter from TWILIO_* settings (validated in config)."""
    assert settings.twilio_account_sid is not None  # noqa: S101 - config guarantees it
    assert settings.twilio_auth_token is not None  # noqa: S101 - config guarantees it
    return TwilioProvider(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token,
        session=session,
        base_url=settings.twilio_base_url,
        messaging_service_sid=settings.twilio_messaging_service_sid,
    )
