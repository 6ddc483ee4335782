"""The timer runner: each timer function on its schedule, in its own thread.

Timer functions run on their schedule (``TimerRunner``): a six-field NCRONTAB expression
(seconds first), each function in its own thread, one run at a time. As in the host, the
next occurrence is counted from the start of a run, so a run that overruns it is followed
at once by a single late run; ``runOnStartup`` runs the function at start-up. A bad
schedule is listed as "not served". On SIGINT/SIGTERM the timers stop with the server; a
run under way may finish (10 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from azure.functions.timer import TimerRequest

from tools.devhost.index import TimerFunction
from tools.devhost.schedule import stamp, utc_now

log = logging.getLogger("tools.devhost")  # also when run as __main__

DRAIN_SECONDS = 10.0
_MAX_SLEEP_SECONDS = 30.0
"""The longest a timer sleeps before looking at the wall clock again (it may have jumped)."""


Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware."""
Sleeper = Callable[[float], object]
"""Sleeps for the given seconds (it may return early)."""


class TimerRunner:
    """Runs timer functions on their schedules, as the host's timer listeners do.

    Each function has its own thread, so a slow function does not hold up the others, and
    runs one invocation at a time. Like the host, the next occurrence is counted from the
    start of a run: when a run ends after it, the next run starts at once (late, never
    twice; every occurrence missed meanwhile collapses into it), and ``past_due`` stays
    False (the host sets it only from its schedule monitor, which this host has not).

    ``clock`` and ``sleep`` can be replaced to drive schedules without waiting: ``sleep``
    is called from the timer threads with the seconds until the next occurrence (at most
    30), and ``stop()`` may be called from it. By default the threads sleep on the stop
    event, so ``stop()`` wakes them at once.
    """

    def __init__(
        self,
        timers: Sequence[TimerFunction],
        *,
        clock: Clock = utc_now,
        sleep: Sleeper | None = None,
    ) -> None:
        self.timers = tuple(timers)
        self._clock = clock
        self._stop = threading.Event()
        self._sleep: Sleeper = self._stop.wait if sleep is None else sleep
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    def __enter__(self) -> TimerRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.join(DRAIN_SECONDS)

    @property
    def busy(self) -> list[str]:
        """The timer functions running now."""
        with self._lock:
            return sorted(self._busy)

    def start(self) -> None:
        """Start one thread per timer function (runOnStartup ones run at once)."""
        if self._threads:
            raise RuntimeError("the timer runner has already been started")
        self._threads = [
            threading.Thread(target=self._serve, args=(t,), name=f"timer-{t.name}", daemon=True)
            for t in self.timers
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask every timer to stop: no new runs; runs under way finish."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the threads to end after ``stop()``; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _serve(self, timer: TimerFunction) -> None:
        try:
            if timer.run_on_startup:
                started = self._clock()
                self._invoke(timer)
                due = timer.schedule.next_after(started)
            else:
                due = timer.schedule.next_after(self._clock())
            while self._wait_until(due):
                started = max(self._clock(), due)
                self._invoke(timer)
                due = timer.schedule.next_after(started)
                if due <= self._clock():
                    log.warning(
                        "timer %s ran past its next occurrence (%s): running it now",
                        timer.name,
                        stamp(due),
                    )
        except Exception:
            log.exception("timer %s stopped: its schedule failed", timer.name)

    def _wait_until(self, due: datetime) -> bool:
        """Sleep until ``due``; False when asked to stop first."""
        while not self._stop.is_set():
            remaining = (due - self._clock()).total_seconds()
            if remaining <= 0:
                return True
            self._sleep(min(remaining, _MAX_SLEEP_SECONDS))
        return False

    def _invoke(self, timer: TimerFunction) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            self._busy.add(timer.name)
        started = time.perf_counter()
        try:
            timer.function(**{timer.arg_name: TimerRequest(past_due=False)})
        except Exception:
            elapsed = (time.perf_counter() - started) * 1000
            log.exception("timer %s failed in %.0f ms", timer.name, elapsed)
        else:
            elapsed = (time.perf_counter() - started) * 1000
            log.info("timer %s ran in %.0f ms", timer.name, elapsed)
        finally:
            with self._lock:
                self._busy.discard(timer.name)
