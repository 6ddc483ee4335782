"""Acceptance tests of POST /api/outbound with Telnyx Messaging v2.

The fake Telnyx on 127.0.0.1 dedupes by Idempotency-Key as Telnyx documents it, so a
test can tell a repeat (same key, same bytes: nothing sent twice) from a second message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.config import Settings
from channel.providers import telnyx as telnyx_provider
from channel.runtime import get_runtime
from tests.conftest import Call, Configure
from tests.data import RECIPIENT, SENDER_E164, TELNYX_API_KEY, TEXT, UNICODE_TEXT, payload
from tests.fake_telnyx import PUBLIC_KEY, FakeTelnyx, failure
from tests.test_twilio import assert_ok, assert_problem, not_sent, sent

RID = payload()["RequestId"]
CALLBACK = "https://sms.contoso.example/api/delivery-report/telnyx"
PROFILE = "4000eba1-a0c0-4563-9925-b25e842a7cb6"


@pytest.fixture(scope="module")
def telnyx_server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def telnyx(configure: Configure, telnyx_server: HTTPServer) -> Iterator[FakeTelnyx]:
    """The fake Telnyx and the app configured to send through it."""
    fake = FakeTelnyx(telnyx_server)
    configure(
        CHANNEL_PROVIDER="telnyx",
        TELNYX_API_KEY=TELNYX_API_KEY,
        TELNYX_PUBLIC_KEY=PUBLIC_KEY,
        TELNYX_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    telnyx_server.clear()


# --- the request Telnyx gets --------------------------------------------------------------


def test_request_is_what_telnyx_expects(call: Call, telnyx: FakeTelnyx) -> None:
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    (post,) = telnyx.posts
    assert post.json == {
        "from": SENDER_E164,
        "to": RECIPIENT,
        "text": TEXT,
        "webhook_url": CALLBACK,
    }
    assert post.headers["Content-Type"] == "application/json"
    assert post.key == telnyx_provider.idempotency_key(RID)


def test_messaging_profile_is_sent_when_set(
    call: Call, telnyx: FakeTelnyx, configure: Configure
) -> None:
    configure(TELNYX_MESSAGING_PROFILE_ID=PROFILE)
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert telnyx.posts[0].json["messaging_profile_id"] == PROFILE


def test_text_outside_ascii_is_sent_as_utf8(call: Call, telnyx: FakeTelnyx) -> None:
    assert_ok(call("outbound", payload(Message={"text": UNICODE_TEXT})), sent(telnyx.message_id(1)))
    assert UNICODE_TEXT.encode("utf-8") in telnyx.posts[0].body


def test_idempotency_key_is_pinned_and_fits_telnyxs_pattern() -> None:
    """The namespace must never change: attempts before and after an upgrade must match."""
    assert telnyx_provider.idempotency_key(RID) == "6a493f61-0f23-5684-88cf-4f5d5b453e0e"
    assert telnyx_provider.idempotency_key("other") != telnyx_provider.idempotency_key(RID)
    assert re.fullmatch(r"[A-Za-z0-9_:-]{1,255}", telnyx_provider.idempotency_key("ä/& ?"))


def test_message_id_is_recorded_for_its_reports(call: Call, telnyx: FakeTelnyx) -> None:
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    ledger = get_runtime().ledger
    assert ledger.request_of_message("telnyx", telnyx.message_id(1)) == RID
    assert ledger.request_of_message("telnyx", "another") is None


# --- answers ------------------------------------------------------------------------------

PERMANENT = {
    "stop": (40300, 403),
    "invalid-number": (10002, 400),
    "stop-as-422": (40300, 422),
    "other-400": (10004, 400),
}


@pytest.mark.parametrize(("code", "status"), PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_refusal_is_not_sent_and_replays(
    call: Call, telnyx: FakeTelnyx, code: int, status: int
) -> None:
    telnyx.answer(status, failure(code, "Refused"))
    assert_ok(call("outbound", payload()), not_sent())
    assert_ok(call("outbound", payload()), not_sent())
    assert len(telnyx.posts) == 1


def test_throttling_is_retried_and_then_sent(call: Call, telnyx: FakeTelnyx) -> None:
    telnyx.answer(429, failure(10011, "Too many requests"), {"Retry-After": "0"})
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert len(telnyx.posts) == 2


def test_an_answer_nested_too_deeply_is_read_as_no_body(call: Call, telnyx: FakeTelnyx) -> None:
    # Deeper than the JSON parser goes: read as no body (here a 429: retried), never a 500.
    telnyx.script.append(
        lambda post: Response(b"[" * 60_000, status=429, content_type="application/json")
    )
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert len(telnyx.posts) == 2


def test_throttling_beyond_the_budget_is_503_and_unsent(call: Call, telnyx: FakeTelnyx) -> None:
    telnyx.answer(429, failure(10011, "Too many requests"), {"Retry-After": "60"})
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))


@pytest.mark.parametrize(
    ("status", "code"), [(401, 10009), (403, 10010), (404, 10005)], ids=["401", "403", "404"]
)
def test_refused_credentials_are_503_never_not_sent(
    call: Call, telnyx: FakeTelnyx, status: int, code: int
) -> None:
    telnyx.answer(status, failure(code, "Refused"))
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))


@pytest.mark.parametrize("status", [500, 502, 503, 409])
def test_server_errors_are_repeated_with_the_same_key_and_bytes(
    call: Call, telnyx: FakeTelnyx, status: int
) -> None:
    telnyx.answer(status, failure(10007, "Unexpected error"), {"Retry-After": "0"})
    telnyx.answer(status, failure(10007, "Unexpected error"), {"Retry-After": "0"})
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert len(telnyx.posts) == 3
    assert len({(post.key, post.body) for post in telnyx.posts}) == 1
    assert len(telnyx.messages) == 1


def test_read_timeout_is_repeated_and_telnyx_answers_the_first_attempts_result(
    call: Call, telnyx: FakeTelnyx, configure: Configure
) -> None:
    """The first POST is executed but answered after our read timeout (10 s)."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="20")
    telnyx.slow(12.0)
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert len(telnyx.posts) == 2
    assert len(telnyx.messages) == 1


