"""Acceptance tests of POST /api/outbound with Azure Communication Services.

A fake ACS on 127.0.0.1 checks the HMAC signature (or the bearer token) of every
request and dedupes repeats of a repeatability pair as ACS does; the official
``azure-communication-sms`` package is the oracle of the signature.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import requests
from azure.communication.sms import SmsClient
from azure.communication.sms._shared import policy as sdk_policy
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from pytest_httpserver import HTTPServer

from channel.budget import Budget
from channel.config import Settings
from channel.errors import SendAmbiguous
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.messages import Claim, MessageLedger
from channel.providers import acs as acs_provider
from channel.providers.base import (
    Accepted,
    OutboundSms,
    OutcomeUnknown,
    SafeToRepeat,
    Unsendable,
)
from channel.runtime import get_runtime, reset_runtime
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    ACS_ACCESS_KEY,
    DEFINITION_ID,
    INVALID_RECIPIENT,
    OTHER_RECIPIENT,
    RECIPIENT,
    SENDER_E164,
    TEXT,
    UNICODE_TEXT,
    payload,
)
from tests.fakes import FakeAcs, FakeIdentity

RID = payload()["RequestId"]
KEY = base64.b64decode(ACS_ACCESS_KEY)
SAMPLES = Path(__file__).parent / "samples" / "acs"


def sent(message_id: str, request_id: str = RID) -> dict[str, Any]:
    return {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": message_id,
        "RequestId": request_id,
        "Status": "Sent",
    }


def not_sent(request_id: str = RID) -> dict[str, Any]:
    return sent("", request_id) | {"MessageId": None, "Status": "NotSent"}


def assert_ok(response: func.HttpResponse, expected: dict[str, Any]) -> None:
    assert response.status_code == 200, response.get_body()
    assert answer_json(response) == expected


def assert_problem(response: func.HttpResponse, status: int, slug: str) -> None:
    assert response.status_code == status, response.get_body()
    assert response.mimetype == "application/problem+json"
    assert answer_json(response)["type"] == f"urn:d365-sms-channel:problem:{slug}"
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1


@pytest.fixture(scope="module")
def acs_server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def acs(configure: Configure, acs_server: HTTPServer) -> Iterator[FakeAcs]:
    """The fake ACS (HMAC) and the app configured to send through it."""
    fake = FakeAcs(acs_server, key=KEY)
    configure(CHANNEL_PROVIDER="acs", ACS_ENDPOINT=fake.endpoint, ACS_ACCESS_KEY=ACS_ACCESS_KEY)
    yield fake
    fake.release.set()
    assert fake.rejected == []
    acs_server.clear()


def first_attempt_at(request_id: str = RID) -> float:
    """The ledger's first_attempt_at of a request: what its repeatabilityFirstSent renders."""
    record = get_runtime().ledger.get(request_id)
    assert record is not None
    assert record.first_attempt_at is not None
    return record.first_attempt_at


# --- the request ACS gets ----------------------------------------------------------------


def test_request_is_what_acs_expects(call: Call, acs: FakeAcs) -> None:
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    (post,) = acs.posts
    assert post.api_version == "2026-01-23"
    assert post.headers["Content-Type"] == "application/json"
    assert post.json == {
        "from": SENDER_E164,
        "smsRecipients": [
            {
                "to": RECIPIENT,
                "repeatabilityRequestId": str(uuid.uuid5(acs_namespace(), RID)),
                "repeatabilityFirstSent": formatdate(first_attempt_at(), usegmt=True),
            }
        ],
        "message": TEXT,
        "smsSendOptions": {"enableDeliveryReport": True, "tag": RID},
    }
    assert acs.messages == [
        {"to": RECIPIENT, "from": SENDER_E164, "message": TEXT, "id": acs.message_id(1)}
    ]
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.first_attempt_at == record.created_at  # a new request


def acs_namespace() -> uuid.UUID:
    return uuid.UUID("7e65c13f-975c-4865-8225-e913449bd418")


