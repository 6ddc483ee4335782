"""Twilio's webhooks as a test sends them: signed status callbacks and inbound messages.

Shared by the webhook and forwarding tests: every call is signed with twilio-python's
``RequestValidator`` (the oracle of ``X-Twilio-Signature``) and reaches the app as an
``azure.functions.HttpRequest`` through the ``call`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import azure.functions as func
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from channel.providers.twilio import callback_tag
from tests.conftest import Call, answer_json
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    TWILIO_SID,
    TWILIO_TOKEN,
    payload,
)
from tests.fakes import ORGANIZATION_ID, FakeTwilio

PUBLIC_URL = "https://sms.contoso.example"
REPORT_URL = f"{PUBLIC_URL}/api/delivery-report/twilio"
INBOUND_URL = f"{PUBLIC_URL}/api/inbound/twilio"
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
FORM = "application/x-www-form-urlencoded"
RID = payload()["RequestId"]
FINALS = {
    "delivered": "Delivered",
    "read": "Delivered",
    "undelivered": "NotDelivered",
    "failed": "NotDelivered",
    "canceled": "NotDelivered",
}
INTERMEDIATES = ["queued", "accepted", "scheduled", "sending", "sent"]

Form = list[tuple[str, str]]


def sign(url: str, form: Form, token: str = TWILIO_TOKEN) -> str:
    """The X-Twilio-Signature twilio-python computes for ``url`` and ``form``."""
    signature: str = RequestValidator(token).compute_signature(url, MultiDict(form))
    return signature


def sid(n: int) -> str:
    """The n-th message sid the fake Twilio hands out."""
    return f"SM{n:032x}"


@dataclass(frozen=True)
class Sent:
    """A message sent through outbound: its RequestId, Twilio sid and StatusCallback URL."""

    rid: str
    sid: str
    callback: str


def send(call: Call, twilio: FakeTwilio, rid: str = RID, **overrides: Any) -> Sent:
    """Send one message through ``outbound`` and read what Twilio was given."""
    response = call("outbound", payload(RequestId=rid, **overrides))
    assert response.status_code == 200, response.get_body()
    answer = answer_json(response)
    assert answer["Status"] == "Sent"
    callback = twilio.posts()[-1].form["StatusCallback"]
    assert callback.startswith(REPORT_URL + "?")
    query = parse_qs(urlsplit(callback).query)
    sent_from = overrides.get("From", SENDER)
    definition = overrides.get("ChannelDefinitionId", DEFINITION_ID)
    assert query == {
        "rid": [rid],
        "def": [definition],
        "from": [sent_from],
        "tag": [callback_tag(TWILIO_TOKEN.encode(), rid, definition, sent_from)],
    }
    return Sent(rid, answer["MessageId"], callback)


def status_form(message_sid: str, status: str) -> Form:
    """A status callback's form as Twilio posts it."""
    form = [
        ("ApiVersion", "2010-04-01"),
        ("AccountSid", TWILIO_SID),
        ("From", SENDER_E164),
        ("MessageSid", message_sid),
        ("MessageStatus", status),
        ("SmsSid", message_sid),
        ("SmsStatus", status),
        ("To", RECIPIENT),
    ]
    if status in ("undelivered", "failed"):
        form.append(("ErrorCode", "30003"))
    return form


def inbound_form(message_sid: str, body: str, customer: str = RECIPIENT, **extra: str) -> Form:
    """An inbound message's form as Twilio posts it."""
    return [
        ("ToCountry", "US"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("SmsSid", message_sid),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", SENDER_E164),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", TWILIO_SID),
        ("From", customer),
        ("ApiVersion", "2010-04-01"),
        *extra.items(),
    ]


def webhook(
    call: Call,
    url: str,
    body: Form | bytes,
    *,
    signature: str | None,
    content_type: str = FORM,
) -> func.HttpResponse:
    """POST ``body`` to the route of ``url`` (its path and raw query; the host is the app's)."""
    parts = urlsplit(url)
    route = parts.path.removeprefix("/api/")
    name = "inbound" if route.startswith("inbound/") else "delivery_report"
    headers = {"content-type": content_type}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    raw = body if isinstance(body, bytes) else urlencode(body).encode("utf-8")
    return call(
        name,
        raw,
        path=f"{route}?{parts.query}" if parts.query else route,
        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        route_params={"provider": route.split("/", 1)[1]},
        headers=headers,
    )


def report(call: Call, sent: Sent, status: str) -> func.HttpResponse:
    """Twilio's signed status callback ``status`` for ``sent``."""
    form = status_form(sent.sid, status)
    return webhook(call, sent.callback, form, signature=sign(sent.callback, form))


def reply(call: Call, form: Form) -> func.HttpResponse:
    """Twilio's signed inbound call with ``form``."""
    return webhook(call, INBOUND_URL, form, signature=sign(INBOUND_URL, form))


def assert_acknowledged(response: func.HttpResponse) -> None:
    """200 with the empty TwiML answer Twilio wants."""
    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "text/xml"
    assert response.get_body().decode() == TWIML


def notification(sent: Sent, status: str, definition: str = DEFINITION_ID) -> dict[str, str]:
    """The exact notificationPayLoad Dataverse must get for ``sent``."""
    return {
        "ChannelDefinitionId": definition,
        "RequestId": sent.rid,
        "MessageId": sent.sid,
        "From": SENDER,
        "OrganizationId": ORGANIZATION_ID,
        "Status": status,
    }


def ledger_rows() -> list[tuple[str, str, int]]:
    """Every record of the embedded ledger, as stored."""
    with contextlib.closing(sqlite3.connect(os.environ["CHANNEL_LEDGER_PATH"])) as db:
        rows: list[tuple[str, str, int]] = db.execute(
            "SELECT key, data, version FROM records ORDER BY key"
        ).fetchall()
    return rows


def inbound_payload(
    text: str = REPLY_TEXT, to: str = SENDER_E164, definition: str = DEFINITION_ID
) -> dict[str, Any]:
    """The exact inboundPayLoad Dataverse must get for a reply from RECIPIENT."""
    return {
        "ChannelDefinitionId": definition,
        "To": to,
        "From": RECIPIENT,
        "OrganizationId": ORGANIZATION_ID,
        "Message": {"text": text},
    }
