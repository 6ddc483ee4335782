"""Acceptance tests of POST /api/outbound with Twilio: the request Twilio gets, the answers."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import azure.functions as func
import pytest
import requests
from pytest_httpserver import HTTPServer
from twilio.rest import Client
from werkzeug import Request

from channel.budget import Budget
from channel.contracts import OutboundPayload
from channel.errors import BadRequest
from channel.providers.base import OutboundSms, OutcomeUnknown, Unsendable
from channel.providers.twilio import TwilioProvider, callback_tag
from channel.runtime import get_runtime
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    INVALID_RECIPIENT,
    RECIPIENT,
    RECIPIENT_NATIONAL,
    RECIPIENT_NATIONAL_E164,
    SENDER,
    SENDER_E164,
    TEXT,
    TWILIO_SERVICE_SID,
    TWILIO_SID,
    TWILIO_TOKEN,
    UK_RECIPIENT,
    UK_RECIPIENT_E164,
    payload,
)
from tests.fakes import FakeTwilio, twilio_error

RID = payload()["RequestId"]


def expected_callback(rid: str = RID) -> str:
    """The StatusCallback the app gives Twilio for ``rid``: the request's fields, our tag."""
    tag = callback_tag(TWILIO_TOKEN.encode(), rid, DEFINITION_ID, SENDER)
    fields = {"rid": rid, "def": DEFINITION_ID, "from": SENDER, "tag": tag}
    return f"{CALLBACK}?{urlencode(fields)}"


CALLBACK = "https://sms.contoso.example/api/delivery-report/twilio"
MESSAGES_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
BASIC_AUTH = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
FORMATS = [pytest.param(False, id="legacy"), pytest.param(True, id="rfc9457")]


def sid(n: int) -> str:
    """The n-th message sid the fake hands out."""
    return f"SM{n:032x}"


def sent(message_id: str, request_id: str = RID) -> dict[str, Any]:
    return {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": message_id,
        "RequestId": request_id,
        "Status": "Sent",
    }


def not_sent(request_id: str = RID) -> dict[str, Any]:
    return {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": None,
        "RequestId": request_id,
        "Status": "NotSent",
    }


def assert_ok(response: func.HttpResponse, expected: dict[str, Any]) -> None:
    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "application/json"
    assert answer_json(response) == expected


def assert_problem(response: func.HttpResponse, status: int, slug: str) -> dict[str, Any]:
    """The problem JSON of an error answer, checked for the members every problem has."""
    assert response.status_code == status, response.get_body()
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = answer_json(response)
    assert body["type"] == f"urn:d365-sms-channel:problem:{slug}"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    return body


def form_of(request: Request) -> dict[str, list[str]]:
    return request.form.to_dict(flat=False)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- the request Twilio gets ---------------------------------------------------------


