"""Delivery-report overhead: what the channel adds to one Dataverse notification, warm.

One ratio and two counts. *Overhead*: the median latency of the ``delivery_report``
function (called as the host calls it: an ``azure.functions.HttpRequest`` for
``/api/delivery-report/twilio?rid=<RequestId>`` with Twilio's form and a valid
``X-Twilio-Signature``; final status ``delivered``; embedded SQLite ledger in a temp dir;
token already cached) over the median of a bare ``requests.Session().post`` of the same
JSON body with the same headers to the same fake Dataverse on 127.0.0.1, which answers
204 at once. Every report is for a distinct message the app sent first through
``outbound`` (to a fake Twilio that keeps each StatusCallback), so each one really makes
a notification; the fake Dataverse checks that each call made exactly one. Both sides
run in alternating blocks after a warm-up, so drift cancels out. Target: <= 1.3.
*Counts*, from a fresh runtime: requests to the fake managed-identity endpoint in the
first 1,000 notifications (expected 1), and TCP connections the app opened to the fake
Dataverse in its first 1,000 calls (expected a handful at most).

Run from the repository root: ``.venv/bin/python -m bench.delivery_report
[--iterations N] [--profile N]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit

import azure.functions as func
import requests
from twilio.request_validator import RequestValidator

from bench.common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BLOCK,
    HOST_URL,
    PUBLIC_URL,
    ROOT,
    FakeServer,
    FakeTwilioServer,
    FastHandler,
    Function,
    Stats,
    Timed,
    app_functions,
    channel_env,
    fake_twilio,
    http_request,
    interleave,
    missed,
    payload_body,
    quiet_logging,
    serving,
    use_env,
    verdict,
    warmup_calls,
)
from tests.data import DEFINITION_ID, RECIPIENT, SENDER, SENDER_E164

TARGET = 1.3
PER = 1_000
"""The counts are given per this many notifications / Dataverse calls."""
IDENTITY_SECRET = "bench-identity-header"  # noqa: S105 - the fake endpoint's shared secret
ORGANIZATION_ID = "7d2f4e3a-1b2c-4d5e-8f90-123456789abc"
API_PATH = "/api/data/v9.2"
NOTIFICATION_PATH = f"{API_PATH}/msdyn_D365ChannelsNotification"
WHOAMI_PATH = f"{API_PATH}/WhoAmI"
TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "Content-Type": "application/json; charset=utf-8",
}
"""What the app sends with every Dataverse POST besides Authorization."""


# -- the fake managed-identity endpoint -------------------------------------------------


class FakeIdentityServer(FakeServer):
    """The App Service managed-identity endpoint: one-hour tokens, every request counted."""

    def __init__(self) -> None:
        super().__init__(_FakeIdentityHandler)
        self.url = self.base_url + TOKEN_PATH
        self.requests = 0
        self.issued: list[str] = []
        self.lock = threading.Lock()


class _FakeIdentityHandler(FastHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = cast(FakeIdentityServer, self.server)
        parts = urlsplit(self.path)
        with server.lock:
            server.requests += 1
            token = f"bench-token-{len(server.issued) + 1}"
            if parts.path != TOKEN_PATH or self.headers.get("X-IDENTITY-HEADER") != (
                IDENTITY_SECRET
            ):
                self.answer(400, b'{"error":"bad_request"}')
                return
            server.issued.append(token)
        body = {
            "access_token": token,
            "expires_on": str(int(time.time()) + 3600),
            "resource": parse_qs(parts.query).get("resource", [""])[0],
            "token_type": "Bearer",
        }
        self.answer(200, json.dumps(body).encode())


# -- the fake Dataverse ----------------------------------------------------------------


class FakeDataverseServer(FakeServer):
    """Dataverse's Web API reduced to its fastest answers: 204 to a notification, WhoAmI.

    Each call's bearer token (one the fake identity issued), OData headers and body shape
    are checked; a breach is answered 400 and listed in ``rejected``. Notifications are
    recorded as ``(RequestId, Status)``, except the bare POST's (``bare_request_id``),
    which are only counted. Each connection notes whether it carried a bare POST, so
    the app's connections can be told from the bare session's.
    """

    def __init__(self, identity: FakeIdentityServer, bare_request_id: str) -> None:
        super().__init__(_FakeDataverseHandler)
        self.identity = identity
        self.bare_request_id = bare_request_id
        self.notifications: list[tuple[str, str]] = []
        self.bare_posts = 0
        self.whoami = 0
        self.rejected: list[str] = []
        self.last_app_body_size = 0
        self.carried_bare: list[bool] = []
        """One entry per accepted connection: True once it carried a bare POST."""
        self.tokens_at_per: int | None = None
        """Token requests when the app's PER-th notification arrived."""
        self.connections_at_per: int | None = None
        """The app's connections when its PER-th Dataverse call arrived."""
        self.lock = threading.Lock()

    @property
    def app_calls(self) -> int:
        """Dataverse calls the app made (WhoAmI and notifications)."""
        return self.whoami + len(self.notifications)

    @property
    def app_connections(self) -> int:
        """Connections that never carried a bare POST: the app's."""
        return self.carried_bare.count(False)

    def problems(self, handler: FastHandler) -> list[str]:
        """What is wrong with a call's token and OData headers."""
        found = []
        token = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.identity.issued:
            found.append(f"unknown bearer token {token!r}")
        for name, value in ODATA_HEADERS.items():
            if handler.command == "GET" and name == "Content-Type":
                continue
            if handler.headers.get(name) != value:
                found.append(f"{name}: {handler.headers.get(name)!r}")
        return found

    def app_called(self) -> None:
        """Snapshot the counts at the app's PER-th call and notification (under the lock)."""
        if self.app_calls == PER:
            self.connections_at_per = self.app_connections
        if len(self.notifications) == PER:
            self.tokens_at_per = self.identity.requests


