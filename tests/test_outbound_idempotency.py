"""Acceptance tests: one RequestId is sent at most once, whatever arrives and in what order."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from werkzeug import Request, Response

from channel.errors import StoreUnavailable
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.store import Record, RecordStore, Versioned, Write
from channel.runtime import get_runtime, reset_runtime
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    INVALID_RECIPIENT,
    OTHER_RECIPIENT,
    OTHER_TEXT,
    payload,
)
from tests.fakes import FakeTwilio, twilio_error

RID = payload()["RequestId"]
FIRST_SID = f"SM{1:032x}"
SENT = {
    "ChannelDefinitionId": DEFINITION_ID,
    "MessageId": FIRST_SID,
    "RequestId": RID,
    "Status": "Sent",
}


def problem_status(response: func.HttpResponse) -> int:
    """The status of a problem answer, checked to be a well-formed problem JSON."""
    assert response.mimetype == "application/problem+json", response.get_body()
    body = answer_json(response)
    assert set(body) >= {"type", "title", "status", "detail"}
    status: int = response.status_code
    assert body["status"] == status
    return status


def test_fifty_calls_with_one_request_id_send_once(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept(delay=0.3)  # long enough for the concurrent calls to overlap
    start = threading.Barrier(25)

    def concurrent_call(_: int) -> func.HttpResponse:
        start.wait(timeout=10)
        return call("outbound", payload())

    with ThreadPoolExecutor(max_workers=25) as pool:
        concurrent = list(pool.map(concurrent_call, range(25)))
    later = [call("outbound", payload()) for _ in range(25)]

    assert len(twilio.posts()) == 1
    assert {r.status_code for r in concurrent} == {200, 409}
    for response in concurrent:
        if response.status_code == 409:
            assert problem_status(response) == 409
            assert answer_json(response)["type"].endswith(":request-in-flight")
    answers = [r.get_body() for r in concurrent + later if r.status_code == 200]
    assert [r.status_code for r in later] == [200] * 25
    assert set(answers) == {answers[0]}
    assert json.loads(answers[0]) == SENT


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"To": OTHER_RECIPIENT}, id="To"),
        pytest.param({"Message": {"text": OTHER_TEXT}}, id="text"),
        pytest.param({"From": "Contoso"}, id="From"),
    ],
)
def test_same_request_id_with_other_content_is_422(
    call: Call, twilio: FakeTwilio, change: dict[str, Any]
) -> None:
    twilio.accept()
    first = call("outbound", payload())
    assert answer_json(first) == SENT
    response = call("outbound", payload(**change))
    assert problem_status(response) == 422
    assert answer_json(response)["type"].endswith(":request-conflict")
    assert len(twilio.posts()) == 1
    # The conflicting call changed nothing: the original still replays.
    assert call("outbound", payload()).get_body() == first.get_body()
    assert len(twilio.posts()) == 1


def test_conflict_is_checked_before_a_first_answer_exists(call: Call, twilio: FakeTwilio) -> None:
    """A provably-unsent first attempt still binds the RequestId to its content."""
    twilio.answer(429, twilio_error(20429, 429), headers={"Retry-After": "600"})
    twilio.accept()
    assert problem_status(call("outbound", payload())) == 503
    assert problem_status(call("outbound", payload(To=OTHER_RECIPIENT))) == 422
    assert len(twilio.posts()) == 1


def test_not_sent_answer_replays_identically(call: Call, twilio: FakeTwilio) -> None:
    twilio.answer(400, twilio_error(21610))
    twilio.accept()
    first = call("outbound", payload())
    assert answer_json(first) == {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": None,
        "RequestId": RID,
        "Status": "NotSent",
    }
    again = call("outbound", payload())
    assert again.status_code == 200
    assert again.get_body() == first.get_body()
    assert len(twilio.posts()) == 1


def test_not_sent_without_provider_call_replays_identically(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    first = call("outbound", payload(To=INVALID_RECIPIENT))
    assert answer_json(first)["Status"] == "NotSent"
    again = call("outbound", payload(To=INVALID_RECIPIENT))
    assert again.status_code == 200
    assert again.get_body() == first.get_body()
    assert twilio.posts() == []


def test_wrapped_and_plain_requests_share_one_stored_answer(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    as_string = call("outbound", {"payload": json.dumps(payload())})
    as_object = call("outbound", {"payload": payload()})
    plain = call("outbound", payload())

    assert as_string.status_code == as_object.status_code == plain.status_code == 200
    assert as_string.mimetype == as_object.mimetype == plain.mimetype == "application/json"
    wrapped = json.loads(as_string.get_body())
    assert list(wrapped) == ["response"]
    assert isinstance(wrapped["response"], str)
    assert json.loads(wrapped["response"]) == SENT
    assert as_object.get_body() == as_string.get_body()
    assert plain.get_body().decode("utf-8") == wrapped["response"]
    assert len(twilio.posts()) == 1


def test_ledger_survives_a_restart(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    first = call("outbound", payload())
    assert answer_json(first) == SENT
    reset_runtime()  # a new process: only the SQLite file in tmp_path remains
    again = call("outbound", payload())
    assert again.status_code == 200
    assert again.get_body() == first.get_body()
    assert len(twilio.posts()) == 1


def test_confirmed_ambiguous_attempt_answers_sent_without_posting(
    call: Call, twilio: FakeTwilio
) -> None:
    twilio.answer(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
    twilio.accept()
    assert problem_status(call("outbound", payload())) == 503
    assert len(twilio.posts()) == 1

    # What the status-callback handler will do when Twilio reports the message.
    confirmed = "SM" + "c0ffee" * 5 + "00"
    assert get_runtime().ledger.confirm_sent(RID, confirmed) is True

    response = call("outbound", payload())
    assert response.status_code == 200
    assert answer_json(response) == SENT | {"MessageId": confirmed}
    assert len(twilio.posts()) == 1


def test_ambiguous_attempts_are_bounded_to_two_posts(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    server_error = {"code": 20500, "message": "Internal Server Error", "status": 500}
    twilio.answer(500, server_error)
    twilio.answer(500, server_error)
    twilio.accept()  # a third POST would be accepted, and the answer would show it

    assert problem_status(call("outbound", payload())) == 503
    assert len(twilio.posts()) == 1
    # The grace period is over at once: one new attempt is allowed, ambiguous again.
    assert problem_status(call("outbound", payload())) == 503
    assert len(twilio.posts()) == 2
    for _ in range(3):
        response = call("outbound", payload())
        assert problem_status(response) == 503
        assert answer_json(response)["type"].endswith(":send-ambiguous")
        assert int(response.headers["Retry-After"]) >= 1
    assert len(twilio.posts()) == 2


# --- A ledger fault after the provider accepted: never a second send ---


class FailingWrites:
    """The real store of the app, whose next ``failures`` writes of request records fail
    as the real ones do when the service is unreachable or the file stays locked.

    ``after_writing``: the write lands first and only its answer is lost (a connection
    reset after the service acted), the nastier case for a retry.
    """

    def __init__(self, store: RecordStore, failures: int, *, after_writing: bool = False) -> None:
        self.store = store
        self.kind = store.kind
        self.failures = failures
        self.after_writing = after_writing

    def get(self, key: str) -> Versioned | None:
        return self.store.get(key)

    def insert(self, key: str, data: Record) -> str:
        return self.store.insert(key, data)

    def replace(self, key: str, data: Record, etag: str) -> str:
        if key.startswith("request:") and self.failures > 0:
            self.failures -= 1
            if self.after_writing:
                self.store.replace(key, data, etag)
            raise StoreUnavailable("message ledger unavailable (injected fault)", retry_after=1)
        return self.store.replace(key, data, etag)

    def delete(self, key: str, etag: str) -> None:
        self.store.delete(key, etag)

    def transact(self, writes: Sequence[Write]) -> list[str]:
        return self.store.transact(writes)

    def scan(self, kind: str) -> Iterator[tuple[str, Versioned]]:
        return self.store.scan(kind)

    def scan_after(self, kind: str, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
        return self.store.scan_after(kind, after, limit)

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["embedded", "table"])
def ledger_kind(request: pytest.FixtureRequest, configure: Configure) -> str:
    """Each test of this kind runs on the embedded ledger and on Table Storage (Azurite)."""
    if request.param == "table":
        azurite: Azurite = request.getfixturevalue("azurite")
        table: str = request.getfixturevalue("table_name")
        configure(CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table)
    return str(request.param)


def faulty_ledger(failures: int, *, after_writing: bool = False) -> FailingWrites:
    ledger = get_runtime().ledger
    store = FailingWrites(ledger.store, failures, after_writing=after_writing)
    ledger.store = store
    return store


@pytest.mark.parametrize("after_writing", [False, True], ids=["write-failed", "answer-lost"])
def test_a_ledger_write_that_fails_a_few_times_is_retried_within_the_call(
    call: Call, twilio: FakeTwilio, ledger_kind: str, after_writing: bool
) -> None:
    twilio.accept()
    store = faulty_ledger(2, after_writing=after_writing)
    response = call("outbound", payload())
    assert response.status_code == 200
    assert answer_json(response) == SENT
    assert store.failures == 0
    reset_runtime()  # the answer is in the ledger itself, not only in this process
    assert answer_json(call("outbound", payload())) == SENT
    assert len(twilio.posts()) == 1


def test_an_answer_the_ledger_cannot_take_is_kept_and_never_sent_again(
    call: Call, twilio: FakeTwilio, ledger_kind: str, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    twilio.accept()
    store = faulty_ledger(1_000)
    for _ in range(3):  # the ledger stays down: each retry is a 503, none is a POST
        response = call("outbound", payload())
        assert problem_status(response) == 503
        assert answer_json(response)["type"].endswith(":ledger-unavailable")
        assert int(response.headers["Retry-After"]) >= 1
    assert len(twilio.posts()) == 1
    store.failures = 0  # the ledger is back
    response = call("outbound", payload())
    assert response.status_code == 200
    assert answer_json(response) == SENT  # the first call's MessageId
    reset_runtime()
    assert answer_json(call("outbound", payload())) == SENT
    assert len(twilio.posts()) == 1


def test_a_kept_answer_still_refuses_other_content(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    twilio.accept()
    store = faulty_ledger(1_000)
    assert problem_status(call("outbound", payload())) == 503
    assert problem_status(call("outbound", payload(To=OTHER_RECIPIENT))) == 422
    store.failures = 0
    assert answer_json(call("outbound", payload())) == SENT
    assert len(twilio.posts()) == 1


def test_a_sqlite_ledger_locked_after_the_provider_accepted_sends_once(
    call: Call, twilio: FakeTwilio, configure: Configure, tmp_path: Path
) -> None:
    """Another process locks the file while Twilio takes the message: the real fault."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    other = sqlite3.connect(
        tmp_path / "ledger.sqlite3", isolation_level=None, check_same_thread=False
    )

    def accept_then_lock(request: Request) -> Response:
        other.execute("BEGIN EXCLUSIVE")
        return Response(json.dumps({"sid": FIRST_SID}), status=201, content_type="application/json")

    twilio.server.expect_request(twilio.path, method="POST").respond_with_handler(accept_then_lock)
    try:
        first = call("outbound", payload())
        assert problem_status(first) == 503
        assert answer_json(first)["type"].endswith(":ledger-unavailable")
        assert problem_status(call("outbound", payload())) == 503  # still locked
    finally:
        other.execute("ROLLBACK")
        other.close()
    response = call("outbound", payload())
    assert response.status_code == 200
    assert answer_json(response) == SENT
    assert len(twilio.posts()) == 1


