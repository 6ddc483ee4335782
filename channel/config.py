"""The app's settings: the only reader of environment variables."""

from __future__ import annotations

import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from channel.routing import Routes, parse_routes

if TYPE_CHECKING:
    from channel.providers.base import OwnSettings

MAX_BODY_BYTES = 64 * 1024
DEFAULT_BUDGET_SECONDS = 20.0
DEFAULT_AMBIGUOUS_GRACE_SECONDS = 600.0
"""How long an attempt whose outcome is unknown blocks a new one, unless the provider's
description (channel.providers) says otherwise."""
MAX_SEGMENTS_LIMIT = 50
"""The largest CHANNEL_MAX_SEGMENTS: well above the longest message providers take (Twilio:
1,600 characters, at most 24 UCS-2 segments)."""
_HOST = re.compile(r"[A-Za-z0-9.-]+|[0-9A-Fa-f:.]+")  # a name, an IPv4 or a bare IPv6 address
_CONNECTION_STRING = re.compile(r"(?i)(accesskey|accountkey|sharedaccess|endpoint)\s*=|;")


def _clean(value: str | None) -> str | None:
    """Treat unset, empty and blank settings alike."""
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True)
class Settings:
    """Every setting the app reads, typed, with the problems found while reading them.

    The channel-wide settings are fields; each provider's own (``TWILIO_*``, ``ACS_*``,
    ...) are in ``providers``, read by the provider's module (``ProviderSpec.settings_in``).
    """

    provider: str = "loopback"
    in_azure: bool = False
    public_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    definition_id: str | None = None
    message_part: str = "text"
    default_region: str = "US"
    storage_connection: str | None = field(default=None, repr=False)
    storage_url: str | None = None
    storage_table: str = "smschannel"
    ledger_path: str = ".channel/ledger.sqlite3"
    retention_days: float = 30.0
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    max_segments: int | None = None
    """CHANNEL_MAX_SEGMENTS: a longer text is NotSent without a provider call."""
    ambiguous_grace_seconds: float = DEFAULT_AMBIGUOUS_GRACE_SECONDS
    dataverse_url: str | None = None
    dataverse_organization_id: str | None = None
    azure_client_id: str | None = None
    providers: Mapping[str, Any] = field(default_factory=dict)
    """Each provider's typed settings by provider id (secrets kept out of their reprs);
    read when first asked for, unless the provider is in use (see ProviderSettings)."""
    route_table: Routes | None = None
    """CHANNEL_ROUTES as read; None means none (see ``routes``)."""
    provider_problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Each provider's problems by id; those of the providers in use are in ``problems``."""
    ambiguous_grace_by_provider: Mapping[str, float] = field(default_factory=dict)
    """The grace of each provider in use: its own, unless CHANNEL_AMBIGUOUS_GRACE_SECONDS
    sets one for all (``ambiguous_grace_seconds`` is CHANNEL_PROVIDER's)."""
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ledger_kind(self) -> str:
        """Which ledger backend the settings select."""
        return "table" if self.storage_connection or self.storage_url else "embedded"

    @property
    def routes(self) -> Routes:
        """Which provider sends what: CHANNEL_ROUTES over CHANNEL_PROVIDER."""
        if self.route_table is not None:
            return self.route_table
        return Routes(default=self.provider, region=self.default_region)

    @property
    def providers_in_use(self) -> tuple[str, ...]:
        """The providers this app sends through (see ``providers_in_use``)."""
        return providers_in_use(self.routes)

    def provider_configured(self, provider_id: str) -> bool:
        """True for a provider in use whose own settings have no problem."""
        return provider_id in self.providers_in_use and not self.provider_problems.get(provider_id)

    def ambiguous_grace_for(self, provider_id: str) -> float:
        """How long an unknown outcome of a send through ``provider_id`` blocks a new one."""
        return self.ambiguous_grace_by_provider.get(provider_id, self.ambiguous_grace_seconds)

    @property
    def dataverse_dev_mode(self) -> bool:
        """True when Dataverse calls are only logged (no DATAVERSE_URL outside Azure)."""
        return self.dataverse_url is None and not self.in_azure

    def status_callback_url(self, provider: str) -> str | None:
        """The delivery-report URL a provider should call, or None without a public URL."""
        if self.public_url is None:
            return None
        return f"{self.public_url}/api/delivery-report/{provider}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: the process environment, as now)."""
        # A copy of the process environment: a provider's settings read later (its first
        # webhook call) are those of the same moment as the rest.
        return SettingsReader(dict(os.environ) if environ is None else environ).read()


