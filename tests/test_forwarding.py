"""Acceptance tests of durable forwarding: what Dataverse could not take at once is kept in
the outbox and forwarded exactly once by the ``forward_pending`` timer.

The tests run on both ledgers (the embedded SQLite file and Table Storage on a real
Azurite; the lease test on the first only, the round-trip count on the second), through
the app's indexed functions: webhooks and health with the ``call``
fixture, the timer as the host calls it, with an ``azure.functions.TimerRequest``.
Twilio's webhooks are signed (tests/twilio_hooks.py); the real azure-identity gets its
tokens from the fake identity endpoint.

Time: the outbox backs off a minute to an hour between attempts. The tests move the
ledger's own wall clock (``Outbox.clock`` and ``MessageLedger.clock`` of the runtime, a
``time.time()`` shifted by an offset) rather than patching ``time`` for the process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from channel.budget import Budget
from channel.ledger.outbox import MAX_BACKOFF_SECONDS, MAX_FORWARD_ATTEMPTS, OutboxItem
from channel.ledger.retention import MARKER_RETENTION_DAYS
from channel.ledger.store import RecordStore
from channel.ledger.table import TableStore
from channel.runtime import get_runtime, reset_runtime
from tests.conftest import Call, Configure, answer_json
from tests.data import DEFINITION_ID, REPLY_TEXT, SENDER, SENDER_E164, SENSITIVE, payload
from tests.fakes import FakeDataverse, FakeIdentity, FakeTwilio
from tests.twilio_hooks import (
    FINALS,
    INBOUND,
    NOTIFY,
    Form,
    Sent,
    assert_acknowledged,
    inbound_form,
    inbound_payload,
    notification,
    reply,
    report,
    send,
    sign,
    status_form,
    webhook,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 1.0
"""CHANNEL_TIME_BUDGET_SECONDS of these tests (the smallest allowed): outages end fast."""
HOUR = 3600.0
DAY = 86400.0
AFTER_ANY_BACKOFF = MAX_BACKOFF_SECONDS + 1
"""Moving the clock this far makes every pending item due."""
OTHER_DEFINITION_ID = "3c9a7e1d-5b2f-4a8e-9d61-0f2b4c6e8a10"
REFUSAL = {
    "error": {
        "code": "0x80040220",
        "message": "Principal user is missing prvWritemsdyn_channeldefinition privilege",
    }
}
"""Dataverse's error JSON for a caller missing a privilege (403)."""

TimerFunction = Callable[[func.TimerRequest], None]


# --- the fakes, the ledgers and the clock -------------------------------------------------


class Dataverse(FakeDataverse):
    """The fake Dataverse with an outage switch, a per-call delay and per-item refusals.

    ``down``: the status every call gets (503, or 429 with ``Retry-After: 60``), WhoAmI
    included; None when Dataverse is up. ``refused``: RequestIds whose notification is
    refused with 403 and Dataverse's error JSON. ``callers``: for each call taken, the
    bearer token that made it (one per process) and when it was answered.
    """

    def __init__(self, server: HTTPServer, identity: FakeIdentity) -> None:
        self.down: int | None = None
        self.delay = 0.0
        self.refused: set[str] = set()
        self.refusals: Counter[str] = Counter()
        self.outage_answers = 0
        self.callers: list[tuple[str, float]] = []
        self.late = 0
        self.release = threading.Event()
        super().__init__(server, identity)

    def answer_late(self, calls: int = 1) -> None:
        """Take the next ``calls`` calls but hold each answer until ``release`` is set:
        Dataverse acted, and the caller's read times out (its answer is lost)."""
        self.late = calls
        self.release.clear()

    def who_am_i(self, request: Request) -> Response:
        outage = self._outage()
        return super().who_am_i(request) if outage is None else outage

    def handle(self, request: Request) -> Response:
        if self.delay:
            time.sleep(self.delay)
        outage = self._outage()
        if outage is not None:
            return outage
        (value,) = json.loads(request.data).values()
        request_id = json.loads(value).get("RequestId")
        if request_id in self.refused:
            self.refusals[request_id] += 1
            return Response(json.dumps(REFUSAL), status=403, content_type="application/json")
        answer = super().handle(request)
        if answer.status_code < 300:
            token = request.headers["Authorization"].removeprefix("Bearer ")
            self.callers.append((token, time.monotonic()))
        if self.late:
            self.late -= 1
            self.release.wait(30)
        return answer

    def _outage(self) -> Response | None:
        if self.down is None:
            return None
        self.outage_answers += 1
        headers = {"Retry-After": "60"} if self.down == 429 else None
        return Response(status=self.down, headers=headers)


