"""The local host (tools.devhost) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import azure.functions as func
import pytest
import requests
from werkzeug.serving import make_server

from tests.conftest import Configure
from tests.data import payload
from tests.scripts import load_script
from tools.devhost import (
    DevHost,
    QuietRequestHandler,
    ScheduleError,
    TimerFunction,
    TimerRunner,
    build_wsgi_app,
    describe,
    index_app,
    load_local_settings,
    parse_schedule,
    read_host_settings,
    route_to_rule,
)

KEY = "devhost-test-key-0001"
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


@contextmanager
def serving(host: DevHost) -> Iterator[str]:
    """Serve ``host`` on an ephemeral port of 127.0.0.1 in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, host, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="devhost-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() >= deadline:  # a hang, not a speed check
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def channel_url() -> Iterator[str]:
    """The channel's own app (function_app.py), served once for the module."""
    # A fresh copy of function_app: azure-functions lets each FunctionApp index its
    # functions only once (a second get_functions() raises), and conftest's ``functions``
    # fixture indexes the shared ``function_app.app``.
    module = load_script("function_app_devhost", REPO / "function_app.py", register=False)
    app: func.FunctionApp = module.app

    host = build_wsgi_app(app, key=KEY, route_prefix="api", max_concurrent=64, max_outstanding=256)
    with serving(host) as url:
        yield url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def api(configure: Configure, channel_url: str) -> str:
    """The channel's base URL with ``/api``, the app running with zero configuration."""
    return channel_url + "/api"


# --- the channel's app ------------------------------------------------------------------


