"""Acceptance tests of ACS's Event Grid webhooks: delivery reports and inbound messages.

Events are the samples under ``tests/samples/acs`` (Event Grid schema and CloudEvents 1.0,
modelled on the Azure REST API specs' examples), posted as the host hands them to the
app. Messages are first sent through ``outbound`` to the fake ACS, so the ledger holds
the RequestIds the reports' ``tag`` names; the fake Dataverse checks every call's token,
headers and body shape and lists breaches in ``rejected``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import azure.functions as func
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.runtime import get_runtime, reset_runtime
from tests.conftest import Call, Configure, answer_json, send
from tests.data import (
    ACS_ACCESS_KEY,
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    TWILIO_TOKEN,
    WEBHOOK_SECRET,
    payload,
)
from tests.fakes import ORGANIZATION_ID, FakeAcs, FakeDataverse, FakeIdentity, FakeTwilio
from tests.twilio_hooks import PUBLIC_URL, REPORT_URL, sign, status_form, webhook
from tests.twilio_hooks import assert_acknowledged as assert_twiml
from tests.twilio_hooks import send as twilio_send

SAMPLES = Path(__file__).parent / "samples" / "acs"
RID = payload()["RequestId"]
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
INBOUND_ID = "Incoming_20240611093512d29ebbea-3341-4466-9690-0a03af35228e"
EVENT_GRID = "application/json"
CLOUDEVENTS = "application/cloudevents+json; charset=utf-8"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json; charset=utf-8"
ROUTES = {"delivery_report": "delivery-report/acs", "inbound": "inbound/acs"}


def sample(name: str) -> Any:
    """A sample event (or array of events) as stored."""
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def hook(
    call: Call,
    name: str,
    body: Any,
    *,
    query: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    """Event Grid's call of route ``name``; the query carries our secret unless given."""
    query = f"secret={quote(WEBHOOK_SECRET)}" if query is None else query
    raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    route = ROUTES[name]
    return call(
        name,
        raw,
        method=method,
        path=f"{route}?{query}" if query else route,
        route_params={"provider": "acs"},
        headers={"aeg-event-type": "Notification", "content-type": EVENT_GRID, **(headers or {})},
    )


def assert_acknowledged(response: func.HttpResponse) -> None:
    assert response.status_code == 200, response.get_body()


def notification(message_id: str, status: str, rid: str = RID) -> tuple[str, dict[str, str]]:
    """The exact call Dataverse must get for a final report."""
    return (
        NOTIFY,
        {
            "ChannelDefinitionId": DEFINITION_ID,
            "RequestId": rid,
            "MessageId": message_id,
            "From": SENDER,
            "OrganizationId": ORGANIZATION_ID,
            "Status": status,
        },
    )


def inbound(to: str, text: str = REPLY_TEXT) -> tuple[str, dict[str, Any]]:
    """The exact call Dataverse must get for the sample's inbound message."""
    return (
        INBOUND,
        {
            "ChannelDefinitionId": DEFINITION_ID,
            "To": to,
            "From": RECIPIENT,
            "OrganizationId": ORGANIZATION_ID,
            "Message": {"text": text},
        },
    )


def ledger_rows() -> list[tuple[str, str, int]]:
    """Every record of the embedded ledger, as stored (none before it exists)."""
    with contextlib.closing(sqlite3.connect(os.environ["CHANNEL_LEDGER_PATH"])) as db:
        try:
            rows: list[tuple[str, str, int]] = db.execute(
                "SELECT key, data, version FROM records ORDER BY key"
            ).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
    return rows


def report_event(message_id: str, status: str, tag: str | None) -> dict[str, Any]:
    """The Event Grid sample's delivery report, for another message or status."""
    (event,) = copy.deepcopy(sample("eventgrid-sms-delivery-report.json"))
    event["id"] = event["data"]["messageId"] = message_id
    event["data"]["deliveryStatus"] = status
    if tag is None:
        del event["data"]["tag"]
    else:
        event["data"]["tag"] = tag
    assert isinstance(event, dict)
    return event


