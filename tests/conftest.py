"""Shared fixtures: a clean environment per test, the app's functions, a log-leak check."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from pytest_httpserver import HTTPServer

from channel.runtime import reset_runtime
from tests.data import SENSITIVE, TWILIO_SID, TWILIO_TOKEN, payload
from tests.fakes import IDENTITY_SECRET, FakeDataverse, FakeIdentity, FakeTwilio

_PREFIXES = ("CHANNEL_", "TWILIO_", "ACS_", "DATAVERSE_", "AZURE_", "IDENTITY_", "MSI_", "WEBSITE_")
_PROVIDER_PREFIXES = ("VONAGE_", "TELNYX_", "SINCH_", "PLIVO_")

Configure = Callable[..., None]
Call = Callable[..., func.HttpResponse]


@pytest.fixture(autouse=True)
def no_sensitive_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test whose INFO-or-above log records show a phone number, text or secret."""
    caplog.set_level(logging.INFO)
    yield
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            if record.levelno < logging.INFO:
                continue
            text = record.getMessage()
            if record.exc_info:
                text += logging.Formatter().formatException(record.exc_info)
            leaked = [value for value in SENSITIVE if value in text]
            assert not leaked, f"log record {record.name}:{record.lineno} leaks {leaked}: {text}"


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Configure]:
    """Start from an empty channel environment; ``configure(NAME=value, ...)`` sets more."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES + _PROVIDER_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHANNEL_LEDGER_PATH", str(tmp_path / "ledger.sqlite3"))
    reset_runtime()

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        reset_runtime()

    yield apply
    reset_runtime()


@pytest.fixture(scope="session")
def functions() -> dict[str, Callable[[func.HttpRequest], func.HttpResponse]]:
    """The app's functions by name, as the host indexes them (indexed once per session)."""
    from function_app import app

    return {str(fn.get_function_name()): fn.get_user_function() for fn in app.get_functions()}


@pytest.fixture
def call(
    configure: Configure, functions: dict[str, Callable[[func.HttpRequest], func.HttpResponse]]
) -> Call:
    """Invoke a function the way the host does, with an ``azure.functions.HttpRequest``."""

    def invoke(
        name: str,
        body: Any = b"",
        *,
        method: str = "POST",
        route_params: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
    ) -> func.HttpResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost:7071/api/{path or name}",
            headers={"content-type": "application/json", **(headers or {})},
            params=params or {},
            route_params=route_params or {},
            body=raw,
        )
        return functions[name](request)

    return invoke


@pytest.fixture
def twilio(configure: Configure, httpserver: HTTPServer) -> FakeTwilio:
    """A fake Twilio on 127.0.0.1 and the app configured to send through it."""
    fake = FakeTwilio(httpserver)
    configure(
        CHANNEL_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=TWILIO_SID,
        TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TWILIO_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    return fake


def answer_json(response: func.HttpResponse) -> Any:
    """The JSON body of a function's answer."""
    return json.loads(response.get_body())


def send(call: Call, rid: str | None = None) -> str:
    """Send one message through ``outbound`` (it must be Sent); its provider message id.

    ``rid`` defaults to the RequestId of ``tests.data.payload()``.
    """
    response = call("outbound", payload() if rid is None else payload(RequestId=rid))
    assert response.status_code == 200, response.get_body()
    message_id: str = answer_json(response)["MessageId"]
    return message_id


@pytest.fixture(scope="session")
def identity_server() -> Iterator[HTTPServer]:
    """A second local server, for the managed-identity endpoint."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dataverse_server() -> Iterator[HTTPServer]:
    """A third local server, for the Dataverse Web API."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def identity(
    identity_server: HTTPServer, monkeypatch: pytest.MonkeyPatch, configure: Configure
) -> Iterator[FakeIdentity]:
    """The App Service managed-identity protocol on 127.0.0.1, for the real azure-identity."""
    fake = FakeIdentity(identity_server)
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity_server.url_for("/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_SECRET)
    yield fake
    identity_server.clear()


@pytest.fixture
def dataverse(
    dataverse_server: HTTPServer, identity: FakeIdentity, configure: Configure
) -> Iterator[FakeDataverse]:
    """A fake Dataverse and the app configured to call it with managed identity."""
    fake = FakeDataverse(dataverse_server, identity)
    configure(DATAVERSE_URL=fake.url)
    yield fake
    dataverse_server.clear()


# --- Azurite (Table Storage emulator) for the Table ledger tests ---
# (kept in one block at the end, imports included, so it merges apart from the rest)

from tests.azurite import Azurite, fresh_table_name, table_service  # noqa: E402


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Table service: one already on 127.0.0.1:10002, or one started for the session.

    Tests that use it are skipped when neither is possible (see tests/azurite.py).
    """
    with table_service() as service:
        yield service


@pytest.fixture
def table_name(azurite: Azurite) -> Iterator[str]:
    """A table of this test's own in Azurite (not created yet), dropped at the end."""
    name = fresh_table_name()
    yield name
    azurite.drop_table(name)
