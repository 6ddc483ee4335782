"""The Dataverse contracts and the custom API envelope, through the outbound function."""

from __future__ import annotations

import json
from typing import Any

import pytest

from channel.contracts import (
    DeliveryNotification,
    InboundMessage,
    OutboundPayload,
    OutboundResponse,
)
from channel.envelope import read_outbound
from channel.errors import BadRequest
from tests.conftest import Call, answer_json
from tests.data import DEFINITION_ID, SENDER, payload


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in payload().items() if k != field}


def test_payload_round_trip_keeps_names_and_unknown_fields() -> None:
    raw = payload()
    parsed = OutboundPayload.model_validate(raw)
    assert parsed.ChannelDefinitionId == DEFINITION_ID
    assert parsed.Message == {"text": raw["Message"]["text"]}
    assert json.loads(parsed.to_json()) == raw  # MarketingAppContext survives


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (OutboundResponse, ["ChannelDefinitionId", "MessageId", "RequestId", "Status"]),
        (
            DeliveryNotification,
            ["ChannelDefinitionId", "RequestId", "MessageId", "From", "OrganizationId", "Status"],
        ),
        (InboundMessage, ["ChannelDefinitionId", "To", "From", "OrganizationId", "Message"]),
    ],
)
def test_contract_field_names_are_dataverse_pascal_case(model: Any, fields: list[str]) -> None:
    assert list(model.model_fields) == fields


def test_response_serialises_compactly_with_exact_names() -> None:
    response = OutboundResponse(
        ChannelDefinitionId=DEFINITION_ID, MessageId="SM1", RequestId="r-1", Status="Sent"
    )
    assert response.to_json() == (
        f'{{"ChannelDefinitionId":"{DEFINITION_ID}",'
        '"MessageId":"SM1","RequestId":"r-1","Status":"Sent"}'
    )


def test_notification_rejects_statuses_outside_the_contract() -> None:
    with pytest.raises(ValueError, match="Status"):
        DeliveryNotification(
            ChannelDefinitionId=DEFINITION_ID,
            RequestId="r",
            MessageId="m",
            From=SENDER,
            OrganizationId="o",
            Status="Failed",  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    "body",
    [
        payload(),
        {"payload": json.dumps(payload())},
        {"payload": payload()},
    ],
    ids=["plain", "wrapped-string", "wrapped-object"],
)
def test_all_three_request_forms_parse_to_the_same_payload(body: dict[str, Any]) -> None:
    request = read_outbound(json.dumps(body).encode())
    assert request.payload == OutboundPayload.model_validate(payload())
    assert request.wrapped == ("payload" in body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"\xff\xfe", "body"),
        (json.dumps(payload(ChannelDefinitionId="not-a-guid")).encode(), "ChannelDefinitionId"),
        (json.dumps(payload(ChannelDefinitionId=42)).encode(), "ChannelDefinitionId"),
        (
            json.dumps({k: v for k, v in payload().items() if k != "RequestId"}).encode(),
            "RequestId",
        ),
        (json.dumps(payload(RequestId="")).encode(), "RequestId"),
        (json.dumps(payload(From=None)).encode(), "From"),
        (json.dumps(payload(To=14255550199)).encode(), "To"),
        (json.dumps(payload(Message="hello")).encode(), "Message"),
        (json.dumps(payload(Message={"text": 5})).encode(), "Message.text"),
        (json.dumps({"payload": "{oops"}).encode(), "payload"),
        (json.dumps({"payload": 7}).encode(), "payload"),
        (json.dumps({"payload": payload(To=[])}).encode(), "payload.To"),
        # Nested deeper than the parser goes: a 400, not a RecursionError (500).
        (b"[" * 60_000, "body"),
        (b'{"a":' * 60_000, "body"),
        (json.dumps({"payload": "[" * 60_000}).encode(), "payload"),
        # Text no provider request can carry: JSON's escaped lone surrogate.
        (json.dumps(payload(Message={"text": "hi \ud800"})).encode(), "Message.text"),
        # Values that would write their own lines into the log.
        (json.dumps(payload(RequestId="r-1\nINFO forged")).encode(), "RequestId"),
        (json.dumps(payload(RequestId="r-1\u2028forged")).encode(), "RequestId"),
        (json.dumps(payload(RequestId="r-1\ud800")).encode(), "RequestId"),
        (json.dumps(payload(From="Contoso\r\nforged")).encode(), "From"),
        (json.dumps(payload(To="+14255550199\x1b[2J")).encode(), "To"),
        (json.dumps(payload(Message={"te\nxt": "hi"})).encode(), "Message.te\nxt.[key]"),
        # Bounded, so every record fits the ledger and nothing sizeable is parsed.
        (json.dumps(payload(From="1" * 40_000)).encode(), "From"),
        (json.dumps(payload(To="+1" + "4" * 63)).encode(), "To"),
        (json.dumps(payload(RequestId="r" * 513)).encode(), "RequestId"),
        (
            json.dumps(payload(ChannelDefinitionId="-" * 40_000 + DEFINITION_ID)).encode(),
            "ChannelDefinitionId",
        ),
        (json.dumps(payload(Message={"text": "x" * 10_001})).encode(), "Message.text"),
        (
            json.dumps(payload(Message={"p" * 65: "x", "text": "hi"})).encode(),
            "Message." + "p" * 65 + ".[key]",
        ),
    ],
)
def test_bad_requests_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        read_outbound(body)
    assert caught.value.field == field
    assert caught.value.detail.startswith(f"{field}:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (payload(ChannelDefinitionId="b1b25a46-6da0-4c08-9cf3"), "ChannelDefinitionId"),
        (without("To"), "To"),
        ({"payload": json.dumps(payload(Message={}))}, "Message.text"),
    ],
)
def test_outbound_answers_400_problem_naming_the_field(call: Call, body: Any, field: str) -> None:
    response = call("outbound", body)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = answer_json(response)
    assert problem["status"] == 400
    assert problem["field"] == field
    assert field in problem["detail"]
    assert set(problem) >= {"type", "title", "status", "detail"}