def test_repeats_end_ambiguous_when_the_budget_runs_out_and_a_later_call_settles(
    call: Call, telnyx: FakeTelnyx, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    telnyx.slow(3.0)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    # Grace over: one new attempt, same key and bytes; Telnyx answers the first result.
    configure(CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    assert_ok(call("outbound", payload()), sent(telnyx.message_id(1)))
    assert len(telnyx.messages) == 1
    assert {post.key for post in telnyx.posts} == {telnyx_provider.idempotency_key(RID)}


def test_key_reused_with_another_body_is_ambiguous_never_not_sent(
    call: Call, telnyx: FakeTelnyx
) -> None:
    telnyx.answer(422, failure(10015, "Idempotency key reused"))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")


# Refused connection and one send per RequestId: test_provider_guarantees.py


# --- settings -----------------------------------------------------------------------------


def test_settings_problems_name_the_setting_never_its_value() -> None:
    missing = Settings.from_env({"CHANNEL_PROVIDER": "telnyx"})
    assert [p.split(" ", 1)[0] for p in missing.problems] == ["TELNYX_API_KEY", "TELNYX_PUBLIC_KEY"]
    bad = {
        "CHANNEL_PROVIDER": "telnyx",
        "TELNYX_API_KEY": TELNYX_API_KEY,
        "TELNYX_PUBLIC_KEY": "bm90LWEta2V5",
        "TELNYX_MESSAGING_PROFILE_ID": "profile-secret-ish",
    }
    settings = Settings.from_env(bad)
    assert [p.split(" ", 1)[0] for p in settings.problems] == [
        "TELNYX_PUBLIC_KEY",
        "TELNYX_MESSAGING_PROFILE_ID",
    ]
    assert all(value not in str(settings.problems) for value in bad.values() if value != "telnyx")
    assert TELNYX_API_KEY not in repr(settings)


def test_telnyx_waits_a_short_grace_its_key_is_deduped_for_a_day() -> None:
    assert Settings.from_env({"CHANNEL_PROVIDER": "telnyx"}).ambiguous_grace_seconds == 60
