"""The outbox and the forward_pending timer: kept until forwarded, forwarded once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.ledger.embedded import EmbeddedStore
from channel.ledger.outbox import MAX_ATTEMPTS, Outbox, retry_delay
from channel.ledger.retention import sweep
from tests.data import DEFINITION_ID, SENDER

PAYLOAD = {
    "ChannelDefinitionId": DEFINITION_ID,
    "RequestId": "r-1",
    "MessageId": "SM1",
    "From": SENDER,
    "Status": "Delivered",
}


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(tmp_path / "ledger.sqlite3")
    yield store
    store.close()


@pytest.fixture
def outbox(store: EmbeddedStore, clock: Clock) -> Outbox:
    return Outbox(store, lease_seconds=30, clock=clock)


def test_first_put_leases_and_a_duplicate_gets_nothing(outbox: Outbox) -> None:
    lease = outbox.put("notification:r-1", "notification", PAYLOAD)
    assert lease is not None
    assert lease.payload == PAYLOAD
    assert outbox.put("notification:r-1", "notification", PAYLOAD | {"Status": "x"}) is None
    outbox.forwarded(lease)
    assert outbox.put("notification:r-1", "notification", PAYLOAD) is None
    assert outbox.claim("notification:r-1", force=True) is None
    kept = outbox.get("notification:r-1")
    assert kept is not None
    assert kept["state"] == "forwarded"
    assert kept["payload"] == PAYLOAD


def test_forwarded_items_leave_the_outbox(outbox: Outbox, store: EmbeddedStore) -> None:
    lease = outbox.put("notification:r-1", "notification", PAYLOAD)
    assert lease is not None
    outbox.forwarded(lease)
    assert [key for key, _ in store.scan("outbox")] == []
    assert outbox.stats().pending == 0


def test_the_first_payload_stands(outbox: Outbox) -> None:
    first = outbox.put("notification:r-1", "notification", PAYLOAD)
    assert first is not None
    outbox.failed(first, "down", retry_after=1)
    again = outbox.put("notification:r-1", "notification", PAYLOAD | {"Status": "NotDelivered"})
    assert again is not None  # the retry may forward it, but with what was kept first
    assert again.payload["Status"] == "Delivered"


def test_a_failed_item_waits_for_its_backoff_unless_forced(outbox: Outbox, clock: Clock) -> None:
    lease = outbox.put("notification:r-1", "notification", PAYLOAD)
    assert lease is not None
    item = outbox.failed(lease, "Dataverse answered 503", retry_after=5)
    assert item["state"] == "pending"
    assert item["attempts"] == 1
    assert item["next_at"] == clock.now + 60  # a minute at least
    assert outbox.due(10) == []
    assert outbox.claim("notification:r-1") is None
    clock.now += 61
    assert outbox.due(10) == ["notification:r-1"]
    assert outbox.claim("notification:r-1") is not None
    assert outbox.claim("notification:r-1", force=True) is None  # leased now


def test_a_lease_expires_so_a_dead_process_does_not_strand_an_item(
    outbox: Outbox, clock: Clock
) -> None:
    assert outbox.put("inbound:twilio:SM1", "inbound", {"x": 1}) is not None
    assert outbox.claim("inbound:twilio:SM1", force=True) is None
    clock.now += 31
    assert outbox.due(10) == ["inbound:twilio:SM1"]
    assert outbox.claim("inbound:twilio:SM1") is not None


def test_backoff_doubles_to_an_hour_and_honours_retry_after() -> None:
    assert [retry_delay(n, 0) for n in (1, 2, 3, 7, 8, 20)] == [60, 120, 240, 3600, 3600, 3600]
    assert retry_delay(1, 300) == 300


def test_an_item_that_keeps_failing_is_dead_and_counted(outbox: Outbox, clock: Clock) -> None:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        lease = outbox.claim("notification:r-1", force=True) or outbox.put(
            "notification:r-1", "notification", PAYLOAD
        )
        assert lease is not None, attempt
        item = outbox.failed(lease, "403 missing privilege", retry_after=1)
    assert item["state"] == "dead"
    assert outbox.claim("notification:r-1", force=True) is None
    assert outbox.due(10) == []
    clock.now += 100
    stats = outbox.stats()
    assert (stats.pending, stats.dead) == (0, 1)
    assert stats.oldest_dead_seconds == 100


def test_due_is_oldest_first_and_bounded(outbox: Outbox, clock: Clock) -> None:
    for index in range(5):
        lease = outbox.put(f"inbound:twilio:SM{index}", "inbound", {"i": index})
        assert lease is not None
        outbox.failed(lease, "down", retry_after=0)
        clock.now += 1
    clock.now += 600
    assert outbox.due(3) == ["inbound:twilio:SM0", "inbound:twilio:SM1", "inbound:twilio:SM2"]


def test_retention_removes_old_records_and_keeps_young_ones(
    outbox: Outbox, store: EmbeddedStore, clock: Clock
) -> None:
    old = outbox.put("notification:old", "notification", PAYLOAD)
    assert old is not None
    outbox.forwarded(old)
    store.insert("request:old", {"created_at": clock.now})
    store.insert("sender:+12065550100", {"from": SENDER})
    clock.now += 40 * 86400
    young = outbox.put("notification:young", "notification", PAYLOAD)
    assert young is not None
    outbox.forwarded(young)
    store.insert("request:young", {"created_at": clock.now})
    removed = sweep(store, cutoff=clock.now - 30 * 86400, limit=100)
    assert removed == 2
    kinds = {key for kind in ("request", "forwarded", "sender") for key, _ in store.scan(kind)}
    assert kinds == {"request:young", "forwarded:notification:young", "sender:+12065550100"}


def test_retention_is_bounded_per_run(store: EmbeddedStore) -> None:
    for index in range(7):
        store.insert(f"request:{index}", {"created_at": 1.0})
    assert sweep(store, cutoff=100.0, limit=5) == 5
    assert sweep(store, cutoff=100.0, limit=5) == 2