class _FakeDataverseHandler(FastHandler):
    def setup(self) -> None:
        super().setup()
        server = cast(FakeDataverseServer, self.server)
        with server.lock:
            self.index = len(server.carried_bare)
            server.carried_bare.append(False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = cast(FakeDataverseServer, self.server)
        if self.path != WHOAMI_PATH:
            self.answer(404)
            return
        with server.lock:
            problems = server.problems(self)
            if problems:
                server.rejected.extend(problems)
                self.answer(400)
                return
            server.whoami += 1
            server.app_called()
        body = {"BusinessUnitId": "b", "UserId": "u", "OrganizationId": ORGANIZATION_ID}
        self.answer(200, json.dumps(body).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        server = cast(FakeDataverseServer, self.server)
        body = self.read_body()
        if self.path != NOTIFICATION_PATH:
            self.answer(404)
            return
        with server.lock:
            problems = server.problems(self)
            try:
                parameter = json.loads(body)
                payload = json.loads(parameter["notificationPayLoad"])
                rid, status = payload["RequestId"], payload["Status"]
                if list(parameter) != ["notificationPayLoad"]:
                    problems.append(f"body members {list(parameter)}")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"body {body!r}: {exc!r}")
            if problems:
                server.rejected.extend(problems)
                self.answer(400)
                return
            if rid == server.bare_request_id:
                server.bare_posts += 1
                server.carried_bare[self.index] = True
            else:
                server.notifications.append((rid, status))
                server.last_app_body_size = len(body)
                server.app_called()
        self.answer(204, extra_headers="OData-Version: 4.0\r\n")


@dataclass(frozen=True)
class Fakes:
    """The three fakes of one run."""

    twilio: FakeTwilioServer
    identity: FakeIdentityServer
    dataverse: FakeDataverseServer


@contextmanager
def fakes(bare_request_id: str) -> Iterator[Fakes]:
    """Fake Twilio, identity endpoint and Dataverse, serving for the duration of the block."""
    identity = FakeIdentityServer()
    dataverse = FakeDataverseServer(identity, bare_request_id)
    with (
        fake_twilio(record=True) as twilio,
        serving(identity, "fake-identity"),
        serving(dataverse, "fake-dataverse"),
    ):
        yield Fakes(twilio, identity, dataverse)


# -- inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    """A message the app sent through ``outbound``: what its delivery report refers to."""

    request_id: str
    message_id: str
    status_callback: str
    """The StatusCallback URL the app gave Twilio for it."""


def send_messages(outbound: Function, twilio: FakeTwilioServer, count: int) -> list[SentMessage]:
    """``count`` new RequestIds sent through the app (ledger records, Twilio sids)."""
    sent = []
    for _ in range(count):
        rid = str(uuid.uuid4())
        response = outbound(http_request(payload_body(rid)))
        answer = json.loads(response.get_body())
        assert response.status_code == 200, response.get_body()
        assert answer["Status"] == "Sent", answer
        sid = answer["MessageId"]
        callback = twilio.callbacks[sid]
        assert callback == f"{PUBLIC_URL}/api/delivery-report/twilio?rid={rid}", callback
        sent.append(SentMessage(rid, sid, callback))
    return sent


def status_form(message_sid: str, status: str) -> dict[str, str]:
    """The form of a Twilio status callback, fields in the order Twilio posts them."""
    return {
        "SmsSid": message_sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": RECIPIENT,
        "MessageSid": message_sid,
        "AccountSid": ACCOUNT_SID,
        "From": SENDER_E164,
        "ApiVersion": "2010-04-01",
    }


def report_request(message: SentMessage, validator: RequestValidator) -> func.HttpRequest:
    """The request the host hands to ``delivery_report`` for Twilio's "delivered" callback.

    Signed as Twilio signs: the public URL, the route path and the raw query, then the
    form (``RequestValidator.compute_signature``, the official helper).
    """
    parts = urlsplit(message.status_callback)
    signed_url = PUBLIC_URL + parts.path + "?" + parts.query
    form = status_form(message.message_id, "delivered")
    signature: str = validator.compute_signature(signed_url, form)
    return func.HttpRequest(
        method="POST",
        url=f"{HOST_URL}{parts.path}?{parts.query}",
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "user-agent": "TwilioProxy/1.1",
            "i-twilio-idempotency-token": str(uuid.uuid4()),
            "x-twilio-signature": signature,
        },
        params={name: values[0] for name, values in parse_qs(parts.query).items()},
        route_params={"provider": "twilio"},
        body=urlencode(form).encode("utf-8"),
    )


