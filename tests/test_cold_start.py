"""Cold start: a fresh process imports and builds only what the call it answers uses.

Each test runs a fresh interpreter (as a new Functions worker is) and looks at what it
imported and built, never at how long it took (bench/outbound.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from channel.providers import PROVIDER_IDS
from tests.conftest import Configure
from tests.data import payload
from tests.fakes import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent

PREAMBLE = """
import importlib.metadata, json, sys
scanned = []  # the entry-point groups looked up (a scan of every installed distribution)
_entry_points = importlib.metadata.entry_points
def _recorded(**params):
    scanned.append(params.get("group"))
    return _entry_points(**params)
importlib.metadata.entry_points = _recorded
import azure.functions as func
from function_app import app
functions = {fn.get_function_name(): fn.get_user_function() for fn in app.get_functions()}

def outbound(body):
    request = func.HttpRequest(
        method="POST", url="http://localhost:7071/api/outbound",
        headers={"content-type": "application/json"}, params={}, route_params={},
        body=body.encode(),
    )
    response = functions["outbound"](request)
    return response.status_code, json.loads(response.get_body())

def report(**extra):
    from channel import contracts
    built = sorted(
        name for name in ("OutboundPayload", "OutboundResponse", "DeliveryNotification",
                          "InboundMessage")
        if getattr(contracts, name).__pydantic_complete__
    )
    print(json.dumps({"modules": sorted(sys.modules), "built": built, "scanned": scanned, **extra}))
"""

NOT_ON_THE_OUTBOUND_PATH = (
    "opentelemetry",  # the API is imported by whoever installs a provider, not by us
    "azure.identity",
    "azure.data.tables",
    "channel.forwarding",
    "channel.webhooks",
    "channel.dataverse",
    "channel.ledger.outbox",
    "channel.drafts",
    "channel.providers.eventgrid",
    *(f"channel.providers.{other}" for other in PROVIDER_IDS if other != "twilio"),
)
"""Packages and modules an outbound call through Twilio never needs: every other provider."""


def fresh_process(script: str, *args: str, **env: str) -> dict[str, Any]:
    """Run ``PREAMBLE + script`` in a new interpreter with this environment; its report.

    ``env`` adds to the environment. PYDANTIC_DISABLE_PLUGINS is not passed on unless
    given there: this process has the app's default, and the new one must show its own.
    """
    inherited = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", PREAMBLE + script, *args],
        cwd=ROOT,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """The modules among ``modules`` that are one of ``names`` or inside one of them."""
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_loading_the_app_builds_no_contract_and_imports_no_provider(
    configure: Configure,
) -> None:
    configure(CHANNEL_PROVIDER="twilio")
    report = fresh_process("report()")
    assert report["built"] == []
    assert loaded(report["modules"], NOT_ON_THE_OUTBOUND_PATH) == []
    assert loaded(report["modules"], ("channel.providers.twilio", "sqlite3")) == []


def test_an_outbound_call_uses_its_provider_and_its_contracts_only(twilio: FakeTwilio) -> None:
    twilio.accept()
    report = fresh_process(
        "status, answer = outbound(sys.argv[1]); report(status=status, answer=answer)",
        json.dumps(payload()),
    )
    assert (report["status"], report["answer"]["Status"]) == (200, "Sent")
    assert len(twilio.posts()) == 1
    # Validators are built for the models the call used, when it used them.
    assert report["built"] == ["OutboundPayload", "OutboundResponse"]
    assert loaded(report["modules"], NOT_ON_THE_OUTBOUND_PATH) == []
    assert "channel.providers.twilio" in report["modules"]
    # Neither pydantic's plugin discovery nor anything else scanned the installed packages.
    assert report["scanned"] == []


def test_pydantic_plugins_are_looked_for_when_the_operator_asks(twilio: FakeTwilio) -> None:
    # PYDANTIC_DISABLE_PLUGINS naming no plugin: every plugin is wanted, so pydantic
    # looks for them as it would without the app's default.
    twilio.accept()
    report = fresh_process(
        "status, answer = outbound(sys.argv[1]); report(status=status)",
        json.dumps(payload()),
        PYDANTIC_DISABLE_PLUGINS="none",
    )
    assert report["status"] == 200
    assert report["scanned"] == ["pydantic"]


def test_telemetry_installed_after_the_app_was_loaded_is_recorded(configure: Configure) -> None:
    # As in Azure when the worker turns on its exporter after indexing: the API comes
    # with the provider, and the app records from the next call on.
    configure()
    script = """
loaded_before = any(m.startswith("opentelemetry") for m in sys.modules)
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
tracing = TracerProvider()
tracing.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(tracing)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
status, answer = outbound(sys.argv[1])
spans = sorted(span.name for span in exporter.get_finished_spans())
points = sorted(
    metric.name
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
)
report(status=status, loaded_before=loaded_before, spans=spans, metrics=points)
"""
    report = fresh_process(script, json.dumps(payload()))
    assert report["status"] == 200
    assert report["loaded_before"] is False
    assert "outbound" in report["spans"]
    assert "sms.outbound.messages" in report["metrics"]
