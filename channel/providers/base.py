"""The provider protocol and the neutral types every adapter speaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from channel.budget import Budget


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


@dataclass(frozen=True)
class Accepted:
    """The provider took the message; ``message_id`` is its id for it."""

    message_id: str


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


class ProviderMisconfigured(Exception):
    """The provider refused our credentials or account: an operator must act."""


class Provider(Protocol):
    """What an SMS provider adapter does for the outbound path."""

    id: str

    def send(self, sms: OutboundSms, budget: Budget) -> SendOutcome:
        """Submit once; return Accepted or Rejected, or raise one of the conditions above."""
        ...