def bare_body(request_id: str) -> bytes:
    """The JSON body the app posts for a delivered message, byte for byte in shape and size."""
    from channel.contracts import DeliveryNotification

    notification = DeliveryNotification(
        ChannelDefinitionId=DEFINITION_ID,
        RequestId=request_id,
        MessageId=f"SM{0:032x}",
        From=SENDER,
        OrganizationId=ORGANIZATION_ID,
        Status="Delivered",
    )
    body = {"notificationPayLoad": notification.to_json()}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


# -- measurement -----------------------------------------------------------------------


class ReportCalls:
    """Timed calls of ``delivery_report``, one per message sent beforehand, each checked.

    A call is timed alone; then its answer must be Twilio's empty TwiML and the fake
    Dataverse must have received exactly one notification, for that RequestId.
    """

    def __init__(
        self,
        function: Function,
        dataverse: FakeDataverseServer,
        reports: list[tuple[str, func.HttpRequest]],
        expected_body: bytes,
    ) -> None:
        self.function = function
        self.dataverse = dataverse
        self.pending = list(reversed(reports))
        self.expected_body = expected_body
        self.checked = 0

    def __call__(self) -> float:
        rid, request = self.pending.pop()
        before = len(self.dataverse.notifications)
        start = time.perf_counter()
        response = self.function(request)
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.get_body()
        assert response.get_body() == self.expected_body, response.get_body()
        made = self.dataverse.notifications[before:]
        assert made == [(rid, "Delivered")], made
        self.checked += 1
        return elapsed


@contextmanager
def app_under_test(fakes: Fakes, ledger_dir: Path, messages: int) -> Iterator[ReportCalls]:
    """The app, configured for the fakes, with ``messages`` sent and their reports ready.

    Messages are sent and reports built beforehand: the host builds requests, and the
    figure is about handling a report. The runtime is fresh, so counts start at zero.
    """
    from channel.providers.twilio import EMPTY_TWIML
    from channel.runtime import reset_runtime

    use_env(
        channel_env(
            fakes.twilio.base_url,
            str(ledger_dir / "ledger.sqlite3"),
            DATAVERSE_URL=fakes.dataverse.base_url,
            IDENTITY_ENDPOINT=fakes.identity.url,
            IDENTITY_HEADER=IDENTITY_SECRET,
        )
    )
    reset_runtime()
    try:
        functions = app_functions()
        validator = RequestValidator(AUTH_TOKEN)
        sent = send_messages(functions["outbound"], fakes.twilio, messages)
        reports = [(m.request_id, report_request(m, validator)) for m in sent]
        yield ReportCalls(
            functions["delivery_report"], fakes.dataverse, reports, EMPTY_TWIML.encode()
        )
    finally:
        reset_runtime()


