"""DataverseClient with the real azure-identity against a fake token endpoint and Web API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from azure.identity import DefaultAzureCredential
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from channel.budget import Budget
from channel.contracts import DeliveryNotification, InboundMessage
from channel.dataverse import DataverseClient, DataverseUnavailable
from channel.identity import TokenSource
from tests.data import DEFINITION_ID, RECIPIENT, SENDER, TEXT

ORGANIZATION_ID = "7d2f4e3a-1b2c-4d5e-8f90-123456789abc"
IDENTITY_SECRET = "identity-header-secret"


class FakeIdentity:
    """The App Service managed-identity endpoint: hands out one-hour tokens, counts them."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.requests: list[Request] = []
        self.tokens = 0
        server.expect_request("/msi/token", method="GET").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.requests.append(request)
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_SECRET:
            return Response("bad header", status=400)
        self.tokens += 1
        body = {
            "access_token": f"token-{self.tokens}",
            "expires_on": str(int(time.time()) + 3600),
            "resource": request.args["resource"],
            "token_type": "Bearer",
        }
        return Response(json.dumps(body), content_type="application/json")


@pytest.fixture(scope="session")
def identity_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def identity(
    identity_server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeIdentity]:
    server = identity_server
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.url_for("/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_SECRET)
    yield FakeIdentity(server)
    server.clear()


class FakeDataverse:
    """A Dataverse Web API that checks the token, URL, headers and exact body of each call."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.url = server.url_for("/").rstrip("/")
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.script: list[Response] = []
        self._lock = threading.Lock()
        for action in ("msdyn_D365ChannelsNotification", "msdyn_D365ChannelsInbound"):
            server.expect_request(f"/api/data/v9.2/{action}", method="POST").respond_with_handler(
                self.handle
            )
        server.expect_request("/api/data/v9.2/WhoAmI", method="GET").respond_with_json(
            {"BusinessUnitId": "b", "UserId": "u", "OrganizationId": ORGANIZATION_ID}
        )

    def handle(self, request: Request) -> Response:
        assert request.headers["Authorization"].startswith("Bearer token-")
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
        assert request.headers["Accept"] == "application/json"
        assert request.headers["OData-MaxVersion"] == "4.0"
        assert request.headers["OData-Version"] == "4.0"
        with self._lock:
            self.calls.append((request.path.rsplit("/", 1)[1], json.loads(request.data)))
            if self.script:
                return self.script.pop(0)
        return Response(status=204)


@pytest.fixture
def dataverse(httpserver: HTTPServer) -> FakeDataverse:
    return FakeDataverse(httpserver)


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
    ((action, body),) = dataverse.calls
    assert action == "msdyn_D365ChannelsNotification"
    assert list(body) == ["notificationPayLoad"]
    assert isinstance(body["notificationPayLoad"], str)
    assert json.loads(body["notificationPayLoad"]) == {
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
    ((action, body),) = dataverse.calls
    assert action == "msdyn_D365ChannelsInbound"
    assert json.loads(body["inboundPayLoad"]) == {
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
    who = [r for r, _ in dataverse.server.log if r.path.endswith("/WhoAmI")]
    assert len(who) == 1


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
    assert identity.tokens == 1


def test_429_waits_out_retry_after(identity: FakeIdentity, dataverse: FakeDataverse) -> None:
    dataverse.script.append(Response(status=429, headers={"Retry-After": "1"}))
    session = requests.Session()
    client = DataverseClient(dataverse.url, TokenSource(DefaultAzureCredential()), session=session)
    started = time.monotonic()
    client.notify(notification(), Budget(5))
    elapsed = time.monotonic() - started
    session.close()
    assert len(dataverse.calls) == 2
    assert elapsed >= 1.0


def test_persistent_503_gives_up_within_the_budget(
    client: DataverseClient, dataverse: FakeDataverse
) -> None:
    dataverse.script.extend(Response(status=503) for _ in range(10))
    with pytest.raises(DataverseUnavailable):
        client.notify(notification(), Budget(2))
    assert 1 < len(dataverse.calls) <= 5


def test_dataverse_errors_name_the_code(client: DataverseClient, dataverse: FakeDataverse) -> None:
    error = {"error": {"code": "0x80040220", "message": "Principal user is missing prvReadX"}}
    dataverse.script.append(Response(json.dumps(error), status=403))
    with pytest.raises(DataverseUnavailable) as caught:
        client.notify(notification(), Budget(5))
    assert caught.value.code == "0x80040220"
    assert "0x80040220" in caught.value.detail
    assert len(dataverse.calls) == 1


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
