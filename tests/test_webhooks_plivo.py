"""Plivo's signed form webhooks: the adapter on recorded samples, then end to end.

Samples under ``tests/samples/plivo`` are form bodies with the fields of Plivo's message
status callback and inbound message request. Every signature a test sends is computed
and confirmed by the official ``plivo`` SDK (tests/fake_plivo.py); the app must accept
exactly what the SDK's validators accept, V3 and V2.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plivo.utils import validate_signature
from plivo.utils.signature_v3 import construct_post_url, validate_v3_signature
from pytest_httpserver import HTTPServer
from werkzeug import Response

from channel.budget import Budget
from channel.errors import BadRequest, Forbidden, Unauthorized
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.messages import MessageLedger
from channel.ledger.retention import sweep
from channel.providers.base import DeliveryState, Nonce, ReceivedSms, StatusReport, Webhook
from channel.providers.plivo import PlivoWebhooks, v3_signed_url
from channel.runtime import get_runtime, reset_runtime
from tests.azurite import Azurite
from tests.conftest import Call, Configure, answer_json
from tests.conftest import send as send_one
from tests.data import (
    DEFINITION_ID,
    RECIPIENT,
    REPLY_TEXT,
    SENDER,
    SENDER_E164,
    payload,
)
from tests.fake_plivo import (
    PLIVO_AUTH_ID,
    PLIVO_AUTH_TOKEN,
    FakePlivo,
    Form,
    encoded,
    nonce,
    params_of,
    sign_v2,
    sign_v3,
)
from tests.fakes import ORGANIZATION_ID, FakeDataverse, FakeIdentity
from tests.test_webhooks_acs import ledger_rows

SAMPLES = Path(__file__).parent / "samples" / "plivo"
RID = payload()["RequestId"]
PUBLIC_URL = "https://sms.contoso.example"
REPORT_URL = f"{PUBLIC_URL}/api/delivery-report/plivo"
INBOUND_URL = f"{PUBLIC_URL}/api/inbound/plivo"
NOTIFY = "msdyn_D365ChannelsNotification"
INBOUND = "msdyn_D365ChannelsInbound"
XML = '<?xml version="1.0" encoding="utf-8"?><Response/>'
SAMPLE_ID = "0936ec98-7c4c-11e7-9e7d-000000000001"
INBOUND_ID = "5b40a428-bfc7-4daf-9d06-726c558bf3b8"


def sample(name: str) -> Form:
    """A recorded form, as its fields in order."""
    return parse_qsl((SAMPLES / name).read_text().strip(), keep_blank_values=True)


def status_form(message_uuid: str, status: str, error_code: str = "") -> Form:
    """The delivered sample for another message, status or ErrorCode."""
    changes = {"MessageUUID": message_uuid, "Status": status, "ErrorCode": error_code}
    return [(k, changes.get(k, v)) for k, v in sample("status-delivered.form")]


def inbound_form(message_uuid: str = INBOUND_ID, text: str = REPLY_TEXT) -> Form:
    """The inbound sample with another MessageUUID or text."""
    changes = {"MessageUUID": message_uuid, "Text": text}
    return [(k, changes.get(k, v)) for k, v in sample("inbound-sms.form")]


def report_url(rid: str = RID) -> str:
    """The status URL our send gave Plivo for ``rid``."""
    return f"{REPORT_URL}?{urlencode({'rid': rid})}"


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def hook_of(url: str, form: Form | bytes, headers: dict[str, str] | None = None) -> Webhook:
    """The call as the app sees it: the host is the function host's, not the public one."""
    parts = urlsplit(url)
    local = f"http://localhost:7071{parts.path}" + (f"?{parts.query}" if parts.query else "")
    body = form if isinstance(form, bytes) else encoded(form)
    return Webhook("POST", local, lower(headers or {}), body)


# --- the adapter on recorded samples --------------------------------------------------------

