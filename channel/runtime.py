"""The process-wide objects (settings, HTTP session, ledger, provider), built on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from channel import telemetry
from channel.config import Settings
from channel.errors import ChannelError, NotConfigured
from channel.ledger import MessageLedger
from channel.providers import build_provider, build_webhooks
from channel.providers.base import Provider, WebhookAdapter
from channel.service import OutboundService

if TYPE_CHECKING:
    from requests.sessions import _Settings

    from channel.dataverse import Dataverse
    from channel.identity import TokenSource
    from channel.ledger.outbox import Outbox
    from channel.ledger.store import RecordStore
    from channel.webhooks import WebhookService

POOL_SIZE = 64
"""Connections kept per host: as many as host.json lets requests run at once."""

LEASE_MARGIN_SECONDS = 10.0
"""A claim outlives the time budget by this much before it counts as abandoned."""


class Runtime:
    """Everything one process shares across invocations; each part is built once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._parts: dict[str, Any] = {}
        self._lock = threading.RLock()

    def require_configured(self) -> None:
        """Raise NotConfigured listing every problem, if there is any."""
        if self.settings.problems:
            raise NotConfigured(list(self.settings.problems))

    @property
    def session(self) -> requests.Session:
        """The one pooled HTTP session of the process."""
        return self._once("session", _new_session)  # type: ignore[no-any-return]

    @property
    def ledger(self) -> MessageLedger:
        """The message ledger on the configured backend."""
        return self._once("ledger", self._new_ledger)  # type: ignore[no-any-return]

    @property
    def provider(self) -> Provider:
        """The outbound adapter of CHANNEL_PROVIDER."""
        return self.provider_for(self.settings.provider)

    def provider_for(self, provider_id: str) -> Provider:
        """The outbound adapter of ``provider_id`` (CHANNEL_ROUTES), built once.

        Every adapter shares the one HTTP session and credential. NotConfigured when the
        provider's own settings have problems (it may be one a request was first sent
        through, no longer in use).
        """
        return self._once(  # type: ignore[no-any-return]
            f"provider:{provider_id}", lambda: self._new_provider(provider_id)
        )

    @property
    def outbox(self) -> Outbox:
        """Notifications and inbound messages on their way to Dataverse."""
        return self._once("outbox", self._new_outbox)  # type: ignore[no-any-return]

    @property
    def dataverse(self) -> Dataverse:
        """The Dataverse Web API with managed identity, or the log in dev mode."""
        return self._once("dataverse", self._new_dataverse)  # type: ignore[no-any-return]

    def webhooks(self, provider_id: str) -> WebhookAdapter:
        """The webhook adapter of ``provider_id``, built once."""
        return self._once(  # type: ignore[no-any-return]
            f"webhooks:{provider_id}", lambda: build_webhooks(provider_id, self.settings)
        )

    @property
    def webhook_service(self) -> WebhookService:
        """The delivery-report and inbound use cases, wired."""
        self.require_configured()
        return self._once("webhook_service", self._new_webhook_service)  # type: ignore[no-any-return]

    @property
    def outbound(self) -> OutboundService:
        """The outbound use case, wired."""
        self.require_configured()
        return self._once(  # type: ignore[no-any-return]
            "outbound",
            lambda: OutboundService(
                self.settings, self.provider, self.ledger, providers=self.provider_for
            ),
        )

    def close(self) -> None:
        """Release what was built (the HTTP session, the ledger's file)."""
        with self._lock:
            if "session" in self._parts:
                self._parts["session"].close()
            if "ledger" in self._parts:
                self._parts["ledger"].store.close()
            self._parts.clear()

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        part = self._parts.get(name)
        if part is None:
            with self._lock:
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = build()
        return part

    def _new_ledger(self) -> MessageLedger:
        store: RecordStore
        # --- Table Storage ledger (channel/ledger/table.py) ---
        if self.settings.ledger_kind == "table":
            # azure.data.tables costs ~0.2 s to import: only processes that use it pay.
            from channel.ledger.table import TableStore

            settings = self.settings
            try:
                if settings.storage_connection is not None:
                    store = TableStore(
                        table=settings.storage_table,
                        connection_string=settings.storage_connection,
                    )
                else:
                    store = TableStore(
                        table=settings.storage_table,
                        account_url=settings.storage_url,
                        credential=self.tokens.credential,
                    )
            except ValueError:  # a malformed connection string or table name
                # Not the library's message: it may quote the connection string's key.
                raise NotConfigured(
                    [
                        "CHANNEL_STORAGE_CONNECTION is not a valid connection string, or "
                        "CHANNEL_STORAGE_TABLE not a valid table name (3-63 letters and digits)"
                    ]
                ) from None
        # --- end of the Table Storage ledger ---
        else:
            from channel.ledger.embedded import EmbeddedStore

            store = EmbeddedStore(self.settings.ledger_path)
        return MessageLedger(
            store,
            lease_seconds=self.settings.budget_seconds + LEASE_MARGIN_SECONDS,
            ambiguous_grace_seconds=self.settings.ambiguous_grace_seconds,
            grace_by_provider=self.settings.ambiguous_grace_by_provider,
        )

    def _new_outbox(self) -> Outbox:
        # Imported here: webhooks, health and the timer use the outbox, outbound does not.
        from channel.ledger.outbox import Outbox

        return Outbox(self.ledger.store, lease_seconds=self.settings.budget_seconds + 10)

    def _new_provider(self, provider_id: str) -> Provider:
        problems = self.settings.provider_problems.get(provider_id)
        if problems:
            raise NotConfigured(list(problems))
        try:
            return build_provider(
                self.settings, self.session, tokens=lambda: self.tokens, provider_id=provider_id
            )
        except ChannelError as exc:  # e.g. a provider of the SPEC not built yet
            raise NotConfigured([exc.detail]) from None

    def _new_webhook_service(self) -> WebhookService:
        from channel.webhooks import WebhookService

        return WebhookService(self.settings, self.ledger, self.outbox, self.dataverse)

    def _new_dataverse(self) -> Dataverse:
        from channel.dataverse import DataverseClient, LoggedDataverse

        if self.settings.dataverse_url is None:
            return LoggedDataverse(self.settings.dataverse_organization_id)
        return DataverseClient(
            self.settings.dataverse_url,
            self.tokens,
            session=self.session,
            organization_id=self.settings.dataverse_organization_id,
        )

    @property
    def tokens(self) -> TokenSource:
        """Access tokens from the process's one managed-identity credential."""
        return self._once("tokens", self._new_tokens)  # type: ignore[no-any-return]

    def _new_tokens(self) -> TokenSource:
        # azure.identity costs ~0.3 s to import: only processes that call Dataverse (or
        # ACS without an access key) pay it.
        from azure.identity import DefaultAzureCredential

        from channel.identity import TokenSource

        credential = DefaultAzureCredential(
            managed_identity_client_id=self.settings.azure_client_id
        )
        return TokenSource(credential)


