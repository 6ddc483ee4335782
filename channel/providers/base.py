"""The provider protocol and the neutral types every adapter speaks."""

from __future__ import annotations

import enum
import functools
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from channel.budget import Budget
from channel.config import DEFAULT_AMBIGUOUS_GRACE_SECONDS
from channel.errors import BadRequest, Forbidden, Unauthorized

if TYPE_CHECKING:
    import requests

    from channel.config import Settings, SettingsReader
    from channel.identity import TokenSource

MAX_ID_CHARS = 256
"""Provider message ids (Twilio's are 34 characters, ACS's about 70) and correlations."""


@dataclass(frozen=True)
class OutboundSms:
    """One SMS ready for a provider: numbers normalised, text extracted."""

    to: str
    """Recipient in E.164."""
    sender: str
    """Sender in E.164, or an alphanumeric id / short code unchanged."""
    text: str
    correlation: str
    """Our RequestId: sent along so a status callback can be matched to it."""
    status_callback_url: str | None
    """Where the provider should post delivery reports, when a public URL is known."""
    first_attempt_at: float = field(default_factory=time.time)
    """When the first attempt that this one may repeat began (epoch seconds), from the
    ledger: the same for every attempt of a RequestId whose earlier attempt may have
    reached the provider, in any process. A provider that dedupes repeats by an id and
    a first-sent time (ACS) needs both to be stable."""
    maybe_sent_before: bool = False
    """An earlier attempt of this RequestId may have reached the provider, and no status
    callback has told us (the ledger's attempt count). A provider that dedupes nothing
    but can be asked for a message by our correlation (Sinch) looks for it first."""
    channel_definition_id: str | None = None
    """The request's ChannelDefinitionId, for a provider whose callbacks can carry it back."""
    requested_from: str | None = None
    """The request's ``From`` exactly as Dataverse sent it (``sender`` is the provider's
    form of it), for a provider whose callbacks can carry it back."""


@dataclass(frozen=True)
class Accepted:
    """The provider took the message; ``message_id`` is its id for it."""

    message_id: str
    correlated_by_id: bool = False
    """The provider's status reports will name only this id, nothing of ours (Telnyx):
    the ledger must record which RequestId it belongs to before the answer is given."""


@dataclass(frozen=True)
class Rejected:
    """The provider refused the message for good; retrying cannot help."""

    code: str
    reason: str


SendOutcome = Accepted | Rejected


class Throttled(Exception):
    """The provider asked us to slow down; the message was not taken."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"throttled (retry after {retry_after})")
        self.retry_after = retry_after


class Unreachable(Exception):
    """The request never reached the provider (e.g. connection refused): provably unsent."""


class OutcomeUnknown(Exception):
    """The request may have reached the provider (5xx, read timeout): do not re-POST blindly."""


class SafeToRepeat(OutcomeUnknown):
    """The outcome is unknown, but the provider dedupes repeats of this exact request.

    The request carried the provider's own idempotency key (ACS: repeatabilityRequestId
    and repeatabilityFirstSent), so POSTing it again cannot create a second message and
    gets the first one's answer: the caller may repeat it within its budget.
    """

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unsendable(Exception):
    """The message could not be made into a provider request: nothing was sent.

    ``field`` names the part of the message at fault (``to``, ``sender`` or ``text``),
    or is None when the fault is not the message's (a defect of ours).
    """

    def __init__(self, detail: str, *, field: str | None) -> None:
        super().__init__(detail)
        self.field = field


def unsendable(sms: OutboundSms, provider: str, exc: Exception) -> Unsendable:
    """The error for a request to ``provider`` that failed to build with ``exc``."""
    for name in ("to", "sender", "text"):
        try:
            str(getattr(sms, name)).encode("utf-8")
        except UnicodeEncodeError:
            return Unsendable("is not valid Unicode text (a lone surrogate)", field=name)
    return Unsendable(
        f"the {provider} request could not be built: {type(exc).__name__}", field=None
    )


class ProviderMisconfigured(Exception):
    """The provider refused our credentials or account: an operator must act."""


class Provider(Protocol):
    """What an SMS provider adapter does for the outbound path."""

    id: str

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """Submit once; return Accepted or Rejected, or raise one of the conditions above.

        A request that cannot be built raises Unsendable before anything is sent, never
        OutcomeUnknown: only what happens once the request may have left is unknown.
        """
        ...


@dataclass(frozen=True)
class Webhook:
    """A provider's HTTP call to one of our webhook routes, free of azure.functions."""

    method: str
    url: str
    """The URL as received; adapters take only its path and raw query from it (the host
    part is whatever the proxy in front of us made of it)."""
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes

    @functools.cached_property
    def form(self) -> dict[str, list[str]]:
        """The body's form fields, blank values kept (a provider signs them too).

        Parsed once per call: verifying a signature and reading the fields both need
        it. BadRequest when the body is not UTF-8 form data.
        """
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body", "not UTF-8 form data") from None
        return parse_qs(text, keep_blank_values=True)


