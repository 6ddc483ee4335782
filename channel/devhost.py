"""A local stand-in for the Azure Functions host: serves the app's HTTP functions with werkzeug.

Run ``python -m channel.devhost [--host 127.0.0.1] [--port 7071]`` from the app's root
(the folder with ``function_app.py`` and ``host.json``). Like ``func start`` it reads
``local.settings.json`` (its ``Values`` become environment variables unless already set),
indexes the app once (``app.get_functions()``), mounts every HTTP function at its route
under ``extensions.http.routePrefix`` with its methods and auth level, checks a function
key for FUNCTION/ADMIN routes (``x-functions-key`` header or ``code`` query parameter;
``CHANNEL_DEVHOST_KEY`` or a random key printed at start-up) and throttles like
``extensions.http.maxConcurrentRequests`` / ``maxOutstandingRequests`` (429 beyond).

What it does NOT do, compared with the real host:

- only HTTP triggers with a ``$return`` HTTP output are served; other triggers (timers,
  queues) and other bindings are listed as "not served";
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
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import azure.functions as func
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
class AppIndex:
    """The app's functions, split into the served HTTP routes and the rest."""

    routes: tuple[HttpRoute, ...]
    unserved: tuple[UnservedFunction, ...]


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


def index_app(app: func.FunctionApp, route_prefix: str) -> AppIndex:
    """Read the app's indexed metadata (``get_functions()``, called once) as the host does."""
    routes: list[HttpRoute] = []
    unserved: list[UnservedFunction] = []
    for fn in app.get_functions():
        entry = _index_function(fn, route_prefix)
        if isinstance(entry, HttpRoute):
            routes.append(entry)
        else:
            unserved.append(entry)
    return AppIndex(tuple(routes), tuple(unserved))


def _index_function(fn: Any, route_prefix: str) -> HttpRoute | UnservedFunction:
    name: str = fn.get_function_name()
    user: UserFunction = fn.get_user_function()
    bindings: list[dict[str, Any]] = [json.loads(raw) for raw in fn.get_raw_bindings()]
    trigger = next(
        (b for b in bindings if str(b.get("type", "")).lower().endswith("trigger")), None
    )
    if trigger is None:
        return UnservedFunction(name, "none", "no trigger binding", {}, user)
    kind = str(trigger["type"]).removesuffix("Trigger").removesuffix("trigger")
    if kind.lower() != "http":
        return UnservedFunction(name, kind, kind, trigger, user)
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


def describe(index: AppIndex, base_url: str, *, key_hint: str) -> list[str]:
    """The start-up lines: every served URL (with the key hint where one is needed)."""
    lines: list[str] = []
    for route in index.routes:
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        suffix = f" (key: {key_hint})" if route.keyed else ""
        lines.append(f"{route.name}: {methods} {base_url}{route.url_path}{suffix}")
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
    print(f"devhost: listening on {base_url} (Ctrl+C to stop)", flush=True)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread, inside serve_forever; shutdown() waits for that loop
        # to end, so it has to be called from another thread.
        threading.Thread(target=server.shutdown, name="devhost-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever()  # returns after shutdown(), with the listening socket closed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not host.throttle.wait_idle(_DRAIN_SECONDS):
        log.warning("stopping with %s requests still running", host.throttle.outstanding)
    print("devhost: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
