"""The message ledger's state machine and the record store under it, on both backends.

Every store and ledger test runs on the embedded SQLite store and on the Table Storage
store against a real Azurite, so the local store cannot drift from the one used in
Azure. Tests of one backend's own concerns are marked by their names.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from channel.budget import Budget
from channel.contracts import OutboundResponse
from channel.errors import (
    RecordTooLarge,
    RequestConflict,
    RequestInFlight,
    SendAmbiguous,
    ServiceUnavailable,
    StoreUnavailable,
)
from channel.ledger import Claim, Completed, MessageLedger, fingerprint
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.messages import ANSWERED_KEPT_SECONDS, KnownSender
from channel.ledger.store import (
    AlreadyExists,
    Record,
    RecordStore,
    StaleRecord,
    Updated,
    Versioned,
    Write,
    update,
)
from channel.ledger.table import TableStore
from tests.azurite import Azurite, free_port
from tests.data import DEFINITION_ID, RECIPIENT, SENDER, SENDER_E164, TEXT

CONTENT = fingerprint(DEFINITION_ID, SENDER, RECIPIENT, TEXT)

OpenStore = Callable[[], RecordStore]
"""Opens one more store on the same storage (the same file, or the same table)."""


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "table"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Stores of one backend sharing their storage; all closed at the end of the test."""
    opened: list[RecordStore] = []
    make: OpenStore
    if request.param == "embedded":
        path = tmp_path / "ledger.sqlite3"

        def make() -> RecordStore:
            return EmbeddedStore(path)

    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        table: str = request.getfixturevalue("table_name")

        def make() -> RecordStore:
            return TableStore(table=table, connection_string=azurite.connection_string)

    def open_one() -> RecordStore:
        store = make()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> RecordStore:
    return open_store()


@pytest.fixture
def table_store(azurite: Azurite, table_name: str) -> Iterator[TableStore]:
    store = TableStore(table=table_name, connection_string=azurite.connection_string)
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(store: RecordStore, clock: Clock) -> MessageLedger:
    return MessageLedger(store, lease_seconds=30, ambiguous_grace_seconds=600, clock=clock)


def begin(ledger: MessageLedger, rid: str = "r-1", content: str = CONTENT) -> Claim | Completed:
    return ledger.begin(
        rid, content, channel_definition_id=DEFINITION_ID, sender=SENDER, provider="twilio"
    )


def attempt(outcome: Claim | Completed) -> int:
    """The attempt a claim is for (failing the test when the call was answered instead)."""
    assert isinstance(outcome, Claim)
    return outcome.attempt


def sent(rid: str = "r-1", message_id: str = "SM1") -> OutboundResponse:
    return OutboundResponse(
        ChannelDefinitionId=DEFINITION_ID, MessageId=message_id, RequestId=rid, Status="Sent"
    )


def test_update_decides_again_on_the_record_another_writer_left(store: RecordStore) -> None:
    """The one compare-and-swap of the ledger: a stale version is read again and the
    change applied to what is there now, never over it."""
    first = store.insert("request:r-1", {"n": 1})
    store.replace("request:r-1", {"n": 10}, first)  # another writer, after we read
    seen: list[Record] = []

    def add_one(record: Record) -> Record:
        seen.append(record)
        return {"n": record["n"] + 1}

    updated = update(store, "request:r-1", add_one, found=Versioned({"n": 1}, first))
    assert updated.written
    assert seen == [{"n": 1}, {"n": 10}]
    found = store.get("request:r-1")
    assert found is not None
    assert found.data == {"n": 11} == (updated.found.data if updated.found else None)
    left = update(store, "request:r-1", lambda record: None)
    assert (left.written, left.found) == (False, found)
    assert update(store, "request:missing", add_one) == Updated(None, written=False)


