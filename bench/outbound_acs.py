"""Outbound overhead with Azure Communication Services (HMAC), warm.

One ratio: the median latency of the ``outbound`` function (called as the host calls
it, with an ``azure.functions.HttpRequest``; embedded SQLite ledger in a temp dir;
provider ``acs`` with an access key, aimed at a fake ACS on 127.0.0.1 that answers 202
with a per-recipient result at once; a new RequestId per call) over the median of a bare
``requests.Session().post`` of the same body with the same headers (signed once
beforehand) to the same fake. The app's side pays what the adapter adds per message:
the JSON body, its UUIDv5 repeatability id and RFC 1123 first-sent time, the SHA-256 of
the body and the HMAC signature. Both run on one keep-alive connection to one server,
in alternating blocks after a warm-up, so drift cancels out. Target: <= 1.3.

Run from the repository root: ``.venv/bin/python -m bench.outbound_acs [--iterations N]``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import requests

from bench.common import (
    BLOCK,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    FakeServer,
    FastHandler,
    Stats,
    app_functions,
    channel_env,
    interleave,
    missed,
    outbound_caller,
    quiet_logging,
    serving,
    use_env,
    verdict,
    warmup_calls,
)
from tests.data import RECIPIENT, SENDER_E164, TEXT

WARM_TARGET = 1.3
ACCESS_KEY = base64.b64encode(b"bench-acs-access-key-0001").decode()
API_PATH = "/sms?api-version=2026-01-23"


class FakeAcsServer(FakeServer):
    """ACS's ``POST /sms`` reduced to its fastest answer: 202 with a fresh message id."""

    def __init__(self) -> None:
        super().__init__(_FakeAcsHandler)
        self.posts = itertools.count(1)

    @property
    def endpoint(self) -> str:
        """What ACS_ENDPOINT is set to."""
        return self.base_url


class _FakeAcsHandler(FastHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        server = cast(FakeAcsServer, self.server)
        body = json.loads(self.read_body())
        if self.path != API_PATH or "HMAC-SHA256" not in self.headers.get("Authorization", ""):
            self.answer(401, b'{"error":{"code":"Denied"}}')
            return
        (recipient,) = body["smsRecipients"]
        item = {
            "to": recipient["to"],
            "messageId": f"Outgoing_{next(server.posts):032x}",
            "httpStatusCode": 202,
            "repeatabilityResult": "accepted",
            "successful": True,
        }
        self.answer(202, json.dumps({"value": [item]}).encode())


@contextmanager
def fake_acs() -> Iterator[FakeAcsServer]:
    """The fake ACS serving from a background thread for the duration of the block."""
    with serving(FakeAcsServer(), "fake-acs") as server:
        yield server


def acs_env(endpoint: str, ledger_path: str) -> dict[str, str]:
    """The process environment with the channel configured for ACS (HMAC) at ``endpoint``."""
    env = channel_env(endpoint, ledger_path)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_BASE_URL"):
        env.pop(name, None)
    env.update(CHANNEL_PROVIDER="acs", ACS_ENDPOINT=endpoint, ACS_ACCESS_KEY=ACCESS_KEY)
    return env


def bare_request(endpoint: str) -> tuple[bytes, dict[str, str]]:
    """The body the adapter sends for :func:`payload_body`, and its headers, signed once."""
    from channel.providers.acs import AcsProvider
    from channel.providers.base import OutboundSms

    provider = AcsProvider(
        endpoint=endpoint, session=requests.Session(), access_key=base64.b64decode(ACCESS_KEY)
    )
    sms = OutboundSms(RECIPIENT, SENDER_E164, TEXT, str(uuid.uuid4()), None)
    body = provider.body(sms)
    return body, provider.headers(body)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the warm figure (exit status 1 when a target is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.outbound_acs", description=__doc__)
    parser.add_argument("--iterations", type=int, default=600, help="warm calls of each kind")
    options = parser.parse_args(argv)
    if options.iterations < 2:
        parser.error("--iterations must be >= 2")

    quiet_logging()
    from channel.runtime import reset_runtime

    with tempfile.TemporaryDirectory(prefix="bench-outbound-acs-") as tmp, fake_acs() as server:
        print(f"fake ACS at {server.endpoint}; ledger under {tmp}")
        use_env(acs_env(server.endpoint, str(Path(tmp) / "warm.sqlite3")))
        reset_runtime()
        outbound = app_functions()["outbound"]
        calls = warmup_calls(options.iterations) + options.iterations
        call_outbound = outbound_caller(outbound, calls)
        session = requests.Session()
        url = server.endpoint + API_PATH
        body, headers = bare_request(server.endpoint)

        def call_bare() -> float:
            start = time.perf_counter()
            reply = session.post(
                url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            )
            elapsed = time.perf_counter() - start
            assert reply.status_code == 202, reply.text
            return elapsed

        print(f"\nwarm: {options.iterations} calls of each kind, blocks of {BLOCK}, ABBA")
        app_times, bare_times = interleave(call_outbound, call_bare, options.iterations)
        session.close()
        reset_runtime()
        app, bare = Stats.of(app_times), Stats.of(bare_times)
        print(app.line("outbound function"))
        print(bare.line("bare POST"))
        ratio = app.median / bare.median
        overhead_ms = (app.median - bare.median) * 1e3
        print(
            f"  ratio {ratio:.2f} ({verdict(ratio, WARM_TARGET)})  overhead {overhead_ms:.3f} "
            f"ms/call  (server connections opened: {server.connections})"
        )

    print()
    print(
        f"warm outbound overhead (acs, hmac): {ratio:.2f} (target <= {WARM_TARGET})  "
        f"outbound {app.median * 1e3:.2f} ms / bare POST {bare.median * 1e3:.2f} ms"
    )
    return missed(("warm outbound (acs)", ratio, WARM_TARGET))


if __name__ == "__main__":
    sys.exit(main())
