"""Shared pieces of the benchmarks: fake servers on 127.0.0.1, inputs, timing and summaries.

Every figure is a ratio against the cheapest thing that could do the same job, measured
the same way: fakes that answer at once from a background thread over one keep-alive
connection (head and body in one write, Nagle off), requests built beforehand, and the
two sides timed in alternating blocks (ABBA) after a warm-up so drift cancels out.
"""

from __future__ import annotations

import functools
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
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

import azure.functions as func

from tests.data import RECIPIENT, SENDER_E164, TEXT, payload

ROOT = Path(__file__).resolve().parents[1]

BLOCK = 25
"""Calls per block; blocks of the two measurements alternate (ABBA) to cancel drift."""

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "bench-auth-token-0001"  # noqa: S105 - a fake account's token
PUBLIC_URL = "https://sms.contoso.example"
HOST_URL = "http://localhost:7071"
"""Where the local Functions host serves the app: the URL its requests carry."""
CONNECT_TIMEOUT, READ_TIMEOUT = 3.05, 10.0
ENV_PREFIXES = (
    "CHANNEL_",
    "TWILIO_",
    "ACS_",
    "DATAVERSE_",
    "AZURE_",
    "WEBSITE_",
    "IDENTITY_",
    "MSI_",
)
"""Settings the app (or azure-identity) reads: none leaks in from the caller's shell."""


# -- fake servers ----------------------------------------------------------------------


class FakeServer(ThreadingHTTPServer):
    """A local HTTP/1.1 server that counts the TCP connections it accepts."""

    daemon_threads = True

    def __init__(self, handler: type[FastHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.connections = 0


class FastHandler(BaseHTTPRequestHandler):
    """Keep-alive handler base: counts connections, answers in one write, logs nothing."""

    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves every call
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        cast(FakeServer, self.server).connections += 1

    def read_body(self) -> bytes:
        """The request body (all of it, so the connection stays usable)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        extra_headers: str = "",
    ) -> None:
        """Head and body in one write: no Nagle/delayed-ACK stall, no per-header syscalls.

        ``extra_headers`` are raw ``Name: value\\r\\n`` lines. A 204 carries neither a
        body nor Content-Length (RFC 9110, 8.6).
        """
        head = f"HTTP/1.1 {status} {self.responses[status][0]}\r\n{extra_headers}"
        if status != 204:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.wfile.write((head + "\r\n").encode("ascii") + body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""


S = TypeVar("S", bound=FakeServer)


@contextmanager
def serving(server: S, name: str) -> Iterator[S]:
    """``server`` serving from a background thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class FakeTwilioServer(FakeServer):
    """Twilio's Messages resource reduced to its fastest answer: 201 with a fresh sid.

    With ``record=True`` it also keeps each message's ``StatusCallback`` by the sid it
    handed out, so a delivery report can be built from what the app really sent.
    """

    def __init__(self, *, record: bool = False) -> None:
        super().__init__(_FakeTwilioHandler)
        self.path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        self.posts = itertools.count(1)
        self.record = record
        self.callbacks: dict[str, str] = {}

    @property
    def messages_url(self) -> str:
        """The URL the Twilio adapter posts to."""
        return self.base_url + self.path


class _FakeTwilioHandler(FastHandler):
    def do_POST(self) -> None:
        server = cast(FakeTwilioServer, self.server)
        body = self.read_body()
        if self.path != server.path:
            self.answer(404, b'{"code":20404,"message":"not found"}')
            return
        sid = f"SM{next(server.posts):032x}"
        if server.record:
            server.callbacks[sid] = parse_qs(body.decode())["StatusCallback"][0]
        reply = json.dumps({"sid": sid, "status": "queued", "error_code": None}).encode()
        self.answer(201, reply)


@contextmanager
def fake_twilio(*, record: bool = False) -> Iterator[FakeTwilioServer]:
    """The fake Twilio serving from a background thread for the duration of the block."""
    with serving(FakeTwilioServer(record=record), "fake-twilio") as server:
        yield server


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


def twilio_form(request_id: str) -> dict[str, str]:
    """The form the Twilio adapter posts for :func:`payload_body` (same fields, same sizes)."""
    return {
        "To": RECIPIENT,
        "Body": TEXT,
        "From": SENDER_E164,
        "StatusCallback": f"{PUBLIC_URL}/api/delivery-report/twilio?rid={request_id}",
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
