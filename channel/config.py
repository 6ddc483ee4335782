"""The app's settings: the only reader of environment variables."""

from __future__ import annotations

import math
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

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
    """Each provider's typed settings by provider id (secrets kept out of their reprs):
    a ProviderSettings, which reads those of a provider not in use when first asked."""
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ledger_kind(self) -> str:
        """Which ledger backend the settings select."""
        return "table" if self.storage_connection or self.storage_url else "embedded"

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
        """Every setting, the chosen provider's problems and notes among them."""
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
        # The settings of the providers in use are read now, and their problems and
        # notes count; any other provider's are read when its webhook is first called
        # (a cold start imports and reads only what it sends through).
        read: dict[str, Any] = {}
        for provider_id in providers_in_use(provider):
            own = spec(provider_id).read_settings(self)
            read[provider_id] = own.values
            self.problems.extend(own.problems)
            self.notes.extend(own.notes)
        values["providers"] = ProviderSettings(self.env, read)
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


def providers_in_use(provider: str) -> tuple[str, ...]:
    """The providers this process sends through: ``CHANNEL_PROVIDER``'s, if it names one.

    Their settings are read with the rest and their problems make the channel
    unavailable (health 503); other providers' settings are read only when needed.
    """
    from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

    return (provider,) if provider in PROVIDER_IDS else ()


class ProviderSettings(Mapping[str, Any]):
    """Each provider's own settings by id: those in use as read, any other on first access.

    A provider's webhooks may be called whichever provider sends, so every provider has
    settings; reading one imports its module, which a process that never hears from it
    need not pay for. Problems of a provider not in use do not count (see read()).
    """

    def __init__(self, environ: Mapping[str, str], read: Mapping[str, Any]) -> None:
        self._environ = environ
        self._values = dict(read)
        self._lock = threading.Lock()

    def __getitem__(self, provider_id: str) -> Any:
        try:
            return self._values[provider_id]
        except KeyError:
            pass
        from channel.providers import PROVIDER_IDS, spec  # see SettingsReader.read()

        if provider_id not in PROVIDER_IDS:
            raise KeyError(provider_id)
        with self._lock:
            if provider_id not in self._values:
                own = spec(provider_id).read_settings(SettingsReader(self._environ))
                self._values[provider_id] = own.values
            return self._values[provider_id]

    def __iter__(self) -> Iterator[str]:
        from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

        return iter(PROVIDER_IDS)

    def __len__(self) -> int:
        from channel.providers import PROVIDER_IDS  # see SettingsReader.read()

        return len(PROVIDER_IDS)

    def __repr__(self) -> str:
        # Only what was read: reading to show would import every provider.
        return f"{type(self).__name__}({self._values!r})"


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
