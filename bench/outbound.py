"""Outbound overhead: what the channel adds to one Twilio POST, warm and from a cold start.

Two ratios, each against the cheapest thing that could do the same job, so they
measure our code and not the machine. *Warm*: the median latency of the ``outbound``
function (called as the host calls it, with an ``azure.functions.HttpRequest``; embedded
SQLite ledger in a temp dir; provider twilio aimed at the tests' fake Twilio on 127.0.0.1,
which answers 201 at once; a new RequestId per call) over the median of a bare
``requests.Session().post`` of the same form to the same fake. Both run on one keep-alive
connection to one server, in alternating blocks after a warm-up, so drift cancels out.
*Cold*: the wall time of a fresh interpreter that imports ``function_app``, indexes it and
answers one outbound request, over a fresh interpreter that imports ``azure.functions``
and ``requests`` and makes one bare POST to the same fake, both with their byte-code
caches written (as on any machine whose sources are writable). Targets: warm <= 1.3,
cold <= 1.3 (issue 14). With ``--table``, also the warm figure with the Table Storage
ledger on Azurite (no target; its round trips per event are ``bench.table_round_trips``'s
figure). With ``--read-only``, the cold start as a Flex Consumption app runs it: the app
child runs from a read-only copy of the deployed files (``PYTHONDONTWRITEBYTECODE=1``, so
nothing is written), once as packaged without byte-code of ours (every start compiles
function_app.py and channel/) and once with the byte-code infra/hooks/prepackage.py ships
(compiled for this interpreter's version); the bare child as above. The target then
applies to the package with shipped byte-code; the saving is the difference of medians.

Run from the repository root: ``.venv/bin/python -m bench.outbound [--iterations N]
[--cold-runs N] [--table] [--telemetry] [--read-only]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench.common import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    ROOT,
    FastServer,
    Stats,
    Warm,
    bare_post,
    channel_env,
    fast_server,
    measure_outbound,
    missed,
    payload_body,
    quiet_logging,
    twilio_form,
    twilio_messages_url,
    verdict,
)
from tests.fakes import FakeTwilio
from tests.scripts import load_script

WARM_TARGET = 1.3
COLD_TARGET = 1.3


def measure_warm(server: FastServer, iterations: int, ledger_dir: Path, **ledger_env: str) -> Warm:
    """The warm figure against the fake Twilio on ``server``.

    ``ledger_env`` selects another ledger backend (e.g. CHANNEL_STORAGE_CONNECTION).
    """
    env = channel_env(server.base_url, str(ledger_dir / "warm.sqlite3"), **ledger_env)
    bare, close = bare_post(
        twilio_messages_url(server.base_url),
        201,
        data=twilio_form(str(uuid.uuid4())),
        auth=(ACCOUNT_SID, AUTH_TOKEN),
    )
    try:
        return measure_outbound(env, bare, iterations)
    finally:
        close()


# -- cold ------------------------------------------------------------------------------

APP_CHILD = """
import sys
import azure.functions as func
from function_app import app
functions = {fn.get_function_name(): fn.get_user_function() for fn in app.get_functions()}
request = func.HttpRequest(
    method="POST", url="http://localhost:7071/api/outbound",
    headers={"content-type": "application/json"}, params={}, route_params={},
    body=sys.argv[1].encode(),
)
response = functions["outbound"](request)
if response.status_code != 200 or b'"Sent"' not in response.get_body():
    sys.exit("outbound answered %s: %r" % (response.status_code, response.get_body()))
"""

# What the Functions worker does before it loads the app when telemetry is on (it
# configures the Azure Monitor distro; here the SDK's providers with in-memory sinks, so
# both children pay the same SDK import and only the app's own telemetry differs).
TELEMETRY_PRELUDE = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
"""

# With telemetry on, the app child also proves its spans were recorded.
TELEMETRY_CHECK = """
if not any(span.name == "outbound" for span in spans.get_finished_spans()):
    sys.exit("telemetry on, yet no outbound span was recorded")
"""

