"""``CHANNEL_TRACE=console``: the local host prints each call's spans as a compact tree.

The app records spans through the OpenTelemetry API only (channel/telemetry.py); this
installs the SDK with an exporter that, when a call's outermost span ends, prints it and
every span under it, indented, one line each with its duration and attributes. Only the
local host imports it, and only when asked: the app's own path never loads the SDK.

The attributes are the spans' own, guarded as in Azure (no number, text or secret), with
their ``sms.`` prefix dropped for brevity.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SETTING = "CHANNEL_TRACE"
MAX_BUFFERED = 10_000
"""Spans kept while waiting for their call's outermost span; beyond it the oldest go."""


def install(environ: Mapping[str, str] | None = None) -> str | None:
    """Print spans if ``CHANNEL_TRACE=console``: a line for the host's banner, or None.

    An unknown value is said in that line, and nothing is installed.
    """
    value = (os.environ if environ is None else environ).get(SETTING, "").strip()
    if not value:
        return None
    if value.lower() != "console":
        return f"devhost: {SETTING}={value} is not known (console prints spans); not tracing"
    from opentelemetry import trace

    trace.set_tracer_provider(console_provider(_print))
    return f"devhost: {SETTING}=console, each call's spans are printed as it ends"


def console_provider(write: Callable[[str], None]) -> TracerProvider:
    """A tracer provider whose finished calls go to ``write``, one text block per call."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter(write)))
    return provider


def _print(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def _exporter(write: Callable[[str], None]) -> SpanExporter:
    """The SDK's SpanExporter, subclassed here so the SDK is imported only when tracing."""
    from opentelemetry.sdk.trace import export as sdk_export

    class CompactExporter(sdk_export.SpanExporter):
        """Keeps spans until their call's outermost span ends, then writes the tree."""

        def __init__(self) -> None:
            self._pending: dict[int, ReadableSpan] = {}  # by span id, in the order they ended
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> sdk_export.SpanExportResult:
            for span in spans:
                with self._lock:
                    tree = self._take(span)
                if tree is not None:
                    write(tree)
            return sdk_export.SpanExportResult.SUCCESS

        def _take(self, span: ReadableSpan) -> str | None:
            if span.parent is not None and not span.parent.is_remote:
                self._pending[_id(span)] = span
                while len(self._pending) > MAX_BUFFERED:  # a root that never ended
                    del self._pending[next(iter(self._pending))]
                return None
            context = span.get_span_context()
            lines = [f"trace {context.trace_id if context is not None else 0:032x}"]
            self._describe(span, 1, lines)
            return "\n".join(lines)

        def _describe(self, span: ReadableSpan, depth: int, lines: list[str]) -> None:
            lines.append("  " * depth + _line(span))
            children = [
                child
                for child in self._pending.values()
                if child.parent is not None and child.parent.span_id == _id(span)
            ]
            for child in sorted(children, key=lambda child: child.start_time or 0):
                del self._pending[_id(child)]
                self._describe(child, depth + 1, lines)

    return CompactExporter()


def _line(span: ReadableSpan) -> str:
    """``name 12.3 ms key=value ...``, and ``ERROR`` when the span failed."""
    from opentelemetry.trace import StatusCode

    took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    parts = [span.name, f"{took:.1f} ms"]
    parts += [f"{_short(key)}={value!s}" for key, value in (span.attributes or {}).items()]
    if span.status.status_code is StatusCode.ERROR:
        parts.append("ERROR")
    return " ".join(parts)


def _id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    return context.span_id if context is not None else 0


def _short(key: str) -> str:
    if key == "http.response.status_code":
        return "status"
    return key.removeprefix("sms.")
