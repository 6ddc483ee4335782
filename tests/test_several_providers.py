"""Two providers in one process with one ledger (CHANNEL_ROUTES), end to end.

Vonage sends for DEFINITION_ID from SENDER (CHANNEL_PROVIDER), Telnyx for another channel
definition from EU_SENDER (a route), each behind its fake on 127.0.0.1 and each calling
its own webhook routes with its own signature; Dataverse is the fake Web API reached with
the real azure-identity. Every test runs on the embedded ledger and on Azurite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from pytest_httpserver import HTTPServer

from channel.runtime import get_runtime
from tests import fake_telnyx, fake_vonage
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    EU_SENDER,
    EU_SENDER_E164,
    OTHER_DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    TELNYX_API_KEY,
    UK_RECIPIENT,
    UK_RECIPIENT_E164,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
    payload,
)
from tests.fake_telnyx import FakeTelnyx
from tests.fake_vonage import PRIVATE_KEY_PEM, FakeVonage
from tests.fakes import ORGANIZATION_ID, FakeDataverse

SAMPLES = Path(__file__).parent / "samples"
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
RID_A = "5b0c9a8e-1d2f-4e3a-9b8c-7d6e5f4a3b21"
"""Sent through Vonage (CHANNEL_PROVIDER)."""
RID_B = "a3c1e5f7-2b4d-4f6a-8c9e-1a3b5c7d9e02"
"""Sent through Telnyx (its route)."""

ROUTES = {
    # One channel definition per provider (Twilio in North America, Vonage in Europe...).
    "by-definition": {OTHER_DEFINITION_ID: "telnyx"},
    # One channel definition whose numbers are split between providers.
    "by-sender": {EU_SENDER_E164: "telnyx"},
}
DEFINITION_B = {"by-definition": OTHER_DEFINITION_ID, "by-sender": DEFINITION_ID}
"""The channel definition of message B in each layout."""


@pytest.fixture(scope="module")
def vonage_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def telnyx_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "table"])
def ledger_kind(request: pytest.FixtureRequest, configure: Configure) -> str:
    """The one ledger both providers share: the embedded store, or Table Storage (Azurite)."""
    if request.param == "table":
        azurite: Azurite = request.getfixturevalue("azurite")
        table: str = request.getfixturevalue("table_name")
        configure(CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table)
    return str(request.param)


class Providers:
    """Both fakes, and the app configured to send through them."""

    def __init__(self, vonage: FakeVonage, telnyx: FakeTelnyx, dataverse: FakeDataverse) -> None:
        self.vonage = vonage
        self.telnyx = telnyx
        self.dataverse = dataverse


@pytest.fixture
def providers(
    configure: Configure,
    ledger_kind: str,
    vonage_server: HTTPServer,
    telnyx_server: HTTPServer,
    dataverse: FakeDataverse,
) -> Iterator[Providers]:
    vonage = FakeVonage(vonage_server)
    telnyx = FakeTelnyx(telnyx_server)
    configure(
        CHANNEL_PROVIDER="vonage",
        CHANNEL_ROUTES=json.dumps(ROUTES["by-definition"]),
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
        VONAGE_APPLICATION_ID=VONAGE_APPLICATION_ID,
        VONAGE_PRIVATE_KEY=PRIVATE_KEY_PEM,
        VONAGE_SIGNATURE_SECRET=VONAGE_SIGNATURE_SECRET,
        VONAGE_BASE_URL=vonage.base_url,
        TELNYX_API_KEY=TELNYX_API_KEY,
        TELNYX_PUBLIC_KEY=fake_telnyx.PUBLIC_KEY,
        TELNYX_BASE_URL=telnyx.base_url,
    )
    yield Providers(vonage, telnyx, dataverse)
    vonage.release.set()
    telnyx.release.set()
    assert vonage.rejected == []
    assert telnyx.rejected == []
    assert dataverse.rejected == []
    vonage_server.clear()
    telnyx_server.clear()


def send(call: Call, rid: str, definition: str, sender: str, to: str) -> dict[str, Any]:
    response = call(
        "outbound", payload(RequestId=rid, ChannelDefinitionId=definition, From=sender, To=to)
    )
    assert response.status_code == 200, response.get_body()
    answer: dict[str, Any] = answer_json(response)
    return answer


def send_both(call: Call, layout: str = "by-definition") -> tuple[str, str]:
    """Message A through Vonage, message B through Telnyx; their provider message ids."""
    a = send(call, RID_A, DEFINITION_ID, SENDER, RECIPIENT)
    b = send(call, RID_B, DEFINITION_B[layout], EU_SENDER, UK_RECIPIENT)
    assert a["Status"] == b["Status"] == "Sent"
    return str(a["MessageId"]), str(b["MessageId"])


def vonage_call(call: Call, route: str, body: dict[str, Any]) -> func.HttpResponse:
    """Vonage calling ``/api/{route}/vonage``, signed with the Vonage signature secret."""
    raw = json.dumps(body).encode()
    return call(
        route.replace("-", "_"),
        raw,
        path=f"{route}/vonage",
        route_params={"provider": "vonage"},
        headers=fake_vonage.signed(raw),
    )


def telnyx_call(
    call: Call, route: str, body: dict[str, Any], *, provider: str = "telnyx"
) -> func.HttpResponse:
    """Telnyx calling ``/api/{route}/{provider}``, signed with the Telnyx key."""
    raw = json.dumps(body).encode()
    return call(
        route.replace("-", "_"),
        raw,
        path=f"{route}/{provider}",
        route_params={"provider": provider},
        headers=fake_telnyx.signed(raw),
    )


def vonage_status(message_uuid: str, rid: str, state: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((SAMPLES / "vonage" / "status-delivered.json").read_text())
    return body | {"message_uuid": message_uuid, "client_ref": rid, "status": state}


def telnyx_status(message_id: str, state: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (SAMPLES / "telnyx" / "message-finalized-delivered.json").read_text()
    )
    body["data"]["payload"]["id"] = message_id
    body["data"]["payload"]["to"][0]["status"] = state
    return body


def vonage_reply(our_number: str, message_uuid: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((SAMPLES / "vonage" / "inbound-sms.json").read_text())
    return body | {"to": our_number.removeprefix("+"), "message_uuid": message_uuid}


def telnyx_reply(our_number: str, message_id: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((SAMPLES / "telnyx" / "message-received.json").read_text())
    body["data"]["payload"]["id"] = message_id
    body["data"]["payload"]["to"][0]["phone_number"] = our_number
    return body


def notification(
    definition: str, rid: str, message_id: str, sender: str, state: str
) -> tuple[str, dict[str, str]]:
    return (
        NOTIFY,
        {
            "ChannelDefinitionId": definition,
            "RequestId": rid,
            "MessageId": message_id,
            "From": sender,
            "OrganizationId": ORGANIZATION_ID,
            "Status": state,
        },
    )


def reply(definition: str, our_number: str) -> tuple[str, dict[str, Any]]:
    return (
        INBOUND,
        {
            "ChannelDefinitionId": definition,
            "To": our_number,
            "From": RECIPIENT,
            "OrganizationId": ORGANIZATION_ID,
            "Message": {"text": REPLY_TEXT},
        },
    )


@pytest.mark.parametrize("layout", ROUTES)
def test_each_provider_sends_for_its_own_channel_and_reports_through_its_own_webhooks(
    call: Call, configure: Configure, providers: Providers, layout: str
) -> None:
    configure(CHANNEL_ROUTES=json.dumps(ROUTES[layout]))
    id_a, id_b = send_both(call, layout)

    assert [post.json["client_ref"] for post in providers.vonage.posts] == [RID_A]
    assert [post.json["to"] for post in providers.telnyx.posts] == [UK_RECIPIENT_E164]
    # Each asks for its status callbacks on its own route.
    assert providers.vonage.posts[0].json["webhook_url"].endswith("/delivery-report/vonage")
    assert providers.telnyx.posts[0].json["webhook_url"].endswith("/delivery-report/telnyx")
    assert id_a == providers.vonage.message_uuid(1)
    assert id_b == providers.telnyx.message_id(1)

    assert (
        vonage_call(call, "delivery-report", vonage_status(id_a, RID_A, "delivered")).status_code
        == 200
    )
    assert (
        telnyx_call(call, "delivery-report", telnyx_status(id_b, "delivery_failed")).status_code
        == 200
    )
    assert providers.dataverse.calls == [
        notification(DEFINITION_ID, RID_A, id_a, SENDER, "Delivered"),
        notification(DEFINITION_B[layout], RID_B, id_b, EU_SENDER, "NotDelivered"),
    ]
    # Answers repeated from the one ledger, nothing sent again.
    assert send_both(call, layout) == (id_a, id_b)
    assert len(providers.vonage.posts) == len(providers.telnyx.posts) == 1


def test_a_report_for_one_providers_message_on_the_others_route_is_not_forwarded(
    call: Call, providers: Providers
) -> None:
    id_a, id_b = send_both(call)
    ledger = get_runtime().ledger
    before = {rid: ledger.get(rid) for rid in (RID_A, RID_B)}

    # Genuinely signed by Vonage, but naming the request Telnyx sent: acknowledged, ignored.
    crossed = vonage_call(call, "delivery-report", vonage_status(id_b, RID_B, "rejected"))
    assert crossed.status_code == 200
    # Telnyx names Vonage's message id: no Telnyx send of that id is recorded.
    unknown = telnyx_call(call, "delivery-report", telnyx_status(id_a, "delivery_failed"))
    assert unknown.status_code == 503  # Telnyx may deliver it again; it stays unknown
    # A Telnyx signature on Vonage's route is no Vonage signature.
    forged = telnyx_call(
        call, "delivery-report", telnyx_status(id_a, "delivery_failed"), provider="vonage"
    )
    assert forged.status_code == 401

    assert providers.dataverse.calls == []
    assert {rid: ledger.get(rid) for rid in (RID_A, RID_B)} == before
    # The genuine reports are still the first final ones.
    assert telnyx_call(call, "delivery-report", telnyx_status(id_b, "delivered")).status_code == 200
    assert (
        vonage_call(call, "delivery-report", vonage_status(id_a, RID_A, "delivered")).status_code
        == 200
    )
    assert providers.dataverse.calls == [
        notification(OTHER_DEFINITION_ID, RID_B, id_b, EU_SENDER, "Delivered"),
        notification(DEFINITION_ID, RID_A, id_a, SENDER, "Delivered"),
    ]


def test_replies_are_addressed_by_what_their_own_provider_sent(
    call: Call, providers: Providers
) -> None:
    send_both(call)
    assert (
        vonage_call(call, "inbound", vonage_reply(SENDER_E164, "vonage-reply-1")).status_code == 200
    )
    assert (
        telnyx_call(call, "inbound", telnyx_reply(EU_SENDER_E164, "telnyx-reply-1")).status_code
        == 200
    )
    # Through Telnyx to a number only Vonage has sent from: Vonage's sends do not address
    # it; the channel definition routed to Telnyx does, and our number stays E.164.
    assert (
        telnyx_call(call, "inbound", telnyx_reply(SENDER_E164, "telnyx-reply-2")).status_code == 200
    )
    assert providers.dataverse.calls == [
        reply(DEFINITION_ID, SENDER),
        reply(OTHER_DEFINITION_ID, EU_SENDER),
        reply(OTHER_DEFINITION_ID, SENDER_E164),
    ]


def test_a_retry_after_a_route_change_is_sent_only_through_the_first_provider(
    call: Call, configure: Configure, providers: Providers
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    providers.vonage.slow(5.0)  # Vonage takes message A, its answer comes too late
    first = call("outbound", payload(RequestId=RID_A))
    assert first.status_code == 503, first.get_body()
    # The operator moves the definition to Telnyx; the process restarts with the same ledger.
    configure(CHANNEL_ROUTES=json.dumps({DEFINITION_ID: "telnyx"}))
    assert get_runtime().settings.routes.provider_for(DEFINITION_ID, SENDER) == "telnyx"

    retry = call("outbound", payload(RequestId=RID_A))
    assert retry.status_code == 200, retry.get_body()
    assert answer_json(retry)["MessageId"] == providers.vonage.message_uuid(2)
    assert providers.telnyx.posts == []
    assert [post.json["client_ref"] for post in providers.vonage.posts] == [RID_A, RID_A]
    # A new RequestId for that definition takes the new route.
    moved = send(call, RID_B, DEFINITION_ID, SENDER, RECIPIENT)
    assert moved["MessageId"] == providers.telnyx.message_id(1)


def test_a_retry_whose_first_provider_is_no_longer_configured_is_refused_not_rerouted(
    call: Call, configure: Configure, providers: Providers
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="1", CHANNEL_AMBIGUOUS_GRACE_SECONDS="0")
    providers.vonage.slow(5.0)
    assert call("outbound", payload(RequestId=RID_A)).status_code == 503
    # Vonage is dropped altogether: Telnyx is the only provider now.
    configure(CHANNEL_PROVIDER="telnyx", CHANNEL_ROUTES="", VONAGE_APPLICATION_ID="")
    refused = call("outbound", payload(RequestId=RID_A))
    assert refused.status_code == 503
    problems = answer_json(refused)["problems"]
    assert problems[0].startswith("this RequestId was first sent through vonage")
    assert "VONAGE_APPLICATION_ID is not set (provider vonage)" in problems
    assert providers.telnyx.posts == []
    # This attempt sent nothing; the first one may have: still in doubt, still Vonage's.
    record = get_runtime().ledger.get(RID_A)
    assert record is not None
    assert (record.state, record.provider, record.attempts) == ("ambiguous", "vonage", 1)
    # With Vonage back, the retry finishes there.
    configure(VONAGE_APPLICATION_ID=VONAGE_APPLICATION_ID)
    retry = call("outbound", payload(RequestId=RID_A))
    assert retry.status_code == 200, retry.get_body()
    assert answer_json(retry)["MessageId"] == providers.vonage.message_uuid(2)
    assert providers.telnyx.posts == []