@pytest.fixture
def dataverse(
    dataverse_server: HTTPServer, identity: FakeIdentity, configure: Configure
) -> Iterator[Dataverse]:
    """This module's fake Dataverse (overrides conftest's), reached with managed identity."""
    fake = Dataverse(dataverse_server, identity)
    configure(DATAVERSE_URL=fake.url)
    yield fake
    fake.release.set()
    dataverse_server.clear()
    assert fake.rejected == []  # no call broke the contract (token, headers, body shape)


@pytest.fixture(params=["embedded", "table"])
def ledger(request: pytest.FixtureRequest, configure: Configure) -> str:
    """Each test once on the embedded SQLite ledger and once on Table Storage (Azurite)."""
    if request.param == "table":
        azurite = request.getfixturevalue("azurite")
        table = request.getfixturevalue("table_name")
        configure(CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table)
    kind: str = request.param
    return kind


class Clock:
    """The ledger's wall clock: ``time.time()`` moved by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def app(
    call: Call, twilio: FakeTwilio, dataverse: Dataverse, ledger: str, configure: Configure
) -> Callable[..., Clock]:
    """``app(**settings)``: the channel on Twilio, Dataverse and the ledger under test, with
    a one-second time budget and the given settings; returns the ledger's clock."""
    twilio.accept()

    def start(**settings: str) -> Clock:
        configure(CHANNEL_TIME_BUDGET_SECONDS=str(BUDGET_SECONDS), **settings)
        runtime = get_runtime()
        assert runtime.ledger.kind == ledger
        clock = Clock()
        runtime.ledger.clock = clock
        runtime.outbox.clock = clock
        return clock

    return start


def timer_function() -> TimerFunction:
    """The ``forward_pending`` function as the host indexes it (once per process: the app
    refuses to be indexed twice)."""
    from function_app import app

    (function,) = [f for f in app.get_functions() if f.get_function_name() == "forward_pending"]
    user: TimerFunction = function.get_user_function()
    return user


@pytest.fixture
def tick(functions: dict[str, Callable[..., Any]]) -> Callable[[], None]:
    """One run of the timer, as the host makes it: the indexed function, a TimerRequest."""
    forward_pending: TimerFunction = functions["forward_pending"]

    def run() -> None:
        forward_pending(TimerRequest())

    return run


def forwarding(call: Call) -> dict[str, Any]:
    """What health shows about forwarding."""
    response = call("health", method="GET")
    assert response.status_code == 200, response.get_body()
    shown: dict[str, Any] = answer_json(response)["forwarding"]
    return shown


def replies(count: int, prefix: str) -> list[Form]:
    """``count`` inbound messages with distinct MessageSids and texts."""
    return [
        inbound_form(f"SM{prefix}{n:0{32 - len(prefix)}x}", f"{REPLY_TEXT} ({prefix} {n})")
        for n in range(count)
    ]


def text_of(form: Form) -> str:
    return dict(form)["Body"]


def keys(store: RecordStore) -> set[str]:
    """Every record key of the ledger."""
    kinds = ("request", "sender", "due", "done")
    return {key for kind in kinds for key, _ in store.scan(kind)}


# --- 1. an outage: kept, then forwarded once ----------------------------------------------


