"""Twilio's webhook adapter as a unit, on the recorded forms under ``tests/samples/twilio``.

Signatures come from twilio-python's ``RequestValidator`` (the oracle). The routes end to
end (signed callbacks through the functions, into Dataverse) are in test_webhooks_twilio.py.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from channel.errors import BadRequest, Forbidden, Unauthorized
from channel.providers.base import DeliveryState, ReceivedSms, StatusReport, Webhook
from channel.providers.twilio import TwilioWebhooks

SAMPLES = Path(__file__).parent / "samples" / "twilio"
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC_URL = "https://sms.contoso.example"
REPORT_PATH = "/api/delivery-report/twilio"
INBOUND_PATH = "/api/inbound/twilio"
MESSAGE = "SM5ef8fa0a1e46b5d3a4b1f0c6b7e3a9d2"
RID = "0f7e5c1a-2f0b-4f7e-9a55-7d4c2b1e9d10"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def signed(path: str, body: bytes, *, query: str = "", token: str = TOKEN) -> Webhook:
    """The call as Twilio makes it: signed over the public URL, the query and the form."""
    public = f"{PUBLIC_URL}{path}" + (f"?{query}" if query else "")
    form = MultiDict(parse_qsl(body.decode(), keep_blank_values=True))
    signature = RequestValidator(token).compute_signature(public, form)
    # The request reaches us through a proxy: its own host is not what Twilio signed.
    local = f"http://10.0.0.4:8080{path}" + (f"?{query}" if query else "")
    return Webhook("POST", local, {"x-twilio-signature": signature}, body)


@pytest.fixture
def adapter() -> TwilioWebhooks:
    return TwilioWebhooks(auth_token=TOKEN, public_url=PUBLIC_URL)


@pytest.mark.parametrize(
    ("name", "state", "detail"),
    [
        ("status-delivered.form", DeliveryState.DELIVERED, "delivered"),
        ("status-undelivered.form", DeliveryState.NOT_DELIVERED, "undelivered 30003"),
        ("status-sent.form", DeliveryState.PENDING, "sent"),
    ],
)
def test_status_callbacks_are_verified_and_read(
    adapter: TwilioWebhooks, name: str, state: DeliveryState, detail: str
) -> None:
    hook = signed(REPORT_PATH, sample(name), query=f"rid={RID}")
    adapter.verify(hook)
    assert adapter.status_reports(hook) == [StatusReport(MESSAGE, state, RID, detail=detail)]


def test_a_status_callback_without_our_request_id_has_no_correlation(
    adapter: TwilioWebhooks,
) -> None:
    hook = signed(REPORT_PATH, sample("status-delivered.form"))
    adapter.verify(hook)
    (report,) = adapter.status_reports(hook)
    assert report.correlation is None


def test_an_inbound_message_is_verified_and_read(adapter: TwilioWebhooks) -> None:
    hook = signed(INBOUND_PATH, sample("inbound-message.form"))
    adapter.verify(hook)
    assert adapter.received_messages(hook) == [
        ReceivedSms(
            message_id="SM0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7",
            customer="+14255550199",
            our_number="+12065550100",
            text="Yes please, 5pm works",
        )
    ]
    assert adapter.acknowledge(hook).body.endswith("<Response/>")


def _forgeries() -> list[tuple[str, Webhook, type[Exception]]]:
    good = signed(REPORT_PATH, sample("status-delivered.form"), query=f"rid={RID}")
    body = good.body
    return [
        ("no signature", Webhook("POST", good.url, {}, body), Unauthorized),
        (
            "another account's token",
            signed(REPORT_PATH, body, query=f"rid={RID}", token="f" * 32),
            Forbidden,
        ),
        (
            "status changed",
            Webhook("POST", good.url, good.headers, body.replace(b"=delivered", b"=failed")),
            Forbidden,
        ),
        (
            "another request id",
            Webhook("POST", good.url.replace(RID, "someone-elses"), good.headers, body),
            Forbidden,
        ),
        (
            "another route",
            Webhook("POST", good.url.replace(REPORT_PATH, INBOUND_PATH), good.headers, body),
            Forbidden,
        ),
        (
            "not UTF-8",
            Webhook("POST", good.url, good.headers, body + b"&x=\xff"),
            Forbidden,
        ),
    ]


@pytest.mark.parametrize(
    ("hook", "error"),
    [pytest.param(hook, error, id=name) for name, hook, error in _forgeries()],
)
def test_forged_calls_are_refused(
    adapter: TwilioWebhooks, hook: Webhook, error: type[Exception]
) -> None:
    with pytest.raises(error):
        adapter.verify(hook)


def test_a_genuine_call_without_the_message_sid_is_a_bad_request(
    adapter: TwilioWebhooks,
) -> None:
    hook = signed(REPORT_PATH, b"MessageStatus=delivered", query=f"rid={RID}")
    adapter.verify(hook)
    with pytest.raises(BadRequest, match="MessageSid"):
        adapter.status_reports(hook)