def test_outbound_with_key_header(api: str, http: requests.Session) -> None:
    response = http.post(
        f"{api}/outbound", json=payload(), headers={"x-functions-key": KEY}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["Status"] == "Sent"
    assert answer["RequestId"] == payload()["RequestId"]


def test_outbound_with_code_query(api: str, http: requests.Session) -> None:
    response = http.post(f"{api}/outbound", params={"code": KEY}, json=payload(), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["Status"] == "Sent"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"x-functions-key": "wrong"}, {}),
        ({}, {"code": "wrong"}),
        ({"x-functions-key": ""}, {"code": ""}),
        ({"x-functions-key": KEY[:-1]}, {}),
        # The header wins over the query parameter, as in the host.
        ({"x-functions-key": "wrong"}, {"code": KEY}),
    ],
    ids=["none", "wrong-header", "wrong-code", "empty", "prefix", "wrong-header-right-code"],
)
def test_outbound_refuses_missing_or_wrong_key(
    api: str, http: requests.Session, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = http.post(
        f"{api}/outbound", json=payload(), headers=headers, params=params, timeout=TIMEOUT
    )
    assert response.status_code == 401
    assert response.content == b""


def test_wrong_method_is_an_empty_404_as_the_host_answers(api: str, http: requests.Session) -> None:
    response = http.get(f"{api}/outbound", headers={"x-functions-key": KEY}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.content == b""
    report = http.get(f"{api}/delivery-report/twilio", timeout=TIMEOUT)
    assert report.status_code == 404
    assert report.content == b""


def test_head_is_not_added_to_get(api: str, http: requests.Session) -> None:
    assert http.head(f"{api}/health", timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize("path", ["/api/nope", "/outbound", "/api", "/api/delivery-report"])
def test_unknown_path_is_404(
    channel_url: str, configure: Configure, http: requests.Session, path: str
) -> None:
    response = http.post(channel_url + path, headers={"x-functions-key": KEY}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.content == b""


def test_health_needs_no_key(api: str, http: requests.Session) -> None:
    response = http.get(f"{api}/health", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["status"] == "ok"
    assert response.json()["provider"] == "loopback"


def test_delivery_report_reaches_the_function(api: str, http: requests.Session) -> None:
    # Zero configuration has no Twilio auth token: the function answers (a plain 503).
    known = http.post(f"{api}/delivery-report/twilio", data=b"x=1", timeout=TIMEOUT)
    assert known.status_code == 503
    assert known.headers["Content-Type"] == "application/problem+json"
    assert known.json()["title"] == "Channel not configured"
    # A 404 from the function (problem JSON naming the provider), not from the host.
    unknown = http.post(f"{api}/delivery-report/unknown", data=b"x=1", timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"] == "application/problem+json"
    assert "unknown" in unknown.json()["detail"]


def test_request_log_has_no_query_string(
    api: str, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    http.post(
        f"{api}/outbound", params={"code": KEY, "secret": "s3"}, json=payload(), timeout=TIMEOUT
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "tools.devhost"]
    assert any(line.startswith("POST /api/outbound 200 ") for line in lines), lines
    assert all(line.endswith("ms") for line in lines), lines
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in messages
    assert "secret" not in messages


# --- a tiny app: request building, throttling, unserved functions ----------------------


class Tiny:
    """A small FunctionApp whose ``slow`` route waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
        app = self.app

        @app.route(route="echo/{name}/{n}", methods=["PUT"])
        def echo(req: func.HttpRequest) -> func.HttpResponse:
            seen = {
                "method": req.method,
                "url": req.url,
                "params": dict(req.params),
                "route_params": dict(req.route_params),
                "header": req.headers.get("x-test"),
                "body": req.get_body().decode("utf-8"),
            }
            return func.HttpResponse(json.dumps(seen), status_code=201, mimetype="application/json")

        @app.route(route="text", methods=["GET"])
        def text(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("héllo", headers={"x-answer": "42"})

        @app.route(route="bytes", methods=["GET"])
        def binary(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse(b"\x00\x01", mimetype="application/octet-stream")

        @app.route(route="later", methods=["GET"])
        async def later(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("never served")

        @app.route(route="boom", methods=["GET"])
        def boom(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("boom")

        @app.route(route="admin-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
        def admin_only(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("ok")

        @app.route(route="slow", methods=["GET"])
        def slow(req: func.HttpRequest) -> func.HttpResponse:
            with self.lock:
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                assert self.gate.wait(TIMEOUT), "the test never opened the gate"
                return func.HttpResponse("done")
            finally:
                with self.lock:
                    self.running -= 1

        @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
        def forward_pending(timer: func.TimerRequest) -> None:
            """Scheduled, never started by these tests."""


def test_request_and_response_are_built_like_the_host() -> None:
    tiny = Tiny()
    host = build_wsgi_app(tiny.app, key=KEY, route_prefix="/v1/")
    with serving(host) as url, requests.Session() as http:
        response = http.put(
            f"{url}/v1/echo/ana%20b/-12",
            params=[("a", "1"), ("a", "2"), ("b", "x y")],
            data=b"body",
            headers={"x-test": "yes"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 201
        seen = response.json()
        assert seen["method"] == "PUT"
        assert seen["url"] == f"{url}/v1/echo/ana%20b/-12?a=1&a=2&b=x+y"
        assert seen["params"] == {"a": "1,2", "b": "x y"}
        assert seen["route_params"] == {"name": "ana b", "n": "-12"}
        assert seen["header"] == "yes"
        assert seen["body"] == "body"
        assert http.put(f"{url}/v1/echo/ana/b/12", timeout=TIMEOUT).status_code == 404

        text = http.get(f"{url}/v1/text", timeout=TIMEOUT)
        assert text.status_code == 200
        assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert text.headers["x-answer"] == "42"
        assert text.text == "héllo"

        bytes_ = http.get(f"{url}/v1/bytes", timeout=TIMEOUT)
        assert bytes_.headers["Content-Type"] == "application/octet-stream"
        assert bytes_.content == b"\x00\x01"
        assert http.get(f"{url}/v1/later", timeout=TIMEOUT).status_code == 404  # not served

        boom = http.get(f"{url}/v1/boom", timeout=TIMEOUT)
        assert boom.status_code == 500
        assert boom.content == b""

        assert http.get(f"{url}/v1/admin-only", timeout=TIMEOUT).status_code == 401
        keyed = http.get(f"{url}/v1/admin-only", params={"code": KEY}, timeout=TIMEOUT)
        assert keyed.status_code == 200


def test_overload_queues_then_answers_429() -> None:
    tiny = Tiny()
    host = build_wsgi_app(tiny.app, key=KEY, max_concurrent=1, max_outstanding=2)
    answers: list[int] = []

    def call(url: str) -> None:
        answers.append(requests.get(f"{url}/api/slow", timeout=TIMEOUT).status_code)

    with serving(host) as url:
        callers = [threading.Thread(target=call, args=(url,)) for _ in range(2)]
        try:
            callers[0].start()
            wait_until(lambda: tiny.running == 1, "the first call to run")
            callers[1].start()
            wait_until(lambda: host.throttle.outstanding == 2, "the second call to queue")
            assert tiny.running == 1  # queued, not running
            refused = requests.get(f"{url}/api/slow", timeout=TIMEOUT)
            assert refused.status_code == 429
            assert refused.content == b""
        finally:
            tiny.gate.set()
            for caller in callers:
                caller.join(TIMEOUT)
        assert answers == [200, 200]
        assert tiny.most_running == 1
        assert host.throttle.outstanding == 0
        assert requests.get(f"{url}/api/slow", timeout=TIMEOUT).status_code == 200


def test_throttle_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="maxOutstandingRequests"):
        build_wsgi_app(Tiny().app, key=KEY, max_outstanding=0)
    with pytest.raises(ValueError, match="key"):
        build_wsgi_app(Tiny().app, key="")


def test_timer_functions_are_listed_with_their_next_run() -> None:
    host = build_wsgi_app(Tiny().app, key=KEY)
    assert [(fn.name, fn.reason) for fn in host.index.unserved] == [("later", "async functions")]
    (timer,) = host.index.timers
    assert (timer.name, timer.arg_name, timer.run_on_startup) == ("forward_pending", "timer", False)
    assert timer.schedule.text == "0 */5 * * * *"
    lines = describe(host.index, "http://127.0.0.1:7071", key_hint="K", now=T0)
    assert "forward_pending: timer 0 */5 * * * * (next 2026-11-26T23:15:00Z)" in lines
    assert "echo: PUT http://127.0.0.1:7071/api/echo/{name}/{n}" in lines
    assert "later: not served (async functions)" in lines
    assert "admin_only: GET http://127.0.0.1:7071/api/admin-only (key: K)" in lines


# --- timers: schedules ----------------------------------------------------------------------

T0 = datetime(2026, 11, 26, 23, 14, 30, 250_000, tzinfo=UTC)
"""A Thursday."""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("0 */1 * * * *", T0, at("2026-11-26T23:15:00")),  # function_app.py's forward_pending
        ("0 */1 * * * *", at("2026-11-26T23:15:00"), at("2026-11-26T23:16:00")),  # strictly after
        ("0 * * * * *", at("2026-12-31T23:59:30"), at("2027-01-01T00:00:00")),
        ("*/5 * * * * *", T0, at("2026-11-26T23:14:35")),
        ("*/5 * * * * *", at("2026-11-26T23:14:35"), at("2026-11-26T23:14:40")),
        ("* * * * * *", T0, at("2026-11-26T23:14:31")),
        ("0 30 9 * * 1-5", T0, at("2026-11-27T09:30:00")),  # Friday
        ("0 30 9 * * 1-5", at("2026-11-27T09:30:00"), at("2026-11-30T09:30:00")),  # Monday
        ("0 30 9 * * Mon-fri", at("2026-11-28T00:00:00"), at("2026-11-30T09:30:00")),
        ("0 0 8,12,18 * * *", T0, at("2026-11-27T08:00:00")),
        ("0 0 8,12,18 * * *", at("2026-11-27T12:00:00"), at("2026-11-27T18:00:00")),
        ("10-40/15 * * * * *", T0, at("2026-11-26T23:14:40")),
        ("10-40/15 * * * * *", at("2026-11-26T23:14:40"), at("2026-11-26T23:15:10")),
        ("0 5/20 * * * *", T0, at("2026-11-26T23:25:00")),  # a/n: a, a+n, ... (5, 25, 45)
        ("0 0 0 1 Jan,jul *", T0, at("2027-01-01T00:00:00")),
        ("0 0 0 31 * *", T0, at("2026-12-31T00:00:00")),
        ("0 0 0 29 2 *", T0, at("2028-02-29T00:00:00")),
        ("0 0 0 13 * 5", T0, at("2027-08-13T00:00:00")),  # day AND day of week: Friday 13th
        ("0 0 0 29 2 Mon", T0, at("2044-02-29T00:00:00")),
    ],
)
def test_next_occurrence(schedule: str, after: datetime, expected: datetime) -> None:
    assert parse_schedule(schedule).next_after(after) == expected


def test_next_occurrence_is_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    after = datetime(2026, 11, 27, 0, 14, 30, tzinfo=paris)  # T0 in UTC+1
    found = parse_schedule("0 */1 * * * *").next_after(after)
    assert found == at("2026-11-26T23:15:00")
    assert found.tzinfo is UTC
    with pytest.raises(ValueError, match="no time zone"):
        parse_schedule("0 */1 * * * *").next_after(datetime(2026, 11, 26, 23, 14, 30))


@pytest.mark.parametrize(
    ("schedule", "error"),
    [
        # Forms croniter reads but the host refuses, or reads otherwise:
        ("0 */5 * * *", "has 5 field(s), NCRONTAB has 6: {second} {minute}"),
        ("0 0 0 * * 0 2027", "has 7 field(s)"),
        ("00:05:00", "TimeSpan schedules are not supported here"),
        ("%TICK_SCHEDULE%", "has 1 field(s)"),
        ("0 0 0 L * *", "bad day field item 'L'"),
        ("0 0 0 * * 5#2", "bad day-of-week field item '5#2'"),
        ("0 0 0 ? * *", "bad day field item '?'"),
        ("H * * * * *", "bad second field item 'H'"),
        ("0 0 0 * * 7", "day-of-week 7 is out of range 0-6 (0 is Sunday)"),
        ("0 0 0 * * Monday", "bad day-of-week field item 'Monday'"),
        ("0 0 5-1 * * *", "reversed hour range '5-1'"),
        ("0 0 0 * Dec-Jan *", "reversed month range 'Dec-Jan'"),
        # Errors croniter finds:
        ("", "empty"),
        ("60 * * * * *", "out of range"),
        ("0 0 24 * * *", "out of range"),
        ("0 0 0 0 * *", "out of range"),
        ("0 0 0 * 13 *", "out of range"),
        ("*/0 * * * * *", "step '0'"),
        ("*/x * * * * *", "bad second field item '*/x'"),
        ("1,,2 * * * * *", "bad second field item ''"),
        ("-1 * * * * *", "bad second field item '-1'"),
        ("0 0 0 * Foo *", "bad month value 'Foo'"),
        ("0 0 Jan * * *", "bad hour value 'Jan': expected a number"),
        ("0 0 0 30,31 2 *", "never occurs"),
    ],
)
def test_bad_schedules(schedule: str, error: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(schedule)
    assert error in str(caught.value)


def test_timer_functions_are_indexed_or_refused() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.timer_trigger(schedule="*/10 * * * * *", arg_name="t", run_on_startup=True)
    def every_ten(t: func.TimerRequest) -> None: ...

    @app.timer_trigger(schedule="0 */5 * * *", arg_name="timer")
    def five_fields(timer: func.TimerRequest) -> None: ...

    @app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer")
    def from_setting(timer: func.TimerRequest) -> None: ...

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer")
    @app.queue_output(arg_name="out", queue_name="q", connection="AzureWebJobsStorage")
    def with_output(timer: func.TimerRequest, out: func.Out[str]) -> None: ...

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer")
    async def later(timer: func.TimerRequest) -> None: ...

    index = index_app(app, "api")
    (timer,) = index.timers
    assert (timer.name, timer.arg_name, timer.run_on_startup) == ("every_ten", "t", True)
    assert timer.schedule.text == "*/10 * * * * *"
    lines = describe(index, "http://x", key_hint="K", now=T0)
    first = "every_ten: timer */10 * * * * * (at start-up, then next 2026-11-26T23:14:40Z)"
    assert lines[0] == first
    reasons = {fn.name: fn.reason for fn in index.unserved}
    assert reasons["five_fields"].startswith("bad schedule: '0 */5 * * *' has 5 field(s)")
    assert reasons["from_setting"].startswith("bad schedule: '%TICK_SCHEDULE%' has 1 field(s)")
    assert reasons["with_output"] == "unsupported bindings: queue"
    assert reasons["later"] == "async functions"
    assert f"five_fields: not served ({reasons['five_fields']})" in lines


# --- timers: the runner on a simulated clock -------------------------------------------------


class FakeClock:
    """A clock that the runner's sleeps move forward; it stops the runner at ``until``."""

    def __init__(self, start: datetime, until: datetime) -> None:
        self.now = start
        self.until = until
        self.runner: TimerRunner | None = None
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.now >= self.until:
            assert self.runner is not None
            self.runner.stop()


def timers_of(
    body: Callable[[func.TimerRequest], object], schedule: str, *, run_on_startup: bool = False
) -> tuple[TimerFunction, ...]:
    """The timers of a one-function app: ``tick`` on ``schedule`` calls ``body``."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("tick")
    @app.timer_trigger(
        schedule=schedule, arg_name="timer", run_on_startup=run_on_startup, use_monitor=False
    )
    def tick(timer: func.TimerRequest) -> None:
        body(timer)

    return build_wsgi_app(app, key=KEY).index.timers


def simulate(timers: tuple[TimerFunction, ...], clock: FakeClock) -> TimerRunner:
    runner = TimerRunner(timers, clock=clock, sleep=clock.sleep)
    clock.runner = runner
    runner.start()
    assert runner.join(TIMEOUT), "the simulated runner did not stop"
    return runner


def day(date: str, *times: str) -> list[datetime]:
    return [at(f"{date}T{moment}") for moment in times]


@pytest.mark.parametrize(
    ("schedule", "start", "until", "runs"),
    [
        (
            "0 */1 * * * *",
            at("2026-11-26T12:00:30"),
            at("2026-11-26T12:05:30"),
            day("2026-11-26", "12:01:00", "12:02:00", "12:03:00", "12:04:00", "12:05:00"),
        ),
        (
            "*/5 * * * * *",
            at("2026-11-26T12:00:03"),
            at("2026-11-26T12:00:21"),
            day("2026-11-26", "12:00:05", "12:00:10", "12:00:15", "12:00:20"),
        ),
        (
            "0 30 9 * * 1-5",
            at("2026-11-27T09:00:00"),  # a Friday, then the weekend
            at("2026-12-01T12:00:00"),
            [at("2026-11-27T09:30:00"), at("2026-11-30T09:30:00"), at("2026-12-01T09:30:00")],
        ),
    ],
)
def test_runner_follows_the_schedule(
    schedule: str, start: datetime, until: datetime, runs: list[datetime]
) -> None:
    clock = FakeClock(start, until)
    seen: list[tuple[datetime, func.TimerRequest]] = []
    simulate(timers_of(lambda timer: seen.append((clock.now, timer)), schedule), clock)
    assert [moment for moment, _ in seen] == runs
    assert all(isinstance(timer, func.TimerRequest) for _, timer in seen)
    assert not any(timer.past_due for _, timer in seen)
    assert max(clock.sleeps) <= 30  # the wall clock is looked at again at least every 30 s


def test_runner_runs_on_startup_then_on_schedule() -> None:
    clock = FakeClock(at("2026-11-26T12:00:30"), at("2026-11-26T13:30:00"))
    seen: list[datetime] = []
    simulate(timers_of(lambda _: seen.append(clock.now), "0 0 * * * *", run_on_startup=True), clock)
    assert seen == [at("2026-11-26T12:00:30"), at("2026-11-26T13:00:00")]


def test_an_overrun_is_followed_by_one_late_run_never_an_overlap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(at("2026-11-26T12:00:30"), at("2026-11-26T12:04:30"))
    starts: list[datetime] = []

    def slow_first(timer: func.TimerRequest) -> None:
        starts.append(clock.now)
        if len(starts) == 1:
            clock.now += timedelta(seconds=90)  # the 12:01 run lasts until 12:02:30

    simulate(timers_of(slow_first, "0 */1 * * * *"), clock)
    # As the host: 12:02 was missed while the first run went on; one run at once instead.
    assert starts == [
        at("2026-11-26T12:01:00"),
        at("2026-11-26T12:02:30"),
        at("2026-11-26T12:03:00"),
        at("2026-11-26T12:04:00"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "timer tick ran past its next occurrence (2026-11-26T12:02:00Z): running it now" in (
        warnings
    )


# --- timers: the runner in real time ----------------------------------------------------------


def test_every_second_for_two_and_a_half_seconds(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[func.TimerRequest] = []

    def fails_first(timer: func.TimerRequest) -> None:
        calls.append(timer)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    runner = TimerRunner(timers_of(fails_first, "*/1 * * * * *"))
    with runner:
        time.sleep(2.5)
    assert not runner.busy
    assert 2 <= len(calls) <= 3, calls
    assert all(isinstance(timer, func.TimerRequest) and not timer.past_due for timer in calls)
    records = [r for r in caplog.records if r.name == "tools.devhost"]
    (failed,) = [r for r in records if r.levelno == logging.ERROR]
    assert failed.getMessage().startswith("timer tick failed in ")
    assert failed.exc_info is not None
    ran = [r.getMessage() for r in records if r.getMessage().startswith("timer tick ran in ")]
    assert len(ran) == len(calls) - 1  # the run after the failure still happened
    assert all(line.endswith(" ms") for line in ran)


def test_run_on_startup_runs_at_once_and_stop_is_prompt() -> None:
    gate = threading.Event()
    calls: list[float] = []

    def held(timer: func.TimerRequest) -> None:
        calls.append(time.monotonic())
        assert gate.wait(TIMEOUT), "the test never opened the gate"

    # Next due on New Year's Day: only the start-up run can happen here.
    runner = TimerRunner(timers_of(held, "0 0 0 1 1 *", run_on_startup=True))
    runner.start()
    try:
        wait_until(lambda: len(calls) == 1, "the start-up run")  # next due: New Year
        assert runner.busy == ["tick"]
        runner.stop()
        assert not runner.join(0.05)  # a run under way finishes, it is not killed
    finally:
        gate.set()
    assert runner.join(TIMEOUT)
    assert runner.busy == []
    assert len(calls) == 1

    idle = TimerRunner(timers_of(held, "0 0 0 1 1 *"))
    idle.start()
    idle.stop()
    assert idle.join(TIMEOUT)  # asleep until next year, woken by stop()
    with pytest.raises(RuntimeError, match="already been started"):
        idle.start()


# --- pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "template", "rule"),
    [
        ("api", "outbound", "/api/outbound"),
        ("api", "delivery-report/{provider}", "/api/delivery-report/<provider>"),
        ("", "health", "/health"),
        ("/api/", "/a/{id}/b/{flag}", "/api/a/<id>/b/<flag>"),
        ("", "", "/"),
    ],
)
def test_route_templates(prefix: str, template: str, rule: str) -> None:
    assert route_to_rule(prefix, template) == rule


@pytest.mark.parametrize(
    "template",
    ["a/{id?}", "a/{id=1}", "a/{id:int}", "a/{id:regex(x)}", "files/{*rest}", "a/<b>", "a/{1x}"],
)
def test_unsupported_route_templates(template: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        route_to_rule("api", template)


def test_host_json_settings(tmp_path: Path) -> None:
    repo = read_host_settings(REPO / "host.json")
    assert (repo.route_prefix, repo.max_concurrent, repo.max_outstanding) == ("api", 64, 256)
    absent = read_host_settings(tmp_path / "host.json")
    assert (absent.route_prefix, absent.max_concurrent, absent.max_outstanding) == ("api", -1, -1)
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": ""}}}')
    assert read_host_settings(tmp_path / "host.json").route_prefix == ""


def test_local_settings_fill_only_unset_names(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(
        json.dumps({"IsEncrypted": False, "Values": {"A": "from-file", "B": "from-file", "N": 3}})
    )
    environ = {"A": "already"}
    assert load_local_settings(path, environ) == ["B", "N"]
    assert environ == {"A": "already", "B": "from-file", "N": "3"}
    assert load_local_settings(tmp_path / "absent.json", environ) == []
    path.write_text(json.dumps({"IsEncrypted": True, "Values": {"A": "x"}}))
    with pytest.raises(SystemExit, match="encrypted"):
        load_local_settings(path, environ)


# --- python -m tools.devhost ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_module_serves_and_stops_on_sigterm(configure: Configure, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CHANNEL_DEVHOST_KEY": KEY,
        "CHANNEL_LEDGER_PATH": str(tmp_path / "devhost-ledger.sqlite3"),
        "CHANNEL_PROVIDER": "loopback",  # whatever a developer's local.settings.json says
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}/api"
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "tools.devhost", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with requests.Session() as http:

            def healthy() -> bool:
                assert process.poll() is None, "devhost exited early"
                try:
                    return http.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_until(healthy, "the devhost to answer")
            sent = http.post(
                f"{url}/outbound", json=payload(), headers={"x-functions-key": KEY}, timeout=TIMEOUT
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["Status"] == "Sent"
            assert http.post(f"{url}/outbound", json=payload(), timeout=TIMEOUT).status_code == 401
            keyed = http.post(
                f"{url}/outbound", params={"code": KEY}, json=payload(), timeout=TIMEOUT
            )
            assert keyed.status_code == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode("utf-8")
    assert process.returncode == 0, text
    banner = f"outbound: POST http://127.0.0.1:{port}/api/outbound (key: $CHANNEL_DEVHOST_KEY)"
    assert banner in text
    assert f"health: GET http://127.0.0.1:{port}/api/health\n" in text
    assert "POST /api/outbound 200 " in text
    assert "POST /api/outbound 401 " in text
    assert "devhost: stopped" in text
    assert "forward_pending: timer 0 */1 * * * * (next " in text  # croniter read the app's
    assert KEY not in text
    assert "code=" not in text
    logging.getLogger(__name__).info("devhost output checked (%d lines)", text.count("\n"))


TIMER_APP = """
import os
import time

import azure.functions as func

app = func.FunctionApp()


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def tick(timer: func.TimerRequest) -> None:
    print(f"tick past_due={timer.past_due} {os.environ['TICK_GREETING']}", flush=True)
    time.sleep(0.3)  # still running when the signal comes: the host waits for it
    print("tick done", flush=True)
"""


def test_module_runs_timers_and_stops_on_sigint(tmp_path: Path) -> None:
    (tmp_path / "function_app.py").write_text(TIMER_APP)
    settings = {"Values": {"TICK_GREETING": "from local.settings.json"}}
    (tmp_path / "local.settings.json").write_text(json.dumps(settings))
    log_path = tmp_path / "devhost.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "WEBSITE_TIME_ZONE": "Europe/Paris",
    }
    with log_path.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "tools.devhost", "--port", str(free_port())],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:

            def ticking() -> bool:
                assert process.poll() is None, log_path.read_text()
                return "tick past_due=False" in log_path.read_text()

            wait_until(ticking, "the start-up run")
            process.send_signal(signal.SIGINT)
            process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log_path.read_text()
    assert process.returncode == 0, text
    assert "tick: timer 0 0 0 1 1 * (at start-up, then next " in text
    assert "devhost: timers run in UTC; WEBSITE_TIME_ZONE=Europe/Paris is ignored" in text
    # The run under way finished before the devhost said it stopped.
    assert text.index("tick done") < text.index("timer tick ran in ") < text.index("stopped")
    assert text.count("tick past_due=") == 1
    assert "tick past_due=False from local.settings.json" in text


# --- what is deployed ---------------------------------------------------------------------


def _imported_roots(path: Path) -> set[str]:
    import ast

    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_deployed_app_needs_nothing_of_the_local_host() -> None:
    deployed = [REPO / "function_app.py", *sorted((REPO / "channel").rglob("*.py"))]
    imported = set().union(*(_imported_roots(path) for path in deployed))
    assert "channel" in imported  # the scan sees the app's own imports
    assert not imported & {"werkzeug", "croniter", "tools", "tests", "bench"}
    runtime = (REPO / "requirements.txt").read_text(encoding="utf-8").lower()
    assert "werkzeug" not in runtime
    assert "croniter" not in runtime
    local_host = (REPO / "requirements-devhost.txt").read_text(encoding="utf-8").lower()
    assert "-r requirements.txt" in local_host
    assert "werkzeug" in local_host
    assert "croniter" in local_host