def test_repeatability_request_id_is_pinned() -> None:
    """The namespace must never change: attempts before and after an upgrade must match."""
    assert acs_provider.repeatability_request_id(RID) == "81edeb4c-fa2f-5ec0-a6f2-19654a1e7227"
    assert acs_provider.repeatability_request_id(RID) == str(uuid.uuid5(acs_namespace(), RID))
    assert acs_provider.repeatability_request_id("other") != acs_provider.repeatability_request_id(
        RID
    )


def test_text_outside_ascii_is_sent_as_utf8_and_signed_over_those_bytes(
    call: Call, acs: FakeAcs
) -> None:
    assert_ok(call("outbound", payload(Message={"text": UNICODE_TEXT})), sent(acs.message_id(1)))
    (post,) = acs.posts
    assert UNICODE_TEXT.encode("utf-8") in post.body  # raw UTF-8, not \\u escapes
    assert post.json["message"] == UNICODE_TEXT


# --- HMAC: the SDK is the oracle -------------------------------------------------------

BODIES = [
    b"",
    b"{}",
    json.dumps({"from": SENDER_E164, "message": TEXT}).encode(),
    json.dumps({"message": UNICODE_TEXT}, ensure_ascii=False).encode("utf-8"),
    ("x" * 70_000).encode(),
]
DATES = [
    "Tue, 26 Mar 2019 16:06:51 GMT",
    "Mon, 01 Apr 2019 06:22:03 GMT",
    "Sun, 05 Jan 2025 00:00:00 GMT",
    formatdate(time.time(), usegmt=True),
]
ENDPOINTS = [
    "https://contoso-sms.communication.azure.com",
    "http://127.0.0.1:8443",
    "https://contoso-sms.communication.azure.com:8443",
]


