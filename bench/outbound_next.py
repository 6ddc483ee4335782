"""Outbound overhead with Vonage, with Telnyx and with Plivo, warm.

One ratio per provider: the median latency of the ``outbound`` function (called
as the host calls it; embedded SQLite ledger in a temp dir; a new RequestId per call)
over the median of a bare ``requests.Session().post`` of the same request (body and
headers built once by the adapter beforehand) to the same fake on 127.0.0.1, which
answers at once. The app's side pays what each adapter adds per message: Vonage's JSON
body and its application JWT (reused, see ``TOKEN_REUSE``); Telnyx's byte-exact body,
its UUIDv5 Idempotency-Key, and the ledger record of its message id; Plivo's JSON body,
Basic auth and the ledger record of its message uuid. Alternating blocks
after a warm-up, so drift cancels out. Target: <= 1.3 each.

Run from the repository root: ``.venv/bin/python -m bench.outbound_next [--iterations N]``.
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
from collections.abc import Callable
from pathlib import Path
from typing import cast

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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
APPLICATION_ID = "5f2b8c4e-1a3d-4e6f-9b7a-0c8d2e4f6a1b"
API_KEY = "KEY-bench-telnyx"
PLIVO_AUTH_ID = "MABENCHPLIVO00000001"
PLIVO_AUTH_TOKEN = "bench-plivo-auth-token"  # noqa: S105 - a bench's fake credential
PLIVO_PATH = f"/v1/Account/{PLIVO_AUTH_ID}/Message/"
PLIVO_BASIC = "Basic " + base64.b64encode(f"{PLIVO_AUTH_ID}:{PLIVO_AUTH_TOKEN}".encode()).decode()


class FakeNextServer(FakeServer):
    """Vonage's, Telnyx's and Plivo's send endpoints at their fastest answers."""

    def __init__(self) -> None:
        super().__init__(_FakeNextHandler)
        self.posts = itertools.count(1)


class _FakeNextHandler(FastHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        server = cast(FakeNextServer, self.server)
        json.loads(self.read_body())
        message_id = f"{next(server.posts):032x}"
        if self.path == "/v1/messages" and self.headers["Authorization"].startswith("Bearer ey"):
            self.answer(202, json.dumps({"message_uuid": message_id}).encode())
        elif self.path == "/v2/messages" and self.headers["Authorization"] == f"Bearer {API_KEY}":
            self.answer(200, json.dumps({"data": {"id": message_id}}).encode())
        elif self.path == PLIVO_PATH and self.headers["Authorization"] == PLIVO_BASIC:
            self.answer(202, json.dumps({"message_uuid": [message_id]}).encode())
        else:
            self.answer(401, b"{}")


def provider_env(provider: str, base_url: str, ledger_path: str) -> dict[str, str]:
    """The process environment with the channel sending through ``provider``."""
    env = channel_env(base_url, ledger_path)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_BASE_URL"):
        env.pop(name, None)
    if provider == "vonage":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        env.update(
            CHANNEL_PROVIDER="vonage",
            VONAGE_APPLICATION_ID=APPLICATION_ID,
            VONAGE_PRIVATE_KEY=pem,
            VONAGE_SIGNATURE_SECRET="bench-signature-secret-of-32-bytes",  # noqa: S106
            VONAGE_BASE_URL=base_url,
        )
    elif provider == "plivo":
        env.update(
            CHANNEL_PROVIDER="plivo",
            PLIVO_AUTH_ID=PLIVO_AUTH_ID,
            PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN,
            PLIVO_BASE_URL=base_url,
        )
    else:
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        env.update(
            CHANNEL_PROVIDER="telnyx",
            TELNYX_API_KEY=API_KEY,
            TELNYX_PUBLIC_KEY=base64.b64encode(raw).decode(),
            TELNYX_BASE_URL=base_url,
        )
    return env


def bare_request(provider: str) -> tuple[str, bytes, dict[str, str]]:
    """The path, body and headers the adapter sends for one message, built once."""
    from channel.config import Settings
    from channel.providers import plivo, telnyx, vonage
    from channel.providers.base import OutboundSms

    settings = Settings.from_env()
    sms = OutboundSms(RECIPIENT, SENDER_E164, TEXT, str(uuid.uuid4()), None)
    if provider == "vonage":
        sender = vonage.sender(
            vonage.SPEC.settings_in(settings), settings, requests.Session(), None
        )
        body = json.dumps(sender.body(sms)).encode()
        headers = {
            "Authorization": "Bearer "
            + vonage.ApplicationToken(
                APPLICATION_ID, vonage.SPEC.settings_in(settings).private_key or ""
            )(),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        return "/v1/messages", body, headers
    if provider == "plivo":
        plivo_sender = plivo.sender(
            plivo.SPEC.settings_in(settings), settings, requests.Session(), None
        )
        body = json.dumps(plivo_sender.body(sms), ensure_ascii=False).encode()
        headers = {
            "Authorization": PLIVO_BASIC,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        return PLIVO_PATH, body, headers
    telnyx_sender = telnyx.sender(
        telnyx.SPEC.settings_in(settings), settings, requests.Session(), None
    )
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Idempotency-Key": telnyx.idempotency_key(sms.correlation),
    }
    return "/v2/messages", telnyx_sender.body(sms), headers


def measure(provider: str, server: FakeNextServer, tmp: str, iterations: int) -> float:
    """The warm ratio of one provider, printed with its medians."""
    from channel.runtime import reset_runtime

    use_env(provider_env(provider, server.base_url, str(Path(tmp) / f"{provider}.sqlite3")))
    reset_runtime()
    outbound = app_functions()["outbound"]
    call_outbound = outbound_caller(outbound, warmup_calls(iterations) + iterations)
    session = requests.Session()
    path, body, headers = bare_request(provider)
    url = server.base_url + path

    def call_bare() -> float:
        start = time.perf_counter()
        reply = session.post(
            url, data=body, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        )
        elapsed = time.perf_counter() - start
        assert reply.status_code < 300, reply.text
        return elapsed

    timed: Callable[[], float] = call_outbound
    print(f"\n{provider}, warm: {iterations} calls of each kind, blocks of {BLOCK}, ABBA")
    app_times, bare_times = interleave(timed, call_bare, iterations)
    session.close()
    reset_runtime()
    app, bare = Stats.of(app_times), Stats.of(bare_times)
    print(app.line("outbound function"))
    print(bare.line("bare POST"))
    ratio = app.median / bare.median
    print(
        f"  ratio {ratio:.2f} ({verdict(ratio, WARM_TARGET)})  overhead "
        f"{(app.median - bare.median) * 1e3:.3f} ms/call"
    )
    print(
        f"warm outbound overhead ({provider}): {ratio:.2f} (target <= {WARM_TARGET})  "
        f"outbound {app.median * 1e3:.2f} ms / bare POST {bare.median * 1e3:.2f} ms"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    """Measure and print each warm figure (exit status 1 when a target is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.outbound_next", description=__doc__)
    parser.add_argument("--iterations", type=int, default=600, help="warm calls of each kind")
    options = parser.parse_args(argv)
    if options.iterations < 2:
        parser.error("--iterations must be >= 2")
    quiet_logging()
    with (
        tempfile.TemporaryDirectory(prefix="bench-outbound-next-") as tmp,
        serving(FakeNextServer(), "fake-vonage-telnyx-plivo") as server,
    ):
        figures = [
            (f"warm outbound ({name})", measure(name, server, tmp, options.iterations), WARM_TARGET)
            for name in ("vonage", "telnyx", "plivo")
        ]
    return missed(*figures)


if __name__ == "__main__":
    sys.exit(main())
