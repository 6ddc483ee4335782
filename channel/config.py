"""The app's settings: the only reader of environment variables."""

from __future__ import annotations

import base64
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

PROVIDER_IDS = ("loopback", "twilio", "acs", "vonage", "telnyx")
MAX_BODY_BYTES = 64 * 1024
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024
DEFAULT_BUDGET_SECONDS = 20.0
DEFAULT_AMBIGUOUS_GRACE_SECONDS = 600.0
MAX_SEGMENTS_LIMIT = 50
"""The largest CHANNEL_MAX_SEGMENTS: well above the longest message providers take (Twilio:
1,600 characters, at most 24 UCS-2 segments)."""
ACS_AMBIGUOUS_GRACE_SECONDS = 60.0
"""With ACS a new attempt repeats the first one's repeatability pair, which ACS dedupes
for 5 minutes after its first-sent time: the new attempt must come well within them.
Telnyx dedupes an Idempotency-Key for 24 hours: a new attempt is as safe, so as soon."""
TWILIO_DEFAULT_BASE_URL = "https://api.twilio.com"
VONAGE_DEFAULT_BASE_URL = "https://api.nexmo.com"
TELNYX_DEFAULT_BASE_URL = "https://api.telnyx.com"
_TWILIO_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_TWILIO_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
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
    """Every setting the app reads, typed, with the problems found while reading them."""

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
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_messaging_service_sid: str | None = None
    twilio_base_url: str = TWILIO_DEFAULT_BASE_URL
    acs_endpoint: str | None = None
    acs_access_key: str | None = field(default=None, repr=False)
    vonage_application_id: str | None = None
    vonage_private_key: str | None = field(default=None, repr=False)
    vonage_signature_secret: str | None = field(default=None, repr=False)
    vonage_base_url: str = VONAGE_DEFAULT_BASE_URL
    telnyx_api_key: str | None = field(default=None, repr=False)
    telnyx_public_key: str | None = None
    telnyx_messaging_profile_id: str | None = None
    telnyx_base_url: str = TELNYX_DEFAULT_BASE_URL
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
        """Read the settings from ``environ`` (default: the process environment)."""
        return _SettingsReader(os.environ if environ is None else environ).read()


