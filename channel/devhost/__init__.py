"""A local stand-in for the Azure Functions host: serves HTTP functions, runs timer functions.

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
- one process, no worker restarts or scale-out, no ``Context`` parameter.
"""

from channel.devhost.index import (
    TimerFunction,
    describe,
    index_app,
    load_local_settings,
    read_host_settings,
)
from channel.devhost.routes import route_to_rule
from channel.devhost.schedule import ScheduleError, next_occurrence, parse_schedule
from channel.devhost.server import DevHost, QuietRequestHandler, build_wsgi_app
from channel.devhost.timers import TimerRunner

__all__ = [
    "DevHost",
    "QuietRequestHandler",
    "ScheduleError",
    "TimerFunction",
    "TimerRunner",
    "build_wsgi_app",
    "describe",
    "index_app",
    "load_local_settings",
    "next_occurrence",
    "parse_schedule",
    "read_host_settings",
    "route_to_rule",
]
