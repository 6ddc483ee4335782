"""Telemetry (SPEC "Telemetry"): spans, links, attributes and metric points of real calls.

The OpenTelemetry SDK's in-memory span exporter and metric reader stand where the
Functions worker's Azure Monitor exporter stands in Azure; the app records through the
API only. Every test scans every attribute it got for the suite's numbers, texts and
secrets.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug import Response

from channel import telemetry
from channel.forwarding import forward_pending
from channel.ledger.outbox import MAX_FORWARD_ATTEMPTS
from channel.runtime import get_runtime
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    INVALID_RECIPIENT,
    RECIPIENT,
    REPLY_TEXT,
    SENSITIVE,
    TELNYX_API_KEY,
    TEXT,
    TWILIO_TOKEN,
    payload,
)
from tests.fake_telnyx import PUBLIC_KEY
from tests.fakes import FakeDataverse, FakeTwilio
from tests.test_forwarding import AFTER_ANY_BACKOFF, REFUSAL, Clock
from tests.test_several_providers import (  # noqa: F401 - fixtures, used by name
    ledger_kind,
    providers,
    send_both,
    telnyx_server,
    vonage_server,
)
from tests.test_table_ledger import on_table, table_store  # noqa: F401 - on_table: a fixture
from tests.test_webhooks_telnyx import event, hook
from tests.twilio_hooks import (
    REPORT_URL,
    assert_acknowledged,
    inbound_form,
    reply,
    report,
    send,
    sid,
    status_form,
    webhook,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SECRETS = [*SENSITIVE, TWILIO_TOKEN]


@dataclass(frozen=True)
class Point:
    """One metric data point: its metric's name, attributes and value (sum or count)."""

    metric: str
    attributes: dict[str, Any]
    value: float


class Sink:
    """What the app recorded since the test began."""

    def __init__(
        self,
        exporter: InMemorySpanExporter,
        reader: InMemoryMetricReader,
        log_exporter: InMemoryLogRecordExporter,
    ) -> None:
        self.exporter = exporter
        self.reader = reader
        self.log_exporter = log_exporter
        self._points: list[Point] = []

    def logs(self) -> list[ReadableLogRecord]:
        """Every log record exported (INFO and above, as the worker's handler takes them)."""
        return list(self.log_exporter.get_finished_logs())

    def log(self, starting: str) -> ReadableLogRecord:
        """The one exported log record whose text starts with ``starting``."""
        found = [r for r in self.logs() if str(r.log_record.body).startswith(starting)]
        assert len(found) == 1, [str(r.log_record.body) for r in self.logs()]
        return found[0]

    def spans(self) -> list[ReadableSpan]:
        """Every span ended so far, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """The ended spans called ``name``."""
        return [span for span in self.spans() if span.name == name]

    def points(self) -> list[Point]:
        """Every metric point recorded so far (delta temporality: collected once each)."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        self._points.append(Point(metric.name, dict(point.attributes or {}), value))
        return list(self._points)

    def of(self, metric: str) -> list[Point]:
        """The points of ``metric``."""
        return [point for point in self.points() if point.metric == metric]


@pytest.fixture(scope="session")
def _logs() -> tuple[LoggerProvider, InMemoryLogRecordExporter]:
    """The SDK's logs, with which the worker's distro exports log records (and their
    attributes, as custom dimensions)."""
    provider = LoggerProvider()
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