ADAPTER = PlivoWebhooks(auth_token=PLIVO_AUTH_TOKEN, public_url=PUBLIC_URL)


@pytest.mark.parametrize(
    ("name", "state", "detail"),
    [
        ("status-delivered.form", DeliveryState.DELIVERED, "delivered"),
        ("status-failed-opted-out.form", DeliveryState.NOT_DELIVERED, "failed 200"),
        ("status-queued.form", DeliveryState.PENDING, "queued"),
    ],
)
def test_status_samples_are_read(name: str, state: DeliveryState, detail: str) -> None:
    form = sample(name)
    hook = hook_of(report_url(), form, sign_v3(report_url(), form))
    assert ADAPTER.status_reports(hook) == [
        StatusReport(SAMPLE_ID, state, RID, detail, correlated_by_id=True)
    ]


@pytest.mark.parametrize(
    ("status", "error_code", "state"),
    [
        ("delivered", "", DeliveryState.DELIVERED),
        ("DELIVERED", "", DeliveryState.DELIVERED),
        ("undelivered", "50", DeliveryState.NOT_DELIVERED),
        ("failed", "20", DeliveryState.NOT_DELIVERED),
        ("rejected", "30", DeliveryState.NOT_DELIVERED),
        ("undelivered", "200", DeliveryState.NOT_DELIVERED),
        ("sent", "200", DeliveryState.NOT_DELIVERED),  # blocked by the recipient's STOP
        ("queued", "", DeliveryState.PENDING),
        ("sent", "", DeliveryState.PENDING),
        ("read", "", DeliveryState.PENDING),
        ("something_new", "", DeliveryState.PENDING),
    ],
)
def test_status_mapping(status: str, error_code: str, state: DeliveryState) -> None:
    form = status_form("m", status, error_code)
    (report,) = ADAPTER.status_reports(hook_of(report_url(), form, sign_v3(report_url(), form)))
    assert report.state is state


def test_a_v2_signed_status_is_correlated_by_message_uuid_never_by_the_query() -> None:
    """V2 does not cover the query: the RequestId in it may be anyone's."""
    form = sample("status-delivered.form")
    url = report_url("someone-elses-request")
    (report,) = ADAPTER.status_reports(hook_of(url, form, sign_v2(url)))
    assert report.correlation is None
    assert report.correlated_by_id is True
    assert report.message_id == SAMPLE_ID


def test_inbound_sample_is_read_in_e164() -> None:
    form = sample("inbound-sms.form")
    hook = hook_of(INBOUND_URL, form, sign_v3(INBOUND_URL, form))
    assert ADAPTER.received_messages(hook) == [
        ReceivedSms(INBOUND_ID, RECIPIENT, SENDER_E164, REPLY_TEXT)
    ]


@pytest.mark.parametrize("missing", ["MessageUUID", "From", "To"])
def test_inbound_without_a_required_field_is_400_naming_it(missing: str) -> None:
    form = [(k, v) for k, v in sample("inbound-sms.form") if k != missing]
    with pytest.raises(BadRequest) as refused:
        ADAPTER.received_messages(hook_of(INBOUND_URL, form))
    assert refused.value.field == missing


@pytest.mark.parametrize("name", ["status-delivered.form", "inbound-sms.form"])
def test_genuine_v3_signature_is_accepted_by_the_adapter(name: str) -> None:
    form = sample(name)
    url = report_url() if name.startswith("status") else INBOUND_URL
    headers = sign_v3(url, form)  # confirmed by the SDK's validate_v3_signature
    assert ADAPTER.verify(hook_of(url, form, headers)) is None