class DeliveryState(enum.Enum):
    """Where a message stands, in Dataverse's terms."""

    DELIVERED = "Delivered"
    NOT_DELIVERED = "NotDelivered"
    PENDING = "Pending"
    """Not final yet (queued, sent, ...): acknowledged, nothing reported."""


@dataclass(frozen=True)
class StatusReport:
    """One status of one message, as a provider reported it."""

    message_id: str
    state: DeliveryState
    correlation: str | None
    """Our RequestId when the provider echoes it back (callback URL, tag)."""
    detail: str = ""
    correlated_by_id: bool = False
    """Without ``correlation``, our RequestId is the one the ledger recorded for
    ``message_id`` at send (see Accepted); an id not recorded yet may be a send whose
    answer is still on its way."""
    same_message_only: bool = False
    """``correlation`` is a field anyone sending through the account may set (Sinch's
    client_reference, echoed for batches of other systems on the same service plan):
    once the ledger has recorded the request's answer, the report counts only if it
    names the message id recorded there."""
    channel_definition_id: str | None = None
    """The request's ChannelDefinitionId, when the report carries it under a MAC of ours
    (Twilio's callback URL): with ``requested_from``, all a final report needs to be
    forwarded without reading the request from the ledger."""
    requested_from: str | None = None
    """The request's ``From`` as Dataverse sent it, carried as ``channel_definition_id``."""


@dataclass(frozen=True)
class ReceivedSms:
    """A customer's message to one of our numbers."""

    message_id: str
    customer: str
    our_number: str
    text: str


@dataclass(frozen=True)
class WebhookReply:
    """What to answer a provider's webhook call."""

    status: int = 200
    body: str = ""
    mimetype: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Nonce:
    """A one-time value a verified call's signature covers, for the ledger to keep.

    A signature that covers neither the body nor a time (Plivo's V2) proves only that
    the provider once signed this nonce: the call is genuine the first time the nonce
    is seen, and a replay (with any body) after that.
    """

    value: str
    must_be_new: bool = True
    """False: the call is proven otherwise (Plivo's V3 alongside V2); the nonce is only
    kept, so that a later call cannot reuse it with the weaker proof alone."""


class WebhookAdapter(Protocol):
    """What a provider adapter does for the webhook routes: verify, then parse."""

    id: str
    max_body_bytes: int
    """The largest body the provider sends; a larger one is refused (413) unread."""

    def verify(self, hook: Webhook) -> Nonce | None:
        """Raise Unauthorized or Forbidden unless the call provably comes from the provider.

        A Nonce returned is part of the proof: the caller keeps it, and refuses the call
        (403) if it must be new and was seen before.
        """
        ...

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        """The answer to a subscription handshake, or None for an ordinary call."""
        ...

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        """The delivery statuses a verified status callback carries."""
        ...

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        """The customer messages a verified inbound call carries."""
        ...

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        """The answer once the call's content is handled."""
        ...