class _Session(requests.Session):
    """A Session that reads proxy and CA settings from the environment once per host.

    requests re-reads them from ``os.environ`` on every request; app settings only
    change with a restart of the worker, so once per process and host is enough.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[str, object, object, object], _Settings] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        """Cached for plain calls (no per-call proxies); computed as usual otherwise."""
        if proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(str(url))
        key = (f"{parts.scheme}://{parts.netloc}", stream, verify, cert)
        merged = self._environment.get(key)
        if merged is None:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = merged
        copy = merged.copy()
        copy["proxies"] = dict(merged["proxies"])  # requests may adjust it per call
        return copy


def _new_session() -> requests.Session:
    session = _Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # Every provider and Dataverse call's HTTP status lands on the span that made it.
    session.hooks["response"].append(telemetry.note_http_status)
    return session


_current: Runtime | None = None
_current_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, built from the environment on first call."""
    global _current  # noqa: PLW0603 - the one process-wide singleton, by design
    runtime = _current
    if runtime is None:
        with _current_lock:
            if _current is None:
                _current = Runtime(Settings.from_env())
            runtime = _current
    return runtime


def reset_runtime() -> None:
    """Forget the runtime so the next call reads the environment again (tests, reloads)."""
    global _current  # noqa: PLW0603 - the one process-wide singleton, by design
    with _current_lock:
        if _current is not None:
            _current.close()
        _current = None