def as_cloud_event(event: dict[str, Any]) -> dict[str, Any]:
    """An Event Grid schema event in the CloudEvents 1.0 schema (data keys in PascalCase)."""
    return {
        "source": event["topic"],
        "subject": event["subject"],
        "type": event["eventType"],
        "time": event["eventTime"],
        "id": event["id"],
        "data": {key[0].upper() + key[1:]: value for key, value in event["data"].items()},
        "specversion": "1.0",
    }


@pytest.fixture(scope="module")
def acs_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def acs(configure: Configure, acs_server: HTTPServer) -> Iterator[FakeAcs]:
    """The fake ACS, and the app sending through it with its webhook secret set."""
    fake = FakeAcs(acs_server, key=base64.b64decode(ACS_ACCESS_KEY))
    configure(
        CHANNEL_PROVIDER="acs",
        ACS_ENDPOINT=fake.endpoint,
        ACS_ACCESS_KEY=ACS_ACCESS_KEY,
        CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    acs_server.clear()


@pytest.fixture
def wired(acs: FakeAcs, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    """ACS and Dataverse both there; every test ends with no contract breach seen."""
    yield dataverse
    assert dataverse.rejected == []


# --- 1. delivery reports -----------------------------------------------------------------


def test_event_grid_delivery_report_is_one_exact_notification(
    call: Call, acs: FakeAcs, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    message_id = send(call)
    events = sample("eventgrid-sms-delivery-report.json")
    assert events[0]["data"]["messageId"] == message_id  # the sample is about this message
    assert_acknowledged(hook(call, "delivery_report", events))
    assert wired.calls == [notification(message_id, "Delivered")]
    assert identity.tokens == 1
    # Event Grid redelivers (at least once): no second call.
    assert_acknowledged(hook(call, "delivery_report", events))
    assert len(wired.calls) == 1


@pytest.mark.parametrize("content_type", [CLOUDEVENTS, EVENT_GRID])
def test_cloud_event_delivery_report_is_one_exact_notification(
    call: Call, acs: FakeAcs, wired: FakeDataverse, content_type: str
) -> None:
    message_id = send(call)
    event = sample("cloudevents-sms-delivery-report.json")  # "Failed", PascalCase keys
    headers = {"content-type": content_type}
    assert_acknowledged(hook(call, "delivery_report", event, headers=headers))
    assert wired.calls == [notification(message_id, "NotDelivered")]


def test_cloud_events_batch_is_read_event_by_event(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    first, second = send(call, "batch-1"), send(call, "batch-2")
    batch = [
        as_cloud_event(report_event(first, "Delivered", "batch-1")),
        as_cloud_event(report_event(second, "Failed", "batch-2")),
    ]
    headers = {"content-type": CLOUDEVENTS_BATCH}
    assert_acknowledged(hook(call, "delivery_report", batch, headers=headers))
    assert wired.calls == [
        notification(first, "Delivered", "batch-1"),
        notification(second, "NotDelivered", "batch-2"),
    ]


def test_intermediate_statuses_are_acknowledged_without_a_call(
    call: Call, acs: FakeAcs, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    message_id = send(call)
    for status in ("Sent", "Queued", "SomeNewStatus", ""):
        assert_acknowledged(hook(call, "delivery_report", [report_event(message_id, status, RID)]))
    assert wired.calls == []
    assert identity.tokens == 0
    assert_acknowledged(hook(call, "delivery_report", [report_event(message_id, "failed", RID)]))
    assert wired.calls == [notification(message_id, "NotDelivered")]


@pytest.mark.parametrize(
    "tag", ["never-sent-by-this-app", None, ""], ids=["unknown", "none", "empty"]
)
def test_report_of_a_message_we_never_sent_is_acknowledged_without_a_call(
    call: Call,
    acs: FakeAcs,
    wired: FakeDataverse,
    identity: FakeIdentity,
    *,
    caplog: pytest.LogCaptureFixture,
    tag: str | None,
) -> None:
    send(call)
    before = ledger_rows()
    event = report_event(
        "Outgoing_2024061100000000ffffffff-0000-0000-0000-000000000000", "Delivered", tag
    )
    assert_acknowledged(hook(call, "delivery_report", [event]))
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before
    assert any("not a message this app sent" in r.getMessage() for r in caplog.records)


def test_other_event_types_are_acknowledged_and_ignored(
    call: Call, acs: FakeAcs, wired: FakeDataverse, caplog: pytest.LogCaptureFixture
) -> None:
    send(call)
    before = ledger_rows()
    other = {
        "id": "e1",
        "topic": "/subscriptions/x",
        "subject": "/phonenumber/x",
        "eventType": "Microsoft.Communication.ChatMessageReceived",
        "data": {"messageBody": "hello"},
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2024-06-11T09:30:21Z",
    }
    deleted = other | {"eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent", "data": {}}
    inbound_here = sample("eventgrid-sms-received.json")[0]  # subscribed to the wrong route
    assert_acknowledged(hook(call, "delivery_report", [other, deleted, inbound_here]))
    assert wired.calls == []
    assert ledger_rows() == before
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("handled at /api/inbound/acs" in warning for warning in warnings)


# --- 2. inbound --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("eventgrid-sms-received.json", EVENT_GRID),
        ("cloudevents-sms-received.json", CLOUDEVENTS),
    ],
)
def test_inbound_message_is_one_exact_call(
    call: Call,
    acs: FakeAcs,
    wired: FakeDataverse,
    configure: Configure,
    *,
    name: str,
    content_type: str,
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    event = sample(name)
    headers = {"content-type": content_type}
    assert_acknowledged(hook(call, "inbound", event, headers=headers))
    # Our number reaches Dataverse in E.164 with '+' (nothing was sent from it yet),
    # the customer's too: ACS writes both without '+'.
    assert wired.calls == [inbound(SENDER_E164)]
    for _ in range(3):  # Event Grid's redeliveries
        assert_acknowledged(hook(call, "inbound", event, headers=headers))
    assert len(wired.calls) == 1
    assert get_runtime().outbox.get(f"inbound:acs:{INBOUND_ID}") is not None


def test_inbound_to_a_number_we_sent_from_uses_its_dataverse_form(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    send(call)  # learns that +12065550100 is "12065550100" of this channel definition
    assert_acknowledged(hook(call, "inbound", sample("eventgrid-sms-received.json")))
    assert wired.calls == [inbound(SENDER)]


def test_inbound_without_any_channel_definition_is_503_and_no_call(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    response = hook(call, "inbound", sample("eventgrid-sms-received.json"))
    assert response.status_code == 503
    assert "CHANNEL_DEFINITION_ID" in answer_json(response)["detail"]
    assert wired.calls == []


# --- 3. handshakes -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUTES)
def test_event_grid_subscription_validation(
    call: Call, acs: FakeAcs, wired: FakeDataverse, identity: FakeIdentity, name: str
) -> None:
    before = ledger_rows()
    events = sample("eventgrid-subscription-validation.json")
    headers = {"aeg-event-type": "SubscriptionValidation"}
    response = hook(call, name, events, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert answer_json(response) == {"validationResponse": events[0]["data"]["validationCode"]}
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


@pytest.mark.parametrize("name", ROUTES)
def test_cloud_events_options_handshake(
    call: Call, acs: FakeAcs, wired: FakeDataverse, identity: FakeIdentity, name: str
) -> None:
    before = ledger_rows()
    response = hook(
        call, name, b"", method="OPTIONS", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["WebHook-Allowed-Rate"] == "*"
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


# --- 4. the secret -------------------------------------------------------------------------

SECRETS = {
    "missing": ("", 401),
    "empty": ("secret=", 401),
    "other-parameter": (f"code={quote(WEBHOOK_SECRET)}", 401),
    "wrong": ("secret=not-the-secret", 403),
    "other-case": (f"secret={quote(WEBHOOK_SECRET.upper())}", 403),
    "prefix": (f"secret={quote(WEBHOOK_SECRET[:-1])}", 403),
    "longer": (f"secret={quote(WEBHOOK_SECRET)}x", 403),
    "repeated": (f"secret=wrong&secret={quote(WEBHOOK_SECRET)}", 403),
    "non-ascii": ("secret=%C3%A9", 403),
}
CALLS: dict[str, tuple[str, str, Any, dict[str, str]]] = {
    "report": ("delivery_report", "POST", "eventgrid-sms-delivery-report.json", {}),
    "inbound": ("inbound", "POST", "eventgrid-sms-received.json", {}),
    "validation": ("delivery_report", "POST", "eventgrid-subscription-validation.json", {}),
    "options": ("inbound", "OPTIONS", None, {"WebHook-Request-Origin": "eventgrid.azure.net"}),
}


@pytest.mark.parametrize("which", CALLS)
@pytest.mark.parametrize("secret", SECRETS.values(), ids=SECRETS.keys())
def test_calls_without_the_secret_change_nothing(
    call: Call,
    acs: FakeAcs,
    wired: FakeDataverse,
    identity: FakeIdentity,
    *,
    configure: Configure,
    secret: tuple[str, int],
    which: str,
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    send(call)
    before = ledger_rows()
    query, status = secret
    name, method, sample_name, headers = CALLS[which]
    body = b"" if sample_name is None else sample(sample_name)
    response = hook(call, name, body, query=query, method=method, headers=headers)
    assert response.status_code == status, response.get_body()
    assert response.mimetype == "application/problem+json"
    assert "WebHook-Allowed-Origin" not in response.headers
    assert "validationResponse" not in response.get_body().decode()
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


def test_without_a_configured_secret_webhooks_are_503(
    call: Call, acs: FakeAcs, wired: FakeDataverse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHANNEL_WEBHOOK_SECRET")
    reset_runtime()
    for name in ROUTES:
        response = hook(call, name, sample("eventgrid-subscription-validation.json"))
        assert response.status_code == 503
        # An anonymous caller is not told which setting is missing (health says it).
        assert "CHANNEL_WEBHOOK_SECRET" not in answer_json(response)["detail"]
    assert wired.calls == []
    notes = answer_json(call("health", method="GET"))["notes"]
    assert any("CHANNEL_WEBHOOK_SECRET not set" in note for note in notes)


# --- 5. batches and duplicates ---------------------------------------------------------------


@pytest.mark.parametrize("schema", ["event-grid", "cloudevents"])
def test_a_batch_of_ten_reports_with_duplicates_has_one_effect_per_message(
    call: Call, acs: FakeAcs, wired: FakeDataverse, schema: str
) -> None:
    ids = {rid: send(call, rid) for rid in ("b-1", "b-2", "b-3")}
    events = [
        report_event(ids["b-1"], "Delivered", "b-1"),
        report_event(ids["b-2"], "Failed", "b-2"),
        report_event(ids["b-1"], "Delivered", "b-1"),
        report_event(ids["b-3"], "Sent", "b-3"),
        report_event(ids["b-2"], "Delivered", "b-2"),  # later than its first final: ignored
        report_event(ids["b-1"], "Failed", "b-1"),
        report_event(ids["b-3"], "Delivered", "b-3"),
        report_event(ids["b-3"], "Delivered", "b-3"),
        report_event(ids["b-2"], "Failed", "b-2"),
        sample("eventgrid-subscription-validation.json")[0] | {"eventType": "Other.Event"},
    ]
    body = events if schema == "event-grid" else [as_cloud_event(e) for e in events]
    content_type = EVENT_GRID if schema == "event-grid" else CLOUDEVENTS_BATCH
    for _ in range(2):  # and Event Grid delivers the whole batch again
        assert_acknowledged(
            hook(call, "delivery_report", body, headers={"content-type": content_type})
        )
    assert sorted(wired.calls, key=lambda c: c[1]["RequestId"]) == [
        notification(ids["b-1"], "Delivered", "b-1"),
        notification(ids["b-2"], "NotDelivered", "b-2"),
        notification(ids["b-3"], "Delivered", "b-3"),
    ]


@pytest.mark.parametrize("schema", ["event-grid", "cloudevents"])
def test_a_batch_of_ten_inbound_events_with_duplicates_has_one_effect_per_message(
    call: Call, acs: FakeAcs, wired: FakeDataverse, configure: Configure, schema: str
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    (template,) = sample("eventgrid-sms-received.json")
    events = []
    for n in [1, 2, 1, 3, 4, 2, 1, 4, 3, 3]:
        event = copy.deepcopy(template)
        event["id"] = event["data"]["MessageId"] = f"Incoming_2024061109351{n}-0000"
        event["data"]["Message"] = f"{REPLY_TEXT} #{n}"
        events.append(event)
    body = events if schema == "event-grid" else [as_cloud_event(e) for e in events]
    assert_acknowledged(hook(call, "inbound", body))
    assert_acknowledged(hook(call, "inbound", body))
    texts = sorted(payload["Message"]["text"] for payload in wired.payloads(INBOUND))
    assert texts == [f"{REPLY_TEXT} #{n}" for n in (1, 2, 3, 4)]
    assert len(wired.calls) == 4


def test_concurrent_redeliveries_of_one_batch_have_one_effect(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    ids = [send(call, f"c-{n}") for n in range(5)]
    batch = [report_event(mid, "Delivered", f"c-{n}") for n, mid in enumerate(ids)]
    start = threading.Barrier(6)

    def deliver(_: int) -> int:
        start.wait(5)
        status: int = hook(call, "delivery_report", batch).status_code
        return status

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(deliver, range(6))) == [200] * 6
    assert len(wired.calls) == 5


# --- 6. Dataverse outages and malformed bodies -------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 429, 403, 400])
def test_dataverse_failing_answers_5xx_never_4xx_and_a_redelivery_notifies_once(
    call: Call, acs: FakeAcs, wired: FakeDataverse, configure: Configure, status: int
) -> None:
    """Event Grid drops an event answered 400, 401, 403 or 413: never answer those
    because of a problem on our side."""
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    message_id = send(call)
    headers = {"Retry-After": "1"} if status == 429 else {}
    wired.script.extend(Response(status=status, headers=headers) for _ in range(20))
    response = hook(call, "delivery_report", sample("eventgrid-sms-delivery-report.json"))
    assert 500 <= response.status_code < 600
    assert int(response.headers["Retry-After"]) >= 1
    kept = get_runtime().outbox.get(f"notification:{RID}")
    assert kept is not None
    assert kept.state == "pending"

    wired.script.clear()  # Dataverse is back; Event Grid redelivers
    assert_acknowledged(hook(call, "delivery_report", sample("eventgrid-sms-delivery-report.json")))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_dataverse_down_for_inbound_answers_5xx_and_a_redelivery_delivers_once(
    call: Call, acs: FakeAcs, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID, CHANNEL_TIME_BUDGET_SECONDS="2")
    wired.script.extend(Response(status=503) for _ in range(20))
    response = hook(call, "inbound", sample("cloudevents-sms-received.json"))
    assert 500 <= response.status_code < 600
    wired.script.clear()
    assert_acknowledged(hook(call, "inbound", sample("cloudevents-sms-received.json")))
    assert wired.calls == [inbound(SENDER_E164)]


MALFORMED: dict[str, bytes] = {
    "not-json": b"{not json",
    "nested-too-deeply": b"[" * 60_000,
    "not-utf8": b"\xff\xfe[]",
    "scalar": b"42",
    "array-of-scalars": b"[1, 2]",
    "report-without-data": json.dumps(
        [{"eventType": "Microsoft.Communication.SMSDeliveryReportReceived", "id": "x"}]
    ).encode(),
    "report-without-message-id": json.dumps(
        [
            {
                "eventType": "Microsoft.Communication.SMSDeliveryReportReceived",
                "data": {"deliveryStatus": "Delivered", "tag": RID},
            }
        ]
    ).encode(),
    "validation-without-code": json.dumps(
        [{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]
    ).encode(),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_authenticated_body_is_400_and_changes_nothing(
    call: Call, acs: FakeAcs, wired: FakeDataverse, body: bytes
) -> None:
    send(call)
    before = ledger_rows()
    response = hook(call, "delivery_report", body)
    assert response.status_code == 400, response.get_body()
    assert response.mimetype == "application/problem+json"
    assert wired.calls == []
    assert ledger_rows() == before


def test_a_malformed_event_does_not_cost_the_good_ones_of_its_batch(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    message_id = send(call)
    broken = report_event(message_id, "Delivered", RID)
    del broken["data"]["messageId"]
    batch = [broken, report_event(message_id, "Delivered", RID)]
    assert_acknowledged(hook(call, "delivery_report", batch))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_lone_surrogates_in_an_event_skip_that_event_only(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    """A tag or message id that is not valid Unicode (JSON's escaped lone surrogate)."""
    message_id = send(call)
    bad_tag = report_event(message_id, "Delivered", "\ud800")
    bad_id = report_event("Outgoing_\udc00", "Delivered", RID)
    batch = [bad_tag, bad_id, report_event(message_id, "Delivered", RID)]
    assert_acknowledged(hook(call, "delivery_report", batch))
    assert wired.calls == [notification(message_id, "Delivered")]
    stats = get_runtime().outbox.stats()
    assert (stats.pending, stats.dead) == (0, 0)  # nothing left behind to fail forever
    before = ledger_rows()
    response = hook(call, "delivery_report", [bad_tag, bad_id])  # nothing usable: 400
    assert response.status_code == 400
    assert ledger_rows() == before
    assert len(wired.calls) == 1


def test_a_reply_is_kept_as_valid_unicode_and_within_acs_maximum(
    call: Call, acs: FakeAcs, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    events = sample("eventgrid-sms-received.json")
    events[0]["data"]["Message"] = "hi \ud800 " + "x" * 40_000
    assert_acknowledged(hook(call, "inbound", events))
    ((action, forwarded),) = wired.calls
    text = forwarded["Message"]["text"]
    assert action == INBOUND
    assert text.startswith("hi \ufffd")
    assert len(text) <= 2048
    stats = get_runtime().outbox.stats()
    assert (stats.pending, stats.dead) == (0, 0)


# --- 7. reports that settle an outbound call ------------------------------------------------


def test_report_before_the_outbound_answer_is_correlated_by_its_tag(
    call: Call, acs: FakeAcs, dataverse: FakeDataverse
) -> None:
    acs.slow(10.0)  # ACS takes the message; its answer is late
    answers: list[func.HttpResponse] = []
    outbound = threading.Thread(target=lambda: answers.append(call("outbound", payload())))
    outbound.start()
    try:
        for _ in range(100):
            if acs.messages:
                break
            threading.Event().wait(0.05)
        assert acs.messages
        events = sample("eventgrid-sms-delivery-report.json")
        assert_acknowledged(hook(call, "delivery_report", events))
        assert dataverse.calls == [notification(acs.message_id(1), "Delivered")]
        assert answers == []
    finally:
        acs.release.set()
        outbound.join(10)
    (answer,) = answers
    assert answer_json(answer)["MessageId"] == acs.message_id(1)
    assert len(acs.posts) == 1
    assert dataverse.rejected == []


def test_ambiguous_send_is_settled_by_its_delivery_report(
    call: Call, acs: FakeAcs, dataverse: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1")
    acs.slow(5.0)
    first = call("outbound", payload())
    assert first.status_code == 503
    assert answer_json(first)["type"].endswith(":send-ambiguous")
    posts = len(acs.posts)

    assert_acknowledged(hook(call, "delivery_report", sample("eventgrid-sms-delivery-report.json")))
    retry = call("outbound", payload())
    assert retry.status_code == 200
    assert answer_json(retry)["MessageId"] == acs.message_id(1)
    assert len(acs.posts) == posts  # settled by the report: no new POST
    assert len(acs.messages) == 1
    assert dataverse.calls == [notification(acs.message_id(1), "Delivered")]
    assert dataverse.rejected == []


# --- 8. a report naming a message sent through another provider ----------------------------


def cross_provider_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "which was sent through" in r.getMessage()
    ]


def test_an_acs_report_naming_a_message_sent_through_twilio_does_not_notify(
    call: Call,
    twilio: FakeTwilio,
    dataverse: FakeDataverse,
    configure: Configure,
    caplog: pytest.LogCaptureFixture,
) -> None:
    twilio.accept()
    sent = twilio_send(call, twilio)  # RequestId RID, the sample's tag
    configure(CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET)  # a genuine Event Grid call
    events = sample("eventgrid-sms-delivery-report.json")
    assert events[0]["data"]["tag"] == sent.rid
    assert_acknowledged(hook(call, "delivery_report", events))
    assert dataverse.calls == []
    assert get_runtime().outbox.get(f"notification:{sent.rid}") is None
    (warning,) = cross_provider_warnings(caplog)
    assert "acs status report names request" in warning
    assert "through twilio" in warning
    record = get_runtime().ledger.get(sent.rid)
    assert record is not None
    assert record.message_id == sent.sid  # not settled with ACS's id either


def test_a_twilio_report_naming_a_message_sent_through_acs_does_not_notify(
    call: Call,
    acs: FakeAcs,
    dataverse: FakeDataverse,
    configure: Configure,
    caplog: pytest.LogCaptureFixture,
) -> None:
    message_id = send(call)
    configure(TWILIO_AUTH_TOKEN=TWILIO_TOKEN, CHANNEL_PUBLIC_URL=PUBLIC_URL)
    callback = f"{REPORT_URL}?rid={RID}"  # a genuine, signed Twilio callback
    form = status_form("SM" + "ab" * 16, "delivered")
    assert_twiml(webhook(call, callback, form, signature=sign(callback, form)))
    assert dataverse.calls == []
    (warning,) = cross_provider_warnings(caplog)
    assert "twilio status report names request" in warning
    assert "through acs" in warning
    record = get_runtime().ledger.get(RID)
    assert record is not None
    assert record.message_id == message_id


def test_an_event_grid_batch_over_64_kib_is_read(
    call: Call, acs: FakeAcs, wired: FakeDataverse
) -> None:
    """Event Grid batches up to 1 MB: the route takes them (Twilio's routes stop at 64 KiB)."""
    message_id = send(call)
    other = {
        "id": "e-large",
        "topic": "/subscriptions/x",
        "subject": "/x",
        "eventType": "Microsoft.Storage.BlobCreated",
        "data": {"padding": "x" * (200 * 1024)},
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2024-06-11T09:30:21Z",
    }
    body = json.dumps([*sample("eventgrid-sms-delivery-report.json"), other]).encode()
    assert len(body) > 200 * 1024
    assert_acknowledged(hook(call, "delivery_report", body))
    assert wired.calls == [notification(message_id, "Delivered")]
