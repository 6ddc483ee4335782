"""The time budget of one call: every network wait is cut to what is left of it."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from contextvars import ContextVar

_active: ContextVar[Budget | None] = ContextVar("channel_budget", default=None)
"""The budget of the call running in this context, for the ledger's stores: they sit
below interfaces that carry no budget, and must still not outlast the call."""


class Budget:
    """A deadline on the monotonic clock, started when the call began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._deadline - time.monotonic())

    def allows(self, wait: float, *, then: float = 0.0) -> bool:
        """Whether waiting ``wait`` seconds still leaves ``then`` seconds of budget."""
        return self.remaining() >= wait + then

    def timeout(self, connect: float, read: float) -> tuple[float, float]:
        """A requests (connect, read) timeout pair that cannot overrun the budget."""
        left = max(self.remaining(), 0.001)
        return (min(connect, left), min(read, left))

    def keeping(self, seconds: float) -> Budget:
        """A budget that ends ``seconds`` before this one: what is left once those are kept."""
        shorter = copy.copy(self)
        shorter.seconds = max(0.0, self.seconds - seconds)
        shorter._deadline = self._deadline - seconds
        return shorter

    @contextlib.contextmanager
    def applied(self) -> Iterator[Budget]:
        """Make this the budget of every ledger store call made in this context."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


def time_left(default: float) -> float:
    """What the applied budget leaves, at most ``default``; ``default`` when none applies."""
    budget = _active.get()
    return default if budget is None else min(default, budget.remaining())
