"""The outbox: notifications and inbound messages kept until Dataverse has taken them.

An item is written once (the first writer wins, so a duplicate or later webhook
cannot replace what is reported) and forwarded under a short lease, so two callers
never forward it at the same time:

    pending --claim--> leased --forwarded--> forwarded
                          '----failed------> pending (attempts + 1, not before next_at)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from channel.ledger.store import AlreadyExists, Record, RecordStore, StaleRecord


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

    def put(self, key: str, kind: str, payload: dict[str, Any]) -> tuple[Record, bool]:
        """Keep ``payload`` under ``key`` unless an item is there already.

        Returns the stored item and whether this call created it.
        """
        item: Record = {
            "kind": kind,
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "created_at": self.clock(),
            "next_at": 0.0,
            "leased_until": 0.0,
        }
        try:
            self.store.insert(_key(key), item)
        except AlreadyExists:
            found = self.store.get(_key(key))
            if found is not None:
                return found.data, False
            return self.put(key, kind, payload)  # removed meanwhile: write it again
        return item, True

    def claim(self, key: str, *, force: bool = False) -> Record | None:
        """Lease a pending item for forwarding; None if it is forwarded or leased by another.

        ``force`` ignores the back-off time (a provider's own retry may try at once).
        """
        while True:
            found = self.store.get(_key(key))
            if found is None or found.data["state"] != "pending":
                return None
            now = self.clock()
            item = found.data
            if item["leased_until"] > now or (not force and item["next_at"] > now):
                return None
            leased = item | {"leased_until": now + self.lease_seconds}
            try:
                self.store.replace(_key(key), leased, found.etag)
            except StaleRecord:
                continue
            return leased

    def forwarded(self, key: str) -> None:
        """Dataverse took the item: it is done for good."""
        self._change(key, lambda item: item | {"state": "forwarded", "leased_until": 0.0})

    def failed(self, key: str, error: str, *, retry_after: float) -> None:
        """Forwarding failed: give the lease back and try again after ``retry_after`` s."""
        now = self.clock()
        self._change(
            key,
            lambda item: (
                item
                | {
                    "attempts": item["attempts"] + 1,
                    "last_error": error,
                    "next_at": now + retry_after,
                    "leased_until": 0.0,
                }
            ),
        )

    def get(self, key: str) -> Record | None:
        """The item as stored."""
        found = self.store.get(_key(key))
        return None if found is None else found.data

    def _change(self, key: str, change: Callable[[Record], Record]) -> None:
        while True:
            found = self.store.get(_key(key))
            if found is None:
                return
            try:
                self.store.replace(_key(key), change(found.data), found.etag)
            except StaleRecord:
                continue
            return


def _key(key: str) -> str:
    return f"outbox:{key}"