@dataclass(frozen=True)
class Result:
    """The warm figures: delivery_report function vs bare POST."""

    report: Stats
    bare: Stats
    body_sizes: tuple[int, int]
    """The last notification body of the app and the bare body, in bytes."""

    @property
    def ratio(self) -> float:
        """Report median over bare-POST median."""
        return self.report.median / self.bare.median


def messages_needed(iterations: int, profile_calls: int) -> int:
    """Reports a run makes: the untimed first, warm-up, measured, breakdown and profile."""
    return 1 + warmup_calls(iterations) + iterations + 2 * profile_calls


def measure(fakes: Fakes, call_report: ReportCalls, iterations: int) -> Result:
    """Median latency of the delivery_report function and of a bare POST, in blocks."""
    from channel.dataverse import CONNECT_TIMEOUT, READ_TIMEOUT

    dataverse = fakes.dataverse
    # Untimed first call: it fetches the token and WhoAmI, whose token the bare POST reuses.
    call_report()
    assert len(fakes.identity.issued) == 1, fakes.identity.issued
    session = requests.Session()
    url = dataverse.base_url + NOTIFICATION_PATH
    body = bare_body(dataverse.bare_request_id)
    headers = {"Authorization": f"Bearer {fakes.identity.issued[0]}", **ODATA_HEADERS}

    def call_bare() -> float:
        start = time.perf_counter()
        reply = session.post(
            url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        )
        elapsed = time.perf_counter() - start
        assert reply.status_code == 204, reply.text
        return elapsed

    report_times, bare_times = interleave(call_report, call_bare, iterations)
    session.close()
    sizes = (dataverse.last_app_body_size, len(body))
    return Result(Stats.of(report_times), Stats.of(bare_times), sizes)


STAGES: tuple[tuple[int, str, str, str], ...] = (
    # (depth, owner, attribute, label) in the order a report runs through them
    (0, "http", "_webhook", "channel/http.py:_webhook"),
    (0, "adapter", "verify", "channel/providers/twilio.py:TwilioWebhooks.verify"),
    (0, "adapter", "status_reports", "channel/providers/twilio.py:TwilioWebhooks.status_reports"),
    (0, "ledger", "get", "channel/ledger/messages.py:MessageLedger.get"),
    (0, "ledger", "confirm_sent", "channel/ledger/messages.py:MessageLedger.confirm_sent"),
    (0, "outbox", "put", "channel/ledger/outbox.py:Outbox.put"),
    (0, "outbox", "claim", "channel/ledger/outbox.py:Outbox.claim"),
    (0, "dataverse", "organization_id", "channel/dataverse.py:DataverseClient.organization_id"),
    (0, "dataverse", "notify", "channel/dataverse.py:DataverseClient.notify"),
    (1, "dataverse", "_send", "channel/dataverse.py:DataverseClient._send"),
    (2, "tokens", "token", "channel/identity.py:TokenSource.token"),
    (2, "session", "request", "requests Session.request: the HTTP call itself"),
    (0, "outbox", "forwarded", "channel/ledger/outbox.py:Outbox.forwarded"),
    (0, "adapter", "acknowledge", "channel/providers/twilio.py:TwilioWebhooks.acknowledge"),
    (0, "http", "_reply", "channel/http.py:_reply"),
    (-1, "store", "get", "channel/ledger/embedded.py:EmbeddedStore.get"),
    (-1, "store", "insert", "channel/ledger/embedded.py:EmbeddedStore.insert"),
    (-1, "store", "replace", "channel/ledger/embedded.py:EmbeddedStore.replace"),
)
"""What :func:`breakdown` times; depth -1: the SQLite calls inside the ledger and outbox rows."""


