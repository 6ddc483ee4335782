"""Retention: expired ledger records are removed a bounded slice at a time.

Each run examines at most ``limit`` records within its time budget, starting where the
previous run stopped (a cursor kept in the ledger, record ``retention:cursor``), so a
run's cost does not grow with the table: a large ledger is swept over several runs.

Records of a message (``request``, ``outbox``) go after CHANNEL_RETENTION_DAYS; the
small ``forwarded`` markers, which hold no text and no customer number, stay for
MARKER_RETENTION_DAYS: a signed webhook carries no timestamp (Twilio), so a captured
genuine call can be replayed at any time, and only the marker makes it a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from channel.budget import Budget
from channel.ledger.store import AlreadyExists, Record, RecordStore, StaleRecord, Versioned

log = logging.getLogger(__name__)

EXPIRING_KINDS = ("request", "outbox", "forwarded", "message", "nonce")
"""Record kinds that age out, in the order a sweep visits them (``message``: the message
id -> RequestId records of providers that echo only their id; ``nonce``: webhook nonces
seen, see MessageLedger.first_sight). ``sender`` records (how Dataverse writes our own
numbers) stay: they are configuration, not message history."""

NONCE_RETENTION_DAYS = 1.0
"""How long a webhook nonce is kept: a day, longer than Plivo retries a callback (about
7 minutes); a nonce is refused again for as long as it is kept."""

MARKER_RETENTION_DAYS = 365.0
"""How long a ``forwarded`` marker is kept (or CHANNEL_RETENTION_DAYS if longer)."""

CURSOR_KEY = "retention:cursor"
PAGE_SIZE = 100
"""Records read per store query."""
DAY = 86400.0


@dataclass(frozen=True)
class Sweep:
    """What one sweep did."""

    scanned: int
    removed: int


def sweep(
    store: RecordStore,
    *,
    now: float,
    retention_days: float,
    limit: int,
    budget: Budget,
) -> Sweep:
    """Examine at most ``limit`` records from the cursor on; remove those past retention."""
    cutoffs = {
        "request": now - retention_days * DAY,
        "outbox": now - retention_days * DAY,
        "forwarded": now - max(retention_days, MARKER_RETENTION_DAYS) * DAY,
        "message": now - retention_days * DAY,
        "nonce": now - NONCE_RETENTION_DAYS * DAY,
    }
    saved = store.get(CURSOR_KEY)
    index, after = _position(saved.data if saved is not None else None)
    scanned = removed = ends = 0
    # One lap at most: once every kind's end was reached, every record was seen.
    while scanned < limit and ends < len(EXPIRING_KINDS) and budget.remaining() > 0:
        kind = EXPIRING_KINDS[index]
        wanted = min(PAGE_SIZE, limit - scanned)
        page = store.scan_after(kind, after, wanted)
        for key, found in page:
            if budget.remaining() <= 0:
                break
            scanned += 1
            after = key
            removed += _expire(store, key, found, cutoffs[kind])
        else:
            if len(page) < wanted:  # the kind's end: on to the next one
                index, after = (index + 1) % len(EXPIRING_KINDS), None
                ends += 1
    _save(store, saved, {"kind": EXPIRING_KINDS[index], "after": after})
    return Sweep(scanned, removed)


def _expire(store: RecordStore, key: str, found: Versioned, cutoff: float) -> int:
    """Remove the record if it was created before ``cutoff``; 1 if it was removed."""
    if found.data.get("created_at", cutoff) >= cutoff:
        return 0
    if key.startswith("outbox:"):
        # Never forwarded within the retention period: say so before it goes.
        log.warning("removing %s item %s unforwarded after retention", found.data.get("state"), key)
    try:
        store.delete(key, found.etag)
    except StaleRecord:  # changed meanwhile: it is in use, keep it this time
        return 0
    return 1


def _position(cursor: Record | None) -> tuple[int, str | None]:
    """Where the last sweep stopped: a kind's index and the last key it examined."""
    if cursor is None or cursor.get("kind") not in EXPIRING_KINDS:
        return 0, None
    kind = str(cursor["kind"])
    after = cursor.get("after")
    # A key of another kind would start the page elsewhere: start the kind over.
    valid = isinstance(after, str) and after.startswith(f"{kind}:")
    return EXPIRING_KINDS.index(kind), after if valid else None


def _save(store: RecordStore, saved: Versioned | None, cursor: Record) -> None:
    """Keep the cursor for the next run; a concurrent run's cursor is as good as ours."""
    if saved is not None and saved.data == cursor:
        return
    with contextlib.suppress(AlreadyExists, StaleRecord):
        if saved is None:
            store.insert(CURSOR_KEY, cursor)
        else:
            store.replace(CURSOR_KEY, cursor, saved.etag)
