"""Smoke tests of the benchmarks: each runs with two iterations and prints its figures.

Behaviour only, never timings: the bench ran to the end, printed every figure it owns
(and, with --profile, a breakdown naming only stages a report goes through), checked
what the fakes received, and its exit status matches its verdicts (1 exactly when a
figure missed its target, which two iterations on a busy machine may well do).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.azurite import Azurite

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180.0
FIGURE = r"-?\d+\.\d\d"


def run_bench(module: str, *args: str) -> str:
    """Run ``python -m bench.<module> --iterations 2 ...``; its stdout, checked for sanity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANNEL_", "TWILIO_"))}
    done = subprocess.run(  # noqa: S603 - our own bench module, fixed arguments
        [sys.executable, "-m", f"bench.{module}", "--iterations", "2", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    missed = [line for line in done.stderr.splitlines() if line.startswith("MISSED: ")]
    verdicts = re.findall(r"target <= [\d.]+: (ok|MISSED)", output)
    assert verdicts, output
    # Exit status 1 exactly when a verdict says MISSED (and stderr names it).
    expected = 1 if "MISSED" in verdicts else 0
    assert done.returncode == expected, (done.returncode, output, done.stderr)
    assert bool(missed) == (expected == 1), done.stderr
    return output


def test_outbound_bench() -> None:
    output = run_bench("outbound", "--cold-runs", "1")
    assert re.search(rf"^warm outbound overhead: {FIGURE} \(target <= 1\.3\)", output, re.M)
    assert re.search(rf"^cold start: +{FIGURE} \(target <= 1\.3\)", output, re.M)
    # The tests' fake Twilio served both sides over keep-alive connections.
    assert re.search(r"server connections opened: [12]\)", output), output


def test_outbound_bench_with_telemetry_on_records_the_apps_spans() -> None:
    # The app child exits non-zero (a Traceback-free failure run_bench reports) unless its
    # outbound span reached the SDK installed before the app was loaded.
    output = run_bench("outbound", "--cold-runs", "1", "--telemetry")
    assert "(telemetry on)" in output
    assert re.search(rf"^cold start: +{FIGURE} \(target <= 1\.3\)", output, re.M)


def test_outbound_bench_read_only_compares_the_package_without_and_with_byte_code() -> None:
    # The app child runs from read-only copies of the deployed files; the bench fails
    # (a RuntimeError, so a Traceback) if the hook did not compile or a copy was written to.
    output = run_bench("outbound", "--cold-runs", "2", "--read-only")
    assert "cold, the app from a read-only package: 2 fresh processes of each kind" in output
    for kind in ("app, no byte-code", "app, shipped byte-code", "bare process"):
        assert re.search(rf"^  {kind} +median +\d+\.\d{{3}} s .* n=2$", output, re.M), output
    assert re.search(
        rf"^cold start: +{FIGURE} \(target <= 1\.3\)  read-only package with", output, re.M
    )
    assert re.search(rf"^cold start, no byte-code: {FIGURE}  read-only package", output, re.M)
    assert re.search(r"^byte-code saving: +-?\d+ ms per cold start", output, re.M), output


def test_outbound_next_bench_measures_every_provider() -> None:
    output = run_bench("outbound_next")
    for provider in ("vonage", "telnyx", "acs", "sinch", "plivo"):
        assert re.search(
            rf"^warm outbound overhead \({provider}\): {FIGURE} \(target <= 1\.3\)", output, re.M
        ), output


def test_outbound_next_bench_takes_one_provider() -> None:
    output = run_bench("outbound_next", "--provider", "acs")
    assert "warm outbound overhead (acs)" in output
    assert "vonage" not in output
    assert "telnyx" not in output
    assert "plivo" not in output


def test_delivery_report_bench_with_profile() -> None:
    output = run_bench("delivery_report", "--profile", "2")
    assert re.search(rf"^warm delivery-report overhead: {FIGURE} \(target <= 1\.3\)", output, re.M)
    assert "each made exactly one notification: ok" in output
    assert "0 rejected by the fake" in output
    assert re.search(r"^token requests per 1,000 notifications: ", output, re.M)
    assert re.search(r"^new connections per 1,000 Dataverse calls: ", output, re.M)
    # --profile: the stage breakdown and the cProfile tables, every stage on the path.
    assert "breakdown: 2 more report calls" in output
    assert "channel/dataverse.py:DataverseClient.notify" in output
    assert "NOT CALLED" not in output
    assert "profile: 2 more report calls under cProfile" in output


def test_table_round_trips_bench(azurite: Azurite) -> None:
    output = run_bench("table_round_trips", "--azurite-port", str(azurite.port))
    for event in ("fresh send", "final delivery report", "timer forward"):
        assert re.search(
            rf"^Table round trips per {event}: +{FIGURE} \(target <= 2\)", output, re.M
        ), output
    # The proxy and the store's own counter saw the same requests.
    rows = re.findall(rf"^  (.+?) +({FIGURE}) per event .*store counted ({FIGURE})\)", output, re.M)
    assert rows, output
    assert all(proxy == store for _, proxy, store in rows), rows


@pytest.mark.parametrize("module", ["outbound", "outbound_next", "delivery_report"])
def test_benches_refuse_fewer_than_two_iterations(module: str) -> None:
    done = subprocess.run(  # noqa: S603 - our own bench module, fixed arguments
        [sys.executable, "-m", f"bench.{module}", "--iterations", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "--iterations must be >= 2" in done.stderr
