"""A local stand-in for the Azure Functions host: serves HTTP functions, runs timer functions.

Run ``python -m channel.devhost [--host 127.0.0.1] [--port 7071]`` from the app's root
(the folder with ``function_app.py`` and ``host.json``). Like ``func start`` it reads
``local.settings.json`` (its ``Values`` become environment variables unless already set),
indexes the app once (``app.get_functions()``), mounts every HTTP function at its route
under ``extensions.http.routePrefix`` with its methods and auth level, checks a function
key for FUNCTION/ADMIN routes (``x-functions-key`` header or ``code`` query parameter;
``CHANNEL_DEVHOST_KEY`` or a random key printed at start-up) and throttles like
``extensions.http.maxConcurrentRequests`` / ``maxOutstandingRequests`` (429 beyond).

Timer functions run on their schedule (``TimerRunner``): a six-field NCRONTAB expression
(seconds first, ``%SETTING%`` resolved) or a TimeSpan ``hh:mm:ss``, each function in its
own thread, one run at a time. As in the host, the next occurrence is counted from the
start of a run, so a run that overruns it is followed at once by a single late run;
``runOnStartup`` runs the function at start-up. A bad schedule is listed as "not served".
On SIGINT/SIGTERM the timers stop with the server; a run under way may finish (10 s).

What it does NOT do, compared with the real host:

- only HTTP triggers with a ``$return`` HTTP output and timer triggers without other
  bindings are served; other triggers (queues, ...) and bindings are listed as "not served";
- timers use UTC (Azure's default), never WEBSITE_TIME_ZONE nor the machine's local time
  zone (which ``func start`` uses); there is no schedule monitor (``useMonitor``): nothing
  is persisted, missed occurrences are not made up after a restart, ``past_due`` is always
  False and ``schedule_status`` empty; TimeSpan schedules are accepted on any plan;
  schedules the host takes but never or oddly runs are refused (a step of 0, April 31);
- one function key for every route: no host, master, system or per-function keys, no
  key management API, no ``/admin`` endpoints, no EasyAuth;
- no proxies, no ``customHeaders``/HSTS from host.json, no ``functionTimeout``, no
  dynamic throttles, no Application Insights or host log levels from host.json;
- route templates support ``{name}``, ``{*rest}`` and the ``int``/``long``/``alpha``/
  ``bool``/``guid`` constraints only, and literals match case-sensitively (the host
  ignores case);
- a known route called with the wrong method answers 405 with ``Allow`` where the host
  answers an empty 404 (Azure/azure-functions-host#10098);
- one process, no worker restarts or scale-out, no ``Context`` parameter.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib
import inspect
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from calendar import monthrange
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.functions.timer import TimerRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("channel.devhost")  # also when run as __main__

KEY_ENV = "CHANNEL_DEVHOST_KEY"
UNBOUNDED = -1
MAX_BODY_BYTES = 104_857_600
"""The host's default request body limit (100 MB)."""
_KEYED_LEVELS = frozenset({"FUNCTION", "ADMIN", "SYSTEM"})
_DRAIN_SECONDS = 10.0
_MAX_SLEEP_SECONDS = 30.0
"""The longest a timer sleeps before looking at the wall clock again (it may have jumped)."""

UserFunction = Callable[..., Any]


class _IntConverter(BaseConverter):
    """The route constraint ``int``/``long``; the value stays the string that was sent."""

    regex = r"-?\d+"


class _AlphaConverter(BaseConverter):
    """The route constraint ``alpha``."""

    regex = r"[A-Za-z]+"


class _BoolConverter(BaseConverter):
    """The route constraint ``bool``."""

    regex = r"(?i:true|false)"


class _GuidConverter(BaseConverter):
    """The route constraint ``guid``."""

    regex = r"\{?[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}?"


