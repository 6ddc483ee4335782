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
FORWARDED = "sms.outbox.forwarded"
FAILED = "sms.outbox.failed"
WAITING = "sms.outbox.waiting"
REMOVED = "sms.outbox.removed"
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
    }
)
_IDS = frozenset({REQUEST_ID, MESSAGE_ID, CHANNEL_DEFINITION})
_FLAGS = frozenset({REPLAYED})
_COUNTS = frozenset(
    {ATTEMPT, SEGMENTS, HTTP_STATUS, RETRY_AFTER, FORWARDED, FAILED, WAITING, REMOVED}
)


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


# --- instruments (created on first use, once a provider is installed) --------------------


class Instrument:
    """A counter or histogram of the app, by name; the API's instrument is made when used."""

    # A plain class, not a dataclass: seven of them are made on every cold start.
    def __init__(self, name: str, kind: str, unit: str, description: str) -> None:
        self.name = name
        self.kind = kind
        """``counter`` or ``histogram``."""
        self.unit = unit
        self.description = description

    def api(self) -> Any:
        """The OpenTelemetry instrument (a proxy until a meter provider is installed)."""
        return _api_instrument(self)


OUTBOUND_MESSAGES = Instrument(
    "sms.outbound.messages", "counter", "{message}", "Outbound calls by outcome"
)
SEGMENT_COUNT = Instrument(
    "sms.outbound.segments", "histogram", "{segment}", "SMS segments per outbound text"
)
DELIVERY_REPORTS = Instrument(
    "sms.delivery_reports", "counter", "{report}", "Delivery reports by status"
)
REPLIES = Instrument("sms.replies", "counter", "{message}", "Customer replies")
WEBHOOK_REFUSALS = Instrument(
    "sms.webhook.refusals", "counter", "{request}", "Webhook calls refused, by reason"
)
PROVIDER_DURATION = Instrument(
    "sms.provider.duration", "histogram", "s", "One provider send attempt"
)
DATAVERSE_DURATION = Instrument(
    "sms.dataverse.duration", "histogram", "s", "One Dataverse Web API call attempt"
)

OUTBOUND_KEYS = (PROVIDER, OUTCOME, REASON, REPLAYED, CHANNEL_DEFINITION)
"""The attributes of an outbound call that its counter carries (low cardinality only)."""
PROVIDER_KEYS = (PROVIDER, ATTEMPT, OUTCOME_CLASS, HTTP_STATUS)
DATAVERSE_KEYS = (DATAVERSE_ACTION, ATTEMPT, OUTCOME_CLASS, HTTP_STATUS)


@functools.cache
def _meter() -> Meter:
    from opentelemetry import metrics

    return metrics.get_meter(SCOPE)


@functools.cache
def _api_instrument(instrument: Instrument) -> Any:
    create = _meter().create_counter if instrument.kind == "counter" else _meter().create_histogram
    return create(instrument.name, unit=instrument.unit, description=instrument.description)


@functools.cache
def _tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(SCOPE)


# Set for the duration of a step, so that code below it (an HTTP response hook) can
# add to it without being handed it.
_step: ContextVar[Step | None] = ContextVar("channel_telemetry_step", default=None)


class Step:
    """A span being recorded, with the (guarded) attributes its metrics may carry."""

    def __init__(self, span: Span) -> None:
        self.span = span
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
        current = Step(span)
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


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def note(attributes: Mapping[str, object]) -> None:
    """Add ``attributes`` (guarded) to the step running in this context, if any."""
    current = _step.get()
    if current is not None:
        current.set(attributes)


def count(counter: Instrument, attributes: Mapping[str, object], amount: int = 1) -> None:
    """Add ``amount`` to ``counter`` with ``attributes`` that pass the guard."""
    if installed():
        counter.api().add(amount, safe(attributes))


def record(histogram: Instrument, value: float, attributes: Mapping[str, object]) -> None:
    """Record ``value`` in ``histogram`` with ``attributes`` that pass the guard."""
    if installed():
        histogram.api().record(value, safe(attributes))


def note_http_status(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A requests response hook: the HTTP status onto the step that made the call."""
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        note({HTTP_STATUS: status})
    return response
