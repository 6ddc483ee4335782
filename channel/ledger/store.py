"""The record store under the ledger: conditional insert and ETag-guarded replace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]


@dataclass(frozen=True)
class Versioned:
    """A record as read, with the version tag a later replace must name."""

    data: Record
    etag: str


class AlreadyExists(Exception):
    """Another writer created the record first."""


class StaleRecord(Exception):
    """The record changed since it was read; read it again and decide again."""


class RecordStore(Protocol):
    """Key-value storage with optimistic concurrency; both backends implement it."""

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