def test_form_auth_and_path_are_what_twilio_expects(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    rid = "req 42/ä&x=1"
    assert_ok(call("outbound", payload(RequestId=rid)), sent(sid(1), rid))
    (post,) = twilio.posts()
    assert post.path == MESSAGES_PATH
    assert post.headers["Authorization"] == BASIC_AUTH
    assert post.mimetype == "application/x-www-form-urlencoded"
    assert form_of(post) == {
        "To": [RECIPIENT],
        "From": [SENDER_E164],
        "Body": [TEXT],
        "StatusCallback": [post.form["StatusCallback"]],
    }
    # The RequestId, and the request's fields under our tag (see test_webhooks_twilio).
    assert post.form["StatusCallback"].startswith(f"{CALLBACK}?rid=req+42%2F%C3%A4%26x%3D1&def=")
    callback = urlsplit(post.form["StatusCallback"])
    query = parse_qs(callback.query)
    assert {name: values for name, values in query.items() if name != "tag"} == {
        "rid": [rid],
        "def": [DEFINITION_ID],
        "from": [SENDER],
    }
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", query["tag"][0])


def test_messaging_service_replaces_from(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(TWILIO_MESSAGING_SERVICE_SID=TWILIO_SERVICE_SID)
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    (post,) = twilio.posts()
    assert form_of(post) == {
        "To": [RECIPIENT],
        "MessagingServiceSid": [TWILIO_SERVICE_SID],
        "Body": [TEXT],
        "StatusCallback": [expected_callback()],
    }


def test_alphanumeric_sender_passes_unchanged(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    assert_ok(call("outbound", payload(From="Contoso")), sent(sid(1)))
    (post,) = twilio.posts()
    assert post.form["From"] == "Contoso"


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        pytest.param(RECIPIENT_NATIONAL, RECIPIENT_NATIONAL_E164, id="national-us"),
        pytest.param(UK_RECIPIENT, UK_RECIPIENT_E164, id="digits-only-uk"),
    ],
)
def test_recipient_is_sent_in_e164(call: Call, twilio: FakeTwilio, given: str, e164: str) -> None:
    twilio.accept()
    assert_ok(call("outbound", payload(To=given)), sent(sid(1)))
    (post,) = twilio.posts()
    assert post.form["To"] == e164


def test_no_status_callback_without_public_url(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(CHANNEL_PUBLIC_URL="")
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    (post,) = twilio.posts()
    assert form_of(post) == {"To": [RECIPIENT], "From": [SENDER_E164], "Body": [TEXT]}


@pytest.mark.parametrize("service", [False, True], ids=["from", "messaging-service"])
def test_request_matches_the_twilio_sdk(
    call: Call, twilio: FakeTwilio, configure: Configure, service: bool
) -> None:
    """twilio-python, sending the same message to the same fake, is the oracle."""
    if service:
        configure(TWILIO_MESSAGING_SERVICE_SID=TWILIO_SERVICE_SID)
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))

    client = Client(TWILIO_SID, TWILIO_TOKEN)
    client.api.base_url = twilio.base_url
    sender: dict[str, str] = (
        {"messaging_service_sid": TWILIO_SERVICE_SID} if service else {"from_": SENDER_E164}
    )
    message = client.messages.create(
        to=RECIPIENT, body=TEXT, status_callback=expected_callback(), **sender
    )
    assert message.sid == sid(2)

    ours, sdk = twilio.posts()
    assert ours.path == sdk.path
    assert form_of(ours) == form_of(sdk)
    assert ours.headers["Authorization"] == sdk.headers["Authorization"]
    assert ours.mimetype == sdk.mimetype


# --- answers -------------------------------------------------------------------------


def test_accepted_message_answers_sent_exactly(call: Call, twilio: FakeTwilio) -> None:
    twilio.accept()
    response = call("outbound", payload())
    assert response.get_body().decode() == (
        '{"ChannelDefinitionId":"' + DEFINITION_ID + '","MessageId":"' + sid(1) + '",'
        '"RequestId":"' + RID + '","Status":"Sent"}'
    )
    assert_ok(response, sent(sid(1)))


@pytest.mark.parametrize("rfc9457", FORMATS)
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, 21211),
        (400, 21610),
        (400, 21614),
        (400, 21606),
        (400, 21608),
        (400, 21612),
        (400, 21635),
        (400, 21408),
        (400, 21617),
        (403, 21612),
    ],
)
def test_permanent_rejection_answers_not_sent(
    call: Call, twilio: FakeTwilio, status: int, code: int, rfc9457: bool
) -> None:
    twilio.answer(status, twilio_error(code, status, rfc9457=rfc9457))
    twilio.accept()  # a second POST would be accepted: the count below would show it
    assert_ok(call("outbound", payload()), not_sent())
    assert len(twilio.posts()) == 1


@pytest.mark.parametrize("rfc9457", FORMATS)
def test_throttled_then_accepted_is_sent(call: Call, twilio: FakeTwilio, rfc9457: bool) -> None:
    twilio.answer(429, twilio_error(20429, 429, rfc9457=rfc9457))
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == 2


