"""Acceptance tests of POST /api/outbound with Sinch's SMS REST API.

A fake Sinch on 127.0.0.1 (tests/fake_sinch.py) checks the service plan's token, reads
every send with the official SDK's request model and creates a batch per POST, as Sinch
does: it dedupes nothing, so every test counts the batches created.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import urlencode

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.config import Settings
from channel.runtime import get_runtime
from tests.conftest import Call, Configure
from tests.data import (
    OTHER_RECIPIENT,
    RECIPIENT,
    SENDER,
    SENDER_E164,
    SINCH_API_TOKEN,
    SINCH_SERVICE_PLAN_ID,
    SINCH_WEBHOOK_SECRET,
    TEXT,
    UK_RECIPIENT,
    UK_RECIPIENT_E164,
    UNICODE_TEXT,
    WEBHOOK_SECRET,
    payload,
)
from tests.fake_sinch import FakeSinch
from tests.test_twilio import assert_ok, assert_problem, not_sent, sent

RID = payload()["RequestId"]
CALLBACK = "https://sms.contoso.example/api/delivery-report/sinch"


@pytest.fixture(scope="module")
def sinch_server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sinch(configure: Configure, sinch_server: HTTPServer) -> Iterator[FakeSinch]:
    """The fake Sinch and the app configured to send through it."""
    fake = FakeSinch(sinch_server)
    configure(
        CHANNEL_PROVIDER="sinch",
        SINCH_SERVICE_PLAN_ID=SINCH_SERVICE_PLAN_ID,
        SINCH_API_TOKEN=SINCH_API_TOKEN,
        SINCH_WEBHOOK_SECRET=SINCH_WEBHOOK_SECRET,
        SINCH_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    sinch_server.clear()


def error(code: str, text: str) -> dict[str, str]:
    """Sinch's error body."""
    return {"code": code, "text": text}


# --- the request Sinch gets ---------------------------------------------------------------


def test_request_is_what_sinch_expects(call: Call, sinch: FakeSinch) -> None:
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    (post,) = sinch.posts
    assert post.json == {
        "from": SENDER_E164,
        "to": [RECIPIENT],
        "body": TEXT,
        "delivery_report": "per_recipient",
        "callback_url": CALLBACK,
        "client_reference": RID,
    }
    assert post.headers["Authorization"] == f"Bearer {SINCH_API_TOKEN}"
    assert post.headers["Content-Type"] == "application/json"
    assert sinch.lookups == []  # a first attempt asks nothing first


def test_without_signing_the_callback_url_carries_the_shared_secret(
    call: Call, sinch: FakeSinch, configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET)
    assert_ok(call("outbound", payload(RequestId="signed")), sent(sinch.batch_id(1), "signed"))
    monkeypatch.delenv("SINCH_WEBHOOK_SECRET")
    configure()
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(2)))
    signed, by_query = (post.json["callback_url"] for post in sinch.posts)
    assert signed == CALLBACK  # signed callbacks: no secret in the URL
    assert by_query == f"{CALLBACK}?{urlencode({'secret': WEBHOOK_SECRET})}"


def test_alphanumeric_sender_and_digits_only_recipient(call: Call, sinch: FakeSinch) -> None:
    assert_ok(call("outbound", payload(From="Contoso", To=UK_RECIPIENT)), sent(sinch.batch_id(1)))
    (post,) = sinch.posts
    assert post.json["from"] == "Contoso"
    assert post.json["to"] == [UK_RECIPIENT_E164]


def test_unicode_text_is_sent_as_utf8(call: Call, sinch: FakeSinch) -> None:
    assert_ok(call("outbound", payload(Message={"text": UNICODE_TEXT})), sent(sinch.batch_id(1)))
    (post,) = sinch.posts
    assert UNICODE_TEXT.encode("utf-8") in post.body
    assert post.json["body"] == UNICODE_TEXT


