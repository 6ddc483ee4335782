"""The app on the Table Storage ledger (a real Azurite): one RequestId is sent at most once,
by concurrent calls in one process and by two processes sharing the table."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import azure.functions as func
import pytest
from werkzeug import Request, Response

from channel.errors import NotConfigured
from channel.ledger.table import TableStore
from channel.runtime import get_runtime
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json
from tests.data import DEFINITION_ID, TWILIO_SID, TWILIO_TOKEN, payload
from tests.fakes import FakeTwilio
from tests.relay import Relay

ROOT = Path(__file__).resolve().parents[1]
SENT = {
    "ChannelDefinitionId": DEFINITION_ID,
    "MessageId": f"SM{1:032x}",
    "RequestId": payload()["RequestId"],
    "Status": "Sent",
}
CALLS_PER_PROCESS = 25


@pytest.fixture
def on_table(configure: Configure, azurite: Azurite, table_name: str) -> str:
    """The app configured with the Table ledger on a fresh Azurite table."""
    configure(
        CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table_name
    )
    return table_name


def table_store() -> TableStore:
    store = get_runtime().ledger.store
    assert isinstance(store, TableStore)
    return store


def test_the_runtime_builds_the_table_store(twilio: FakeTwilio, on_table: str) -> None:
    store = table_store()
    assert store.table_name == on_table
    assert get_runtime().ledger.kind == "table"


def test_the_runtime_reaches_a_storage_url_with_the_managed_identity(
    configure: Configure,
) -> None:
    configure(CHANNEL_STORAGE_URL="https://contoso.table.core.windows.net")
    store = table_store()  # built without any network call
    assert store.url.startswith("https://contoso.table.core.windows.net")
    assert store.table_name == "smschannel"
    assert store._service.credential is get_runtime().tokens.credential


def test_a_bad_table_name_is_a_configuration_problem(configure: Configure) -> None:
    configure(CHANNEL_STORAGE_CONNECTION="UseDevelopmentStorage=true", CHANNEL_STORAGE_TABLE="a-b")
    with pytest.raises(NotConfigured, match="table name"):
        get_runtime().ledger  # noqa: B018


def test_fifty_concurrent_calls_with_one_request_id_send_once(
    call: Call, twilio: FakeTwilio, on_table: str
) -> None:
    twilio.accept(delay=0.3)  # long enough for the concurrent calls to overlap
    start = threading.Barrier(50)

    def concurrent_call(_: int) -> func.HttpResponse:
        start.wait(timeout=10)
        return call("outbound", payload())

    with ThreadPoolExecutor(max_workers=50) as pool:
        concurrent = list(pool.map(concurrent_call, range(50)))
    later = call("outbound", payload())

    assert len(twilio.posts()) == 1
    statuses = [r.status_code for r in concurrent]
    assert set(statuses) <= {200, 409}
    assert statuses.count(200) >= 1
    assert later.status_code == 200
    assert answer_json(later) == SENT
    for response in concurrent:
        if response.status_code == 200:
            assert answer_json(response) == SENT


def test_round_trips_of_a_fresh_send(
    call: Call, twilio: FakeTwilio, on_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What one outbound send costs in Table Storage requests (the table already made)."""
    twilio.accept()
    store = table_store()
    assert store.get("request:warm-up") is None  # creates the table: not part of a send
    before = store.round_trips
    assert call("outbound", payload()).status_code == 200
    first = store.round_trips - before
    before = store.round_trips
    assert call("outbound", payload(RequestId="second")).status_code == 200
    second = store.round_trips - before
    before = store.round_trips
    assert call("outbound", payload(RequestId="second")).status_code == 200
    replay = store.round_trips - before
    print(f"Table round trips: first send {first}, next send {second}, replay {replay}")
    # claim (insert) + answer (replace) + our number's Dataverse form (insert, once per
    # process); a replay is the failed insert and a read.
    assert first <= 3
    # The tables client's request logging (headers, at INFO) stays out of the log.
    assert not [r.name for r in caplog.records if r.name.startswith(("azure", "channel.ledger"))]
    assert second <= 2
    assert replay <= 2


