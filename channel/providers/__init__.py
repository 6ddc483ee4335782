"""SMS provider adapters and the registry that builds them."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import requests

from channel.config import PROVIDER_IDS, Settings
from channel.errors import NotFound, NotImplementedYet
from channel.providers.base import Provider, WebhookAdapter

if TYPE_CHECKING:
    from channel.identity import TokenSource

# Adding a provider: one module with ``from_settings(settings, session)`` (sending) and
# ``webhooks_from_settings(settings)`` (its webhooks), and one line here. A builder that
# needs the app's managed identity also takes ``tokens`` (see build_provider). Modules are
# imported on first use to keep cold starts short.
_MODULES = {
    "loopback": "channel.providers.loopback",
    "twilio": "channel.providers.twilio",
    "acs": "channel.providers.acs",
    "vonage": "channel.providers.vonage",
    "telnyx": "channel.providers.telnyx",
}


def build_provider(
    settings: Settings,
    session: requests.Session,
    tokens: Callable[[], TokenSource] | None = None,
) -> Provider:
    """The sending adapter for ``settings.provider``, wired to the shared HTTP session.

    ``tokens`` gives the process's one TokenSource; it is passed on (uncalled, so
    azure-identity is imported only by a provider that uses it) to builders that
    declare a ``tokens`` parameter.
    """
    build = _module(settings.provider).from_settings
    if tokens is not None and "tokens" in inspect.signature(build).parameters:
        provider: Provider = build(settings, session, tokens=tokens)
    else:
        provider = build(settings, session)
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
