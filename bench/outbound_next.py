"""Warm outbound overhead of each REST provider after Twilio: Vonage, Telnyx, ACS, Sinch, Plivo.

One ratio per provider (``--provider``, all of them by default): the median latency of the
``outbound`` function (called as the host calls it; embedded SQLite ledger in a temp dir;
a new RequestId per call) over the median of a bare ``requests.Session().post`` of the
same request (body and headers built once by the adapter beforehand) to the same fake of
``tests/`` on 127.0.0.1, which checks it as in the tests and answers at once. The app's
side pays what each adapter adds per message: Vonage's JSON body and its application JWT
(reused, see ``TOKEN_REUSE``); Telnyx's byte-exact body, its UUIDv5 Idempotency-Key and
the ledger record of its message id; ACS's JSON body, its repeatability id and first-sent
time, the SHA-256 of the body and the HMAC signature; Sinch's JSON batch with its
client_reference; Plivo's JSON body, Basic auth and the ledger record of its message uuid.
Alternating blocks after a warm-up, so drift cancels out. Target: <= 1.3 each.

Run from the repository root: ``.venv/bin/python -m bench.outbound_next [--iterations N]
[--provider vonage|telnyx|acs|sinch|plivo ...]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    FastServer,
    bare_post,
    channel_env,
    fast_server,
    measure_outbound,
    missed,
    quiet_logging,
    use_env,
)
from tests.data import (
    ACS_ACCESS_KEY,
    RECIPIENT,
    SENDER_E164,
    SINCH_API_TOKEN,
    SINCH_SERVICE_PLAN_ID,
    TELNYX_API_KEY,
    TEXT,
    VONAGE_APPLICATION_ID,
    VONAGE_SIGNATURE_SECRET,
)

WARM_TARGET = 1.3
PROVIDERS = ("vonage", "telnyx", "acs", "sinch", "plivo")


def provider_env(provider: str, base_url: str, ledger_path: str) -> dict[str, str]:
    """The process environment with the channel sending through ``provider`` at ``base_url``."""
    from tests.fake_plivo import PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN
    from tests.fake_telnyx import PUBLIC_KEY
    from tests.fake_vonage import PRIVATE_KEY_PEM

    env = channel_env(base_url, ledger_path)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_BASE_URL"):
        env.pop(name, None)
    env["CHANNEL_PROVIDER"] = provider
    if provider == "vonage":
        env.update(
            VONAGE_APPLICATION_ID=VONAGE_APPLICATION_ID,
            VONAGE_PRIVATE_KEY=PRIVATE_KEY_PEM,
            VONAGE_SIGNATURE_SECRET=VONAGE_SIGNATURE_SECRET,
            VONAGE_BASE_URL=base_url,
        )
    elif provider == "telnyx":
        env.update(
            TELNYX_API_KEY=TELNYX_API_KEY, TELNYX_PUBLIC_KEY=PUBLIC_KEY, TELNYX_BASE_URL=base_url
        )
    elif provider == "sinch":
        env.update(
            SINCH_SERVICE_PLAN_ID=SINCH_SERVICE_PLAN_ID,
            SINCH_API_TOKEN=SINCH_API_TOKEN,
            SINCH_BASE_URL=base_url,
        )
    elif provider == "plivo":
        env.update(
            PLIVO_AUTH_ID=PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN, PLIVO_BASE_URL=base_url
        )
    else:
        env.update(ACS_ENDPOINT=base_url, ACS_ACCESS_KEY=ACS_ACCESS_KEY)
    return env


def serve_fake(provider: str, server: FastServer) -> tuple[Any, int]:
    """Put the tests' fake of ``provider`` on ``server``: the fake and its success status.

    Each fake lists in ``rejected`` what broke its checks (signature, JWT, API key).
    """
    if provider == "vonage":
        from tests.fake_vonage import FakeVonage

        return FakeVonage(server.as_httpserver()), 202
    if provider == "telnyx":
        from tests.fake_telnyx import FakeTelnyx

        return FakeTelnyx(server.as_httpserver()), 200
    if provider == "sinch":
        from tests.fake_sinch import FakeSinch

        return FakeSinch(server.as_httpserver()), 201
    if provider == "plivo":
        from tests.fake_plivo import FakePlivo

        return FakePlivo(server.as_httpserver()), 202
    from tests.fakes import FakeAcs

    return FakeAcs(server.as_httpserver(), key=base64.b64decode(ACS_ACCESS_KEY)), 202


def bare_request(provider: str) -> tuple[str, bytes, dict[str, str]]:
    """The query, body and headers the adapter sends for one message, built once.

    Reads the settings :func:`provider_env` put in the environment.
    """
    from channel.config import Settings
    from channel.providers import acs, plivo, telnyx, vonage
    from channel.providers.base import OutboundSms

    settings = Settings.from_env()
    sms = OutboundSms(RECIPIENT, SENDER_E164, TEXT, str(uuid.uuid4()), None)
    session = requests.Session()
    if provider == "vonage":
        own = vonage.SPEC.settings_in(settings)
        body = json.dumps(vonage.sender(own, settings, session, None).body(sms)).encode()
        token = vonage.ApplicationToken(VONAGE_APPLICATION_ID, own.private_key or "")()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        return "", body, headers
    if provider == "telnyx":
        telnyx_sender = telnyx.sender(telnyx.SPEC.settings_in(settings), settings, session, None)
        headers = {
            "Authorization": f"Bearer {TELNYX_API_KEY}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": telnyx.idempotency_key(sms.correlation),
        }
        return "", telnyx_sender.body(sms), headers
    if provider == "sinch":
        from channel.providers import sinch

        sinch_sender = sinch.sender(sinch.SPEC.settings_in(settings), settings, session, None)
        headers = {
            "Authorization": f"Bearer {SINCH_API_TOKEN}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        return "", sinch_sender.body(sms), headers
    if provider == "plivo":
        from tests.fake_plivo import PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN

        plivo_sender = plivo.sender(plivo.SPEC.settings_in(settings), settings, session, None)
        basic = base64.b64encode(f"{PLIVO_AUTH_ID}:{PLIVO_AUTH_TOKEN}".encode()).decode()
        headers = {
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        return "", json.dumps(plivo_sender.body(sms), ensure_ascii=False).encode(), headers
    own_acs = acs.SPEC.settings_in(settings)
    provider_acs = acs.AcsProvider(
        endpoint=str(own_acs.endpoint),
        session=session,
        access_key=base64.b64decode(ACS_ACCESS_KEY),
    )
    body = provider_acs.body(sms)
    return f"?api-version={acs.API_VERSION}", body, provider_acs.headers(body)


def measure(provider: str, tmp: str, iterations: int) -> float:
    """The warm ratio of one provider, printed with its medians."""
    from channel.runtime import reset_runtime

    with fast_server(f"fake-{provider}") as server:
        fake, status = serve_fake(provider, server)
        env = provider_env(provider, server.base_url, str(Path(tmp) / f"{provider}.sqlite3"))
        use_env(env)
        reset_runtime()
        query, body, headers = bare_request(provider)
        url = server.base_url + fake.path + query
        bare, close = bare_post(url, status, data=body, headers=headers)
        print(f"\n{provider}: the tests' fake at {server.base_url}{fake.path}")
        try:
            warm = measure_outbound(env, bare, iterations)
        finally:
            close()
        assert not fake.rejected, fake.rejected[:3]
        warm.print(WARM_TARGET, server.connections)
    print(
        f"warm outbound overhead ({provider}): {warm.ratio:.2f} (target <= {WARM_TARGET})  "
        f"outbound {warm.outbound.median * 1e3:.2f} ms / bare POST {warm.bare.median * 1e3:.2f} ms"
    )
    return warm.ratio


def main(argv: list[str] | None = None) -> int:
    """Measure and print each provider's warm figure (exit status 1 when a target is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.outbound_next", description=__doc__)
    parser.add_argument("--iterations", type=int, default=600, help="warm calls of each kind")
    parser.add_argument(
        "--provider",
        action="append",
        choices=PROVIDERS,
        help="measure this provider (repeatable; all of them by default)",
    )
    options = parser.parse_args(argv)
    if options.iterations < 2:
        parser.error("--iterations must be >= 2")
    quiet_logging()
    with tempfile.TemporaryDirectory(prefix="bench-outbound-next-") as tmp:
        figures = [
            (f"warm outbound ({name})", measure(name, tmp, options.iterations), WARM_TARGET)
            for name in options.provider or PROVIDERS
        ]
    return missed(*figures)


if __name__ == "__main__":
    sys.exit(main())
