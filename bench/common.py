"""Shared pieces of the benchmarks: the tests' fakes served fast, inputs, timing, summaries.

Every figure is a ratio against the cheapest thing that could do the same job, measured
the same way: the fakes of ``tests/`` (the same checks and answers the tests rely on),
served by :class:`FastServer` from a background thread over one keep-alive connection
(head and body in one write, Nagle off), requests built beforehand, and the two sides
timed in alternating blocks (ABBA) after a warm-up so drift cancels out.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlencode, urlsplit

import azure.functions as func
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from channel.providers.twilio import callback_tag
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    SENDER,
    SENDER_E164,
    TEXT,
    TWILIO_SID,
    TWILIO_TOKEN,
    payload,
)

ROOT = Path(__file__).resolve().parents[1]

BLOCK = 25
"""Calls per block; blocks of the two measurements alternate (ABBA) to cancel drift."""

ACCOUNT_SID = TWILIO_SID
AUTH_TOKEN = TWILIO_TOKEN
PUBLIC_URL = "https://sms.contoso.example"
HOST_URL = "http://localhost:7071"
"""Where the local Functions host serves the app: the URL its requests carry."""
CONNECT_TIMEOUT, READ_TIMEOUT = 3.05, 10.0
ENV_PREFIXES = (
    "CHANNEL_",
    "TWILIO_",
    "ACS_",
    "VONAGE_",
    "TELNYX_",
    "DATAVERSE_",
    "AZURE_",
    "WEBSITE_",
    "IDENTITY_",
    "MSI_",
)
"""Settings the app (or azure-identity) reads: none leaks in from the caller's shell."""


# -- serving the tests' fakes ------------------------------------------------------------

Handler = Callable[[Request], Response]
_ARRIVALS = itertools.count()
"""One order for the requests of every FastServer of the process."""


@dataclass(frozen=True)
class Served:
    """One request a FastServer answered: what arrived, on which connection, in what order."""

    request: Request
    response: Response
    connection: int
    """The server's count of connections when the one carrying it was accepted."""
    arrival: int
    """Its place among the requests to every FastServer of the process."""


class _Expectation:
    def __init__(self, routes: dict[tuple[str, str], Handler], key: tuple[str, str]) -> None:
        self._routes = routes
        self._key = key

    def respond_with_handler(self, handler: Handler) -> None:
        self._routes[self._key] = handler

    def respond_with_response(self, response: Response) -> None:
        self._routes[self._key] = lambda request: response


class FastServer(ThreadingHTTPServer):
    """The part of pytest-httpserver's ``HTTPServer`` the fakes use, at http.server speed.

    The tests' fakes register werkzeug handlers with ``expect_request``; this serves them
    over keep-alive HTTP/1.1 with one write per answer (pytest-httpserver's werkzeug
    server costs several times a bare POST, which would dilute every ratio). Unmatched
    requests go to ``fallback`` (404 without one). ``log`` keeps every request answered.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FastHandler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.routes: dict[tuple[str, str], Handler] = {}
        self.fallback: Handler | None = None
        self.connections = 0
        self.log: list[Served] = []
        self.lock = threading.Lock()

    def url_for(self, suffix: str) -> str:
        """The URL of ``suffix`` on this server."""
        return f"{self.base_url}/{suffix.lstrip('/')}"

    def expect_request(self, uri: str, method: str = "GET") -> _Expectation:
        """Route ``method uri`` to the handler or response given next (always, in any order)."""
        return _Expectation(self.routes, (method.upper(), uri))

    def as_httpserver(self) -> HTTPServer:
        """This server, typed as the fakes' pytest-httpserver: they call only the methods above."""
        return cast(HTTPServer, self)

    def requests_to(self, path: str) -> list[Served]:
        """The requests answered for ``path``, in arrival order."""
        with self.lock:
            return [served for served in self.log if served.request.path == path]


