"""Vonage Messages API: sending with the application's JWT, and its signed webhooks.

Sending is one ``POST {base}/v1/messages`` per message, authorised with an RS256 JWT
signed by the Vonage application's private key. Each message carries our RequestId as
``client_ref`` (Vonage echoes it in every status) and its own ``webhook_url``. Vonage
dedupes nothing: an answer lost after the request left is an unknown outcome.

Webhooks (status and inbound) carry ``Authorization: Bearer <JWT>``, HS256 with the
account's signature secret, whose ``payload_hash`` claim is the SHA-256 of the body
(https://developer.vonage.com/en/messages/concepts/signed-webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from channel.budget import Budget
from channel.config import is_guid
from channel.errors import BadRequest, Forbidden, NotConfigured, Unauthorized
from channel.phone import international, mask
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
    SendOutcome,
    StatusReport,
    Throttled,
    Tokens,
    Webhook,
    WebhookReply,
    webhook_object,
)
from channel.providers.rest import json_object, post_once, retry_after

if TYPE_CHECKING:
    from channel.config import Settings, SettingsReader

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60
"""Seconds an application JWT is valid (``exp``), as Vonage's own SDK issues them."""
TOKEN_REUSE = 10 * 60
"""Seconds one JWT serves before a fresh one is signed: an RS256 signature costs about a
millisecond, as much as the rest of a send; reissuing well before ``exp`` keeps every
request's token at least 5 minutes from expiry."""
MAX_WEBHOOK_AGE = 24 * 3600 + 300
"""Oldest ``iat`` a webhook JWT may carry: Vonage retries a callback for 24 hours."""
MAX_CLOCK_SKEW = 300

# https://developer.vonage.com/en/api-errors/messages
_THROTTLED_CODES = {1000}
_PERMANENT_CODES = {1040, 1050, 1120, 1160}
"""Invalid message or prefix, number barred, illegal sender, non-whitelisted destination:
refusals of this message, whatever HTTP status they come with."""
_ACCOUNT_CODES = {1060, 1070, 1080}
"""Account barred, out of credit, not enabled: an operator must act (503, never NotSent)."""
_TRANSIENT_CODES = {1030, 1100}
"""Internal error, communication failed: Vonage may have taken the message."""
_CODE = re.compile(r"#(\d+)$")


