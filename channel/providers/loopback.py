"""The loopback provider: accepts every valid message and sends nothing (local runs)."""

from __future__ import annotations

import logging
import uuid

import requests

from channel.budget import Budget
from channel.config import Settings
from channel.phone import mask
from channel.providers.base import Accepted, OutboundSms

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


def from_settings(settings: Settings, session: requests.Session) -> LoopbackProvider:
    """Build the loopback provider; it needs no settings."""
    return LoopbackProvider()