def test_v3_with_several_signatures_is_accepted_if_one_matches() -> None:
    form = sample("status-delivered.form")
    good = sign_v3(report_url(), form)
    other = sign_v3(
        report_url(), form, token="an-older-token", once=good["X-Plivo-Signature-V3-Nonce"]
    )
    for joined in (
        f"{other['X-Plivo-Signature-V3']},{good['X-Plivo-Signature-V3']}",
        f"{good['X-Plivo-Signature-V3']}, {other['X-Plivo-Signature-V3']}",
    ):
        headers = good | {"X-Plivo-Signature-V3": joined}
        ADAPTER.verify(hook_of(report_url(), form, headers))
        assert validate_v3_signature(
            "POST",
            report_url(),
            good["X-Plivo-Signature-V3-Nonce"],
            PLIVO_AUTH_TOKEN,
            joined.replace(" ", ""),
            params_of(form),
        )


def test_genuine_v2_signature_is_accepted_with_its_nonce_to_be_new() -> None:
    form = sample("status-delivered.form")
    headers = sign_v2(report_url())  # confirmed by the SDK's validate_signature
    assert ADAPTER.verify(hook_of(report_url(), form, headers)) == Nonce(
        headers["X-Plivo-Signature-V2-Nonce"]
    )


def test_v3_and_v2_together_keep_the_v2_nonce_without_needing_it_new() -> None:
    form = sample("status-delivered.form")
    v2 = sign_v2(report_url())
    hook = hook_of(report_url(), form, sign_v3(report_url(), form) | v2)
    assert ADAPTER.verify(hook) == Nonce(v2["X-Plivo-Signature-V2-Nonce"], must_be_new=False)


def test_the_signed_url_is_rebuilt_from_the_public_url_not_the_host() -> None:
    form = sample("status-delivered.form")
    local = f"http://localhost:7071/api/delivery-report/plivo?rid={RID}"
    with pytest.raises(Forbidden):
        ADAPTER.verify(hook_of(report_url(), form, sign_v3(local, form)))
    with pytest.raises(Forbidden):
        ADAPTER.verify(hook_of(report_url(), form, sign_v2(local)))


ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
"""Query names and values: the SDK parses the query as bytes, which takes ASCII only."""


@settings(max_examples=300, deadline=None)
@given(
    query=st.lists(st.tuples(ASCII, ASCII), max_size=4),
    form=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=6),
)
def test_the_v3_signed_string_is_built_as_the_sdk_builds_it(
    query: list[tuple[str, str]], form: Form
) -> None:
    """Whatever the query and form (repeated names, blanks, any text): the SDK's bytes."""
    url = REPORT_URL + (f"?{urlencode(query)}" if query else "")
    expected = construct_post_url(url, params_of(form)).decode("utf-8")
    assert v3_signed_url(url, params_of(form)) == expected


def forgeries(url: str, form: Form) -> dict[str, tuple[dict[str, str], Form | bytes, type]]:
    """Every way a call can fail authentication: headers, body and the error it must raise."""
    good = sign_v3(url, form)
    changed = [(k, "undelivered" if k == "Status" else v) for k, v in form]
    changed = [(k, "No thanks" if k == "Text" else v) for k, v in changed]
    v2 = sign_v2(url)
    return {
        "unsigned": ({}, form, Unauthorized),
        "v3-without-nonce": (
            {"X-Plivo-Signature-V3": good["X-Plivo-Signature-V3"]},
            form,
            Unauthorized,
        ),
        "v2-without-nonce": (
            {"X-Plivo-Signature-V2": v2["X-Plivo-Signature-V2"]},
            form,
            Unauthorized,
        ),
        "v3-wrong-token": (sign_v3(url, form, token="not-our-token"), form, Forbidden),
        "v3-tampered-form": (good, changed, Forbidden),
        "v3-added-field": (good, [*form, ("Extra", "1")], Forbidden),
        "v3-other-nonce": (good | {"X-Plivo-Signature-V3-Nonce": nonce()}, form, Forbidden),
        "v3-several-none-matching": (
            good | {"X-Plivo-Signature-V3": "AAAA,BBBB"},
            form,
            Forbidden,
        ),
        "v3-not-utf8-form": (good, b"Text=%FF&\xff\xfe", Forbidden),
        "v3-wrong-but-v2-right": (
            sign_v3(url, form, token="not-our-token") | v2,
            form,
            Forbidden,
        ),
        "v2-wrong-token": (sign_v2(url, token="not-our-token"), form, Forbidden),
        "v2-other-nonce": (v2 | {"X-Plivo-Signature-V2-Nonce": nonce()}, form, Forbidden),
        "v2-other-path": (sign_v2(f"{PUBLIC_URL}/api/elsewhere"), form, Forbidden),
    }