class _SettingsReader:
    """Reads raw strings into Settings, collecting every problem instead of stopping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = environ
        self.problems: list[str] = []
        self.notes: list[str] = []

    def get(self, name: str) -> str | None:
        return _clean(self.env.get(name))

    def read(self) -> Settings:
        in_azure = self.get("WEBSITE_INSTANCE_ID") is not None
        provider = self._provider(in_azure)
        grace = (
            ACS_AMBIGUOUS_GRACE_SECONDS
            if provider in ("acs", "telnyx")
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
            "storage_url": self._url("CHANNEL_STORAGE_URL"),
            "storage_table": self.get("CHANNEL_STORAGE_TABLE") or "smschannel",
            "ledger_path": self.get("CHANNEL_LEDGER_PATH") or ".channel/ledger.sqlite3",
            "budget_seconds": self._seconds("CHANNEL_TIME_BUDGET_SECONDS", 20.0, 1.0, 110.0),
            "retention_days": self._number("CHANNEL_RETENTION_DAYS", 30.0, 1.0, 3650.0, "days"),
            "max_segments": self._max_segments(),
            "ambiguous_grace_seconds": self._seconds(
                "CHANNEL_AMBIGUOUS_GRACE_SECONDS", grace, 0.0, 86400.0
            ),
            "dataverse_url": self._url("DATAVERSE_URL"),
            "dataverse_organization_id": self._guid("DATAVERSE_ORGANIZATION_ID"),
            "azure_client_id": self.get("AZURE_CLIENT_ID"),
            "twilio_account_sid": self.get("TWILIO_ACCOUNT_SID"),
            "twilio_auth_token": self.get("TWILIO_AUTH_TOKEN"),
            "twilio_messaging_service_sid": self.get("TWILIO_MESSAGING_SERVICE_SID"),
            "twilio_base_url": self._url("TWILIO_BASE_URL") or TWILIO_DEFAULT_BASE_URL,
            "acs_endpoint": self._url("ACS_ENDPOINT"),
            "acs_access_key": self.get("ACS_ACCESS_KEY"),
            "vonage_application_id": self.get("VONAGE_APPLICATION_ID"),
            "vonage_private_key": _pem(self.get("VONAGE_PRIVATE_KEY")),
            "vonage_signature_secret": self.get("VONAGE_SIGNATURE_SECRET"),
            "vonage_base_url": self._url("VONAGE_BASE_URL") or VONAGE_DEFAULT_BASE_URL,
            "telnyx_api_key": self.get("TELNYX_API_KEY"),
            "telnyx_public_key": self.get("TELNYX_PUBLIC_KEY"),
            "telnyx_messaging_profile_id": self.get("TELNYX_MESSAGING_PROFILE_ID"),
            "telnyx_base_url": self._url("TELNYX_BASE_URL") or TELNYX_DEFAULT_BASE_URL,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        self._check_provider(settings)
        self._check_environment(settings)
        return replace(settings, problems=tuple(self.problems), notes=tuple(self.notes))

    def _provider(self, in_azure: bool) -> str:
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

    def _url(self, name: str) -> str | None:
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
        url = self._url("CHANNEL_PUBLIC_URL")
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

    def _check_provider(self, s: Settings) -> None:
        if s.provider == "twilio":
            if s.twilio_account_sid is None:
                self.problems.append("TWILIO_ACCOUNT_SID is not set (provider twilio)")
            elif not _TWILIO_ACCOUNT_SID.fullmatch(s.twilio_account_sid):
                self.problems.append("TWILIO_ACCOUNT_SID must look like AC followed by 32 hex")
            if s.twilio_auth_token is None:
                self.problems.append("TWILIO_AUTH_TOKEN is not set (provider twilio)")
            service = s.twilio_messaging_service_sid
            if service is not None and not _TWILIO_SERVICE_SID.fullmatch(service):
                self.problems.append(
                    "TWILIO_MESSAGING_SERVICE_SID must look like MG followed by 32 hex"
                )
        elif s.provider == "acs":
            if self.get("ACS_ENDPOINT") is None:  # a malformed one is a problem already
                self.problems.append("ACS_ENDPOINT is not set (provider acs)")
            if s.acs_access_key is not None and not _is_base64(s.acs_access_key):
                self.problems.append(
                    "ACS_ACCESS_KEY is not base64: copy a Key of the resource (Keys blade), "
                    "not its connection string"
                )
            if s.webhook_secret is None:
                self.notes.append(
                    "CHANNEL_WEBHOOK_SECRET not set: ACS delivery reports and replies "
                    "(Event Grid) are refused until it is"
                )

        elif s.provider == "vonage":
            self._check_vonage(s)
        elif s.provider == "telnyx":
            self._check_telnyx(s)

    def _check_vonage(self, s: Settings) -> None:
        if s.vonage_application_id is None:
            self.problems.append("VONAGE_APPLICATION_ID is not set (provider vonage)")
        elif not _is_guid(s.vonage_application_id):
            self.problems.append("VONAGE_APPLICATION_ID must be the application's id (a GUID)")
        if s.vonage_private_key is None:
            self.problems.append("VONAGE_PRIVATE_KEY is not set (provider vonage)")
        elif not _is_rsa_private_key(s.vonage_private_key):
            self.problems.append(
                "VONAGE_PRIVATE_KEY is not an RSA private key in PEM form: paste the whole "
                "private.key file of the Vonage application (newlines as is or as \\n)"
            )
        if s.vonage_signature_secret is None:
            self.problems.append(
                "VONAGE_SIGNATURE_SECRET is not set (provider vonage): delivery reports and "
                "replies cannot be verified"
            )

    def _check_telnyx(self, s: Settings) -> None:
        if s.telnyx_api_key is None:
            self.problems.append("TELNYX_API_KEY is not set (provider telnyx)")
        if s.telnyx_public_key is None:
            self.problems.append(
                "TELNYX_PUBLIC_KEY is not set (provider telnyx): delivery reports and "
                "replies cannot be verified"
            )
        elif not is_ed25519_public_key(s.telnyx_public_key):
            self.problems.append(
                "TELNYX_PUBLIC_KEY is not a base64 Ed25519 public key (32 bytes): copy the "
                "Public Key of the Telnyx portal's Keys & Credentials page"
            )
        profile = s.telnyx_messaging_profile_id
        if profile is not None and not _is_guid(profile):
            self.problems.append("TELNYX_MESSAGING_PROFILE_ID must be a GUID")

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


def _pem(value: str | None) -> str | None:
    r"""A PEM setting with ``\n`` escapes turned into newlines (app settings are one line)."""
    return None if value is None else value.replace("\\n", "\n")


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_rsa_private_key(pem: str) -> bool:
    # cryptography comes with azure-identity; imported only when vonage is configured.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):  # not PEM, encrypted, or an unsupported key
        return False
    return isinstance(key, RSAPrivateKey)


def is_ed25519_public_key(value: str) -> bool:
    """True for a base64 string of 32 bytes (the form Telnyx shows its public key in)."""
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except ValueError:
        return False


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
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