def test_retry_after_is_honoured(call: Call, twilio: FakeTwilio) -> None:
    # Without the header the first backoff is at most 0.25 s.
    twilio.answer(429, twilio_error(20429, 429), headers={"Retry-After": "1"})
    twilio.accept()
    started = time.monotonic()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert time.monotonic() - started >= 0.95
    assert len(twilio.posts()) == 2


def test_persistent_throttling_is_503_within_budget_and_retryable(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="3")
    twilio.always(429, twilio_error(20429, 429))
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    throttled = len(twilio.posts())
    assert 2 <= throttled <= 5  # bounded retries, stopped by the budget

    # The claim was released: once Twilio takes messages again, the same RequestId sends.
    twilio.server.clear_all_handlers()
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == throttled + 1


def test_server_error_is_ambiguous_503_with_one_post(call: Call, twilio: FakeTwilio) -> None:
    twilio.answer(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
    twilio.accept()
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(twilio.posts()) == 1
    # Within the grace period a retry is refused without a new submission.
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(twilio.posts()) == 1


@pytest.fixture
def stalled(twilio: FakeTwilio) -> Iterator[threading.Event]:
    """Twilio holds each POST for 3 s before accepting it; let go at the end of the test."""
    release = twilio.stall(3.0)
    yield release
    release.set()
    twilio.settle()


def test_read_timeout_is_ambiguous_and_not_resubmitted(
    call: Call, twilio: FakeTwilio, configure: Configure, stalled: threading.Event
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    stalled.set()
    twilio.settle()  # any POST sent so far is now in the log
    assert len(twilio.posts()) == 1


def test_reply_cut_off_mid_body_is_ambiguous(call: Call, twilio: FakeTwilio) -> None:
    twilio.truncate()
    twilio.accept()
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(twilio.posts()) == 1


def test_refused_connection_is_503_within_budget_then_sendable(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="3", TWILIO_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")

    # Provably unsent: no ambiguity, the same RequestId goes out once Twilio is reachable.
    configure(TWILIO_BASE_URL=twilio.base_url)
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == 1


def test_refused_connection_is_retried_within_the_call(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    """Nothing listens when the call starts; a server opens on that port 0.3 s later."""
    port = closed_port()
    configure(TWILIO_BASE_URL=f"http://127.0.0.1:{port}")
    late = HTTPServer(host="127.0.0.1", port=port)
    late_twilio = FakeTwilio(late)
    late_twilio.accept()
    timer = threading.Timer(0.3, late.start)
    started = time.monotonic()
    timer.start()
    try:
        response = call("outbound", payload())
        elapsed = time.monotonic() - started
        assert_ok(response, sent(sid(1)))
        assert elapsed >= 0.3  # it answered only once the port opened: refusals were retried
        assert len(late_twilio.posts()) == 1
        assert twilio.posts() == []
    finally:
        timer.cancel()
        timer.join()
        if late.is_running():
            late.stop()


def test_bad_credentials_are_503_not_not_sent(call: Call, twilio: FakeTwilio) -> None:
    twilio.answer(401, twilio_error(20003, 401))
    twilio.accept()
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert len(twilio.posts()) == 1
    # A configuration problem leaves the message unsent and the RequestId free.
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == 2


# --- refused before any provider call -------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"To": INVALID_RECIPIENT}, id="invalid-recipient"),
        pytest.param({"Message": {"text": ""}}, id="empty-text"),
        pytest.param({"Message": {"text": " \t\n "}}, id="blank-text"),
    ],
)
def test_unsendable_message_is_not_sent_without_calling_twilio(
    call: Call, twilio: FakeTwilio, override: dict[str, Any]
) -> None:
    twilio.accept()
    assert_ok(call("outbound", payload(**override)), not_sent())
    assert twilio.posts() == []


@pytest.mark.parametrize("message", [{}, {"subject": TEXT}], ids=["empty", "other-part"])
def test_missing_text_part_is_400_naming_it(
    call: Call, twilio: FakeTwilio, message: dict[str, str]
) -> None:
    twilio.accept()
    body = assert_problem(call("outbound", payload(Message=message)), 400, "bad-request")
    assert body["field"] == "Message.text"
    assert "Message.text" in body["detail"]
    assert twilio.posts() == []


# --- hostile text and odd answers ------------------------------------------------------


def test_text_with_a_lone_surrogate_is_400_and_leaves_the_request_id_usable(
    call: Call, twilio: FakeTwilio
) -> None:
    twilio.accept()
    raw = json.dumps(payload(Message={"text": "hi \ud800"})).encode()  # "hi \\ud800"
    body = assert_problem(call("outbound", raw), 400, "bad-request")
    assert body["field"] == "Message.text"
    assert twilio.posts() == []
    assert_ok(call("outbound", payload()), sent(sid(1)))  # nothing was claimed or wedged
    assert len(twilio.posts()) == 1


def test_a_request_that_cannot_be_built_is_unsendable_not_an_unknown_outcome(
    twilio: FakeTwilio,
) -> None:
    twilio.accept()
    provider = TwilioProvider(
        account_sid=TWILIO_SID,
        auth_token=TWILIO_TOKEN,
        session=requests.Session(),
        base_url=twilio.base_url,
    )
    sms = OutboundSms(
        to=RECIPIENT,
        sender=SENDER_E164,
        text="hi \ud800",
        correlation=RID,
        status_callback_url=None,
    )
    with pytest.raises(Unsendable) as caught:
        provider.send(sms, Budget(5))
    assert not isinstance(caught.value, OutcomeUnknown)
    assert caught.value.field == "text"
    assert twilio.posts() == []


def test_a_request_that_fails_to_build_releases_its_claim(twilio: FakeTwilio) -> None:
    """Past the contract's checks (here skipped on purpose), a build failure is a 400 and
    the RequestId stays free: never marked as possibly sent."""
    twilio.accept()
    unchecked = OutboundPayload.model_construct(**payload(Message={"text": "hi \ud800"}))
    with pytest.raises(BadRequest) as caught:
        get_runtime().outbound.send(unchecked, Budget(5))
    assert caught.value.field == "Message.text"
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.state == "retryable"
    assert twilio.posts() == []


ODD_ANSWERS = [
    pytest.param("\u00b2", 20429, id="retry-after-superscript-two"),
    pytest.param("1" * 400, 20429, id="retry-after-400-digits"),
    pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", "\u00b2", id="far-date-and-code-superscript"),
    pytest.param("-1", "1" * 400, id="negative-and-code-400-digits"),
]


@pytest.mark.parametrize(("retry_after", "code"), ODD_ANSWERS)
def test_odd_throttling_answers_stay_provably_unsent(
    call: Call, twilio: FakeTwilio, configure: Configure, retry_after: str, code: object
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    body = {"code": code, "message": "Too Many Requests", "status": 429}
    twilio.always(429, body, headers={"Retry-After": retry_after})
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    throttled = len(twilio.posts())
    assert throttled >= 1
    # Released, not ambiguous: once Twilio takes messages again, the same RequestId sends.
    twilio.server.clear_all_handlers()
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == throttled + 1


def test_an_odd_code_in_a_rejection_is_read_defensively(call: Call, twilio: FakeTwilio) -> None:
    twilio.answer(400, {"code": "\u00b2", "message": "The request was rejected", "status": 400})
    assert_ok(call("outbound", payload()), not_sent())
    assert len(twilio.posts()) == 1


def test_an_answer_nested_too_deeply_is_read_as_no_body(call: Call, twilio: FakeTwilio) -> None:
    deep = b"[" * 60_000
    twilio.server.expect_ordered_request(MESSAGES_PATH, method="POST").respond_with_data(
        deep, status=429, content_type="application/json"
    )
    twilio.accept()
    assert_ok(call("outbound", payload()), sent(sid(1)))
    assert len(twilio.posts()) == 2
