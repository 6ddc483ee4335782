"""The time budget of one call: every network wait is cut to what is left of it."""

from __future__ import annotations

import time


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
