"""HTTP behaviour shared by the functions: health, problems, limits, configuration errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import Call, Configure, answer_json
from tests.data import RECIPIENT, TWILIO_TOKEN, WEBHOOK_SECRET, payload
from tests.fakes import FakeTwilio

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_app_with_no_settings_registers_every_function(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "WEBSITE_INSTANCE_ID": "in-azure-but-unconfigured"}
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from function_app import app;"
        "print(' '.join(sorted(f.get_function_name() for f in app.get_functions())))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script, str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "delivery_report",
        "forward_pending",
        "health",
        "inbound",
        "outbound",
    ]
    assert not (tmp_path / ".channel").exists()  # nothing built at import


def test_health_is_ok_with_zero_configuration(call: Call) -> None:
    response = call("health", method="GET")
    assert response.status_code == 200
    report = answer_json(response)
    assert report["status"] == "ok"
    assert report["provider"] == "loopback"
    assert report["ledger"] == "embedded"
    assert report["dataverse"] == {"configured": False, "mode": "log"}
    assert report["problems"] == []


def test_health_lists_problems_without_secrets(call: Call, configure: Configure) -> None:
    configure(WEBSITE_INSTANCE_ID="x", CHANNEL_PROVIDER="twilio", TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    response = call("health", method="GET")
    assert response.status_code == 503
    report = answer_json(response)
    assert report["status"] == "unavailable"
    assert "TWILIO_ACCOUNT_SID is not set (provider twilio)" in report["problems"]
    assert TWILIO_TOKEN not in response.get_body().decode()


def test_outbound_answers_503_listing_problems_when_not_configured(
    call: Call, configure: Configure
) -> None:
    configure(CHANNEL_PROVIDER="twilio")
    response = call("outbound", payload())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    problem = answer_json(response)
    assert problem["title"] == "Channel not configured"
    assert "TWILIO_ACCOUNT_SID is not set (provider twilio)" in problem["problems"]


def test_body_over_64_kib_is_413(call: Call) -> None:
    big = payload(Message={"text": "x" * (64 * 1024)})
    response = call("outbound", json.dumps(big).encode())
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_body_at_the_limit_is_read(call: Call) -> None:
    body = json.dumps(payload()).encode()
    padded = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(padded) == 64 * 1024
    assert call("outbound", padded).status_code == 200


def test_webhooks_of_unknown_providers_are_404(call: Call) -> None:
    for name in ("delivery_report", "inbound"):
        response = call(name, b"", route_params={"provider": "pigeon"})
        assert response.status_code == 404
        assert "pigeon" in answer_json(response)["detail"]


def test_webhooks_of_providers_without_webhooks_are_501(call: Call) -> None:
    for name in ("delivery_report", "inbound"):
        response = call(name, b"", route_params={"provider": "loopback"})
        assert response.status_code == 501
        assert response.mimetype == "application/problem+json"


def test_acs_webhooks_without_a_secret_are_a_plain_503(call: Call) -> None:
    for name in ("delivery_report", "inbound"):
        response = call(name, b"", route_params={"provider": "acs"})
        assert response.status_code == 503
        problem = answer_json(response)
        # The caller is anonymous: which setting is missing is for health and the log.
        assert "problems" not in problem
        assert "CHANNEL_WEBHOOK_SECRET" not in response.get_body().decode()
        assert problem["title"] == "Channel not configured"


def test_twilio_webhooks_without_their_settings_are_a_plain_503(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("delivery_report", "inbound"):
        response = call(name, b"", route_params={"provider": "twilio"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "60"
        assert "problems" not in answer_json(response)
        assert "TWILIO_AUTH_TOKEN" not in response.get_body().decode()
    # The operator still learns why, from the app's own log.
    assert any(
        "TWILIO_AUTH_TOKEN is not set: Twilio webhooks cannot be verified" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


CONNECTION_STRING = (
    "endpoint=https://contoso.communication.azure.com/;accesskey=c2VjcmV0LWtleS1mb3ItdGVzdHM="
)


def test_no_setting_value_reaches_health_or_a_webhook_answer(
    call: Call, configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    # The ACS connection string pasted where the endpoint belongs: its key must not leak.
    configure(
        CHANNEL_PROVIDER="acs",
        ACS_ENDPOINT=CONNECTION_STRING,
        DATAVERSE_URL="https://contoso.crm.dynamics.com;password=hunter2-for-tests",
        CHANNEL_DEFINITION_ID="not-a-guid-but-a-secret-for-tests",
        CHANNEL_WEBHOOK_SECRET="a-secret-for-this-test-only",
    )
    health = call("health", method="GET")
    assert health.status_code == 503
    problems = answer_json(health)["problems"]
    assert (
        "ACS_ENDPOINT looks like a connection string; use the endpoint URL (https://...) "
        "and keep keys in their own settings"
    ) in problems
    assert "DATAVERSE_URL looks like a connection string" in " ".join(problems)
    assert "CHANNEL_DEFINITION_ID must be a GUID" in problems
    hook = call("delivery_report", b"[]", route_params={"provider": "acs"})
    outbound = call("outbound", payload())
    assert hook.status_code == outbound.status_code == 503
    logged = " ".join(r.getMessage() for r in caplog.records)
    for answer in (health, hook, outbound):
        text = answer.get_body().decode()
        for secret in ("c2VjcmV0LWtleS1mb3ItdGVzdHM", "hunter2", "not-a-guid-but"):
            assert secret not in text
            assert secret not in logged


def test_health_is_503_naming_the_ledger_when_it_cannot_be_read(
    call: Call, configure: Configure, tmp_path: Path
) -> None:
    ledger = tmp_path / "corrupt.sqlite3"
    ledger.write_bytes(b"this is not an SQLite database, " * 64)
    configure(CHANNEL_LEDGER_PATH=str(ledger))
    response = call("health", method="GET")
    assert response.status_code == 503
    report = answer_json(response)
    assert report["status"] == "unavailable"
    (problem,) = report["problems"]
    assert problem.startswith("the message ledger (embedded) could not be read")


def test_unexpected_errors_become_a_plain_problem_without_internals(
    call: Call, configure: Configure, tmp_path: Path
) -> None:
    # A ledger path that cannot be created: a real failure of our own machinery.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    configure(CHANNEL_LEDGER_PATH=str(blocker / "ledger.sqlite3"))
    response = call("outbound", payload())
    assert response.status_code == 500
    problem = answer_json(response)
    assert problem["detail"] == "an unexpected error occurred; see the app's log"
    assert "Traceback" not in response.get_body().decode()


def test_webhook_bodies_may_be_as_large_as_an_event_grid_batch(
    call: Call, configure: Configure
) -> None:
    configure(CHANNEL_WEBHOOK_SECRET="a-secret-for-this-test-only")
    # A 200 KiB body is over the outbound limit but within Event Grid's 1 MB batches:
    # it reaches the adapter (401: no secret given), it is not refused with 413.
    big = b"x" * (200 * 1024)
    response = call("delivery_report", big, route_params={"provider": "acs"})
    assert response.status_code == 401
    too_big = b"x" * (1024 * 1024 + 1)
    assert call("delivery_report", too_big, route_params={"provider": "acs"}).status_code == 413


def test_an_unexpected_error_is_logged_without_its_message(
    call: Call, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing real raises with a phone number in its message on demand: a stand-in does.
    def broken(raw: str, region: str) -> str:
        raise ValueError(f"cannot read {raw}")

    monkeypatch.setattr("channel.service.to_e164", broken)
    response = call("outbound", payload(RequestId="unexpected-1"))
    assert response.status_code == 500
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = record.getMessage()
    assert "outbound failed unexpectedly: ValueError" in text
    assert "in _prepare" in text  # the stack shows where
    assert RECIPIENT not in text  # the autouse check also fails the test on a leak


# --- refused webhooks leave a record of our own ---------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "channel.http" and r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]


def test_each_refused_twilio_webhook_is_logged_once_with_its_route_and_reason(
    call: Call, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    form = [("MessageSid", "SM" + "ab" * 16), ("MessageStatus", "delivered")]
    forged = "Zm9yZ2VkLXNpZ25hdHVyZS0wMDE="
    cases = [
        ("inbound", None, urlencode(form).encode(), 401, "X-Twilio-Signature header is missing"),
        ("delivery_report", forged, urlencode(form).encode(), 403, "does not match"),
        ("inbound", forged, b"x" * (100 * 1024), 413, "the limit is 65536"),
    ]
    for name, signature, body, status, reason in cases:
        caplog.clear()
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        route = "inbound" if name == "inbound" else "delivery-report"
        response = call(
            name, body, route_params={"provider": "twilio"}, headers=headers, path=f"{route}/twilio"
        )
        assert response.status_code == status
        (record,) = refusals(caplog)
        text = record.getMessage()
        assert f"webhook {route}/twilio refused with {status}" in text
        assert reason in text
        assert forged not in text
        assert TWILIO_TOKEN not in text
        assert "xxxx" not in text  # nothing of the body
        assert "MessageSid" not in text


def test_each_refused_acs_webhook_is_logged_once_without_the_secret(
    call: Call, configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    configure(CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET)
    wrong = "a-wrong-secret-guessed-by-someone"
    for query, status in [("", 401), (f"?secret={wrong}", 403)]:
        caplog.clear()
        response = call(
            "inbound",
            b"[]",
            route_params={"provider": "acs"},
            path=f"inbound/acs{query}",
        )
        assert response.status_code == status
        (record,) = refusals(caplog)
        text = record.getMessage()
        assert f"webhook inbound/acs refused with {status}" in text
        assert "secret query parameter" in text
        assert wrong not in text
        assert WEBHOOK_SECRET not in text