class _FastHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves every call
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        server = cast(FastServer, self.server)
        with server.lock:
            server.connections += 1
            self.number = server.connections

    def serve(self) -> None:
        server = cast(FastServer, self.server)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlsplit(self.path)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(parts.path),
            "QUERY_STRING": parts.query,
            "RAW_URI": self.path,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(server.server_address[1]),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = value
        request = Request(environ)
        handler = server.routes.get((self.command, parts.path), server.fallback)
        response = Response(status=404) if handler is None else handler(request)
        content = b"" if response.status_code == 204 else response.get_data()
        with server.lock:
            server.log.append(Served(request, response, self.number, next(_ARRIVALS)))
        head = [f"HTTP/1.1 {response.status}"]
        head += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() != "content-length"]
        if response.status_code != 204:  # RFC 9110, 8.6: no Content-Length on a 204
            head.append(f"Content-Length: {len(content)}")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_MERGE = serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""


@contextmanager
def fast_server(name: str) -> Iterator[FastServer]:
    """A FastServer serving from a background thread for the duration of the block."""
    server = FastServer()
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- shared inputs ---------------------------------------------------------------------


def channel_env(base_url: str, ledger_path: str, **extra: str) -> dict[str, str]:
    """The process environment with the channel configured for twilio at ``base_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(
        CHANNEL_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_BASE_URL=base_url,
        CHANNEL_PUBLIC_URL=PUBLIC_URL,
        CHANNEL_LEDGER_PATH=ledger_path,
        **extra,
    )
    return env


def use_env(env: dict[str, str]) -> None:
    """Make ``env``'s channel settings this process's (before the app reads them)."""
    for name in [name for name in os.environ if name.startswith(ENV_PREFIXES)]:
        del os.environ[name]
    os.environ.update(env)


def payload_body(request_id: str) -> bytes:
    """An outbound request body as Dataverse sends it (the tests' payload)."""
    return json.dumps(payload(RequestId=request_id)).encode("utf-8")


def twilio_messages_url(base_url: str) -> str:
    """Twilio's Messages resource of the test account (what the fake answers)."""
    return f"{base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def twilio_form(request_id: str) -> dict[str, str]:
    """The form the Twilio adapter posts for :func:`payload_body` (same fields, same sizes)."""
    # The callback carries the request's fields under the app's tag (channel.providers.twilio).
    tag = callback_tag(AUTH_TOKEN.encode(), request_id, DEFINITION_ID, SENDER)
    fields = {"rid": request_id, "def": DEFINITION_ID, "from": SENDER, "tag": tag}
    return {
        "To": RECIPIENT,
        "Body": TEXT,
        "From": SENDER_E164,
        "StatusCallback": f"{PUBLIC_URL}/api/delivery-report/twilio?{urlencode(fields)}",
    }


def http_request(body: bytes) -> func.HttpRequest:
    """The request the Functions host hands to ``outbound``."""
    return func.HttpRequest(
        method="POST",
        url=f"{HOST_URL}/api/outbound",
        headers={"content-type": "application/json"},
        params={},
        route_params={},
        body=body,
    )


Function = Callable[[func.HttpRequest], func.HttpResponse]


def outbound_caller(outbound: Function, calls: int) -> Callable[[], float]:
    """A timed call of ``outbound`` per invocation, each with a new RequestId.

    The requests are built beforehand (the host builds them: the figure is about our
    code), and each answer must be ``Sent``.
    """
    pending = [http_request(payload_body(str(uuid.uuid4()))) for _ in range(calls)]

    def call_outbound() -> float:
        request = pending.pop()
        start = time.perf_counter()
        response = outbound(request)
        elapsed = time.perf_counter() - start
        answer = json.loads(response.get_body())
        assert response.status_code == 200, response.get_body()
        assert answer["Status"] == "Sent", answer
        return elapsed

    return call_outbound


@functools.cache
def app_functions() -> dict[str, Function]:
    """The app's functions by name, as the host indexes them (once: the app allows one)."""
    from function_app import app

    functions: dict[str, Function] = {}
    for fn in app.get_functions():
        name = fn.get_function_name()
        assert name is not None, fn
        functions[name] = fn.get_user_function()
    return functions


# -- timing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Median and 90th percentile of a sample, in seconds."""

    median: float
    p90: float
    n: int

    @classmethod
    def of(cls, sample: list[float]) -> Stats:
        """Summarise ``sample``."""
        p90 = statistics.quantiles(sample, n=10)[8] if len(sample) > 1 else sample[0]
        return cls(statistics.median(sample), p90, len(sample))

    def line(self, name: str) -> str:
        """One line of a warm report: median, p90 and sample size in milliseconds."""
        return (
            f"  {name:<18} median {self.median * 1e3:7.3f} ms   "
            f"p90 {self.p90 * 1e3:7.3f} ms   n={self.n}"
        )


Timed = Callable[[], float]
"""One call that returns its own latency in seconds (checks are made outside the timing)."""


def warmup_calls(iterations: int) -> int:
    """Untimed calls of each kind before measuring: caches, pools and tokens are warm."""
    return max(50, iterations // 10)


def interleave(first: Timed, second: Timed, iterations: int) -> tuple[list[float], list[float]]:
    """``iterations`` timings of each, after a warm-up, in alternating blocks (ABBA)."""
    for _ in range(warmup_calls(iterations)):
        first()
        second()
    first_times: list[float] = []
    second_times: list[float] = []
    runs = [(first, first_times), (second, second_times)]
    done = 0
    while done < iterations:
        size = min(BLOCK, iterations - done)
        for call, times in runs:
            times.extend(call() for _ in range(size))
        runs.reverse()  # ABBA: neither side always goes first
        done += size
    return first_times, second_times


@dataclass(frozen=True)
class Warm:
    """A warm figure: the ``outbound`` function against a bare POST of the same request."""

    outbound: Stats
    bare: Stats

    @property
    def ratio(self) -> float:
        """Outbound median over bare-POST median."""
        return self.outbound.median / self.bare.median

    def print(self, target: float, connections: int | None = None) -> None:
        """The medians, the ratio against ``target`` and the overhead per call."""
        print(self.outbound.line("outbound function"))
        print(self.bare.line("bare POST"))
        opened = "" if connections is None else f"  (server connections opened: {connections})"
        print(
            f"  ratio {self.ratio:.2f} ({verdict(self.ratio, target)})  overhead "
            f"{(self.outbound.median - self.bare.median) * 1e3:.3f} ms/call{opened}"
        )


def bare_post(url: str, expected: int, **request: Any) -> tuple[Timed, Callable[[], None]]:
    """A timed ``requests.Session().post(url, **request)`` that must answer ``expected``.

    Returns the timed call and the session's closer.
    """
    import requests

    session = requests.Session()

    def call() -> float:
        start = time.perf_counter()
        reply = session.post(url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), **request)
        elapsed = time.perf_counter() - start
        assert reply.status_code == expected, reply.text
        return elapsed

    return call, session.close


def measure_outbound(env: dict[str, str], bare: Timed, iterations: int) -> Warm:
    """The one warm timing loop of every outbound figure: the app configured by ``env``.

    A fresh runtime sends a new RequestId per call (each answer must be ``Sent``),
    interleaved with ``bare`` after a warm-up; the runtime is dropped afterwards.
    """
    from channel.runtime import reset_runtime

    use_env(env)
    reset_runtime()
    try:
        outbound = app_functions()["outbound"]
        call_outbound = outbound_caller(outbound, warmup_calls(iterations) + iterations)
        print(f"\nwarm: {iterations} calls of each kind, blocks of {BLOCK}, ABBA")
        app_times, bare_times = interleave(call_outbound, bare, iterations)
    finally:
        reset_runtime()
    return Warm(Stats.of(app_times), Stats.of(bare_times))


# -- report ----------------------------------------------------------------------------


def verdict(ratio: float, target: float) -> str:
    """``target <= X: ok`` or ``...: MISSED``."""
    return f"target <= {target}: " + ("ok" if ratio <= target else "MISSED")


def quiet_logging() -> None:
    """Log at WARNING: the app's INFO lines would be part of what is measured."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


def missed(*figures: tuple[str, float, float]) -> int:
    """Exit status for ``(name, ratio, target)`` figures: 1, naming them, when any missed."""
    misses = [f"{name} {ratio:.2f} > {target}" for name, ratio, target in figures if ratio > target]
    if misses:
        print("MISSED: " + "; ".join(misses), file=sys.stderr)
        return 1
    return 0