FORM = sample("status-delivered.form")
FORGERIES = forgeries(report_url(), FORM)


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
def test_forgeries_are_refused_by_the_adapter(
    forgery: tuple[dict[str, str], Form | bytes, type],
) -> None:
    headers, body, error = forgery
    with pytest.raises(error):
        ADAPTER.verify(hook_of(report_url(), body, headers))


def test_a_tampered_query_is_refused_and_the_sdk_agrees() -> None:
    """V3 covers the query: the RequestId in it cannot be swapped for another."""
    headers = sign_v3(report_url(), FORM)
    with pytest.raises(Forbidden):
        ADAPTER.verify(hook_of(report_url("another-request"), FORM, headers))
    assert not validate_v3_signature(
        "POST",
        report_url("another-request"),
        headers["X-Plivo-Signature-V3-Nonce"],
        PLIVO_AUTH_TOKEN,
        headers["X-Plivo-Signature-V3"],
        params_of(FORM),
    )


def test_sdk_agrees_that_the_forged_signatures_are_wrong() -> None:
    for name in ("v3-wrong-token", "v3-tampered-form", "v3-other-nonce"):
        headers, body, _ = FORGERIES[name]
        assert isinstance(body, list)
        assert not validate_v3_signature(
            "POST",
            report_url(),
            headers["X-Plivo-Signature-V3-Nonce"],
            PLIVO_AUTH_TOKEN,
            headers["X-Plivo-Signature-V3"],
            params_of(body),
        ), name
    for name in ("v2-wrong-token", "v2-other-nonce", "v2-other-path"):
        headers, _, _ = FORGERIES[name]
        assert not validate_signature(
            report_url(),
            headers["X-Plivo-Signature-V2-Nonce"],
            headers["X-Plivo-Signature-V2"],
            PLIVO_AUTH_TOKEN,
        ), name


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plivo_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake(configure: Configure, plivo_server: HTTPServer) -> Iterator[FakePlivo]:
    fake = FakePlivo(plivo_server)
    configure(
        CHANNEL_PROVIDER="plivo",
        PLIVO_AUTH_ID=PLIVO_AUTH_ID,
        PLIVO_AUTH_TOKEN=PLIVO_AUTH_TOKEN,
        PLIVO_BASE_URL=fake.base_url,
        CHANNEL_PUBLIC_URL=PUBLIC_URL,
    )
    yield fake
    fake.release.set()
    assert fake.rejected == []
    plivo_server.clear()


@pytest.fixture
def wired(fake: FakePlivo, dataverse: FakeDataverse) -> Iterator[FakeDataverse]:
    yield dataverse
    assert dataverse.rejected == []


def send(call: Call, fake: FakePlivo, rid: str = RID) -> str:
    """Send one message; its MessageUUID (the status URL Plivo was given is checked)."""
    message_id = send_one(call, rid)
    assert fake.posts[-1].json["url"] == report_url(rid)
    return message_id


def webhook(call: Call, url: str, body: Form | bytes, headers: dict[str, str]) -> func.HttpResponse:
    """POST ``body`` to the route of ``url`` (its path and raw query; the host is the app's)."""
    parts = urlsplit(url)
    route = parts.path.removeprefix("/api/")
    return call(
        "inbound" if route.startswith("inbound/") else "delivery_report",
        body if isinstance(body, bytes) else encoded(body),
        path=f"{route}?{parts.query}" if parts.query else route,
        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        route_params={"provider": "plivo"},
        headers={"content-type": "application/x-www-form-urlencoded", **headers},
    )