class ApplicationToken:
    """The RS256 application JWT Vonage wants on each request, reissued before expiry."""

    def __init__(self, application_id: str, private_key: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self._application_id = application_id
        self._key = load_pem_private_key(private_key.encode("utf-8"), password=None)
        self._current: tuple[str, float] | None = None

    def __call__(self) -> str:
        """A token with at least ``TOKEN_LIFETIME - TOKEN_REUSE`` seconds left."""
        import jwt  # with cryptography: imported by the process that uses Vonage only

        now = time.time()
        current = self._current
        if current is not None and now - current[1] < TOKEN_REUSE:
            return current[0]
        issued = int(now)
        claims = {
            "application_id": self._application_id,
            "iat": issued,
            "jti": str(uuid.uuid4()),
            "exp": issued + TOKEN_LIFETIME,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256")  # type: ignore[arg-type]
        self._current = (token, now)  # a race only signs one token more
        return token


class VonageProvider:
    """Sends one message per call to the Messages API."""

    id = "vonage"

    def __init__(
        self, *, token: ApplicationToken, session: requests.Session, base_url: str
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/messages"
        self._token = token
        self._session = session

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """POST the message once and classify Vonage's answer."""
        reply = post_once(
            self._session,
            self.url,
            provider="Vonage",
            budget=budget,
            deduped=False,
            json=self.body(sms),
            headers={"Authorization": f"Bearer {self._token()}", "Accept": "application/json"},
        )
        return self._outcome(reply, sms)

    def body(self, sms: OutboundSms) -> dict[str, str]:
        """The JSON of the send request: numbers without '+', our RequestId as client_ref."""
        body = {
            "message_type": "text",
            "channel": "sms",
            "to": sms.to.removeprefix("+"),
            "from": sms.sender.removeprefix("+"),
            "text": sms.text,
            "client_ref": sms.correlation,
        }
        if sms.status_callback_url is not None:
            body["webhook_url"] = sms.status_callback_url
        return body

    def _outcome(self, reply: requests.Response, sms: OutboundSms) -> SendOutcome:
        status = reply.status_code
        body = json_object(reply)
        if 200 <= status < 300:
            message_id = body.get("message_uuid")
            if not isinstance(message_id, str) or not message_id:
                raise OutcomeUnknown(f"Vonage answered {status} without a message_uuid")
            log.info("vonage accepted %s for %s", message_id, mask(sms.to))
            return Accepted(message_id)
        code = _error_code(body)
        if status == 429 or code in _THROTTLED_CODES:
            raise Throttled(retry_after(reply))
        if code in _PERMANENT_CODES:
            return _rejected(status, code, body, sms)
        if status in (401, 402, 403, 404) or code in _ACCOUNT_CODES:
            raise ProviderMisconfigured(
                f"Vonage refused the application or account (HTTP {status}, code {code}): "
                "check VONAGE_APPLICATION_ID, VONAGE_PRIVATE_KEY and the account"
            )
        if status >= 500 or code in _TRANSIENT_CODES or status < 400:
            raise OutcomeUnknown(f"Vonage answered HTTP {status} (code {code})")
        return _rejected(status, code, body, sms)


def _rejected(status: int, code: int | None, body: dict[str, Any], sms: OutboundSms) -> Rejected:
    # Vonage's detail may quote the recipient's number: keep it below INFO.
    log.info("vonage rejected the message to %s: HTTP %s code %s", mask(sms.to), status, code)
    log.debug("vonage rejection detail: %s", body.get("detail") or body.get("title"))
    return Rejected(code=str(code or status), reason=str(body.get("title") or ""))


def _error_code(body: dict[str, Any]) -> int | None:
    """The Messages error code of a problem+json body: ``type`` ends in ``#1120``."""
    match = _CODE.search(str(body.get("type") or ""))
    if match:
        return int(match.group(1))
    title = body.get("title")
    return int(title) if isinstance(title, str) and title.isdigit() else None


# -- Settings ----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.nexmo.com"


@dataclass(frozen=True)
class VonageSettings:
    """The VONAGE_* settings."""

    application_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    signature_secret: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL


def read_settings(reader: SettingsReader) -> OwnSettings[VonageSettings]:
    """Read VONAGE_* and say what keeps Vonage from sending."""
    own = VonageSettings(
        application_id=reader.get("VONAGE_APPLICATION_ID"),
        private_key=_pem(reader.get("VONAGE_PRIVATE_KEY")),
        signature_secret=reader.get("VONAGE_SIGNATURE_SECRET"),
        base_url=reader.url("VONAGE_BASE_URL") or DEFAULT_BASE_URL,
    )
    problems = []
    if own.application_id is None:
        problems.append("VONAGE_APPLICATION_ID is not set (provider vonage)")
    elif not is_guid(own.application_id):
        problems.append("VONAGE_APPLICATION_ID must be the application's id (a GUID)")
    if own.private_key is None:
        problems.append("VONAGE_PRIVATE_KEY is not set (provider vonage)")
    elif not _is_rsa_private_key(own.private_key):
        problems.append(
            "VONAGE_PRIVATE_KEY is not an RSA private key in PEM form: paste the whole "
            "private.key file of the Vonage application (newlines as is or as \\n)"
        )
    if own.signature_secret is None:
        problems.append(
            "VONAGE_SIGNATURE_SECRET is not set (provider vonage): delivery reports and "
            "replies cannot be verified"
        )
    return OwnSettings(own, tuple(problems))


def _pem(value: str | None) -> str | None:
    r"""A PEM setting with ``\n`` escapes turned into newlines (app settings are one line)."""
    return None if value is None else value.replace("\\n", "\n")


def _is_rsa_private_key(pem: str) -> bool:
    # cryptography comes with azure-identity; imported only when vonage is configured.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):  # not PEM, encrypted, or an unsupported key
        return False
    return isinstance(key, RSAPrivateKey)


def sender(
    own: VonageSettings, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> VonageProvider:
    """Build the Vonage adapter from VONAGE_* settings (read_settings checked them)."""
    assert own.application_id is not None  # noqa: S101 - read_settings guarantees it
    assert own.private_key is not None  # noqa: S101 - read_settings guarantees it
    token = ApplicationToken(own.application_id, own.private_key)
    return VonageProvider(token=token, session=session, base_url=own.base_url)


# -- Webhooks: message status and inbound messages ---------------------------------------
# https://developer.vonage.com/en/messages/concepts/messages-status-callbacks

_DELIVERED = {"delivered"}
_NOT_DELIVERED = {"rejected", "undeliverable"}  # "rejected" also covers an expired TTL


class VonageWebhooks:
    """Verifies Vonage's signed JWT and reads its JSON status and inbound callbacks."""

    id = "vonage"
    # One message's JSON event: a few KiB. Anything near this limit is not from Vonage.
    max_body_bytes = 64 * 1024

    def __init__(self, *, signature_secret: str, default_region: str = "US") -> None:
        # HMAC pads a key shorter than its block with zero bytes (RFC 2104), so padding
        # to 32 bytes changes no signature; it spares PyJWT's warning about short keys
        # (the secret is Vonage's choice, not ours).
        self._key = signature_secret.encode("utf-8").ljust(32, b"\0")
        self.default_region = default_region

    def verify(self, hook: Webhook) -> None:
        """Accept the call only if its JWT is signed with our secret and hashes this body."""
        import jwt  # with cryptography: imported by the process that uses Vonage only

        scheme, _, token = hook.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization: Bearer token is missing")
        try:
            claims = jwt.decode(
                token.strip(),
                self._key,
                algorithms=["HS256"],
                # iat is checked below (a day, not PyJWT's "not in the future"); Vonage
                # names no audience.
                options={
                    "require": ["iat", "payload_hash"],
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise Forbidden(f"the webhook token is not valid ({type(exc).__name__})") from None
        digest = hashlib.sha256(hook.body).hexdigest()
        claimed = claims["payload_hash"]
        # Compared as bytes: compare_digest raises TypeError on a non-ASCII str.
        if not isinstance(claimed, str) or not hmac.compare_digest(
            digest.encode(), claimed.lower().encode("utf-8")
        ):
            raise Forbidden("the body does not match the token's payload_hash")
        issued = claims["iat"]
        now = time.time()
        if not isinstance(issued, int | float) or not (
            now - MAX_WEBHOOK_AGE <= issued <= now + MAX_CLOCK_SKEW
        ):
            raise Forbidden("the webhook token's iat is not within the last day")

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """Vonage has no subscription handshake."""
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The one status a callback carries, with our RequestId from ``client_ref``."""
        body = webhook_object(hook)
        if "status" not in body and "text" in body:
            log.warning(
                "an inbound message reached %s: set the application's Inbound URL to "
                "/api/inbound/vonage",
                urlsplit(hook.url).path,
            )
            return []
        message_id = _text(body, "message_uuid")
        status = _text(body, "status").lower()
        if status in _DELIVERED:
            state = DeliveryState.DELIVERED
        elif status in _NOT_DELIVERED:
            state = DeliveryState.NOT_DELIVERED
        else:  # submitted, and any new one
            state = DeliveryState.PENDING
        ref = body.get("client_ref")
        error = body.get("error")
        code = error.get("title") if isinstance(error, dict) else None
        detail = f"{status} {code}" if isinstance(code, str) else status
        return [
            StatusReport(message_id, state, ref if isinstance(ref, str) and ref else None, detail)
        ]

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer's message of an inbound SMS callback; other channels are ignored."""
        body = webhook_object(hook)
        channel = body.get("channel")
        if channel != "sms":
            log.info("inbound %s message acknowledged and ignored", channel or "(no channel)")
            return []
        text = body.get("text")
        return [
            ReceivedSms(
                message_id=_text(body, "message_uuid"),
                customer=international(_text(body, "from"), self.default_region),
                our_number=international(_text(body, "to"), self.default_region),
                text=text if isinstance(text, str) else "",
            )
        ]

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """Any 2xx; Vonage retries 429 and 5xx answers for 24 hours."""
        return WebhookReply(status=200)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(name, "is required")
    return value.strip()


def webhooks(own: VonageSettings, settings: Settings) -> VonageWebhooks:
    """Build the webhook side of Vonage: needs VONAGE_SIGNATURE_SECRET."""
    if own.signature_secret is None:
        raise NotConfigured(
            ["VONAGE_SIGNATURE_SECRET is not set: Vonage webhooks cannot be verified"]
        )
    return VonageWebhooks(
        signature_secret=own.signature_secret, default_region=settings.default_region
    )


SPEC = ProviderSpec("vonage", read_settings=read_settings, sender=sender, webhooks=webhooks)
