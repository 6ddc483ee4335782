"""Logging policy: library chatter kept at WARNING, and each record's call as dimensions."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from channel import telemetry

# urllib3 logs every connection at DEBUG and azure-core logs request headers at INFO;
# neither belongs in an operator's log, and headers can carry keys.
_NOISY = (
    "urllib3",
    "requests",
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.identity",
    "msal",
)


def quiet_libraries() -> None:
    """Hold the HTTP libraries' loggers at WARNING."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def add_dimensions() -> None:
    """Give every log record made inside a call its RequestId, provider, outcome, ...

    They become attributes of the record (``sms.request_id``, ``sms.provider``,
    ``sms.outcome``: the span attributes' names and guard), which the OpenTelemetry
    logging handler the worker installs exports as custom dimensions, so an operator can
    filter logs by them rather than parse the text. Without telemetry installed nothing
    is added. Installed once per process, over whatever factory came before. A log call
    must not pass these names in ``extra`` (logging refuses to overwrite them).
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "adds_dimensions", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        dimensions = telemetry.dimensions()
        if dimensions:
            record.__dict__.update(dimensions)
        return record

    factory.adds_dimensions = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a bug at ERROR with its type and stack, but not its message.

    Exception messages can quote their input (a phone number, a message text); the
    frames alone show where it went wrong. The message goes to DEBUG.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("%s failed unexpectedly: %s\n%s", what, type(exc).__name__, frames.rstrip())
    logger.debug("%s: %s", what, exc)


def printable(value: str, limit: int = 80) -> str:
    """``value`` as a log line may show it: one line, control characters escaped, cut short.

    For values from outside (an event type, an id) that are not checked elsewhere: a
    newline in them must not start a forged log line.
    """
    shown = value[:limit]
    if not shown.isprintable():
        shown = shown.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown + ("..." if len(value) > limit else "")
