"""The record store under the ledger: conditional insert and ETag-guarded replace."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from channel.errors import RecordTooLarge

Record = dict[str, Any]

MAX_STRING_CHARS = 32 * 1024
"""A Table Storage string property holds at most 64 KiB, i.e. 32 Ki UTF-16 code units;
both backends keep to it, so a record the embedded store takes fits in Azure too."""


@dataclass(frozen=True)
class Versioned:
    """A record as read, with the version tag a later replace must name."""

    data: Record
    etag: str


GROUPED_KINDS = frozenset({"due", "done"})
"""Kinds whose records one transaction may write together (the outbox's items and their
forwarded markers): the Table store keeps them in one partition, as its batches need."""


@dataclass(frozen=True)
class Write:
    """One write of a transaction (see ``RecordStore.transact``)."""

    action: Literal["insert", "replace", "upsert", "delete"]
    key: str
    data: Record | None = None
    """The record to write (not for ``delete``)."""
    etag: str | None = None
    """``replace``/``delete``: the version the record must still have; None: any version."""


class AlreadyExists(Exception):
    """Another writer created the record first."""


class StaleRecord(Exception):
    """The record changed since it was read; read it again and decide again."""


class RecordStore(Protocol):
    """Key-value storage with optimistic concurrency; both backends implement it.

    Keys are ``kind:rest`` (``request:<RequestId>``, ``due:<...>``, ``sender:<number>``);
    ``rest`` may hold any character, so backends encode keys as they need.
    """

    kind: str

    def get(self, key: str) -> Versioned | None:
        """The record under ``key``, or None."""
        ...

    def insert(self, key: str, data: Record) -> str:
        """Create the record; raise AlreadyExists if it exists. Returns the new etag."""
        ...

    def replace(self, key: str, data: Record, etag: str) -> str:
        """Overwrite the record if its etag still matches; else raise StaleRecord."""
        ...

    def delete(self, key: str, etag: str) -> None:
        """Remove the record if its etag still matches; else raise StaleRecord.

        A record already gone is not an error.
        """
        ...

    def transact(self, writes: Sequence[Write]) -> list[str]:
        """Apply every write or none, in one round trip; the new etags ('' for a delete).

        The keys must be of GROUPED_KINDS (the Table store's batches span one partition).
        An ``insert`` whose record exists raises AlreadyExists, a ``replace`` or ``delete``
        whose record changed or is gone raises StaleRecord, naming the write's key.
        """
        ...

    def scan(self, kind: str) -> Iterator[tuple[str, Versioned]]:
        """Every record whose key starts with ``kind + ":"``, in no particular order."""
        ...

    def scan_after(self, kind: str, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
        """At most ``limit`` records of one kind that follow the key ``after``.

        The order is the store's own (stable) one; ``after`` None starts at the kind's
        first record. Fewer than ``limit`` records means the kind's end was reached. With
        the last key returned as the next ``after``, successive calls visit every record.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def encode_record(key: str, data: Record) -> str:
    """``data`` as the JSON text a store keeps; RecordTooLarge when it or ``key`` cannot fit."""
    # ensure_ascii (the default) keeps the JSON to ASCII: one UTF-16 unit per character.
    text = json.dumps(data, separators=(",", ":"))
    kind = key.partition(":")[0] if ":" in key else "~"
    if len(text) > MAX_STRING_CHARS:
        raise RecordTooLarge(
            f"a '{kind[:32]}' record is {len(text)} characters of JSON; the message ledger "
            f"holds at most {MAX_STRING_CHARS} (64 KiB, a Table Storage property)"
        )
    units = len(key.encode("utf-16-le", "surrogatepass")) // 2
    if units > MAX_STRING_CHARS:
        raise RecordTooLarge(
            f"a '{kind[:32]}' key is {units} UTF-16 units long; the message ledger holds "
            f"at most {MAX_STRING_CHARS} (64 KiB, a Table Storage property)"
        )
    return text


@dataclass(frozen=True)
class Updated:
    """What ``update`` left: the record as now stored, and whether this call wrote it."""

    found: Versioned | None
    """None: there is no record under the key."""
    written: bool


def update(
    store: RecordStore,
    key: str,
    change: Callable[[Record], Record | None],
    *,
    found: Versioned | None = None,
) -> Updated:
    """Compare-and-swap: replace the record under ``key`` with ``change`` of it.

    ``change`` gets the record as read and returns the new one, or None to leave it as it
    is. When another writer got there first (StaleRecord), the record is read again and
    ``change`` decides again, as often as needed. ``found``: the version the caller read
    already, tried first (saves a read).
    """
    while True:
        if found is None:
            found = store.get(key)
            if found is None:
                return Updated(None, written=False)
        changed = change(found.data)
        if changed is None:
            return Updated(found, written=False)
        try:
            etag = store.replace(key, changed, found.etag)
        except StaleRecord:
            found = None
            continue
        return Updated(Versioned(changed, etag), written=True)


def check_grouped(writes: Sequence[Write]) -> None:
    """Raise ValueError unless every write's key is of GROUPED_KINDS (see ``transact``)."""
    for write in writes:
        if write.key.partition(":")[0] not in GROUPED_KINDS:
            raise ValueError(f"a transaction cannot write a '{write.key.partition(':')[0]}' record")
