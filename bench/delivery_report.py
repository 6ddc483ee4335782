"""Delivery-report overhead: what the channel adds to one Dataverse notification, warm.

One ratio and two counts. *Overhead*: the median latency of the ``delivery_report``
function (called as the host calls it: an ``azure.functions.HttpRequest`` for
``/api/delivery-report/twilio?rid=<RequestId>`` with Twilio's form and a valid
``X-Twilio-Signature``; final status ``delivered``; embedded SQLite ledger in a temp dir;
token already cached) over the median of a bare ``requests.Session().post`` of the same
JSON body with the same headers to the same fake Dataverse on 127.0.0.1 (the tests'
``FakeDataverse``: it checks the token, OData headers and body shape, then answers 204).
Every report is for a distinct message the app sent first through ``outbound`` (to the
tests' fake Twilio, whose request log gives each StatusCallback), so each one really
makes a notification; each call is checked to have made exactly one. Both sides
run in alternating blocks after a warm-up, so drift cancels out. Target: <= 1.3.
*Counts*, from a fresh runtime, read from the fakes' request logs: requests to the fake
managed-identity endpoint before the 1,000th notification (expected 1), and TCP
connections the app opened to the fake Dataverse in its first 1,000 calls (expected a
handful at most).

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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import azure.functions as func
from twilio.request_validator import RequestValidator

from bench.common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BLOCK,
    HOST_URL,
    PUBLIC_URL,
    ROOT,
    FastServer,
    Function,
    Served,
    Stats,
    Timed,
    app_functions,
    bare_post,
    channel_env,
    fast_server,
    http_request,
    interleave,
    missed,
    payload_body,
    quiet_logging,
    twilio_form,
    use_env,
    verdict,
)
from tests.data import DEFINITION_ID, RECIPIENT, SENDER, SENDER_E164
from tests.fakes import IDENTITY_SECRET, ORGANIZATION_ID, FakeDataverse, FakeIdentity, FakeTwilio

TARGET = 1.3
PER = 1_000
"""The counts are given per this many notifications / Dataverse calls."""
NOTIFY = "msdyn_D365ChannelsNotification"
NOTIFICATION_PATH = f"/api/data/v9.2/{NOTIFY}"
ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "Content-Type": "application/json; charset=utf-8",
}
"""What the app sends with every Dataverse POST besides Authorization."""


# -- the tests' fakes, served fast -------------------------------------------------------


@dataclass(frozen=True)
class Fakes:
    """The fakes of one run (tests/fakes.py), each on its own FastServer."""

    twilio: FakeTwilio
    identity: FakeIdentity
    dataverse: FakeDataverse
    servers: dict[str, FastServer]
    """Where each is served, by name: their request logs."""

    @property
    def identity_url(self) -> str:
        """IDENTITY_ENDPOINT for the app."""
        return self.servers["identity"].url_for("/msi/token")

    def status_callbacks(self) -> dict[str, str]:
        """Each message sid the fake Twilio handed out, with the StatusCallback it was given."""
        return {
            json.loads(served.response.get_data())["sid"]: served.request.form["StatusCallback"]
            for served in self.servers["twilio"].requests_to(self.twilio.path)
        }


@contextmanager
def fakes() -> Iterator[Fakes]:
    """Fake Twilio, identity endpoint and Dataverse, serving for the duration of the block."""
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(fast_server(f"fake-{name}"))
            for name in ("twilio", "identity", "dataverse")
        }
        twilio = FakeTwilio(servers["twilio"].as_httpserver())
        twilio.accept()
        identity = FakeIdentity(servers["identity"].as_httpserver())
        dataverse = FakeDataverse(servers["dataverse"].as_httpserver(), identity)
        yield Fakes(twilio, identity, dataverse, servers)


def _request_id(served: Served) -> str | None:
    """The RequestId of a notification call (None for WhoAmI)."""
    if served.request.method != "POST":
        return None
    body = json.loads(served.request.get_data())
    rid: str = json.loads(body["notificationPayLoad"])["RequestId"]
    return rid


@dataclass(frozen=True)
class Counts:
    """Token requests and connections of the app, read from the fakes' request logs."""

    notifications: int
    """The app's notifications (the bare POSTs left out)."""
    app_calls: int
    """The app's Dataverse calls: WhoAmI and notifications."""
    whoami: int
    token_requests: int
    app_connections: int
    bare_connections: int
    tokens_at_per: int | None
    """Token requests before the app's PER-th notification arrived."""
    connections_at_per: int | None
    """The app's connections when its PER-th Dataverse call arrived."""
    last_app_body_size: int


