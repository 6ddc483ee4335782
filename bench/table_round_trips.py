"""Table Storage round trips per event: a fresh send, a final delivery report, a timer forward.

The app runs with the Table ledger on Azurite (127.0.0.1) behind a counting proxy: every
HTTP request to the Table endpoint passes through it and is counted (and classed by
method and target), so the figures are what crosses the wire, retries and query pages
included, not what the app says it did (the store's own ``round_trips`` is printed beside
them as a cross-check). Provider twilio, Dataverse and the identity endpoint are the tests'
fakes. Events, each counted alone:

- *fresh send*: ``outbound`` with a new RequestId (after one untimed send: the first send
  of a process also checks the table exists);
- *final delivery report*: a signed Twilio ``delivered`` callback for a sent message,
  forwarded at once to Dataverse, reaching the process that sent it (which keeps the
  request records it answered for an hour: no read of the request);
- *final report, elsewhere*: the same, reaching a process that did not send the
  message (a restarted runtime on the same table: the callback URL carries the request's
  fields under the app's tag, so it reads no request record either);
- *timer forward*: ``forward_pending`` forwarding notifications that Dataverse refused at
  report time (its outbox clock moved past their retry time); the figure is what one more
  item adds to a run (a run of N due minus a run of 1, over N - 1), so the run's fixed
  cost (the due scan, retention), printed with an empty run, is left out.

Targets: <= 2 round trips per event (issue 14). Run from
the repository root: ``.venv/bin/python -m bench.table_round_trips [--iterations N]``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests
from azure.functions.timer import TimerRequest
from twilio.request_validator import RequestValidator
from werkzeug import Request, Response

from bench.common import (
    AUTH_TOKEN,
    FastServer,
    Served,
    app_functions,
    channel_env,
    fast_server,
    missed,
    quiet_logging,
    use_env,
    verdict,
)
from bench.delivery_report import Fakes, SentMessage, fakes, report_request, send_messages
from tests.fakes import IDENTITY_SECRET

TARGET = 2.0
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)


# -- the counting proxy ----------------------------------------------------------------------


@contextmanager
def counting_proxy(upstream: str) -> Iterator[FastServer]:
    """A FastServer that forwards every request to ``upstream`` (Azurite) and logs it."""
    local = threading.local()

    def forward(request: Request) -> Response:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host"}}
        reply = session.request(
            request.method,
            upstream + request.environ["RAW_URI"],
            headers=headers,
            data=request.get_data(),
            timeout=(3.05, 30.0),
        )
        kept = [(k, v) for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP]
        return Response(reply.content, status=reply.status_code, headers=kept)

    with fast_server("table-proxy") as proxy:
        proxy.fallback = forward
        yield proxy


def kind(served: Served) -> str:
    """``METHOD target``: what a Table request did (entity, query, table)."""
    request = served.request
    path = request.path.rstrip("/")
    if path.endswith("/Tables") or "/Tables(" in path:
        target = "table"
    elif path.endswith("/$batch"):
        target = "batch"  # an entity group transaction: several writes, one request
    elif "(" in path and not path.endswith("()"):
        target = "entity"  # /table(PartitionKey='...',RowKey='...')
    else:
        target = "query" if request.method == "GET" else "insert"
    return f"{request.method} {target}"


# -- events ----------------------------------------------------------------------------------


@dataclass
class TripCounter:
    """Round trips seen by the proxy and by the store, read before and after each event."""

    proxy: FastServer
    store: Any

    def count(self, event: Callable[[], object]) -> tuple[int, int, list[str]]:
        """Run ``event``; the proxy's count, the store's count and the kinds of request."""
        with self.proxy.lock:
            before = len(self.proxy.log)
        store_before = self.store.round_trips
        event()
        with self.proxy.lock:
            made = self.proxy.log[before:]
        return len(made), self.store.round_trips - store_before, [kind(s) for s in made]


@dataclass(frozen=True)
class Figure:
    """Round trips per event over a sample of events."""

    name: str
    counts: list[int]
    store_counts: list[int]
    kinds: Counter[str]

    @property
    def mean(self) -> float:
        """Mean round trips per event."""
        return statistics.fmean(self.counts)

    def line(self, *, target: bool = True) -> str:
        """One line: mean, range, the store's own count and what the requests were."""
        events = len(self.counts)
        kinds = ", ".join(f"{n / events:g} {k}" for k, n in sorted(self.kinds.items()))
        return (
            f"  {self.name:<24} {self.mean:5.2f} per event (min {min(self.counts)}, max "
            f"{max(self.counts)}, n={events}; "
            f"store counted {statistics.fmean(self.store_counts):.2f})"
            f"{'  ' + verdict(self.mean, TARGET) if target else ''}\n  {'':<24} {kinds}"
        )