class SettingsReader:
    """Reads raw strings into Settings, collecting every problem instead of stopping.

    Providers read their own settings through it (``ProviderSpec.read_settings``).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = environ
        self.problems: list[str] = []
        self.notes: list[str] = []

    def get(self, name: str) -> str | None:
        """The setting ``name``, None when unset, empty or blank."""
        return _clean(self.env.get(name))

    def read(self) -> Settings:
        """Every setting, the problems and notes of the providers in use among them."""
        # Imported here, not at the top: channel.providers and its modules import config.
        from channel.providers import PROVIDER_IDS, spec

        in_azure = self.get("WEBSITE_INSTANCE_ID") is not None
        provider = self._provider(in_azure)
        grace = (
            spec(provider).ambiguous_grace_seconds
            if provider in PROVIDER_IDS
            else DEFAULT_AMBIGUOUS_GRACE_SECONDS
        )
        values: dict[str, object] = {
            "in_azure": in_azure,
            "provider": provider,
            "public_url": self._public_url(),
            "webhook_secret": self.get("CHANNEL_WEBHOOK_SECRET"),
            "definition_id": self._guid("CHANNEL_DEFINITION_ID"),
            "message_part": self.get("CHANNEL_MESSAGE_PART") or "text",
            "default_region": self._region(),
            "storage_connection": self.get("CHANNEL_STORAGE_CONNECTION"),
            "storage_url": self.url("CHANNEL_STORAGE_URL"),
            "storage_table": self.get("CHANNEL_STORAGE_TABLE") or "smschannel",
            "ledger_path": self.get("CHANNEL_LEDGER_PATH") or ".channel/ledger.sqlite3",
            "budget_seconds": self._seconds("CHANNEL_TIME_BUDGET_SECONDS", 20.0, 1.0, 110.0),
            "retention_days": self._number("CHANNEL_RETENTION_DAYS", 30.0, 1.0, 3650.0, "days"),
            "max_segments": self._max_segments(),
            "ambiguous_grace_seconds": self._seconds(
                "CHANNEL_AMBIGUOUS_GRACE_SECONDS", grace, 0.0, 86400.0
            ),
            "dataverse_url": self.url("DATAVERSE_URL"),
            "dataverse_organization_id": self._guid("DATAVERSE_ORGANIZATION_ID"),
            "azure_client_id": self.get("AZURE_CLIENT_ID"),
        }
        routes, routing_problems = parse_routes(
            self.get("CHANNEL_ROUTES"),
            default=provider,
            known=PROVIDER_IDS,
            region=str(values["default_region"]),
        )
        self.problems.extend(routing_problems)
        values["route_table"] = routes
        in_use = providers_in_use(routes)
        # Each provider keeps its own grace; an operator's CHANNEL_AMBIGUOUS_GRACE_SECONDS
        # holds for all of them.
        explicit = self.get("CHANNEL_AMBIGUOUS_GRACE_SECONDS") is not None
        values["ambiguous_grace_by_provider"] = {
            provider_id: values["ambiguous_grace_seconds"]
            if explicit
            else spec(provider_id).ambiguous_grace_seconds
            for provider_id in in_use
        }
        # Every provider has settings (any provider's webhooks may be called), but only
        # those in use are read now, and only their problems and notes count; any other
        # provider's are read when first needed (its webhook, a retry recorded under it),
        # so a cold start imports the provider modules it sends through and no other.
        owns = OwnSettingsByProvider(
            self.env, {provider_id: spec(provider_id).read_settings(self) for provider_id in in_use}
        )
        values["providers"] = ProviderSettings(owns, lambda own: own.values)
        values["provider_problems"] = ProviderSettings(owns, lambda own: own.problems)
        for provider_id in in_use:
            self.problems.extend(p for p in owns[provider_id].problems if p not in self.problems)
            self.notes.extend(n for n in owns[provider_id].notes if n not in self.notes)
        settings = Settings(**values)  # type: ignore[arg-type]
        self._check_environment(settings)
        return replace(settings, problems=tuple(self.problems), notes=tuple(self.notes))

    def _provider(self, in_azure: bool) -> str:
        from channel.providers import PROVIDER_IDS  # see read()

        raw = self.get("CHANNEL_PROVIDER")
        if raw is None:
            if in_azure:
                self.problems.append(
                    "CHANNEL_PROVIDER is not set; in Azure it must name the provider "
                    f"explicitly ({', '.join(PROVIDER_IDS)})"
                )
            return "loopback"
        provider = raw.lower()
        if provider not in PROVIDER_IDS:
            self.problems.append(
                f"CHANNEL_PROVIDER is not a known provider ({', '.join(PROVIDER_IDS)})"
            )
        return provider

    def url(self, name: str) -> str | None:
        """The URL setting ``name`` without a trailing slash; a malformed one is a problem."""
        raw = self.get(name)
        if raw is None:
            return None
        if not _is_plain_url(raw):
            # Never quote the value: a connection string pasted here carries a key, and
            # problems are shown by health to anyone.
            if _CONNECTION_STRING.search(raw):
                self.problems.append(
                    f"{name} looks like a connection string; use the endpoint URL "
                    "(https://...) and keep keys in their own settings"
                )
            else:
                self.problems.append(f"{name} must be an absolute http(s) URL")
            return None
        return raw.rstrip("/")

    def _public_url(self) -> str | None:
        url = self.url("CHANNEL_PUBLIC_URL")
        if url is not None:
            if urlsplit(url).query or urlsplit(url).fragment:
                self.problems.append("CHANNEL_PUBLIC_URL must not carry a query or fragment")
                return None
            return url
        # Azure sets WEBSITE_HOSTNAME to the app's default host name: a sound fallback
        # when no custom domain or proxy sits in front of the app.
        host = self.get("WEBSITE_HOSTNAME")
        if host is not None:
            self.notes.append(f"CHANNEL_PUBLIC_URL not set; using https://{host}")
            return f"https://{host}"
        self.notes.append("CHANNEL_PUBLIC_URL not set: providers get no status-callback URL")
        return None

    def _guid(self, name: str) -> str | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            uuid.UUID(raw)
        except ValueError:
            self.problems.append(f"{name} must be a GUID")
            return None
        return raw

    def _region(self) -> str:
        from channel.phone import is_known_region  # phonenumbers: only when settings are read

        raw = (self.get("CHANNEL_DEFAULT_REGION") or "US").upper()
        # A well-formed but unknown code (UK for GB) would make every national number
        # NotSent while all looks fine: check it against libphonenumber's regions.
        if not re.fullmatch(r"[A-Z]{2}", raw) or not is_known_region(raw):
            self.problems.append(
                "CHANNEL_DEFAULT_REGION must be an ISO 3166-1 region that has phone numbers "
                "(e.g. US, GB, DE)"
            )
            return "US"
        return raw

    def _max_segments(self) -> int | None:
        raw = self.get("CHANNEL_MAX_SEGMENTS")
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SEGMENTS_LIMIT:
            self.problems.append(
                f"CHANNEL_MAX_SEGMENTS must be a whole number from 1 to {MAX_SEGMENTS_LIMIT}"
            )
            return None
        return int(raw)

    def _seconds(self, name: str, default: float, low: float, high: float) -> float:
        return self._number(name, default, low, high, "seconds")

    def _number(self, name: str, default: float, low: float, high: float, unit: str) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            self.problems.append(f"{name} must be a number of {unit} from {low:g} to {high:g}")
            return default
        return value

    def _check_environment(self, s: Settings) -> None:
        if s.in_azure and s.ledger_kind == "embedded":
            self.problems.append(
                "no message ledger configured: set CHANNEL_STORAGE_CONNECTION or "
                "CHANNEL_STORAGE_URL (the embedded store cannot be shared by scaled-out "
                "instances, so it is refused in Azure)"
            )
        if s.in_azure and s.dataverse_url is None:
            self.problems.append("DATAVERSE_URL is not set")
        if s.dataverse_dev_mode:
            self.notes.append("DATAVERSE_URL not set: Dataverse calls are written to the log")


def providers_in_use(routes: Routes) -> tuple[str, ...]:
    """The known providers the app sends through: CHANNEL_PROVIDER, then the routes' ones.

    The one answer to "which providers are in use" (their settings are checked, their
    adapters may be built); an unknown id is a problem reported elsewhere, never in use.
    """
    from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

    return tuple(provider_id for provider_id in routes.in_use if provider_id in PROVIDER_IDS)


class OwnSettingsByProvider:
    """Each provider's own settings as read (values, problems, notes), read once, when asked.

    Reading a provider's settings imports its module: a process that never hears from
    a provider does not pay for it.
    """

    def __init__(self, environ: Mapping[str, str], read: Mapping[str, OwnSettings[Any]]) -> None:
        self._environ = environ
        self._owns = dict(read)
        self._lock = threading.Lock()

    def __getitem__(self, provider_id: str) -> OwnSettings[Any]:
        """``provider_id``'s own settings; KeyError for an id that names no provider."""
        own = self._owns.get(provider_id)
        if own is not None:
            return own
        from channel.providers import PROVIDER_IDS, spec  # see SettingsReader.read()

        if provider_id not in PROVIDER_IDS:
            raise KeyError(provider_id)
        with self._lock:
            own = self._owns.get(provider_id)
            if own is None:
                own = self._owns[provider_id] = spec(provider_id).read_settings(
                    SettingsReader(self._environ)
                )
        return own

    def read_ids(self) -> list[str]:
        """The providers whose settings were read so far."""
        return list(self._owns)


class ProviderSettings(Mapping[str, Any]):
    """One part (values, problems) of every provider's own settings, by provider id."""

    def __init__(
        self, owns: OwnSettingsByProvider, part: Callable[[OwnSettings[Any]], Any]
    ) -> None:
        self._owns = owns
        self._part = part

    def __getitem__(self, provider_id: str) -> Any:
        return self._part(self._owns[provider_id])

    def __iter__(self) -> Iterator[str]:
        from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

        return iter(PROVIDER_IDS)

    def __len__(self) -> int:
        from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

        return len(PROVIDER_IDS)

    def __repr__(self) -> str:
        # Only what was read: reading every provider to show them would import them all.
        read = {provider_id: self[provider_id] for provider_id in self._owns.read_ids()}
        return f"{type(self).__name__}({read!r})"


def is_guid(value: str) -> bool:
    """True for a GUID in any of the forms uuid.UUID reads."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_plain_url(raw: str) -> bool:
    """An absolute http(s) URL with a host name and no credentials in it."""
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname is not None
        and _HOST.fullmatch(parts.hostname) is not None
        and parts.username is None
        and port != 0
    )
