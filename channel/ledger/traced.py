"""Ledger operations as spans: which operation, on which backend, with how many round trips."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from channel import telemetry
from channel.ledger.store import RecordStore


class _OverStore(Protocol):
    store: RecordStore


S = TypeVar("S", bound=_OverStore)
P = ParamSpec("P")
R = TypeVar("R")


def operation(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Record each call of a ledger ``method`` as a ``ledger <name>`` span.

    The backend's store counts its calls (``telemetry.round_trip``) onto the span. With
    no telemetry installed the method runs as it is.
    """
    name = method.__name__

    @functools.wraps(method)
    def traced(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not telemetry.installed():
            return method(self, *args, **kwargs)
        with telemetry.ledger_step(name, self.store.kind):
            return method(self, *args, **kwargs)

    return traced
