"""Retention: ledger records older than CHANNEL_RETENTION_DAYS are removed in bounded batches."""

from __future__ import annotations

import logging

from channel.ledger.store import RecordStore, StaleRecord

log = logging.getLogger(__name__)

EXPIRING_KINDS = ("request", "forwarded", "outbox", "message")
"""Record kinds that age out. ``sender`` records (how Dataverse writes our own numbers)
stay: they are configuration, not message history."""


def sweep(store: RecordStore, *, cutoff: float, limit: int) -> int:
    """Remove at most ``limit`` records created before ``cutoff`` (epoch seconds)."""
    removed = 0
    for kind in EXPIRING_KINDS:
        for key, found in store.scan(kind):
            if removed >= limit:
                return removed
            if found.data.get("created_at", cutoff) >= cutoff:
                continue
            if kind == "outbox":
                # Never forwarded within the retention period: say so before it goes.
                log.warning(
                    "removing %s item %s unforwarded after retention", found.data.get("state"), key
                )
            try:
                store.delete(key, found.etag)
            except StaleRecord:  # changed meanwhile: it is in use, keep it this time
                continue
            removed += 1
    return removed