def v3_status(call: Call, message_id: str, status: str, rid: str = RID) -> func.HttpResponse:
    """Plivo's V3-signed status callback to the URL our send of ``rid`` gave it."""
    form = status_form(message_id, status)
    return webhook(call, report_url(rid), form, sign_v3(report_url(rid), form))


def v2_status(
    call: Call, message_id: str, status: str, rid: str = RID, once: str | None = None
) -> func.HttpResponse:
    """Plivo's V2-signed status callback (no V3 header) to the URL our send gave it."""
    url = report_url(rid)
    return webhook(call, url, status_form(message_id, status), sign_v2(url, once=once))


def assert_acknowledged(response: func.HttpResponse) -> None:
    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "text/xml"
    assert response.get_body().decode() == XML


def notification(message_id: str, state: str, rid: str = RID) -> tuple[str, dict[str, str]]:
    return (
        NOTIFY,
        {
            "ChannelDefinitionId": DEFINITION_ID,
            "RequestId": rid,
            "MessageId": message_id,
            "From": SENDER,
            "OrganizationId": ORGANIZATION_ID,
            "Status": state,
        },
    )


REPLY = (
    INBOUND,
    {
        "ChannelDefinitionId": DEFINITION_ID,
        "To": SENDER,
        "From": RECIPIENT,
        "OrganizationId": ORGANIZATION_ID,
        "Message": {"text": REPLY_TEXT},
    },
)