BARE_CHILD = """
import json
import sys
import azure.functions
import requests
reply = requests.Session().post(
    sys.argv[1], data=json.loads(sys.argv[2]), auth=(sys.argv[3], sys.argv[4]),
    timeout=(3.05, 10.0),
)
if reply.status_code != 201:
    sys.exit("bare POST answered %s" % reply.status_code)
"""


@dataclass(frozen=True)
class ColdResult:
    """The cold-start figures: app process vs bare process."""

    app: Stats
    bare: Stats

    @property
    def ratio(self) -> float:
        """App median over bare median."""
        return self.app.median / self.bare.median


def _run_child(
    args: list[str], env: dict[str, str], *, cwd: Path = ROOT, write_bytecode: bool = True
) -> float:
    # Byte-code caches on, whatever this shell says: with PYTHONDONTWRITEBYTECODE set,
    # the app child would compile the channel's sources on every run and the bare one
    # nothing, and the figure would depend on an ambient variable. Off (set) only for a
    # read-only package, where Azure's Python cannot write them either.
    env = {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def measure_cold(
    server: FastServer, runs: int, ledger_dir: Path, *, telemetry: bool = False
) -> ColdResult:
    """Wall time of fresh interpreters, spawn to exit, alternating app and bare.

    With ``telemetry``, both start as the worker does with telemetry on: OpenTelemetry
    SDK providers installed before anything else.
    """
    counter = itertools.count()
    prelude = TELEMETRY_PRELUDE if telemetry else ""
    app_child = prelude + APP_CHILD + (TELEMETRY_CHECK if telemetry else "")
    bare_child = prelude + BARE_CHILD

    def app_run() -> float:
        ledger = ledger_dir / f"cold-{next(counter)}" / "ledger.sqlite3"
        env = channel_env(server.base_url, str(ledger))
        return _run_child(["-c", app_child, payload_body(str(uuid.uuid4())).decode()], env)

    def bare_run() -> float:
        env = channel_env(server.base_url, str(ledger_dir / f"cold-{next(counter)}" / "unused"))
        form = json.dumps(twilio_form(str(uuid.uuid4())))
        url = twilio_messages_url(server.base_url)
        return _run_child(["-c", bare_child, url, form, ACCOUNT_SID, AUTH_TOKEN], env)

    # One untimed run of each: byte-code caches and the OS page cache are warm for both.
    app_run()
    bare_run()
    app_times: list[float] = []
    bare_times: list[float] = []
    for i in range(runs):
        if i % 2 == 0:
            app_times.append(app_run())
            bare_times.append(bare_run())
        else:
            bare_times.append(bare_run())
            app_times.append(app_run())
    return ColdResult(Stats.of(app_times), Stats.of(bare_times))


# -- cold, from a read-only package ------------------------------------------------------

HOOK = ROOT / "infra" / "hooks" / "prepackage.py"


def _prepackage() -> ModuleType:
    """The azd prepackage hook (a script, not a package module), loaded from its file."""
    return load_script("prepackage", HOOK)


def package_copy(destination: Path, *, shipped: bool) -> Path:
    """A copy of the deployed files; with ``shipped``, compiled by the hook for this Python."""
    for relative in _prepackage().deployed_files(ROOT):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    if shipped:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        done = subprocess.run(
            [sys.executable, str(HOOK), "--root", str(destination), "--python-version", version],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or "byte-compiled" not in done.stdout:
            raise RuntimeError(f"the prepackage hook failed:\n{done.stdout}{done.stderr}")
    return destination


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _set_writable(root: Path, writable: bool) -> None:
    # Files too: as the package is mounted. (Root writes through the bits anyway; what
    # keeps the copy unwritten is PYTHONDONTWRITEBYTECODE, checked after the runs.)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


@dataclass(frozen=True)
class ReadOnlyCold:
    """Cold starts from a read-only package, without and with shipped byte-code."""

    plain: Stats
    shipped: Stats
    bare: Stats

    def ratio(self, app: Stats) -> float:
        """An app median over the bare median."""
        return app.median / self.bare.median

    @property
    def saving_ms(self) -> float:
        """What the shipped byte-code saves per cold start: difference of medians, in ms."""
        return (self.plain.median - self.shipped.median) * 1e3


def measure_cold_read_only(
    server: FastServer, runs: int, ledger_dir: Path, *, telemetry: bool = False
) -> ReadOnlyCold:
    """Wall time of fresh interpreters, the app's from read-only packages; rotating order."""
    counter = itertools.count()
    prelude = TELEMETRY_PRELUDE if telemetry else ""
    app_child = prelude + APP_CHILD + (TELEMETRY_CHECK if telemetry else "")
    bare_child = prelude + BARE_CHILD
    packages = {
        shipped: package_copy(ledger_dir / f"package-{shipped}", shipped=shipped)
        for shipped in (False, True)
    }

    def app_run(shipped: bool) -> Callable[[], float]:
        def run() -> float:
            ledger = ledger_dir / f"cold-{next(counter)}" / "ledger.sqlite3"
            env = channel_env(server.base_url, str(ledger))
            body = payload_body(str(uuid.uuid4())).decode()
            return _run_child(
                ["-c", app_child, body], env, cwd=packages[shipped], write_bytecode=False
            )

        return run

    def bare_run() -> float:
        env = channel_env(server.base_url, str(ledger_dir / f"cold-{next(counter)}" / "unused"))
        form = json.dumps(twilio_form(str(uuid.uuid4())))
        url = twilio_messages_url(server.base_url)
        return _run_child(["-c", bare_child, url, form, ACCOUNT_SID, AUTH_TOKEN], env)

    kinds = [app_run(False), app_run(True), bare_run]
    times: list[list[float]] = [[], [], []]
    before = {shipped: _files(package) for shipped, package in packages.items()}
    for package in packages.values():
        _set_writable(package, False)
    try:
        for kind in kinds:  # untimed: the OS page cache (and the bare child's caches) warm
            kind()
        for i in range(runs):
            for k in range(len(kinds)):
                index = (i + k) % len(kinds)
                times[index].append(kinds[index]())
    finally:
        for package in packages.values():
            _set_writable(package, True)
    for shipped, package in packages.items():
        if _files(package) != before[shipped]:
            raise RuntimeError(f"the read-only package {package} was written to")
    plain, shipped_times, bare = times
    return ReadOnlyCold(Stats.of(plain), Stats.of(shipped_times), Stats.of(bare))


def _stats_line(name: str, stats: Stats) -> str:
    return f"  {name:<24} median {stats.median:7.3f} s    p90 {stats.p90:7.3f} s    n={stats.n}"


def report_read_only(cold: ReadOnlyCold) -> float:
    """Print the read-only figures; the ratio the target applies to (shipped byte-code)."""
    for name, stats in (
        ("app, no byte-code", cold.plain),
        ("app, shipped byte-code", cold.shipped),
        ("bare process", cold.bare),
    ):
        print(_stats_line(name, stats))
    plain, shipped = cold.ratio(cold.plain), cold.ratio(cold.shipped)
    print(f"  no byte-code:      ratio {plain:.2f}")
    print(f"  shipped byte-code: ratio {shipped:.2f} ({verdict(shipped, COLD_TARGET)})")
    print(f"  saving {cold.saving_ms:.0f} ms per cold start (difference of medians)")
    return shipped


# -- report ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Measure and print both figures (exit status 1 when a target is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.outbound", description=__doc__)
    parser.add_argument("--iterations", type=int, default=600, help="warm calls of each kind")
    parser.add_argument("--cold-runs", type=int, default=10, help="fresh processes of each kind")
    parser.add_argument(
        "--table",
        action="store_true",
        help="also measure warm outbound with the Table Storage ledger (starts Azurite)",
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="cold start with OpenTelemetry SDK providers installed first in both processes",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="cold start with the app run from a read-only package, without and with the "
        "byte-code infra/hooks/prepackage.py ships (as a Flex Consumption app runs)",
    )
    options = parser.parse_args(argv)
    if options.iterations < 2 or options.cold_runs < 1:
        parser.error("--iterations must be >= 2 and --cold-runs >= 1")

    quiet_logging()
    table = measure_table(options.iterations) if options.table else None

    with (
        tempfile.TemporaryDirectory(prefix="bench-outbound-") as tmp,
        fast_server("fake-twilio") as server,
    ):
        FakeTwilio(server.as_httpserver()).accept()
        ledger_dir = Path(tmp)
        print(f"fake Twilio at {server.base_url}; ledgers under {ledger_dir}")
        warm = measure_warm(server, options.iterations, ledger_dir)
        warm.print(WARM_TARGET, server.connections)

        setting = "on" if options.telemetry else "off"
        if options.read_only:
            cold_ratio, cold_summary = cold_read_only(
                server, options.cold_runs, ledger_dir, telemetry=options.telemetry
            )
        else:
            print(
                f"\ncold: {options.cold_runs} fresh processes of each kind, alternating "
                f"(telemetry {setting})"
            )
            cold = measure_cold(server, options.cold_runs, ledger_dir, telemetry=options.telemetry)
            for name, stats in (("app process", cold.app), ("bare process", cold.bare)):
                print(
                    f"  {name:<18} median {stats.median:7.3f} s    "
                    f"p90 {stats.p90:7.3f} s    n={stats.n}"
                )
            extra_ms = (cold.app.median - cold.bare.median) * 1e3
            print(
                f"  ratio {cold.ratio:.2f} ({verdict(cold.ratio, COLD_TARGET)})"
                f"  extra {extra_ms:.0f} ms"
            )
            cold_ratio = cold.ratio
            cold_summary = [
                f"cold start:             {cold.ratio:.2f} (target <= {COLD_TARGET})  "
                f"app {cold.app.median:.2f} s / bare {cold.bare.median:.2f} s"
            ]

    print()
    print(
        f"warm outbound overhead: {warm.ratio:.2f} (target <= {WARM_TARGET})  "
        f"outbound {warm.outbound.median * 1e3:.2f} ms / bare POST {warm.bare.median * 1e3:.2f} ms"
    )
    for line in cold_summary:
        print(line)
    if table is not None:
        print(
            f"warm outbound, Table:   {table.ratio:.2f}  outbound "
            f"{table.outbound.median * 1e3:.2f} ms / bare POST {table.bare.median * 1e3:.2f} ms"
        )
    return missed(
        ("warm outbound", warm.ratio, WARM_TARGET), ("cold start", cold_ratio, COLD_TARGET)
    )


def cold_read_only(
    server: FastServer, runs: int, ledger_dir: Path, *, telemetry: bool
) -> tuple[float, list[str]]:
    """Measure and print the read-only cold start: (the ratio with a target, summary lines)."""
    setting = "on" if telemetry else "off"
    print(
        f"\ncold, the app from a read-only package: {runs} fresh processes of each kind, "
        f"rotating (telemetry {setting})"
    )
    cold = measure_cold_read_only(server, runs, ledger_dir, telemetry=telemetry)
    ratio = report_read_only(cold)
    bare = cold.bare.median
    return ratio, [
        f"cold start:             {ratio:.2f} (target <= {COLD_TARGET})  read-only package "
        f"with shipped byte-code: app {cold.shipped.median:.2f} s / bare {bare:.2f} s",
        f"cold start, no byte-code: {cold.ratio(cold.plain):.2f}  read-only package: "
        f"app {cold.plain.median:.2f} s / bare {bare:.2f} s",
        f"byte-code saving:       {cold.saving_ms:.0f} ms per cold start (difference of medians)",
    ]


def measure_table(iterations: int) -> Warm:
    """Warm outbound with the Table ledger on Azurite (127.0.0.1), against the bare POST."""
    from tests.azurite import fresh_table_name, table_service

    with (
        tempfile.TemporaryDirectory(prefix="bench-table-") as tmp,
        fast_server("fake-twilio") as server,
        table_service() as azurite,
    ):
        FakeTwilio(server.as_httpserver()).accept()
        print(f"warm with the Table ledger (Azurite on port {azurite.port}): {iterations} calls")
        warm = measure_warm(
            server,
            iterations,
            Path(tmp),
            CHANNEL_STORAGE_CONNECTION=azurite.connection_string,
            CHANNEL_STORAGE_TABLE=fresh_table_name(),
        )
        warm.print(WARM_TARGET)
        return warm


if __name__ == "__main__":
    sys.exit(main())