def test_two_processes_sharing_the_table_send_once(
    twilio: FakeTwilio, azurite: Azurite, table_name: str
) -> None:
    twilio.accept(delay=0.3)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHANNEL_", "TWILIO_", "ACS_", "DATAVERSE_", "WEBSITE_"))
    }
    env.update(
        CHANNEL_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=TWILIO_SID,
        TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TWILIO_BASE_URL=twilio.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
        CHANNEL_STORAGE_CONNECTION=azurite.connection_string,
        CHANNEL_STORAGE_TABLE=table_name,
        PYTHONPATH=str(ROOT),
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "from tests.test_table_ledger import child; child()"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in children:  # both imported the app and reached the table
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in children:  # let both go at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in children]
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
                process.communicate()
    results = []
    for process, (out, err) in zip(children, outputs, strict=True):
        assert process.returncode == 0, err
        own = json.loads(out)
        assert 409 in [status for status, _ in own]  # each process met the claim in flight
        results += own
    assert len(twilio.posts()) == 1
    statuses = [status for status, _ in results]
    assert len(statuses) == 2 * CALLS_PER_PROCESS
    assert set(statuses) <= {200, 409}
    assert all(body == SENT for status, body in results if status == 200)
    assert statuses.count(200) >= 1
    store = TableStore(table=table_name, connection_string=azurite.connection_string)
    try:
        record = store.get(f"request:{SENT['RequestId']}")
    finally:
        store.close()
    assert record is not None
    assert (record.data["state"], record.data["message_id"]) == ("done", SENT["MessageId"])


def child() -> None:
    """One process of the two: the app, its calls released together on a "go" line."""
    from function_app import app

    functions = {fn.get_function_name(): fn.get_user_function() for fn in app.get_functions()}
    get_runtime().ledger.store.get("warm-up")  # the table exists, a connection is open
    print("ready", flush=True)
    sys.stdin.readline()
    body = json.dumps(payload()).encode()

    def post(_: int) -> tuple[int, object]:
        request = func.HttpRequest(
            method="POST",
            url="http://localhost:7071/api/outbound",
            headers={"content-type": "application/json"},
            params={},
            route_params={},
            body=body,
        )
        response = functions["outbound"](request)
        return response.status_code, json.loads(response.get_body())

    with ThreadPoolExecutor(max_workers=CALLS_PER_PROCESS) as pool:
        results = list(pool.map(post, range(CALLS_PER_PROCESS)))
    get_runtime().close()
    print(json.dumps(results), flush=True)


def test_a_table_that_never_answers_is_503_within_the_budget(
    call: Call, twilio: FakeTwilio, configure: Configure
) -> None:
    """Each try is cut to what is left of the call's budget, and none starts once it is spent."""
    twilio.accept()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nobody ever reads them
        port = silent.getsockname()[1]
        configure(
            CHANNEL_STORAGE_CONNECTION=Azurite(port, started_here=False).connection_string,
            CHANNEL_TIME_BUDGET_SECONDS="1",
        )
        store = table_store()
        response = call("outbound", payload())
    assert response.status_code == 503
    assert answer_json(response)["type"].endswith(":ledger-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    # One try (creating the table), its read timeout cut to the budget's 1 s from the
    # store's 5 s (see test_ledger for that decision on its own), and no retry after it.
    assert store.round_trips == 1
    assert twilio.posts() == []


def test_table_storage_resetting_connections_after_the_provider_accepted_sends_once(
    call: Call, twilio: FakeTwilio, configure: Configure, azurite: Azurite, table_name: str
) -> None:
    """The real fault: Azurite's connections reset (through a relay) while Twilio answers."""
    relay = Relay(azurite.port)
    configure(
        CHANNEL_STORAGE_CONNECTION=Azurite(relay.port, started_here=False).connection_string,
        CHANNEL_STORAGE_TABLE=table_name,
        CHANNEL_TIME_BUDGET_SECONDS="2",
    )

    def accept_then_cut(request: Request) -> Response:
        relay.cut()
        return Response(json.dumps({"sid": SENT["MessageId"]}), status=201)

    twilio.server.expect_request(twilio.path, method="POST").respond_with_handler(accept_then_cut)
    try:
        first = call("outbound", payload())
        assert first.status_code == 503
        assert answer_json(first)["type"].endswith(":ledger-unavailable")
        assert call("outbound", payload()).status_code == 503  # still down: no second POST
        relay.restore()
        response = call("outbound", payload())
        assert response.status_code == 200
        assert answer_json(response) == SENT  # the first call's MessageId
    finally:
        relay.close()
    assert len(twilio.posts()) == 1
    store = TableStore(table=table_name, connection_string=azurite.connection_string)
    try:
        record = store.get(f"request:{SENT['RequestId']}")
    finally:
        store.close()
    assert record is not None
    assert (record.data["state"], record.data["message_id"]) == ("done", SENT["MessageId"])
