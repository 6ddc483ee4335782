"""Sinch's webhooks: the adapter on recorded samples, then end to end.

Samples under ``tests/samples/sinch`` follow the SMS REST API's recipient delivery report,
batch delivery report and ``mo_text`` callbacks; ``vector-delivered.json`` is the signed
delivery report of reference/providers-next.md 3.5. The official SDK is the oracle twice:
``SmsSinchEvent(secret).validate_authentication_header`` must agree with the app on every
signature the tests build, and ``SmsSinchEvent.parse_event`` on every payload.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest
from pytest_httpserver import HTTPServer
from sinch.domains.authentication.sinch_events.v1.authentication_validation import (
    validate_sinch_event_signature_with_nonce,
)
from sinch.domains.sms.sinch_events.v1.sms_sinch_event import SmsSinchEvent
from werkzeug import Response

from channel.errors import Forbidden, Unauthorized
from channel.providers.base import DeliveryState, ReceivedSms, StatusReport, Webhook
from channel.providers.sinch import SinchWebhooks
from channel.runtime import get_runtime, reset_runtime
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json, send
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    SINCH_API_TOKEN,
    SINCH_SERVICE_PLAN_ID,
    SINCH_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    payload,
)
from tests.fake_sinch import FakeSinch, signed
from tests.fakes import ORGANIZATION_ID, FakeDataverse, FakeIdentity
from tests.test_webhooks_acs import ledger_rows

SAMPLES = Path(__file__).parent / "samples" / "sinch"
RID = payload()["RequestId"]
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
ROUTES = {"delivery_report": "delivery-report/sinch", "inbound": "inbound/sinch"}
SAMPLE_BATCH = "01FC66621XXXXX119Z8PMV1QPQ"
MO_ID = "01FC66621VHDBN119Z8PMV1AHY"


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def report(batch_id: str, status: str, rid: str | None = RID, code: int = 0) -> bytes:
    """The aborted sample for another batch, status, code or client_reference."""
    body = json.loads(raw("recipient-aborted.json"))
    body.update(batch_id=batch_id, status=status, code=code, client_reference=rid)
    if rid is None:
        del body["client_reference"]
    return json.dumps(body).encode()


def hook_of(body: bytes, headers: dict[str, str] | None = None, query: str = "") -> Webhook:
    url = "https://sms.contoso.example/api/delivery-report/sinch" + (f"?{query}" if query else "")
    return Webhook("POST", url, {k.lower(): v for k, v in (headers or {}).items()}, body)


def sdk_accepts(body: bytes, headers: dict[str, str], secret: str = SINCH_WEBHOOK_SECRET) -> bool:
    accepted: bool = SmsSinchEvent(secret).validate_authentication_header(headers, body)
    return accepted


# --- the adapter on recorded samples --------------------------------------------------------

ADAPTER = SinchWebhooks(signing_secret=SINCH_WEBHOOK_SECRET)
VECTOR = {
    "x-sinch-webhook-signature": "RScPPnMx53sgjb4g7IgCbfhXDE4PLuR7QUbXhmyzbHg=",
    "x-sinch-webhook-signature-nonce": "01HZZZNONCE0000000000000",
    "x-sinch-webhook-signature-timestamp": "1717661839",
}


def test_the_reference_vector_is_accepted_by_the_adapter_and_the_sdk() -> None:
    body = raw("vector-delivered.json")
    adapter = SinchWebhooks(signing_secret="KayakingTheSwell", clock=lambda: 1717661839 + 120)
    adapter.verify(hook_of(body, VECTOR))
    assert sdk_accepts(body, VECTOR, "KayakingTheSwell")
    assert validate_sinch_event_signature_with_nonce("KayakingTheSwell", VECTOR, body.decode())
    with pytest.raises(Forbidden):  # the same call ten minutes later: stale
        SinchWebhooks(signing_secret="KayakingTheSwell", clock=lambda: 1717661839 + 600).verify(
            hook_of(body, VECTOR)
        )


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            "vector-delivered.json",
            StatusReport(
                "01W4FFL35P4NC4K35SMSBATCH9",
                DeliveryState.DELIVERED,
                "act-42",
                "Delivered 0",
                same_message_only=True,
            ),
        ),
        (
            "recipient-aborted.json",
            StatusReport(
                SAMPLE_BATCH,
                DeliveryState.NOT_DELIVERED,
                RID,
                "Aborted 412",
                same_message_only=True,
            ),
        ),
        (
            "recipient-dispatched.json",
            StatusReport(
                SAMPLE_BATCH, DeliveryState.PENDING, RID, "Dispatched 401", same_message_only=True
            ),
        ),
    ],
)
def test_report_samples_are_read_as_the_sdk_reads_them(sample: str, expected: StatusReport) -> None:
    assert ADAPTER.status_reports(hook_of(raw(sample))) == [expected]
    parsed = SmsSinchEvent().parse_event(raw(sample))
    assert type(parsed).__name__ == "RecipientDeliveryReport"
    assert parsed.batch_id == expected.message_id
    assert parsed.client_reference == expected.correlation
    assert f"{parsed.status} {parsed.code}" == expected.detail


FINAL_FAILURES = ["Aborted", "Cancelled", "Rejected", "Deleted", "Failed", "Expired"]


def cases(values: list[str]) -> list[str]:
    """Each value as Sinch writes it, as its SDK writes it, and in lower case."""
    return [variant for value in values for variant in (value, value.upper(), value.lower())]


@pytest.mark.parametrize("value", cases(["Delivered"]))
def test_delivered_in_any_case_is_delivered(value: str) -> None:
    (found,) = ADAPTER.status_reports(hook_of(report("b", value)))
    assert found.state is DeliveryState.DELIVERED


@pytest.mark.parametrize("value", cases(FINAL_FAILURES))
def test_final_failures_in_any_case_are_not_delivered(value: str) -> None:
    (found,) = ADAPTER.status_reports(hook_of(report("b", value, code=402)))
    assert found.state is DeliveryState.NOT_DELIVERED


@pytest.mark.parametrize("value", [*cases(["Queued", "Dispatched", "Unknown"]), "Something-new"])
def test_other_statuses_are_intermediate(value: str) -> None:
    (found,) = ADAPTER.status_reports(hook_of(report("b", value)))
    assert found.state is DeliveryState.PENDING


def test_a_report_without_client_reference_has_no_correlation() -> None:
    (found,) = ADAPTER.status_reports(hook_of(report("b", "Delivered", rid=None)))
    assert found.correlation is None


def test_other_event_types_give_no_report() -> None:
    """A batch summary (another delivery_report setting) and an MO are acknowledged only."""
    assert ADAPTER.status_reports(hook_of(raw("batch-report.json"))) == []
    assert ADAPTER.status_reports(hook_of(raw("mo-text.json"))) == []
    assert ADAPTER.received_messages(hook_of(raw("recipient-aborted.json"))) == []
    mo_binary = json.loads(raw("mo-text.json")) | {"type": "mo_binary", "udh": "0500"}
    assert ADAPTER.received_messages(hook_of(json.dumps(mo_binary).encode())) == []


def test_the_mo_sample_is_read_in_e164_as_the_sdk_reads_it() -> None:
    assert ADAPTER.received_messages(hook_of(raw("mo-text.json"))) == [
        ReceivedSms(MO_ID, RECIPIENT, SENDER_E164, REPLY_TEXT)
    ]
    parsed = SmsSinchEvent().parse_event(raw("mo-text.json"))
    assert type(parsed).__name__ == "MOTextMessage"
    assert (parsed.id, "+" + parsed.from_, "+" + parsed.to, parsed.body) == (
        MO_ID,
        RECIPIENT,
        SENDER_E164,
        REPLY_TEXT,
    )


def test_a_genuine_signature_is_accepted_by_the_adapter_and_the_sdk() -> None:
    body = raw("recipient-aborted.json")
    headers = signed(body)
    ADAPTER.verify(hook_of(body, headers))
    assert sdk_accepts(body, headers)


def forgeries(body: bytes) -> dict[str, tuple[dict[str, str], type[Exception]]]:
    """Every way a call can fail Sinch's signature, and the error each must raise."""
    good = signed(body)
    other = body.rstrip()[:-1] + b',"tampered":true}'
    assert other != body
    return {
        "missing": ({}, Unauthorized),
        "no-signature": (good | {"x-sinch-webhook-signature": ""}, Unauthorized),
        "no-nonce": (
            {k: v for k, v in good.items() if k != "x-sinch-webhook-signature-nonce"},
            Unauthorized,
        ),
        "no-timestamp": (
            {k: v for k, v in good.items() if k != "x-sinch-webhook-signature-timestamp"},
            Unauthorized,
        ),
        "wrong-secret": (signed(body, secret="another-secret"), Forbidden),
        "tampered-body": (signed(other), Forbidden),
        "other-nonce": (good | {"x-sinch-webhook-signature-nonce": "01OTHERNONCE"}, Forbidden),
        "stale": (signed(body, timestamp=int(time.time()) - 600), Forbidden),
        "future": (signed(body, timestamp=int(time.time()) + 600), Forbidden),
        "timestamp-not-digits": (
            good | {"x-sinch-webhook-signature-timestamp": "1e9"},
            Forbidden,
        ),
        "non-ascii-signature": (good | {"x-sinch-webhook-signature": "é" * 44}, Forbidden),
        "garbage": (good | {"x-sinch-webhook-signature": "not-base64"}, Forbidden),
    }