def counts(fake: Fakes, bare_request_id: str) -> Counts:
    """What the app asked of the identity endpoint and Dataverse, in arrival order."""
    dataverse_server = fake.servers["dataverse"]
    with dataverse_server.lock:
        served = list(dataverse_server.log)
    bare = [s for s in served if _request_id(s) == bare_request_id]
    app = [s for s in served if _request_id(s) != bare_request_id]
    notes = [s for s in app if s.request.method == "POST"]
    tokens = [s.arrival for s in fake.servers["identity"].log]
    tokens_at_per = (
        sum(1 for arrival in tokens if arrival < notes[PER - 1].arrival)
        if len(notes) >= PER
        else None
    )
    connections_at_per = len({s.connection for s in app[:PER]}) if len(app) >= PER else None
    return Counts(
        notifications=len(notes),
        app_calls=len(app),
        whoami=len(app) - len(notes),
        token_requests=len(tokens),
        app_connections=len({s.connection for s in app}),
        bare_connections=len({s.connection for s in bare}),
        tokens_at_per=tokens_at_per,
        connections_at_per=connections_at_per,
        last_app_body_size=len(notes[-1].request.get_data()) if notes else 0,
    )


# -- inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    """A message the app sent through ``outbound``: what its delivery report refers to."""

    request_id: str
    message_id: str
    status_callback: str
    """The StatusCallback URL the app gave Twilio for it."""


def send_messages(outbound: Function, fake: Fakes, count: int) -> list[SentMessage]:
    """``count`` new RequestIds sent through the app (ledger records, Twilio sids)."""
    answers = []
    for _ in range(count):
        rid = str(uuid.uuid4())
        response = outbound(http_request(payload_body(rid)))
        answer = json.loads(response.get_body())
        assert response.status_code == 200, response.get_body()
        assert answer["Status"] == "Sent", answer
        answers.append((rid, answer["MessageId"]))
    callbacks = fake.status_callbacks()
    sent = []
    for rid, sid in answers:
        callback = callbacks[sid]
        assert callback == twilio_form(rid)["StatusCallback"], callback
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
        dataverse: FakeDataverse,
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
        before = len(self.dataverse.calls)
        start = time.perf_counter()
        response = self.function(request)
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.get_body()
        assert response.get_body() == self.expected_body, response.get_body()
        made = [
            (action, p["RequestId"], p["Status"]) for action, p in self.dataverse.calls[before:]
        ]
        assert made == [(NOTIFY, rid, "Delivered")], made
        self.checked += 1
        return elapsed


@contextmanager
def app_under_test(fake: Fakes, ledger_dir: Path, messages: int) -> Iterator[ReportCalls]:
    """The app, configured for the fakes, with ``messages`` sent and their reports ready.

    Messages are sent and reports built beforehand: the host builds requests, and the
    figure is about handling a report. The runtime is fresh, so counts start at zero.
    """
    from channel.providers.twilio import EMPTY_TWIML
    from channel.runtime import reset_runtime

    use_env(
        channel_env(
            fake.twilio.base_url,
            str(ledger_dir / "ledger.sqlite3"),
            DATAVERSE_URL=fake.dataverse.url,
            IDENTITY_ENDPOINT=fake.identity_url,
            IDENTITY_HEADER=IDENTITY_SECRET,
        )
    )
    reset_runtime()
    try:
        functions = app_functions()
        validator = RequestValidator(AUTH_TOKEN)
        sent = send_messages(functions["outbound"], fake, messages)
        reports = [(m.request_id, report_request(m, validator)) for m in sent]
        yield ReportCalls(
            functions["delivery_report"], fake.dataverse, reports, EMPTY_TWIML.encode()
        )
    finally:
        reset_runtime()


@dataclass(frozen=True)
class Result:
    """The warm figures: delivery_report function vs bare POST."""

    report: Stats
    bare: Stats
    bare_body_size: int

    @property
    def ratio(self) -> float:
        """Report median over bare-POST median."""
        return self.report.median / self.bare.median


def messages_needed(iterations: int, profile_calls: int) -> int:
    """Reports a run makes: the untimed first, warm-up, measured, breakdown and profile."""
    from bench.common import warmup_calls

    return 1 + warmup_calls(iterations) + iterations + 2 * profile_calls


def measure(fake: Fakes, call_report: ReportCalls, iterations: int, bare_rid: str) -> Result:
    """Median latency of the delivery_report function and of a bare POST, in blocks."""
    # Untimed first call: it fetches the token and WhoAmI, whose token the bare POST reuses.
    call_report()
    assert len(fake.identity.issued) == 1, fake.identity.issued
    body = bare_body(bare_rid)
    headers = {"Authorization": f"Bearer {fake.identity.issued[0]}", **ODATA_HEADERS}
    bare, close = bare_post(fake.dataverse.url + NOTIFICATION_PATH, 204, data=body, headers=headers)
    try:
        report_times, bare_times = interleave(call_report, bare, iterations)
    finally:
        close()
    return Result(Stats.of(report_times), Stats.of(bare_times), len(body))