_CONVERTERS: dict[str, type[BaseConverter]] = {
    "az_int": _IntConverter,
    "az_alpha": _AlphaConverter,
    "az_bool": _BoolConverter,
    "az_guid": _GuidConverter,
}
_CONSTRAINTS = {
    "int": "az_int",
    "long": "az_int",
    "alpha": "az_alpha",
    "bool": "az_bool",
    "guid": "az_guid",
}
_PARAMETER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class HttpRoute:
    """An HTTP function as the host mounts it."""

    name: str
    template: str
    path: str
    """The werkzeug rule, prefix included."""
    url_path: str
    """The route template under the prefix, as the host shows it: ``/api/inbound/{provider}``."""
    methods: frozenset[str] | None
    """Upper-case methods; ``None`` accepts every method."""
    auth_level: str
    binding_name: str
    function: UserFunction = field(repr=False, compare=False)

    @property
    def keyed(self) -> bool:
        """Whether a caller needs the function key."""
        return self.auth_level in _KEYED_LEVELS


@dataclass(frozen=True)
class UnservedFunction:
    """A function this host does not run (yet): its trigger binding is kept for a runner."""

    name: str
    trigger: str
    """The trigger kind, e.g. ``timer`` for ``timerTrigger``."""
    reason: str
    binding: dict[str, Any] = field(repr=False, compare=False)
    function: UserFunction = field(repr=False, compare=False)


@dataclass(frozen=True)
class TimerFunction:
    """A timer-triggered function as the host schedules it."""

    name: str
    schedule: Schedule
    """The parsed schedule, ``%SETTING%`` references resolved."""
    arg_name: str
    run_on_startup: bool
    use_monitor: bool | None
    """As declared; this host keeps no schedule status, so it only shows it."""
    function: UserFunction = field(repr=False, compare=False)