BODY = raw("recipient-aborted.json")
FORGERY_NAMES = list(forgeries(BODY))
"""Signed anew in each test: a timestamp signed at collection would drift towards (or
into) the 5-minute window while a slow suite runs."""


@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_forgeries_are_refused_by_the_adapter(name: str) -> None:
    headers, error = forgeries(BODY)[name]
    with pytest.raises(error):
        ADAPTER.verify(hook_of(BODY, headers))


@pytest.mark.parametrize(
    "name", ["wrong-secret", "tampered-body", "other-nonce", "garbage", "no-nonce"]
)
def test_the_sdk_agrees_that_forged_signatures_are_wrong(name: str) -> None:
    headers, _ = forgeries(BODY)[name]
    assert not sdk_accepts(BODY, headers)


def test_with_signing_on_the_query_secret_alone_is_refused() -> None:
    both = SinchWebhooks(signing_secret=SINCH_WEBHOOK_SECRET, query_secret=WEBHOOK_SECRET)
    with pytest.raises(Unauthorized):
        both.verify(hook_of(BODY, query=f"secret={WEBHOOK_SECRET}"))
    both.verify(hook_of(BODY, signed(BODY), query=f"secret={WEBHOOK_SECRET}"))


@pytest.mark.parametrize(
    ("query", "error"),
    [("", Unauthorized), ("secret=", Unauthorized), ("secret=wrong", Forbidden)],
)
def test_without_signing_the_query_secret_is_checked(query: str, error: type[Exception]) -> None:
    by_query = SinchWebhooks(query_secret=WEBHOOK_SECRET)
    with pytest.raises(error):
        by_query.verify(hook_of(BODY, signed(BODY), query=query))
    by_query.verify(hook_of(BODY, query=f"secret={WEBHOOK_SECRET}"))


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sinch_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sinch(configure: Configure, sinch_server: HTTPServer) -> Iterator[FakeSinch]:
    fake = FakeSinch(sinch_server)
    configure(
        CHANNEL_PROVIDER="sinch",
        SINCH_SERVICE_PLAN_ID=SINCH_SERVICE_PLAN_ID,
        SINCH_API_TOKEN=SINCH_API_TOKEN,
        SINCH_WEBHOOK_SECRET=SINCH_WEBHOOK_SECRET,
        SINCH_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
        CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    sinch_server.clear()


@pytest.fixture
def wired(sinch: FakeSinch, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    yield dataverse
    assert dataverse.rejected == []


def hook(
    call: Call,
    name: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> func.HttpResponse:
    """Sinch's call of route ``name``, signed unless ``headers`` are given."""
    query = urlencode(params or {})
    return call(
        name,
        body,
        path=ROUTES[name] + (f"?{query}" if query else ""),
        route_params={"provider": "sinch"},
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


REPLY = (
    INBOUND,
    {
        "ChannelDefinitionId": DEFINITION_ID,
        "To": SENDER,
        "From": RECIPIENT,
        "OrganizationId": ORGANIZATION_ID,
        "Message": {"text": REPLY_TEXT},
    },
)


def test_delivered_report_is_one_exact_notification(
    call: Call, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    batch_id = send(call)
    response = hook(call, "delivery_report", report(batch_id, "Delivered"))
    assert response.status_code == 200, response.get_body()
    assert wired.calls == [notification(batch_id, "Delivered")]


def test_intermediate_status_and_unknown_reference_make_no_call(
    call: Call, wired: FakeDataverse
) -> None:
    batch_id = send(call)
    assert (
        hook(call, "delivery_report", report(batch_id, "Dispatched", code=401)).status_code == 200
    )
    assert hook(call, "delivery_report", report("other", "Delivered", "nope")).status_code == 200
    assert hook(call, "delivery_report", report("other", "Delivered", None)).status_code == 200
    assert wired.calls == []


def test_our_reference_on_another_batch_is_ignored(
    call: Call, wired: FakeDataverse, caplog: pytest.LogCaptureFixture
) -> None:
    """Another system on the service plan reusing our RequestId cannot report our message."""
    batch_id = send(call)
    foreign = "01FOREIGNBATCH000000000000"
    assert hook(call, "delivery_report", report(foreign, "Failed", code=402)).status_code == 200
    assert wired.calls == []
    assert any("not the one recorded" in record.getMessage() for record in caplog.records)
    assert hook(call, "delivery_report", report(batch_id, "Delivered")).status_code == 200
    assert wired.calls == [notification(batch_id, "Delivered")]


def test_a_report_naming_a_request_answered_not_sent_is_ignored(
    call: Call, sinch: FakeSinch, wired: FakeDataverse
) -> None:
    sinch.answer(400, {"code": "syntax_invalid_parameter_format", "text": "Invalid to"})
    assert answer_json(call("outbound", payload()))["Status"] == "NotSent"
    assert hook(call, "delivery_report", report("01ANY", "Delivered")).status_code == 200
    assert wired.calls == []


def test_duplicates_in_any_order_notify_once_with_the_first_final_status(
    call: Call, wired: FakeDataverse
) -> None:
    ids = [send(call, f"rid-{n}") for n in range(4)]
    callbacks = [
        report(batch_id, state, f"rid-{n}")
        for n, batch_id in enumerate(ids)
        for state in ("Queued", "Dispatched", "DELIVERED", "Failed", "delivered", "Expired")
    ]
    random.Random(11).shuffle(callbacks)  # noqa: S311 - an order, not a secret
    first: dict[str, str] = {}
    for body in callbacks:
        assert hook(call, "delivery_report", body).status_code == 200
        callback = json.loads(body)
        if callback["status"].lower() not in ("queued", "dispatched"):
            first.setdefault(callback["client_reference"], callback["status"].lower())
    expected = {"delivered": "Delivered", "failed": "NotDelivered", "expired": "NotDelivered"}
    assert sorted(p["RequestId"] for _, p in wired.calls) == sorted(first)
    for _, sent_payload in wired.calls:
        assert sent_payload["Status"] == expected[first[sent_payload["RequestId"]]]


def test_concurrent_redeliveries_of_one_final_report_notify_once(
    call: Call, wired: FakeDataverse
) -> None:
    batch_id = send(call)
    body = report(batch_id, "Delivered")
    start = threading.Barrier(8)
    statuses: list[int] = []

    def deliver() -> None:
        start.wait()
        statuses.append(hook(call, "delivery_report", body).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 8
    assert wired.calls == [notification(batch_id, "Delivered")]


def test_report_before_the_outbound_answer_is_correlated(
    call: Call, sinch: FakeSinch, wired: FakeDataverse
) -> None:
    sinch.slow(10.0)
    answers: list[func.HttpResponse] = []
    outbound = threading.Thread(target=lambda: answers.append(call("outbound", payload())))
    outbound.start()
    try:
        deadline = time.monotonic() + 5
        while not sinch.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        (batch,) = sinch.batches  # created; its answer not given yet
        assert hook(call, "delivery_report", report(batch["id"], "Delivered")).status_code == 200
        assert wired.calls == [notification(batch["id"], "Delivered")]
        assert answers == []
    finally:
        sinch.release.set()
        outbound.join(15)
    (answer,) = answers
    assert answer_json(answer)["MessageId"] == sinch.batch_id(1)
    assert len(sinch.posts) == 1
    assert len(wired.calls) == 1


def test_ambiguous_send_is_settled_by_its_report(
    call: Call, sinch: FakeSinch, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    sinch.slow(5.0)
    assert call("outbound", payload()).status_code == 503
    sinch.release.set()
    batch_id = sinch.batch_id(1)
    assert (
        hook(call, "delivery_report", report(batch_id, "Dispatched", code=401)).status_code == 200
    )
    retry = call("outbound", payload())
    assert answer_json(retry)["MessageId"] == batch_id
    assert len(sinch.posts) == 1
    assert sinch.lookups == []  # settled by the report: nothing to look for
    assert hook(call, "delivery_report", report(batch_id, "Delivered")).status_code == 200
    assert wired.calls == [notification(batch_id, "Delivered")]


def test_inbound_reply_is_one_exact_call_whatever_sinch_retries(
    call: Call, wired: FakeDataverse
) -> None:
    send(call)  # learns our number's Dataverse form and channel
    for _ in range(3):
        assert hook(call, "inbound", raw("mo-text.json")).status_code == 200
    assert wired.calls == [REPLY]


def test_a_reply_is_kept_within_sinch_maximum(call: Call, wired: FakeDataverse) -> None:
    send(call)
    body = json.loads(raw("mo-text.json")) | {"body": "y" * 2500 + "\ud800"}
    assert hook(call, "inbound", json.dumps(body).encode()).status_code == 200
    ((_, forwarded),) = wired.calls
    assert forwarded["Message"]["text"] == "y" * 2000


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("forgery", FORGERY_NAMES)
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
    batch_id = send(call)
    body = report(batch_id, "Delivered") if route == "delivery_report" else raw("mo-text.json")
    headers, error = forgeries(body)[forgery]
    before = ledger_rows()
    # The query secret is right: with signing on, it proves nothing.
    response = hook(call, route, body, headers, params={"secret": WEBHOOK_SECRET})
    assert response.status_code == (401 if error is Unauthorized else 403), response.get_body()
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


def test_with_the_query_secret_instead_of_signing(
    call: Call,
    sinch: FakeSinch,
    wired: FakeDataverse,
    identity: FakeIdentity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SINCH_WEBHOOK_SECRET")
    reset_runtime()
    batch_id = send(call)
    body = report(batch_id, "Delivered")
    # Sinch calls the batch's callback_url: the app put the shared secret in it.
    callback = urlsplit(sinch.posts[0].json["callback_url"])
    assert callback.path == "/api/delivery-report/sinch"
    assert parse_qs(callback.query) == {"secret": [WEBHOOK_SECRET]}
    before = ledger_rows()
    assert hook(call, "delivery_report", body, headers={}).status_code == 401
    wrong = hook(call, "delivery_report", body, headers={}, params={"secret": "wrong"})
    assert wrong.status_code == 403
    assert ledger_rows() == before
    assert wired.calls == []
    assert identity.tokens == 0
    right = dict(parse_qsl(callback.query))
    assert hook(call, "delivery_report", body, headers={}, params=right).status_code == 200
    assert hook(call, "inbound", raw("mo-text.json"), headers={}, params=right).status_code == 200
    assert wired.calls == [notification(batch_id, "Delivered"), REPLY]


def test_without_any_webhook_secret_webhooks_are_a_plain_503(
    call: Call, sinch: FakeSinch, wired: FakeDataverse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SINCH_WEBHOOK_SECRET")
    monkeypatch.delenv("CHANNEL_WEBHOOK_SECRET")
    monkeypatch.setenv("CHANNEL_PROVIDER", "loopback")  # webhooks of a provider not sending
    reset_runtime()
    before = ledger_rows()
    for name in ROUTES:
        response = hook(call, name, raw("mo-text.json"), params={"secret": WEBHOOK_SECRET})
        assert response.status_code == 503
        assert "problems" not in answer_json(response)
        assert "SINCH" not in answer_json(response)["detail"]
    assert wired.calls == []
    assert ledger_rows() == before


@pytest.mark.parametrize("status", [503, 500, 429, 403, 400])
def test_dataverse_failing_answers_5xx_and_a_redelivery_notifies_once(
    call: Call, wired: FakeDataverse, configure: Configure, status: int
) -> None:
    """Sinch drops a callback answered 4xx: our own failures must answer 5xx."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    batch_id = send(call)
    wired.script.extend(Response(status=status) for _ in range(20))
    response = hook(call, "delivery_report", report(batch_id, "Delivered"))
    assert 500 <= response.status_code < 600
    kept = get_runtime().outbox.get(f"notification:{RID}")
    assert kept is not None
    assert kept.state == "pending"
    wired.script.clear()
    assert hook(call, "delivery_report", report(batch_id, "Delivered")).status_code == 200
    assert wired.calls == [notification(batch_id, "Delivered")]


def test_dataverse_down_for_a_reply_answers_5xx_and_a_redelivery_delivers_once(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    send(call)
    wired.script.extend(Response(status=503) for _ in range(20))
    assert 500 <= hook(call, "inbound", raw("mo-text.json")).status_code < 600
    wired.script.clear()
    assert hook(call, "inbound", raw("mo-text.json")).status_code == 200
    assert wired.calls == [REPLY]


MALFORMED: dict[str, bytes] = {
    "not-json": b"{not json",
    "array": b"[]",
    "nested": b"[" * 60_000,
    "no-batch-id": json.dumps({"type": "recipient_delivery_report_sms", "status": "x"}).encode(),
    "control-chars": report("bad\nid", "Delivered"),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_signed_body_is_400_and_changes_nothing(
    call: Call, wired: FakeDataverse, body: bytes
) -> None:
    send(call)
    before = ledger_rows()
    response = hook(call, "delivery_report", body)
    assert response.status_code == 400, response.get_body()
    assert wired.calls == []
    assert ledger_rows() == before


def test_a_body_over_what_sinch_sends_is_413_unread_even_when_signed(
    call: Call, wired: FakeDataverse
) -> None:
    send(call)
    big = json.loads(raw("mo-text.json")) | {"padding": "x" * (100 * 1024)}
    body = json.dumps(big).encode()
    before = ledger_rows()
    assert hook(call, "inbound", body).status_code == 413
    assert hook(call, "inbound", b"x" * (1024 * 1024), headers={}).status_code == 413
    assert wired.calls == []
    assert ledger_rows() == before


# --- the Table Storage ledger ---------------------------------------------------------------


def test_reports_and_replies_on_the_table_ledger(
    call: Call,
    wired: FakeDataverse,
    configure: Configure,
    azurite: Azurite,
    table_name: str,
) -> None:
    configure(
        CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table_name
    )
    batch_id = send(call)
    foreign = report("01FOREIGNBATCH000000000000", "Failed", code=402)
    for body in (foreign, report(batch_id, "Delivered"), report(batch_id, "Expired")):
        assert hook(call, "delivery_report", body).status_code == 200
    for _ in range(2):
        assert hook(call, "inbound", raw("mo-text.json")).status_code == 200
    assert wired.calls == [notification(batch_id, "Delivered"), REPLY]