def test_a_store_transaction_applies_every_write_or_none(store: RecordStore) -> None:
    item_etag, _ = store.transact(
        [Write("insert", "due:n:r/1", {"v": 1}), Write("insert", "done:n:r/1", {"m": 1})]
    )
    # An insert of a record that exists: nothing of the transaction is written.
    with pytest.raises(AlreadyExists) as refused:
        store.transact(
            [Write("insert", "due:n:r/2", {"v": 2}), Write("insert", "done:n:r/1", {"m": 2})]
        )
    assert refused.value.args == ("done:n:r/1",)
    assert store.get("due:n:r/2") is None
    # A delete (or replace) of a version that is not the record's any more: nothing either.
    newer = store.replace("due:n:r/1", {"v": 3}, item_etag)
    for stale in (Write("delete", "due:n:r/1", etag=item_etag), Write("delete", "due:n:r/9")):
        with pytest.raises(StaleRecord) as refused_stale:
            store.transact([Write("upsert", "done:n:r/1", {"m": 3}), stale])
        assert refused_stale.value.args == (stale.key,)
        found = store.get("done:n:r/1")
        assert found is not None
        assert found.data == {"m": 1}
    # The one that matches: the marker replaced, the item gone, in one transaction.
    store.transact(
        [Write("upsert", "done:n:r/1", {"m": 4}), Write("delete", "due:n:r/1", etag=newer)]
    )
    assert store.get("due:n:r/1") is None
    marker = store.get("done:n:r/1")
    assert marker is not None
    assert marker.data == {"m": 4}
    (replaced,) = store.transact([Write("replace", "done:n:r/1", {"m": 5}, etag=marker.etag)])
    with pytest.raises(StaleRecord):
        store.transact([Write("replace", "done:n:r/1", {"m": 6}, etag=marker.etag)])
    assert store.transact([Write("replace", "done:n:r/1", {"m": 7}, etag=replaced)])
    # Kinds a transaction may span (the Table store keeps them in one partition), only.
    with pytest.raises(ValueError, match="request"):
        store.transact([Write("insert", "request:r/1", {})])


def test_items_and_markers_are_scanned_apart(store: RecordStore) -> None:
    for n in range(3):
        store.transact(
            [Write("insert", f"due:k{n}", {"i": n}), Write("insert", f"done:k{n}", {"m": n})]
        )
    store.insert("outbox:k0", {"old": 0})  # the previous version's item kind
    assert {key for key, _ in store.scan("due")} == {"due:k0", "due:k1", "due:k2"}
    assert {key for key, _ in store.scan("done")} == {"done:k0", "done:k1", "done:k2"}
    assert [key for key, _ in store.scan("outbox")] == ["outbox:k0"]
    first = store.scan_after("done", None, 2)
    rest = store.scan_after("done", first[-1][0], 2)
    assert len(first) == 2
    assert {key for key, _ in first + rest} == {"done:k0", "done:k1", "done:k2"}


