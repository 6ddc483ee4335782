"""Acceptance tests of Twilio's webhooks: delivery reports and inbound replies into Dataverse.

Every call is signed with twilio-python's ``RequestValidator`` (the oracle of
``X-Twilio-Signature``), reaches the app as an ``azure.functions.HttpRequest``, and the
real azure-identity gets its tokens from the fake identity endpoint; the fake Dataverse
checks each call's token, headers and body shape and lists breaches in ``rejected``.
Messages are first sent through ``outbound`` so the ledger holds real RequestIds and
the callback URLs are the ones Twilio was given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest
from twilio.request_validator import RequestValidator
from werkzeug import Response
from werkzeug.datastructures import MultiDict

from channel.drafts import Notification
from channel.ledger.outbox import Marker, OutboxItem
from channel.providers.twilio import TwilioWebhooks
from channel.runtime import get_runtime
from tests.conftest import Call, Configure, answer_json
from tests.data import (
    DEFINITION_ID,
    OTHER_RECIPIENT,
    REPLY_TEXT,
    SENDER,
    TWILIO_TOKEN,
    payload,
)
from tests.fakes import FakeDataverse, FakeIdentity, FakeTwilio, hold_posts
from tests.twilio_hooks import (
    FINALS,
    FORM,
    INBOUND,
    INBOUND_URL,
    INTERMEDIATES,
    NOTIFY,
    PUBLIC_URL,
    REPORT_URL,
    RID,
    Form,
    Sent,
    assert_acknowledged,
    inbound_form,
    inbound_payload,
    ledger_rows,
    notification,
    reply,
    report,
    send,
    sid,
    sign,
    status_form,
    webhook,
)

# The helpers (signing, sending, forms, expected payloads) are in tests/twilio_hooks.py.
OTHER_DEFINITION_ID = "3c9a7e1d-5b2f-4a8e-9d61-0f2b4c6e8a10"
Functions = dict[str, Callable[[func.HttpRequest], func.HttpResponse]]


@pytest.fixture
def wired(call: Call, twilio: FakeTwilio, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    """Twilio accepts every message; Dataverse is reached with managed identity.

    Every test that uses it ends with no contract breach seen by the fake Dataverse.
    """
    twilio.accept()
    yield dataverse
    assert dataverse.rejected == []


# --- 1. delivery reports -------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), sorted(FINALS.items()))
def test_final_status_is_one_exact_notification(
    call: Call,
    twilio: FakeTwilio,
    wired: FakeDataverse,
    identity: FakeIdentity,
    *,
    status: str,
    expected: str,
) -> None:
    sent = send(call, twilio)
    assert sent.sid == sid(1)
    assert_acknowledged(report(call, sent, status))
    assert wired.calls == [(NOTIFY, notification(sent, expected))]
    assert identity.tokens == 1
    assert wired.whoami == 1


def test_intermediate_statuses_are_acknowledged_without_a_call(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    sent = send(call, twilio)
    for status in [*INTERMEDIATES, "receiving", "some-new-status"]:
        assert_acknowledged(report(call, sent, status))
    assert wired.calls == []
    assert identity.tokens == 0
    assert wired.whoami == 0
    # The message is still open: its final status is the one reported.
    assert_acknowledged(report(call, sent, "undelivered"))
    assert wired.calls == [(NOTIFY, notification(sent, "NotDelivered"))]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"{REPORT_URL}?rid=never-sent-by-this-app", id="unknown-rid"),
        pytest.param(REPORT_URL, id="no-rid"),
        pytest.param(f"{REPORT_URL}?rid=", id="empty-rid"),
    ],
)
def test_report_of_a_message_we_never_sent_is_acknowledged_without_a_call(
    call: Call,
    twilio: FakeTwilio,
    wired: FakeDataverse,
    identity: FakeIdentity,
    *,
    caplog: pytest.LogCaptureFixture,
    url: str,
) -> None:
    send(call, twilio)  # a message of ours exists; the report is about another one
    before = ledger_rows()
    form = status_form(sid(99), "delivered")
    response = webhook(call, url, form, signature=sign(url, form))
    assert_acknowledged(response)
    assert wired.calls == []
    assert identity.tokens == 0
    assert wired.whoami == 0
    assert ledger_rows() == before
    assert any("not a message this app sent" in r.getMessage() for r in caplog.records)


# --- 2. signatures -------------------------------------------------------------------


def with_port(url: str) -> str:
    return url.replace(PUBLIC_URL, PUBLIC_URL + ":443", 1)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("plain", id="plain"),
        pytest.param("port-443", id="port-443"),
        pytest.param("repeated-keys", id="repeated-keys"),
    ],
)
def test_signatures_of_twilio_are_accepted(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, variant: str
) -> None:
    sent = send(call, twilio)
    form = status_form(sent.sid, "delivered")
    signed_url = sent.callback
    if variant == "port-443":
        signed_url = with_port(sent.callback)
    if variant == "repeated-keys":
        # Twilio signs each value of a repeated name, de-duplicated and sorted.
        form += [("Tag", "b"), ("Tag", "a"), ("Tag", "b"), ("Empty", "")]
    signature = sign(signed_url, form)
    assert RequestValidator(TWILIO_TOKEN).validate(sent.callback, MultiDict(form), signature)
    assert_acknowledged(webhook(call, sent.callback, form, signature=signature))
    assert wired.calls == [(NOTIFY, notification(sent, "Delivered"))]


def test_json_body_signed_with_body_sha256_passes_the_signature_check(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse
) -> None:
    sent = send(call, twilio)
    body = json.dumps({"MessageSid": sent.sid, "MessageStatus": "delivered"}).encode()
    url = f"{sent.callback}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = sign(url, [])  # the signature covers the URL alone
    assert RequestValidator(TWILIO_TOKEN).validate(url, body.decode(), signature)
    response = webhook(call, url, body, signature=signature, content_type="application/json")
    # Verified (Twilio's Messaging callbacks are form posts: the app does not read this one).
    assert response.status_code not in (401, 403), response.get_body()
    # The same URL and signature with another body: the hash no longer matches.
    other = body.replace(b"delivered", b"failed")
    response = webhook(call, url, other, signature=signature, content_type="application/json")
    assert response.status_code == 403
    assert wired.calls == []


def _delivered(a: Sent) -> Form:
    return status_form(a.sid, "delivered")


Forgery = Callable[[Sent, Sent], tuple[str, Form | bytes, str | None]]
JSON_BODY = b'{"MessageSid": "SM1", "MessageStatus": "delivered"}'
FORGERIES: dict[str, Forgery] = {
    "unsigned": lambda a, b: (a.callback, _delivered(a), None),
    "empty-header": lambda a, b: (a.callback, _delivered(a), ""),
    "wrong-token": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback, _delivered(a), token="not-the-auth-token"),
    ),
    "parameter-changed": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback, status_form(a.sid, "sent")),
    ),
    "value-prepended": lambda a, b: (
        a.callback,
        [("MessageStatus", "delivered"), *status_form(a.sid, "sent")],
        sign(a.callback, status_form(a.sid, "sent")),
    ),
    "parameter-added": lambda a, b: (
        a.callback,
        [*_delivered(a), ("ErrorCode", "30003")],
        sign(a.callback, _delivered(a)),
    ),
    "parameter-removed": lambda a, b: (
        a.callback,
        [field for field in _delivered(a) if field[0] != "To"],
        sign(a.callback, _delivered(a)),
    ),
    "path-changed": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback.replace("/delivery-report/", "/inbound/"), _delivered(a)),
    ),
    "query-changed": lambda a, b: (b.callback, _delivered(a), sign(a.callback, _delivered(a))),
    "garbage-header": lambda a, b: (a.callback, _delivered(a), "garbage!not-base64-é"),
    "truncated-header": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback, _delivered(a))[:-5],
    ),
    "other-host": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback.replace("sms.contoso.example", "attacker.example"), _delivered(a)),
    ),
    "http-scheme": lambda a, b: (
        a.callback,
        _delivered(a),
        sign(a.callback.replace("https://", "http://"), _delivered(a)),
    ),
    "not-utf8-body": lambda a, b: (
        a.callback,
        b"MessageSid=SM1&MessageStatus=delivered&To=\xff\xfe",
        sign(a.callback, _delivered(a)),
    ),
    "json-body-swapped": lambda a, b: (
        f"{a.callback}&bodySHA256={hashlib.sha256(b'{}').hexdigest()}",
        JSON_BODY,
        sign(f"{a.callback}&bodySHA256={hashlib.sha256(b'{}').hexdigest()}", []),
    ),
    "non-hex-body-hash": lambda a, b: (
        f"{a.callback}&bodySHA256=%C3%A9",
        JSON_BODY,
        sign(f"{a.callback}&bodySHA256=%C3%A9", []),
    ),
}


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_delivery_reports_change_nothing(
    call: Call,
    twilio: FakeTwilio,
    wired: FakeDataverse,
    identity: FakeIdentity,
    forgery: Forgery,
) -> None:
    target = send(call, twilio)
    other = send(call, twilio, rid="1b6f0d2e-7c3a-4e59-8b12-6a0c9e4d3f21")
    posts = len(twilio.posts())
    before = ledger_rows()

    url, body, signature = forgery(target, other)
    content_type = "application/json" if b"bodySHA256" in url.encode() else FORM
    response = webhook(call, url, body, signature=signature, content_type=content_type)

    allowed = {401, 403} if not signature else {403}
    assert response.status_code in allowed, response.get_body()
    assert response.mimetype == "application/problem+json"
    assert wired.calls == []
    assert wired.whoami == 0
    assert identity.tokens == 0
    assert identity.requests == []
    assert len(twilio.posts()) == posts
    assert ledger_rows() == before

    # The genuine callback still goes through: the refusals above were the signature's.
    assert_acknowledged(report(call, target, "delivered"))
    assert wired.payloads(NOTIFY) == [notification(target, "Delivered")]


def test_host_of_the_request_does_not_matter(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, functions: Functions
) -> None:
    sent = send(call, twilio)
    form = status_form(sent.sid, "delivered")
    parts = urlsplit(sent.callback)
    evil = f"http://evil.example{parts.path}?{parts.query}"

    def post(signature: str) -> func.HttpResponse:
        request = func.HttpRequest(
            method="POST",
            url=evil,
            headers={
                "host": "evil.example",
                "x-forwarded-host": "evil.example",
                "x-forwarded-proto": "http",
                "content-type": FORM,
                "x-twilio-signature": signature,
            },
            params=dict(parse_qsl(parts.query)),
            route_params={"provider": "twilio"},
            body=urlencode(form).encode(),
        )
        return functions["delivery_report"](request)

    for own_host in (evil, evil.replace("http://", "https://")):
        assert post(sign(own_host, form)).status_code == 403
    assert wired.calls == []
    assert_acknowledged(post(sign(sent.callback, form)))
    assert wired.calls == [(NOTIFY, notification(sent, "Delivered"))]


# --- 3. exactly once, whatever the order ----------------------------------------------


def callbacks(
    rng: random.Random, messages: list[Sent]
) -> tuple[list[tuple[Sent, str]], dict[str, str]]:
    """Each message's callbacks (some intermediate, one or two final) shuffled, each sent
    twice, interleaved across messages; and the Status each message must be reported with
    (its first final status in that order)."""
    streams: dict[str, list[str]] = {}
    for message in messages:
        statuses = rng.sample(INTERMEDIATES, rng.randint(0, 3))
        statuses += rng.sample(sorted(FINALS), rng.randint(1, 2))
        stream = statuses * 2
        rng.shuffle(stream)
        streams[message.rid] = stream
    turns = [message for message in messages for _ in streams[message.rid]]
    rng.shuffle(turns)  # a random merge that keeps each message's own order
    taken: Counter[str] = Counter()
    events = []
    for message in turns:
        events.append((message, streams[message.rid][taken[message.rid]]))
        taken[message.rid] += 1
    expected = {
        rid: FINALS[next(status for status in stream if status in FINALS)]
        for rid, stream in streams.items()
    }
    return events, expected


def run_callbacks(call: Call, events: list[tuple[Sent, str]]) -> None:
    for message, status in events:
        assert_acknowledged(report(call, message, status))


def assert_notified_once(
    dataverse: FakeDataverse, messages: list[Sent], expected: dict[str, str]
) -> None:
    by_rid: dict[str, list[dict[str, Any]]] = {}
    for sent in dataverse.payloads(NOTIFY):
        by_rid.setdefault(sent["RequestId"], []).append(sent)
    for message in messages:
        assert by_rid.get(message.rid) == [notification(message, expected[message.rid])]


def test_shuffled_duplicated_callbacks_notify_exactly_once(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    rng = random.Random(20240611)  # noqa: S311 - a reproducible order, not a secret
    messages = [
        send(call, twilio, rid=f"req-{n:03d}-{rng.getrandbits(32):08x}") for n in range(200)
    ]
    assert len({message.sid for message in messages}) == 200

    # The first 120 messages' callbacks in one interleaved stream ...
    events, expected = callbacks(rng, messages[:120])
    run_callbacks(call, events)
    # ... the other 80 in four streams run at once (each message within one stream).
    streams = []
    for group in range(4):
        group_events, group_expected = callbacks(rng, messages[120 + group :: 4])
        streams.append(group_events)
        expected |= group_expected
    with ThreadPoolExecutor(max_workers=4) as pool:
        for done in [pool.submit(run_callbacks, call, stream) for stream in streams]:
            done.result()

    assert len(wired.calls) == 200
    assert_notified_once(wired, messages, expected)
    assert identity.tokens == 1
    assert wired.whoami == 1


def test_concurrent_final_callbacks_of_one_message_notify_once(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse
) -> None:
    messages = [send(call, twilio, rid=f"race-{n}") for n in range(10)]
    statuses = ["delivered", "failed", "delivered", "undelivered"] * 2
    for message in messages:
        start = threading.Barrier(len(statuses))

        def callback(
            status: str, message: Sent = message, start: threading.Barrier = start
        ) -> func.HttpResponse:
            start.wait(5)
            return report(call, message, status)

        with ThreadPoolExecutor(max_workers=len(statuses)) as pool:
            for response in pool.map(callback, statuses):
                assert_acknowledged(response)
    assert len(wired.calls) == 10
    for message in messages:
        (sent,) = [p for p in wired.payloads(NOTIFY) if p["RequestId"] == message.rid]
        # Whichever arrived first stands, and it is what the outbox kept.
        kept = get_runtime().outbox.get(f"notification:{message.rid}")
        assert isinstance(kept, Marker)
        assert kept.state == "forwarded"
        assert kept.payload is not None
        assert sent == notification(message, kept.payload["Status"])


@pytest.mark.parametrize("seed", range(25))
def test_small_batches_in_any_order_are_reported_once_with_their_first_final_status(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 - a reproducible order, not a secret
    messages = [send(call, twilio, rid=f"batch-{seed}-{n}") for n in range(rng.randint(1, 4))]
    events, expected = callbacks(rng, messages)
    run_callbacks(call, events)
    assert len(wired.calls) == len(messages)
    assert_notified_once(wired, messages, expected)


# --- 4. a report before the outbound answer --------------------------------------------


def test_report_before_the_outbound_answer_is_correlated(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse
) -> None:
    held = hold_posts(twilio, 10.0)
    answers: list[func.HttpResponse] = []
    outbound = threading.Thread(target=lambda: answers.append(call("outbound", payload())))
    outbound.start()
    try:
        assert held.arrived.wait(5)
        ((callback,),) = [form["StatusCallback"] for form in held.forms]
        in_flight = Sent(RID, sid(1), callback)  # the sid Twilio is about to answer with
        assert_acknowledged(report(call, in_flight, "delivered"))
        assert dataverse.calls == [(NOTIFY, notification(in_flight, "Delivered"))]
        assert answers == []  # the outbound call was still waiting for Twilio
    finally:
        held.release.set()
        outbound.join(10)
    (answer,) = answers
    assert answer.status_code == 200
    assert answer_json(answer) == {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": sid(1),
        "RequestId": RID,
        "Status": "Sent",
    }
    assert len(dataverse.calls) == 1
    assert len(twilio.posts()) == 1
    assert dataverse.rejected == []


# --- 5. an ambiguous send settled by a callback ----------------------------------------


def test_ambiguous_send_is_settled_by_a_status_callback(
    call: Call, twilio: FakeTwilio, dataverse: FakeDataverse
) -> None:
    twilio.answer(500, {"code": 20500, "message": "Internal Server Error", "status": 500})
    twilio.accept()
    first = call("outbound", payload())
    assert first.status_code == 503
    assert answer_json(first)["type"].endswith(":send-ambiguous")
    (post,) = twilio.posts()
    created = Sent(RID, "SM" + "5e" * 16, post.form["StatusCallback"])

    assert_acknowledged(report(call, created, "sent"))
    assert dataverse.calls == []

    retry = call("outbound", payload())
    assert retry.status_code == 200
    assert answer_json(retry) == {
        "ChannelDefinitionId": DEFINITION_ID,
        "MessageId": created.sid,
        "RequestId": RID,
        "Status": "Sent",
    }
    assert len(twilio.posts()) == 1

    assert_acknowledged(report(call, created, "delivered"))
    assert dataverse.calls == [(NOTIFY, notification(created, "Delivered"))]
    assert dataverse.rejected == []


# --- 6. Dataverse outages --------------------------------------------------------------


def test_throttled_dataverse_is_waited_out(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse
) -> None:
    sent = send(call, twilio)
    wired.script.append(Response(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    assert_acknowledged(report(call, sent, "delivered"))
    assert time.monotonic() - started >= 0.95
    assert wired.script == []
    assert wired.calls == [(NOTIFY, notification(sent, "Delivered"))]


def test_dataverse_down_answers_5xx_keeps_the_report_and_a_retry_notifies_once(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="3")
    sent = send(call, twilio)
    wired.script.extend(Response(status=503) for _ in range(20))
    response = report(call, sent, "delivered")
    assert 500 <= response.status_code < 600
    assert int(response.headers["Retry-After"]) >= 1
    assert 2 <= 20 - len(wired.script) <= 5  # retried with backoff, within the budget
    assert wired.calls == []
    kept = get_runtime().outbox.get(f"notification:{sent.rid}")
    assert isinstance(kept, OutboxItem)
    assert kept.state == "pending"
    assert isinstance(kept.payload, Notification)
    assert kept.payload.status == "Delivered"

    wired.script.clear()  # Dataverse is back; Twilio retries the same callback
    assert_acknowledged(report(call, sent, "delivered"))
    assert wired.calls == [(NOTIFY, notification(sent, "Delivered"))]
    assert_acknowledged(report(call, sent, "delivered"))
    assert_acknowledged(report(call, sent, "failed"))
    assert len(wired.calls) == 1
    kept = get_runtime().outbox.get(f"notification:{sent.rid}")
    assert kept is not None
    assert kept.state == "forwarded"


# --- 7. tokens -------------------------------------------------------------------------


def test_one_token_and_one_whoami_for_many_webhook_calls(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    messages = [send(call, twilio, rid=f"tok-{n}") for n in range(15)]
    # A burst first: eight reports arrive at once while no token is cached yet.
    start = threading.Barrier(8)

    def burst(message: Sent) -> func.HttpResponse:
        start.wait(5)
        return report(call, message, "delivered")

    with ThreadPoolExecutor(max_workers=8) as pool:
        for response in pool.map(burst, messages[:8]):
            assert_acknowledged(response)
    for message in messages[8:]:
        assert_acknowledged(report(call, message, "sent"))
        assert_acknowledged(report(call, message, "delivered"))
    for n in range(5):
        assert_acknowledged(reply(call, inbound_form(f"SM{n:032x}ff", REPLY_TEXT)))
    assert len(wired.payloads(NOTIFY)) == 15
    assert len(wired.payloads(INBOUND)) == 5
    assert identity.tokens == 1
    assert wired.whoami == 1


# --- 8. inbound ------------------------------------------------------------------------

INBOUND_SID = "SM" + "1b" * 16


def test_inbound_reply_is_one_exact_call(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    assert_acknowledged(reply(call, inbound_form(INBOUND_SID, REPLY_TEXT)))
    assert wired.calls == [(INBOUND, inbound_payload())]
    for _ in range(4):  # Twilio's retries of the same message
        assert_acknowledged(reply(call, inbound_form(INBOUND_SID, REPLY_TEXT)))
    assert len(wired.calls) == 1


def test_inbound_to_a_number_we_sent_from_uses_its_dataverse_form_and_channel(
    call: Call, twilio: FakeTwilio, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)  # the learned channel wins over it
    send(call, twilio, ChannelDefinitionId=OTHER_DEFINITION_ID, To=OTHER_RECIPIENT)
    assert_acknowledged(reply(call, inbound_form(INBOUND_SID, REPLY_TEXT)))
    assert wired.calls == [(INBOUND, inbound_payload(to=SENDER, definition=OTHER_DEFINITION_ID))]


def test_inbound_without_any_channel_definition_is_503_kept_and_no_call(
    call: Call, wired: FakeDataverse
) -> None:
    """Kept for the timer (tests/test_forwarding.py forwards it once the channel is known)."""
    response = reply(call, inbound_form(INBOUND_SID, REPLY_TEXT))
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "CHANNEL_DEFINITION_ID" in answer_json(response)["detail"]
    assert wired.calls == []
    kept = get_runtime().outbox.get(f"inbound:twilio:{INBOUND_SID}")
    assert isinstance(kept, OutboxItem)
    assert (kept.state, kept.attempts, kept.waiting_for) == (
        "pending",
        0,
        "channel definition",
    )


def test_a_reply_longer_than_twilio_takes_is_cut_to_its_maximum(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    body = REPLY_TEXT + " " + "x" * 40_000
    assert_acknowledged(reply(call, inbound_form(INBOUND_SID, body)))
    assert wired.calls == [(INBOUND, inbound_payload(text=body[:1600]))]


def test_a_reply_from_a_sender_no_number_can_be_is_400_and_kept_nowhere(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    response = reply(call, inbound_form(INBOUND_SID, REPLY_TEXT, customer="1" * 40_000))
    assert response.status_code == 400
    assert answer_json(response)["field"] == "From"
    assert wired.calls == []
    assert get_runtime().outbox.get(f"inbound:twilio:{INBOUND_SID}") is None


@pytest.mark.parametrize("keyword", ["STOP", "START", "HELP", "stop"])
def test_opt_out_keywords_are_forwarded_like_any_reply(
    call: Call, wired: FakeDataverse, configure: Configure, keyword: str
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    form = inbound_form(INBOUND_SID, keyword, OptOutType=keyword.upper())
    assert_acknowledged(reply(call, form))
    assert wired.calls == [(INBOUND, inbound_payload(text=keyword))]


INBOUND_FORGERIES: dict[str, Callable[[Form], tuple[str, Form, str | None]]] = {
    "unsigned": lambda form: (INBOUND_URL, form, None),
    "wrong-token": lambda form: (INBOUND_URL, form, sign(INBOUND_URL, form, token="nope")),
    "body-changed": lambda form: (
        INBOUND_URL,
        [(k, "Send me your password" if k == "Body" else v) for k, v in form],
        sign(INBOUND_URL, form),
    ),
    "sender-changed": lambda form: (
        INBOUND_URL,
        [(k, OTHER_RECIPIENT if k == "From" else v) for k, v in form],
        sign(INBOUND_URL, form),
    ),
    "path-changed": lambda form: (INBOUND_URL, form, sign(REPORT_URL, form)),
    "other-host": lambda form: (
        INBOUND_URL,
        form,
        sign(INBOUND_URL.replace("sms.contoso.example", "attacker.example"), form),
    ),
}


@pytest.mark.parametrize("forgery", INBOUND_FORGERIES.values(), ids=INBOUND_FORGERIES.keys())
def test_forged_inbound_changes_nothing(
    call: Call,
    twilio: FakeTwilio,
    wired: FakeDataverse,
    identity: FakeIdentity,
    *,
    configure: Configure,
    forgery: Callable[[Form], tuple[str, Form, str | None]],
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    send(call, twilio)  # the ledger exists and knows our number
    before = ledger_rows()
    form = inbound_form(INBOUND_SID, REPLY_TEXT)
    url, posted, signature = forgery(form)
    response = webhook(call, url, posted, signature=signature)
    assert response.status_code in ({401, 403} if signature is None else {403})
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before

    assert_acknowledged(reply(call, form))
    assert wired.calls == [(INBOUND, inbound_payload(to=SENDER))]


# --- 9. dev mode -----------------------------------------------------------------------


def test_dev_mode_logs_reports_and_replies_masked(
    call: Call, twilio: FakeTwilio, configure: Configure, caplog: pytest.LogCaptureFixture
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    twilio.accept()
    sent = send(call, twilio)
    assert_acknowledged(report(call, sent, "delivered"))
    assert_acknowledged(reply(call, inbound_form(INBOUND_SID, REPLY_TEXT)))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert f"dev mode: {NOTIFY} for request {RID} ({sent.sid} from 12*****0100): Delivered" in lines
    assert f"dev mode: {INBOUND} from +1******0199 to 12*****0100, 1 message part(s)" in lines


# --- body size -----------------------------------------------------------------------------


def test_a_body_over_what_twilio_sends_is_413_unread_even_when_signed(
    call: Call, wired: FakeDataverse, configure: Configure
) -> None:
    """Twilio's forms are small: a larger body is refused before it is parsed or signed."""
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    assert TwilioWebhooks.max_body_bytes == 64 * 1024  # Event Grid's 1 MiB is for ACS only
    form = inbound_form(INBOUND_SID, REPLY_TEXT, AddOns="x" * (100 * 1024))
    signed = webhook(call, INBOUND_URL, form, signature=sign(INBOUND_URL, form))
    assert signed.status_code == 413
    forged = webhook(call, INBOUND_URL, b"x" * (1024 * 1024), signature="forged")
    assert forged.status_code == 413
    assert wired.calls == []
    assert get_runtime().outbox.get(f"inbound:twilio:{INBOUND_SID}") is None
    # The same reply at a Twilio size goes through.
    small = inbound_form(INBOUND_SID, REPLY_TEXT)
    assert_acknowledged(webhook(call, INBOUND_URL, small, signature=sign(INBOUND_URL, small)))
    assert wired.calls == [(INBOUND, inbound_payload())]
