"""The loopback provider: accepts every valid message and sends nothing (local runs)."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from channel.budget import Budget
from channel.phone import mask
from channel.providers.base import Accepted, OutboundSms, OwnSettings, ProviderSpec, Tokens

if TYPE_CHECKING:
    import requests

    from channel.config import Settings, SettingsReader

log = logging.getLogger(__name__)


class LoopbackProvider:
    """A provider that answers at once with a fresh message id."""

    id = "loopback"

    def send(self, sms: OutboundSms, budget: Budget) -> Accepted:
        """Accept the message and log it, masked."""
        message_id = f"LB{uuid.uuid4().hex}"
        log.info(
            "loopback accepted %s: %s -> %s, %d characters",
            message_id,
            mask(sms.sender),
            mask(sms.to),
            len(sms.text),
        )
        return Accepted(message_id)


def _no_settings(reader: SettingsReader) -> OwnSettings[None]:
    """The loopback provider has no settings of its own."""
    return OwnSettings(None)


def _sender(
    own: None, settings: Settings, session: requests.Session, tokens: Tokens | None
) -> LoopbackProvider:
    """Build the loopback provider; it needs no settings."""
    return LoopbackProvider()


SPEC = ProviderSpec[None]("loopback", read_settings=_no_settings, sender=_sender)
"""Sends nothing and calls no webhook of ours."""
