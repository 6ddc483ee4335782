"""The Azure Table Storage record store: the ledger every scaled-out instance shares.

Each record is one entity. Conditional writes map one to one onto the service's own
optimistic concurrency: ``insert`` is a plain create (409 when the entity exists),
``replace`` and ``delete`` send ``If-Match: <etag>`` (412 when someone else wrote
first). The service's ETag strings are the store's etags.

Keys (``kind:rest``) may hold any character and be long, but PartitionKey and RowKey
forbid slash, backslash, ``#``, ``?`` and control characters and hold at most 1 KiB,
so both are derived from a SHA-256 of the key, and the key itself is kept in the
``Key`` property.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient, UpdateMode
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from channel import telemetry
from channel.budget import time_left
from channel.errors import StoreUnavailable
from channel.ledger.store import AlreadyExists, Record, StaleRecord, Versioned, encode_record

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline import PipelineRequest
    from azure.data.tables import TableClient, TableEntity

CONNECTION_TIMEOUT_SECONDS = 2.0
"""Time to open a TCP (and TLS) connection to the table endpoint."""

READ_TIMEOUT_SECONDS = 5.0
"""Time to wait for the service's answer on an open connection (its own operations
take milliseconds; this only bounds a hung connection)."""

RETRY_TOTAL = 3
"""Retries of one call after its first try (connection errors, 408/429/5xx answers)."""

RETRY_BACKOFF_FACTOR = 0.2
"""Exponential back-off between retries: 0 s, 0.4 s, 0.8 s."""

RETRY_BACKOFF_MAX_SECONDS = 2
"""No single wait between two tries is longer than this."""

OPERATION_TIMEOUT_SECONDS = 10.0
"""Bound on one call with all its retries: half the outbound time budget. Within a call
that applied its budget (see channel.budget), every try is also cut to what is left of
it, and no try starts once it is spent."""

MIN_TRY_SECONDS = 0.01
"""A try needs at least this much of the budget left to be worth sending."""

POOL_SIZE = 64
"""Connections kept to the endpoint: as many as host.json lets requests run at once."""

RETRY_AFTER_SECONDS = 10
"""What a caller is told to wait when the ledger cannot be reached."""

_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_PARTITION_KIND = re.compile(r"[A-Za-z0-9_]{1,64}")
_OTHER_KIND = "~"
"""Partition prefix of keys whose kind is not a plain word (or that have no kind)."""

log = logging.getLogger(__name__)

# The tables client logs every request's headers at INFO through this policy's logger;
# a logger of our own, held at WARNING, keeps that out of operators' logs whatever the
# host's logging configuration (channel.logs quiets the shared one in the app too).
_HTTP_LOG = logging.getLogger("channel.ledger.table.http")
_HTTP_LOG.setLevel(logging.WARNING)

_ready: set[tuple[str, str]] = set()
"""(endpoint, table) pairs this process has created or found: one create_table each."""
_ready_lock = threading.Lock()


class TableStore:
    """Records in an Azure Table Storage table (Azurite locally), for scaled-out instances.

    Build it from a connection string (``UseDevelopmentStorage=true`` for Azurite) or
    from an account URL and a credential (managed identity in Azure). The table is
    created on first use. Every call has explicit timeouts and a bounded number of
    retries, all within the applied budget if any (see channel.budget); when the
    service cannot be reached in time, StoreUnavailable is raised.
    ``round_trips`` counts the HTTP requests sent (retries and query pages included).
    """

    kind = "table"

    def __init__(
        self,
        *,
        table: str,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: TokenCredential | None = None,
        connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        retry_total: int = RETRY_TOTAL,
        operation_timeout: float = OPERATION_TIMEOUT_SECONDS,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(
                f"table name '{table}' is not valid: 3 to 63 letters and digits, "
                "starting with a letter"
            )
        if (connection_string is None) == (account_url is None):
            raise ValueError("give either a connection string or an account URL")
        if account_url is not None and credential is None:
            raise ValueError("an account URL needs a credential")
        self.table_name = table
        self.round_trips = 0
        self._connection_timeout = connection_timeout
        self._read_timeout = read_timeout
        self._count_lock = threading.Lock()
        self._created = False
        transport = _transport(connection_timeout, read_timeout)
        options: dict[str, Any] = {
            "transport": transport,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "retry_total": retry_total,
            "retry_connect": retry_total,
            "retry_read": retry_total,
            "retry_status": retry_total,
            "retry_backoff_factor": RETRY_BACKOFF_FACTOR,
            "retry_backoff_max": RETRY_BACKOFF_MAX_SECONDS,
            "timeout": operation_timeout,
            "raw_request_hook": self._before_try,
            "logger": _HTTP_LOG,
            "logging_enable": False,
        }
        service: TableServiceClient
        try:
            if connection_string is not None:
                service = TableServiceClient.from_connection_string(connection_string, **options)
            else:
                service = TableServiceClient(
                    endpoint=str(account_url), credential=credential, **options
                )
        except BaseException:  # e.g. a malformed connection string: release the session
            transport.close()
            raise
        self._service = service
        self._table: TableClient = service.get_table_client(table)
        self._ident = (service.url, table)

    @property
    def url(self) -> str:
        """The table service endpoint (no credentials in it)."""
        return str(self._service.url)

    def get(self, key: str) -> Versioned | None:
        """The record under ``key``, or None."""
        self._ensure_table()
        partition, row = _address(key)
        try:
            entity = self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _unavailable("read", exc) from exc
        return _versioned(entity)

    def insert(self, key: str, data: Record) -> str:
        """Create the record; raise AlreadyExists if another writer was first."""
        entity = _entity(key, data)
        self._ensure_table()
        try:
            written = self._table.create_entity(entity)
        except ResourceExistsError:
            raise AlreadyExists(key) from None
        except ResourceNotFoundError as exc:  # the table was deleted: make it again next time
            self._forget_table()
            raise _unavailable("insert", exc) from exc
        except AzureError as exc:
            raise _unavailable("insert", exc) from exc
        return str(written["etag"])

    def replace(self, key: str, data: Record, etag: str) -> str:
        """Overwrite the record if nobody changed (or removed) it since ``etag`` was read."""
        entity = _entity(key, data)
        self._ensure_table()
        try:
            written = self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise StaleRecord(key) from None
        except AzureError as exc:
            raise _unavailable("replace", exc) from exc
        return str(written["etag"])

    def delete(self, key: str, etag: str) -> None:
        """Remove the record if nobody changed it since ``etag`` was read; gone is fine."""
        self._ensure_table()
        partition, row = _address(key)
        try:
            self._table.delete_entity(
                partition, row, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError:
            return  # already gone (the client library usually swallows this 404 itself)
        except ResourceModifiedError:
            raise StaleRecord(key) from None
        except AzureError as exc:
            raise _unavailable("delete", exc) from exc

    def scan(self, kind: str) -> Iterator[tuple[str, Versioned]]:
        """Every record of one kind (key prefix ``kind:``): a query over its partitions."""
        self._ensure_table()
        prefix = f"{kind}:"
        base = _partition_kind(prefix)
        entities = self._table.query_entities(
            "PartitionKey ge @low and PartitionKey le @high",
            parameters={"low": f"{base}-00", "high": f"{base}-ff"},
            select=["Key", "Data"],
        )
        try:
            for entity in entities:
                key = str(entity["Key"])
                # Partitions are shared by kinds that are not plain words, and a range
                # can take in a longer kind ("out-00" <= "out-box-ab" <= "out-ff"):
                # the original key decides.
                if key.startswith(prefix):
                    yield key, _versioned(entity)
        except AzureError as exc:
            raise _unavailable("scan", exc) from exc

    def scan_after(self, kind: str, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
        """Up to ``limit`` records of one kind in (PartitionKey, RowKey) order, after ``after``.

        RowKey is the key's hash and PartitionKey the kind and the hash's first byte, so
        this order is the hashes' order: the records after ``after`` are those of its
        partition with a greater RowKey and those of the kind's later partitions. One
        query, whose first page holds at most ``limit`` entities.
        """
        self._ensure_table()
        prefix = f"{kind}:"
        base = _partition_kind(prefix)
        condition = "PartitionKey ge @low and PartitionKey le @high"
        parameters = {"low": f"{base}-00", "high": f"{base}-ff"}
        if after is not None:
            low, row = _address(after)
            condition += " and RowKey gt @row"
            parameters |= {"low": low, "row": row}
        entities = self._table.query_entities(
            condition,
            parameters=parameters,
            select=["Key", "Data"],
            results_per_page=limit,
        )
        found: list[tuple[str, Versioned]] = []
        try:
            for entity in itertools.islice(entities, limit):
                key = str(entity["Key"])
                if key.startswith(prefix):  # as in scan: the original key decides
                    found.append((key, _versioned(entity)))
        except AzureError as exc:
            raise _unavailable("scan", exc) from exc
        return found

    def close(self) -> None:
        """Release the connections."""
        self._table.close()
        self._service.close()

    def _ensure_table(self) -> None:
        """Create the table on this process's first use of it; it may exist already."""
        if self._created:
            return
        with _ready_lock:
            if self._ident not in _ready:
                try:
                    self._table.create_table()
                except ResourceExistsError:
                    pass  # another process (or an earlier deployment) created it
                except HttpResponseError as exc:
                    if exc.status_code != 403:
                        raise _unavailable("create table", exc) from exc
                    # An identity allowed to write entities but not to create tables:
                    # the table was made at deployment; if not, the calls will say so.
                    log.warning("not allowed to create table %s; using it as it is", self._ident[1])
                except AzureError as exc:
                    raise _unavailable("create table", exc) from exc
                _ready.add(self._ident)
        self._created = True

    def _forget_table(self) -> None:
        with _ready_lock:
            _ready.discard(self._ident)
        self._created = False

    def _before_try(self, request: PipelineRequest[Any]) -> None:
        """Called by the client pipeline before every HTTP request it sends (retries too).

        Cuts the try's timeouts to what is left of the call's budget, and sends no try
        once it is spent: the retry policy only bounds the connect timeout by its own
        operation timeout, so without this a hung read could outlast the budget. Raising
        here (not an AzureError) ends the retries at once. Only the policy's back-off
        before a try (0.4 s, then 0.8 s) can still run past the budget.
        """
        left = time_left(math.inf)
        if left < MIN_TRY_SECONDS:
            raise StoreUnavailable(
                "message ledger unavailable (no time left in the call's budget); retry later",
                retry_after=RETRY_AFTER_SECONDS,
            )
        if left != math.inf:
            options = request.context.options
            connect = options.get("connection_timeout") or self._connection_timeout
            options["connection_timeout"] = min(connect, left)
            options["read_timeout"] = min(self._read_timeout, left)
        with self._count_lock:
            self.round_trips += 1
        telemetry.round_trip()


