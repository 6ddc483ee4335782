"""The app index: its functions as the host serves them, read with its settings files."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func

from tools.devhost.routes import route_to_rule, url_path
from tools.devhost.schedule import Schedule, ScheduleError, parse_schedule, stamp, utc_now

UNBOUNDED = -1
_KEYED_LEVELS = frozenset({"FUNCTION", "ADMIN", "SYSTEM"})

UserFunction = Callable[..., Any]


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


def index_app(app: func.FunctionApp, route_prefix: str) -> AppIndex:
    """Read the app's indexed metadata (``get_functions()``, called once) as the host does."""
    routes: list[HttpRoute] = []
    timers: list[TimerFunction] = []
    unserved: list[UnservedFunction] = []
    for fn in app.get_functions():
        entry = _index_function(fn, route_prefix)
        if isinstance(entry, HttpRoute):
            routes.append(entry)
        elif isinstance(entry, TimerFunction):
            timers.append(entry)
        else:
            unserved.append(entry)
    return AppIndex(tuple(routes), tuple(unserved), tuple(timers))


def _index_function(fn: Any, route_prefix: str) -> HttpRoute | TimerFunction | UnservedFunction:
    name: str = fn.get_function_name()
    user: UserFunction = fn.get_user_function()
    bindings: list[dict[str, Any]] = [json.loads(raw) for raw in fn.get_raw_bindings()]
    trigger = next(
        (b for b in bindings if str(b.get("type", "")).lower().endswith("trigger")), None
    )
    if trigger is None:
        return UnservedFunction(name, "none", "no trigger binding", {}, user)
    kind = str(trigger["type"]).removesuffix("Trigger").removesuffix("trigger")
    if inspect.iscoroutinefunction(user):
        # The app's functions are synchronous; an event loop here would be untested code.
        return UnservedFunction(name, kind.lower(), "async functions", trigger, user)
    if kind.lower() == "timer":
        return _index_timer(name, user, trigger, bindings)
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
        url_path=url_path(route_prefix, template),
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
        schedule = parse_schedule(str(trigger.get("schedule") or ""))
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
        next_run = stamp(timer.schedule.next_after(now))
        lines.append(f"{timer.name}: timer {timer.schedule.text} ({first}next {next_run})")
    lines.extend(f"{fn.name}: not served ({fn.reason})" for fn in index.unserved)
    return lines
