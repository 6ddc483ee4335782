"""Event Grid's envelope as a unit, on the recorded samples under ``tests/samples/acs``.

The routes end to end (ACS's events through the functions) are in test_webhooks_acs.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from channel.errors import BadRequest, Forbidden, Unauthorized
from channel.providers import eventgrid
from channel.providers.base import Webhook, verify_query_secret

SAMPLES = Path(__file__).parent / "samples" / "acs"
SECRET = b"the-shared-secret"
REPORT = "microsoft.communication.smsdeliveryreportreceived"
RECEIVED = "microsoft.communication.smsreceived"
ROUTES = {REPORT: "delivery-report/acs", RECEIVED: "inbound/acs"}


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def call(body: object, *, query: str = "", method: str = "POST", **headers: str) -> Webhook:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = "https://sms.contoso.example/api/delivery-report/acs" + (f"?{query}" if query else "")
    return Webhook(method=method, url=url, headers=headers, body=raw)


def data_of(data: Mapping[str, Any]) -> dict[str, Any]:
    return dict(data)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", Unauthorized),
        ("secret=", Unauthorized),
        ("secret=wrong", Forbidden),
        ("secret=%C3%A9", Forbidden),  # non-ASCII: a 403, never compare_digest's TypeError
        ("secret=wrong&secret=the-shared-secret", Forbidden),
    ],
)
def test_a_call_without_the_secret_is_refused(query: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_query_secret(call([], query=query), SECRET)


def test_a_call_with_the_secret_is_accepted() -> None:
    verify_query_secret(call([], query="secret=the-shared-secret"), SECRET)


def test_the_validation_event_is_answered_with_its_code() -> None:
    events = sample("eventgrid-subscription-validation.json")
    reply = eventgrid.handshake(call(events))
    assert reply is not None
    assert reply.mimetype == "application/json"
    assert json.loads(reply.body) == {"validationResponse": events[0]["data"]["validationCode"]}


def test_a_validation_event_without_its_code_names_the_field() -> None:
    events = sample("eventgrid-subscription-validation.json")
    del events[0]["data"]["validationCode"]
    with pytest.raises(BadRequest) as caught:
        eventgrid.handshake(call(events))
    assert caught.value.field == "data.validationCode"


def test_the_cloudevents_options_handshake_grants_the_origin_that_asks() -> None:
    asked = call(b"", method="OPTIONS", **{"webhook-request-origin": "eventgrid.azure.net"})
    reply = eventgrid.handshake(asked)
    assert reply is not None
    assert reply.headers == {
        "WebHook-Allowed-Origin": "eventgrid.azure.net",
        "WebHook-Allowed-Rate": "*",
    }
    bare = eventgrid.handshake(call(b"", method="OPTIONS"))
    assert bare is not None
    assert bare.headers == {"Allow": "POST, OPTIONS"}


def test_an_ordinary_call_is_no_handshake() -> None:
    assert eventgrid.handshake(call(sample("eventgrid-sms-delivery-report.json"))) is None


@pytest.mark.parametrize(
    "name", ["eventgrid-sms-delivery-report.json", "cloudevents-sms-delivery-report.json"]
)
def test_either_schema_gives_the_data_with_its_keys_in_lower_case(name: str) -> None:
    body = sample(name)
    first = body[0] if isinstance(body, list) else body
    found = eventgrid.each_event(call(body), REPORT, data_of, routes=ROUTES)
    assert found == [{key.lower(): value for key, value in first["data"].items()}]


def test_a_malformed_event_is_skipped_and_the_good_ones_of_its_batch_kept() -> None:
    good = sample("eventgrid-sms-delivery-report.json")[0]
    broken = {**good, "data": "not an object"}
    found = eventgrid.each_event(call([broken, good]), REPORT, data_of, routes=ROUTES)
    assert [data["messageid"] for data in found] == [good["data"]["messageId"]]
    with pytest.raises(BadRequest, match="data"):
        eventgrid.each_event(call([broken]), REPORT, data_of, routes=ROUTES)


def test_an_event_for_the_other_route_is_left_with_a_warning_naming_its_route(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received = sample("eventgrid-sms-received.json")
    with caplog.at_level(logging.INFO, logger="channel.providers.eventgrid"):
        assert eventgrid.each_event(call(received), REPORT, data_of, routes=ROUTES) == []
    assert any(
        r.levelno == logging.WARNING and "/api/inbound/acs" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"[" * 60_000, "body"), (b"[1, 2]", "body")],
    ids=["not-json", "too-deep", "not-objects"],
)
def test_a_body_that_is_no_event_is_a_bad_request_naming_it(body: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        eventgrid.each_event(call(body), REPORT, data_of, routes=ROUTES)
    assert caught.value.field == field
