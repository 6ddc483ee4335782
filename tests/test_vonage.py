"""Acceptance tests of POST /api/outbound with Vonage's Messages API.

A fake Vonage on 127.0.0.1 checks the RS256 application JWT of every request against
the test application's public key; ``vonage-jwt`` (the official signer) is the oracle
of the token's shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest
import vonage_jwt
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.config import Settings
from tests.conftest import Call, Configure
from tests.data import (
    RECIPIENT,
    SENDER,
    TEXT,
    UK_RECIPIENT,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
    payload,
)
from tests.fake_vonage import PRIVATE_KEY_PEM, PUBLIC_KEY, FakeVonage, error
from tests.test_twilio import assert_ok, assert_problem, not_sent, sent

RID = payload()["RequestId"]
CALLBACK = "https://sms.contoso.example/api/delivery-report/vonage"


@pytest.fixture(scope="module")
def vonage_server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vonage(configure: Configure, vonage_server: HTTPServer) -> Iterator[FakeVonage]:
    """The fake Vonage and the app configured to send through it."""
    fake = FakeVonage(vonage_server)
    configure(
        CHANNEL_PROVIDER="vonage",
        VONAGE_APPLICATION_ID=VONAGE_APPLICATION_ID,
        VONAGE_PRIVATE_KEY=PRIVATE_KEY_PEM,
        VONAGE_SIGNATURE_SECRET=VONAGE_SIGNATURE_SECRET,
        VONAGE_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    vonage_server.clear()


# --- the request Vonage gets ------------------------------------------------------------


def test_request_is_what_vonage_expects(call: Call, vonage: FakeVonage) -> None:
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    (post,) = vonage.posts
    assert post.json == {
        "message_type": "text",
        "channel": "sms",
        "to": RECIPIENT[1:],
        "from": SENDER,
        "text": TEXT,
        "client_ref": RID,
        "webhook_url": CALLBACK,
    }
    assert post.headers["Content-Type"] == "application/json"
    assert post.claims["application_id"] == VONAGE_APPLICATION_ID


def test_application_jwt_has_the_claims_and_header_of_the_official_signer(
    call: Call, vonage: FakeVonage
) -> None:
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    ours = vonage.posts[0].headers["Authorization"].removeprefix("Bearer ")
    sdk = vonage_jwt.JwtClient(VONAGE_APPLICATION_ID, PRIVATE_KEY_PEM)
    theirs = sdk.generate_application_jwt().decode()
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(theirs)
    ours_claims = jwt.decode(ours, PUBLIC_KEY, algorithms=["RS256"])
    theirs_claims = jwt.decode(theirs, PUBLIC_KEY, algorithms=["RS256"])
    assert set(ours_claims) == set(theirs_claims)
    assert ours_claims["exp"] - ours_claims["iat"] == theirs_claims["exp"] - theirs_claims["iat"]


def test_private_key_with_escaped_newlines_is_read(
    call: Call, vonage: FakeVonage, configure: Configure
) -> None:
    """App settings are one line: the PEM may come with literal ``\\n``."""
    configure(VONAGE_PRIVATE_KEY=PRIVATE_KEY_PEM.replace("\n", "\\n"))
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))


def test_alphanumeric_sender_and_digits_only_recipient(call: Call, vonage: FakeVonage) -> None:
    assert_ok(
        call("outbound", payload(From="Contoso", To=UK_RECIPIENT)), sent(vonage.message_uuid(1))
    )
    (post,) = vonage.posts
    assert post.json["from"] == "Contoso"
    assert post.json["to"] == UK_RECIPIENT


def test_no_webhook_url_without_public_url(
    call: Call, vonage: FakeVonage, configure: Configure
) -> None:
    configure(CHANNEL_PUBLIC_URL="")
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    assert "webhook_url" not in vonage.posts[0].json


# --- answers ----------------------------------------------------------------------------

PERMANENT = {
    "number-barred": (1050, 403),
    "invalid-message": (1040, 422),
    "illegal-sender": (1120, 422),
    "other-4xx": (1020, 422),
}


@pytest.mark.parametrize(("code", "status"), PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_refusal_is_not_sent_and_replays(
    call: Call, vonage: FakeVonage, code: int, status: int
) -> None:
    vonage.answer(status, error(code, "Rejected", status))
    assert_ok(call("outbound", payload()), not_sent())
    assert_ok(call("outbound", payload()), not_sent())
    assert len(vonage.posts) == 1


@pytest.mark.parametrize("status", [429, 422], ids=["http-429", "code-1000"])
def test_throttling_is_retried_and_then_sent(call: Call, vonage: FakeVonage, status: int) -> None:
    vonage.answer(status, error(1000, "Throttled", status), {"Retry-After": "0"})
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    assert len(vonage.posts) == 2
    assert len(vonage.messages) == 1


def test_an_answer_nested_too_deeply_is_read_as_no_body(call: Call, vonage: FakeVonage) -> None:
    # Deeper than the JSON parser goes: read as no body (here a 429: retried), never a 500.
    vonage.script.append(
        lambda post: Response(b"[" * 60_000, status=429, content_type="application/json")
    )
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    assert len(vonage.posts) == 2


def test_persistent_throttling_beyond_the_budget_is_503_and_unsent(
    call: Call, vonage: FakeVonage
) -> None:
    vonage.answer(429, error(1000, "Throttled", 429), {"Retry-After": "60"})
    response = call("outbound", payload())
    assert_problem(response, 503, "provider-unavailable")
    assert int(response.headers["Retry-After"]) == 60
    assert len(vonage.posts) == 1
    # Provably unsent: the RequestId is free for the plugin's retry.
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(401, error(1010, "Unauthorized", 401), id="401"),
        pytest.param(403, error(1060, "Account barred", 403), id="403-barred"),
        pytest.param(402, error(1070, "Partner quota exceeded", 402), id="no-credit"),
    ],
)
def test_refused_account_is_503_never_not_sent(
    call: Call, vonage: FakeVonage, status: int, body: dict[str, str]
) -> None:
    vonage.answer(status, body)
    assert_problem(call("outbound", payload()), 503, "service-unavailable")
    assert_ok(call("outbound", payload()), sent(vonage.message_uuid(1)))
    assert len(vonage.posts) == 2


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_ambiguous_and_never_reposted(
    call: Call, vonage: FakeVonage, status: int
) -> None:
    vonage.answer(status, error(1030, "Internal error", status))
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(vonage.posts) == 1


# Read timeout, refused connection and one send per RequestId: test_provider_guarantees.py


# --- settings -----------------------------------------------------------------------------

BAD_SETTINGS = {
    "missing": ({}, ["VONAGE_APPLICATION_ID", "VONAGE_PRIVATE_KEY", "VONAGE_SIGNATURE_SECRET"]),
    "malformed": (
        {
            "VONAGE_APPLICATION_ID": "my-app",
            "VONAGE_PRIVATE_KEY": "not-a-key-but-a-secret-value",
            "VONAGE_SIGNATURE_SECRET": VONAGE_SIGNATURE_SECRET,
        },
        ["VONAGE_APPLICATION_ID", "VONAGE_PRIVATE_KEY"],
    ),
}


@pytest.mark.parametrize(("values", "named"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_settings_problems_name_the_setting_never_its_value(
    values: dict[str, str], named: list[str]
) -> None:
    settings = Settings.from_env({"CHANNEL_PROVIDER": "vonage"} | values)
    assert [p.split(" ", 1)[0] for p in settings.problems] == named
    for value in values.values():
        assert all(value not in problem for problem in settings.problems)
    assert PRIVATE_KEY_PEM.splitlines()[1] not in repr(
        Settings.from_env({"VONAGE_PRIVATE_KEY": PRIVATE_KEY_PEM})
    )


def test_missing_settings_are_503_and_send_nothing(
    call: Call, vonage: FakeVonage, monkeypatch: pytest.MonkeyPatch, configure: Configure
) -> None:
    monkeypatch.delenv("VONAGE_PRIVATE_KEY")
    configure()
    body = assert_problem(call("outbound", payload()), 503, "not-configured")
    assert any("VONAGE_PRIVATE_KEY" in problem for problem in body["problems"])
    assert vonage.posts == []