@dataclass(frozen=True)
class AppIndex:
    """The app's functions, split into the served HTTP routes, the timers and the rest."""

    routes: tuple[HttpRoute, ...]
    unserved: tuple[UnservedFunction, ...]
    timers: tuple[TimerFunction, ...] = ()


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json this host honours."""

    route_prefix: str = "api"
    max_concurrent: int = UNBOUNDED
    max_outstanding: int = UNBOUNDED


def route_to_rule(route_prefix: str, template: str) -> str:
    """The werkzeug rule for a Functions route template under ``route_prefix``."""
    parts: list[str] = []
    position = 0
    template = template.strip("/")
    for match in _PARAMETER.finditer(template):
        parts.append(_literal(template[position : match.start()]))
        parts.append(_parameter(match.group(1), template))
        position = match.end()
    parts.append(_literal(template[position:]))
    return _under_prefix(route_prefix, "".join(parts))


def _under_prefix(route_prefix: str, route: str) -> str:
    prefix = route_prefix.strip("/")
    return "/" + "/".join(part for part in (prefix, route.strip("/")) if part)


def _literal(text: str) -> str:
    if any(char in text for char in "<>{}"):
        raise ValueError(f"unsupported characters in route literal {text!r}")
    return text


def _parameter(spec: str, template: str) -> str:
    name, _, constraint = spec.partition(":")
    catch_all = name.startswith("*")
    name = name.lstrip("*")
    if not name.isidentifier() or "?" in spec or "=" in spec:
        raise ValueError(f"unsupported route parameter {{{spec}}} in {template!r}")
    if catch_all:
        if constraint:
            raise ValueError(f"unsupported constrained catch-all {{{spec}}} in {template!r}")
        return f"<path:{name}>"
    if not constraint:
        return f"<{name}>"
    converter = _CONSTRAINTS.get(constraint.lower())
    if converter is None:
        raise ValueError(f"unsupported route constraint {{{spec}}} in {template!r}")
    return f"<{converter}:{name}>"


# --- timer schedules ----------------------------------------------------------------------

_SETTING = re.compile(r"%([^%]+)%")
_NUMBER = re.compile(r"[0-9]+")
_TIMESPAN = re.compile(r"(?:([0-9]+)\.)?([0-9]+(?::[0-9]+){1,3})(?:\.([0-9]{1,7}))?")
"""``[d.]`` then two to four ``:``-separated numbers, then ``.fffffff``: checked further."""
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_CALENDAR_CYCLE_YEARS = 400
"""The Gregorian calendar (weekdays included) repeats every 400 years."""
_FIELD_ORDER = "{second} {minute} {hour} {day} {month} {day-of-week}"


class ScheduleError(ValueError):
    """A timer schedule that is neither a six-field NCRONTAB expression nor a TimeSpan."""


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()

    def parse(self, text: str) -> tuple[int, ...]:
        """The sorted values of one field: ``*``, ``a``, ``a-b``, ``/step`` and ``,`` lists."""
        values: set[int] = set()
        for item in text.split(","):
            if not item:
                raise ScheduleError(f"empty item in the {self.name} field {text!r}")
            base, slash, step_text = item.partition("/")
            step = 1
            if slash:
                if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                    raise ScheduleError(f"bad step {step_text!r} in the {self.name} field {text!r}")
                step = int(step_text)
            if base == "*":
                first, last = self.low, self.high
            elif "-" in base[1:]:
                start, _, end = base.partition("-")
                # NCrontab swaps a reversed range (5-1 is 1-5); it does not wrap around.
                first, last = sorted((self._value(start), self._value(end)))
            else:
                first = self._value(base)
                last = self.high if slash else first  # NCrontab: a/n is a, a+n, ... up to the max
            values.update(range(first, last + 1, step))
        return tuple(sorted(values))

    def _value(self, text: str) -> int:
        if _NUMBER.fullmatch(text):
            value = int(text)
            if not self.low <= value <= self.high:
                sunday = " (0 is Sunday)" if self.names == _DAY_NAMES else ""
                raise ScheduleError(
                    f"{self.name} {value} is out of range {self.low}-{self.high}{sunday}"
                )
            return value
        if text and self.names:
            # As NCrontab: any case-insensitive prefix of a name, first match wins (M = March).
            for index, name in enumerate(self.names):
                if name.lower().startswith(text.lower()):
                    return self.low + index
        expected = f"a number {self.low}-{self.high}"
        if self.names:
            expected += f" or a name ({self.names[0][:3]}, ...)"
        raise ScheduleError(f"bad {self.name} value {text!r}: expected {expected}")


_CRON_FIELDS = (
    _CronField("second", 0, 59),
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day", 1, 31),
    _CronField("month", 1, 12, _MONTH_NAMES),
    _CronField("day-of-week", 0, 6, _DAY_NAMES),
)


@dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule; day and day-of-week must both match (as in NCrontab)."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: tuple[int, ...]
    """0 is Sunday, 6 Saturday."""

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (whole seconds, UTC)."""
        start = _as_utc(after).replace(microsecond=0, tzinfo=None) + timedelta(seconds=1)
        last_year = min(start.year + _CALENDAR_CYCLE_YEARS, MAXYEAR)
        for year in range(start.year, last_year + 1):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                month_days = monthrange(year, month)[1]
                for day in self.days:
                    if day > month_days:
                        break
                    candidate = date(year, month, day)
                    if candidate < start.date():
                        continue
                    if (candidate.weekday() + 1) % 7 not in self.days_of_week:
                        continue
                    at = self._first_time(start.time() if candidate == start.date() else dtime())
                    if at is not None:
                        return datetime.combine(candidate, at, UTC)
        raise ScheduleError(f"{self.text!r} has no occurrence after {after.isoformat()}")

    def _first_time(self, earliest: dtime) -> dtime | None:
        for hour in self.hours:
            if hour < earliest.hour:
                continue
            for minute in self.minutes:
                if hour == earliest.hour and minute < earliest.minute:
                    continue
                for second in self.seconds:
                    same_minute = (hour, minute) == (earliest.hour, earliest.minute)
                    if same_minute and second < earliest.second:
                        continue
                    return dtime(hour, minute, second)
        return None