def sample(name: str, counter: TripCounter, events: list[Callable[[], object]]) -> Figure:
    """Count each event alone."""
    counts, store_counts, kinds = [], [], Counter[str]()
    for event in events:
        made, stored, seen = counter.count(event)
        counts.append(made)
        store_counts.append(stored)
        kinds.update(seen)
    return Figure(name, counts, store_counts, kinds)


def refused(count: int) -> list[Response]:
    """``count`` Dataverse refusals (403, no retry): each leaves its notification pending."""
    body = '{"error":{"code":"0x80040220","message":"refused for the bench"}}'
    return [Response(body, status=403, content_type="application/json") for _ in range(count)]


class App:
    """The app under count: its functions, runtime and fakes, and one round-trip counter."""

    def __init__(self, fake: Fakes, proxy: FastServer) -> None:
        from channel.runtime import get_runtime

        functions = app_functions()
        self.fake = fake
        self.runtime = get_runtime()
        self.counter = TripCounter(proxy, self.runtime.ledger.store)
        self.outbound, self.report = functions["outbound"], functions["delivery_report"]
        # The index holds every function: forward_pending is the timer, called as the host does.
        self.timer = cast(Callable[[TimerRequest], object], functions["forward_pending"])
        self.validator = RequestValidator(AUTH_TOKEN)

    def restart(self, proxy: FastServer) -> None:
        """A new runtime on the same table, as another instance has: it saw none of the sends."""
        from channel.runtime import get_runtime, reset_runtime

        reset_runtime()
        self.runtime = get_runtime()
        self.counter = TripCounter(proxy, self.runtime.ledger.store)

    def send(self, count: int = 1) -> list[SentMessage]:
        """``count`` fresh sends."""
        return send_messages(self.outbound, self.fake, count)

    def deliver(self, message: SentMessage) -> object:
        """Twilio's signed "delivered" callback for ``message``."""
        return self.report(report_request(message, self.validator))

    def tick(self) -> object:
        """One run of the forward_pending timer."""
        return self.timer(TimerRequest(past_due=False))

    def timer_run(self, due: int) -> Figure:
        """A timer run forwarding ``due`` notifications Dataverse refused at report time."""
        logging.disable(logging.ERROR)  # the refusals' ERROR lines are expected here
        try:
            for message in self.send(due):
                self.fake.dataverse.script.extend(refused(1))
                self.deliver(message)
        finally:
            logging.disable(logging.NOTSET)
        assert not self.fake.dataverse.script, "a refusal was not used"
        outbox = self.runtime.outbox
        clock = outbox.clock

        def later() -> float:
            return clock() + 3600.0  # past every retry time

        outbox.clock = later
        try:
            return sample(f"timer run, {due} due", self.counter, [self.tick])
        finally:
            outbox.clock = clock