def test_a_locked_sqlite_ledger_answers_503_within_the_budget(
    call: Call, twilio: FakeTwilio, configure: Configure, tmp_path: Path
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    twilio.accept()
    store = get_runtime().ledger.store
    assert isinstance(store, EmbeddedStore)
    other = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        response = call("outbound", payload())
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert problem_status(response) == 503
    assert answer_json(response)["type"].endswith(":ledger-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    # SQLite was told to wait for the lock no longer than the call's budget (not 10 s).
    assert 0 < store.busy_timeout_ms <= 1000
    assert twilio.posts() == []
    assert answer_json(call("outbound", payload())) == SENT  # unlocked: sent, once
    assert len(twilio.posts()) == 1


def test_a_failure_before_the_provider_call_leaves_the_request_id_free(
    call: Call, twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the request is not sending it: a failure there is never "may have sent"."""
    twilio.accept()

    def broken(raw: str, region: str) -> str:
        raise RuntimeError("a defect while preparing the message")

    with monkeypatch.context() as patched:
        patched.setattr("channel.service.sender_for_provider", broken)
        assert problem_status(call("outbound", payload())) == 500
    assert twilio.posts() == []
    assert answer_json(call("outbound", payload())) == SENT  # not 503 "outcome unknown"
    assert len(twilio.posts()) == 1