@dataclass(frozen=True)
class IntervalSchedule:
    """A TimeSpan schedule (``hh:mm:ss``): every ``interval``, counted from the last start."""

    text: str
    interval: timedelta

    def next_after(self, after: datetime) -> datetime:
        """``after`` plus the interval, as the host's ConstantSchedule."""
        return _as_utc(after) + self.interval


Schedule = CronSchedule | IntervalSchedule


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(UTC)


def parse_schedule(text: str) -> Schedule:
    """Parse a timer schedule as the host does: NCRONTAB with seconds, else a TimeSpan.

    NCRONTAB has six fields ``{second} {minute} {hour} {day} {month} {day-of-week}``, each
    ``*``, a number, ``a-b``, ``*/n``, ``a-b/n``, ``a/n`` or a comma list of those; months and
    days of week also take (prefixes of) English names. The host does not accept the
    five-field form. A TimeSpan is ``[d.]hh:mm[:ss[.fffffff]]``, ``d:hh:mm:ss``, ``dd:hh:mm``
    (dd 24 or more) or a number of days.
    """
    tokens = [token for token in text.split(" ") if token]
    if not tokens:
        raise ScheduleError("the schedule is empty")
    if len(tokens) == 1:
        if _TIMESPAN.fullmatch(tokens[0]) or _NUMBER.fullmatch(tokens[0]):
            return _parse_interval(text, tokens[0])
        raise ScheduleError(
            f"{text!r} is neither an NCRONTAB expression ({_FIELD_ORDER}) nor a TimeSpan (hh:mm:ss)"
        )
    if len(tokens) != len(_CRON_FIELDS):
        hint = f" (the seconds come first: '0 {text}'?)" if len(tokens) == 5 else ""
        raise ScheduleError(
            f"{text!r} has {len(tokens)} fields, NCRONTAB has 6: {_FIELD_ORDER}{hint}"
        )
    try:
        seconds, minutes, hours, days, months, days_of_week = (
            spec.parse(token) for spec, token in zip(_CRON_FIELDS, tokens, strict=True)
        )
    except ScheduleError as exc:
        raise ScheduleError(f"{text!r}: {exc}") from None
    if not any(day <= _LONGEST_MONTH[month - 1] for month in months for day in days):
        listed = ",".join(map(str, days))
        raise ScheduleError(f"{text!r} never occurs: none of its months has a day {listed}")
    return CronSchedule(text, seconds, minutes, hours, days, months, days_of_week)


def _parse_interval(text: str, token: str) -> IntervalSchedule:
    """A .NET TimeSpan: ``d``, ``[d.]hh:mm[:ss[.f]]``, ``d:hh:mm:ss[.f]`` or ``dd:hh:mm``.

    The last when the first number is 24 or more: the Azure docs' ``24:00:00`` is 24 days.
    """
    match = _TIMESPAN.fullmatch(token)
    if match is None:  # a whole number is a number of days
        return _interval(text, timedelta(days=int(token)))
    day_prefix, clock, fraction = match.groups()
    numbers = [int(part) for part in clock.split(":")]
    days = int(day_prefix or 0)
    if day_prefix is None and len(numbers) == 4:  # d:hh:mm:ss
        days, numbers = numbers[0], numbers[1:]
    elif day_prefix is None and len(numbers) == 3 and numbers[0] >= 24 and fraction is None:
        days, numbers = numbers[0], [*numbers[1:], 0]  # dd:hh:mm
    if len(numbers) != 3 and (len(numbers) == 4 or fraction is not None):
        raise ScheduleError(f"bad TimeSpan {text!r}: expected [d.]hh:mm:ss")
    hours, minutes, seconds = [*numbers, 0][:3]
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ScheduleError(f"bad TimeSpan {text!r}: hh is 0-23, mm and ss 0-59")
    interval = timedelta(
        days=days,
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=round(int((fraction or "0").ljust(7, "0")) / 10),
    )
    return _interval(text, interval)


def _interval(text: str, interval: timedelta) -> IntervalSchedule:
    if interval <= timedelta(0):
        raise ScheduleError(f"the TimeSpan {text!r} must be longer than zero")
    return IntervalSchedule(text, interval)


