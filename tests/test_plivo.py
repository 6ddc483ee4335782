"""Acceptance tests of POST /api/outbound with Plivo's Message API.

A fake Plivo on 127.0.0.1 checks the Basic credentials of every request and dedupes
nothing, as Plivo does; the official ``plivo`` SDK, pointed at the same fake, is the
oracle of the request's shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import plivo
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.config import Settings
from channel.runtime import get_runtime
from tests.conftest import Call, Configure
from tests.data import RECIPIENT, SENDER_E164, TEXT, UNICODE_TEXT, payload
from tests.fake_plivo import PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN, FakePlivo, error
from tests.test_twilio import assert_ok, assert_problem, not_sent, sent

RID = payload()["RequestId"]
CALLBACK = "https://sms.contoso.example/api/delivery-report/plivo"


@pytest.fixture(scope="module")
def plivo_server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake(configure: Configure, plivo_server: HTTPServer) -> Iterator[FakePlivo]:
    """The fake Plivo and the app configured to send through it."""
    fake = FakePlivo(plivo_server)
    configure(
        CHANNEL_PROVIDER="plivo",
        PLIVO_AUTH_ID=PLIVO_AUTH_ID,
        PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN,
        PLIVO_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    yield fake
    fake.release.set()
    plivo_server.clear()


# --- the request Plivo gets -------------------------------------------------------------


def test_request_is_what_plivo_expects(call: Call, fake: FakePlivo) -> None:
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    (post,) = fake.posts  # the fake records only POSTs with our Basic credentials
    assert post.json == {
        "src": SENDER_E164,
        "dst": RECIPIENT,
        "text": TEXT,
        "url": f"{CALLBACK}?rid={RID}",
        "method": "POST",
    }
    assert post.headers["Content-Type"] == "application/json"
    assert fake.rejected == []


def test_request_has_the_shape_the_official_sdk_sends(
    call: Call, fake: FakePlivo, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    ours = fake.posts[0]
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{fake.base_url}/v1/Account")
    sdk = plivo.RestClient(PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN)
    answer = sdk.messages.create(
        src=SENDER_E164, dst=RECIPIENT, text=TEXT, url=ours.json["url"], method="POST"
    )
    assert answer.message_uuid == [fake.message_uuid(2)]  # the SDK reads the fake's answer
    theirs = fake.posts[1]
    assert {k: v for k, v in theirs.json.items() if k in ours.json} == ours.json
    assert theirs.headers["Authorization"] == ours.headers["Authorization"]


def test_unicode_text_is_sent_as_is(call: Call, fake: FakePlivo) -> None:
    assert_ok(call("outbound", payload(Message={"text": UNICODE_TEXT})), sent(fake.message_uuid(1)))
    assert fake.posts[0].json["text"] == UNICODE_TEXT


def test_text_with_a_lone_surrogate_is_400_and_leaves_the_request_id_usable(
    call: Call, fake: FakePlivo
) -> None:
    raw = json.dumps(payload(Message={"text": "hi \ud800"})).encode()  # "hi \\ud800"
    body = assert_problem(call("outbound", raw), 400, "bad-request")
    assert body["field"] == "Message.text"
    assert fake.posts == []
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))  # nothing wedged


def test_alphanumeric_sender_is_sent_as_is(call: Call, fake: FakePlivo) -> None:
    assert_ok(call("outbound", payload(From="Contoso")), sent(fake.message_uuid(1)))
    assert fake.posts[0].json["src"] == "Contoso"


def test_no_status_url_without_public_url(
    call: Call, fake: FakePlivo, configure: Configure
) -> None:
    configure(CHANNEL_PUBLIC_URL="")
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    assert "url" not in fake.posts[0].json
    assert "method" not in fake.posts[0].json


def test_status_url_carries_a_request_id_of_any_characters(call: Call, fake: FakePlivo) -> None:
    rid = "order 42&x=1/é"
    assert_ok(call("outbound", payload(RequestId=rid)), sent(fake.message_uuid(1), rid))
    url = fake.posts[0].json["url"]
    assert url.startswith(CALLBACK + "?")
    assert parse_qs(urlsplit(url).query) == {"rid": [rid]}


def test_sent_message_uuid_is_recorded_for_its_request(call: Call, fake: FakePlivo) -> None:
    """A V2-signed status names only the MessageUUID: the send records whose it is."""
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    assert get_runtime().ledger.request_of_message("plivo", fake.message_uuid(1)) == RID


# --- answers ----------------------------------------------------------------------------

PERMANENT = {
    "invalid-dst-400": (400, error("invalid dst number")),
    "422": (422, error("message text too long")),
    "409": (409, error("conflict")),
}


@pytest.mark.parametrize(("status", "body"), PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_refusal_is_not_sent_and_replays(
    call: Call, fake: FakePlivo, status: int, body: dict[str, Any]
) -> None:
    fake.answer(status, body)
    assert_ok(call("outbound", payload()), not_sent())
    assert_ok(call("outbound", payload()), not_sent())
    assert len(fake.posts) == 1
    assert fake.messages == []


def test_throttling_is_retried_and_then_sent(call: Call, fake: FakePlivo) -> None:
    fake.answer(429, error("Too many requests, rate limited"), {"Retry-After": "0"})
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    assert len(fake.posts) == 2
    assert len(fake.messages) == 1


def test_persistent_throttling_beyond_the_budget_is_503_and_unsent(
    call: Call, fake: FakePlivo
) -> None:
    fake.answer(429, error("Too many requests, rate limited"), {"Retry-After": "60"})
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    assert int(response.headers["Retry-After"]) == 60  # Plivo's, honoured
    assert len(fake.posts) == 1
    # Provably unsent: the RequestId is free for the plugin's retry.
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))


REFUSED_ACCOUNT = {
    "401": (401, error("Authentication failed")),
    "403-forbidden": (403, error("Forbidden")),
    "403-geo-permission": (403, error("destination country not enabled for the account")),
    "402-no-credit": (402, error("insufficient credit")),
    "404-wrong-account": (404, error("not found")),
}


@pytest.mark.parametrize(("status", "body"), REFUSED_ACCOUNT.values(), ids=REFUSED_ACCOUNT.keys())
def test_refused_account_is_503_logged_at_error_never_not_sent(
    call: Call,
    fake: FakePlivo,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: dict[str, Any],
) -> None:
    fake.answer(status, body)
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert any(
        r.levelno == logging.ERROR and "refused our configuration" in r.getMessage()
        for r in caplog.records
    )
    # Not a NotSent answer: once the account is fixed, the same RequestId is sent.
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    assert len(fake.posts) == 2


def test_wrong_auth_token_is_503_never_not_sent(
    call: Call, fake: FakePlivo, configure: Configure
) -> None:
    configure(PLIVO_AUTH_TOKEN="not-the-account-token")
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert len(fake.rejected) == 1
    configure(PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN)
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_is_ambiguous_and_never_reposted(
    call: Call, fake: FakePlivo, status: int
) -> None:
    fake.answer(status, error("internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(fake.posts) == 1


def test_accepted_without_a_message_uuid_is_ambiguous(call: Call, fake: FakePlivo) -> None:
    fake.answer(202, {"api_id": "x", "message": "message(s) queued"})
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(fake.posts) == 1


def test_a_reply_that_is_not_json_is_read_as_no_body(call: Call, fake: FakePlivo) -> None:
    fake.script.append(lambda post: Response(b"<html>busy</html>", status=429))
    assert_ok(call("outbound", payload()), sent(fake.message_uuid(1)))
    assert len(fake.posts) == 2


def test_after_an_unknown_outcome_and_the_grace_at_most_one_new_attempt(
    call: Call, fake: FakePlivo, configure: Configure
) -> None:
    """As with Twilio and Vonage: Plivo dedupes nothing, so a repeat is never immediate.

    Once the grace is over with no status to settle the first attempt, one new attempt
    is made (the operator's choice of CHANNEL_AMBIGUOUS_GRACE_SECONDS); never a third.
    """
    fake.answer(500, error("internal error"))
    fake.answer(500, error("internal error"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(fake.posts) == 2


# Read timeout, refused connection and one send per RequestId: test_provider_guarantees.py


# --- settings -----------------------------------------------------------------------------

BAD_SETTINGS = {
    "missing": ({}, ["PLIVO_AUTH_ID", "PLIVO_AUTH_TOKEN"]),
    "malformed-auth-id": (
        {"PLIVO_AUTH_ID": "secret-looking-id-0001", "PLIVO_AUTH_TOKEN": PLIVO_AUTH_TOKEN},
        ["PLIVO_AUTH_ID"],
    ),
    "malformed-base-url": (
        {
            "PLIVO_AUTH_ID": PLIVO_AUTH_ID,
            "PLIVO_AUTH_TOKEN": PLIVO_AUTH_TOKEN,
            "PLIVO_BASE_URL": "api.plivo.com/secret-path",
        },
        ["PLIVO_BASE_URL"],
    ),
}


@pytest.mark.parametrize(("values", "named"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_settings_problems_name_the_setting_never_its_value(
    values: dict[str, str], named: list[str]
) -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "plivo"} | values)
    assert [p.split(" ", 1)[0] for p in settings.problems] == named
    for value in values.values():
        assert all(value not in problem for problem in settings.problems)
    assert PLIVO_AUTH_TOKEN not in repr(Settings.from_env({"PLIVO_AUTH_TOKEN": PLIVO_AUTH_TOKEN}))


def test_subaccount_auth_id_is_accepted() -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_PROVIDER": "plivo",
            "PLIVO_AUTH_ID": "SA" + PLIVO_AUTH_ID[2:],
            "PLIVO_AUTH_TOKEN": PLIVO_AUTH_TOKEN,
        }
    )
    assert settings.problems == ()


def test_missing_settings_are_503_and_send_nothing(
    call: Call, fake: FakePlivo, monkeypatch: pytest.MonkeyPatch, configure: Configure
) -> None:
    monkeypatch.delenv("PLIVO_AUTH_TOKEN")
    configure()
    body = assert_problem(call("outbound", payload()), 503, "not-configured")
    assert any("PLIVO_AUTH_TOKEN" in problem for problem in body["problems"])
    assert fake.posts == []
    assert fake.rejected == []
