"""SMS provider adapters and the registry that builds the configured one."""

from __future__ import annotations

import importlib

import requests

from channel.config import Settings
from channel.providers.base import Provider

# Adding a provider: one module with a ``from_settings(settings, session)`` builder,
# and one line here. Modules are imported on first use to keep cold starts short.
_BUILDERS = {
    "loopback": "channel.providers.loopback",
    "twilio": "channel.providers.twilio",
}


def build_provider(settings: Settings, session: requests.Session) -> Provider:
    """The adapter for ``settings.provider``, wired to the shared HTTP session."""
    module_name = _BUILDERS.get(settings.provider)
    if module_name is None:
        raise LookupError(f"provider '{settings.provider}' is not available in this version")
    module = importlib.import_module(module_name)
    provider: Provider = module.from_settings(settings, session)
    return provider


def is_known(provider_id: str) -> bool:
    """Whether ``provider_id`` names a provider of the SPEC (for webhook routes)."""
    from channel.config import PROVIDER_IDS

    return provider_id in PROVIDER_IDS