def next_occurrence(schedule: str | Schedule, after: datetime) -> datetime:
    """The first occurrence of ``schedule`` strictly after the aware ``after``, in UTC."""
    parsed = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    return parsed.next_after(after)


def resolve_settings(text: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with the app setting ``NAME``, as the host resolves a schedule."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise ScheduleError(f"app setting {name} (in {text!r}) is not set")
        return settings[name]

    return _SETTING.sub(setting, text)


def utc_now() -> datetime:
    """The current time in UTC: the host's clock unless WEBSITE_TIME_ZONE is set."""
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def index_app(
    app: func.FunctionApp, route_prefix: str, *, settings: Mapping[str, str] | None = None
) -> AppIndex:
    """Read the app's indexed metadata (``get_functions()``, called once) as the host does.

    ``settings`` (the environment by default) resolves ``%NAME%`` in timer schedules.
    """
    routes: list[HttpRoute] = []
    timers: list[TimerFunction] = []
    unserved: list[UnservedFunction] = []
    for fn in app.get_functions():
        entry = _index_function(fn, route_prefix, os.environ if settings is None else settings)
        if isinstance(entry, HttpRoute):
            routes.append(entry)
        elif isinstance(entry, TimerFunction):
            timers.append(entry)
        else:
            unserved.append(entry)
    return AppIndex(tuple(routes), tuple(unserved), tuple(timers))


def _index_function(
    fn: Any, route_prefix: str, settings: Mapping[str, str]
) -> HttpRoute | TimerFunction | UnservedFunction:
    name: str = fn.get_function_name()
    user: UserFunction = fn.get_user_function()
    bindings: list[dict[str, Any]] = [json.loads(raw) for raw in fn.get_raw_bindings()]
    trigger = next(
        (b for b in bindings if str(b.get("type", "")).lower().endswith("trigger")), None
    )
    if trigger is None:
        return UnservedFunction(name, "none", "no trigger binding", {}, user)
    kind = str(trigger["type"]).removesuffix("Trigger").removesuffix("trigger")
    if kind.lower() == "timer":
        return _index_timer(name, user, trigger, bindings, settings)
    if kind.lower() != "http":
        return UnservedFunction(name, kind, kind, trigger, user)
    return _index_http(name, user, trigger, bindings, route_prefix)


def _index_http(
    name: str,
    user: UserFunction,
    trigger: dict[str, Any],
    bindings: list[dict[str, Any]],
    route_prefix: str,
) -> HttpRoute | UnservedFunction:
    others = [
        b
        for b in bindings
        if b is not trigger and not (b.get("type") == "http" and b.get("name") == "$return")
    ]
    if others:
        types = ", ".join(sorted({str(b.get("type")) for b in others}))
        return UnservedFunction(name, "http", f"unsupported bindings: {types}", trigger, user)
    binding_name = str(trigger.get("name") or "req")
    extra = [p for p in inspect.signature(user).parameters if p != binding_name]
    if extra:
        reason = f"unsupported parameters: {', '.join(extra)}"
        return UnservedFunction(name, "http", reason, trigger, user)
    template = str(trigger.get("route") or name)
    try:
        path = route_to_rule(route_prefix, template)
    except ValueError as exc:
        return UnservedFunction(name, "http", str(exc), trigger, user)
    methods = trigger.get("methods")
    return HttpRoute(
        name=name,
        template=template,
        path=path,
        url_path=_under_prefix(route_prefix, template),
        methods=frozenset(str(m).upper() for m in methods) if methods else None,
        auth_level=str(trigger.get("authLevel") or "FUNCTION").upper(),
        binding_name=binding_name,
        function=user,
    )


def _index_timer(
    name: str,
    user: UserFunction,
    trigger: dict[str, Any],
    bindings: list[dict[str, Any]],
    settings: Mapping[str, str],
) -> TimerFunction | UnservedFunction:
    others = sorted({str(b.get("type")) for b in bindings if b is not trigger})
    if others:
        return UnservedFunction(
            name, "timer", f"unsupported bindings: {', '.join(others)}", trigger, user
        )
    arg_name = str(trigger.get("name") or "timer")
    parameters = list(inspect.signature(user).parameters)
    extra = [p for p in parameters if p != arg_name]
    if extra or arg_name not in parameters:
        reason = (
            f"unsupported parameters: {', '.join(extra)}" if extra else f"no parameter {arg_name}"
        )
        return UnservedFunction(name, "timer", reason, trigger, user)
    try:
        schedule = parse_schedule(resolve_settings(str(trigger.get("schedule") or ""), settings))
    except ScheduleError as exc:
        return UnservedFunction(name, "timer", f"bad schedule: {exc}", trigger, user)
    monitor = trigger.get("useMonitor")
    return TimerFunction(
        name=name,
        schedule=schedule,
        arg_name=arg_name,
        run_on_startup=bool(trigger.get("runOnStartup", False)),
        use_monitor=None if monitor is None else bool(monitor),
        function=user,
    )


class Throttle:
    """The host's HTTP throttle: ``max_concurrent`` executing, ``max_outstanding`` held in all."""

    def __init__(self, max_concurrent: int = UNBOUNDED, max_outstanding: int = UNBOUNDED) -> None:
        for setting, value in (
            ("maxConcurrentRequests", max_concurrent),
            ("maxOutstandingRequests", max_outstanding),
        ):
            if value != UNBOUNDED and value < 1:
                raise ValueError(f"{setting} must be -1 (unbounded) or positive, not {value}")
        self._slots = threading.Semaphore(max_concurrent) if max_concurrent > 0 else None
        self._max_outstanding = max_outstanding
        self._outstanding = 0
        self._changed = threading.Condition()

    @property
    def outstanding(self) -> int:
        """Requests admitted and not finished: executing plus queued."""
        with self._changed:
            return self._outstanding

    def try_enter(self) -> bool:
        """Admit a request (waiting for a free slot) or refuse it when the queue is full."""
        with self._changed:
            if self._max_outstanding != UNBOUNDED and self._outstanding >= self._max_outstanding:
                return False
            self._outstanding += 1
        if self._slots is not None:
            self._slots.acquire()
        return True

    def leave(self) -> None:
        """Release what ``try_enter`` admitted."""
        if self._slots is not None:
            self._slots.release()
        with self._changed:
            self._outstanding -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is outstanding; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._outstanding == 0, timeout)


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
        self.join(_DRAIN_SECONDS)

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
                        _stamp(due),
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
            result = timer.function(**{timer.arg_name: TimerRequest(past_due=False)})
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except Exception:
            elapsed = (time.perf_counter() - started) * 1000
            log.exception("timer %s failed in %.0f ms", timer.name, elapsed)
        else:
            elapsed = (time.perf_counter() - started) * 1000
            log.info("timer %s ran in %.0f ms", timer.name, elapsed)
        finally:
            with self._lock:
                self._busy.discard(timer.name)