def _timed(function: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    return timed


def _wrapper_cost() -> float:
    """Seconds one timing wrapper adds to a call (so the table can be read net of it)."""

    def nothing() -> None:
        return None

    wrapped = _timed(nothing, [])
    runs = 20_000
    start = time.perf_counter()
    for _ in range(runs):
        nothing()
    bare = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(runs):
        wrapped()
    return max(0.0, (time.perf_counter() - start - bare) / runs)


def breakdown(call: Timed, calls: int) -> None:
    """Time each stage of ``calls`` more report calls with wall-clock wrappers, ms per call.

    No profiler: every stage in STAGES is wrapped in a ``perf_counter`` pair on the live
    runtime's objects, so the figures are close to the unprofiled ones (each wrapper adds
    the cost printed with the table). Means, so that the rows add up.
    """
    import channel.http as http_module
    from channel.runtime import get_runtime

    runtime = get_runtime()
    owners: dict[str, object] = {
        "http": http_module,
        "adapter": runtime.webhooks("twilio"),
        "ledger": runtime.ledger,
        "outbox": runtime.outbox,
        "dataverse": runtime.dataverse,
        "tokens": runtime.tokens,
        "session": runtime.session,
        "store": runtime.ledger.store,
    }
    spent: dict[str, list[float]] = {label: [] for *_, label in STAGES}
    originals: list[tuple[object, str, Any]] = []
    for _, owner, attribute, label in STAGES:
        original = getattr(owners[owner], attribute)
        originals.append((owners[owner], attribute, original))
        setattr(owners[owner], attribute, _timed(original, spent[label]))
    try:
        totals = [call() for _ in range(calls)]
    finally:
        for target, attribute, original in originals:
            if target is http_module:
                setattr(target, attribute, original)
            else:
                delattr(target, attribute)  # the class's method shows through again
    wrapped_calls = sum(len(sink) for sink in spent.values()) / calls
    cost = _wrapper_cost()

    def ms(label: str) -> float:
        return sum(spent[label]) / calls * 1e3

    total = sum(totals) / calls * 1e3
    print(
        f"\nbreakdown: {calls} more report calls, each stage timed (mean ms per report call; "
        f"{wrapped_calls:.0f} wrapped calls per report, about {cost * 1e6:.2f} us each)"
    )
    print(f"  {'ms/call':>8}  {'calls':>5}  stage")
    print(f"  {total:8.3f}  {1:5d}  function_app.py:delivery_report (whole call)")
    for depth, _, _, label in STAGES:
        if depth >= 0:
            calls_per = len(spent[label]) / calls
            print(f"  {ms(label):8.3f}  {calls_per:5.1f}  {'  ' * (depth + 1)}{label}")
    top = sum(ms(label) for depth, *_, label in STAGES if depth == 0)
    print(
        f"  {total - top:8.3f}  {'':5}    the rest: channel/http.py:delivery_report and "
        "channel/webhooks.py glue (Budget, model_validate, payload dicts, HttpResponse)"
    )
    store = [label for depth, *_, label in STAGES if depth < 0]
    print(
        f"  {sum(ms(label) for label in store):8.3f}  "
        f"{sum(len(spent[label]) for label in store) / calls:5.1f}  "
        "of the rows above, SQLite store calls:"
    )
    for label in store:
        print(f"  {ms(label):8.3f}  {len(spent[label]) / calls:5.1f}    {label}")
    http_call = ms("requests Session.request: the HTTP call itself")
    print(f"  {total - http_call:8.3f}  {'':5}  outside the HTTP call: what the channel adds")


def profile(call: Timed, calls: int, top: int = 25) -> None:
    """cProfile ``calls`` more calls; print where the time goes, in ms per call.

    Two tables: our functions (``channel/``, ``function_app.py``) by cumulative time, and
    every function (libraries and builtins too) by its own time. cProfile inflates small
    functions: read the shares, not the absolute figures.
    """
    profiler = cProfile.Profile()
    timings = []
    profiler.enable()
    for _ in range(calls):
        timings.append(call())
    profiler.disable()
    median_ms = statistics.median(timings) * 1e3
    print(f"\nprofile: {calls} more report calls under cProfile, median {median_ms:.3f} ms")
    # pstats keeps (file, line, name) -> (primitive calls, calls, own s, cumulative s, callers)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = pstats.Stats(
        profiler
    ).stats  # type: ignore[attr-defined]
    rows = [
        (cumulative / calls * 1e3, own / calls * 1e3, count / calls, _where(path, line, name))
        for (path, line, name), (_, count, own, cumulative, _) in raw.items()
    ]
    header = "  cumulative ms/call   own ms/call   calls/call   function"
    print("  our code, by cumulative time:")
    print(header)
    ours = [row for row in rows if row[3].startswith(("channel/", "function_app.py"))]
    for cumulative, own, count, where in sorted(ours, reverse=True)[:top]:
        print(f"  {cumulative:18.3f}   {own:11.3f}   {count:10.1f}   {where}")
    print("  everything, by own time:")
    print(header)
    for cumulative, own, count, where in sorted(rows, key=lambda row: -row[1])[:top]:
        print(f"  {cumulative:18.3f}   {own:11.3f}   {count:10.1f}   {where}")


