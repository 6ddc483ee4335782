"""The outbox: notifications and inbound messages kept until Dataverse has taken them.

An item (``due:<key>``) is written once, together with its ``done:<key>`` marker (the
first writer wins, so a duplicate or later webhook cannot change what is reported), and
forwarded under a lease, so two callers never forward it at the same time. Once
Dataverse has taken it, one transaction marks the marker forwarded and removes the item:
the items then are only what still needs work, which keeps the timer's scan short
however many messages the ledger remembers, and the marker, kept far longer (see
retention), makes a replayed webhook a no-op.

    put --> leased --forwarded--> (marker)   two transactions: item and marker, then both
              |----failed-------> pending (attempts + 1, retried from next_at)
              |----waiting------> pending (no attempt counted; retried by the next timer run)
              '----failed, attempts >= MAX_FORWARD_ATTEMPTS --> dead (shown in health)

At least once, not exactly once: Dataverse has no idempotency key, so a call it acted on
whose answer was lost (a read timeout, a process killed mid-call) cannot be told from
one it never got. Each lease records that a call is starting (``call_at``); an outcome
written by ``failed`` or ``waiting`` clears it. An item whose call may have been received
(the answer was lost, or the lease ran out with ``call_at`` still set) is ``in_doubt``:
it is left to the next timer run (a provider's retry does not force it) and the forward
that repeats it is flagged as a possible duplicate.

The previous version kept an item as ``outbox:<key>`` and wrote a separate
``forwarded:<key>`` marker before removing it. Those records are still honoured: ``put``
looks for them first (unless the caller knows none can exist), the timer forwards such
an item the old way, and its marker blocks a replay for as long as retention keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from channel.drafts import Draft, draft_from
from channel.ledger.store import (
    AlreadyExists,
    Record,
    RecordStore,
    StaleRecord,
    Versioned,
    Write,
    update,
)
from channel.ledger.traced import operation

log = logging.getLogger(__name__)


class ItemState(StrEnum):
    """An outbox item's ``state``; stored as its value."""

    PENDING = "pending"
    DEAD = "dead"


class MarkerState(StrEnum):
    """A marker's ``state``: written with its item, then forwarded once Dataverse took it."""

    KEPT = "kept"
    FORWARDED = "forwarded"


MAX_FORWARD_ATTEMPTS = 20
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
class OutboxItem:
    """An outbox item (``due:<key>``, or the previous version's ``outbox:<key>``), typed.

    ``row`` is how it is stored: ``changed`` writes onto it, so fields keep their order
    and anything this version does not know survives.
    """

    payload: Draft
    """What to send (stored as the contract's fields; OrganizationId is added when forwarding)."""
    state: ItemState
    attempts: int
    created_at: float
    next_at: float
    """When the timer may try it next (the back-off)."""
    leased_until: float
    call_at: float | None
    """When the call of the current (or a lost) lease began; None once its outcome is known."""
    in_doubt: bool
    """An earlier call's answer was lost: Dataverse may have acted on it."""
    last_error: str | None
    waiting_for: str | None
    """What a reply waits for before it can be forwarded (no call is made meanwhile)."""
    row: Record = field(compare=False, repr=False)

    @classmethod
    def from_row(cls, row: Record) -> OutboxItem:
        """The item a store holds as ``row``."""
        return cls(
            payload=draft_from(row["kind"], row["payload"]),
            state=ItemState(row["state"]),
            attempts=int(row["attempts"]),
            created_at=row["created_at"],
            next_at=row["next_at"],
            leased_until=row["leased_until"],
            call_at=row.get("call_at"),
            in_doubt=bool(row.get("in_doubt")),
            last_error=row.get("last_error"),
            waiting_for=row.get("waiting_for"),
            row=row,
        )

    @classmethod
    def leased_anew(cls, payload: Draft, *, now: float, lease_seconds: float) -> OutboxItem:
        """A new item, leased at once to be forwarded."""
        return cls.from_row(
            {
                "kind": payload.kind,
                "payload": payload.to_payload(),
                "state": ItemState.PENDING,
                "attempts": 0,
                "created_at": now,
                "next_at": now,
                "leased_until": now + lease_seconds,
                # The lease is taken to call Dataverse: from here on, a call may be in flight.
                "call_at": now,
                "in_doubt": False,
            }
        )

    def to_row(self) -> Record:
        """The item as a store keeps it."""
        return self.row

    def changed(self, **changes: Any) -> OutboxItem:
        """The item with ``changes`` (stored values by field name) written onto its row."""
        return OutboxItem.from_row(self.row | changes)

    @property
    def kind(self) -> str:
        """``notification`` or ``inbound``, as stored: what its payload is."""
        return self.payload.kind

    @property
    def maybe_received(self) -> bool:
        """Whether an earlier call for the item may have reached Dataverse.

        Its answer was lost, or a lease ran out with its call still marked (the caller
        died or gave up mid-call).
        """
        return self.in_doubt or self.call_at is not None


