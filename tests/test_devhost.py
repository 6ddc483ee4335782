"""The local host (channel.devhost) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import azure.functions as func
import pytest
import requests
from werkzeug.serving import make_server

from channel.devhost import (
    DevHost,
    QuietRequestHandler,
    build_wsgi_app,
    describe,
    load_local_settings,
    read_host_settings,
    route_to_rule,
)
from tests.conftest import Configure
from tests.data import payload

KEY = "devhost-test-key-0001"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


@contextmanager
def serving(host: DevHost) -> Iterator[str]:
    """Serve ``host`` on an ephemeral port of 127.0.0.1 in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, host, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="devhost-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def channel_url() -> Iterator[str]:
    """The channel's own app (function_app.py), served once for the module."""
    # A fresh copy of function_app: azure-functions lets each FunctionApp index its
    # functions only once (a second get_functions() raises), and conftest's ``functions``
    # fixture indexes the shared ``function_app.app``.
    spec = importlib.util.spec_from_file_location("function_app_devhost", REPO / "function_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app: func.FunctionApp = module.app

    host = build_wsgi_app(app, key=KEY, route_prefix="api", max_concurrent=64, max_outstanding=256)
    with serving(host) as url:
        yield url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def api(configure: Configure, channel_url: str) -> str:
    """The channel's base URL with ``/api``, the app running with zero configuration."""
    return channel_url + "/api"


# --- the channel's app ------------------------------------------------------------------


def test_outbound_with_key_header(api: str, http: requests.Session) -> None:
    response = http.post(
        f"{api}/outbound", json=payload(), headers={"x-functions-key": KEY}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["Status"] == "Sent"
    assert answer["RequestId"] == payload()["RequestId"]


def test_outbound_with_code_query(api: str, http: requests.Session) -> None:
    response = http.post(f"{api}/outbound", params={"code": KEY}, json=payload(), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["Status"] == "Sent"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"x-functions-key": "wrong"}, {}),
        ({}, {"code": "wrong"}),
        ({"x-functions-key": ""}, {"code": ""}),
        ({"x-functions-key": KEY[:-1]}, {}),
        # The header wins over the query parameter, as in the host.
        ({"x-functions-key": "wrong"}, {"code": KEY}),
    ],
    ids=["none", "wrong-header", "wrong-code", "empty", "prefix", "wrong-header-right-code"],
)
def test_outbound_refuses_missing_or_wrong_key(
    api: str, http: requests.Session, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = http.post(
        f"{api}/outbound", json=payload(), headers=headers, params=params, timeout=TIMEOUT
    )
    assert response.status_code == 401
    assert response.content == b""


def test_wrong_method_is_405_with_allow(api: str, http: requests.Session) -> None:
    response = http.get(f"{api}/outbound", headers={"x-functions-key": KEY}, timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    report = http.get(f"{api}/delivery-report/twilio", timeout=TIMEOUT)
    assert report.status_code == 405
    assert report.headers["Allow"] == "OPTIONS, POST"


def test_head_is_not_added_to_get(api: str, http: requests.Session) -> None:
    response = http.head(f"{api}/health", timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"


@pytest.mark.parametrize("path", ["/api/nope", "/outbound", "/api", "/api/delivery-report"])
def test_unknown_path_is_404(
    channel_url: str, configure: Configure, http: requests.Session, path: str
) -> None:
    response = http.post(channel_url + path, headers={"x-functions-key": KEY}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.content == b""


def test_health_needs_no_key(api: str, http: requests.Session) -> None:
    response = http.get(f"{api}/health", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["status"] == "ok"
    assert response.json()["provider"] == "loopback"


def test_delivery_report_reaches_the_function(api: str, http: requests.Session) -> None:
    # Zero configuration has no Twilio auth token: the function says so itself.
    known = http.post(f"{api}/delivery-report/twilio", data=b"x=1", timeout=TIMEOUT)
    assert known.status_code == 503
    assert known.headers["Content-Type"] == "application/problem+json"
    assert "TWILIO_AUTH_TOKEN is not set" in known.json()["detail"]
    # A 404 from the function (problem JSON naming the provider), not from the host.
    unknown = http.post(f"{api}/delivery-report/unknown", data=b"x=1", timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"] == "application/problem+json"
    assert "unknown" in unknown.json()["detail"]


def test_request_log_has_no_query_string(
    api: str, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    http.post(
        f"{api}/outbound", params={"code": KEY, "secret": "s3"}, json=payload(), timeout=TIMEOUT
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "channel.devhost"]
    assert any(line.startswith("POST /api/outbound 200 ") for line in lines), lines
    assert all(line.endswith("ms") for line in lines), lines
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in messages
    assert "secret" not in messages


# --- a tiny app: request building, throttling, unserved functions ----------------------


class Tiny:
    """A small FunctionApp whose ``slow`` route waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
        app = self.app

        @app.route(route="echo/{name}/{n:int}", methods=["PUT"])
        def echo(req: func.HttpRequest) -> func.HttpResponse:
            seen = {
                "method": req.method,
                "url": req.url,
                "params": dict(req.params),
                "route_params": dict(req.route_params),
                "header": req.headers.get("x-test"),
                "body": req.get_body().decode("utf-8"),
            }
            return func.HttpResponse(json.dumps(seen), status_code=201, mimetype="application/json")

        @app.route(route="text", methods=["GET"])
        def text(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("héllo", headers={"x-answer": "42"})

        @app.route(route="later", methods=["GET"])
        async def later(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse(b"\x00\x01", mimetype="application/octet-stream")

        @app.route(route="boom", methods=["GET"])
        def boom(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("boom")

        @app.route(route="admin-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
        def admin_only(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("ok")

        @app.route(route="slow", methods=["GET"])
        def slow(req: func.HttpRequest) -> func.HttpResponse:
            with self.lock:
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                assert self.gate.wait(TIMEOUT), "the test never opened the gate"
                return func.HttpResponse("done")
            finally:
                with self.lock:
                    self.running -= 1

        @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
        def forward_pending(timer: func.TimerRequest) -> None:
            """Never called by this host (yet)."""


def test_request_and_response_are_built_like_the_host() -> None:
    tiny = Tiny()
    host = build_wsgi_app(tiny.app, key=KEY, route_prefix="/v1/")
    with serving(host) as url, requests.Session() as http:
        response = http.put(
            f"{url}/v1/echo/ana%20b/-12",
            params=[("a", "1"), ("a", "2"), ("b", "x y")],
            data=b"body",
            headers={"x-test": "yes"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 201
        seen = response.json()
        assert seen["method"] == "PUT"
        assert seen["url"] == f"{url}/v1/echo/ana%20b/-12?a=1&a=2&b=x+y"
        assert seen["params"] == {"a": "1,2", "b": "x y"}
        assert seen["route_params"] == {"name": "ana b", "n": "-12"}
        assert seen["header"] == "yes"
        assert seen["body"] == "body"
        assert http.put(f"{url}/v1/echo/ana/twelve", timeout=TIMEOUT).status_code == 404

        text = http.get(f"{url}/v1/text", timeout=TIMEOUT)
        assert text.status_code == 200
        assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert text.headers["x-answer"] == "42"
        assert text.text == "héllo"

        later = http.get(f"{url}/v1/later", timeout=TIMEOUT)
        assert later.headers["Content-Type"] == "application/octet-stream"
        assert later.content == b"\x00\x01"

        boom = http.get(f"{url}/v1/boom", timeout=TIMEOUT)
        assert boom.status_code == 500
        assert boom.content == b""

        assert http.get(f"{url}/v1/admin-only", timeout=TIMEOUT).status_code == 401
        keyed = http.get(f"{url}/v1/admin-only", params={"code": KEY}, timeout=TIMEOUT)
        assert keyed.status_code == 200


def test_overload_queues_then_answers_429() -> None:
    tiny = Tiny()
    host = build_wsgi_app(tiny.app, key=KEY, max_concurrent=1, max_outstanding=2)
    answers: list[int] = []

    def call(url: str) -> None:
        answers.append(requests.get(f"{url}/api/slow", timeout=TIMEOUT).status_code)

    with serving(host) as url:
        callers = [threading.Thread(target=call, args=(url,)) for _ in range(2)]
        try:
            callers[0].start()
            wait_until(lambda: tiny.running == 1, "the first call to run")
            callers[1].start()
            wait_until(lambda: host.throttle.outstanding == 2, "the second call to queue")
            assert tiny.running == 1  # queued, not running
            refused = requests.get(f"{url}/api/slow", timeout=TIMEOUT)
            assert refused.status_code == 429
            assert refused.content == b""
        finally:
            tiny.gate.set()
            for caller in callers:
                caller.join(TIMEOUT)
        assert answers == [200, 200]
        assert tiny.most_running == 1
        assert host.throttle.outstanding == 0
        assert requests.get(f"{url}/api/slow", timeout=TIMEOUT).status_code == 200


def test_throttle_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="maxOutstandingRequests"):
        build_wsgi_app(Tiny().app, key=KEY, max_outstanding=0)
    with pytest.raises(ValueError, match="key"):
        build_wsgi_app(Tiny().app, key="")


def test_timer_functions_are_listed_not_served() -> None:
    host = build_wsgi_app(Tiny().app, key=KEY)
    (timer,) = host.index.unserved
    assert (timer.name, timer.trigger) == ("forward_pending", "timer")
    assert timer.binding["schedule"] == "0 */5 * * * *"
    lines = describe(host.index, "http://127.0.0.1:7071", key_hint="K")
    assert "forward_pending: not served (timer)" in lines
    assert "echo: PUT http://127.0.0.1:7071/api/echo/{name}/{n:int}" in lines
    assert "admin_only: GET http://127.0.0.1:7071/api/admin-only (key: K)" in lines


# --- pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "template", "rule"),
    [
        ("api", "outbound", "/api/outbound"),
        ("api", "delivery-report/{provider}", "/api/delivery-report/<provider>"),
        ("", "health", "/health"),
        ("/api/", "/a/{id:int}/{flag:bool}", "/api/a/<az_int:id>/<az_bool:flag>"),
        ("api", "files/{*rest}", "/api/files/<path:rest>"),
        ("", "", "/"),
    ],
)
def test_route_templates(prefix: str, template: str, rule: str) -> None:
    assert route_to_rule(prefix, template) == rule


@pytest.mark.parametrize(
    "template", ["a/{id?}", "a/{id=1}", "a/{id:min(1)}", "a/{id:regex(x)}", "a/<b>", "a/{1x}"]
)
def test_unsupported_route_templates(template: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        route_to_rule("api", template)


def test_host_json_settings(tmp_path: Path) -> None:
    repo = read_host_settings(REPO / "host.json")
    assert (repo.route_prefix, repo.max_concurrent, repo.max_outstanding) == ("api", 64, 256)
    absent = read_host_settings(tmp_path / "host.json")
    assert (absent.route_prefix, absent.max_concurrent, absent.max_outstanding) == ("api", -1, -1)
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": ""}}}')
    assert read_host_settings(tmp_path / "host.json").route_prefix == ""


def test_local_settings_fill_only_unset_names(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(
        json.dumps({"IsEncrypted": False, "Values": {"A": "from-file", "B": "from-file", "N": 3}})
    )
    environ = {"A": "already"}
    assert load_local_settings(path, environ) == ["B", "N"]
    assert environ == {"A": "already", "B": "from-file", "N": "3"}
    assert load_local_settings(tmp_path / "absent.json", environ) == []
    path.write_text(json.dumps({"IsEncrypted": True, "Values": {"A": "x"}}))
    with pytest.raises(SystemExit, match="encrypted"):
        load_local_settings(path, environ)


# --- python -m channel.devhost ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_module_serves_and_stops_on_sigterm(configure: Configure, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CHANNEL_DEVHOST_KEY": KEY,
        "CHANNEL_LEDGER_PATH": str(tmp_path / "devhost-ledger.sqlite3"),
        "CHANNEL_PROVIDER": "loopback",  # whatever a developer's local.settings.json says
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "channel.devhost", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with requests.Session() as http:

            def healthy() -> bool:
                assert process.poll() is None, "devhost exited early"
                try:
                    return http.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_until(healthy, "the devhost to answer")
            sent = http.post(
                f"{url}/outbound", json=payload(), headers={"x-functions-key": KEY}, timeout=TIMEOUT
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["Status"] == "Sent"
            assert http.post(f"{url}/outbound", json=payload(), timeout=TIMEOUT).status_code == 401
            keyed = http.post(
                f"{url}/outbound", params={"code": KEY}, json=payload(), timeout=TIMEOUT
            )
            assert keyed.status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode("utf-8")
    assert process.returncode == 0, text
    banner = f"outbound: POST http://127.0.0.1:{port}/api/outbound (key: $CHANNEL_DEVHOST_KEY)"
    assert banner in text
    assert f"health: GET http://127.0.0.1:{port}/api/health\n" in text
    assert "POST /api/outbound 200 " in text
    assert "POST /api/outbound 401 " in text
    assert "devhost: stopped" in text
    assert KEY not in text
    assert "code=" not in text
    logging.getLogger(__name__).info("devhost output checked (%d lines)", text.count("\n"))