def test_an_answered_request_is_read_once_per_process_for_its_reports(
    open_store: OpenStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A final report reaching the process that answered the send reads nothing; another
    process reads the record once; a copy older than ANSWERED_KEPT_SECONDS is read again,
    so a record retention removed is not reported."""
    sender = MessageLedger(open_store(), lease_seconds=30, ambiguous_grace_seconds=600, clock=clock)
    other_store = open_store()
    other = MessageLedger(other_store, lease_seconds=30, ambiguous_grace_seconds=600, clock=clock)
    reads: list[str] = []
    for ledger in (sender, other):
        read = ledger.store.get

        def counted(key: str, read: Callable[[str], Versioned | None] = read) -> Versioned | None:
            reads.append(key)
            return read(key)

        monkeypatch.setattr(ledger.store, "get", counted)
    claim = begin(sender)
    assert isinstance(claim, Claim)
    sender.complete(claim, sent())
    stored = sender.get("r-1")
    reads.clear()
    assert sender.for_report("r-1") == stored
    assert reads == []
    assert other.for_report("r-1") == stored
    assert other.for_report("r-1") == stored
    assert reads == ["request:r-1"]
    # Not answered yet: always read (a status callback may settle it).
    assert isinstance(begin(sender, "r-2"), Claim)
    assert sender.for_report("r-2") is not None
    assert sender.for_report("r-2") is not None
    assert reads[1:] == ["request:r-2", "request:r-2"]
    # Past the time it is kept: read again, and gone once retention removed it.
    clock.now += ANSWERED_KEPT_SECONDS
    found = other_store.get("request:r-1")
    assert found is not None
    other_store.delete("request:r-1", found.etag)
    assert sender.for_report("r-1") is None


def test_a_process_keeps_a_bounded_number_of_answered_requests(
    ledger: MessageLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("channel.ledger.messages.ANSWERED_KEPT", 2)
    for rid in ("r-1", "r-2", "r-3"):
        claim = begin(ledger, rid)
        assert isinstance(claim, Claim)
        ledger.complete(claim, sent(rid))
    reads: list[str] = []
    read = ledger.store.get

    def counted(key: str) -> Versioned | None:
        reads.append(key)
        return read(key)

    monkeypatch.setattr(ledger.store, "get", counted)
    for rid in ("r-3", "r-2", "r-1"):
        assert ledger.for_report(rid) is not None
    assert reads == ["request:r-1"]  # the oldest went first


def test_store_insert_is_conditional_and_replace_is_guarded(store: RecordStore) -> None:
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


def test_store_delete_is_guarded_and_idempotent(store: RecordStore) -> None:
    etag = store.insert("k", {"v": 1})
    newer = store.replace("k", {"v": 2}, etag)
    with pytest.raises(StaleRecord):
        store.delete("k", etag)
    store.delete("k", newer)
    assert store.get("k") is None
    store.delete("k", newer)  # already gone: fine
    assert store.insert("k", {"v": 3})  # the key can be used again


def test_store_scan_returns_one_kind_with_original_keys(store: RecordStore) -> None:
    keys = ["outbox:notification:r/1", "outbox:inbound:twilio:SM#?x", "request:r/1", "outboxy:z"]
    for index, key in enumerate(keys):
        store.insert(key, {"i": index})
    found = {key: versioned.data for key, versioned in store.scan("outbox")}
    assert found == {"outbox:notification:r/1": {"i": 0}, "outbox:inbound:twilio:SM#?x": {"i": 1}}
    for key, versioned in store.scan("request"):
        store.replace(key, {"i": 9}, versioned.etag)  # scanned etags guard writes
    assert store.get("request:r/1") is not None


def test_store_survives_reopening(open_store: OpenStore) -> None:
    first = open_store()
    first.insert("k", {"v": 1})
    first.close()
    found = open_store().get("k")
    assert found is not None
    assert found.data == {"v": 1}


def test_an_embedded_file_of_the_earlier_schema_keeps_working(tmp_path: Path) -> None:
    # Files created before the table became WITHOUT ROWID keep their rowid table: every
    # store operation must work on them as on a new file, records of before included.
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE records (key TEXT PRIMARY KEY, data TEXT NOT NULL, "
            "version INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO records VALUES ('request:old', '{\"v\": 1}', 3)")
    db.close()
    old = EmbeddedStore(path)
    found = old.get("request:old")
    assert found is not None
    assert (found.data, found.etag) == ({"v": 1}, "3")
    old.replace("request:old", {"v": 2}, "3")
    etags = old.transact([Write("insert", "due:k", {"i": 1}), Write("upsert", "done:k", {"m": 1})])
    assert etags == ["1", "1"]
    assert old.transact(
        [Write("upsert", "done:k", {"m": 2}), Write("delete", "due:k", etag="1")]
    ) == ["2", ""]
    assert old.get("done:k") == Versioned({"m": 2}, "2")
    assert old.get("due:k") is None
    old.close()
    new = EmbeddedStore(tmp_path / "new.sqlite3")
    new.close()
    for file, rowid in ((path, True), (tmp_path / "new.sqlite3", False)):
        with sqlite3.connect(file) as db:
            (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()
        db.close()
        assert ("WITHOUT ROWID" not in sql) is rowid


def test_store_keeps_keys_of_any_character_and_length(store: RecordStore) -> None:
    keys = [
        "request:a/b\\c#d?e",  # the characters Table keys forbid
        "request:" + "r/#?" * 1_000,  # 4 KiB: beyond the 1 KiB of a Table key
        "outbox:inbound:twilio:\t\n\u00e9\u4e2d\U0001f600 '\"%",
        "request:",
        "no-kind-at-all",
    ]
    etags = {key: store.insert(key, {"key": key}) for key in keys}
    for key in keys:
        found = store.get(key)
        assert found is not None
        assert found.data == {"key": key}
        assert found.etag == etags[key]
        store.replace(key, {"key": key, "v": 2}, found.etag)
    requests = {key for key in keys if key.startswith("request:")}
    assert {key for key, _ in store.scan("request")} == requests
    assert {key for key, _ in store.scan("outbox")} == {keys[2]}
    for key in keys:
        found = store.get(key)
        assert found is not None
        assert found.data == {"key": key, "v": 2}
        store.delete(key, found.etag)
        assert store.get(key) is None


def test_store_refuses_a_record_over_the_table_limit(store: RecordStore) -> None:
    """What Table Storage cannot hold is a clear 413 error on both backends, not a 500."""
    with pytest.raises(RecordTooLarge, match="64 KiB") as caught:
        store.insert("request:big", {"text": "x" * 40_000})
    assert caught.value.status == 413
    with pytest.raises(RecordTooLarge, match="key"):
        store.insert("request:" + "k" * 40_000, {})
    if isinstance(store, TableStore):
        assert store.round_trips == 0  # refused before any call
    etag = store.insert("request:small", {"text": "x"})
    with pytest.raises(RecordTooLarge):
        store.replace("request:small", {"text": "x" * 40_000}, etag)
    assert store.get("request:big") is None
    found = store.get("request:small")
    assert found is not None
    assert found.data == {"text": "x"}


def test_first_call_claims_and_completion_is_replayed(ledger: MessageLedger) -> None:
    claim = begin(ledger)
    assert isinstance(claim, Claim)
    assert (claim.request_id, claim.attempt) == ("r-1", 1)
    assert ledger.complete(claim, sent()) == sent()
    assert begin(ledger) == Completed(sent())


def test_record_keeps_correlation_but_not_the_recipient_or_text(ledger: MessageLedger) -> None:
    claim = begin(ledger)
    assert isinstance(claim, Claim)
    ledger.complete(claim, sent())
    record = ledger.get("r-1")
    assert record is not None
    assert record.sender == SENDER
    assert record.channel_definition_id == DEFINITION_ID
    assert record.message_id == "SM1"
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
    assert attempt(begin(ledger)) == 1


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
    assert attempt(begin(ledger)) == 2
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
    assert attempt(begin(ledger)) == 2


def test_concurrent_first_calls_yield_exactly_one_claim(open_store: OpenStore) -> None:
    """Twenty threads over two separate store instances sharing one storage."""
    stores = [open_store(), open_store()]
    ledgers = [MessageLedger(s, lease_seconds=30, ambiguous_grace_seconds=600) for s in stores]
    results: list[object] = []
    gate = threading.Barrier(20)

    def race(index: int) -> None:
        gate.wait(timeout=10)
        try:
            results.append(begin(ledgers[index % 2]))
        except RequestInFlight as exc:
            results.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert sum(isinstance(r, RequestInFlight) for r in results) == 19


def test_store_replace_of_a_removed_record_is_stale(store: RecordStore) -> None:
    etag = store.insert("k", {"v": 1})
    store.delete("k", etag)
    with pytest.raises(StaleRecord):
        store.replace("k", {"v": 2}, etag)


# --- Table Storage only ---


def test_table_is_created_on_first_use_once_per_process(azurite: Azurite, table_name: str) -> None:
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(azurite.connection_string)
    try:

        def exists() -> bool:
            return any(service.query_tables("TableName eq @n", parameters={"n": table_name}))

        first = TableStore(table=table_name, connection_string=azurite.connection_string)
        second = TableStore(table=table_name, connection_string=azurite.connection_string)
        try:
            assert first.round_trips == 0  # building a store sends nothing
            assert not exists()
            assert first.get("request:r-1") is None
            assert exists()
            assert first.round_trips == 2  # create the table, then read
            assert second.get("request:r-1") is None
            assert second.round_trips == 1  # this process created it already
        finally:
            first.close()
            second.close()
    finally:
        service.close()


def test_table_entity_layout(azurite: Azurite, table_store: TableStore) -> None:
    """Hashed keys in 256 partitions per kind; the key and JSON record kept as properties."""
    from azure.data.tables import TableClient

    key = "request:r/1#?"
    table_store.insert(key, {"state": "claimed", "n": 1})
    digest = hashlib.sha256(key.encode()).hexdigest()
    client = TableClient.from_connection_string(
        azurite.connection_string, table_name=table_store.table_name
    )
    try:
        entity = client.get_entity(f"request-{digest[:2]}", digest)
    finally:
        client.close()
    assert entity["Key"] == key
    assert json.loads(entity["Data"]) == {"state": "claimed", "n": 1}


def test_table_store_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="table name"):
        TableStore(table="no-dashes", connection_string="UseDevelopmentStorage=true")
    with pytest.raises(ValueError, match="either"):
        TableStore(table="ledger")
    with pytest.raises(ValueError, match="credential"):
        TableStore(table="ledger", account_url="https://acct.table.core.windows.net")


def test_table_at_a_closed_port_is_unavailable_at_once() -> None:
    port = free_port()  # nothing listens there
    store = TableStore(
        table="ledger",
        connection_string=Azurite(port, started_here=False).connection_string,
    )
    try:
        for operation in (
            lambda: store.get("request:r-1"),
            lambda: store.insert("request:r-1", {}),
            lambda: store.replace("request:r-1", {}, "etag"),
            lambda: store.delete("request:r-1", "etag"),
            lambda: list(store.scan("request")),
        ):
            before = store.round_trips
            with pytest.raises(ServiceUnavailable, match="message ledger unavailable") as caught:
                operation()
            assert store.round_trips - before == 1  # a refused connection is not retried
            assert caught.value.__cause__ is not None
            assert caught.value.status == 503
    finally:
        store.close()


def test_table_that_never_answers_times_out() -> None:
    """A service that takes the connection but never answers: the read timeout ends it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nobody ever reads them
        port = silent.getsockname()[1]
        store = TableStore(
            table="ledger",
            connection_string=Azurite(port, started_here=False).connection_string,
            read_timeout=0.5,
        )
        try:
            with pytest.raises(ServiceUnavailable):
                store.get("request:r-1")
        finally:
            store.close()
        assert store.round_trips == 1  # one read timeout, no retry that would wait again


def test_table_tries_are_cut_to_the_applied_budget(httpserver: HTTPServer) -> None:
    """A service slower than the call's budget: the try ends with the budget, no retry follows.

    The read takes 5 s here and the store's own read timeout is 5 s too: only the budget
    of 1 s can end it (without it, the read succeeds after 5 s).
    """
    exists = {"odata.error": {"code": "TableAlreadyExists", "message": {"value": "exists"}}}
    httpserver.expect_request("/devstoreaccount1/Tables", method="POST").respond_with_json(
        exists, status=409
    )
    release = threading.Event()

    def slow_read(request: Request) -> Response:
        release.wait(5)
        missing = {"odata.error": {"code": "ResourceNotFound", "message": {"value": "none"}}}
        return Response(json.dumps(missing), status=404, content_type="application/json")

    httpserver.expect_request(re.compile(r"/devstoreaccount1/slowledger\(.*")).respond_with_handler(
        slow_read
    )
    store = TableStore(
        table="slowledger",  # a name of its own: the process remembers tables made
        connection_string=Azurite(httpserver.port, started_here=False).connection_string,
        read_timeout=5.0,
    )
    try:
        with Budget(1.0).applied(), pytest.raises(StoreUnavailable):
            store.get("request:r-1")
    finally:
        release.set()
        store.close()
        # The slow read is logged when its handler returns: let it land in this test's
        # log, not in the next test's (the server is shared).
        for _ in range(500):
            if any("slowledger(" in request.path for request, _ in httpserver.log):
                break
            threading.Event().wait(0.01)
    assert store.round_trips == 2  # the table (409: it exists) and one read, not retried


def test_table_retries_are_bounded_and_counted(httpserver: HTTPServer) -> None:
    """A service answering 503 (server busy) is tried 1 + 3 times, then reported."""
    httpserver.expect_request("/devstoreaccount1/Tables").respond_with_data("busy", status=503)
    store = TableStore(
        table="ledger",
        connection_string=Azurite(httpserver.port, started_here=False).connection_string,
    )
    try:
        with pytest.raises(ServiceUnavailable, match="503"):
            store.get("request:r-1")
    finally:
        store.close()
    assert store.round_trips == 4
    assert len(httpserver.log) == 4


def test_table_deleted_under_the_store_is_made_again(
    azurite: Azurite, table_store: TableStore
) -> None:
    table_store.insert("request:r-1", {"v": 1})
    azurite.drop_table(table_store.table_name)
    with pytest.raises(ServiceUnavailable, match="insert"):
        table_store.insert("request:r-2", {"v": 2})
    assert table_store.insert("request:r-2", {"v": 2})  # the table was created again
    assert table_store.get("request:r-1") is None


def test_table_not_ours_to_create_is_used_as_it_is(httpserver: HTTPServer) -> None:
    """An identity without the right to create tables: the table was made at deployment."""
    httpserver.expect_request("/devstoreaccount1/Tables", method="POST").respond_with_data(
        "", status=403
    )
    missing = {"odata.error": {"code": "ResourceNotFound", "message": {"value": "not found"}}}
    httpserver.expect_request(re.compile(r"/devstoreaccount1/ledger\(.*")).respond_with_json(
        missing, status=404
    )
    store = TableStore(
        table="ledger",
        connection_string=Azurite(httpserver.port, started_here=False).connection_string,
    )
    try:
        assert store.get("request:r-1") is None
    finally:
        store.close()
    assert store.round_trips == 2


def test_table_store_refuses_a_malformed_connection_string() -> None:
    with pytest.raises(ValueError, match="onnection string"):
        TableStore(table="ledger", connection_string="no such thing")


def test_a_file_that_is_no_database_leaves_no_connection_open(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite3"
    path.write_bytes(b"this is not an SQLite database, " * 64)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(real_connect(*args, **kwargs))
        return opened[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", connect)
        with pytest.raises(sqlite3.DatabaseError):
            EmbeddedStore(path)
    (connection,) = opened
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


# --- several providers (CHANNEL_ROUTES) -----------------------------------------------------


def test_an_ambiguous_request_waits_the_grace_of_the_provider_it_was_sent_with(
    store: RecordStore, clock: Clock
) -> None:
    ledger = MessageLedger(
        store,
        lease_seconds=30,
        ambiguous_grace_seconds=600,
        grace_by_provider={"telnyx": 60},
        clock=clock,
    )
    for rid, provider in (("via-twilio", "twilio"), ("via-telnyx", "telnyx")):
        ledger.begin(
            rid, CONTENT, channel_definition_id=DEFINITION_ID, sender=SENDER, provider=provider
        )
        ledger.mark_ambiguous(rid)
    clock.now += 61
    # Whatever provider a retry names (a route changed), the first one's grace holds.
    with pytest.raises(SendAmbiguous) as waiting:
        ledger.begin(
            "via-twilio",
            CONTENT,
            channel_definition_id=DEFINITION_ID,
            sender=SENDER,
            provider="telnyx",
        )
    assert waiting.value.retry_after == 600 - 61 + 1
    claim = ledger.begin(
        "via-telnyx", CONTENT, channel_definition_id=DEFINITION_ID, sender=SENDER, provider="twilio"
    )
    assert isinstance(claim, Claim)
    assert claim.attempt == 2
    assert claim.record.provider == "telnyx"


def test_a_remembered_sender_addresses_replies_of_its_own_provider_only(
    open_store: OpenStore,
) -> None:
    ledger = MessageLedger(open_store(), lease_seconds=30, ambiguous_grace_seconds=600)
    other = MessageLedger(open_store(), lease_seconds=30, ambiguous_grace_seconds=600)
    ledger.remember_sender(SENDER_E164, SENDER, DEFINITION_ID, provider="vonage")
    assert ledger.sender(SENDER_E164, "vonage") == KnownSender(SENDER, DEFINITION_ID, "vonage")
    assert ledger.sender(SENDER_E164) is not None  # any provider
    assert ledger.sender(SENDER_E164, "telnyx") is None
    # The number moves to Telnyx: another process that learned Vonage sees the move.
    assert other.sender(SENDER_E164, "vonage") is not None
    ledger.remember_sender(SENDER_E164, SENDER, DEFINITION_ID, provider="telnyx")
    assert other.sender(SENDER_E164, "telnyx") is not None
    # Records written before senders named their provider serve every provider.
    ledger.remember_sender("+12065550111", "12065550111", DEFINITION_ID)
    assert other.sender("+12065550111", "telnyx") == KnownSender("12065550111", DEFINITION_ID)


def test_a_provably_unsent_attempt_after_an_ambiguous_one_leaves_it_ambiguous(
    ledger: MessageLedger, clock: Clock
) -> None:
    first = begin(ledger)
    assert isinstance(first, Claim)
    ledger.mark_ambiguous("r-1")
    clock.now += 601
    second = begin(ledger)
    assert isinstance(second, Claim)
    ledger.release("r-1")  # e.g. throttled, or its provider cannot be built: nothing left
    record = ledger.get("r-1")
    assert record is not None
    assert record.state == "ambiguous"  # the first attempt may still have been taken
    assert record.first_attempt_at == first.record.first_attempt_at
    third = begin(ledger)
    assert isinstance(third, Claim)
    assert third.record.first_attempt_at == first.record.first_attempt_at
    ledger.mark_ambiguous("r-1")
    clock.now += 601
    with pytest.raises(SendAmbiguous, match="2 attempts"):
        begin(ledger)
