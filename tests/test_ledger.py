"""The message ledger's state machine, on the embedded store (Table joins with its issue)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.contracts import OutboundResponse
from channel.errors import RequestConflict, RequestInFlight, SendAmbiguous
from channel.ledger import Claim, Completed, MessageLedger, fingerprint
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.store import AlreadyExists, StaleRecord
from tests.data import DEFINITION_ID, RECIPIENT, SENDER, TEXT

CONTENT = fingerprint(DEFINITION_ID, SENDER, RECIPIENT, TEXT)


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(tmp_path / "ledger.sqlite3")
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(store: EmbeddedStore, clock: Clock) -> MessageLedger:
    return MessageLedger(store, lease_seconds=30, ambiguous_grace_seconds=600, clock=clock)


def begin(ledger: MessageLedger, rid: str = "r-1", content: str = CONTENT) -> Claim | Completed:
    return ledger.begin(
        rid, content, channel_definition_id=DEFINITION_ID, sender=SENDER, provider="twilio"
    )


def sent(rid: str = "r-1", message_id: str = "SM1") -> OutboundResponse:
    return OutboundResponse(
        ChannelDefinitionId=DEFINITION_ID, MessageId=message_id, RequestId=rid, Status="Sent"
    )


def test_store_insert_is_conditional_and_replace_is_guarded(store: EmbeddedStore) -> None:
    etag = store.insert("k", {"v": 1})
    with pytest.raises(AlreadyExists):
        store.insert("k", {"v": 2})
    newer = store.replace("k", {"v": 3}, etag)
    with pytest.raises(StaleRecord):
        store.replace("k", {"v": 4}, etag)
    found = store.get("k")
    assert found is not None
    assert (found.data, found.etag) == ({"v": 3}, newer)
    assert store.get("missing") is None


def test_store_delete_is_guarded_and_idempotent(store: EmbeddedStore) -> None:
    etag = store.insert("k", {"v": 1})
    newer = store.replace("k", {"v": 2}, etag)
    with pytest.raises(StaleRecord):
        store.delete("k", etag)
    store.delete("k", newer)
    assert store.get("k") is None
    store.delete("k", newer)  # already gone: fine
    assert store.insert("k", {"v": 3})  # the key can be used again


def test_store_scan_returns_one_kind_with_original_keys(store: EmbeddedStore) -> None:
    keys = ["outbox:notification:r/1", "outbox:inbound:twilio:SM#?x", "request:r/1", "outboxy:z"]
    for index, key in enumerate(keys):
        store.insert(key, {"i": index})
    found = {key: versioned.data for key, versioned in store.scan("outbox")}
    assert found == {"outbox:notification:r/1": {"i": 0}, "outbox:inbound:twilio:SM#?x": {"i": 1}}
    for key, versioned in store.scan("request"):
        store.replace(key, {"i": 9}, versioned.etag)  # scanned etags guard writes
    assert store.get("request:r/1") is not None


def test_store_survives_reopening(tmp_path: Path) -> None:
    first = EmbeddedStore(tmp_path / "l.sqlite3")
    first.insert("k", {"v": 1})
    first.close()
    second = EmbeddedStore(tmp_path / "l.sqlite3")
    found = second.get("k")
    second.close()
    assert found is not None
    assert found.data == {"v": 1}


def test_first_call_claims_and_completion_is_replayed(ledger: MessageLedger) -> None:
    claim = begin(ledger)
    assert claim == Claim("r-1", 1)
    assert isinstance(claim, Claim)
    assert ledger.complete(claim, sent()) == sent()
    assert begin(ledger) == Completed(sent())


def test_record_keeps_correlation_but_not_the_recipient_or_text(ledger: MessageLedger) -> None:
    claim = begin(ledger)
    assert isinstance(claim, Claim)
    ledger.complete(claim, sent())
    record = ledger.get("r-1")
    assert record is not None
    assert record["from"] == SENDER
    assert record["channel_definition_id"] == DEFINITION_ID
    assert record["message_id"] == "SM1"
    flat = repr(record)
    assert RECIPIENT not in flat
    assert TEXT not in flat


def test_in_flight_then_conflict(ledger: MessageLedger) -> None:
    begin(ledger)
    with pytest.raises(RequestInFlight):
        begin(ledger)
    with pytest.raises(RequestConflict):
        begin(ledger, content=fingerprint(DEFINITION_ID, SENDER, RECIPIENT, "other"))


def test_released_claim_can_be_taken_again(ledger: MessageLedger) -> None:
    begin(ledger)
    ledger.release("r-1")
    assert begin(ledger) == Claim("r-1", 1)


def test_ambiguous_waits_for_grace_then_allows_one_new_attempt(
    ledger: MessageLedger, clock: Clock
) -> None:
    begin(ledger)
    ledger.mark_ambiguous("r-1")
    with pytest.raises(SendAmbiguous) as waiting:
        begin(ledger)
    assert waiting.value.retry_after == 601
    clock.now += 300
    with pytest.raises(SendAmbiguous) as later:
        begin(ledger)
    assert later.value.retry_after == 301
    clock.now += 300
    assert begin(ledger) == Claim("r-1", 2)
    ledger.mark_ambiguous("r-1")
    clock.now += 10_000
    with pytest.raises(SendAmbiguous, match="2 attempts"):
        begin(ledger)


def test_a_callback_confirms_an_ambiguous_attempt(ledger: MessageLedger) -> None:
    begin(ledger)
    ledger.mark_ambiguous("r-1")
    assert ledger.confirm_sent("r-1", "SM9")
    assert begin(ledger) == Completed(sent(message_id="SM9"))
    assert not ledger.confirm_sent("unknown", "SM9")


def test_a_callback_racing_the_answer_does_not_change_it(ledger: MessageLedger) -> None:
    claim = begin(ledger)
    assert isinstance(claim, Claim)
    assert ledger.confirm_sent("r-1", "SM1")  # the callback beats our own completion
    assert ledger.complete(claim, sent(message_id="SM1")) == sent(message_id="SM1")
    assert ledger.confirm_sent("r-1", "SM2")  # later duplicates change nothing
    assert begin(ledger) == Completed(sent(message_id="SM1"))


def test_an_abandoned_claim_counts_as_an_ambiguous_attempt(
    ledger: MessageLedger, clock: Clock
) -> None:
    begin(ledger)
    clock.now += 31  # the lease is over: the claimant died mid-send
    with pytest.raises(SendAmbiguous):
        begin(ledger)
    clock.now += 600
    assert begin(ledger) == Claim("r-1", 2)


def test_concurrent_first_calls_yield_exactly_one_claim(tmp_path: Path) -> None:
    stores = [EmbeddedStore(tmp_path / "shared.sqlite3") for _ in range(2)]
    ledgers = [MessageLedger(s, lease_seconds=30, ambiguous_grace_seconds=600) for s in stores]
    results: list[object] = []
    gate = threading.Barrier(20)

    def race(index: int) -> None:
        gate.wait()
        try:
            results.append(begin(ledgers[index % 2]))
        except RequestInFlight as exc:
            results.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert sum(isinstance(r, RequestInFlight) for r in results) == 19
