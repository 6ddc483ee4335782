"""Spans and metrics through the OpenTelemetry API only: names, attributes and a privacy guard.

Whoever installs a tracer and meter provider receives what is recorded here: the
Functions worker in Azure (``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``), a test, a
local host. Without one every call below does nothing, and the OpenTelemetry API is not
even imported (a cold start does not pay for it): whoever installs a provider has
imported it. The app never configures an exporter itself: in Azure that would export
everything twice.

Every attribute goes through ``safe``: only the names declared here are recorded, each
with the shape its kind allows (a word, an id, a number), so no phone number, message
text, token, key or secret can reach a span or a metric point by mistake.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

SCOPE = "d365_sms_channel"
"""The instrumentation scope every span and instrument of the app carries."""

# --- attribute names (the only ones ``safe`` lets through) ------------------------------
PROVIDER = "sms.provider"
OUTCOME = "sms.outcome"
"""An invocation's result: Sent, NotSent, acknowledged, or the problem's slug (503 kinds)."""
REASON = "sms.outcome.reason"
"""Why an outbound message is NotSent: invalid_recipient, empty_text, too_many_segments,
provider_rejected."""
REPLAYED = "sms.replayed"
"""True when an outbound call was answered from the ledger (a repeat of a RequestId)."""
OUTCOME_CLASS = "sms.outcome_class"
"""A provider or Dataverse call's result: the class name of its outcome or exception."""
REQUEST_ID = "sms.request_id"
MESSAGE_ID = "sms.message_id"
CHANNEL_DEFINITION = "sms.channel_definition_id"
REPORT_STATUS = "sms.report.status"
"""Delivered, NotDelivered or Pending."""
REPORT_OUTCOME = "sms.report.outcome"
"""What became of a report: forwarded, kept, repeated, unknown_message, ignored, intermediate."""
REPLY_OUTCOME = "sms.reply.outcome"
"""What became of a reply: forwarded, kept, repeated."""
ATTEMPT = "sms.attempt"
SEGMENTS = "sms.segments"
ENCODING = "sms.encoding"
"""GSM-7 or UCS-2."""
WEBHOOK_ROUTE = "sms.webhook.route"
REFUSAL = "sms.webhook.refusal"
"""Why a webhook was refused: the problem's slug (unauthorized, forbidden, ...)."""
DATAVERSE_ACTION = "dataverse.action"
RETRY_AFTER = "sms.retry_after_seconds"
VERIFICATION = "sms.webhook.verification"
"""A webhook's signature check: valid, or the refusal's slug (unauthorized, forbidden)."""
FORWARDED = "sms.outbox.forwarded"
FAILED = "sms.outbox.failed"
WAITING = "sms.outbox.waiting"
REMOVED = "sms.outbox.removed"
PENDING = "sms.outbox.pending"
"""Outbox items pending when the timer run began (its one scan of the outbox)."""
DEAD = "sms.outbox.dead"
"""Outbox items dead (given up after too many attempts) when the timer run began."""
LEDGER_OPERATION = "sms.ledger.operation"
"""A MessageLedger or Outbox method: begin, complete, put, claim, forwarded, ..."""
LEDGER_KIND = "sms.ledger.kind"
"""The ledger's backend: embedded (SQLite) or table (Azure Table Storage)."""
ROUND_TRIPS = "sms.ledger.round_trips"
"""Storage calls an operation made: HTTP requests to Table Storage (retries and query
pages included), or SQLite statements."""
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
"""A closed-set value (a status, a provider id, a class name): starts with a letter, so no
number, and has no space, so no text."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""A RequestId, message id or GUID."""
_NUMBER_LIKE = re.compile(r"\+?[0-9][0-9.-]{5,}")
"""What a phone number passed as an id would look like: refused even where ids are."""

_WORDS = frozenset(
    {
        PROVIDER,
        OUTCOME,
        REASON,
        OUTCOME_CLASS,
        REPORT_STATUS,
        REPORT_OUTCOME,
        REPLY_OUTCOME,
        ENCODING,
        WEBHOOK_ROUTE,
        REFUSAL,
        DATAVERSE_ACTION,
        ERROR_TYPE,
        VERIFICATION,
        LEDGER_OPERATION,
        LEDGER_KIND,
    }
)
_IDS = frozenset({REQUEST_ID, MESSAGE_ID, CHANNEL_DEFINITION})
_FLAGS = frozenset({REPLAYED})
_COUNTS = frozenset(
    {
        ATTEMPT,
        SEGMENTS,
        HTTP_STATUS,
        RETRY_AFTER,
        FORWARDED,
        FAILED,
        WAITING,
        REMOVED,
        PENDING,
        DEAD,
        ROUND_TRIPS,
    }
)
ATTRIBUTES = _WORDS | _IDS | _FLAGS | _COUNTS
"""Every attribute name the app may record (the workbook's queries name no other)."""