class DevHost:
    """The WSGI application: routing, keys, throttling and calls into the app's functions."""

    def __init__(
        self, index: AppIndex, *, key: str, max_concurrent: int, max_outstanding: int
    ) -> None:
        if not key:
            raise ValueError("the function key must not be empty")
        self.index = index
        self.throttle = Throttle(max_concurrent, max_outstanding)
        self._key = key.encode("utf-8")
        self._routes = {route.name: route for route in index.routes}
        self._map = Map(strict_slashes=False, merge_slashes=False, converters=_CONVERTERS)
        for route in index.routes:
            rule = Rule(route.path, endpoint=route.name, methods=route.methods)
            if route.methods is not None:
                rule.methods = set(route.methods)  # werkzeug adds HEAD to GET; the host doesn't
            self._map.add(rule)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request and log it."""
        started = time.perf_counter()
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        response = self._respond(request)
        elapsed = (time.perf_counter() - started) * 1000
        # The path only: query strings can carry secrets (?code=, ?secret=).
        log.info("%s %s %s %.0fms", request.method, request.path, response.status_code, elapsed)
        return response(environ, start_response)

    def _respond(self, request: Request) -> Response:
        adapter = self._map.bind_to_environ(request.environ)
        try:
            endpoint, route_params = adapter.match()
        except MethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.valid_methods or ()))
            return _empty(405, {"Allow": allow})
        except HTTPException:
            return _empty(404)
        route = self._routes[str(endpoint)]
        if route.keyed and not self._authorized(request):
            return _empty(401)
        if not self.throttle.try_enter():
            return _empty(429)
        try:
            return self._invoke(route, request, {k: str(v) for k, v in route_params.items()})
        finally:
            self.throttle.leave()

    def _authorized(self, request: Request) -> bool:
        supplied = request.headers.get("x-functions-key") or request.args.get("code") or ""
        return hmac.compare_digest(supplied.encode("utf-8"), self._key)

    def _invoke(self, route: HttpRoute, request: Request, route_params: dict[str, str]) -> Response:
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _empty(413)
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        req = func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=headers,
            params={name: ",".join(values) for name, values in request.args.lists()},
            route_params=route_params,
            body=body,
        )
        try:
            result = route.function(**{route.binding_name: req})
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except Exception:
            log.exception("function %s raised; answering 500", route.name)
            return _empty(500)
        return _to_response(route.name, result)

    def timer_runner(self, *, clock: Clock = utc_now, sleep: Sleeper | None = None) -> TimerRunner:
        """A runner (not started) for the app's timer functions."""
        return TimerRunner(self.index.timers, clock=clock, sleep=sleep)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _to_response(name: str, result: Any) -> Response:
    if isinstance(result, str):
        return Response(result, status=200, content_type="text/plain; charset=utf-8")
    if not isinstance(result, func.HttpResponse):
        log.error("function %s returned %s, not an HttpResponse", name, type(result).__name__)
        return _empty(500)
    headers: list[tuple[str, str]] = list(result.headers.items())
    if not any(name.lower() == "content-type" for name, _ in headers):
        # As the Python worker encodes a response: text/* types carry the charset.
        mimetype: str = result.mimetype
        content_type = (
            f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
        )
        headers.append(("Content-Type", content_type))
    return Response(result.get_body(), status=result.status_code, headers=headers)


