"""Vonage's signed webhooks: the adapter on recorded samples, then end to end.

Samples under ``tests/samples/vonage`` follow the Messages API status and inbound
callbacks (the field sets of Vonage's Java ``MessageStatus`` / ``InboundMessage``).
Callbacks are signed as Vonage signs them (tests/fake_vonage.py), and
``vonage_jwt.verify_signature`` (the official check) must agree with the app on each token.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import jwt
import pytest
import vonage_jwt
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.errors import Forbidden, Unauthorized
from channel.providers.base import DeliveryState, ReceivedSms, StatusReport, Webhook
from channel.providers.vonage import VonageWebhooks
from channel.runtime import get_runtime, reset_runtime
from tests.conftest import Call, Configure, answer_json, send
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
    payload,
)
from tests.fake_vonage import PRIVATE_KEY_PEM, FakeVonage, signed
from tests.fakes import ORGANIZATION_ID, FakeDataverse, FakeIdentity
from tests.test_webhooks_acs import ledger_rows

SAMPLES = Path(__file__).parent / "samples" / "vonage"
RID = payload()["RequestId"]
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
ROUTES = {"delivery_report": "delivery-report/vonage", "inbound": "inbound/vonage"}


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def status(message_id: str, state: str, rid: str = RID) -> bytes:
    """The delivered sample for another message, status or client_ref."""
    body = json.loads(raw("status-delivered.json"))
    body.update(message_uuid=message_id, status=state, client_ref=rid)
    return json.dumps(body).encode()


def hook_of(body: bytes, headers: dict[str, str] | None = None) -> Webhook:
    return Webhook("POST", "https://sms.contoso.example/api/x", headers or {}, body)


# --- the adapter on recorded samples --------------------------------------------------------

ADAPTER = VonageWebhooks(signature_secret=VONAGE_SIGNATURE_SECRET)


@pytest.mark.parametrize(
    ("sample", "state", "detail"),
    [
        ("status-delivered.json", DeliveryState.DELIVERED, "delivered"),
        ("status-rejected.json", DeliveryState.NOT_DELIVERED, "rejected 1250"),
        ("status-submitted.json", DeliveryState.PENDING, "submitted"),
    ],
)
def test_status_samples_are_read(sample: str, state: DeliveryState, detail: str) -> None:
    assert ADAPTER.status_reports(hook_of(raw(sample))) == [
        StatusReport("aaaaaaaa-bbbb-4ccc-8ddd-000000000001", state, RID, detail)
    ]


@pytest.mark.parametrize("value", ["undeliverable", "UNDELIVERABLE", "rejected"])
def test_failures_are_not_delivered(value: str) -> None:
    (report,) = ADAPTER.status_reports(hook_of(status("m", value)))
    assert report.state is DeliveryState.NOT_DELIVERED


@pytest.mark.parametrize("value", ["submitted", "read", "accepted", "something-new"])
def test_other_statuses_are_intermediate(value: str) -> None:
    (report,) = ADAPTER.status_reports(hook_of(status("m", value)))
    assert report.state is DeliveryState.PENDING


def test_inbound_sample_is_read_in_e164() -> None:
    assert ADAPTER.received_messages(hook_of(raw("inbound-sms.json"))) == [
        ReceivedSms("b6a5c0f2-9d4e-4c1a-8e3b-7f2d1c0a9e88", RECIPIENT, SENDER_E164, REPLY_TEXT)
    ]


def test_inbound_of_another_channel_is_ignored() -> None:
    body = json.loads(raw("inbound-sms.json")) | {"channel": "whatsapp"}
    assert ADAPTER.received_messages(hook_of(json.dumps(body).encode())) == []


def test_genuine_token_is_accepted_by_the_adapter_and_the_sdk() -> None:
    body = raw("status-delivered.json")
    headers = {k.lower(): v for k, v in signed(body).items()}
    ADAPTER.verify(hook_of(body, headers))
    token = headers["authorization"].removeprefix("Bearer ")
    assert vonage_jwt.verify_signature(token, VONAGE_SIGNATURE_SECRET) is True


def test_short_secret_signs_as_vonage_signs() -> None:
    """A secret shorter than 32 bytes (padded inside the adapter) verifies unchanged."""
    secret = "short-secret-16b"
    body = raw("status-delivered.json")
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        headers = signed(body, secret=secret)
    token = headers["Authorization"].removeprefix("Bearer ")
    VonageWebhooks(signature_secret=secret).verify(
        hook_of(body, {"authorization": f"Bearer {token}"})
    )
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        assert vonage_jwt.verify_signature(token, secret) is True


def forgeries(body: bytes) -> dict[str, tuple[dict[str, str], type[Exception]]]:
    """Every way a call can fail authentication, and the error each must raise."""
    other = body.replace(b"delivered", b"rejected!").replace(b"Yes please", b"No thanks")
    rsa_token = jwt.encode(
        {"iat": int(time.time()), "payload_hash": signed_hash(body)},
        PRIVATE_KEY_PEM,
        algorithm="RS256",
    )
    none_token = jwt.encode(
        {"iat": int(time.time()), "payload_hash": signed_hash(body)}, "", algorithm="none"
    )
    return {
        "missing": ({}, Unauthorized),
        "basic": ({"Authorization": "Basic YTpi"}, Unauthorized),
        "empty-bearer": ({"Authorization": "Bearer "}, Unauthorized),
        "wrong-secret": (signed(body, secret="another-secret-of-32-bytes-or-more!"), Forbidden),
        "tampered-body": (signed(other), Forbidden),
        "no-payload-hash": (signed(body, payload_hash=""), Forbidden),
        "stale": (signed(body, iat=time.time() - 2 * 86400), Forbidden),
        "future": (signed(body, iat=time.time() + 3600), Forbidden),
        "expired": (signed(body, exp=int(time.time()) - 10), Forbidden),
        "rs256": ({"Authorization": f"Bearer {rsa_token}"}, Forbidden),
        "alg-none": ({"Authorization": f"Bearer {none_token}"}, Forbidden),
        "garbage": ({"Authorization": "Bearer not.a.jwt"}, Forbidden),
    }


def signed_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


BODY = (SAMPLES / "status-delivered.json").read_bytes()
FORGERIES = forgeries(BODY)


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
def test_forgeries_are_refused_by_the_adapter(
    forgery: tuple[dict[str, str], type[Exception]],
) -> None:
    headers, error = forgery
    with pytest.raises(error):
        ADAPTER.verify(hook_of(BODY, {k.lower(): v for k, v in headers.items()}))


def test_sdk_agrees_that_a_wrong_secret_is_wrong() -> None:
    headers, _ = FORGERIES["wrong-secret"]
    token = headers["Authorization"].removeprefix("Bearer ")
    assert vonage_jwt.verify_signature(token, VONAGE_SIGNATURE_SECRET) is False


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vonage_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vonage(configure: Configure, vonage_server: HTTPServer) -> Iterator[FakeVonage]:
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


@pytest.fixture
def wired(vonage: FakeVonage, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    yield dataverse
    assert dataverse.rejected == []


def hook(
    call: Call, name: str, body: bytes, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    """Vonage's call of route ``name``, signed unless ``headers`` are given."""
    return call(
        name,
        body,
        path=ROUTES[name],
        route_params={"provider": "vonage"},
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


def test_delivered_status_is_one_exact_notification(
    call: Call, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    message_id = send(call)
    response = hook(call, "delivery_report", status(message_id, "delivered"))
    assert response.status_code == 200, response.get_body()
    assert wired.calls == [notification(message_id, "Delivered")]


def test_intermediate_status_and_unknown_client_ref_make_no_call(
    call: Call, wired: FakeDataverse
) -> None:
    message_id = send(call)
    assert hook(call, "delivery_report", status(message_id, "submitted")).status_code == 200
    assert hook(call, "delivery_report", status("other", "delivered", "nope")).status_code == 200
    assert wired.calls == []


def test_duplicates_in_any_order_notify_once_with_the_first_final_status(
    call: Call, wired: FakeDataverse
) -> None:
    ids = [send(call, f"rid-{n}") for n in range(4)]
    callbacks = [
        status(message_id, state, f"rid-{n}")
        for n, message_id in enumerate(ids)
        for state in ("submitted", "delivered", "rejected", "delivered")
    ]
    random.Random(7).shuffle(callbacks)  # noqa: S311 - an order, not a secret
    first: dict[str, str] = {}
    for body in callbacks:
        assert hook(call, "delivery_report", body).status_code == 200
        callback = json.loads(body)
        if callback["status"] != "submitted":
            first.setdefault(callback["client_ref"], callback["status"])
    expected = {"delivered": "Delivered", "rejected": "NotDelivered"}
    assert sorted(p["RequestId"] for _, p in wired.calls) == sorted(first)
    for _, sent_payload in wired.calls:
        assert sent_payload["Status"] == expected[first[sent_payload["RequestId"]]]


def test_ambiguous_send_is_settled_by_its_status(
    call: Call, vonage: FakeVonage, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    vonage.slow(5.0)
    assert call("outbound", payload()).status_code == 503
    assert (
        hook(call, "delivery_report", status(vonage.message_uuid(1), "delivered")).status_code
        == 200
    )
    retry = call("outbound", payload())
    assert answer_json(retry)["MessageId"] == vonage.message_uuid(1)
    assert len(vonage.posts) == 1
    assert wired.calls == [notification(vonage.message_uuid(1), "Delivered")]


def test_inbound_reply_is_one_exact_call_whatever_vonage_retries(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    send(call)  # learns our number's Dataverse form and channel
    for _ in range(3):
        assert hook(call, "inbound", raw("inbound-sms.json")).status_code == 200
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


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("forgery", FORGERIES)
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
        status(message_id, "delivered") if route == "delivery_report" else raw("inbound-sms.json")
    )
    headers, error = forgeries(body)[forgery]
    before = ledger_rows()
    response = hook(call, route, body, headers)
    assert response.status_code == (401 if error is Unauthorized else 403), response.get_body()
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


def test_without_the_signature_secret_webhooks_are_a_plain_503(
    call: Call, vonage: FakeVonage, wired: FakeDataverse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VONAGE_SIGNATURE_SECRET")
    monkeypatch.setenv("CHANNEL_PROVIDER", "loopback")  # webhooks of a provider not sending
    reset_runtime()
    for name in ROUTES:
        response = hook(call, name, raw("status-delivered.json"))
        assert response.status_code == 503
        assert "problems" not in answer_json(response)
        assert "VONAGE" not in answer_json(response)["detail"]
    assert wired.calls == []


def test_dataverse_down_keeps_the_status_and_a_redelivery_notifies_once(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    message_id = send(call)
    wired.script.extend(Response(status=503) for _ in range(20))
    response = hook(call, "delivery_report", status(message_id, "delivered"))
    assert 500 <= response.status_code < 600  # Vonage retries 5xx for 24 hours
    kept = get_runtime().outbox.get(f"notification:{RID}")
    assert kept is not None
    assert kept.state == "pending"
    wired.script.clear()
    assert hook(call, "delivery_report", status(message_id, "delivered")).status_code == 200
    assert wired.calls == [notification(message_id, "Delivered")]


def test_malformed_signed_body_is_400_and_changes_nothing(call: Call, wired: FakeDataverse) -> None:
    send(call)
    before = ledger_rows()
    for body in (
        b"{not json",
        b"[]",
        b"[" * 60_000,  # signed, yet deeper than the JSON parser goes
        json.dumps({"status": "delivered"}).encode(),
    ):
        response = hook(call, "delivery_report", body)
        assert response.status_code == 400, response.get_body()
    assert wired.calls == []
    assert ledger_rows() == before
