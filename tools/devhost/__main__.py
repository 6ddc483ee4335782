"""A local stand-in for the Azure Functions host: serves HTTP functions, runs timer functions.

Run ``python -m tools.devhost [--host 127.0.0.1] [--port 7071]`` from the app's root
(the folder with ``function_app.py`` and ``host.json``). Like ``func start`` it reads
``local.settings.json`` (its ``Values`` become environment variables unless already set),
indexes the app once (``app.get_functions()``), mounts every HTTP function at its route
under ``extensions.http.routePrefix`` with its methods and auth level, checks a function
key for FUNCTION/ADMIN routes (``x-functions-key`` header or ``code`` query parameter;
``CHANNEL_DEVHOST_KEY`` or a random key printed at start-up) and throttles like
``extensions.http.maxConcurrentRequests`` / ``maxOutstandingRequests`` (429 beyond).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from werkzeug.serving import make_server

from tools import trace_console
from tools.devhost.index import (
    describe,
    load_function_app,
    load_local_settings,
    read_host_settings,
)
from tools.devhost.server import QuietRequestHandler, build_wsgi_app
from tools.devhost.timers import DRAIN_SECONDS

log = logging.getLogger("tools.devhost")  # also when run as __main__

KEY_ENV = "CHANNEL_DEVHOST_KEY"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app in the current directory until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.devhost", description=__doc__.splitlines()[0]
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
    tracing = trace_console.install()  # CHANNEL_TRACE=console, before the app is loaded
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
    if tracing:
        print(tracing, flush=True)
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
    deadline = time.monotonic() + DRAIN_SECONDS
    if not host.throttle.wait_idle(DRAIN_SECONDS):
        log.warning("stopping with %s requests still running", host.throttle.outstanding)
    if not timers.join(max(0.0, deadline - time.monotonic())):
        log.warning("stopping with timer functions still running: %s", ", ".join(timers.busy))
    print("devhost: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
