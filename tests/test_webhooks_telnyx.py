"""Telnyx's Ed25519-signed webhooks: the adapter on recorded samples, then end to end.

Samples under ``tests/samples/telnyx`` follow Telnyx's delivery-update and inbound
examples. The test owns the Ed25519 private key; the app gets only the public key, and
``telnyx.lib.webhook_verification.verify_webhook_signature`` (the official check) must
agree with the app on every signature.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_httpserver import HTTPServer
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature
from werkzeug import Response

from channel.budget import Budget
from channel.errors import Forbidden, Unauthorized
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.messages import MessageLedger
from channel.ledger.retention import sweep
from channel.providers.base import DeliveryState, ReceivedSms, StatusReport, Webhook
from channel.providers.telnyx import TelnyxWebhooks
from channel.runtime import get_runtime, reset_runtime
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json, send
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    TELNYX_API_KEY,
    payload,
)
from tests.fake_telnyx import PUBLIC_KEY, FakeTelnyx, signed
from tests.fakes import ORGANIZATION_ID, FakeDataverse, FakeIdentity
from tests.test_webhooks_acs import ledger_rows

SAMPLES = Path(__file__).parent / "samples" / "telnyx"
RID = payload()["RequestId"]
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
ROUTES = {"delivery_report": "delivery-report/telnyx", "inbound": "inbound/telnyx"}
SAMPLE_ID = "40385f64-5717-4562-b3fc-000000000001"


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def event(message_id: str, status: str, kind: str = "message.finalized") -> bytes:
    """The finalized sample for another message, recipient status or event type."""
    body: dict[str, Any] = json.loads(raw("message-finalized-delivered.json"))
    body["data"]["event_type"] = kind
    body["data"]["payload"]["id"] = message_id
    body["data"]["payload"]["to"][0]["status"] = status
    return json.dumps(body).encode()


def hook_of(body: bytes, headers: dict[str, str] | None = None) -> Webhook:
    return Webhook("POST", "https://sms.contoso.example/api/x", headers or {}, body)


# --- the adapter on recorded samples --------------------------------------------------------

ADAPTER = TelnyxWebhooks(public_key=PUBLIC_KEY)


@pytest.mark.parametrize(
    ("sample", "state", "detail"),
    [
        (
            "message-finalized-delivered.json",
            DeliveryState.DELIVERED,
            "message.finalized delivered",
        ),
        ("message-sent.json", DeliveryState.PENDING, "message.sent sent"),
    ],
)
def test_status_samples_are_read(sample: str, state: DeliveryState, detail: str) -> None:
    assert ADAPTER.status_reports(hook_of(raw(sample))) == [
        StatusReport(SAMPLE_ID, state, None, detail, correlated_by_id=True)
    ]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("delivered", DeliveryState.DELIVERED),
        ("sending_failed", DeliveryState.NOT_DELIVERED),
        ("delivery_failed", DeliveryState.NOT_DELIVERED),
        ("expired", DeliveryState.NOT_DELIVERED),
        ("delivery_unconfirmed", DeliveryState.PENDING),
        ("queued", DeliveryState.PENDING),
        ("something_new", DeliveryState.PENDING),
    ],
)
def test_finalized_status_mapping(status: str, state: DeliveryState) -> None:
    (report,) = ADAPTER.status_reports(hook_of(event("m", status)))
    assert report.state is state


def test_only_finalized_decides() -> None:
    (report,) = ADAPTER.status_reports(hook_of(event("m", "delivered", "message.sent")))
    assert report.state is DeliveryState.PENDING


def test_inbound_sample_is_read() -> None:
    assert ADAPTER.received_messages(hook_of(raw("message-received.json"))) == [
        ReceivedSms("84cca175-9755-4859-b67f-4730d7f58aa3", RECIPIENT, SENDER_E164, REPLY_TEXT)
    ]


def test_events_at_the_wrong_route_are_acknowledged_and_ignored() -> None:
    assert ADAPTER.status_reports(hook_of(raw("message-received.json"))) == []
    assert ADAPTER.received_messages(hook_of(raw("message-sent.json"))) == []


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@pytest.mark.parametrize("sample", ["message-finalized-delivered.json", "message-received.json"])
def test_genuine_signature_is_accepted_by_the_adapter_and_the_sdk(sample: str) -> None:
    body = raw(sample)
    headers = signed(body)
    ADAPTER.verify(hook_of(body, lower(headers)))
    verify_webhook_signature(body, headers, PUBLIC_KEY)  # raises if the SDK disagrees


def forgeries(body: bytes) -> dict[str, dict[str, str]]:
    """Signed headers that must fail, each a different way."""
    good = signed(body)
    return {
        "wrong-key": signed(body, key=Ed25519PrivateKey.generate()),
        "tampered-body": signed(body + b" "),
        "stale": signed(body, timestamp=int(time.time()) - 301),
        "future": signed(body, timestamp=int(time.time()) + 301),
        "other-timestamp": good | {"telnyx-timestamp": str(int(time.time()) - 1)},
        "not-base64": good | {"telnyx-signature-ed25519": "%%%"},
        "short-signature": good | {"telnyx-signature-ed25519": "c2hvcnQ="},
        "timestamp-not-a-number": good | {"telnyx-timestamp": "soon"},
    }


BODY = raw("message-finalized-delivered.json")


@pytest.mark.parametrize("forgery", forgeries(BODY))
def test_forgeries_are_refused_by_the_adapter_and_the_sdk(forgery: str) -> None:
    headers = forgeries(BODY)[forgery]
    with pytest.raises(Forbidden):
        ADAPTER.verify(hook_of(BODY, lower(headers)))
    with pytest.raises(WebhookVerificationError):
        verify_webhook_signature(BODY, headers, PUBLIC_KEY)


@pytest.mark.parametrize("missing", ["telnyx-signature-ed25519", "telnyx-timestamp"])
def test_missing_header_is_unauthorized(missing: str) -> None:
    headers = {k: v for k, v in signed(BODY).items() if k != missing}
    with pytest.raises(Unauthorized):
        ADAPTER.verify(hook_of(BODY, headers))


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def telnyx_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def telnyx(configure: Configure, telnyx_server: HTTPServer) -> Iterator[FakeTelnyx]:
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


@pytest.fixture
def wired(telnyx: FakeTelnyx, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    yield dataverse
    assert dataverse.rejected == []


def hook(
    call: Call, name: str, body: bytes, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    """Telnyx's call of route ``name``, signed unless ``headers`` are given."""
    return call(
        name,
        body,
        path=ROUTES[name],
        route_params={"provider": "telnyx"},
        headers=signed(body) if headers is None else headers,
    )


