"""A local stand-in for the Azure Functions host: serves HTTP functions, runs timer functions.

What it does NOT do, compared with the real host:

- only HTTP triggers with a ``$return`` HTTP output and timer triggers without other
  bindings are served; other triggers (queues, ...) and bindings are listed as "not served";
- timers take six-field NCRONTAB schedules only (no TimeSpan, no ``%SETTING%``) and use
  UTC (Azure's default), never WEBSITE_TIME_ZONE nor the machine's local time zone (which
  ``func start`` uses); there is no schedule monitor (``useMonitor``): nothing is
  persisted, missed occurrences are not made up after a restart, ``past_due`` is always
  False and ``schedule_status`` empty;
- functions are called synchronously: ``async def`` functions are listed as "not served";
- one function key for every route: no host, master, system or per-function keys, no
  key management API, no ``/admin`` endpoints, no EasyAuth;
- no proxies, no ``customHeaders``/HSTS from host.json, no ``functionTimeout``, no
  dynamic throttles, no Application Insights or host log levels from host.json;
- route templates support literals and ``{name}`` only (no constraints, catch-alls,
  optional or default values), and literals match case-sensitively (the host ignores case);
- one process, no worker restarts or scale-out, no ``Context`` parameter.
"""

from tools.devhost.index import (
    TimerFunction,
    describe,
    index_app,
    load_local_settings,
    read_host_settings,
)
from tools.devhost.routes import route_to_rule
from tools.devhost.schedule import Schedule, ScheduleError, parse_schedule
from tools.devhost.server import DevHost, QuietRequestHandler, build_wsgi_app
from tools.devhost.timers import TimerRunner

__all__ = [
    "DevHost",
    "QuietRequestHandler",
    "Schedule",
    "ScheduleError",
    "TimerFunction",
    "TimerRunner",
    "build_wsgi_app",
    "describe",
    "index_app",
    "load_local_settings",
    "parse_schedule",
    "read_host_settings",
    "route_to_rule",
]