def test_an_outage_keeps_every_report_and_reply_and_the_timer_forwards_each_once(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    clock = app()
    messages = [send(call, twilio, rid=f"outage-{n:03d}") for n in range(100)]
    finals = sorted(FINALS)
    statuses = {m.rid: finals[n % len(finals)] for n, m in enumerate(messages)}
    forms = replies(100, "ab")
    # The process talked to Dataverse before the outage: it knows the organization id.
    # (A process that starts during an outage sends WhoAmI first, and its concurrent
    # callbacks wait for that call under a lock that does not honour their time budget.)
    get_runtime().dataverse.organization_id(Budget(BUDGET_SECONDS))

    dataverse.down = 503

    def deliver(event: tuple[Sent, str] | Form) -> tuple[int, str | None]:
        """Post one callback; its status and Retry-After."""
        response = report(call, *event) if isinstance(event, tuple) else reply(call, event)
        return response.status_code, response.headers.get("Retry-After")

    def outage(events: list[tuple[Sent, str] | Form], *, retries: bool = False) -> None:
        """Twilio posts the callbacks concurrently; each gets 5xx within the budget."""
        with ThreadPoolExecutor(max_workers=25) as pool:
            answers = list(pool.map(deliver, events))
        # Each answered (the pool returned): the budget, not Dataverse, ended each wait.
        # A retry may also be acknowledged (200): on a loaded machine an earlier call can
        # end in a read timeout (Dataverse may have acted), and such an item is kept for
        # the timer alone. Either way it stays in the outbox, as the counts below show.
        allowed = {503, 200} if retries else {503}
        assert {status for status, _ in answers} <= allowed, [
            (event, answer)
            for event, answer in zip(events, answers, strict=True)
            if answer[0] not in allowed
        ][:3]
        assert all(int(retry_after or 0) >= 1 for status, retry_after in answers if status == 503)

    reports: list[tuple[Sent, str]] = [(m, statuses[m.rid]) for m in messages]
    outage([event for pair in zip(reports, forms, strict=True) for event in pair])
    assert dataverse.outage_answers >= 200
    assert dataverse.calls == []
    shown = forwarding(call)
    assert (shown["pending"], shown["dead"]) == (200, 0)
    assert shown["oldestPendingSeconds"] >= 0

    # Twilio retries some callbacks while Dataverse is still down, some with another
    # final status: 5xx again, and no second item (the first final status stands).
    retries: list[tuple[Sent, str] | Form] = [*reports[:10], *forms[:10]]
    retries += [
        (m, "failed" if statuses[m.rid] in ("delivered", "read") else "read")
        for m in messages[10:20]
    ]
    outage(retries, retries=True)
    assert forwarding(call)["pending"] == 200
    assert dataverse.calls == []

    dataverse.down = None
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    notified = dataverse.payloads(NOTIFY)
    delivered = dataverse.payloads(INBOUND)
    assert len(notified) == 100
    assert len(delivered) == 100
    assert sorted(notified, key=lambda p: p["RequestId"]) == [
        notification(m, FINALS[statuses[m.rid]]) for m in messages
    ]
    assert Counter(p["Message"]["text"] for p in delivered) == Counter(map(text_of, forms))
    assert all(p == inbound_payload(text=p["Message"]["text"], to=SENDER) for p in delivered)
    assert forwarding(call)["pending"] == 0

    # Later runs and late duplicate callbacks forward nothing more.
    for _ in range(2):
        clock.offset += AFTER_ANY_BACKOFF
        tick()
    for message in messages[:20]:
        assert_acknowledged(report(call, message, statuses[message.rid]))
        assert_acknowledged(report(call, message, "failed"))
    for form in forms[:20]:
        assert_acknowledged(reply(call, form))
    assert len(dataverse.calls) == 200
    shown = forwarding(call)
    assert shown == {
        "pending": 0,
        "dead": 0,
        "oldestPendingSeconds": None,
        "oldestDeadSeconds": None,
        "inDoubt": 0,
        "waitingForChannelDefinition": 0,
        "guarantee": shown["guarantee"],
    }
    assert shown["guarantee"].startswith("at least once")


# --- 2. two timer runs at once in two processes ---------------------------------------------

ITEMS = 60


def test_overlapping_timer_runs_in_two_processes_forward_each_item_once(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    clock = app()
    messages = [send(call, twilio, rid=f"two-{n:03d}") for n in range(ITEMS // 2)]
    forms = replies(ITEMS // 2, "cd")
    # An hour ago Dataverse throttled every call: all kept, all due by now.
    clock.offset = -HOUR
    dataverse.down = 429
    for message in messages:
        assert report(call, message, "delivered").status_code == 503
    for form in forms:
        assert reply(call, form).status_code == 503
    clock.offset = 0.0
    dataverse.down = None
    assert forwarding(call)["pending"] == ITEMS
    parent_tokens = set(dataverse.identity.issued)

    dataverse.delay = 0.02  # each call takes a while: the two runs overlap
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the same settings, the same ledger
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "from tests.test_forwarding import child; child()"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in children:  # both reached the ledger and Dataverse
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in children:  # both runs start at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in children]
    finally:
        for process in children:
            if process.poll() is None:
                process.kill()
                process.communicate()
    logs: list[str] = []
    for process, (out, err) in zip(children, outputs, strict=True):
        assert process.returncode == 0, err
        logs += json.loads(out)
    assert not [line for line in logs if any(value in line for value in SENSITIVE)]

    assert len(dataverse.calls) == ITEMS
    assert sorted(p["RequestId"] for p in dataverse.payloads(NOTIFY)) == [m.rid for m in messages]
    assert Counter(p["Message"]["text"] for p in dataverse.payloads(INBOUND)) == Counter(
        map(text_of, forms)
    )
    by_process: dict[str, list[float]] = {}
    for token, at in dataverse.callers:
        by_process.setdefault(token, []).append(at)
    assert len(by_process) == 2  # both processes forwarded ...
    assert not parent_tokens & set(by_process)
    first_end = min(max(times) for times in by_process.values())
    last_start = max(min(times) for times in by_process.values())
    assert last_start < first_end  # ... at the same time
    print("forwarded per process:", sorted(len(times) for times in by_process.values()))
    print("timer logs:", [line for line in logs if "forward_pending" in line])

    tick()  # the parent's run finds nothing left
    assert len(dataverse.calls) == ITEMS
    assert forwarding(call)["pending"] == 0


def child() -> None:
    """One process of two: the app, its timer run started on a "go" line.

    Prints the run's INFO-and-above log lines as JSON (the parent checks them for leaks).
    """
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    logging.getLogger().addHandler(Collect(logging.INFO))
    logging.getLogger().setLevel(logging.INFO)
    forward_pending = timer_function()
    runtime = get_runtime()
    runtime.outbox.stats()  # the ledger is open (and the table known)
    runtime.dataverse.organization_id(Budget(10))  # a token and WhoAmI: ready to forward
    print("ready", flush=True)
    sys.stdin.readline()
    forward_pending(TimerRequest())
    runtime.close()
    print(json.dumps(lines), flush=True)


# --- 3. an item Dataverse keeps refusing --------------------------------------------------


def test_an_item_dataverse_keeps_refusing_is_dead_after_max_attempts(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
    *,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = app()
    refused = send(call, twilio, rid="refused")
    fine = send(call, twilio, rid="fine")
    dataverse.refused.add(refused.rid)
    assert report(call, refused, "delivered").status_code == 503  # attempt 1
    assert_acknowledged(report(call, fine, "delivered"))
    for _ in range(MAX_FORWARD_ATTEMPTS - 1):
        clock.offset += AFTER_ANY_BACKOFF
        tick()
    assert dataverse.refusals == {refused.rid: MAX_FORWARD_ATTEMPTS}

    # Dead: never tried again, by the timer or by a provider's retry.
    for _ in range(3):
        clock.offset += AFTER_ANY_BACKOFF
        tick()
    assert_acknowledged(report(call, refused, "delivered"))
    assert dataverse.refusals == {refused.rid: MAX_FORWARD_ATTEMPTS}
    assert dataverse.calls == [(NOTIFY, notification(fine, "Delivered"))]

    shown = forwarding(call)
    assert (shown["pending"], shown["dead"]) == (0, 1)
    assert shown["oldestDeadSeconds"] > (MAX_FORWARD_ATTEMPTS - 1) * AFTER_ANY_BACKOFF
    kept = get_runtime().outbox.get(f"notification:{refused.rid}")
    assert isinstance(kept, OutboxItem)
    assert (kept.state, kept.attempts) == ("dead", MAX_FORWARD_ATTEMPTS)
    (dead,) = [
        r for r in caplog.records if r.levelno == logging.ERROR and "is dead" in r.getMessage()
    ]
    message = dead.getMessage()
    assert f"notification:{refused.rid} is dead after {MAX_FORWARD_ATTEMPTS} attempts" in message
    assert "403" in message
    assert SENDER not in message
    assert SENDER_E164 not in message


def test_a_refused_item_does_not_hold_up_the_others_in_a_run(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    clock = app()
    refused = send(call, twilio, rid="refused")
    fine = send(call, twilio, rid="fine")
    dataverse.refused.add(refused.rid)
    dataverse.down = 503
    assert report(call, refused, "delivered").status_code == 503  # the older item
    assert report(call, fine, "delivered").status_code == 503
    dataverse.down = None
    clock.offset += AFTER_ANY_BACKOFF
    tick()  # one run: the refusal is about one item, so the run goes on to the next
    assert dataverse.refusals == {refused.rid: 1}
    assert dataverse.calls == [(NOTIFY, notification(fine, "Delivered"))]
    assert forwarding(call)["pending"] == 1


# --- 4. retention ------------------------------------------------------------------------


def test_the_timer_removes_records_past_retention_and_keeps_young_ones(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
    *,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = app(CHANNEL_RETENTION_DAYS="7")
    made: dict[str, tuple[Sent, Form]] = {}
    for age, name in [(8.0, "old"), (6.0, "aging"), (0.0, "young")]:
        clock.offset = -age * DAY
        sent = send(call, twilio, rid=name)
        assert_acknowledged(report(call, sent, "delivered"))
        (form,) = replies(1, name.encode().hex())
        assert_acknowledged(reply(call, form))
        made[name] = (sent, form)
    # Eight days ago one report could not be forwarded, and still cannot be.
    clock.offset = -8 * DAY
    stuck = send(call, twilio, rid="stuck")
    dataverse.refused.add(stuck.rid)
    assert report(call, stuck, "delivered").status_code == 503
    clock.offset = 0.0
    store = get_runtime().ledger.store
    before = keys(store)

    tick()

    old = {"request:old", "request:stuck", "due:notification:stuck"}
    markers = {
        "done:notification:old",
        f"done:inbound:twilio:{dict(made['old'][1])['MessageSid']}",
    }
    assert old | markers <= before
    assert keys(store) == before - old
    assert f"sender:{SENDER_E164}" in keys(store)  # configuration, not history
    assert markers <= keys(store)  # kept far longer (see the replay test below)
    assert any(
        r.levelno == logging.WARNING and "due:notification:stuck" in r.getMessage()
        for r in caplog.records
    )
    # A late callback for a message past retention is acknowledged and not reported.
    calls = len(dataverse.calls)
    assert_acknowledged(report(call, made["old"][0], "delivered"))
    assert len(dataverse.calls) == calls == 6


def test_a_signed_reply_or_report_replayed_after_retention_is_not_forwarded_again(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    """Twilio's signatures carry no timestamp: a captured genuine call can be replayed at
    any age. The small forwarded markers outlive the content to make it a no-op."""
    clock = app()  # CHANNEL_RETENTION_DAYS: 30
    sent = send(call, twilio)
    assert_acknowledged(report(call, sent, "delivered"))
    (form,) = replies(1, "ee")
    assert_acknowledged(reply(call, form))
    assert len(dataverse.calls) == 2
    store = get_runtime().ledger.store
    markers = {
        f"done:notification:{sent.rid}",
        f"done:inbound:twilio:{dict(form)['MessageSid']}",
    }

    clock.offset = 31 * DAY
    tick()
    assert f"request:{sent.rid}" not in keys(store)  # the content is gone ...
    assert markers <= keys(store)  # ... its markers stay
    assert_acknowledged(reply(call, form))  # the same signed calls, replayed
    assert_acknowledged(report(call, sent, "delivered"))
    assert len(dataverse.calls) == 2

    clock.offset = (MARKER_RETENTION_DAYS + 1) * DAY
    tick()
    assert not markers & keys(store)  # markers go too, after a year


# --- 4b. records of the previous version, after an upgrade ------------------------------


def previous_version_request(store: RecordStore, rid: str) -> None:
    """Make ``request:<rid>`` what the previous version wrote: the same record without
    ``layout`` (that version knew no other outbox records than ``outbox``/``forwarded``)."""
    found = store.get(f"request:{rid}")
    assert found is not None
    assert found.data.pop("layout") == 2
    store.replace(f"request:{rid}", found.data, found.etag)


def previous_version_item(sent: Sent, created_at: float, *, attempts: int) -> dict[str, Any]:
    """An ``outbox:notification:<rid>`` item as the previous version kept it (Outbox.put,
    then Outbox.failed after Dataverse refused or was down)."""
    payload = notification(sent, "Delivered")
    del payload["OrganizationId"]
    return {
        "kind": "notification",
        "payload": payload,
        "state": "pending",
        "attempts": attempts,
        "created_at": created_at,
        "next_at": created_at + 60,
        "leased_until": 0.0,
        "call_at": None,
        "in_doubt": False,
        "last_error": "Dataverse answered 503",
        "waiting_for": None,
    }


def previous_version_marker(kind: str, created_at: float, payload: dict[str, Any]) -> Any:
    """A ``forwarded:<key>`` marker as the previous version wrote it (Outbox.forwarded)."""
    return {
        "state": "forwarded",
        "kind": kind,
        "created_at": created_at,
        "forwarded_at": created_at + 1,
        "payload": payload,
    }


def previous_version_callback(sent: Sent) -> Sent:
    """``sent`` as the previous version sent it: a callback URL with the RequestId alone."""
    url, _, query = sent.callback.partition("?")
    rid = [pair for pair in query.split("&") if pair.startswith("rid=")]
    return replace(sent, callback=f"{url}?{rid[0]}")


def test_records_of_the_previous_version_are_honoured_after_an_upgrade(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    """A deployed channel keeps its state across the upgrade: an item the previous version
    kept is forwarded once (by the timer or by the provider's retry), an item it forwarded
    but did not remove is not forwarded again, and its markers still block replays."""
    clock = app()
    store = get_runtime().ledger.store
    now = clock()
    # Messages the previous version sent: their callback URLs carry the RequestId alone.
    retried, timed, forwarded, half, fresh = (
        previous_version_callback(send(call, twilio, rid=f"upgrade-{name}"))
        for name in ("retried", "timed", "forwarded", "half", "fresh")
    )
    for sent in (retried, timed, forwarded, half, fresh):
        previous_version_request(store, sent.rid)
    for sent in (retried, timed, half):
        store.insert(
            f"outbox:notification:{sent.rid}", previous_version_item(sent, now - 120, attempts=1)
        )
    for sent in (forwarded, half):  # half: forwarded, and the process stopped before removing
        payload = notification(sent, "Delivered")
        del payload["OrganizationId"]
        store.insert(
            f"forwarded:notification:{sent.rid}",
            previous_version_marker("notification", now - 120, payload),
        )
    (form,) = replies(1, "0d")
    store.insert(
        f"forwarded:inbound:twilio:{dict(form)['MessageSid']}",
        previous_version_marker("inbound", now - 120, {"ChannelDefinitionId": DEFINITION_ID}),
    )
    # The upgrade: a new process, which has seen none of these records.
    reset_runtime()
    clock = app()
    store = get_runtime().ledger.store

    # Twilio retries one kept report: the item kept before the upgrade is forwarded (once).
    assert_acknowledged(report(call, retried, "delivered"))
    assert dataverse.calls == [(NOTIFY, notification(retried, "Delivered"))]
    # Replays of what the previous version forwarded: nothing.
    assert_acknowledged(report(call, forwarded, "delivered"))
    assert_acknowledged(report(call, half, "delivered"))
    assert_acknowledged(reply(call, form))
    assert len(dataverse.calls) == 1
    # A request of before whose report comes now: forwarded once.
    assert_acknowledged(report(call, fresh, "delivered"))
    assert dataverse.calls[1:] == [(NOTIFY, notification(fresh, "Delivered"))]

    # The timer forwards the other item kept before, and not the one forwarded already.
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert dataverse.calls[2:] == [(NOTIFY, notification(timed, "Delivered"))]
    assert not {key for key, _ in store.scan("outbox")}  # nothing of before left to do
    assert forwarding(call)["pending"] == 0

    # Every report and reply again, and another run: nothing more.
    for sent in (retried, timed, forwarded, half, fresh):
        assert_acknowledged(report(call, sent, "delivered"))
    assert_acknowledged(reply(call, form))
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert len(dataverse.calls) == 3


# --- 5. a reply with no channel definition known ------------------------------------------


@pytest.mark.parametrize("learned_from", ["setting", "outbound"])
def test_a_reply_with_no_channel_definition_is_kept_and_forwarded_once_it_is_known(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
    *,
    learned_from: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = app()
    (form,) = replies(1, "cafe")
    assert reply(call, form).status_code == 503  # kept: the timer will forward it
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert dataverse.calls == []
    assert any(
        r.levelno == logging.WARNING and "wait for a channel definition" in r.getMessage()
        for r in caplog.records
    )
    shown = forwarding(call)
    assert (shown["pending"], shown["waitingForChannelDefinition"], shown["dead"]) == (1, 1, 0)

    if learned_from == "setting":
        offset = clock.offset
        clock = app(CHANNEL_DEFINITION_ID=DEFINITION_ID)  # the app restarts with it
        clock.offset = offset
        expected = inbound_payload(text=text_of(form), to=SENDER_E164)
    else:
        send(call, twilio)  # our number's first outbound payload: its form and channel
        expected = inbound_payload(text=text_of(form), to=SENDER)
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert dataverse.calls == [(INBOUND, expected)]
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert_acknowledged(reply(call, form))  # Twilio's retry, late
    assert dataverse.calls == [(INBOUND, expected)]
    assert forwarding(call)["pending"] == 0


# --- 6. a call whose answer was lost ---------------------------------------------------------


def duplicate_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "may be a duplicate" in r.getMessage()]


def test_a_call_whose_answer_was_lost_is_repeated_only_by_a_later_timer_run_and_flagged(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
    *,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = app()
    sent = send(call, twilio)
    get_runtime().dataverse.organization_id(Budget(BUDGET_SECONDS))  # WhoAmI beforehand
    dataverse.answer_late()
    response = report(call, sent, "delivered")  # Dataverse acts; its answer comes too late
    dataverse.release.set()
    assert response.status_code == 503
    expected = (NOTIFY, notification(sent, "Delivered"))
    assert dataverse.calls == [expected]

    assert_acknowledged(report(call, sent, "delivered"))  # Twilio's retry: not forwarded
    tick()  # a run within the back-off: not yet
    assert dataverse.calls == [expected]
    assert forwarding(call)["inDoubt"] == 1
    assert duplicate_warnings(caplog) == []

    clock.offset += AFTER_ANY_BACKOFF
    tick()  # a later run repeats it, flagged
    assert dataverse.calls == [expected, expected]
    (warning,) = duplicate_warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert f"notification:{sent.rid}" in warning.getMessage()
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert_acknowledged(report(call, sent, "delivered"))
    assert len(dataverse.calls) == 2
    assert forwarding(call)["inDoubt"] == 0


def test_a_refusal_before_dataverse_acted_is_retried_at_once_and_not_flagged(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    *,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app()
    sent = send(call, twilio)
    dataverse.down = 503  # answered before acting
    assert report(call, sent, "delivered").status_code == 503
    assert forwarding(call)["inDoubt"] == 0
    dataverse.down = None
    assert_acknowledged(report(call, sent, "delivered"))  # Twilio's retry forwards it
    assert dataverse.calls == [(NOTIFY, notification(sent, "Delivered"))]
    assert duplicate_warnings(caplog) == []


# --- 7. a timer forward ends within its lease ----------------------------------------------


@pytest.mark.parametrize("ledger", ["embedded"], indirect=True)  # the same logic on both
def test_a_slow_timer_forward_gives_its_item_up_before_the_lease_ends(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    """An item is leased for the time budget plus a margin: a timer run that kept on
    forwarding it longer (the run's own budget is 45 s) would race a provider's retry,
    which may claim the item once the lease is over, and Dataverse would get it twice."""
    clock = app()
    outbox = get_runtime().outbox
    outbox.lease_seconds = BUDGET_SECONDS + 0.5  # the runtime's margin is 10 s: scaled down
    sent = send(call, twilio)
    dataverse.down = 429
    assert report(call, sent, "delivered").status_code == 503  # kept
    clock.offset += AFTER_ANY_BACKOFF

    dataverse.down = 503  # a slow gateway answering 503 ...
    dataverse.delay = 0.4
    run = threading.Thread(target=tick)
    run.start()
    time.sleep(outbox.lease_seconds + 0.1)
    dataverse.down = None  # ... recovers once the timer's lease on the item is over,
    dataverse.delay = 0.0
    assert_acknowledged(report(call, sent, "delivered"))  # ... and Twilio retries
    run.join(30)
    assert not run.is_alive()
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    assert dataverse.payloads(NOTIFY) == [notification(sent, "Delivered")]


# --- 8. reports that carry their request ------------------------------------------------


def reads_of(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys ``store`` is read at from now on (a spy: every read still happens)."""
    keys: list[str] = []
    read = store.get

    def spied(key: str) -> Any:
        keys.append(key)
        return read(key)

    monkeypatch.setattr(store, "get", spied)
    return keys


def test_a_final_report_reaching_another_instance_reads_no_request(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app()
    sent = send(call, twilio)
    # Another instance: it has not answered the request, so it keeps nothing of it. The
    # callback URL carries the request's fields under our tag: nothing to read.
    reset_runtime()
    app()
    reads = reads_of(get_runtime().ledger.store, monkeypatch)
    assert_acknowledged(report(call, sent, "delivered"))
    assert dataverse.payloads(NOTIFY) == [notification(sent, "Delivered")]
    assert [key for key in reads if key.startswith("request:")] == []
    # A duplicate on a third instance, and a later status: the first final one stands.
    reset_runtime()
    app()
    assert_acknowledged(report(call, sent, "delivered"))
    assert_acknowledged(report(call, sent, "undelivered"))
    assert dataverse.payloads(NOTIFY) == [notification(sent, "Delivered")]


def test_carried_fields_come_back_exactly_as_dataverse_sent_them(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app()
    odd_from = "+1 (206) 555-0100"  # spaces, '+' and parentheses: what URLs encode
    sent = send(call, twilio, rid="req 42/ä&x=1+y", From=odd_from)
    reset_runtime()
    app()
    reads = reads_of(get_runtime().ledger.store, monkeypatch)
    assert_acknowledged(report(call, sent, "failed"))
    assert dataverse.payloads(NOTIFY) == [notification(sent, "NotDelivered") | {"From": odd_from}]
    assert [key for key in reads if key.startswith("request:")] == []


@pytest.mark.parametrize("forwarded", [True, False], ids=["forwarded", "kept-in-an-outage"])
def test_an_unanswered_send_is_settled_by_a_final_report_another_instance_kept(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    *,
    forwarded: bool,
) -> None:
    app()
    twilio.answer(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
    first = call("outbound", payload())
    assert first.status_code == 503  # the outcome is unknown: Twilio may have created it
    (post,) = twilio.posts()
    created = Sent(payload()["RequestId"], "SM" + "5e" * 16, post.form["StatusCallback"])
    reset_runtime()
    app()
    # Its only callback, a final one, reaches another instance: forwarded from what the
    # URL carries (the request is not read, so this does not settle it), or kept while
    # Dataverse is down ...
    if forwarded:
        assert_acknowledged(report(call, created, "delivered"))
        assert dataverse.payloads(NOTIFY) == [notification(created, "Delivered")]
    else:
        dataverse.down = 503
        assert report(call, created, "delivered").status_code == 503
        dataverse.down = None
        assert dataverse.payloads(NOTIFY) == []
    # ... and Dataverse's retry finds the kept report: Sent, with Twilio's id, no new POST.
    reset_runtime()
    app()
    retry = call("outbound", payload())
    assert retry.status_code == 200
    assert answer_json(retry) == {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": created.sid,
        "RequestId": created.rid,
        "Status": "Sent",
    }
    assert len(twilio.posts()) == 1
    assert call("outbound", payload()).get_body() == retry.get_body()  # and it stays so


def _signed_report(call: Call, url: str, message_sid: str, status: str) -> func.HttpResponse:
    """Twilio's status callback to ``url``, signed as Twilio signs (the auth token holder)."""
    form = status_form(message_sid, status)
    return webhook(call, url, form, signature=sign(url, form))


def test_callback_fields_without_our_tag_are_read_from_the_ledger(
    call: Call, twilio: FakeTwilio, dataverse: Dataverse, app: Callable[..., Clock]
) -> None:
    app()
    sent = send(call, twilio)
    other = send(call, twilio, rid="another-request")
    reset_runtime()
    app()
    # The URL edited and signed again by whoever holds the auth token: the fields no
    # longer match the tag, so the ledger says what to report ...
    edited = sent.callback.replace(f"def={DEFINITION_ID}", f"def={OTHER_DEFINITION_ID}")
    assert edited != sent.callback
    assert_acknowledged(_signed_report(call, edited, sent.sid, "delivered"))
    assert dataverse.payloads(NOTIFY) == [notification(sent, "Delivered")]
    # ... and a RequestId swapped into another message's URL names a request never sent.
    swapped = other.callback.replace("rid=another-request", "rid=never-sent")
    assert swapped != other.callback
    assert_acknowledged(_signed_report(call, swapped, other.sid, "delivered"))
    # A URL of the previous version (the RequestId alone) is read from the ledger too.
    bare = other.callback.split("&", 1)[0]
    assert_acknowledged(_signed_report(call, bare, other.sid, "delivered"))
    assert dataverse.payloads(NOTIFY) == [
        notification(sent, "Delivered"),
        notification(other, "Delivered"),
    ]


# --- 9. Table Storage round trips --------------------------------------------------------


@pytest.mark.parametrize("ledger", ["table"], indirect=True)
def test_table_round_trips_of_a_send_and_a_final_report(
    call: Call,
    twilio: FakeTwilio,
    dataverse: Dataverse,
    app: Callable[..., Clock],
    tick: Callable[[], None],
) -> None:
    clock = app()
    store = get_runtime().ledger.store
    assert isinstance(store, TableStore)
    assert store.get("request:warm-up") is None  # creates the table: not part of a send
    trips = store.round_trips

    def spent() -> int:
        nonlocal trips
        before, trips = trips, store.round_trips
        return trips - before

    first = send(call, twilio, rid="trips-1")
    first_send = spent()
    second = send(call, twilio, rid="trips-2")
    next_send = spent()
    assert_acknowledged(report(call, first, "sent"))
    intermediate = spent()
    assert_acknowledged(report(call, first, "delivered"))
    final = spent()
    assert_acknowledged(report(call, second, "delivered"))
    next_final = spent()
    assert_acknowledged(report(call, first, "delivered"))
    duplicate = spent()
    (form,) = replies(1, "77")
    assert_acknowledged(reply(call, form))
    replied = spent()

    dataverse.down = 429
    held = [send(call, twilio, rid=f"trips-held-{n}") for n in range(10)]
    spent()
    for message in held:
        assert report(call, message, "delivered").status_code == 503
    kept = spent() / len(held)
    dataverse.down = None
    clock.offset += AFTER_ANY_BACKOFF
    tick()
    timer = spent()
    assert len(dataverse.calls) == 13
    print(
        f"Table round trips: first send {first_send}, next send {next_send}, "
        f"intermediate report {intermediate}, final report {final} (next {next_final}), "
        f"duplicate final report {duplicate}, reply {replied}, "
        f"final report kept in an outage {kept:g}, "
        f"timer run forwarding {len(held)} items {timer}"
    )
    # A send: claim (insert) + answer (replace) + our number's Dataverse form (insert,
    # once per process).
    assert first_send <= 3
    assert next_send <= 2
    # A final report: the item and its marker (one transaction), then the marker
    # forwarded and the item removed (one transaction); the request was answered by this
    # process, which keeps it (another instance reads it first: one more).
    assert final <= 2
    assert next_final <= 2
    assert intermediate == 0  # the request from memory, and nothing to keep
    # A repeat: the transaction refused, the item (read: gone).
    assert duplicate <= 2
    # A reply (our number's form known from the sends): the previous version's marker and
    # item (two reads), then the two transactions.
    assert replied <= 4
    # Kept in an outage: the item and marker (one transaction), and the failed attempt
    # (replace).
    assert kept <= 2
    # The timer: the outbox scan (this version's items, and the previous version's), per
    # item a lease (replace, of the version the scan read) and one transaction (marker
    # forwarded, item removed), then retention: its cursor (read, write) and a page per
    # kind (request, due, done, outbox, forwarded, the message-id records of providers
    # that echo only their id, and webhook nonces).
    assert timer <= 2 + 2 * len(held) + 9
