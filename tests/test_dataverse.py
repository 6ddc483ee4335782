"""DataverseClient with the real azure-identity against a fake token endpoint and Web API."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from azure.identity import DefaultAzureCredential
from werkzeug import Response

from channel.budget import Budget
from channel.contracts import DeliveryNotification, InboundMessage
from channel.dataverse import DataverseClient
from channel.errors import DataverseUnavailable
from channel.identity import TokenSource
from tests.data import DEFINITION_ID, RECIPIENT, REPLY_TEXT, SENDER, TEXT
from tests.fakes import ORGANIZATION_ID, FakeDataverse, FakeIdentity


@pytest.fixture
def client(identity: FakeIdentity, dataverse: FakeDataverse) -> Iterator[DataverseClient]:
    session = requests.Session()
    credential = DefaultAzureCredential()
    yield DataverseClient(
        dataverse.url, TokenSource(credential), session=session, sleep=lambda _: None
    )
    credential.close()
    session.close()


def notification() -> DeliveryNotification:
    return DeliveryNotification(
        ChannelDefinitionId=DEFINITION_ID,
        RequestId="r-1",
        MessageId="SM1",
        From=SENDER,
        OrganizationId=ORGANIZATION_ID,
        Status="Delivered",
    )


def test_notification_is_one_call_with_the_payload_as_a_json_string(
    client: DataverseClient, dataverse: FakeDataverse, identity: FakeIdentity
) -> None:
    client.notify(notification(), Budget(5))
    ((action, sent),) = dataverse.calls
    assert dataverse.rejected == []
    assert action == "msdyn_D365ChannelsNotification"
    assert sent == {
        "ChannelDefinitionId": DEFINITION_ID,
        "RequestId": "r-1",
        "MessageId": "SM1",
        "From": SENDER,
        "OrganizationId": ORGANIZATION_ID,
        "Status": "Delivered",
    }
    (token_request,) = identity.requests
    assert token_request.args["resource"] == dataverse.url  # scope without "/.default"
    assert token_request.args["api-version"] == "2019-08-01"


def test_inbound_is_one_call_with_the_payload_as_a_json_string(
    client: DataverseClient, dataverse: FakeDataverse
) -> None:
    message = InboundMessage(
        ChannelDefinitionId=DEFINITION_ID,
        To=SENDER,
        From=RECIPIENT,
        OrganizationId=ORGANIZATION_ID,
        Message={"text": TEXT},
    )
    client.deliver_inbound(message, Budget(5))
    ((action, sent),) = dataverse.calls
    assert dataverse.rejected == []
    assert action == "msdyn_D365ChannelsInbound"
    assert sent == {
        "ChannelDefinitionId": DEFINITION_ID,
        "To": SENDER,
        "From": RECIPIENT,
        "OrganizationId": ORGANIZATION_ID,
        "Message": {"text": TEXT},
    }


def test_organization_id_is_read_once_from_who_am_i(
    client: DataverseClient, dataverse: FakeDataverse
) -> None:
    assert client.organization_id(Budget(5)) == ORGANIZATION_ID
    assert client.organization_id(Budget(5)) == ORGANIZATION_ID
    assert dataverse.whoami == 1
    assert dataverse.rejected == []


def test_a_thousand_calls_need_one_token(
    client: DataverseClient, dataverse: FakeDataverse, identity: FakeIdentity
) -> None:
    def notify_many() -> None:
        for _ in range(125):
            client.notify(notification(), Budget(10))

    threads = [threading.Thread(target=notify_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(dataverse.calls) == 1000
    assert dataverse.rejected == []
    assert identity.tokens == 1


def test_429_waits_out_retry_after(identity: FakeIdentity, dataverse: FakeDataverse) -> None:
    dataverse.script.append(Response(status=429, headers={"Retry-After": "1"}))
    session = requests.Session()
    client = DataverseClient(dataverse.url, TokenSource(DefaultAzureCredential()), session=session)
    started = time.monotonic()
    client.notify(notification(), Budget(5))
    elapsed = time.monotonic() - started
    session.close()
    posts = [r for r, _ in dataverse.server.log if r.method == "POST"]
    assert len(posts) == 2
    assert len(dataverse.calls) == 1
    assert elapsed >= 1.0


def test_persistent_503_gives_up_within_the_budget(
    client: DataverseClient, dataverse: FakeDataverse
) -> None:
    dataverse.script.extend(Response(status=503) for _ in range(10))
    with pytest.raises(DataverseUnavailable):
        client.notify(notification(), Budget(2))
    posts = [r for r, _ in dataverse.server.log if r.method == "POST"]
    assert dataverse.calls == []
    assert 1 < len(posts) <= 5


def test_dataverse_errors_name_the_code(client: DataverseClient, dataverse: FakeDataverse) -> None:
    error = {"error": {"code": "0x80040220", "message": "Principal user is missing prvReadX"}}
    dataverse.script.append(Response(json.dumps(error), status=403))
    with pytest.raises(DataverseUnavailable) as caught:
        client.notify(notification(), Budget(5))
    assert caught.value.code == "0x80040220"
    assert "0x80040220" in caught.value.detail
    posts = [r for r, _ in dataverse.server.log if r.method == "POST"]
    assert len(posts) == 1


def test_dataverse_error_messages_are_logged_as_their_code_not_their_text(
    client: DataverseClient, dataverse: FakeDataverse, caplog: pytest.LogCaptureFixture
) -> None:
    # Dataverse's messages may quote what it was given: a customer's number, a reply.
    message = (
        f"Principal user is missing prvCreatemsdyn_inbound privilege; "
        f"cannot create the message '{REPLY_TEXT}' from {RECIPIENT}"
    )
    error = {"error": {"code": "0x80040220", "message": message}}
    dataverse.script.append(Response(json.dumps(error), status=403))
    with pytest.raises(DataverseUnavailable):
        client.notify(notification(), Budget(5))
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = logged.getMessage()
    assert "HTTP 403" in text
    assert "0x80040220" in text
    assert "prvCreatemsdyn_inbound" in text  # what an operator must grant
    # (the autouse check also fails the test if the number or the text is logged)
    assert REPLY_TEXT not in text
    assert RECIPIENT not in text


def test_unreachable_dataverse_is_retried_then_reported(identity: FakeIdentity) -> None:
    with socket_closed() as url:
        session = requests.Session()
        client = DataverseClient(
            url, TokenSource(DefaultAzureCredential()), session=session, sleep=lambda _: None
        )
        with pytest.raises(DataverseUnavailable, match="could not be reached"):
            client.notify(notification(), Budget(3))
        session.close()


class socket_closed:  # noqa: N801 - used as a context manager
    """A URL on 127.0.0.1 where nothing listens."""

    def __enter__(self) -> str:
        import socket

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *args: object) -> None:
        return None
