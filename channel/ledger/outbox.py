"""The outbox: notifications and inbound messages kept until Dataverse has taken them.

An item is written once (the first writer wins, so a duplicate or later webhook cannot
change what is reported) and forwarded under a lease, so two callers never forward it
at the same time. Once Dataverse has taken it, a small ``forwarded`` marker replaces it:
the outbox then holds only what still needs work, which keeps the timer's scan short
however many messages the ledger remembers.

    put --> leased --forwarded--> (marker)            the common case: three writes
              |----failed-------> pending (attempts + 1, retried from next_at)
              '----failed, attempts >= MAX_ATTEMPTS --> dead (shown in health)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channel.ledger.store import AlreadyExists, Record, RecordStore, StaleRecord

MAX_ATTEMPTS = 20
"""Forwarding attempts before an item is declared dead (with the backoff below, about
fifteen hours of trying)."""

MIN_BACKOFF_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 3600.0


def retry_delay(attempts: int, retry_after: float) -> float:
    """Seconds until the next attempt: doubling from a minute up to an hour, or later if asked.

    ``retry_after`` is what Dataverse asked for (``Retry-After``); it is never cut short.
    """
    doubling: float = min(MAX_BACKOFF_SECONDS, MIN_BACKOFF_SECONDS * 2.0 ** max(0, attempts - 1))
    return max(retry_after, doubling)


@dataclass(frozen=True)
class Lease:
    """The right to forward one item now; ``etag`` guards the follow-up write."""

    key: str
    item: Record
    etag: str

    @property
    def kind(self) -> str:
        """``notification`` or ``inbound``."""
        return str(self.item["kind"])

    @property
    def payload(self) -> dict[str, Any]:
        """The contract fields to send (OrganizationId is added when forwarding)."""
        payload: dict[str, Any] = self.item["payload"]
        return payload


@dataclass(frozen=True)
class OutboxStats:
    """What health shows about forwarding."""

    pending: int
    dead: int
    oldest_pending_seconds: float | None
    oldest_dead_seconds: float | None


class Outbox:
    """Items on their way to Dataverse, over a RecordStore."""

    def __init__(
        self,
        store: RecordStore,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.clock = clock

    def put(self, key: str, kind: str, payload: dict[str, Any]) -> Lease | None:
        """Keep ``payload`` under ``key`` (first writer wins) and lease it for forwarding.

        Returns None when the item was forwarded already or another caller holds it.
        """
        now = self.clock()
        item: Record = {
            "kind": kind,
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_at": now,
            "leased_until": now + self.lease_seconds,
        }
        try:
            etag = self.store.insert(_item(key), item)
        except AlreadyExists:
            return self.claim(key, force=True)
        # The insert worked, so any earlier item is gone; if it went because it was
        # forwarded, its marker was written before it was removed: look, and undo.
        if self.store.get(_marker(key)) is not None:
            self._remove(key)
            return None
        return Lease(key, item, etag)

    def claim(self, key: str, *, force: bool = False) -> Lease | None:
        """Lease a pending item; None if it is forwarded, dead, leased or not due yet.

        ``force`` ignores the back-off (a provider's own retry may try at once).
        """
        while True:
            found = self.store.get(_item(key))
            if found is None or found.data["state"] != "pending":
                return None
            now = self.clock()
            item = found.data
            if item["leased_until"] > now or (not force and item["next_at"] > now):
                return None
            if self.store.get(_marker(key)) is not None:
                # Forwarded, but the process stopped before removing the item.
                self._remove(key)
                return None
            leased = item | {"leased_until": now + self.lease_seconds}
            try:
                etag = self.store.replace(_item(key), leased, found.etag)
            except StaleRecord:
                continue
            return Lease(key, leased, etag)

    def forwarded(self, lease: Lease) -> None:
        """Dataverse took the item: remember that, and take the item out of the outbox."""
        marker = {
            "state": "forwarded",
            "kind": lease.kind,
            "created_at": lease.item["created_at"],
            "forwarded_at": self.clock(),
            # What was reported, minus a reply's text: no need to keep it once delivered.
            "payload": {k: v for k, v in lease.payload.items() if k != "Message"},
        }
        with contextlib.suppress(AlreadyExists):
            self.store.insert(_marker(lease.key), marker)
        try:
            self.store.delete(_item(lease.key), lease.etag)
        except StaleRecord:
            self._remove(lease.key)

    def failed(self, lease: Lease, error: str, *, retry_after: float) -> Record:
        """Forwarding failed: give the lease back; the timer retries it with backoff.

        Returns the item as now stored; its state is ``dead`` after MAX_ATTEMPTS.
        """
        now = self.clock()
        etag = lease.etag
        item = lease.item
        while True:
            attempts = int(item["attempts"]) + 1
            changed = item | {
                "attempts": attempts,
                "last_error": error,
                "next_at": now + retry_delay(attempts, retry_after),
                "leased_until": 0.0,
                "state": "dead" if attempts >= MAX_ATTEMPTS else "pending",
            }
            try:
                self.store.replace(_item(lease.key), changed, etag)
            except StaleRecord:
                found = self.store.get(_item(lease.key))
                if found is None:
                    return item
                item, etag = found.data, found.etag
                continue
            return changed

    def due(self, limit: int) -> list[str]:
        """Keys of pending items due for forwarding, oldest first, at most ``limit``."""
        now = self.clock()
        due = [
            (found.data["created_at"], key.removeprefix("outbox:"))
            for key, found in self.store.scan("outbox")
            if found.data["state"] == "pending"
            and found.data["next_at"] <= now
            and found.data["leased_until"] <= now
        ]
        due.sort()
        return [key for _, key in due[:limit]]

    def stats(self) -> OutboxStats:
        """Counts and ages of what is waiting, for health."""
        now = self.clock()
        ages: dict[str, list[float]] = {"pending": [], "dead": []}
        for _, found in self.store.scan("outbox"):
            ages.setdefault(found.data["state"], []).append(now - found.data["created_at"])
        return OutboxStats(
            pending=len(ages["pending"]),
            dead=len(ages["dead"]),
            oldest_pending_seconds=max(ages["pending"], default=None),
            oldest_dead_seconds=max(ages["dead"], default=None),
        )

    def get(self, key: str) -> Record | None:
        """The item as stored (state pending or dead), or its marker (state forwarded)."""
        found = self.store.get(_marker(key)) or self.store.get(_item(key))
        return None if found is None else found.data

    def _remove(self, key: str) -> None:
        while True:
            found = self.store.get(_item(key))
            if found is None:
                return
            try:
                self.store.delete(_item(key), found.etag)
            except StaleRecord:
                continue
            return


def _item(key: str) -> str:
    return f"outbox:{key}"


def _marker(key: str) -> str:
    return f"forwarded:{key}"