def _where(path: str, line: int, name: str) -> str:
    """``file:function`` relative to the repository or site-packages when it can be."""
    if path == "~":  # a builtin: pstats names it {method 'execute' of ...}
        return name
    for base in (ROOT, *(Path(p) for p in sys.path if p.endswith("site-packages"))):
        try:
            return f"{Path(path).resolve().relative_to(base.resolve())}:{name}"
        except ValueError:
            continue
    return f"{Path(path).name}:{name}"


# -- report ----------------------------------------------------------------------------


def per_thousand(snapshot: int | None, total: int, denominator: int) -> str:
    """A count per PER, exact at the PER-th event when the run got that far, else scaled."""
    if snapshot is not None:
        return f"{snapshot}"
    return f"{total * PER / max(denominator, 1):.2f} (scaled from {total} in {denominator})"


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures (exit status 1 when a target is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_report", description=__doc__)
    parser.add_argument("--iterations", type=int, default=1000, help="warm calls of each kind")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then time each stage of N more report calls, and cProfile N more",
    )
    options = parser.parse_args(argv)
    if options.iterations < 2 or options.profile < 0:
        parser.error("--iterations must be >= 2 and --profile >= 0")

    quiet_logging()
    bare_rid = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, fakes(bare_rid) as fake:
        dataverse, identity = fake.dataverse, fake.identity
        print(
            f"fake Dataverse at {dataverse.base_url}; fake identity at {identity.url}; "
            f"fake Twilio at {fake.twilio.base_url}; ledger under {tmp}"
        )
        print(f"\nwarm: {options.iterations} calls of each kind, blocks of {BLOCK}, ABBA")
        messages = messages_needed(options.iterations, options.profile)
        with app_under_test(fake, Path(tmp), messages) as call_report:
            result = measure(fake, call_report, options.iterations)
            print(result.report.line("delivery report"))
            print(result.bare.line("bare POST"))
            overhead_ms = (result.report.median - result.bare.median) * 1e3
            print(
                f"  ratio {result.ratio:.2f} ({verdict(result.ratio, TARGET)})"
                f"  overhead {overhead_ms:.3f} ms/call"
            )
            if options.profile:
                breakdown(call_report, options.profile)
                profile(call_report, options.profile)

        per_rid = Counter(rid for rid, _ in dataverse.notifications)
        once = sum(1 for n in per_rid.values() if n == 1)
        checked = call_report.checked
        app_size, bare_size = result.body_sizes
        print(
            f"\ncheck: {checked} report calls (untimed first, warm-up, measured"
            f"{', breakdown, profile' if options.profile else ''}), "
            "each made exactly one notification: "
            f"{'ok' if once == checked == len(per_rid) else 'NO'}"
            f" ({len(dataverse.notifications)} notifications for {len(per_rid)} RequestIds, "
            f"{len(dataverse.rejected)} rejected by the fake)"
        )
        print(
            f"  bare POSTs: {dataverse.bare_posts}; body {bare_size} bytes "
            f"(the app's: {app_size} bytes)"
        )

        print(f"\ncounts from a fresh runtime (exact at the {PER:,}th event):")
        tokens = per_thousand(
            dataverse.tokens_at_per, identity.requests, len(dataverse.notifications)
        )
        app_connections = dataverse.app_connections
        connections = per_thousand(
            dataverse.connections_at_per, app_connections, dataverse.app_calls
        )
        print(
            f"  token requests per {PER:,} notifications: {tokens}"
            f"  (all run: {identity.requests} for {len(dataverse.notifications)})"
        )
        print(
            f"  new connections per {PER:,} Dataverse calls: {connections}"
            f"  (all run: {app_connections} for {dataverse.app_calls} calls, {dataverse.whoami}"
            f" WhoAmI; the bare session's: {dataverse.connections - app_connections})"
        )
        if dataverse.rejected:
            print(f"  the fake Dataverse rejected: {dataverse.rejected[:3]}")

    print()
    print(
        f"warm delivery-report overhead: {result.ratio:.2f} (target <= {TARGET})  "
        f"report {result.report.median * 1e3:.2f} ms / bare POST {result.bare.median * 1e3:.2f} ms"
    )
    print(f"token requests per {PER:,} notifications: {tokens}")
    print(f"new connections per {PER:,} Dataverse calls: {connections}")
    return missed(("warm delivery report", result.ratio, TARGET))


if __name__ == "__main__":
    sys.exit(main())
