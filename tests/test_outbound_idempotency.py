"""Acceptance tests: one RequestId is sent at most once, whatever arrives and in what order."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
import pytest

from channel.runtime import get_runtime, reset_runtime
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