def safe(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    """The attributes that may be recorded: declared names with values of their kind.

    Anything else is dropped (named at DEBUG, never its value): telemetry must never
    fail a call, nor carry a number, a text or a secret.
    """
    clean: dict[str, AttributeValue] = {}
    for name, value in attributes.items():
        if value is None:
            continue
        if _allowed(name, value):
            clean[name] = value  # type: ignore[assignment]  # checked by _allowed
        else:
            log.debug("telemetry attribute %s dropped: not of its declared kind", name)
    return clean


def _allowed(name: str, value: object) -> bool:
    if name in _FLAGS:
        return isinstance(value, bool)
    if name in _COUNTS:
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    if not isinstance(value, str):
        return False
    if name in _WORDS:
        return _WORD.fullmatch(value) is not None
    if name in _IDS:
        return _ID.fullmatch(value) is not None and _NUMBER_LIKE.fullmatch(value) is None
    return False


# --- instruments (proxies until a meter provider is installed) ---------------------------
OUTBOUND_KEYS = (PROVIDER, OUTCOME, REASON, REPLAYED, CHANNEL_DEFINITION)
"""The attributes of an outbound call that its counter carries (low cardinality only)."""
PROVIDER_KEYS = (PROVIDER, ATTEMPT, OUTCOME_CLASS, HTTP_STATUS)
DATAVERSE_KEYS = (DATAVERSE_ACTION, ATTEMPT, OUTCOME_CLASS, HTTP_STATUS)
REPORT_KEYS = (PROVIDER, REPORT_STATUS, REPORT_OUTCOME, CHANNEL_DEFINITION)
REPLY_KEYS = (PROVIDER, REPLY_OUTCOME)
REFUSAL_KEYS = (WEBHOOK_ROUTE, PROVIDER, REFUSAL)
SEGMENT_KEYS = (PROVIDER, ENCODING)
OUTBOX_KEYS = (LEDGER_KIND,)

METRICS: dict[str, tuple[str, ...]] = {}
"""Every metric the app records, with the attributes its points may carry: what the
workbook and the alert rules may query (a test holds them to it)."""


class Instrument:
    """A counter, histogram or gauge of the app; the API's instrument is made when used.

    A plain class, not a dataclass: each is made on every cold start, and the API's
    instrument only once a provider is installed (the API is not imported before).
    """

    def __init__(
        self, kind: str, name: str, keys: tuple[str, ...], unit: str, description: str
    ) -> None:
        self.kind = kind
        """``counter``, ``histogram`` or ``gauge``."""
        self.name = name
        self.unit = unit
        self.description = description
        METRICS[name] = keys

    def api(self) -> Any:
        """The OpenTelemetry instrument (a proxy until a meter provider is installed)."""
        return _api_instrument(self)


OUTBOUND_MESSAGES = Instrument(
    "counter", "sms.outbound.messages", OUTBOUND_KEYS, "{message}", "Outbound calls by outcome"
)
SEGMENT_COUNT = Instrument(
    "histogram",
    "sms.outbound.segments",
    SEGMENT_KEYS,
    "{segment}",
    "SMS segments per outbound text",
)
DELIVERY_REPORTS = Instrument(
    "counter", "sms.delivery_reports", REPORT_KEYS, "{report}", "Delivery reports by status"
)
REPLIES = Instrument("counter", "sms.replies", REPLY_KEYS, "{message}", "Customer replies")
WEBHOOK_REFUSALS = Instrument(
    "counter",
    "sms.webhook.refusals",
    REFUSAL_KEYS,
    "{request}",
    "Webhook calls refused, by reason",
)
PROVIDER_DURATION = Instrument(
    "histogram", "sms.provider.duration", PROVIDER_KEYS, "s", "One provider send attempt"
)
DATAVERSE_DURATION = Instrument(
    "histogram",
    "sms.dataverse.duration",
    DATAVERSE_KEYS,
    "s",
    "One Dataverse Web API call attempt",
)
OUTBOX_PENDING = Instrument(
    "gauge",
    "sms.outbox.pending",
    OUTBOX_KEYS,
    "{item}",
    "Outbox items waiting to be forwarded to Dataverse, as the timer found them",
)
OUTBOX_DEAD = Instrument(
    "gauge",
    "sms.outbox.dead",
    OUTBOX_KEYS,
    "{item}",
    "Outbox items given up on (they need an operator), as the timer found them",
)


@functools.cache
def _meter() -> Meter:
    from opentelemetry import metrics

    return metrics.get_meter(SCOPE)


@functools.cache
def _api_instrument(instrument: Instrument) -> Any:
    meter = _meter()
    name, unit, description = instrument.name, instrument.unit, instrument.description
    if instrument.kind == "counter":
        return meter.create_counter(name, unit=unit, description=description)
    if instrument.kind == "histogram":
        return meter.create_histogram(name, unit=unit, description=description)
    return meter.create_gauge(name, unit=unit, description=description)


@functools.cache
def _tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(SCOPE)


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


# Set for the duration of a step, so that code below it (an HTTP response hook) can
# add to it without being handed it.
_step: ContextVar[Step | None] = ContextVar("channel_telemetry_step", default=None)
# The storage calls of the ledger operation running in this context, if one is recorded.
_trips: ContextVar[list[int] | None] = ContextVar("channel_telemetry_trips", default=None)


LOG_KEYS = (
    REQUEST_ID,
    PROVIDER,
    OUTCOME,
    REASON,
    CHANNEL_DEFINITION,
    MESSAGE_ID,
    REPORT_STATUS,
    REPORT_OUTCOME,
    REPLY_OUTCOME,
    WEBHOOK_ROUTE,
    DATAVERSE_ACTION,
)
"""The attributes a log record made inside a step carries as dimensions (see logs.py)."""


class Step:
    """A span being recorded, with the (guarded) attributes its metrics may carry."""

    def __init__(self, span: Span, parent: Step | None = None) -> None:
        self.span = span
        self.parent = parent
        self.attributes: dict[str, AttributeValue] = {}

    def set(self, attributes: Mapping[str, object]) -> None:
        """Record ``attributes`` that pass the guard on the span."""
        clean = safe(attributes)
        self.attributes.update(clean)
        self.span.set_attributes(clean)

    def failed(self) -> None:
        """Mark the span as failed (the call answered 5xx)."""
        from opentelemetry.trace import StatusCode

        self.span.set_status(StatusCode.ERROR)

    def subset(self, keys: tuple[str, ...]) -> dict[str, AttributeValue]:
        """The recorded attributes among ``keys``: what a metric point may carry."""
        return {key: self.attributes[key] for key in keys if key in self.attributes}


class _Unrecorded(Step):
    """The step when nothing is installed: keeps nothing, so a call pays nothing for it."""

    def __init__(self) -> None:  # no span: the API need not be imported
        self.parent = None
        self.attributes = {}

    def set(self, attributes: Mapping[str, object]) -> None:
        """Nothing to record."""

    def failed(self) -> None:
        """Nothing to mark."""


_UNRECORDED = _Unrecorded()


def installed() -> bool:
    """Whether a tracer or meter provider is installed (nothing is recorded if not).

    Checked per call, since one may be installed after import (the worker, a test). An
    API not imported yet has no provider: installing one imports it. The API's globals
    are read directly: its getters consult os.environ on every call, which costs more
    than the spans they would save.
    """
    # Read with getattr: should a later API rename them, telemetry stays on, never fails.
    trace_api = sys.modules.get("opentelemetry.trace")
    metrics_api = sys.modules.get("opentelemetry.metrics._internal")
    return (trace_api is not None and getattr(trace_api, "_TRACER_PROVIDER", True) is not None) or (
        metrics_api is not None and getattr(metrics_api, "_METER_PROVIDER", True) is not None
    )


@contextlib.contextmanager
def step(name: str, attributes: Mapping[str, object] | None = None) -> Iterator[Step]:
    """A span around a block, current inside it; an exception leaves only its class name.

    The SDK's own exception recording is off: an exception's message may quote its
    input (a number, a text).
    """
    if not installed():
        yield _UNRECORDED
        return
    from opentelemetry.trace import StatusCode

    with _tracer().start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as span:
        current = Step(span, _step.get())
        current.set(attributes or {})
        token = _step.set(current)
        try:
            yield current
        except BaseException as exc:
            current.set({ERROR_TYPE: type(exc).__name__})
            if OUTCOME_CLASS not in current.attributes:
                current.set({OUTCOME_CLASS: type(exc).__name__})
            span.set_status(StatusCode.ERROR)
            raise
        finally:
            _step.reset(token)


@contextlib.contextmanager
def timed(
    name: str,
    histogram: Instrument,
    keys: tuple[str, ...],
    attributes: Mapping[str, object] | None = None,
) -> Iterator[Step]:
    """A step whose duration goes to ``histogram`` with its attributes among ``keys``."""
    start = time.perf_counter()
    current: Step | None = None
    try:
        with step(name, attributes) as current:
            yield current
    finally:
        # A failed attempt is timed too: its outcome class names the exception.
        if current is not None and current is not _UNRECORDED:
            histogram.api().record(time.perf_counter() - start, current.subset(keys))


@contextlib.contextmanager
def invocation(name: str, headers: Mapping[str, str]) -> Iterator[Step]:
    """The span of one function call, continuing the caller's ``traceparent`` if needed.

    In Azure the worker has already attached the host's trace context: the span joins
    it. Elsewhere (the local host, tests) no span is active, and the incoming W3C
    ``traceparent`` header, if any, becomes the parent.
    """
    if not installed():
        yield _UNRECORDED
        return
    from opentelemetry import context, trace

    token = None
    if not trace.get_current_span().get_span_context().is_valid:
        carrier = {key.lower(): value for key, value in headers.items()}
        token = context.attach(_propagator().extract(carrier))
    try:
        with step(name) as current:
            yield current
    finally:
        if token is not None:
            context.detach(token)


def dimensions() -> dict[str, AttributeValue]:
    """The log dimensions of the step running in this context, already guarded.

    Its attributes among ``LOG_KEYS`` and those of the steps around it (the innermost
    wins). Empty when nothing is installed: then no step is recorded, and no log exporter
    would read them either.
    """
    found: dict[str, AttributeValue] = {}
    current = _step.get()
    while current is not None:
        for key in LOG_KEYS:
            if key not in found and key in current.attributes:
                found[key] = current.attributes[key]
        current = current.parent
    return found


def note(attributes: Mapping[str, object]) -> None:
    """Add ``attributes`` (guarded) to the step running in this context, if any."""
    current = _step.get()
    if current is not None:
        current.set(attributes)


@contextlib.contextmanager
def ledger_step(operation: str, kind: str) -> Iterator[Step]:
    """The span of one ledger operation, with the storage round trips made inside it.

    An operation inside another (an outbox put that claims) is a child span; its round
    trips count for both.
    """
    if not installed():
        yield _UNRECORDED
        return
    trips = [0]
    token = _trips.set(trips)
    try:
        with step(
            f"ledger {operation}", {LEDGER_OPERATION: operation, LEDGER_KIND: kind}
        ) as current:
            try:
                yield current
            finally:
                current.set({ROUND_TRIPS: trips[0]})
    finally:
        _trips.reset(token)
        outer = _trips.get()
        if outer is not None:
            outer[0] += trips[0]


def round_trip() -> None:
    """Count one storage call for the ledger operation being recorded, if any."""
    trips = _trips.get()
    if trips is not None:
        trips[0] += 1


def count(counter: Instrument, attributes: Mapping[str, object], amount: int = 1) -> None:
    """Add ``amount`` to ``counter`` with ``attributes`` that pass the guard."""
    if installed():
        counter.api().add(amount, safe(attributes))


def record(histogram: Instrument, value: float, attributes: Mapping[str, object]) -> None:
    """Record ``value`` in ``histogram`` with ``attributes`` that pass the guard."""
    if installed():
        histogram.api().record(value, safe(attributes))


def measure(gauge: Instrument, value: float, attributes: Mapping[str, object]) -> None:
    """Set ``gauge`` to ``value`` with ``attributes`` that pass the guard."""
    if installed():
        gauge.api().set(value, safe(attributes))


def note_http_status(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A requests response hook: the HTTP status onto the step that made the call."""
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        note({HTTP_STATUS: status})
    return response