def test_guid_is_echoed_exactly_as_dataverse_wrote_it(call: Call) -> None:
    upper = DEFINITION_ID.upper()
    response = call("outbound", payload(ChannelDefinitionId=upper))
    assert answer_json(response)["ChannelDefinitionId"] == upper


@pytest.mark.parametrize("form", ["wrapped-string", "wrapped-object"])
def test_wrapped_request_gets_wrapped_reply(call: Call, form: str) -> None:
    inner = payload()
    body = {"payload": json.dumps(inner) if form == "wrapped-string" else inner}
    response = call("outbound", body)
    assert response.status_code == 200
    outer = answer_json(response)
    assert list(outer) == ["response"]
    assert isinstance(outer["response"], str)
    reply = json.loads(outer["response"])
    assert reply["RequestId"] == inner["RequestId"]
    assert reply["ChannelDefinitionId"] == DEFINITION_ID
    assert reply["Status"] == "Sent"
    assert reply["MessageId"].startswith("LB")


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"Message": {"text": "line one\nline two\tend"}}, id="text-with-line-breaks"),
        pytest.param({"Message": {"text": "x" * 10_000}}, id="longest-text"),
        pytest.param({"To": "+1 (425)\u00a0555-0199"}, id="no-break-space"),
        pytest.param({"RequestId": "r-\u00e9\u4e2d"}, id="non-ascii-request-id"),
        pytest.param({"ChannelDefinitionId": "{" + DEFINITION_ID + "}"}, id="guid-in-braces"),
    ],
)
def test_what_the_bounds_still_accept(override: dict[str, Any]) -> None:
    raw = payload(**override)
    parsed = read_outbound(json.dumps(raw).encode()).payload
    assert parsed.model_dump(include=set(override)) == override


def test_a_request_id_with_a_newline_is_refused_before_it_reaches_a_log(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    response = call("outbound", payload(RequestId="r-1\nERROR forged line"))
    assert response.status_code == 400
    assert answer_json(response)["field"] == "RequestId"
    assert not [r for r in caplog.records if "forged" in r.getMessage()]
