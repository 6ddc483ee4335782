"""CHANNEL_TRACE=console: the local host prints each call's spans as a compact tree."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tests.data import RECIPIENT, SENSITIVE, TEXT, payload
from tests.test_devhost import TIMEOUT, free_port, wait_until
from tools import trace_console

REPO = Path(__file__).resolve().parents[1]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
KEY = "trace-console-test-key"
DURATION = re.compile(r" \d+\.\d ms")
# The local host's module (it may move to tools/devhost).
DEVHOST = "tools.devhost" if importlib.util.find_spec("tools.devhost") else "channel.devhost"


def test_a_call_is_printed_once_its_outermost_span_ends() -> None:
    written: list[str] = []
    tracer = trace_console.console_provider(written.append).get_tracer("test")
    incoming = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT})
    token = context.attach(incoming)
    try:
        with tracer.start_as_current_span("outbound", attributes={"sms.provider": "twilio"}):
            with tracer.start_as_current_span("ledger begin") as ledger:
                ledger.set_attribute("sms.ledger.round_trips", 1)
            with tracer.start_as_current_span("provider.send") as first:
                first.set_attributes({"sms.attempt": 1, "http.response.status_code": 503})
                first.set_status(trace.StatusCode.ERROR)
            with tracer.start_as_current_span("provider.send") as second:
                second.set_attributes({"sms.attempt": 2, "http.response.status_code": 201})
            assert written == []  # nothing until the call's own span ends
    finally:
        context.detach(token)
    (block,) = written
    assert [DURATION.sub("", line) for line in block.splitlines()] == [
        f"trace {TRACE_ID}",  # the caller's trace, continued
        "  outbound provider=twilio",
        "    ledger begin ledger.round_trips=1",
        "    provider.send attempt=1 status=503 ERROR",
        "    provider.send attempt=2 status=201",
    ]


def test_unset_installs_nothing_and_an_unknown_value_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    assert trace_console.install({}) is None
    said = trace_console.install({"CHANNEL_TRACE": "json"})
    assert said is not None
    assert "CHANNEL_TRACE=json is not known" in said
    assert installed == []
    assert trace_console.install({"CHANNEL_TRACE": "Console"}) is not None
    assert len(installed) == 1


def test_the_local_host_prints_a_requests_path(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CHANNEL_TRACE": "console",
        "CHANNEL_DEVHOST_KEY": KEY,
        "CHANNEL_LEDGER_PATH": str(tmp_path / "ledger.sqlite3"),
        "CHANNEL_PROVIDER": "loopback",
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", DEVHOST, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with requests.Session() as http:

            def healthy() -> bool:
                assert process.poll() is None, "the local host exited early"
                try:
                    return http.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_until(healthy, "the local host to answer")
            sent = http.post(
                f"{url}/outbound",
                json=payload(),
                headers={"x-functions-key": KEY, "traceparent": TRACEPARENT},
                timeout=TIMEOUT,
            )
            assert sent.json()["Status"] == "Sent"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode("utf-8")
    assert "devhost: CHANNEL_TRACE=console" in text
    lines = text.splitlines()
    start = lines.index(f"trace {TRACE_ID}")  # the plugin's trace, continued
    outbound = lines[start + 1]
    assert outbound.startswith("  outbound ")
    assert "provider=loopback" in outbound
    assert f"request_id={payload()['RequestId']}" in outbound
    assert "outcome=Sent" in outbound
    assert "status=200" in outbound
    children = [line for line in lines[start + 2 :] if line.startswith("    ")]
    names = [DURATION.split(line)[0].strip() for line in children]
    assert "ledger begin" in names
    assert "provider.send" in names
    for secret in (RECIPIENT, TEXT, *SENSITIVE):
        assert secret not in text
