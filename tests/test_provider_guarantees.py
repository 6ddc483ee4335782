"""The outbound guarantees every REST provider keeps, run against each provider's fake.

One send per RequestId, an unknown outcome never reposted, a refused connection provably
unsent: each test here runs once per provider whose fake supports it, through a small
adapter (its settings, its base-URL setting and the MessageId of its n-th send). What a
provider does differently (Telnyx repeating within a call under an Idempotency-Key,
Sinch looking for the earlier batch before a new attempt) stays in that provider's file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.conftest import Call, Configure, answer_json
from tests.data import (
    SINCH_API_TOKEN,
    SINCH_SERVICE_PLAN_ID,
    SINCH_WEBHOOK_SECRET,
    TELNYX_API_KEY,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
    payload,
)
from tests.fake_plivo import PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN, FakePlivo
from tests.fake_rest import ScriptedFake
from tests.fake_sinch import FakeSinch
from tests.fake_telnyx import PUBLIC_KEY as TELNYX_PUBLIC_KEY
from tests.fake_telnyx import FakeTelnyx
from tests.fake_vonage import PRIVATE_KEY_PEM, FakeVonage
from tests.test_twilio import assert_ok, assert_problem, closed_port, sent


@dataclass(frozen=True)
class Provider:
    """A provider's fake and how the app is set up to send through it."""

    fake: ScriptedFake[Any]
    settings: dict[str, str]
    base_url_setting: str
    message_id: Callable[[int], str]
    """The MessageId the fake gives its n-th message."""


def vonage(server: HTTPServer) -> Provider:
    """Vonage's Messages API, signed with the test application's key."""
    fake = FakeVonage(server)
    settings = {
        "CHANNEL_PROVIDER": "vonage",
        "VONAGE_APPLICATION_ID": VONAGE_APPLICATION_ID,
        "VONAGE_PRIVATE_KEY": PRIVATE_KEY_PEM,
        "VONAGE_SIGNATURE_SECRET": VONAGE_SIGNATURE_SECRET,
    }
    return Provider(fake, settings, "VONAGE_BASE_URL", fake.message_uuid)


def sinch(server: HTTPServer) -> Provider:
    """Sinch's SMS REST API with a service plan's token."""
    fake = FakeSinch(server)
    settings = {
        "CHANNEL_PROVIDER": "sinch",
        "SINCH_SERVICE_PLAN_ID": SINCH_SERVICE_PLAN_ID,
        "SINCH_API_TOKEN": SINCH_API_TOKEN,
        "SINCH_WEBHOOK_SECRET": SINCH_WEBHOOK_SECRET,
    }
    return Provider(fake, settings, "SINCH_BASE_URL", fake.batch_id)


def telnyx(server: HTTPServer) -> Provider:
    """Telnyx Messaging v2 with an API key."""
    fake = FakeTelnyx(server)
    settings = {
        "CHANNEL_PROVIDER": "telnyx",
        "TELNYX_API_KEY": TELNYX_API_KEY,
        "TELNYX_PUBLIC_KEY": TELNYX_PUBLIC_KEY,
    }
    return Provider(fake, settings, "TELNYX_BASE_URL", fake.message_id)


def plivo(server: HTTPServer) -> Provider:
    """Plivo's Message API with Basic credentials."""
    fake = FakePlivo(server)
    settings = {
        "CHANNEL_PROVIDER": "plivo",
        "PLIVO_AUTH_ID": PLIVO_AUTH_ID,
        "PLIVO_AUTH_TOKEN": PLIVO_AUTH_TOKEN,
    }
    return Provider(fake, settings, "PLIVO_BASE_URL", fake.message_uuid)


PROVIDERS: dict[str, Callable[[HTTPServer], Provider]] = {
    "vonage": vonage,
    "sinch": sinch,
    "telnyx": telnyx,
    "plivo": plivo,
}

NEVER_REPEATING = ["vonage", "sinch", "plivo"]
"""Providers that dedupe nothing, so an unknown outcome is never reposted within a call."""


@pytest.fixture(scope="module")
def server() -> Iterator[HTTPServer]:
    """A threaded local server: a slow answer does not hold back the next request."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=PROVIDERS)
def provider(
    request: pytest.FixtureRequest, configure: Configure, server: HTTPServer
) -> Iterator[Provider]:
    """The provider's fake and the app configured to send through it."""
    provider = PROVIDERS[request.param](server)
    configure(
        **provider.settings,
        **{provider.base_url_setting: provider.fake.base_url},
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    yield provider
    provider.fake.release.set()
    assert list(provider.fake.rejected) == []
    server.clear()


@pytest.mark.parametrize("provider", NEVER_REPEATING, indirect=True)
def test_read_timeout_is_ambiguous_and_never_reposted(
    call: Call, provider: Provider, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")  # room to connect on a busy machine
    provider.fake.slow(10.0)
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert_problem(call("outbound", payload()), 503, "send-ambiguous")
    assert len(provider.fake.posts) == 1


def test_refused_connection_is_503_then_sendable(
    call: Call, provider: Provider, configure: Configure
) -> None:
    closed = f"http://127.0.0.1:{closed_port()}"
    configure(CHANNEL_TIME_BUDGET_SECONDS="2", **{provider.base_url_setting: closed})
    assert_problem(call("outbound", payload()), 503, "provider-unavailable")
    configure(**{provider.base_url_setting: provider.fake.base_url})
    assert_ok(call("outbound", payload()), sent(provider.message_id(1)))
    assert len(provider.fake.posts) == 1


# --- one send per RequestId ---------------------------------------------------------------


def test_same_request_id_is_answered_from_the_ledger(call: Call, provider: Provider) -> None:
    first = call("outbound", payload())
    again = call("outbound", payload())
    assert answer_json(first) == answer_json(again) == sent(provider.message_id(1))
    assert len(provider.fake.posts) == 1
    assert_problem(call("outbound", payload(Message={"text": "other"})), 422, "request-conflict")
    assert len(provider.fake.posts) == 1


def test_twenty_concurrent_calls_with_one_request_id_send_once(
    call: Call, provider: Provider
) -> None:
    provider.fake.slow(0.5)
    start = threading.Barrier(20)

    def one() -> int:
        start.wait()
        status: int = call("outbound", payload()).status_code
        return status

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: one(), range(20)))
    assert len(provider.fake.posts) == 1
    assert set(statuses) <= {200, 409}
    assert statuses.count(200) >= 1
    assert_ok(call("outbound", payload()), sent(provider.message_id(1)))
