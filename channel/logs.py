"""Logging policy: library chatter kept at WARNING so nothing sensitive leaks through it."""

from __future__ import annotations

import logging

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