def _transport(connection_timeout: float, read_timeout: float) -> RequestsTransport:
    """An HTTP transport whose pool holds as many connections as requests run at once.

    The library's own session keeps 10 per host, so a burst of concurrent calls would
    open and drop connections beyond that.
    """
    session = requests.Session()
    # Retries belong to the client's retry policy, not to urllib3 (as azure-core does it).
    no_retries = Retry(total=False, redirect=False, raise_on_status=False)
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_SIZE, max_retries=no_retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=connection_timeout,
        read_timeout=read_timeout,
    )


def _partition_kind(key: str) -> str:
    """The partition prefix of a key: its kind when that is a plain word, else ``~``."""
    kind, colon, _ = key.partition(":")
    return kind if colon and _PARTITION_KIND.fullmatch(kind) else _OTHER_KIND


def _address(key: str) -> tuple[str, str]:
    """PartitionKey and RowKey of a store key.

    RowKey is the SHA-256 of the key: unique, 64 characters whatever the key's length,
    and free of the characters keys may not hold. PartitionKey is the kind followed by
    the hash's first byte: 256 partitions per kind. Table Storage serves each partition
    from one server (about 2,000 entities/s at most), so all of a kind's records in one
    partition would make it a hot spot under load; spread by hash, the load is even and
    the service can split partition ranges across servers. Keeping the kind in front
    makes a kind's partitions contiguous, so ``scan(kind)`` is one range query
    (``kind-00`` to ``kind-ff``) rather than a scan of the whole table. Records are
    independent (no transaction spans two), so nothing needs them in one partition.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_partition_kind(key)}-{digest[:2]}", digest


def _entity(key: str, data: Record) -> dict[str, str]:
    """The entity that stores ``data`` under ``key``; RecordTooLarge when it cannot fit."""
    text = encode_record(key, data)
    partition, row = _address(key)
    return {"PartitionKey": partition, "RowKey": row, "Key": key, "Data": text}


def _versioned(entity: TableEntity) -> Versioned:
    return Versioned(json.loads(entity["Data"]), str(entity.metadata["etag"]))


def _unavailable(operation: str, exc: AzureError) -> StoreUnavailable:
    """The error our HTTP layer answers with 503; the cause stays chained for the log."""
    cause = type(exc).__name__
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        cause += f" {exc.status_code}"
    return StoreUnavailable(
        f"message ledger unavailable ({operation} failed: {cause}); retry later",
        retry_after=RETRY_AFTER_SECONDS,
    )
