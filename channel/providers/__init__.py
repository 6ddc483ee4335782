"""SMS provider adapters and the registry that builds them."""

from __future__ import annotations

import importlib
from types import ModuleType

import requests

from channel.config import PROVIDER_IDS, Settings
from channel.errors import NotFound, NotImplementedYet
from channel.providers.base import Provider, WebhookAdapter

# Adding a provider: one module with ``from_settings(settings, session)`` (sending) and
# ``webhooks_from_settings(settings)`` (its webhooks), and one line here. Modules are
# imported on first use to keep cold starts short.
_MODULES = {
    "loopback": "channel.providers.loopback",
    "twilio": "channel.providers.twilio",
}


def build_provider(settings: Settings, session: requests.Session) -> Provider:
    """The sending adapter for ``settings.provider``, wired to the shared HTTP session."""
    provider: Provider = _module(settings.provider).from_settings(settings, session)
    return provider


def build_webhooks(provider_id: str, settings: Settings) -> WebhookAdapter:
    """The webhook adapter of ``provider_id`` (whatever provider sends outbound)."""
    module = _module(provider_id)
    if not hasattr(module, "webhooks_from_settings"):
        raise NotImplementedYet(f"provider '{provider_id}' has no webhooks")
    adapter: WebhookAdapter = module.webhooks_from_settings(settings)
    return adapter


def _module(provider_id: str) -> ModuleType:
    if provider_id not in PROVIDER_IDS:
        raise NotFound(f"no provider '{provider_id}' (known: {', '.join(PROVIDER_IDS)})")
    name = _MODULES.get(provider_id)
    if name is None:
        raise NotImplementedYet(f"provider '{provider_id}' is not available in this version")
    return importlib.import_module(name)