def verify_query_secret(hook: Webhook, secret: bytes) -> None:
    """Accept the call only if its query carries ``secret`` equal to ours.

    For providers that sign nothing (Event Grid, Sinch without signing): the webhook
    URL set at the provider carries CHANNEL_WEBHOOK_SECRET as ``?secret=``.
    """
    values = parse_qs(urlsplit(hook.url).query, keep_blank_values=True).get("secret")
    if not values or not values[0]:
        raise Unauthorized("the secret query parameter is missing")
    # Compared as bytes: compare_digest raises TypeError on a non-ASCII str.
    if len(values) != 1 or not hmac.compare_digest(values[0].encode("utf-8"), secret):
        raise Forbidden("the secret query parameter does not match")


def webhook_json(hook: Webhook, expected: str = "a JSON object") -> Any:
    """The JSON of a call's body: BadRequest naming ``body`` when it is not ``expected``."""
    try:
        return json.loads(hook.body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", f"not {expected}") from None
    except RecursionError:  # e.g. "[" * 60000: deeper than the parser goes
        raise BadRequest("body", "JSON nested too deeply") from None


def webhook_object(hook: Webhook) -> dict[str, Any]:
    """The call's body as a JSON object: BadRequest naming ``body`` otherwise."""
    body = webhook_json(hook)
    if not isinstance(body, dict):
        raise BadRequest("body", "not a JSON object")
    return body


def webhook_field(value: str, field: str, limit: int) -> str:
    """``value`` if it can be an id or number: BadRequest naming ``field`` otherwise.

    Ids and numbers are kept in the ledger and shown in logs: no genuine one is longer
    than ``limit`` or holds control characters, line breaks or lone surrogates.
    """
    if len(value) > limit:
        raise BadRequest(field, f"is longer than {limit} characters")
    if not value.isprintable():
        raise BadRequest(field, "holds control characters, line breaks or lone surrogates")
    return value


def received_text(text: str, limit: int) -> str:
    """A customer's text as it can be kept and forwarded.

    Cut at ``limit`` characters (the provider's own maximum), any lone surrogate (not
    valid Unicode, which no request to Dataverse can carry) replaced by U+FFFD.
    """
    return _LONE_SURROGATE.sub("\ufffd", text[:limit])


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""What a str holds only when it came from an escaped lone surrogate (json.loads joins
escaped pairs into one character)."""


# -- The description of a provider, as the registry (channel.providers) holds it ----------

S = TypeVar("S")


@dataclass(frozen=True)
class OwnSettings(Generic[S]):
    """A provider's settings as read, and what is wrong with them if it is the one chosen."""

    values: S
    problems: tuple[str, ...] = ()
    """Refusals to send (health 503) when this provider is in use (``CHANNEL_PROVIDER`` or
    a ``CHANNEL_ROUTES`` route names it)."""
    notes: tuple[str, ...] = ()


Tokens = Callable[[], "TokenSource"]
"""The process's one TokenSource, created on first call (azure-identity is imported then)."""


@dataclass(frozen=True)
class ProviderSpec(Generic[S]):
    """Everything the app needs to know about one provider, kept in its own module.

    ``read_settings`` reads the provider's settings through the one settings reader
    (nothing else touches the environment) and says what is wrong with them;
    ``sender`` and ``webhooks`` build its adapters from them.
    """

    id: str
    read_settings: Callable[[SettingsReader], OwnSettings[S]]
    sender: Callable[[S, Settings, requests.Session, Tokens | None], Provider]
    webhooks: Callable[[S, Settings], WebhookAdapter] | None = None
    """None for a provider that calls no webhook of ours (loopback)."""
    ambiguous_grace_seconds: float = DEFAULT_AMBIGUOUS_GRACE_SECONDS
    """How long an attempt whose outcome is unknown blocks a new one. A provider that
    dedupes repeats only for a while (ACS: 5 minutes) wants the new one well within it."""
    correlated_by_id: bool = False
    """Its status reports name only its message id, nothing of ours (see Accepted)."""

    def settings_in(self, settings: Settings) -> S:
        """The provider's own part of ``settings``."""
        values: S = settings.providers[self.id]
        return values