@dataclass(frozen=True)
class Marker:
    """An item's marker (``done:<key>``, or the previous version's ``forwarded:<key>``), typed."""

    state: MarkerState
    kind: str
    """``notification`` or ``inbound``, as its item's."""
    created_at: float
    """When its item was kept."""
    forwarded_at: float | None = None
    """When Dataverse took the item; None while it is kept."""
    payload: Record | None = None
    """What was forwarded, by the contract's names, minus a reply's text and its sender."""

    @classmethod
    def from_row(cls, row: Record) -> Marker:
        """The marker a store holds as ``row``."""
        return cls(
            state=MarkerState(row["state"]),
            kind=row["kind"],
            created_at=row["created_at"],
            forwarded_at=row.get("forwarded_at"),
            payload=row.get("payload"),
        )

    def to_row(self) -> Record:
        """The marker as a store keeps it (a kept one without what only forwarding adds)."""
        row: Record = {"state": self.state, "kind": self.kind, "created_at": self.created_at}
        if self.state == MarkerState.FORWARDED:
            row |= {"forwarded_at": self.forwarded_at, "payload": self.payload}
        return row


@dataclass(frozen=True)
class Lease:
    """The right to forward one item now; ``etag`` guards the follow-up write."""

    key: str
    item: OutboxItem
    etag: str
    legacy: bool = False
    """An item of the previous version (``outbox:<key>``), forwarded the old way."""

    @property
    def kind(self) -> str:
        """``notification`` or ``inbound``."""
        return self.item.kind

    @property
    def payload(self) -> Draft:
        """What to send (OrganizationId is added when forwarding)."""
        return self.item.payload

    @property
    def possible_duplicate(self) -> bool:
        """An earlier call for this item may have reached Dataverse (its answer was lost)."""
        return self.item.in_doubt

    def with_payload(self, payload: Draft) -> Lease:
        """The same lease carrying ``payload`` (resolved when forwarding).

        Stored only should the lease end without forwarding (``failed``, ``waiting``).
        """
        return replace(self, item=self.item.changed(payload=payload.to_payload()))


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
class Due:
    """An item due for forwarding, as the timer's scan read it."""

    key: str
    found: Versioned
    legacy: bool = False


