"""The outbox and retention: kept until forwarded, forwarded at least once, repeats flagged."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from channel.budget import Budget
from channel.drafts import Notification, Reply
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.outbox import MAX_FORWARD_ATTEMPTS, Marker, Outbox, retry_delay
from channel.ledger.retention import MARKER_RETENTION_DAYS, sweep
from channel.ledger.store import Record, RecordStore, Versioned, Write, encode_record
from channel.ledger.table import TableStore
from tests.azurite import Azurite
from tests.data import DEFINITION_ID, RECIPIENT, SENDER

NOTIFICATION = Notification(
    channel_definition_id=DEFINITION_ID,
    request_id="r-1",
    message_id="SM1",
    sender=SENDER,
    status="Delivered",
)
REPLY = Reply(
    channel_definition_id=DEFINITION_ID,
    our_number=SENDER,
    customer=RECIPIENT,
    message={"text": "hi"},
)
DAY = 86400.0


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
    lease = outbox.put("notification:r-1", NOTIFICATION)
    assert lease is not None
    assert lease.payload == NOTIFICATION
    assert outbox.put("notification:r-1", replace(NOTIFICATION, status="x")) is None
    outbox.forwarded(lease)
    assert outbox.put("notification:r-1", NOTIFICATION) is None
    assert outbox.claim("notification:r-1", force=True) is None
    kept = outbox.get("notification:r-1")
    assert isinstance(kept, Marker)
    assert kept.state == "forwarded"
    assert kept.payload == NOTIFICATION.to_payload()


def test_forwarded_items_leave_the_outbox(outbox: Outbox, store: EmbeddedStore) -> None:
    lease = outbox.put("notification:r-1", NOTIFICATION)
    assert lease is not None
    outbox.forwarded(lease)
    assert [key for key, _ in store.scan("due")] == []
    assert outbox.stats().pending == 0


def test_an_unreadable_item_is_counted_dead_and_does_not_stop_the_others(
    outbox: Outbox, store: EmbeddedStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    good = outbox.put("notification:r-1", NOTIFICATION)
    assert good is not None
    outbox.failed(good, "down", retry_after=0)
    clock.now += retry_delay(1, 0)
    broken = {"kind": "notification", "payload": {"RequestId": "r-2"}, "state": "pending"}
    store.insert("due:notification:r-2", broken)  # no ChannelDefinitionId, no times
    store.insert("due:notification:r-3", {"kind": "fax", "state": "pending"})
    with caplog.at_level("ERROR", logger="channel.ledger.outbox"):
        survey = outbox.survey(10)
    assert [due.key for due in survey.due] == ["notification:r-1"]
    assert (survey.stats.pending, survey.stats.dead) == (1, 2)
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("due:notification:r-2" in line for line in logged)
    assert any("due:notification:r-3" in line for line in logged)
    assert store.get("due:notification:r-2") == Versioned(broken, "1")  # left as it is


def test_the_first_payload_stands(outbox: Outbox) -> None:
    first = outbox.put("notification:r-1", NOTIFICATION)
    assert first is not None
    outbox.failed(first, "down", retry_after=1)
    again = outbox.put("notification:r-1", replace(NOTIFICATION, status="NotDelivered"))
    assert again is not None  # the retry may forward it, but with what was kept first
    assert again.payload == NOTIFICATION


def test_a_failed_item_waits_for_its_backoff_unless_forced(outbox: Outbox, clock: Clock) -> None:
    lease = outbox.put("notification:r-1", NOTIFICATION)
    assert lease is not None
    item = outbox.failed(lease, "Dataverse answered 503", retry_after=5)
    assert item.state == "pending"
    assert item.attempts == 1
    assert item.next_at == clock.now + 60  # a minute at least
    assert outbox.due(10) == []
    assert outbox.claim("notification:r-1") is None
    clock.now += 61
    assert outbox.due(10) == ["notification:r-1"]
    assert outbox.claim("notification:r-1") is not None
    assert outbox.claim("notification:r-1", force=True) is None  # leased now


def test_a_lease_expires_so_a_dead_process_does_not_strand_an_item(
    outbox: Outbox, clock: Clock
) -> None:
    assert outbox.put("inbound:twilio:SM1", REPLY) is not None
    assert outbox.claim("inbound:twilio:SM1", force=True) is None
    clock.now += 31
    assert outbox.due(10) == ["inbound:twilio:SM1"]
    assert outbox.claim("inbound:twilio:SM1") is not None


def test_backoff_doubles_to_an_hour_and_honours_retry_after() -> None:
    assert [retry_delay(n, 0) for n in (1, 2, 3, 7, 8, 20)] == [60, 120, 240, 3600, 3600, 3600]
    assert retry_delay(1, 300) == 300


def test_an_item_that_keeps_failing_is_dead_and_counted(outbox: Outbox, clock: Clock) -> None:
    for attempt in range(1, MAX_FORWARD_ATTEMPTS + 1):
        lease = outbox.claim("notification:r-1", force=True) or outbox.put(
            "notification:r-1", NOTIFICATION
        )
        assert lease is not None, attempt
        item = outbox.failed(lease, "403 missing privilege", retry_after=1)
    assert item.state == "dead"
    assert outbox.claim("notification:r-1", force=True) is None
    assert outbox.due(10) == []
    clock.now += 100
    stats = outbox.stats()
    assert (stats.pending, stats.dead) == (0, 1)
    assert stats.oldest_dead_seconds == 100


def test_due_is_oldest_first_and_bounded(outbox: Outbox, clock: Clock) -> None:
    for index in range(5):
        lease = outbox.put(f"inbound:twilio:SM{index}", REPLY)
        assert lease is not None
        outbox.failed(lease, "down", retry_after=0)
        clock.now += 1
    clock.now += 600
    assert outbox.due(3) == ["inbound:twilio:SM0", "inbound:twilio:SM1", "inbound:twilio:SM2"]


def test_inbound_markers_keep_no_text_and_no_customer_number(outbox: Outbox) -> None:
    lease = outbox.put("inbound:twilio:SM1", REPLY)
    assert lease is not None
    outbox.forwarded(lease)
    kept = outbox.get("inbound:twilio:SM1")
    assert isinstance(kept, Marker)
    assert kept.payload == {"ChannelDefinitionId": DEFINITION_ID, "To": SENDER}


# --- a call that may have reached Dataverse ------------------------------------------------


def test_a_lease_that_ran_out_mid_call_leaves_the_item_to_the_timer_as_a_possible_duplicate(
    outbox: Outbox, clock: Clock
) -> None:
    """The process died (or gave up) with its call in flight: nobody wrote an outcome."""
    first = outbox.put("notification:r-1", NOTIFICATION)
    assert first is not None
    assert not first.possible_duplicate
    clock.now += 31  # the lease ran out
    assert outbox.claim("notification:r-1", force=True) is None  # a provider's retry waits
    assert outbox.stats().in_doubt == 1
    again = outbox.claim("notification:r-1")  # the timer's run
    assert again is not None
    assert again.possible_duplicate


def test_a_lost_answer_waits_for_a_timer_run_and_stays_in_doubt(
    outbox: Outbox, clock: Clock
) -> None:
    lease = outbox.put("notification:r-1", NOTIFICATION)
    assert lease is not None
    item = outbox.failed(lease, "read timeout", retry_after=1, maybe_received=True)
    assert (item.in_doubt, item.call_at) == (True, None)
    assert item.next_at >= clock.now + 60  # no sooner than the next timer run
    assert outbox.claim("notification:r-1", force=True) is None
    clock.now += 61
    again = outbox.claim("notification:r-1")
    assert again is not None
    assert again.possible_duplicate
    # A refusal of the repeat does not clear the doubt about the first call.
    item = outbox.failed(again, "Dataverse answered 503", retry_after=1)
    assert item.in_doubt is True


def test_a_refusal_before_acting_is_retried_at_once_and_not_in_doubt(
    outbox: Outbox, clock: Clock
) -> None:
    lease = outbox.put("notification:r-1", NOTIFICATION)
    assert lease is not None
    outbox.failed(lease, "Dataverse answered 503", retry_after=1)
    again = outbox.claim("notification:r-1", force=True)  # a provider's retry
    assert again is not None
    assert not again.possible_duplicate
    assert outbox.stats().in_doubt == 0


def test_an_item_waiting_for_an_operator_counts_no_attempt(outbox: Outbox, clock: Clock) -> None:
    lease = outbox.put("inbound:twilio:SM1", replace(REPLY, channel_definition_id=None))
    assert lease is not None
    for _ in range(MAX_FORWARD_ATTEMPTS + 1):
        item = outbox.waiting(lease, "channel definition")
        assert (item.state, item.attempts) == ("pending", 0)
        assert outbox.due(10) == []
        clock.now += 60
        assert outbox.due(10) == ["inbound:twilio:SM1"]
        claimed = outbox.claim("inbound:twilio:SM1")
        assert claimed is not None
        assert not claimed.possible_duplicate  # no call was made
        lease = claimed
    assert outbox.stats().waiting == 1


# --- retention -------------------------------------------------------------------------------


def test_retention_removes_old_records_keeps_young_ones_and_markers_for_a_year(
    outbox: Outbox, store: EmbeddedStore, clock: Clock
) -> None:
    old = outbox.put("notification:old", NOTIFICATION)
    assert old is not None
    outbox.forwarded(old)
    store.insert("request:old", {"created_at": clock.now})
    store.insert("sender:+12065550100", {"from": SENDER})
    clock.now += 40 * DAY
    young = outbox.put("notification:young", NOTIFICATION)
    assert young is not None
    outbox.forwarded(young)
    store.insert("request:young", {"created_at": clock.now})
    swept = sweep(store, now=clock.now, retention_days=30, limit=100, budget=Budget(60))
    assert swept.removed == 1
    assert kinds(store) == {
        "request:young",
        "done:notification:old",
        "done:notification:young",
        "sender:+12065550100",
    }
    clock.now += MARKER_RETENTION_DAYS * DAY - 39 * DAY
    swept = sweep(store, now=clock.now, retention_days=30, limit=100, budget=Budget(60))
    assert swept.removed == 2
    assert kinds(store) == {"done:notification:young", "sender:+12065550100"}


def kinds(store: RecordStore) -> set[str]:
    return {key for kind in ("request", "done", "sender") for key, _ in store.scan(kind)}


class Counting:
    """A record store that counts the records its scans read (the cost of a sweep)."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.kind = store.kind
        self.read = 0

    def get(self, key: str) -> Versioned | None:
        return self.store.get(key)

    def insert(self, key: str, data: Record) -> str:
        return self.store.insert(key, data)

    def replace(self, key: str, data: Record, etag: str) -> str:
        return self.store.replace(key, data, etag)

    def delete(self, key: str, etag: str) -> None:
        self.store.delete(key, etag)

    def transact(self, writes: Sequence[Write]) -> list[str]:
        return self.store.transact(writes)

    def scan(self, kind: str) -> Iterator[tuple[str, Versioned]]:
        for found in self.store.scan(kind):
            self.read += 1
            yield found

    def scan_after(self, kind: str, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
        page = self.store.scan_after(kind, after, limit)
        self.read += len(page)
        return page

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["embedded", "table"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    """The embedded store, and the Table store on Azurite."""
    store: RecordStore
    if request.param == "embedded":
        store = EmbeddedStore(tmp_path / "ledger.sqlite3")
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        table: str = request.getfixturevalue("table_name")
        store = TableStore(table=table, connection_string=azurite.connection_string)
    yield store
    store.close()


NOW = 2_000_000_000.0
LIMIT = 10


def test_retention_sweeps_a_large_ledger_a_bounded_slice_per_run(any_store: RecordStore) -> None:
    """More expired records than one run may examine, among young ones: each run reads at
    most its limit, and successive runs (each from where the last stopped) remove them all."""
    store = Counting(any_store)
    rng = random.Random(8)  # noqa: S311 - reproducible keys and ages, not a secret
    expired: set[str] = set()
    kept: set[str] = set()
    kinds = ("request", "due", "done", "outbox", "forwarded")
    for n in range(60):
        kind = kinds[n % len(kinds)]
        key = f"{kind}:{rng.getrandbits(64):016x}"
        age = rng.choice([0.0, 40.0, MARKER_RETENTION_DAYS + 1])
        store.insert(key, {"created_at": NOW - age * DAY, "state": "pending"})
        limit_days = MARKER_RETENTION_DAYS if kind in ("done", "forwarded") else 30
        (expired if age > limit_days else kept).add(key)
    assert len(expired) > LIMIT
    removed = 0
    for _ in range(8):  # 60 records, 10 a run: one lap takes 6 runs (and a kind's end)
        store.read = 0
        swept = sweep(store, now=NOW, retention_days=30, limit=LIMIT, budget=Budget(60))
        assert store.read == swept.scanned <= LIMIT
        removed += swept.removed
    left = {key for kind in kinds for key, _ in any_store.scan(kind)}
    assert left == kept
    assert removed == len(expired)


def test_retention_with_no_time_left_reads_nothing(any_store: RecordStore) -> None:
    store = Counting(any_store)
    store.insert("request:old", {"created_at": 1.0})
    swept = sweep(store, now=NOW, retention_days=30, limit=LIMIT, budget=Budget(0))
    assert (swept.scanned, swept.removed, store.read) == (0, 0, 0)
    assert store.get("request:old") is not None


# --- the stored shape: what the previous version wrote, byte for byte -----------------------

NOTIFICATION_DUE = (
    '{"kind":"notification","payload":{"ChannelDefinitionId":"b1b25a46-6da0-4c08-9cf3-505e613c8e30",'
    '"RequestId":"r-1","MessageId":"SM1","From":"12065550100","Status":"Delivered"},'
    '"state":"pending","attempts":0,"created_at":2000000.0,"next_at":2000000.0,'
    '"leased_until":2000030.0,"call_at":2000000.0,"in_doubt":false}'
)
REPLY_DUE = (
    '{"kind":"inbound","payload":{"ChannelDefinitionId":null,"To":"+12065550100",'
    '"From":"+14255550199","Message":{"text":"h\\u00e9 \\ud83d\\ude00"}},'
    '"state":"pending","attempts":0,"created_at":2000000.0,"next_at":2000000.0,'
    '"leased_until":2000030.0,"call_at":2000000.0,"in_doubt":false}'
)
NOTIFICATION_KEPT = '{"state":"kept","kind":"notification","created_at":2000000.0}'
REPLY_KEPT = '{"state":"kept","kind":"inbound","created_at":2000000.0}'
NOTIFICATION_FAILED = (
    '{"kind":"notification","payload":{"ChannelDefinitionId":"b1b25a46-6da0-4c08-9cf3-505e613c8e30",'
    '"RequestId":"r-1","MessageId":"SM1","From":"12065550100","Status":"Delivered"},'
    '"state":"pending","attempts":1,"created_at":2000000.0,"next_at":2000061.0,'
    '"leased_until":0.0,"call_at":null,"in_doubt":true,"last_error":"Dataverse answered 503",'
    '"waiting_for":null}'
)
REPLY_FAILED = (
    '{"kind":"inbound","payload":{"ChannelDefinitionId":"b1b25a46-6da0-4c08-9cf3-505e613c8e30",'
    '"To":"12065550100","From":"+14255550199","Message":{"text":"h\\u00e9 \\ud83d\\ude00"}},'
    '"state":"pending","attempts":1,"created_at":2000000.0,"next_at":2000061.0,'
    '"leased_until":0.0,"call_at":null,"in_doubt":false,"last_error":"Dataverse answered 503",'
    '"waiting_for":null}'
)
NOTIFICATION_FORWARDED = (
    '{"state":"forwarded","kind":"notification","created_at":2000000.0,"forwarded_at":2000062.0,'
    '"payload":{"ChannelDefinitionId":"b1b25a46-6da0-4c08-9cf3-505e613c8e30","RequestId":"r-1",'
    '"MessageId":"SM1","From":"12065550100","Status":"Delivered"}}'
)
REPLY_FORWARDED = (
    '{"state":"forwarded","kind":"inbound","created_at":2000000.0,"forwarded_at":2000062.0,'
    '"payload":{"ChannelDefinitionId":"b1b25a46-6da0-4c08-9cf3-505e613c8e30","To":"12065550100"}}'
)
"""The records the previous version (untyped payloads, main at 69959a4) wrote for a
notification and a reply: put, then failed (the reply addressed meanwhile), then forwarded,
at the times below. Captured by running that version; the text is what a store keeps."""

UNADDRESSED = Reply(
    channel_definition_id=None,
    our_number="+12065550100",
    customer=RECIPIENT,
    message={"text": "h\u00e9 \U0001f600"},
)


def stored(store: RecordStore) -> dict[str, str]:
    """Every outbox record by key, as the JSON text the store keeps.

    Both stores keep ``encode_record``'s text and read it back with ``json.loads``, which
    keeps the order of fields, so encoding what is read gives the stored text again.
    """
    return {
        key: encode_record(key, found.data)
        for kind in ("due", "done")
        for key, found in store.scan(kind)
    }


def test_items_and_markers_keep_the_previous_versions_shape_byte_for_byte(
    any_store: RecordStore,
) -> None:
    clock = Clock()
    outbox = Outbox(any_store, lease_seconds=30, clock=clock)
    notification = outbox.put("notification:r-1", NOTIFICATION, legacy=False)
    reply = outbox.put("inbound:twilio:SM2", UNADDRESSED, legacy=False)
    assert notification is not None
    assert reply is not None
    assert stored(any_store) == {
        "due:notification:r-1": NOTIFICATION_DUE,
        "due:inbound:twilio:SM2": REPLY_DUE,
        "done:notification:r-1": NOTIFICATION_KEPT,
        "done:inbound:twilio:SM2": REPLY_KEPT,
    }

    clock.now += 1
    # Addressed when forwarding (as WebhookService does), then Dataverse refused.
    addressed = reply.with_payload(UNADDRESSED.addressed(DEFINITION_ID, SENDER))
    outbox.failed(addressed, "Dataverse answered 503", retry_after=0)
    outbox.failed(notification, "Dataverse answered 503", retry_after=0, maybe_received=True)
    assert stored(any_store) == {
        "due:notification:r-1": NOTIFICATION_FAILED,
        "due:inbound:twilio:SM2": REPLY_FAILED,
        "done:notification:r-1": NOTIFICATION_KEPT,
        "done:inbound:twilio:SM2": REPLY_KEPT,
    }

    clock.now += 61
    for key in ("notification:r-1", "inbound:twilio:SM2"):
        lease = outbox.claim(key)
        assert lease is not None, key
        outbox.forwarded(lease)
    assert stored(any_store) == {
        "done:notification:r-1": NOTIFICATION_FORWARDED,
        "done:inbound:twilio:SM2": REPLY_FORWARDED,
    }


@pytest.mark.parametrize("stage", ["put", "failed"])
def test_items_the_previous_version_kept_are_read_and_forwarded_as_it_would(
    any_store: RecordStore, stage: str
) -> None:
    """An upgrade finds items the previous version wrote (a call in flight, or refused):
    they read as typed drafts, are forwarded once, and leave the markers it would have."""
    texts = {
        "put": (NOTIFICATION_DUE, REPLY_DUE),
        "failed": (NOTIFICATION_FAILED, REPLY_FAILED),
    }[stage]
    records = {
        "due:notification:r-1": texts[0],
        "done:notification:r-1": NOTIFICATION_KEPT,
        "due:inbound:twilio:SM2": texts[1],
        "done:inbound:twilio:SM2": REPLY_KEPT,
    }
    any_store.transact([Write("insert", key, json.loads(text)) for key, text in records.items()])
    clock = Clock()
    clock.now += 62
    outbox = Outbox(any_store, lease_seconds=30, clock=clock)
    assert outbox.put("notification:r-1", NOTIFICATION, legacy=False) is None  # kept: no retry
    survey = outbox.survey(10)
    assert [due.key for due in survey.due] == ["inbound:twilio:SM2", "notification:r-1"]
    assert survey.stats.in_doubt == 2 if stage == "put" else 1
    leases = [outbox.claim_due(due) for due in survey.due]
    reply, notification = leases
    assert notification is not None
    assert reply is not None
    assert notification.payload == NOTIFICATION
    # Addressed once by the previous version when it failed; not yet when it was put.
    expected = UNADDRESSED.addressed(DEFINITION_ID, SENDER) if stage == "failed" else UNADDRESSED
    assert reply.payload == expected
    outbox.forwarded(notification)
    outbox.forwarded(reply.with_payload(UNADDRESSED.addressed(DEFINITION_ID, SENDER)))
    assert stored(any_store) == {
        "done:notification:r-1": NOTIFICATION_FORWARDED,
        "done:inbound:twilio:SM2": REPLY_FORWARDED,
    }