def notification(message_id: str, state: str, rid: str = RID) -> tuple[str, dict[str, str]]:
    return (
        NOTIFY,
        {
            "ChannelDefinitionId": DEFINITION_ID,
            "RequestId": rid,
            "MessageId": message_id,
            "From": SENDER,
            "OrganizationId": ORGANIZATION_ID,
            "Status": state,
        },
    )


def test_finalized_delivered_is_one_exact_notification(
    call: Call, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    message_id = send(call)
    assert (
        hook(call, "delivery_report", event(message_id, "sent", "message.sent")).status_code == 200
    )
    assert wired.calls == []
    response = hook(call, "delivery_report", event(message_id, "delivered"))
    assert response.status_code == 200, response.get_body()
    assert wired.calls == [notification(message_id, "Delivered")]


def test_delivery_unconfirmed_makes_no_call(call: Call, wired: FakeDataverse) -> None:
    message_id = send(call)
    assert (
        hook(call, "delivery_report", event(message_id, "delivery_unconfirmed")).status_code == 200
    )
    assert wired.calls == []


def test_duplicates_in_any_order_notify_once_with_the_first_final_status(
    call: Call, wired: FakeDataverse
) -> None:
    ids = {send(call, f"rid-{n}"): f"rid-{n}" for n in range(4)}
    callbacks = [
        (message_id, status)
        for message_id in ids
        for status in ("sent", "delivered", "delivery_failed", "delivered", "expired")
    ]
    random.Random(11).shuffle(callbacks)  # noqa: S311 - an order, not a secret
    first: dict[str, str] = {}
    for message_id, status in callbacks:
        kind = "message.sent" if status == "sent" else "message.finalized"
        assert hook(call, "delivery_report", event(message_id, status, kind)).status_code == 200
        if status != "sent":
            first.setdefault(
                ids[message_id], "Delivered" if status == "delivered" else "NotDelivered"
            )
    assert sorted((p["RequestId"], p["Status"]) for _, p in wired.calls) == sorted(first.items())


def test_status_before_the_send_is_recorded_is_503_and_then_applied_once(
    call: Call, telnyx: FakeTelnyx, wired: FakeDataverse
) -> None:
    telnyx.slow(10.0)  # Telnyx takes the message; its answer is late
    answers: list[func.HttpResponse] = []
    outbound = threading.Thread(target=lambda: answers.append(call("outbound", payload())))
    outbound.start()
    try:
        for _ in range(100):
            if telnyx.messages:
                break
            threading.Event().wait(0.05)
        assert telnyx.messages
        early = hook(call, "delivery_report", event(telnyx.message_id(1), "delivered"))
        assert early.status_code == 503  # Telnyx delivers it again
        assert int(early.headers["Retry-After"]) >= 1
        assert wired.calls == []
    finally:
        telnyx.release.set()
        outbound.join(15)
    (answer,) = answers
    assert answer_json(answer)["MessageId"] == telnyx.message_id(1)
    retry = hook(call, "delivery_report", event(telnyx.message_id(1), "delivered"))
    assert retry.status_code == 200
    assert wired.calls == [notification(telnyx.message_id(1), "Delivered")]


def test_status_of_a_message_never_recorded_is_503_but_intermediate_ones_are_acknowledged(
    call: Call, wired: FakeDataverse
) -> None:
    before = ledger_rows()
    assert hook(call, "delivery_report", event("never-sent", "delivered")).status_code == 503
    assert (
        hook(call, "delivery_report", event("never-sent", "sent", "message.sent")).status_code
        == 200
    )
    assert wired.calls == []
    assert ledger_rows() == before


def test_inbound_reply_is_one_exact_call_whatever_telnyx_retries(
    call: Call, wired: FakeDataverse
) -> None:
    send(call)  # learns our number's Dataverse form and channel
    for _ in range(3):
        assert hook(call, "inbound", raw("message-received.json")).status_code == 200
    assert wired.calls == [
        (
            INBOUND,
            {
                "ChannelDefinitionId": DEFINITION_ID,
                "To": SENDER,
                "From": RECIPIENT,
                "OrganizationId": ORGANIZATION_ID,
                "Message": {"text": REPLY_TEXT},
            },
        )
    ]


FORGED = {**forgeries(BODY), "unsigned": {}}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("forgery", FORGED)
def test_forged_calls_change_nothing(
    call: Call,
    wired: FakeDataverse,
    identity: FakeIdentity,
    configure: Configure,
    *,
    route: str,
    forgery: str,
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    message_id = send(call)
    body = (
        event(message_id, "delivered")
        if route == "delivery_report"
        else raw("message-received.json")
    )
    headers = {**forgeries(body), "unsigned": {}}[forgery]
    before = ledger_rows()
    response = hook(call, route, body, headers)
    assert response.status_code == (401 if forgery == "unsigned" else 403), response.get_body()
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


def test_without_the_public_key_webhooks_are_a_plain_503(
    call: Call, telnyx: FakeTelnyx, wired: FakeDataverse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TELNYX_PUBLIC_KEY")
    monkeypatch.setenv("CHANNEL_PROVIDER", "loopback")
    reset_runtime()
    for name in ROUTES:
        response = hook(call, name, raw("message-received.json"))
        assert response.status_code == 503
        assert "problems" not in answer_json(response)
        assert "TELNYX" not in answer_json(response)["detail"]
    assert wired.calls == []


def test_dataverse_down_keeps_the_status_and_a_redelivery_notifies_once(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    message_id = send(call)
    wired.script.extend(Response(status=503) for _ in range(20))
    response = hook(call, "delivery_report", event(message_id, "delivered"))
    assert 500 <= response.status_code < 600
    kept = get_runtime().outbox.get(f"notification:{RID}")
    assert kept is not None
    assert kept.state == "pending"
    wired.script.clear()
    assert hook(call, "delivery_report", event(message_id, "delivered")).status_code == 200
    assert wired.calls == [notification(message_id, "Delivered")]


def test_malformed_signed_body_is_400_and_changes_nothing(call: Call, wired: FakeDataverse) -> None:
    send(call)
    before = ledger_rows()
    for body in (
        b"{not json",
        b"[]",
        b"[" * 60_000,  # signed, yet deeper than the JSON parser goes
        b'{"data": {"event_type": "message.finalized"}}',
    ):
        response = hook(call, "delivery_report", body)
        assert response.status_code == 400, response.get_body()
    assert wired.calls == []
    assert ledger_rows() == before


# --- the message-id record on both ledgers --------------------------------------------------


def test_correlation_by_message_id_on_the_table_ledger(
    call: Call,
    wired: FakeDataverse,
    configure: Configure,
    azurite: Azurite,
    table_name: str,
) -> None:
    configure(
        CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table_name
    )
    message_id = send(call)
    assert hook(call, "delivery_report", event(message_id, "delivered")).status_code == 200
    assert hook(call, "delivery_report", event(message_id, "expired")).status_code == 200
    assert wired.calls == [notification(message_id, "Delivered")]


def test_message_records_expire_with_retention(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = EmbeddedStore(str(tmp_path / "ledger.sqlite3"))
    ledger = MessageLedger(
        store, lease_seconds=30, ambiguous_grace_seconds=60, clock=lambda: now[0]
    )
    ledger.remember_message("telnyx", "old", RID)
    now[0] += 40 * 86400
    ledger.remember_message("telnyx", "young", "rid-2")
    swept = sweep(store, now=now[0], retention_days=30, limit=100, budget=Budget(10))
    assert swept.removed == 1
    assert ledger.request_of_message("telnyx", "old") is None
    assert ledger.request_of_message("telnyx", "young") == "rid-2"
    store.close()
