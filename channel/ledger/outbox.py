"""The outbox: notifications and inbound messages kept until Dataverse has taken them.

An item is written once (the first writer wins, so a duplicate or later webhook cannot
change what is reported) and forwarded under a lease, so two callers never forward it
at the same time. Once Dataverse has taken it, a small ``forwarded`` marker replaces it:
the outbox then holds only what still needs work, which keeps the timer's scan short
however many messages the ledger remembers.

    put --> leased --forwarded--> (marker)            the common case: three writes
              |----failed-------> pending (attempts + 1, retried from next_at)
              |----waiting------> pending (no attempt counted; retried by the next timer run)
              '----failed, attempts >= MAX_ATTEMPTS --> dead (shown in health)

At least once, not exactly once: Dataverse has no idempotency key, so a call it acted on
whose answer was lost (a read timeout, a process killed mid-call) cannot be told from
one it never got. Each lease records that a call is starting (``call_at``); an outcome
written by ``failed`` or ``waiting`` clears it. An item whose call may have been received
(the answer was lost, or the lease ran out with ``call_at`` still set) is ``in_doubt``:
it is left to the next timer run (a provider's retry does not force it) and the forward
that repeats it is flagged as a possible duplicate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from channel.ledger.store import AlreadyExists, Record, RecordStore, StaleRecord
from channel.ledger.traced import operation

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

    @property
    def possible_duplicate(self) -> bool:
        """An earlier call for this item may have reached Dataverse (its answer was lost)."""
        return bool(self.item.get("in_doubt"))

    def with_payload(self, payload: dict[str, Any]) -> Lease:
        """The same lease carrying ``payload`` (resolved when forwarding; not stored)."""
        return replace(self, item=self.item | {"payload": payload})


@dataclass(frozen=True)
class OutboxStats:
    """What health shows about forwarding."""

    pending: int
    dead: int
    in_doubt: int
    """Pending items whose last call may have reached Dataverse (answer lost)."""
    waiting: int
    """Pending items that cannot be forwarded yet (e.g. no channel definition known)."""
    oldest_pending_seconds: float | None
    oldest_dead_seconds: float | None


@dataclass(frozen=True)
class Survey:
    """What one scan of the outbox found: the items due for forwarding, and the counts."""

    due: list[str]
    stats: OutboxStats


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

    @operation
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
            # The lease is taken to call Dataverse: from here on, a call may be in flight.
            "call_at": now,
            "in_doubt": False,
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

    @operation
    def claim(self, key: str, *, force: bool = False) -> Lease | None:
        """Lease a pending item; None if it is forwarded, dead, leased or not due yet.

        ``force`` ignores the back-off (a provider's own retry may try at once), except
        for an item whose last call may have reached Dataverse: only the timer claims
        that one, so a repeat (a possible duplicate) comes no sooner than its next run.
        """
        while True:
            found = self.store.get(_item(key))
            if found is None or found.data["state"] != "pending":
                return None
            now = self.clock()
            item = found.data
            # A lease that ran out with its call still marked: the caller died (or gave up)
            # mid-call, and Dataverse may have acted on it.
            in_doubt = bool(item.get("in_doubt")) or item.get("call_at") is not None
            if in_doubt and force:
                return None  # a provider's retry: only the timer repeats a call in doubt
            if item["leased_until"] > now or (not force and item["next_at"] > now):
                return None
            if self.store.get(_marker(key)) is not None:
                # Forwarded, but the process stopped before removing the item.
                self._remove(key)
                return None
            leased = item | {
                "leased_until": now + self.lease_seconds,
                "call_at": now,
                "in_doubt": in_doubt,
            }
            try:
                etag = self.store.replace(_item(key), leased, found.etag)
            except StaleRecord:
                continue
            return Lease(key, leased, etag)

    @operation
    def forwarded(self, lease: Lease) -> None:
        """Dataverse took the item: remember that, and take the item out of the outbox."""
        marker = {
            "state": "forwarded",
            "kind": lease.kind,
            "created_at": lease.item["created_at"],
            "forwarded_at": self.clock(),
            # What was reported, minus a reply's text and its sender (the customer): the
            # marker outlives the content by far (see retention), so it keeps no personal data.
            "payload": {
                k: v
                for k, v in lease.payload.items()
                if k != "Message" and not (lease.kind == "inbound" and k == "From")
            },
        }
        with contextlib.suppress(AlreadyExists):
            self.store.insert(_marker(lease.key), marker)
        try:
            self.store.delete(_item(lease.key), lease.etag)
        except StaleRecord:
            self._remove(lease.key)

    @operation
    def failed(
        self, lease: Lease, error: str, *, retry_after: float, maybe_received: bool = False
    ) -> Record:
        """Forwarding failed: give the lease back; the timer retries it with backoff.

        ``maybe_received``: the call went out and its answer was lost, so Dataverse may
        have acted on it; the item is then in doubt for good (see the module docstring).
        Returns the item as now stored; its state is ``dead`` after MAX_ATTEMPTS.
        """
        return self._give_back(
            lease,
            lambda item, now: {
                "attempts": int(item["attempts"]) + 1,
                "last_error": error,
                "next_at": now + retry_delay(int(item["attempts"]) + 1, retry_after),
                "state": "dead" if int(item["attempts"]) + 1 >= MAX_ATTEMPTS else "pending",
                "in_doubt": bool(item.get("in_doubt")) or maybe_received,
                "waiting_for": None,
            },
        )

    @operation
    def waiting(self, lease: Lease, reason: str) -> Record:
        """The item cannot be forwarded yet (no call was made): the next timer run tries.

        No attempt is counted, so an item waiting for an operator never dies of it.
        """
        return self._give_back(
            lease,
            lambda item, now: {
                "waiting_for": reason,
                "next_at": now + MIN_BACKOFF_SECONDS,
                "in_doubt": bool(item.get("in_doubt")),
            },
        )

    def _give_back(self, lease: Lease, change: Callable[[Record, float], Record]) -> Record:
        """End the lease with ``change`` applied; the call it was taken for is over."""
        now = self.clock()
        etag = lease.etag
        item = lease.item
        ended: Record = {"leased_until": 0.0, "call_at": None}
        while True:
            changed = item | change(item, now) | ended
            try:
                self.store.replace(_item(lease.key), changed, etag)
            except StaleRecord:
                found = self.store.get(_item(lease.key))
                if found is None:
                    return item
                item, etag = found.data, found.etag
                # Our lease ran out and another caller took the item: its lease and its
                # in-flight mark are its own to end.
                ended = {}
                continue
            return changed

    def due(self, limit: int) -> list[str]:
        """Keys of pending items due for forwarding, oldest first, at most ``limit``."""
        return self.survey(limit).due

    def stats(self) -> OutboxStats:
        """Counts and ages of what is waiting, for health."""
        return self.survey(0).stats

    @operation
    def survey(self, limit: int) -> Survey:
        """One scan of the outbox: the items due (at most ``limit``) and the counts.

        The timer takes both from the one scan it makes anyway, so the outbox gauges
        cost no read of their own.
        """
        now = self.clock()
        ages: dict[str, list[float]] = {"pending": [], "dead": []}
        in_doubt = waiting = 0
        due: list[tuple[float, str]] = []
        for key, found in self.store.scan("outbox"):
            item = found.data
            ages.setdefault(item["state"], []).append(now - item["created_at"])
            if item["state"] == "pending":
                in_doubt += bool(item.get("in_doubt")) or (
                    item.get("call_at") is not None and item["leased_until"] <= now
                )
                waiting += bool(item.get("waiting_for"))
                if item["next_at"] <= now and item["leased_until"] <= now:
                    due.append((item["created_at"], key.removeprefix("outbox:")))
        due.sort()
        stats = OutboxStats(
            pending=len(ages["pending"]),
            dead=len(ages["dead"]),
            in_doubt=in_doubt,
            waiting=waiting,
            oldest_pending_seconds=max(ages["pending"], default=None),
            oldest_dead_seconds=max(ages["dead"], default=None),
        )
        return Survey([key for _, key in due[:limit]], stats)

    @operation
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