def test_delivered_status_is_one_exact_notification(
    call: Call, fake: FakePlivo, wired: FakeDataverse, identity: FakeIdentity
) -> None:
    message_id = send(call, fake)
    assert_acknowledged(v3_status(call, message_id, "queued"))
    assert_acknowledged(v3_status(call, message_id, "sent"))
    assert wired.calls == []
    assert_acknowledged(v3_status(call, message_id, "delivered"))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_opted_out_recipient_is_not_delivered(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    message_id = send(call, fake)
    form = status_form(message_id, "failed", "200")
    assert_acknowledged(webhook(call, report_url(), form, sign_v3(report_url(), form)))
    assert wired.calls == [notification(message_id, "NotDelivered")]


def test_v2_status_is_correlated_by_the_message_uuid_recorded_at_send(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    first = send(call, fake, "rid-1")
    second = send(call, fake, "rid-2")
    # The query names rid-2, but V2 does not cover it: the MessageUUID decides.
    assert_acknowledged(v2_status(call, first, "delivered", rid="rid-2"))
    assert wired.calls == [notification(first, "Delivered", "rid-1")]
    assert_acknowledged(v2_status(call, second, "undelivered", rid="rid-2"))
    assert wired.calls[1:] == [notification(second, "NotDelivered", "rid-2")]


def test_routed_to_plivo_beside_another_provider_a_v2_status_finds_its_request(
    call: Call, fake: FakePlivo, wired: FakeDataverse, configure: Configure
) -> None:
    """With CHANNEL_ROUTES, the MessageUUID is recorded for plivo, the provider that sent."""
    configure(CHANNEL_PROVIDER="loopback", CHANNEL_ROUTES=json.dumps({DEFINITION_ID: "plivo"}))
    message_id = send(call, fake)
    assert_acknowledged(v2_status(call, message_id, "delivered", rid="not-ours"))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_a_replayed_v2_nonce_is_refused_whatever_the_body(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    first = send(call, fake, "rid-1")
    second = send(call, fake, "rid-2")
    once = nonce()
    assert_acknowledged(v2_status(call, first, "sent", "rid-1", once=once))
    before = ledger_rows()
    for message_id, status in ((first, "sent"), (first, "undelivered"), (second, "delivered")):
        replay = v2_status(call, message_id, status, "rid-1", once=once)
        assert replay.status_code == 403, replay.get_body()
    assert ledger_rows() == before
    assert wired.calls == []
    assert_acknowledged(v2_status(call, first, "delivered", "rid-1"))  # a new nonce
    assert wired.calls == [notification(first, "Delivered", "rid-1")]


def test_a_v2_nonce_seen_with_v3_cannot_be_reused_with_v2_alone(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    message_id = send(call, fake)
    form = status_form(message_id, "sent")
    both = sign_v3(report_url(), form) | sign_v2(report_url())
    assert_acknowledged(webhook(call, report_url(), form, both))
    assert_acknowledged(webhook(call, report_url(), form, both))  # Plivo's retry: V3 decides
    v2_alone = {k: v for k, v in both.items() if "V2" in k}
    forged = status_form(message_id, "undelivered")
    assert webhook(call, report_url(), forged, v2_alone).status_code == 403
    assert wired.calls == []


def test_one_nonce_in_twenty_concurrent_calls_is_taken_once(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    message_id = send(call, fake)
    once = nonce()
    start = threading.Barrier(20)

    def one(_: int) -> int:
        start.wait()
        status: int = v2_status(call, message_id, "delivered", once=once).status_code
        return status

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(one, range(20)))
    assert sorted(statuses) == [200] + [403] * 19
    assert wired.calls == [notification(message_id, "Delivered")]


def test_status_of_a_message_never_recorded_is_503_when_final_200_otherwise(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    """A V2 status for an id not recorded may come before its send's answer: Plivo retries."""
    send(call, fake)
    unknown = "0936ec98-7c4c-11e7-9e7d-0000000000ff"
    assert v2_status(call, unknown, "delivered").status_code == 503
    assert_acknowledged(v2_status(call, unknown, "sent"))
    assert wired.calls == []


def test_v2_status_before_the_send_is_recorded_is_503_and_then_applied_once(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    fake.slow(10.0)  # Plivo takes the message; its answer is late
    answers: list[func.HttpResponse] = []
    outbound = threading.Thread(target=lambda: answers.append(call("outbound", payload())))
    outbound.start()
    try:
        for _ in range(100):
            if fake.messages:
                break
            threading.Event().wait(0.05)
        assert fake.messages
        early = v2_status(call, fake.message_uuid(1), "delivered")
        assert early.status_code == 503
        assert wired.calls == []
    finally:
        fake.release.set()
        outbound.join(15)
    (answer,) = answers
    assert answer_json(answer)["MessageId"] == fake.message_uuid(1)
    assert_acknowledged(v2_status(call, fake.message_uuid(1), "delivered"))  # Plivo's retry
    assert wired.calls == [notification(fake.message_uuid(1), "Delivered")]


def test_duplicates_in_any_order_notify_once_with_the_first_final_status(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    ids = {send(call, fake, f"rid-{n}"): f"rid-{n}" for n in range(4)}
    callbacks = [
        (message_id, status, signing)
        for message_id in ids
        for status in ("queued", "sent", "delivered", "undelivered", "delivered", "failed")
        for signing in ("v3", "v2")
    ]
    random.Random(13).shuffle(callbacks)  # noqa: S311 - an order, not a secret
    first: dict[str, str] = {}
    for message_id, status, signing in callbacks:
        rid = ids[message_id]
        if signing == "v3":
            assert_acknowledged(v3_status(call, message_id, status, rid))
        else:
            assert_acknowledged(v2_status(call, message_id, status, rid))
        if status not in ("queued", "sent"):
            first.setdefault(rid, "Delivered" if status == "delivered" else "NotDelivered")
    assert sorted((p["RequestId"], p["Status"]) for _, p in wired.calls) == sorted(first.items())


def test_ambiguous_send_is_settled_by_its_v3_status(
    call: Call, fake: FakePlivo, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")  # room to connect on a busy machine
    fake.slow(10.0)
    assert call("outbound", payload()).status_code == 503
    assert_acknowledged(v3_status(call, fake.message_uuid(1), "delivered"))
    retry = call("outbound", payload())
    assert answer_json(retry)["MessageId"] == fake.message_uuid(1)
    assert len(fake.posts) == 1
    assert wired.calls == [notification(fake.message_uuid(1), "Delivered")]


def test_inbound_reply_is_one_exact_call_whatever_plivo_retries(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    send(call, fake)  # learns our number's Dataverse form and channel
    form = inbound_form()
    for _ in range(2):
        assert_acknowledged(webhook(call, INBOUND_URL, form, sign_v3(INBOUND_URL, form)))
        assert_acknowledged(webhook(call, INBOUND_URL, form, sign_v2(INBOUND_URL)))
    assert wired.calls == [REPLY]


def test_replies_are_forwarded_once_per_message_uuid(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    send(call, fake)
    ids = [f"5b40a428-bfc7-4daf-9d06-{n:012x}" for n in range(3)]
    for message_id in ids + ids:
        form = inbound_form(message_id)
        assert_acknowledged(webhook(call, INBOUND_URL, form, sign_v3(INBOUND_URL, form)))
    assert wired.calls == [REPLY] * 3


def route_body(route: str, message_id: str) -> tuple[str, Form]:
    if route == "delivery_report":
        return report_url(), status_form(message_id, "delivered")
    return INBOUND_URL, inbound_form()


@pytest.mark.parametrize("route", ["delivery_report", "inbound"])
@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_calls_change_nothing(
    call: Call,
    fake: FakePlivo,
    wired: FakeDataverse,
    identity: FakeIdentity,
    configure: Configure,
    *,
    route: str,
    forgery: str,
) -> None:
    configure(CHANNEL_DEFINITION_ID=DEFINITION_ID)
    url, form = route_body(route, send(call, fake))
    headers, body, error = forgeries(url, form)[forgery]
    before = ledger_rows()
    response = webhook(call, url, body, headers)
    assert response.status_code == (401 if error is Unauthorized else 403), response.get_body()
    assert wired.calls == []
    assert identity.tokens == 0
    assert ledger_rows() == before


def test_a_tampered_query_changes_nothing(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    send(call, fake, "rid-1")
    other = send(call, fake, "rid-2")
    form = status_form(other, "delivered")
    headers = sign_v3(report_url("rid-2"), form)
    before = ledger_rows()
    assert webhook(call, report_url("rid-1"), form, headers).status_code == 403
    assert ledger_rows() == before
    assert wired.calls == []


def test_a_body_over_what_plivo_sends_is_413_unread_even_when_signed(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    message_id = send(call, fake)
    form = [*status_form(message_id, "delivered"), ("Padding", "x" * (64 * 1024))]
    before = ledger_rows()
    response = webhook(call, report_url(), form, sign_v3(report_url(), form))
    assert response.status_code == 413
    assert ledger_rows() == before
    assert wired.calls == []


@pytest.mark.parametrize("missing", ["PLIVO_AUTH_TOKEN", "CHANNEL_PUBLIC_URL"])
def test_without_our_settings_webhooks_are_a_plain_503(
    call: Call,
    fake: FakePlivo,
    wired: FakeDataverse,
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
) -> None:
    monkeypatch.delenv(missing)
    monkeypatch.setenv("CHANNEL_PROVIDER", "loopback")  # webhooks of a provider not sending
    reset_runtime()
    form = status_form(fake.message_uuid(1), "delivered")
    for url in (report_url(), INBOUND_URL):
        response = webhook(call, url, form, sign_v3(url, form))
        assert response.status_code == 503
        assert "problems" not in answer_json(response)
        assert "PLIVO" not in answer_json(response)["detail"]
    assert wired.calls == []


def test_dataverse_down_keeps_the_status_and_a_redelivery_notifies_once(
    call: Call, fake: FakePlivo, wired: FakeDataverse, configure: Configure
) -> None:
    configure(CHANNEL_TIME_BUDGET_SECONDS="2")
    message_id = send(call, fake)
    wired.script.extend(Response(status=503) for _ in range(20))
    response = v3_status(call, message_id, "delivered")
    assert 500 <= response.status_code < 600  # Plivo retries a non-2xx answer
    kept = get_runtime().outbox.get(f"notification:{RID}")
    assert kept is not None
    assert kept.state == "pending"
    wired.script.clear()
    assert_acknowledged(v3_status(call, message_id, "delivered"))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_malformed_signed_body_is_400_naming_the_field_and_changes_nothing(
    call: Call, fake: FakePlivo, wired: FakeDataverse
) -> None:
    send(call, fake)
    before = ledger_rows()
    for form, field in (
        ([("Status", "delivered")], "MessageUUID"),
        ([("MessageUUID", "m")], "Status"),
        ([("MessageUUID", "m\n"), ("Status", "delivered")], "MessageUUID"),
    ):
        response = webhook(call, report_url(), form, sign_v3(report_url(), form))
        assert response.status_code == 400, response.get_body()
        assert json.loads(response.get_body())["field"] == field
    assert wired.calls == []
    assert ledger_rows() == before


# --- nonces and message ids on both ledgers ----------------------------------------------


def test_v2_on_the_table_ledger(
    call: Call,
    fake: FakePlivo,
    wired: FakeDataverse,
    configure: Configure,
    *,
    azurite: Azurite,
    table_name: str,
) -> None:
    configure(
        CHANNEL_STORAGE_CONNECTION=azurite.connection_string, CHANNEL_STORAGE_TABLE=table_name
    )
    message_id = send(call, fake)
    once = nonce()
    assert_acknowledged(v2_status(call, message_id, "delivered", rid="not-ours", once=once))
    assert v2_status(call, message_id, "undelivered", once=once).status_code == 403
    assert_acknowledged(v2_status(call, message_id, "undelivered"))
    assert wired.calls == [notification(message_id, "Delivered")]


def test_first_sight_is_atomic_on_the_table_ledger(azurite: Azurite, table_name: str) -> None:
    from channel.ledger.table import TableStore

    store = TableStore(table=table_name, connection_string=azurite.connection_string)
    ledger = MessageLedger(store, lease_seconds=30, ambiguous_grace_seconds=60)
    start = threading.Barrier(10)

    def one(_: int) -> bool:
        start.wait()
        return ledger.first_sight("plivo", "12345678901234567890")

    with ThreadPoolExecutor(10) as pool:
        assert sorted(pool.map(one, range(10))) == [False] * 9 + [True]
    assert ledger.first_sight("plivo", "12345678901234567891") is True
    assert ledger.first_sight("other", "12345678901234567890") is True  # per provider
    store.close()


def test_nonces_are_kept_a_day(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = EmbeddedStore(str(tmp_path / "ledger.sqlite3"))
    ledger = MessageLedger(
        store, lease_seconds=30, ambiguous_grace_seconds=60, clock=lambda: now[0]
    )
    assert ledger.first_sight("plivo", "old") is True
    now[0] += 23 * 3600
    assert ledger.first_sight("plivo", "young") is True
    swept = sweep(store, now=now[0], retention_days=30, limit=100, budget=Budget(10))
    assert swept.removed == 0
    assert ledger.first_sight("plivo", "old") is False
    now[0] += 2 * 3600
    swept = sweep(store, now=now[0], retention_days=30, limit=100, budget=Budget(10))
    assert swept.removed == 1
    assert ledger.first_sight("plivo", "young") is False
    store.close()
