"""The WSGI application: routing, function keys, throttling, answers as the host gives."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import azure.functions as func
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from tools.devhost.index import UNBOUNDED, AppIndex, HttpRoute, index_app
from tools.devhost.schedule import utc_now
from tools.devhost.timers import Clock, Sleeper, TimerRunner

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("tools.devhost")  # also when run as __main__

MAX_BODY_BYTES = 104_857_600
"""The host's default request body limit (100 MB)."""


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
        self._map = Map(strict_slashes=False, merge_slashes=False)
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
        except HTTPException:
            # A known route with the wrong method too: the host answers an empty 404, not
            # 405 (Azure/azure-functions-host#10098), and callers should see the same here.
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
        except Exception:
            log.exception("function %s raised; answering 500", route.name)
            return _empty(500)
        return _to_response(route.name, result)

    def timer_runner(self, *, clock: Clock = utc_now, sleep: Sleeper | None = None) -> TimerRunner:
        """A runner (not started) for the app's timer functions."""
        return TimerRunner(self.index.timers, clock=clock, sleep=sleep)


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
