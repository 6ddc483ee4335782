"""SMS provider adapters and the registry that builds them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from channel.errors import NotFound, NotImplementedYet

if TYPE_CHECKING:
    import requests

    from channel.config import Settings
    from channel.providers.base import Provider, ProviderSpec, Tokens, WebhookAdapter

# Adding a provider: one module whose ``SPEC`` (a ProviderSpec) describes it, and one
# line here. Modules are named, not imported: each is imported when the settings are
# read, never when the app is (cold start).
_MODULES = {
    "loopback": "channel.providers.loopback",
    "twilio": "channel.providers.twilio",
    "acs": "channel.providers.acs",
    "vonage": "channel.providers.vonage",
    "telnyx": "channel.providers.telnyx",
    "sinch": "channel.providers.sinch",
    "plivo": "channel.providers.plivo",
}
PROVIDER_IDS = tuple(_MODULES)
"""Every value CHANNEL_PROVIDER and the webhook routes' ``{provider}`` take."""


def spec(provider_id: str) -> ProviderSpec[Any]:
    """The description of ``provider_id``; NotFound for an id that names no provider."""
    name = _MODULES.get(provider_id)
    if name is None:
        raise NotFound(f"no provider '{provider_id}' (known: {', '.join(PROVIDER_IDS)})")
    described: ProviderSpec[Any] = importlib.import_module(name).SPEC
    return described


def build_provider(
    settings: Settings,
    session: requests.Session,
    tokens: Tokens | None = None,
    provider_id: str | None = None,
) -> Provider:
    """The sending adapter of ``provider_id`` (default: CHANNEL_PROVIDER) on the one session.

    ``tokens`` gives the process's one TokenSource, passed on uncalled so that
    azure-identity is imported only by a provider that uses it.
    """
    chosen = spec(settings.provider if provider_id is None else provider_id)
    return chosen.sender(chosen.settings_in(settings), settings, session, tokens)


def build_webhooks(provider_id: str, settings: Settings) -> WebhookAdapter:
    """The webhook adapter of ``provider_id`` (whatever provider sends outbound)."""
    described = spec(provider_id)
    if described.webhooks is None:
        raise NotImplementedYet(f"provider '{provider_id}' has no webhooks")
    return described.webhooks(described.settings_in(settings), settings)