def run(fake: Fakes, proxy: FastServer, env: dict[str, str], n: int) -> int:
    """Measure and print the three figures; the exit status."""
    from channel.runtime import reset_runtime

    use_env(env)
    reset_runtime()
    try:
        app = App(fake, proxy)
        first = sample("first send of a process", app.counter, [app.send])
        sends = sample("fresh send", app.counter, [app.send] * n)
        sent = app.send(n)
        reports = sample(
            "final delivery report",
            app.counter,
            [functools.partial(app.deliver, message) for message in sent],
        )
        sent = app.send(n)
        app.restart(proxy)
        elsewhere = sample(
            "final report, elsewhere",
            app.counter,
            [functools.partial(app.deliver, message) for message in sent],
        )
        empty = sample("timer run, nothing due", app.counter, [app.tick])
        delivered = len(fake.dataverse.calls)
        one = app.timer_run(1)
        many = app.timer_run(n)
        forwarded = len(fake.dataverse.calls) - delivered
        assert forwarded == n + 1, f"the timer forwarded {forwarded} of {n + 1}"
        assert len(fake.dataverse.calls) == 3 * n + 1, "a report was not forwarded once"
    finally:
        reset_runtime()

    # What one more item adds to a run: the run's fixed cost (the due scan, retention) out.
    per_forward = (many.mean - one.mean) / (n - 1)
    print(first.line(target=False))
    print(sends.line())
    print(reports.line())
    print(elsewhere.line())
    for run_figure in (empty, one, many):
        print(run_figure.line(target=False))
    print(
        f"  {'timer forward':<24} {per_forward:5.2f} per item forwarded (a run of {n} due minus "
        f"a run of 1, over {n - 1})  {verdict(per_forward, TARGET)}"
    )
    if fake.dataverse.rejected:
        print(f"  the fake Dataverse rejected: {fake.dataverse.rejected[:3]}")
        return 1
    print()
    print(f"Table round trips per fresh send:            {sends.mean:.2f} (target <= {TARGET:g})")
    print(f"Table round trips per final delivery report: {reports.mean:.2f} (target <= {TARGET:g})")
    print(
        f"  ... reaching another instance:            {elsewhere.mean:.2f} (target <= {TARGET:g})"
    )
    print(f"Table round trips per timer forward:         {per_forward:.2f} (target <= {TARGET:g})")
    return missed(
        ("round trips per fresh send", sends.mean, TARGET),
        ("round trips per final delivery report", reports.mean, TARGET),
        ("round trips per final report reaching another instance", elsewhere.mean, TARGET),
        ("round trips per timer forward", per_forward, TARGET),
    )


def main(argv: list[str] | None = None) -> int:
    """Start Azurite (or use the one on 127.0.0.1:10002), measure, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.table_round_trips", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20, help="events of each kind")
    parser.add_argument(
        "--azurite-port", type=int, help="use the Azurite Table service already on this port"
    )
    options = parser.parse_args(argv)
    if options.iterations < 2:
        parser.error("--iterations must be >= 2")
    quiet_logging()
    from tests.azurite import ACCOUNT, Azurite, fresh_table_name, table_service

    with (
        tempfile.TemporaryDirectory(prefix="bench-table-trips-") as tmp,
        table_service()
        if options.azurite_port is None
        else nullcontext(Azurite(options.azurite_port, started_here=False)) as azurite,
        counting_proxy(f"http://127.0.0.1:{azurite.port}") as proxy,
        fakes() as fake,
    ):
        connection = azurite.connection_string.replace(
            azurite.endpoint, f"{proxy.base_url}/{ACCOUNT}"
        )
        table = fresh_table_name()
        print(
            f"Azurite on port {azurite.port}, counted through {proxy.base_url}; table {table}; "
            f"{options.iterations} events of each kind\n"
        )
        started = time.perf_counter()
        try:
            env = channel_env(
                fake.twilio.base_url,
                str(Path(tmp) / "unused.sqlite3"),
                CHANNEL_STORAGE_CONNECTION=connection,
                CHANNEL_STORAGE_TABLE=table,
                DATAVERSE_URL=fake.dataverse.url,
                IDENTITY_ENDPOINT=fake.identity_url,
                IDENTITY_HEADER=IDENTITY_SECRET,
            )
            return run(fake, proxy, env, options.iterations)
        finally:
            azurite.drop_table(table)
            print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