@dataclass(frozen=True)
class Survey:
    """What one scan of the outbox found: the items due for forwarding, and the counts."""

    due: list[Due]
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
    def put(self, key: str, payload: Draft, *, legacy: bool = True) -> Lease | None:
        """Keep ``payload`` under ``key`` (first writer wins) and lease it for forwarding.

        Returns None when the item was forwarded already or another caller holds it.
        ``legacy``: records of the previous version may exist for ``key`` (False when
        the caller knows they cannot, which saves two reads).
        """
        if legacy:
            if self.store.get(_legacy_marker(key)) is not None:
                return None  # forwarded before the upgrade
            if self.store.get(_legacy_item(key)) is not None:
                return self.claim(key, force=True)
        now = self.clock()
        item = OutboxItem.leased_anew(payload, now=now, lease_seconds=self.lease_seconds)
        # The marker, written with the item, is what blocks every later put for the key,
        # long after the item has gone: no read is needed to tell a first put.
        marker = Marker(MarkerState.KEPT, payload.kind, created_at=now)
        try:
            _, etag = self.store.transact(
                [
                    Write("insert", _marker(key), marker.to_row()),
                    Write("insert", _item(key), item.to_row()),
                ]
            )
        except AlreadyExists:  # kept earlier (a retry may forward it now) or forwarded
            found = self.store.get(_item(key))
            return None if found is None else self._lease(Due(key, found), force=True)
        return Lease(key, item, etag)

    @operation
    def claim(self, key: str, *, force: bool = False) -> Lease | None:
        """Lease a pending item; None if it is forwarded, dead, leased or not due yet.

        ``force`` ignores the back-off (a provider's own retry may try at once), except
        for an item whose last call may have reached Dataverse: only the timer claims
        that one, so a repeat (a possible duplicate) comes no sooner than its next run.
        """
        found = self.store.get(_item(key))
        if found is not None:
            return self._lease(Due(key, found), force=force)
        found = self.store.get(_legacy_item(key))
        return None if found is None else self._lease(Due(key, found, legacy=True), force=force)

    @operation
    def claim_due(self, due: Due) -> Lease | None:
        """Lease an item the timer's scan found due, by the version it read (one write)."""
        return self._lease(due, force=False)

    def _lease(self, due: Due, *, force: bool) -> Lease | None:
        """Lease the item ``due`` names, starting from the version it holds."""
        key = due.key
        address = _legacy_item(key) if due.legacy else _item(key)
        if (
            due.legacy
            and self._may_lease(OutboxItem.from_row(due.found.data), force=force)
            and self.store.get(_legacy_marker(key)) is not None
        ):
            # Forwarded, but the process stopped before removing the item (the previous
            # version wrote the two apart; this version writes them at once).
            self._remove(address)
            return None

        def lease(row: Record) -> Record | None:
            item = OutboxItem.from_row(row)
            if not self._may_lease(item, force=force):
                return None
            now = self.clock()
            leased = item.changed(
                leased_until=now + self.lease_seconds, call_at=now, in_doubt=item.maybe_received
            )
            return leased.to_row()

        updated = update(self.store, address, lease, found=due.found)
        if not updated.written or updated.found is None:
            return None
        item = OutboxItem.from_row(updated.found.data)
        return Lease(key, item, updated.found.etag, legacy=due.legacy)

    def _may_lease(self, item: OutboxItem, *, force: bool) -> bool:
        """Whether ``item`` may be leased now (``force``: by a provider's retry)."""
        now = self.clock()
        if item.state != ItemState.PENDING:
            return False
        if force and item.maybe_received:
            return False  # a provider's retry: only the timer repeats a call in doubt
        return item.leased_until <= now and (force or item.next_at <= now)

    @operation
    def forwarded(self, lease: Lease) -> None:
        """Dataverse took the item: mark it forwarded and take it out of the outbox, at once."""
        marker = Marker(
            MarkerState.FORWARDED,
            lease.kind,
            created_at=lease.item.created_at,
            forwarded_at=self.clock(),
            # What was reported, minus a reply's text and its sender (the customer): the
            # marker outlives the content by far (see retention), so it keeps no personal data.
            payload=lease.payload.to_marker(),
        ).to_row()
        if lease.legacy:
            with contextlib.suppress(AlreadyExists):
                self.store.insert(_legacy_marker(lease.key), marker)
            try:
                self.store.delete(_legacy_item(lease.key), lease.etag)
            except StaleRecord:
                self._remove(_legacy_item(lease.key))
            return
        etag: str | None = lease.etag
        while True:
            # The lease's version first; if the lease ran out and another caller wrote the
            # item meanwhile, whatever version it has now (Dataverse took it all the same).
            writes = [Write("upsert", _marker(lease.key), marker)]
            if etag is not None:
                writes.append(Write("delete", _item(lease.key), etag=etag))
            try:
                self.store.transact(writes)
            except StaleRecord:
                found = self.store.get(_item(lease.key))
                etag = None if found is None else found.etag
                continue
            return

    @operation
    def failed(
        self, lease: Lease, error: str, *, retry_after: float, maybe_received: bool = False
    ) -> OutboxItem:
        """Forwarding failed: give the lease back; the timer retries it with backoff.

        ``maybe_received``: the call went out and its answer was lost, so Dataverse may
        have acted on it; the item is then in doubt for good (see the module docstring).
        Returns the item as now stored; its state is ``dead`` after MAX_FORWARD_ATTEMPTS.
        """
        return self._give_back(
            lease,
            lambda item, now: {
                "attempts": item.attempts + 1,
                "last_error": error,
                "next_at": now + retry_delay(item.attempts + 1, retry_after),
                "state": (
                    ItemState.DEAD
                    if item.attempts + 1 >= MAX_FORWARD_ATTEMPTS
                    else ItemState.PENDING
                ),
                "in_doubt": item.in_doubt or maybe_received,
                "waiting_for": None,
            },
        )

    @operation
    def waiting(self, lease: Lease, reason: str) -> OutboxItem:
        """The item cannot be forwarded yet (no call was made): the next timer run tries.

        No attempt is counted, so an item waiting for an operator never dies of it.
        """
        return self._give_back(
            lease,
            lambda item, now: {
                "waiting_for": reason,
                "next_at": now + MIN_BACKOFF_SECONDS,
                "in_doubt": item.in_doubt,
            },
        )

    def _give_back(
        self, lease: Lease, change: Callable[[OutboxItem, float], dict[str, Any]]
    ) -> OutboxItem:
        """End the lease with ``change`` (fields by name) applied; its call is over."""
        now = self.clock()
        address = _legacy_item(lease.key) if lease.legacy else _item(lease.key)
        tries = 0

        def give_back(row: Record) -> Record:
            nonlocal tries
            tries += 1
            item = OutboxItem.from_row(row)
            # After a conflict, our lease ran out and another caller took the item: its
            # lease and its in-flight mark are its own to end.
            ended: dict[str, Any] = {"leased_until": 0.0, "call_at": None} if tries == 1 else {}
            return item.changed(**(change(item, now) | ended)).to_row()

        found = Versioned(lease.item.to_row(), lease.etag)
        updated = update(self.store, address, give_back, found=found)
        return lease.item if updated.found is None else OutboxItem.from_row(updated.found.data)

    def due(self, limit: int) -> list[str]:
        """Keys of pending items due for forwarding, oldest first, at most ``limit``."""
        return [due.key for due in self.survey(limit).due]

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
        ages: dict[str, list[float]] = {ItemState.PENDING: [], ItemState.DEAD: []}
        in_doubt = waiting = 0
        due: list[tuple[float, str, Due]] = []
        # Items of this version, then any the previous version left (a query each).
        scanned = [(key, found, False) for key, found in self.store.scan(ITEM)]
        scanned += [(key, found, True) for key, found in self.store.scan(LEGACY_ITEM)]
        unreadable = 0
        for address, found, legacy in scanned:
            try:
                item = OutboxItem.from_row(found.data)
            except (KeyError, TypeError, ValueError) as exc:
                # One record this version cannot read (edited by hand, or written by a
                # version that does not exist yet) must not stop the timer forwarding the
                # others: it stays as it is, counted dead, for an operator to look at.
                unreadable += 1
                log.error(
                    "outbox record %s cannot be read (%s): left as it is and counted dead",
                    address,
                    type(exc).__name__,
                )
                continue
            ages.setdefault(item.state, []).append(now - item.created_at)
            if item.state == ItemState.PENDING:
                in_doubt += item.in_doubt or (item.call_at is not None and item.leased_until <= now)
                waiting += bool(item.waiting_for)
                if item.next_at <= now and item.leased_until <= now:
                    key = address.partition(":")[2]
                    due.append((item.created_at, key, Due(key, found, legacy)))
        due.sort(key=lambda entry: entry[:2])
        stats = OutboxStats(
            pending=len(ages[ItemState.PENDING]),
            dead=len(ages[ItemState.DEAD]) + unreadable,
            in_doubt=in_doubt,
            waiting=waiting,
            oldest_pending_seconds=max(ages[ItemState.PENDING], default=None),
            oldest_dead_seconds=max(ages[ItemState.DEAD], default=None),
        )
        return Survey([entry for _, _, entry in due[:limit]], stats)

    @operation
    def get(self, key: str) -> OutboxItem | Marker | None:
        """The item (state pending or dead), or its marker once forwarded; for inspection."""
        found = self.store.get(_marker(key))
        if found is not None and found.data["state"] == MarkerState.FORWARDED:
            return Marker.from_row(found.data)
        found = self.store.get(_item(key))
        if found is not None:
            return OutboxItem.from_row(found.data)
        found = self.store.get(_legacy_marker(key))
        if found is not None:
            return Marker.from_row(found.data)
        found = self.store.get(_legacy_item(key))
        return None if found is None else OutboxItem.from_row(found.data)

    def _remove(self, address: str) -> None:
        """Remove the record at ``address``, whatever its version."""
        while True:
            found = self.store.get(address)
            if found is None:
                return
            try:
                self.store.delete(address, found.etag)
            except StaleRecord:
                continue
            return


def reported_message(store: RecordStore, request_id: str) -> str | None:
    """The message id of the final report kept (or forwarded) for ``request_id``, or None.

    Proof that a send reached the provider, for a request whose answer was lost (see
    MessageLedger.begin). At most two reads, and only on that rare path.
    """
    key = f"notification:{request_id}"  # as WebhookService keeps a final report
    for address in (_marker(key), _item(key)):
        found = store.get(address)
        payload = None if found is None else found.data.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("MessageId"), str):
            return str(payload["MessageId"])
    return None


ITEM = "due"
"""The kind of an item that still needs work (pending or dead)."""
MARKER = "done"
"""The kind of an item's marker: ``kept`` with its item, ``forwarded`` once Dataverse took it."""
LEGACY_ITEM = "outbox"
"""The previous version's item kind."""
LEGACY_MARKER = "forwarded"
"""The previous version's marker kind (written once forwarded, then the item removed)."""


def _item(key: str) -> str:
    return f"{ITEM}:{key}"


def _marker(key: str) -> str:
    return f"{MARKER}:{key}"


def _legacy_item(key: str) -> str:
    return f"{LEGACY_ITEM}:{key}"


def _legacy_marker(key: str) -> str:
    return f"{LEGACY_MARKER}:{key}"