STAGES: tuple[tuple[int, str, str, str], ...] = (
    # (depth, owner, attribute, label) in the order a report runs through them
    (0, "http", "_webhook", "channel/http.py:_webhook"),
    (0, "adapter", "verify", "channel/providers/twilio.py:TwilioWebhooks.verify"),
    (0, "adapter", "status_reports", "channel/providers/twilio.py:TwilioWebhooks.status_reports"),
    (0, "ledger", "for_report", "channel/ledger/messages.py:MessageLedger.for_report"),
    (0, "outbox", "put", "channel/ledger/outbox.py:Outbox.put"),
    (0, "dataverse", "organization_id", "channel/dataverse.py:DataverseClient.organization_id"),
    (0, "dataverse", "notify", "channel/dataverse.py:DataverseClient.notify"),
    (1, "dataverse", "_send", "channel/dataverse.py:DataverseClient._send"),
    (2, "tokens", "token", "channel/identity.py:TokenSource.token"),
    (2, "session", "request", "requests Session.request: the HTTP call itself"),
    (0, "outbox", "forwarded", "channel/ledger/outbox.py:Outbox.forwarded"),
    (0, "adapter", "acknowledge", "channel/providers/twilio.py:TwilioWebhooks.acknowledge"),
    (-1, "store", "transact", "channel/ledger/embedded.py:EmbeddedStore.transact"),
)
"""What :func:`breakdown` times; depth -1: the SQLite calls inside the ledger and outbox rows
(the request record comes from memory: the bench's process answered the sends).

Each must exist on the live runtime (``breakdown`` refuses to start otherwise, naming it)
and be called by a report (``breakdown`` flags a stage no call went through).
"""


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
    missing = [
        label for _, owner, attribute, label in STAGES if not hasattr(owners[owner], attribute)
    ]
    if missing:
        raise SystemExit(f"bench.delivery_report: STAGES names what no longer exists: {missing}")
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
            never = "  (NOT CALLED: a stage of another path?)" if not spent[label] else ""
            print(f"  {ms(label):8.3f}  {calls_per:5.1f}  {'  ' * (depth + 1)}{label}{never}")
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
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, fakes() as fake:
        dataverse = fake.dataverse
        print(
            f"the tests' fakes: Dataverse at {dataverse.url}; identity at {fake.identity_url}; "
            f"Twilio at {fake.twilio.base_url}; ledger under {tmp}"
        )
        print(f"\nwarm: {options.iterations} calls of each kind, blocks of {BLOCK}, ABBA")
        messages = messages_needed(options.iterations, options.profile)
        with app_under_test(fake, Path(tmp), messages) as call_report:
            result = measure(fake, call_report, options.iterations, bare_rid)
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

        found = counts(fake, bare_rid)
        app_notes = [p["RequestId"] for _, p in dataverse.calls if p["RequestId"] != bare_rid]
        per_rid = Counter(app_notes)
        once = sum(1 for n in per_rid.values() if n == 1)
        checked = call_report.checked
        print(
            f"\ncheck: {checked} report calls (untimed first, warm-up, measured"
            f"{', breakdown, profile' if options.profile else ''}), "
            "each made exactly one notification: "
            f"{'ok' if once == checked == len(per_rid) else 'NO'}"
            f" ({len(app_notes)} notifications for {len(per_rid)} RequestIds, "
            f"{len(dataverse.rejected)} rejected by the fake)"
        )
        print(
            f"  bare POSTs: {len(dataverse.calls) - len(app_notes)}; body "
            f"{result.bare_body_size} bytes (the app's: {found.last_app_body_size} bytes)"
        )

        print(f"\ncounts from a fresh runtime (exact at the {PER:,}th event):")
        tokens = per_thousand(found.tokens_at_per, found.token_requests, found.notifications)
        connections = per_thousand(found.connections_at_per, found.app_connections, found.app_calls)
        print(
            f"  token requests per {PER:,} notifications: {tokens}"
            f"  (all run: {found.token_requests} for {found.notifications})"
        )
        print(
            f"  new connections per {PER:,} Dataverse calls: {connections}"
            f"  (all run: {found.app_connections} for {found.app_calls} calls, {found.whoami}"
            f" WhoAmI; the bare session's: {found.bare_connections})"
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
    if once != checked or dataverse.rejected:
        print("FAILED: a report did not make exactly one accepted notification", file=sys.stderr)
        return 1
    return missed(("warm delivery report", result.ratio, TARGET))


if __name__ == "__main__":
    sys.exit(main())