def sdk_headers(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, path_and_query: str, date: str, body: bytes
) -> dict[str, str]:
    """The headers azure-communication-sms's HMACCredentialsPolicy puts on the request."""
    monkeypatch.setattr(sdk_policy, "get_current_utc_time", lambda: date)
    request = HttpRequest("POST", endpoint + path_and_query, data=body.decode("utf-8"))
    policy = sdk_policy.HMACCredentialsPolicy(endpoint, ACS_ACCESS_KEY)
    policy.on_request(PipelineRequest(request, PipelineContext(None)))  # type: ignore[no-untyped-call]
    return {
        name: request.headers[name]
        for name in ("x-ms-date", "x-ms-content-sha256", "Authorization")
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("date", DATES)
@pytest.mark.parametrize("body", BODIES, ids=["empty", "braces", "ascii", "unicode", "70k"])
def test_hmac_headers_match_the_sdk(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, date: str, body: bytes
) -> None:
    ours = acs_provider.hmac_headers(
        key=KEY,
        method="POST",
        path_and_query="/sms?api-version=2026-01-23",
        host=endpoint.split("://", 1)[1],
        date=date,
        body=body,
    )
    assert ours == sdk_headers(monkeypatch, endpoint, "/sms?api-version=2026-01-23", date, body)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_adapter_signs_its_own_request_as_the_sdk_would(
    monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    date = "Wed, 12 Jun 2024 08:09:10 GMT"
    monkeypatch.setattr(acs_provider, "http_date", lambda _: date)
    provider = acs_provider.AcsProvider(endpoint=endpoint, session=None, access_key=KEY)  # type: ignore[arg-type]
    sms = OutboundSms(RECIPIENT, SENDER_E164, UNICODE_TEXT, RID, None, first_attempt_at=0.0)
    body = provider.body(sms)
    headers = provider.headers(body)
    assert provider.url == f"{endpoint}/sms?api-version=2026-01-23"
    expected = sdk_headers(monkeypatch, endpoint, "/sms?api-version=2026-01-23", date, body)
    assert headers == expected | {"Content-Type": "application/json"}


def test_requests_of_the_sdk_pass_the_fakes_check(acs: FakeAcs) -> None:
    """The fake's verification agrees with the SDK: what it accepts, ACS would accept."""
    client = SmsClient(acs.endpoint, AzureKeyCredential(ACS_ACCESS_KEY))
    for text in (TEXT, UNICODE_TEXT):
        # (the SDK's send is typed oddly through its tracing decorator)
        (result,) = client.send(  # type: ignore[misc]
            from_=SENDER_E164, to=RECIPIENT, message=text, enable_delivery_report=True, tag=RID
        )
        assert result.successful
    assert len(acs.posts) == 2
    assert acs.rejected == []


def test_a_wrong_key_is_refused_by_the_fake_and_answers_503(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    configure(ACS_ACCESS_KEY=base64.b64encode(b"not-the-key").decode())
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert acs.rejected == ["the HMAC signature does not match"]
    acs.rejected.clear()
    assert acs.messages == []
    # A configuration problem leaves the RequestId free: with the right key it sends.
    configure(ACS_ACCESS_KEY=ACS_ACCESS_KEY)
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))


def test_an_access_key_that_is_not_base64_is_a_clear_503(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    configure(ACS_ACCESS_KEY="endpoint=https://x.communication.azure.com/;accesskey=abc")
    response = call("outbound", payload())
    assert_problem(response, 503, "not-configured")
    assert "ACS_ACCESS_KEY is not base64" in answer_json(response)["detail"]
    assert acs.posts == []


# --- Entra ID ------------------------------------------------------------------------


@pytest.fixture
def acs_identity(
    configure: Configure, acs_server: HTTPServer, identity: FakeIdentity
) -> Iterator[FakeAcs]:
    """The fake ACS taking bearer tokens of the fake identity endpoint; no access key."""
    fake = FakeAcs(acs_server, key=None, identity=identity)
    configure(CHANNEL_PROVIDER="acs", ACS_ENDPOINT=fake.endpoint)
    yield fake
    fake.release.set()
    assert fake.rejected == []
    acs_server.clear()


def test_managed_identity_one_token_for_many_sends(
    call: Call, acs_identity: FakeAcs, identity: FakeIdentity
) -> None:
    start = threading.Barrier(8)

    def first(n: int) -> func.HttpResponse:
        start.wait(5)
        return call("outbound", payload(RequestId=f"mi-{n}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        burst = list(pool.map(first, range(8)))
    later = [call("outbound", payload(RequestId=f"mi-later-{n}")) for n in range(4)]
    assert [r.status_code for r in burst + later] == [200] * 12
    assert identity.tokens == 1
    (token_request,) = identity.requests
    assert token_request.args["resource"] == "https://communication.azure.com/"
    assert {post.headers["Authorization"] for post in acs_identity.posts} == {"Bearer token-1"}
    assert all("x-ms-date" not in post.headers for post in acs_identity.posts)
    assert len(acs_identity.messages) == 12


def test_managed_identity_that_cannot_get_a_token_is_503_and_sends_nothing(
    call: Call, acs_identity: FakeAcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")  # the endpoint answers 400
    reset_runtime()
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert acs_identity.posts == []


# --- answers ---------------------------------------------------------------------------


def test_bad_number_is_not_sent_and_replays(call: Call, acs: FakeAcs) -> None:
    acs.bad_numbers.add(OTHER_RECIPIENT)
    first = call("outbound", payload(To=OTHER_RECIPIENT))
    assert_ok(first, not_sent())
    assert call("outbound", payload(To=OTHER_RECIPIENT)).get_body() == first.get_body()
    assert len(acs.posts) == 1
    assert acs.messages == []


def send_202_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((SAMPLES / "sms-send-202.json").read_text())["value"]
    return items


def test_per_recipient_results_of_the_spec_example(call: Call, acs: FakeAcs) -> None:
    """The items of ACS's own example reply, each as the answer for our one recipient."""
    accepted, bad_number, unavailable, rejected_repeat = send_202_items()

    acs.answer(202, {"value": [accepted]})
    assert_ok(call("outbound", payload(RequestId="a")), sent(accepted["messageId"], "a"))

    acs.answer(202, {"value": [bad_number]})
    assert_ok(call("outbound", payload(RequestId="b")), not_sent("b"))

    acs.answer(202, {"value": [unavailable]})  # retried at once: ACS dedupes the repeat
    assert_ok(call("outbound", payload(RequestId="c")), sent(acs.message_id(1), "c"))

    acs.answer(202, {"value": [rejected_repeat]})  # ACS would not execute it: ambiguous
    assert_problem(call("outbound", payload(RequestId="d")), 503, "send-ambiguous")
    assert len(acs.posts) == 5


@pytest.mark.parametrize("level", ["request", "recipient"])
def test_throttling_is_retried_honouring_retry_after(call: Call, acs: FakeAcs, level: str) -> None:
    if level == "request":
        acs.answer(429, {"error": {"code": "TooManyRequests"}}, headers={"Retry-After": "1"})
    else:
        item = {"to": RECIPIENT, "httpStatusCode": 429, "successful": False}
        acs.answer(202, {"value": [item]}, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert time.monotonic() - started >= 0.95
    assert len(acs.posts) == 2
    assert len(acs.pairs()) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_503_and_leave_the_request_free(
    call: Call, acs: FakeAcs, status: int
) -> None:
    acs.answer(status, {"error": {"code": "Denied", "message": "Denied by the resource"}})
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert len(acs.posts) == 2


def test_request_level_400_is_not_sent(call: Call, acs: FakeAcs) -> None:
    acs.answer(400, {"error": {"code": "BadRequest", "message": "Invalid From phone number"}})
    assert_ok(call("outbound", payload()), not_sent())
    assert len(acs.posts) == 1


# --- repeats: the same repeatability pair on every attempt ------------------------------


def test_retries_after_503_carry_the_same_pair(call: Call, acs: FakeAcs) -> None:
    acs.answer(503, {"error": {"code": "ServiceUnavailable"}})
    acs.answer(500, {"error": {"code": "InternalServerError"}})
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert len(acs.posts) == 3
    assert acs.pairs() == {(acs_provider.repeatability_request_id(RID), first_sent())}
    assert len(acs.messages) == 1


def first_sent(request_id: str = RID) -> str:
    return formatdate(first_attempt_at(request_id), usegmt=True)


def test_read_timeout_is_repeated_and_acs_answers_the_first_attempts_result(
    call: Call, acs: FakeAcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acs_provider, "READ_TIMEOUT", 0.5)
    acs.slow(3.0)  # the first POST is executed, its answer is lost
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert len(acs.posts) == 2  # the lost answer was repeated once, not waited out
    assert len(acs.pairs()) == 1
    assert len(acs.messages) == 1


def test_a_new_attempt_in_another_process_after_an_ambiguous_outcome_is_deduped(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    acs.slow(5.0)  # executed, but no answer within the whole budget
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(acs.messages) == 1
    # Another process, once the grace period is over: a new attempt, the same pair.
    configure(CHANNEL_TIME_BUDGET_SECONDS="20", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert len(acs.pairs()) == 1
    assert len(acs.messages) == 1
    assert len(acs.posts) >= 2


def test_with_acs_a_new_attempt_comes_within_the_repeatability_window() -> None:
    """ACS dedupes a pair for 5 minutes: the grace before a new attempt is 60 s, not 600 s."""
    assert Settings.from_env({"CHANNEL_PROVIDER": "acs"}).ambiguous_grace_seconds == 60
    assert Settings.from_env({"CHANNEL_PROVIDER": "twilio"}).ambiguous_grace_seconds == 600
    explicit = {"CHANNEL_PROVIDER": "acs", "CHANNEL_AMBIGUOUS_GRACE_SECONDS": "30"}
    assert Settings.from_env(explicit).ambiguous_grace_seconds == 30


def test_repeats_end_ambiguous_when_the_budget_runs_out(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    for _ in range(10):
        acs.answer(503, {"error": {"code": "ServiceUnavailable"}})
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert 2 <= len(acs.posts) <= 5  # repeats stopped when the budget ran out
    assert len(acs.pairs()) == 1
    # The ledger remembers the attempt: within the grace period no POST is made.
    posts = len(acs.posts)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(acs.posts) == posts


def test_throttling_after_a_possible_send_ends_ambiguous_not_unsent(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    """A 503 may have been executed: a later 429 must not release the RequestId as unsent."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    acs.answer(503, {"error": {"code": "ServiceUnavailable"}})
    for _ in range(10):
        acs.answer(429, {"error": {"code": "TooManyRequests"}}, headers={"Retry-After": "5"})
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.state == "ambiguous"


def test_outside_the_repeatability_window_acs_refuses_and_the_outcome_stays_unknown(
    acs: FakeAcs,
) -> None:
    provider = acs_provider.AcsProvider(
        endpoint=acs.endpoint, session=get_runtime().session, access_key=KEY
    )
    long_ago = time.time() - 600
    sms = OutboundSms(RECIPIENT, SENDER_E164, TEXT, RID, None, first_attempt_at=long_ago)
    with pytest.raises(OutcomeUnknown) as caught:
        provider.send(sms, Budget(5))
    assert not isinstance(caught.value, SafeToRepeat)
    assert acs.messages == []
    fresh = OutboundSms(RECIPIENT, SENDER_E164, TEXT, RID, None)
    assert provider.send(fresh, Budget(5)) == Accepted(acs.message_id(1))


# --- exactly once under concurrency ------------------------------------------------------


def test_fifty_calls_with_one_request_id_send_once(call: Call, acs: FakeAcs) -> None:
    acs.slow(0.3)  # long enough for the concurrent calls to overlap
    start = threading.Barrier(25)

    def concurrent_call(_: int) -> func.HttpResponse:
        start.wait(timeout=10)
        return call("outbound", payload())

    with ThreadPoolExecutor(max_workers=25) as pool:
        concurrent = list(pool.map(concurrent_call, range(25)))
    later = [call("outbound", payload()) for _ in range(25)]
    assert {r.status_code for r in concurrent} <= {200, 409}
    assert [r.status_code for r in later] == [200] * 25
    answers = {r.get_body() for r in concurrent + later if r.status_code == 200}
    assert len(answers) == 1
    assert json.loads(answers.pop()) == sent(acs.message_id(1))
    assert len(acs.posts) == 1
    assert len(acs.messages) == 1


def test_concurrent_request_ids_get_distinct_pairs(call: Call, acs: FakeAcs) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda n: call("outbound", payload(RequestId=f"r-{n}")), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert len({answer_json(a)["MessageId"] for a in answers}) == 10
    assert len(acs.pairs()) == 10
    assert {pair[0] for pair in acs.pairs()} == {
        acs_provider.repeatability_request_id(f"r-{n}") for n in range(10)
    }
    assert len(acs.messages) == 10


def test_refused_connection_is_503_provider_unavailable(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    from tests.test_twilio import closed_port

    configure(CHANNEL_TIME_BUDGET_SECONDS="2", ACS_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    configure(ACS_ENDPOINT=acs.endpoint)
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))


# --- the first-sent time across calls ----------------------------------------------------


def age_request(seconds: float, request_id: str = RID) -> None:
    """Move a request's times ``seconds`` into the past (a retry that comes that late)."""
    store = get_runtime().ledger.store
    found = store.get(f"request:{request_id}")
    assert found is not None
    moved = {
        name: found.data[name] - seconds
        for name in ("created_at", "claimed_at", "attempted_at", "first_attempt_at")
        if name in found.data
    }
    store.replace(f"request:{request_id}", found.data | moved, found.etag)


def test_a_late_retry_of_a_throttled_request_starts_a_new_first_sent_time(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    """Nothing was executed: a retry after ACS's 5-minute window must still send."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    for _ in range(10):
        acs.answer(429, {"error": {"code": "TooManyRequests"}}, headers={"Retry-After": "1"})
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    throttled = acs.pairs()
    assert len(throttled) == 1
    age_request(600)
    acs.script.clear()
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.first_attempt_at is not None
    assert record.created_at is not None
    assert record.first_attempt_at > record.created_at + 590  # a new first attempt
    assert acs.posts[-1].pair == (acs_provider.repeatability_request_id(RID), first_sent())
    assert len(acs.messages) == 1


def test_a_late_new_attempt_after_an_ambiguous_one_is_refused_not_sent_twice(
    call: Call, acs: FakeAcs, configure: Configure
) -> None:
    """Past the window ACS cannot dedupe: it refuses, and the app never sends blindly."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="1", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    acs.slow(5.0)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(acs.messages) == 1
    first_post = acs.posts[0].pair
    age_request(600)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    # The new attempt repeated the first one's pair (its first-sent time as aged here) ...
    assert acs.posts[-1].pair == (first_post[0], first_sent())
    assert first_sent() == formatdate(
        parsedate_to_datetime(first_post[1]).timestamp() - 600, usegmt=True
    )
    assert len(acs.messages) == 1  # ... and ACS, outside its window, refused to run it
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.state == "ambiguous"


def test_the_ledger_keeps_the_first_attempt_time_only_while_an_attempt_may_have_sent(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    ledger = MessageLedger(
        EmbeddedStore(str(tmp_path / "ledger.sqlite3")),
        lease_seconds=30,
        ambiguous_grace_seconds=60,
        clock=lambda: now[0],
    )

    def claim(request_id: str = RID) -> float:
        claimed = ledger.begin(
            request_id,
            "content",
            channel_definition_id=DEFINITION_ID,
            sender=SENDER_E164,
            provider="acs",
        )
        assert isinstance(claimed, Claim)
        assert claimed.record.first_attempt_at is not None
        return claimed.record.first_attempt_at

    assert claim() == 1000.0
    ledger.release(RID)  # provably unsent (throttled)
    now[0] = 2000.0
    assert claim() == 2000.0  # nothing reached ACS: a new first attempt
    ledger.mark_ambiguous(RID)  # this one may have
    now[0] = 2061.0
    assert claim() == 2000.0  # the new attempt repeats it
    ledger.mark_ambiguous(RID)
    now[0] = 2200.0
    with pytest.raises(SendAmbiguous, match="attempts ended without a known outcome"):
        claim()

    now[0] = 3000.0
    assert claim("died") == 3000.0
    now[0] = 3100.0  # the process died mid-send: its lease expired, the attempt may have sent
    assert claim("died") == 3000.0
    ledger.store.close()


# --- the rest of the outbound contract, with ACS ------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"To": INVALID_RECIPIENT}, id="invalid-recipient"),
        pytest.param({"Message": {"text": " \t\n "}}, id="blank-text"),
    ],
)
def test_unsendable_message_is_not_sent_without_calling_acs(
    call: Call, acs: FakeAcs, override: dict[str, Any]
) -> None:
    assert_ok(call("outbound", payload(**override)), not_sent())
    assert acs.posts == []


def test_same_request_id_with_other_content_is_422_and_not_sent(call: Call, acs: FakeAcs) -> None:
    first = call("outbound", payload())
    assert_ok(first, sent(acs.message_id(1)))
    assert_problem(call("outbound", payload(To=OTHER_RECIPIENT)), 422, "request-conflict")
    assert call("outbound", {"payload": json.dumps(payload())}).status_code == 200
    assert len(acs.posts) == 1


# --- hostile text and odd answers ---------------------------------------------------------


def test_a_request_that_cannot_be_built_is_unsendable_not_an_unknown_outcome(acs: FakeAcs) -> None:
    provider = acs_provider.AcsProvider(
        endpoint=acs.endpoint, session=requests.Session(), access_key=KEY
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
    assert acs.posts == []


@pytest.mark.parametrize(
    "retry_after",
    ["\u00b2", "1" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"],
    ids=["sup2", "400-digits", "far-date"],
)
def test_odd_retry_after_of_a_throttled_send_stays_provably_unsent(
    call: Call, acs: FakeAcs, configure: Configure, retry_after: str
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    for _ in range(5):
        acs.answer(
            429, {"error": {"code": "TooManyRequests"}}, headers={"Retry-After": retry_after}
        )
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    throttled = len(acs.posts)
    acs.script.clear()
    assert_ok(call("outbound", payload()), sent(acs.message_id(1)))
    assert len(acs.posts) == throttled + 1