def _empty(status: int, headers: dict[str, str] | None = None) -> Response:
    """An answer of the host itself: a status and no body."""
    response = Response(b"", status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def build_wsgi_app(
    app: func.FunctionApp,
    *,
    key: str,
    route_prefix: str = "api",
    max_concurrent: int = UNBOUNDED,
    max_outstanding: int = UNBOUNDED,
) -> DevHost:
    """A WSGI application serving ``app``'s HTTP functions as the Functions host would.

    It indexes ``app`` with ``get_functions()``, which azure-functions allows once per app:
    a second call on the same app raises ValueError (duplicate function names).
    """
    return DevHost(
        index_app(app, route_prefix),
        key=key,
        max_concurrent=max_concurrent,
        max_outstanding=max_outstanding,
    )


def read_host_settings(path: Path) -> HostSettings:
    """The route prefix and throttle settings of a host.json (defaults when absent)."""
    if not path.is_file():
        return HostSettings()
    document = json.loads(path.read_text(encoding="utf-8"))
    http = (document.get("extensions") or {}).get("http") or {}
    prefix = http.get("routePrefix")
    return HostSettings(
        route_prefix="api" if prefix is None else str(prefix),
        max_concurrent=int(http.get("maxConcurrentRequests", UNBOUNDED)),
        max_outstanding=int(http.get("maxOutstandingRequests", UNBOUNDED)),
    )


def load_local_settings(path: Path, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Put ``Values`` of a local.settings.json into ``environ`` where unset; the names set."""
    if not path.is_file():
        return []
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("IsEncrypted"):
        raise SystemExit(f"{path.name} is encrypted; decrypt it (func settings decrypt) first")
    loaded: list[str] = []
    for name, value in (document.get("Values") or {}).items():
        if name in environ or value is None:
            continue
        environ[name] = value if isinstance(value, str) else json.dumps(value)
        loaded.append(name)
    return loaded


def load_function_app(directory: Path) -> func.FunctionApp:
    """Import ``function_app`` from ``directory`` and return its ``app``."""
    root = str(directory.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module("function_app")
    app = getattr(module, "app", None)
    if not isinstance(app, func.FunctionApp):
        raise SystemExit(f"function_app.py in {root} defines no azure.functions.FunctionApp 'app'")
    return app


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler without its request log, which would show query strings."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Do nothing: DevHost logs each request without its query string."""

    def log_error(self, format: str, *args: Any) -> None:
        """Log protocol errors without their arguments, which can quote the request line."""
        if args and isinstance(args[0], int):
            log.warning("answered %s to a malformed request", args[0])
        else:
            log.warning("HTTP server error: %s", format)


def describe(
    index: AppIndex, base_url: str, *, key_hint: str, now: datetime | None = None
) -> list[str]:
    """The start-up lines: the served URLs, the timers and what is not served.

    URLs show the key hint where one is needed; timers their next occurrence after ``now``.
    """
    lines: list[str] = []
    for route in index.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        suffix = f" (key: {key_hint})" if route.keyed else ""
        lines.append(f"{route.name}: {methods} {base_url}{route.url_path}{suffix}")
    now = utc_now() if now is None else now
    for timer in index.timers:
        first = "at start-up, then " if timer.run_on_startup else ""
        next_run = _stamp(timer.schedule.next_after(now))
        lines.append(f"{timer.name}: timer {timer.schedule.text} ({first}next {next_run})")
    lines.extend(f"{fn.name}: not served ({fn.reason})" for fn in index.unserved)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app in the current directory until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m channel.devhost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to bind (7071; 0 = any)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    root = Path.cwd()
    loaded = load_local_settings(root / "local.settings.json")
    settings = read_host_settings(root / "host.json")
    key = os.environ.get(KEY_ENV) or ""
    key_hint = f"${KEY_ENV}"
    if not key:
        key = key_hint = secrets.token_urlsafe(32)

    host = build_wsgi_app(
        load_function_app(root),
        key=key,
        route_prefix=settings.route_prefix,
        max_concurrent=settings.max_concurrent,
        max_outstanding=settings.max_outstanding,
    )
    server = make_server(
        args.host, args.port, host, threaded=True, request_handler=QuietRequestHandler
    )
    address = f"[{args.host}]" if ":" in args.host else args.host
    base_url = f"http://{address}:{server.server_port}"
    if loaded:
        print(f"devhost: {len(loaded)} settings from local.settings.json", flush=True)
    for line in describe(host.index, base_url, key_hint=key_hint):
        print(line, flush=True)
    time_zone = os.environ.get("WEBSITE_TIME_ZONE")
    if host.index.timers and time_zone:
        print(f"devhost: timers run in UTC; WEBSITE_TIME_ZONE={time_zone} is ignored", flush=True)
    print(f"devhost: listening on {base_url} (Ctrl+C to stop)", flush=True)
    timers = host.timer_runner()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread, inside serve_forever; shutdown() waits for that loop
        # to end, so it has to be called from another thread.
        threading.Thread(target=server.shutdown, name="devhost-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        timers.start()
        server.serve_forever()  # returns after shutdown(), with the listening socket closed
    finally:
        timers.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    deadline = time.monotonic() + _DRAIN_SECONDS
    if not host.throttle.wait_idle(_DRAIN_SECONDS):
        log.warning("stopping with %s requests still running", host.throttle.outstanding)
    if not timers.join(max(0.0, deadline - time.monotonic())):
        log.warning("stopping with timer functions still running: %s", ", ".join(timers.busy))
    print("devhost: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