@pytest.fixture(scope="session")
def _sdk() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """The SDK installed once per process, as the worker installs it once in Azure."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(
        preferred_temporality={
            kind: delta
            for kind in (
                Counter,
                UpDownCounter,
                Histogram,
                ObservableCounter,
                ObservableUpDownCounter,
                ObservableGauge,
            )
        }
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader


@pytest.fixture
def sink(
    _sdk: tuple[InMemorySpanExporter, InMemoryMetricReader],
    _logs: tuple[LoggerProvider, InMemoryLogRecordExporter],
) -> Iterator[Sink]:
    """What this test records; at the end, no attribute may hold a number, text or secret."""
    exporter, reader = _sdk
    exporter.clear()
    reader.get_metrics_data()  # drop what earlier tests recorded
    log_provider, log_exporter = _logs
    log_exporter.clear()
    # The handler configure_azure_monitor() puts on the root logger, at INFO (for this
    # test only: the rest of the suite logs as before).
    handler = LoggingHandler(level=logging.INFO, logger_provider=log_provider)
    logging.getLogger().addHandler(handler)
    recorded = Sink(exporter, reader, log_exporter)
    try:
        yield recorded
    finally:
        logging.getLogger().removeHandler(handler)
    assert_nothing_sensitive(recorded.spans(), recorded.points(), recorded.logs())
    assert_declared(recorded.spans(), recorded.points())


def assert_declared(spans: Sequence[ReadableSpan], points: Sequence[Point]) -> None:
    """Every metric and attribute recorded is one channel/telemetry.py declares.

    The workbook and the alert rules are held to the same declarations, so what they
    query is what the app records.
    """
    undeclared = [p.metric for p in points if p.metric not in telemetry.METRICS]
    assert undeclared == []
    stray = [
        (p.metric, key)
        for p in points
        for key in p.attributes
        if key not in telemetry.METRICS[p.metric]
    ]
    assert stray == []
    keys = {key for span in spans for key in (span.attributes or {})}
    assert keys <= telemetry.ATTRIBUTES


def assert_nothing_sensitive(
    spans: Sequence[ReadableSpan], points: Sequence[Point], logs: Sequence[ReadableLogRecord] = ()
) -> None:
    """No attribute of any span, span event, metric point or log record, nor the text of a
    log record at INFO or above, holds a test secret."""
    seen: list[tuple[str, str, object]] = []
    for record in logs:
        where = str(record.log_record.body)[:40]
        seen += [(where, "body", record.log_record.body)]
        seen += [(where, key, value) for key, value in (record.log_record.attributes or {}).items()]
    for span in spans:
        seen += [(span.name, key, value) for key, value in (span.attributes or {}).items()]
        for happened in span.events:
            seen += [
                (happened.name, key, value) for key, value in (happened.attributes or {}).items()
            ]
        seen += [(span.name, "status", span.status.description or "")]
    for point in points:
        seen += [(point.metric, key, value) for key, value in point.attributes.items()]
    assert seen, "nothing was recorded: the scan would prove nothing"
    leaks = [(where, key, value) for where, key, value in seen for s in SECRETS if s in str(value)]
    assert leaks == []


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    """The one span of a list."""
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    """Whether ``child`` is a direct child of ``parent`` in the same trace."""
    assert child.parent is not None
    assert child.context is not None
    assert parent.context is not None
    same_parent: bool = child.parent.span_id == parent.context.span_id
    return same_parent and child.context.trace_id == parent.context.trace_id


# --- outbound -----------------------------------------------------------------------------


def test_outbound_call_records_its_span_provider_attempt_and_outcome_counter(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    twilio.accept()
    response = call("outbound", payload(), headers={"traceparent": TRACEPARENT})
    assert answer_json(response)["Status"] == "Sent"

    outbound = only(sink.named("outbound"))
    assert outbound.context is not None
    assert outbound.parent is not None
    # The caller's traceparent (the plugin's, derived from Dataverse's CorrelationId).
    assert format(outbound.context.trace_id, "032x") == TRACE_ID
    assert format(outbound.parent.span_id, "016x") == PARENT_ID
    assert outbound.parent.is_remote
    assert dict(outbound.attributes or {}) == {
        "sms.provider": "twilio",
        "sms.request_id": payload()["RequestId"],
        "sms.channel_definition_id": DEFINITION_ID,
        "sms.outcome": "Sent",
        "sms.message_id": sid(1),
        "sms.segments": 1,
        "sms.encoding": "GSM-7",
        "http.response.status_code": 200,
    }
    attempt = only(sink.named("provider.send"))
    assert child_of(attempt, outbound)
    assert dict(attempt.attributes or {}) == {
        "sms.provider": "twilio",
        "sms.attempt": 1,
        "sms.outcome_class": "Accepted",
        "http.response.status_code": 201,
    }
    assert [(p.attributes, p.value) for p in sink.of("sms.outbound.messages")] == [
        (
            {
                "sms.provider": "twilio",
                "sms.outcome": "Sent",
                "sms.channel_definition_id": DEFINITION_ID,
            },
            1,
        )
    ]
    assert [(p.attributes, p.value) for p in sink.of("sms.provider.duration")] == [
        (dict(attempt.attributes or {}), 1)
    ]
    assert [(p.attributes, p.value) for p in sink.of("sms.outbound.segments")] == [
        ({"sms.provider": "twilio", "sms.encoding": "GSM-7"}, 1)  # one text of one segment
    ]
    # The ledger's work, each operation a child span with its storage round trips: the
    # claim (one insert), the answer (one replace), our number's Dataverse form (one insert).
    ledger = [s for s in sink.spans() if s.name.startswith("ledger ")]
    assert [(s.name, dict(s.attributes or {})) for s in ledger] == [
        (
            f"ledger {operation}",
            {
                "sms.ledger.operation": operation,
                "sms.ledger.kind": "embedded",
                "sms.ledger.round_trips": 1,
            },
        )
        for operation in ("begin", "complete", "remember_sender")
    ]
    assert all(child_of(span, outbound) for span in ledger)
    # Its log record names the request, provider and outcome as dimensions, not only in
    # its text, and belongs to the call's trace.
    sent = sink.log("request ").log_record
    assert {
        key: value for key, value in (sent.attributes or {}).items() if key.startswith("sms.")
    } == {
        "sms.provider": "twilio",
        "sms.request_id": payload()["RequestId"],
        "sms.channel_definition_id": DEFINITION_ID,
        "sms.outcome": "Sent",
        "sms.message_id": sid(1),
    }
    assert format(sent.trace_id or 0, "032x") == TRACE_ID


def test_a_repeated_request_id_is_counted_as_replayed(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    twilio.accept()
    first = call("outbound", payload())
    again = call("outbound", payload())
    assert again.get_body() == first.get_body()
    assert len(twilio.posts()) == 1
    points = sorted(
        (p.attributes.get("sms.replayed", False), p.attributes["sms.outcome"], p.value)
        for p in sink.of("sms.outbound.messages")
    )
    assert points == [(False, "Sent", 1), (True, "Sent", 1)]
    assert [s.attributes.get("sms.replayed") for s in sink.named("outbound")] == [None, True]  # type: ignore[union-attr]
    assert len(sink.named("provider.send")) == 1


def test_without_traceparent_each_call_starts_its_own_trace(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    twilio.accept()
    call("outbound", payload())
    call("outbound", payload(RequestId="1b6f0d2e-7c3a-4e59-8b12-6a0c9e4d3f21"))
    first, second = sink.named("outbound")
    assert first.parent is None
    assert second.parent is None
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id != second.context.trace_id


def test_a_span_already_active_is_joined_not_replaced_by_the_header(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    twilio.accept()
    tracer = trace.get_tracer("the-host")
    with tracer.start_as_current_span("host request") as host:
        call("outbound", payload(), headers={"traceparent": TRACEPARENT})
    outbound = only(sink.named("outbound"))
    assert outbound.parent is not None
    assert outbound.parent.span_id == host.get_span_context().span_id
    assert format(host.get_span_context().trace_id, "032x") != TRACE_ID


def test_not_sent_by_the_app_is_counted_without_a_provider_span(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    response = call("outbound", payload(To=INVALID_RECIPIENT))
    assert answer_json(response)["Status"] == "NotSent"
    assert only(sink.named("outbound")).attributes["sms.outcome"] == "NotSent"  # type: ignore[index]
    assert sink.named("provider.send") == []
    assert [
        (p.attributes["sms.outcome"], p.attributes["sms.outcome.reason"])
        for p in sink.of("sms.outbound.messages")
    ] == [("NotSent", "invalid_recipient")]
    assert sink.of("sms.outbound.segments") == []


def test_segments_over_the_limit_are_not_sent_and_recorded_with_their_count(
    call: Call, twilio: FakeTwilio, configure: Configure, sink: Sink
) -> None:
    configure(CHANNEL_MAX_SEGMENTS="1")
    response = call("outbound", payload(Message={"text": "\U0001f600" * 36}))
    assert answer_json(response)["Status"] == "NotSent"
    outbound = only(sink.named("outbound")).attributes
    assert outbound is not None
    assert (outbound["sms.segments"], outbound["sms.encoding"]) == (2, "UCS-2")
    assert outbound["sms.outcome.reason"] == "too_many_segments"
    assert sink.named("provider.send") == []
    assert sink.of("sms.outbound.segments") == []  # nothing billed


def test_a_503_is_recorded_with_its_kind(call: Call, configure: Configure, sink: Sink) -> None:
    configure(CHANNEL_PROVIDER="twilio")  # no credentials: not configured
    response = call("outbound", payload())
    assert response.status_code == 503
    outbound = only(sink.named("outbound"))
    assert outbound.attributes is not None
    assert outbound.attributes["sms.outcome"] == "not-configured"
    assert outbound.attributes["http.response.status_code"] == 503
    assert outbound.status.status_code is trace.StatusCode.ERROR
    assert [p.attributes for p in sink.of("sms.outbound.messages")] == [
        {"sms.provider": "twilio", "sms.outcome": "not-configured"}
    ]


def test_each_provider_attempt_is_a_span_with_its_http_status(
    call: Call, twilio: FakeTwilio, sink: Sink
) -> None:
    twilio.answer(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "0"})
    twilio.accept()
    assert answer_json(call("outbound", payload()))["Status"] == "Sent"
    attempts = sink.named("provider.send")
    assert [
        (s.attributes["sms.attempt"], s.attributes["sms.outcome_class"])  # type: ignore[index]
        for s in attempts
    ] == [(1, "Throttled"), (2, "Accepted")]
    assert [s.attributes["http.response.status_code"] for s in attempts] == [429, 201]  # type: ignore[index]
    assert attempts[0].status.status_code is trace.StatusCode.ERROR
    statuses = sorted(
        (p.attributes["sms.outcome_class"], p.attributes["http.response.status_code"])
        for p in sink.of("sms.provider.duration")
    )
    assert statuses == [("Accepted", 201), ("Throttled", 429)]


# --- delivery reports and replies ---------------------------------------------------------


def test_delivery_report_span_status_child_dataverse_calls_and_counter(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse, sink: Sink
) -> None:
    twilio.accept()
    sent = send(call, twilio)
    assert_acknowledged(report(call, sent, "delivered"))

    hook = only(sink.named("delivery_report"))
    assert hook.parent is None
    assert dict(hook.attributes or {}) == {
        "sms.provider": "twilio",
        "sms.outcome": "acknowledged",
        "http.response.status_code": 200,
    }
    verify = only(sink.named("webhook.verify"))
    assert child_of(verify, hook)
    assert dict(verify.attributes or {}) == {
        "sms.provider": "twilio",
        "sms.webhook.verification": "valid",
    }
    status = only(sink.named("delivery_report.status"))
    assert child_of(status, hook)
    assert dict(status.attributes or {}) == {
        "sms.provider": "twilio",
        "sms.report.status": "Delivered",
        "sms.message_id": sent.sid,
        "sms.request_id": sent.rid,
        "sms.channel_definition_id": DEFINITION_ID,
        "sms.report.outcome": "forwarded",
    }
    # The ledger's work for a final report: the request (from memory: this process
    # answered it, no round trip), the item and its marker (one transaction), then the
    # marker forwarded and the item removed (one transaction).
    ledger = [s for s in sink.spans() if s.name.startswith("ledger ") and child_of(s, status)]
    assert [(s.name, dict(s.attributes or {})) for s in ledger] == [
        (
            f"ledger {operation}",
            {
                "sms.ledger.operation": operation,
                "sms.ledger.kind": "embedded",
                "sms.ledger.round_trips": trips,
            },
        )
        for operation, trips in (("for_report", 0), ("put", 1), ("forwarded", 1))
    ]
    calls = [s for s in sink.spans() if s.name.startswith("dataverse ")]
    assert [s.name for s in calls] == [
        "dataverse WhoAmI",
        "dataverse msdyn_D365ChannelsNotification",
    ]
    for span in calls:
        assert child_of(span, status)
        assert span.attributes is not None
        assert span.attributes["sms.outcome_class"] == "ok"
        assert span.attributes["sms.attempt"] == 1
        assert span.attributes["http.response.status_code"] in (200, 204)
    assert [(p.attributes, p.value) for p in sink.of("sms.delivery_reports")] == [
        (
            {
                "sms.provider": "twilio",
                "sms.report.status": "Delivered",
                "sms.report.outcome": "forwarded",
                "sms.channel_definition_id": DEFINITION_ID,  # from the ledger's record
            },
            1,
        )
    ]
    actions = sorted(p.attributes["dataverse.action"] for p in sink.of("sms.dataverse.duration"))
    assert actions == ["WhoAmI", "msdyn_D365ChannelsNotification"]
    forwarded = sink.log(f"request {sent.rid}: Delivered").log_record.attributes or {}
    assert {key: value for key, value in forwarded.items() if key.startswith("sms.")} == {
        "sms.provider": "twilio",
        "sms.report.status": "Delivered",
        "sms.message_id": sent.sid,
        "sms.request_id": sent.rid,
        "sms.channel_definition_id": DEFINITION_ID,
    }


def test_repeated_and_intermediate_reports_are_counted_as_such(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse, sink: Sink
) -> None:
    twilio.accept()
    sent = send(call, twilio)
    for status in ("sent", "delivered", "delivered"):
        assert_acknowledged(report(call, sent, status))
    outcomes = sorted(
        (p.attributes["sms.report.status"], p.attributes["sms.report.outcome"], p.value)
        for p in sink.of("sms.delivery_reports")
    )
    assert outcomes == [
        ("Delivered", "forwarded", 1),
        ("Delivered", "repeated", 1),
        ("Pending", "intermediate", 1),
    ]


def test_reply_span_and_counter(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse, configure: Configure, sink: Sink
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    message = "SM" + "1b" * 16
    assert_acknowledged(reply(call, inbound_form(message, REPLY_TEXT)))
    assert_acknowledged(reply(call, inbound_form(message, REPLY_TEXT)))  # Twilio's retry

    first_call, second_call = sink.named("inbound")
    assert first_call.attributes is not None
    assert first_call.attributes["sms.outcome"] == "acknowledged"
    assert first_call.attributes["sms.provider"] == "twilio"
    first, second = sink.named("inbound.reply")
    assert child_of(first, first_call)
    assert child_of(second, second_call)
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["sms.message_id"] == message
    assert (first.attributes["sms.reply.outcome"], second.attributes["sms.reply.outcome"]) == (
        "forwarded",
        "repeated",
    )
    inbound_call = only(sink.named("dataverse msdyn_D365ChannelsInbound"))
    assert child_of(inbound_call, first)
    # Its log record names the provider and the message as dimensions; the customer's
    # number only masked, in the text.
    received = sink.log(f"inbound {message} from ").log_record
    assert {k: v for k, v in (received.attributes or {}).items() if k.startswith("sms.")} == {
        "sms.provider": "twilio",
        "sms.message_id": message,
    }
    assert sorted((p.attributes["sms.reply.outcome"], p.value) for p in sink.of("sms.replies")) == [
        ("forwarded", 1),
        ("repeated", 1),
    ]


def test_refused_webhooks_are_counted_by_reason(call: Call, twilio: FakeTwilio, sink: Sink) -> None:
    form = status_form(sid(1), "delivered")
    url = f"{REPORT_URL}?rid={payload()['RequestId']}"
    assert webhook(call, url, form, signature=None).status_code == 401
    assert webhook(call, url, form, signature="bm90IGl0").status_code == 403
    refusals = sorted(
        (p.attributes["sms.webhook.refusal"], p.value) for p in sink.of("sms.webhook.refusals")
    )
    assert refusals == [("forbidden", 1), ("unauthorized", 1)]
    assert {tuple(sorted(p.attributes)) for p in sink.of("sms.webhook.refusals")} == {
        ("sms.provider", "sms.webhook.refusal", "sms.webhook.route")
    }
    outcomes = [s.attributes["sms.outcome"] for s in sink.named("delivery_report")]  # type: ignore[index]
    assert outcomes == ["unauthorized", "forbidden"]
    checks = sink.named("webhook.verify")
    assert [s.attributes["sms.webhook.verification"] for s in checks] == outcomes  # type: ignore[index]
    assert [s.status.status_code for s in checks] == [trace.StatusCode.ERROR] * 2
    for check, call_span in zip(checks, sink.named("delivery_report"), strict=True):
        assert child_of(check, call_span)
    # Refused before the ledger was read or written.
    assert [s.name for s in sink.spans() if s.name.startswith("ledger ")] == []


def test_a_replayed_plivo_nonce_is_a_failed_verification(
    call: Call, configure: Configure, sink: Sink
) -> None:
    """The nonce a V2 signature rests on is checked in the ledger within webhook.verify."""
    from tests.fake_plivo import PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN, nonce
    from tests.test_webhooks_plivo import PUBLIC_URL, v2_status

    configure(
        CHANNEL_PROVIDER="plivo",
        PLIVO_AUTH_ID=PLIVO_AUTH_ID,
        PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN,
        CHANNEL_PUBLIC_URL=PUBLIC_URL,
    )
    once = nonce()
    assert v2_status(call, "some-message", "sent", once=once).status_code == 200
    assert v2_status(call, "some-message", "sent", once=once).status_code == 403
    checks = sink.named("webhook.verify")
    verdicts = [s.attributes["sms.webhook.verification"] for s in checks]  # type: ignore[index]
    assert verdicts == ["valid", "forbidden"]
    for check in checks:
        nonce_checks = [s for s in sink.named("ledger first_sight") if child_of(s, check)]
        assert len(nonce_checks) == 1


# --- the guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (telemetry.REQUEST_ID, RECIPIENT),  # a number where an id goes
        (telemetry.MESSAGE_ID, "14255550199"),
        (telemetry.MESSAGE_ID, "425-555-0199"),
        (telemetry.OUTCOME, TEXT),  # a text where a word goes
        (telemetry.PROVIDER, "+14255550199"),
        (telemetry.OUTCOME, "a" * 65),
        (telemetry.ATTEMPT, True),
        (telemetry.REPLAYED, "true"),
        (telemetry.ATTEMPT, -1),
        (telemetry.HTTP_STATUS, "200"),
        ("sms.text", "hello"),  # not a declared name
        ("twilio.auth_token", TWILIO_TOKEN),
        ("sms.to", RECIPIENT),
    ],
)
def test_guard_drops_what_is_not_of_its_declared_kind(name: str, value: object) -> None:
    assert telemetry.safe({name: value}) == {}


def test_guard_keeps_ids_words_and_counts() -> None:
    kept = {
        telemetry.REQUEST_ID: payload()["RequestId"],
        telemetry.MESSAGE_ID: sid(1),
        telemetry.CHANNEL_DEFINITION: DEFINITION_ID,
        telemetry.OUTCOME: "provider-unavailable",
        telemetry.OUTCOME_CLASS: "OutcomeUnknown",
        telemetry.ATTEMPT: 2,
        telemetry.RETRY_AFTER: 1.5,
    }
    assert telemetry.safe(kept) == kept


# --- wiring ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_host_json_selects_opentelemetry_mode() -> None:
    host = json.loads((REPO / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"


def test_loading_the_app_imports_no_opentelemetry() -> None:
    # The SDK and the Azure Monitor distro belong to whoever exports (the worker, when
    # PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY is on), and so does the API: whoever
    # installs a provider has imported it. Loading the app, and so every cold start with
    # telemetry off, pays for none of them (tests/test_cold_start.py: recording still
    # starts when a provider is installed after the app was loaded).
    script = (
        "import sys, function_app\n"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('opentelemetry', 'azure.monitor'))))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_report_answered_5xx_before_it_is_kept_is_counted_as_failed(
    call: Call, configure: Configure, sink: Sink
) -> None:
    configure(
        CHANNEL_PROVIDER="telnyx",
        TELNYX_API_KEY=TELNYX_API_KEY,
        TELNYX_PUBLIC_KEY=PUBLIC_KEY,
        CHANNEL_PUBLIC_URL="https://sms.contoso.example",
    )
    # A final status for an id no send has recorded (yet): 503, so Telnyx delivers it again.
    response = hook(
        call, "delivery_report", event("40317a2b-0d4e-4c55-9d2f-6a1e3b7c9f00", "delivered")
    )
    assert response.status_code == 503
    status = only(sink.named("delivery_report.status")).attributes
    assert status is not None
    assert (status["sms.report.outcome"], status["error.type"]) == ("failed", "ServiceUnavailable")
    assert only(sink.named("delivery_report")).attributes["sms.outcome"] == "service-unavailable"  # type: ignore[index]
    assert [p.attributes for p in sink.of("sms.delivery_reports")] == [
        {
            "sms.provider": "telnyx",
            "sms.report.status": "Delivered",
            "sms.report.outcome": "failed",
        }
    ]


# --- the timer and the outbox -------------------------------------------------------------


def test_timer_run_records_its_counts_and_the_outbox_gauges(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse, sink: Sink
) -> None:
    twilio.accept()
    sent = send(call, twilio)
    refusal = json.dumps(REFUSAL)
    dataverse.script += [
        Response(refusal, status=403, content_type="application/json")
        for _ in range(MAX_FORWARD_ATTEMPTS)
    ]
    assert (
        report(call, sent, "delivered").status_code == 503
    )  # kept: attempt 1 of MAX_FORWARD_ATTEMPTS
    clock = Clock()
    get_runtime().outbox.clock = clock

    def run() -> dict[str, Any]:
        sink.exporter.clear()
        forward_pending()
        return dict(only(sink.named("forward_pending")).attributes or {})

    def gauges() -> list[tuple[str, dict[str, Any], float]]:
        found = [p for p in sink.points() if p.metric.startswith("sms.outbox.")]
        sink._points.clear()  # one collection per run
        return sorted((p.metric, p.attributes, p.value) for p in found)

    sink.points()
    assert run() == {  # not due yet (backing off): seen, not forwarded
        "sms.outbox.forwarded": 0,
        "sms.outbox.failed": 0,
        "sms.outbox.waiting": 0,
        "sms.outbox.removed": 0,
        "sms.outbox.pending": 1,
        "sms.outbox.dead": 0,
    }
    embedded = {"sms.ledger.kind": "embedded"}
    assert gauges() == [("sms.outbox.dead", embedded, 0), ("sms.outbox.pending", embedded, 1)]
    # The counts come from the run's one scan of the outbox, not from a read of their own.
    operations = [(s.attributes or {}).get("sms.ledger.operation") for s in sink.spans()]
    assert operations.count("survey") == 1

    for attempt in range(2, MAX_FORWARD_ATTEMPTS + 1):
        clock.offset += AFTER_ANY_BACKOFF
        counts = run()
        assert (counts["sms.outbox.failed"], counts["sms.outbox.pending"]) == (1, 1), attempt
    assert dataverse.script == []  # every refusal used: the item is dead now
    counts = run()
    assert (counts["sms.outbox.pending"], counts["sms.outbox.dead"]) == (0, 1)
    assert gauges()[-2:] == [("sms.outbox.dead", embedded, 1), ("sms.outbox.pending", embedded, 0)]


def test_ledger_spans_count_every_table_request(
    call: Call, twilio: FakeTwilio, sink: Sink, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("on_table")  # the app on a fresh Azurite table
    twilio.accept()
    store = table_store()
    before = store.round_trips
    assert call("outbound", payload()).status_code == 200
    outbound = only(sink.named("outbound"))
    top = [s for s in sink.spans() if s.name.startswith("ledger ") and child_of(s, outbound)]
    assert {s.attributes["sms.ledger.kind"] for s in top} == {"table"}  # type: ignore[index]
    trips = [int(s.attributes["sms.ledger.round_trips"]) for s in top]  # type: ignore[arg-type,index]
    assert all(trip >= 1 for trip in trips)
    assert sum(trips) == store.round_trips - before


@pytest.mark.usefixtures("providers")
def test_each_send_is_counted_under_the_provider_it_went_through(call: Call, sink: Sink) -> None:
    send_both(call)  # Vonage (CHANNEL_PROVIDER), then Telnyx (CHANNEL_ROUTES)
    assert [span.attributes["sms.provider"] for span in sink.named("outbound")] == [  # type: ignore[index]
        "vonage",
        "telnyx",
    ]
    attempts = [dict(span.attributes or {}) for span in sink.named("provider.send")]
    # The HTTP status comes from the hook of the process's one session: both use it.
    assert [(a["sms.provider"], a["http.response.status_code"]) for a in attempts] == [
        ("vonage", 202),
        ("telnyx", 200),
    ]
    assert sorted(p.attributes["sms.provider"] for p in sink.of("sms.outbound.messages")) == [
        "telnyx",
        "vonage",
    ]