def test_no_callback_url_without_public_url(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    configure(CHANNEL_PUBLIC_URL="")
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert "callback_url" not in sinch.posts[0].json


def test_a_200_answer_with_an_id_is_sent_too(call: Call, sinch: FakeSinch) -> None:
    sinch.answer(200, {"id": "01FC66621XXXXX119Z8PMV1QPQ", "type": "mt_text"})
    assert_ok(call("outbound", payload()), sent("01FC66621XXXXX119Z8PMV1QPQ"))


# --- answers ------------------------------------------------------------------------------

PERMANENT = {
    "malformed-number": (400, "syntax_invalid_parameter_format"),
    "constraint": (400, "syntax_constraint_violation"),
    "other-4xx": (409, "conflict"),
}


@pytest.mark.parametrize(("status", "code"), PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_refusal_is_not_sent_and_replays(
    call: Call, sinch: FakeSinch, status: int, code: str
) -> None:
    sinch.answer(status, error(code, f"Invalid parameter: to {RECIPIENT[1:]}"))
    assert_ok(call("outbound", payload()), not_sent())
    assert_ok(call("outbound", payload()), not_sent())
    assert len(sinch.posts) == 1


def test_throttling_is_retried_and_then_sent(call: Call, sinch: FakeSinch) -> None:
    sinch.answer(429, error("too_many_requests", "Slow down"), {"Retry-After": "0"})
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 2
    assert len(sinch.batches) == 1


def test_persistent_throttling_beyond_the_budget_is_503_and_unsent(
    call: Call, sinch: FakeSinch
) -> None:
    sinch.answer(429, error("too_many_requests", "Slow down"), {"Retry-After": "60"})
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    assert int(response.headers["Retry-After"]) == 60
    assert len(sinch.posts) == 1
    # Provably unsent: the RequestId is free for the plugin's retry, with no lookup.
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert sinch.lookups == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(401, error("unauthorized", "Unauthorized"), id="401"),
        pytest.param(403, error("blocked_account", "Account blocked"), id="403-blocked"),
        pytest.param(403, error("illegal_number_type", "Illegal number type"), id="403-type"),
        pytest.param(404, error("not_found", "Service plan not found"), id="404-plan"),
    ],
)
def test_refused_credentials_are_503_logged_at_error_never_not_sent(
    call: Call,
    sinch: FakeSinch,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, str],
) -> None:
    sinch.answer(status, body)
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert any(
        record.levelno == logging.ERROR and "SINCH_API_TOKEN" in record.getMessage()
        for record in caplog.records
    )
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 2


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_ambiguous_and_never_reposted(
    call: Call, sinch: FakeSinch, status: int
) -> None:
    sinch.answer(status, error("internal_error", "Internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(sinch.posts) == 1
    assert sinch.lookups == []


def test_success_without_a_batch_id_is_ambiguous(call: Call, sinch: FakeSinch) -> None:
    sinch.answer(201, {"type": "mt_text"})
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(sinch.posts) == 1


# Read timeout, refused connection and one send per RequestId: test_provider_guarantees.py


# --- a new attempt after an unknown outcome looks for the earlier batch first -----------


def ambiguous_then_due(call: Call, sinch: FakeSinch, configure: Configure) -> None:
    """One attempt whose answer is lost although Sinch created the batch; grace over."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="1", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    sinch.slow(5.0)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(sinch.batches) == 1
    sinch.release.set()
    configure(CHANNEL_TIME_BUDGET_SECONDS="5")


def test_a_repeat_after_a_lost_answer_finds_the_batch_and_sends_nothing(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    ambiguous_then_due(call, sinch, configure)
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 1
    assert len(sinch.batches) == 1
    (lookup,) = sinch.lookups
    assert lookup["client_reference"] == RID
    record = get_runtime().ledger.get(RID)
    assert record is not None
    # Searched from well before the first attempt (Sinch's default is only 24 hours).
    since = datetime.fromisoformat(lookup["start_date"].replace("Z", "+00:00")).timestamp()
    assert record.first_attempt_at is not None
    assert since <= record.first_attempt_at - 3600
    # And answered from the ledger from then on.
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.lookups) == 1


def test_a_repeat_after_a_5xx_that_created_nothing_posts_once(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    sinch.answer(500, error("internal_error", "Internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert sinch.batches == []
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.lookups) == 1
    assert len(sinch.posts) == 2
    assert len(sinch.batches) == 1


def test_the_last_attempt_is_not_posted_with_too_little_time_left(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    """A POST the deadline would cut short could only end in a second unknown outcome."""
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    sinch.answer(500, error("internal_error", "Internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")  # 1.5 s for the provider after the reserve
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    assert len(sinch.posts) == 1
    assert sinch.lookups
    configure(CHANNEL_TIME_BUDGET_SECONDS="20")
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 2


def test_a_repeat_waits_for_the_grace_period(call: Call, sinch: FakeSinch) -> None:
    """Within the grace period a status callback may still settle it: nothing is asked."""
    sinch.answer(500, error("internal_error", "Internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert sinch.lookups == []
    assert len(sinch.posts) == 1


def test_a_batch_of_another_recipient_with_our_reference_is_not_taken(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    sinch.answer(500, error("internal_error", "Internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    # Another system on the service plan used the same reference for another number.
    sinch.batches.append(
        {
            "id": "01FOREIGNBATCH000000000000",
            "type": "mt_text",
            "to": [OTHER_RECIPIENT[1:]],
            "from": SENDER,
            "body": "x",
            "client_reference": RID,
            "created_at": "2099-01-01T00:00:00.000Z",
        }
    )
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 2


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Response("oops", status=500), id="5xx"),
        pytest.param(Response("<html>", status=200, content_type="text/html"), id="not-json"),
        pytest.param(Response(json.dumps({"batches": None}), status=200), id="no-list"),
    ],
)
def test_a_failed_lookup_sends_nothing_and_a_later_call_looks_again(
    call: Call, sinch: FakeSinch, configure: Configure, failure: Response
) -> None:
    ambiguous_then_due(call, sinch, configure)
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    sinch.list_script.extend([failure] * 10)
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    assert len(sinch.posts) == 1  # the lost one only: never a blind POST
    sinch.list_script.clear()
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.posts) == 1
    assert len(sinch.batches) == 1


def test_a_throttled_lookup_honours_retry_after(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    ambiguous_then_due(call, sinch, configure)
    sinch.list_script.append(Response("{}", status=429, headers={"Retry-After": "0"}))
    assert_ok(call("outbound", payload()), sent(sinch.batch_id(1)))
    assert len(sinch.lookups) == 2
    assert len(sinch.posts) == 1


def test_a_lookup_refused_for_our_token_is_503_and_sends_nothing(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    ambiguous_then_due(call, sinch, configure)
    sinch.list_script.append(Response("{}", status=401))
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert len(sinch.posts) == 1


def test_two_unknown_outcomes_end_the_attempts(
    call: Call, sinch: FakeSinch, configure: Configure
) -> None:
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    sinch.answer(500, error("internal_error", "Internal error"))
    sinch.answer(502, error("internal_error", "Bad gateway"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    body = assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert "not submitting again" in body["detail"]
    assert len(sinch.posts) == 2
    assert len(sinch.lookups) == 1


# --- settings -----------------------------------------------------------------------------

BAD_SETTINGS = {
    "missing": ({}, ["SINCH_SERVICE_PLAN_ID", "SINCH_API_TOKEN"]),
    "malformed": (
        {
            "SINCH_SERVICE_PLAN_ID": "plan id/with spaces",
            "SINCH_API_TOKEN": "Bearer sinch-secret-token-value",
        },
        ["SINCH_SERVICE_PLAN_ID", "SINCH_API_TOKEN"],
    ),
    "base-url": (
        {
            "SINCH_SERVICE_PLAN_ID": SINCH_SERVICE_PLAN_ID,
            "SINCH_API_TOKEN": SINCH_API_TOKEN,
            "SINCH_BASE_URL": "us.sms.api.sinch.com;token=secret-in-url",
        },
        ["SINCH_BASE_URL"],
    ),
}


@pytest.mark.parametrize(("values", "named"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_settings_problems_name_the_setting_never_its_value(
    values: dict[str, str], named: list[str]
) -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "sinch"} | values)
    assert [p.split(" ", 1)[0] for p in settings.problems] == named
    for value in values.values():
        assert all(value not in problem for problem in settings.problems)
    secrets = {"SINCH_API_TOKEN": SINCH_API_TOKEN, "SINCH_WEBHOOK_SECRET": SINCH_WEBHOOK_SECRET}
    shown = repr(Settings.from_env(secrets))
    assert SINCH_API_TOKEN not in shown
    assert SINCH_WEBHOOK_SECRET not in shown


def test_without_any_webhook_secret_a_note_says_reports_are_refused() -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_PROVIDER": "sinch",
            "SINCH_SERVICE_PLAN_ID": SINCH_SERVICE_PLAN_ID,
            "SINCH_API_TOKEN": SINCH_API_TOKEN,
        }
    )
    assert settings.problems == ()
    assert any("SINCH_WEBHOOK_SECRET" in note for note in settings.notes)


def test_the_default_base_url_is_the_us_region() -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "sinch"})
    assert settings.providers["sinch"].base_url == "https://us.sms.api.sinch.com"


def test_missing_settings_are_503_and_send_nothing(
    call: Call, sinch: FakeSinch, monkeypatch: pytest.MonkeyPatch, configure: Configure
) -> None:
    monkeypatch.delenv("SINCH_API_TOKEN")
    configure()
    body = assert_problem(call("outbound", payload()), 503, "not-configured")
    assert any("SINCH_API_TOKEN" in problem for problem in body["problems"])
    assert sinch.posts == []
