"""The C# outbound plugin (plugin/src), compiled with mono against a stand-in of the SDK.

The harness (tests/plugin/Harness.cs) runs the plugin once as Dataverse would: an execution
context with ``payload``, a CorrelationId and the step's two configuration strings. It
posts to the real app served by ``python -m tools.devhost`` with a fake Twilio behind it,
or to a pytest-httpserver standing in for the app where the test needs to see the request
or to make the app slow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.azurite import free_port
from tests.data import SENSITIVE, TWILIO_SID, TWILIO_TOKEN, UNICODE_TEXT, payload
from tests.fakes import FakeTwilio, hold_posts, twilio_error
from tests.mono import HARNESS, PLUGIN_SOURCES, ROOT, STAND_IN, find_mono

KEY = "plugin-test-function-key-0001"
CORRELATION_ID = uuid.UUID("5c6f8e2a-93d4-4b1e-8a7f-0c2d4e6f8a9b")
RUN_SECONDS = 60.0
_PREFIXES = ("CHANNEL_", "TWILIO_", "ACS_", "DATAVERSE_", "AZURE_", "IDENTITY_", "MSI_", "WEBSITE_")


@dataclass(frozen=True)
class Outcome:
    """What one plugin run gave: exit code, ``response`` bytes (on success) and stderr."""

    code: int
    response: bytes | None
    stderr: str

    @property
    def error(self) -> str:
        """The exception line the harness printed."""
        lines = [line for line in self.stderr.splitlines() if not line.startswith("trace: ")]
        return "\n".join(lines)


@dataclass(frozen=True)
class Plugin:
    """The compiled harness and how to run it."""

    mono: str
    exe: Path
    work: Path

    def start(
        self,
        url: str,
        body: bytes | None,
        *,
        key: str | None = KEY,
        timeout: float | None = None,
        correlation_id: uuid.UUID = CORRELATION_ID,
    ) -> tuple[subprocess.Popen[str], Path]:
        """Start one run in the background; returns the process and its response file."""
        run = self.work / uuid.uuid4().hex
        run.mkdir()
        payload_file = run / "payload.json"
        if body is not None:
            payload_file.write_bytes(body)
        env = {name: value for name, value in os.environ.items() if not name.startswith("HARNESS")}
        if key is not None:
            env["HARNESS_SECURE_CONFIGURATION"] = key
        args = [
            self.mono,
            str(self.exe),
            url,
            str(correlation_id),
            "default" if timeout is None else str(timeout),
            str(payload_file) if body is not None else "-",
            str(run / "response.json"),
        ]
        process = subprocess.Popen(  # noqa: S603 - mono running our own harness
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        return process, run / "response.json"

    def run(self, url: str, body: bytes | None, **options: object) -> Outcome:
        """Run the plugin once and wait for it."""
        process, response = self.start(url, body, **options)  # type: ignore[arg-type]
        return finish(process, response)


def finish(process: subprocess.Popen[str], response: Path) -> Outcome:
    """Wait for a run started with ``Plugin.start``."""
    try:
        _, stderr = process.communicate(timeout=RUN_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    written = response.read_bytes() if response.exists() else None
    return Outcome(process.returncode, written, stderr)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    mono = find_mono()
    work = tmp_path_factory.mktemp("plugin")
    exe = work / "harness.exe"
    mono.compile([*PLUGIN_SOURCES, STAND_IN, HARNESS], exe, target="exe")
    return Plugin(mono.mono, exe, work)


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_twilio(twilio_server: HTTPServer) -> Iterator[FakeTwilio]:
    yield FakeTwilio(twilio_server)
    twilio_server.clear()


@pytest.fixture(scope="module")
def app_url(twilio_server: HTTPServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The channel's app under ``python -m tools.devhost``, sending through the fake Twilio."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(_PREFIXES)}
    env.update(
        CHANNEL_DEVHOST_KEY=KEY,
        CHANNEL_LEDGER_PATH=str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3"),
        CHANNEL_PROVIDER="twilio",
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
        TWILIO_ACCOUNT_SID=TWILIO_SID,
        TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TWILIO_BASE_URL=twilio_server.url_for("/").rstrip("/"),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path_factory.mktemp("devhost") / "devhost.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "tools.devhost", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while True:
            assert process.poll() is None, f"devhost exited: {log.read_text()}"
            try:
                if requests.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() >= deadline:  # a hang, not a speed check
                pytest.fail("the devhost did not answer")
            time.sleep(0.05)
        yield f"{base}/outbound"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def body_of(**overrides: object) -> bytes:
    """A payload as Dataverse passes it: a JSON string, here with a fresh RequestId."""
    fields = {"RequestId": str(uuid.uuid4()), **overrides}
    return json.dumps(payload(**fields), ensure_ascii=False).encode("utf-8")


def replay(url: str, body: bytes) -> requests.Response:
    """The same request again, straight to the app: it answers with the stored bytes."""
    return requests.post(
        url,
        data=body,
        headers={"x-functions-key": KEY, "content-type": "application/json"},
        timeout=30,
    )


def assert_nothing_sensitive(outcome: Outcome) -> None:
    leaked = [value for value in [*SENSITIVE, KEY] if value in outcome.stderr]
    assert not leaked, f"the plugin's output shows {leaked}: {outcome.stderr}"


# --- against the real app ---------------------------------------------------------------


def test_sent_answer_is_copied_into_response_byte_for_byte(
    plugin: Plugin, app_url: str, fake_twilio: FakeTwilio
) -> None:
    fake_twilio.accept()
    body = body_of(Message={"text": UNICODE_TEXT})
    outcome = plugin.run(app_url, body)
    assert outcome.code == 0, outcome.stderr
    assert outcome.response is not None
    answer = json.loads(outcome.response)
    assert answer["Status"] == "Sent"
    assert answer["MessageId"].startswith("SM")
    assert len(fake_twilio.posts()) == 1
    assert fake_twilio.posts()[0].form["Body"] == UNICODE_TEXT  # the text arrived intact
    stored = replay(app_url, body)
    assert stored.status_code == 200
    assert outcome.response == stored.content
    assert_nothing_sensitive(outcome)


def test_not_sent_answer_is_copied_into_response_byte_for_byte(
    plugin: Plugin, app_url: str, fake_twilio: FakeTwilio
) -> None:
    fake_twilio.always(400, twilio_error(21211))  # invalid 'To' number
    body = body_of()
    outcome = plugin.run(app_url, body)
    assert outcome.code == 0, outcome.stderr
    assert outcome.response is not None
    assert json.loads(outcome.response)["Status"] == "NotSent"
    assert outcome.response == replay(app_url, body).content
    assert_nothing_sensitive(outcome)


def test_a_503_from_the_app_is_an_exception_not_a_response(
    plugin: Plugin, app_url: str, fake_twilio: FakeTwilio
) -> None:
    fake_twilio.always(500, {"code": 20500, "message": "Internal Server Error"})
    outcome = plugin.run(app_url, body_of())
    assert outcome.code == 2, outcome.stderr
    assert outcome.response is None
    assert outcome.error.startswith(
        "InvalidPluginExecutionException: The SMS channel answered HTTP 503"
    )
    assert_nothing_sensitive(outcome)


def test_a_409_while_the_same_request_is_sending_is_an_exception(
    plugin: Plugin, app_url: str, fake_twilio: FakeTwilio
) -> None:
    held = hold_posts(fake_twilio, RUN_SECONDS)
    body = body_of()
    first, first_response = plugin.start(app_url, body)
    try:
        assert held.arrived.wait(RUN_SECONDS), "the first send never reached Twilio"
        second = plugin.run(app_url, body)
    finally:
        held.release.set()
        done = finish(first, first_response)
    assert second.code == 2, second.stderr
    assert second.response is None
    assert "answered HTTP 409" in second.error
    assert done.code == 0, done.stderr
    assert done.response is not None
    assert json.loads(done.response)["Status"] == "Sent"


def test_a_wrong_function_key_is_an_exception(plugin: Plugin, app_url: str) -> None:
    outcome = plugin.run(app_url, body_of(), key="not-the-key")
    assert outcome.code == 2
    assert "answered HTTP 401: check the function key" in outcome.error


# --- against a stand-in for the app -------------------------------------------------------


def test_the_request_carries_the_payload_unchanged_the_key_and_a_traceparent(
    plugin: Plugin, httpserver: HTTPServer
) -> None:
    seen: list[Request] = []
    answer = '{"Status":"Sent","Note":"Grüße 👋"}'.encode()

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response(answer, status=200, content_type="application/json")

    httpserver.expect_request("/api/outbound", method="POST").respond_with_handler(handler)
    body = body_of(Message={"text": UNICODE_TEXT})
    outcome = plugin.run(httpserver.url_for("/api/outbound"), body)
    assert outcome.code == 0, outcome.stderr
    assert outcome.response == answer
    (request,) = seen
    assert request.get_data() == body
    assert request.headers["x-functions-key"] == KEY
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert request.headers["Connection"].lower() == "close"
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", request.headers["traceparent"])
    assert match, request.headers["traceparent"]
    assert match.group(1) == CORRELATION_ID.hex
    assert match.group(2) != "0" * 16
    assert_nothing_sensitive(outcome)
    assert re.fullmatch(r"trace: SMS channel localhost answered 200 in \d+ ms\n", outcome.stderr)


def test_each_call_gets_its_own_span_id(plugin: Plugin, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/outbound").respond_with_data("{}")
    for _ in range(2):
        assert plugin.run(httpserver.url_for("/api/outbound"), body_of()).code == 0
    parents = [request.headers["traceparent"] for request, _ in httpserver.log]
    assert len(parents) == 2
    assert parents[0][:36] == parents[1][:36]  # same trace: the CorrelationId
    assert parents[0] != parents[1]


@pytest.mark.parametrize("status", [409, 429, 500, 502, 503, 404, 400])
def test_any_answer_but_2xx_is_an_exception(
    plugin: Plugin, httpserver: HTTPServer, status: int
) -> None:
    body = json.dumps({"Status": "NotSent"})  # even a body that looks like an answer
    httpserver.expect_request("/api/outbound").respond_with_data(
        body, status=status, content_type="application/json"
    )
    outcome = plugin.run(httpserver.url_for("/api/outbound"), body_of())
    assert outcome.code == 2, outcome.stderr
    assert outcome.response is None
    assert f"answered HTTP {status}" in outcome.error


def test_a_slow_app_is_a_timeout_exception(plugin: Plugin, httpserver: HTTPServer) -> None:
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(RUN_SECONDS)
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/api/outbound").respond_with_handler(slow)
    try:
        outcome = plugin.run(httpserver.url_for("/api/outbound"), body_of(), timeout=1)
    finally:
        release.set()
    assert outcome.code == 2, outcome.stderr
    assert outcome.response is None
    assert outcome.error == (
        "InvalidPluginExecutionException: The SMS channel did not answer within 1 s; "
        "the operation can be retried."
    )


def test_an_unreachable_app_is_an_exception(plugin: Plugin) -> None:
    outcome = plugin.run(f"http://127.0.0.1:{free_port()}/api/outbound", body_of())
    assert outcome.code == 2
    assert "The SMS channel could not be reached" in outcome.error


@pytest.mark.parametrize(
    ("url", "key", "problem"),
    [
        ("", KEY, "unsecure configuration must be the absolute URL"),
        ("/api/outbound", KEY, "unsecure configuration must be the absolute URL"),
        ("ftp://example.com/api/outbound", KEY, "unsecure configuration must be the absolute URL"),
        ("https://sms.contoso.example/api/outbound", None, "secure configuration must hold"),
        ("https://sms.contoso.example/api/outbound", "  ", "secure configuration must hold"),
    ],
)
def test_a_wrong_configuration_is_named(
    plugin: Plugin, url: str, key: str | None, problem: str
) -> None:
    outcome = plugin.run(url, body_of(), key=key)
    assert outcome.code == 2
    assert problem in outcome.error


def test_a_missing_payload_is_named(plugin: Plugin, httpserver: HTTPServer) -> None:
    outcome = plugin.run(httpserver.url_for("/api/outbound"), None)
    assert outcome.code == 2
    assert "input parameter 'payload' is missing" in outcome.error
    assert not httpserver.log


def test_the_plugin_alone_compiles_as_a_library_without_warnings(
    plugin: Plugin, tmp_path: Path
) -> None:
    find_mono().compile(
        [*PLUGIN_SOURCES, STAND_IN], tmp_path / "SmsChannel.Plugin.dll", target="library"
    )
    assert (tmp_path / "SmsChannel.Plugin.dll").stat().st_size > 0
