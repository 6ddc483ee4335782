"""Which provider sends a message: CHANNEL_ROUTES over CHANNEL_PROVIDER, and back for replies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

SETTING = "CHANNEL_ROUTES"


@dataclass(frozen=True)
class Route:
    """One entry of CHANNEL_ROUTES: a channel definition or a sender, and its provider."""

    kind: str
    """``channelDefinitionId`` or ``sender``."""
    key: str
    """The definition id in lower case, or the sender as providers get it (E.164 or an
    alphanumeric id as written)."""
    provider: str

    def shown(self) -> str:
        """The key as health may show it: a sender number masked (health is public)."""
        from channel.phone import mask  # phonenumbers: only when settings are read

        return self.key if self.kind == "channelDefinitionId" else mask(self.key)


@dataclass(frozen=True)
class Routes:
    """The routing table: a definition's route wins over a sender's, which wins over the default."""

    default: str
    """CHANNEL_PROVIDER."""
    by_definition: Mapping[str, str] = field(default_factory=dict)
    by_sender: Mapping[str, str] = field(default_factory=dict)
    region: str = "US"
    """The region sender keys and ``From`` values are read in (CHANNEL_DEFAULT_REGION)."""

    @property
    def entries(self) -> tuple[Route, ...]:
        """Every route, definitions first, each in the order it was written."""
        return tuple(Route("channelDefinitionId", k, p) for k, p in self.by_definition.items()) + (
            tuple(Route("sender", k, p) for k, p in self.by_sender.items())
        )

    @property
    def in_use(self) -> tuple[str, ...]:
        """The default provider, then every provider a route names, each once."""
        named = [self.default, *self.by_definition.values(), *self.by_sender.values()]
        return tuple(dict.fromkeys(named))

    def provider_for(self, channel_definition_id: str, sender: str) -> str:
        """The provider that sends for this channel definition and ``From``."""
        from channel.phone import sender_for_provider

        provider = self.by_definition.get(channel_definition_id.lower())
        if provider is None and self.by_sender:
            provider = self.by_sender.get(sender_for_provider(sender, self.region))
        return self.default if provider is None else provider

    def reply_definition(self, provider: str, fallback: str | None) -> str | None:
        """The channel definition of a reply that came through ``provider``, if routes say.

        Used when no send from the reply's number was remembered: the one definition
        routed to ``provider``; ``fallback`` (CHANNEL_DEFINITION_ID) when none is, or when
        it is among several; None (the reply waits for a send to name it) otherwise.
        """
        routed = [d for d, p in self.by_definition.items() if p == provider]
        if not routed:
            return fallback
        if len(routed) == 1:
            return routed[0]
        if fallback is not None and fallback.lower() in routed:
            return fallback
        return None


def parse_routes(
    raw: str | None, *, default: str, known: Collection[str], region: str
) -> tuple[Routes, list[str]]:
    """CHANNEL_ROUTES read into Routes, and the problems found (never quoting the value).

    Keys that are GUIDs route a channel definition; any other key routes a sender
    (``From``). Values are provider ids; a route to an unknown one is kept (health shows
    it unconfigured) and is a problem.
    """
    from channel.phone import sender_for_provider

    routes = Routes(default=default, region=region)
    if raw is None:
        return routes, []
    try:
        table = json.loads(raw)
    except (ValueError, RecursionError):
        return routes, [f"{SETTING} is not valid JSON (a JSON object of route: provider id)"]
    if not isinstance(table, dict):
        return routes, [f"{SETTING} must be a JSON object mapping routes to provider ids"]
    problems: list[str] = []
    by_definition: dict[str, str] = {}
    by_sender: dict[str, str] = {}
    unknown = 0
    for key, value in table.items():
        route = key.strip()
        if not route:
            problems.append(f"{SETTING} has an empty route")
            continue
        provider = value.strip().lower() if isinstance(value, str) else ""
        if provider not in known:
            unknown += 1
        if _is_guid(route):
            by_definition[route.lower()] = provider
        else:
            by_sender[sender_for_provider(route, region)] = provider
    if unknown:
        problems.append(
            f"{SETTING} names an unknown provider for {unknown} route(s) "
            f"(known: {', '.join(known)})"
        )
    return Routes(default, by_definition, by_sender, region), problems


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
