"""Property: whatever order and repetition of status callbacks, one notification per message.

Hypothesis generates callback sequences (statuses shuffled, duplicated, interleaved across
messages) and feeds them through the real WebhookService, ledger and outbox on an
in-memory embedded store; Dataverse is a recording fake.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.budget import Budget
from channel.config import Settings
from channel.contracts import DeliveryNotification, InboundMessage, OutboundResponse
from channel.ledger import Claim, MessageLedger, fingerprint
from channel.ledger.embedded import EmbeddedStore
from channel.ledger.outbox import Outbox
from channel.providers.base import (
    DeliveryState,
    ReceivedSms,
    StatusReport,
    Webhook,
    WebhookReply,
)
from channel.webhooks import WebhookService
from tests.data import DEFINITION_ID, SENDER

STATES = {
    "queued": DeliveryState.PENDING,
    "sent": DeliveryState.PENDING,
    "delivered": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.NOT_DELIVERED,
    "failed": DeliveryState.NOT_DELIVERED,
}
MESSAGES = 5
HOOK = Webhook(method="POST", url="https://sms.contoso.example/", headers={}, body=b"")


class RecordingDataverse:
    """Dataverse as far as this property needs it: takes every call and remembers it."""

    def __init__(self) -> None:
        self.notifications: list[DeliveryNotification] = []

    def organization_id(self, budget: Budget) -> str:
        return "7d2f4e3a-1b2c-4d5e-8f90-123456789abc"

    def notify(self, notification: DeliveryNotification, budget: Budget) -> None:
        self.notifications.append(notification)

    def deliver_inbound(self, message: InboundMessage, budget: Budget) -> None:
        raise AssertionError("no inbound message in this property")


class ScriptedCallbacks:
    """A provider adapter whose calls carry the reports of the script, one per call."""

    id = "scripted"
    max_body_bytes = 1024

    def __init__(self, report: StatusReport) -> None:
        self.report = report

    def verify(self, hook: Webhook) -> None:
        return None

    def handshake(self, hook: Webhook) -> WebhookReply | None:
        return None

    def status_reports(self, hook: Webhook) -> list[StatusReport]:
        return [self.report]

    def received_messages(self, hook: Webhook) -> list[ReceivedSms]:
        return []

    def acknowledge(self, hook: Webhook) -> WebhookReply:
        return WebhookReply()


callbacks = st.lists(
    st.tuples(st.integers(0, MESSAGES - 1), st.sampled_from(sorted(STATES))),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(sequence=callbacks)
def test_one_notification_per_message_with_the_first_final_status(
    sequence: Sequence[tuple[int, str]],
) -> None:
    store = EmbeddedStore(":memory:")
    ledger = MessageLedger(store, lease_seconds=30, ambiguous_grace_seconds=600)
    dataverse = RecordingDataverse()
    service = WebhookService(
        Settings.from_env({}), ledger, Outbox(store, lease_seconds=30), dataverse
    )
    for index in range(MESSAGES):
        rid = f"r-{index}"
        claim = ledger.begin(
            rid,
            fingerprint(DEFINITION_ID, SENDER, "to", "text"),
            channel_definition_id=DEFINITION_ID,
            sender=SENDER,
            provider="scripted",
        )
        assert isinstance(claim, Claim)
        ledger.complete(
            claim,
            OutboundResponse(
                ChannelDefinitionId=DEFINITION_ID,
                MessageId=f"SM{index}",
                RequestId=rid,
                Status="Sent",
            ),
        )

    for index, status in sequence:
        report = StatusReport(f"SM{index}", STATES[status], f"r-{index}", detail=status)
        service.delivery_report(ScriptedCallbacks(report), HOOK, Budget(5))
    store.close()

    expected: dict[str, str] = {}
    for index, status in sequence:
        state = STATES[status]
        if state is not DeliveryState.PENDING:
            expected.setdefault(f"r-{index}", state.value)
    got = {n.RequestId: n.Status for n in dataverse.notifications}
    assert len(dataverse.notifications) == len(got)  # never twice for one message
    assert got == expected
    for notification in dataverse.notifications:
        assert notification.From == SENDER
        assert notification.ChannelDefinitionId == DEFINITION_ID
