"""The delivery-report and inbound use cases: verify, keep once, forward to Dataverse once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from channel.budget import Budget
from channel.config import Settings
from channel.contracts import DeliveryNotification, InboundMessage
from channel.dataverse import Dataverse, DataverseUnavailable
from channel.errors import ChannelError, NotConfigured
from channel.ledger import MessageLedger
from channel.ledger.outbox import Outbox
from channel.phone import mask
from channel.providers.base import (
    DeliveryState,
    ReceivedSms,
    StatusReport,
    Webhook,
    WebhookAdapter,
    WebhookReply,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class WebhookService:
    """Turns verified provider webhooks into exactly one Dataverse call per message."""

    def __init__(
        self, settings: Settings, ledger: MessageLedger, outbox: Outbox, dataverse: Dataverse
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.outbox = outbox
        self.dataverse = dataverse

    def delivery_report(
        self, adapter: WebhookAdapter, hook: Webhook, budget: Budget
    ) -> WebhookReply:
        """Handle a status callback: report each final state once, acknowledge the rest."""
        adapter.verify(hook)
        handshake = adapter.handshake(hook)
        if handshake is not None:
            return handshake
        self._each(adapter.status_reports(hook), lambda report: self._report(report, budget))
        return adapter.acknowledge(hook)

    def inbound(self, adapter: WebhookAdapter, hook: Webhook, budget: Budget) -> WebhookReply:
        """Handle an inbound call: hand each customer message to Dataverse once."""
        adapter.verify(hook)
        handshake = adapter.handshake(hook)
        if handshake is not None:
            return handshake
        self._each(
            adapter.received_messages(hook),
            lambda sms: self._receive(adapter.id, sms, budget),
        )
        return adapter.acknowledge(hook)

    def forward(self, key: str, budget: Budget, *, force: bool = False) -> bool:
        """Forward one outbox item to Dataverse if it is due and nobody else is at it.

        Returns True when this call forwarded it. Raises DataverseUnavailable (the item
        stays pending) when Dataverse did not take it within the budget.
        """
        item = self.outbox.claim(key, force=force)
        if item is None:
            return False
        try:
            organization = self.dataverse.organization_id(budget)
            payload: dict[str, Any] = item["payload"] | {"OrganizationId": organization}
            if item["kind"] == "notification":
                self.dataverse.notify(DeliveryNotification.model_validate(payload), budget)
            else:
                self.dataverse.deliver_inbound(InboundMessage.model_validate(payload), budget)
        except Exception as exc:
            unavailable = (
                exc
                if isinstance(exc, DataverseUnavailable)
                else DataverseUnavailable(f"forwarding failed: {type(exc).__name__}")
            )
            self.outbox.failed(key, unavailable.detail, retry_after=unavailable.retry_after)
            if unavailable is exc:
                raise
            log.error("forwarding %s failed unexpectedly", key, exc_info=exc)
            raise unavailable from exc
        self.outbox.forwarded(key)
        return True

    def _report(self, report: StatusReport, budget: Budget) -> None:
        rid = report.correlation
        request = self.ledger.get(rid) if rid is not None else None
        if rid is None or request is None:
            log.info(
                "status %s of message %s acknowledged: not a message this app sent",
                report.state.value,
                report.message_id,
            )
            return
        # Any callback proves the provider created the message: this settles an
        # attempt whose answer we never saw (see MessageLedger).
        self.ledger.confirm_sent(rid, report.message_id)
        if report.state is DeliveryState.PENDING:
            log.info("request %s: intermediate status acknowledged", rid)
            return
        key = f"notification:{rid}"
        _, first = self.outbox.put(
            key,
            "notification",
            {
                "ChannelDefinitionId": request["channel_definition_id"],
                "RequestId": rid,
                "MessageId": report.message_id,
                "From": request["from"],
                "Status": report.state.value,
            },
        )
        log.info(
            "request %s: %s reported%s",
            rid,
            report.state.value,
            "" if first else " again (the first final status stands)",
        )
        self.forward(key, budget, force=True)

    def _receive(self, provider: str, sms: ReceivedSms, budget: Budget) -> None:
        key = f"inbound:{provider}:{sms.message_id}"
        if self.outbox.get(key) is None:
            learned = self.ledger.sender(sms.our_number)
            definition = (
                learned["channel_definition_id"] if learned else self.settings.definition_id
            )
            if definition is None:
                raise NotConfigured(
                    [
                        f"an inbound message to {mask(sms.our_number)} has no channel "
                        "definition: set CHANNEL_DEFINITION_ID or send from that number first"
                    ]
                )
            self.outbox.put(
                key,
                "inbound",
                {
                    "ChannelDefinitionId": definition,
                    "To": learned["from"] if learned else sms.our_number,
                    "From": sms.customer,
                    "Message": {self.settings.message_part: sms.text},
                },
            )
            log.info("inbound %s from %s kept", sms.message_id, mask(sms.customer))
        self.forward(key, budget, force=True)

    @staticmethod
    def _each(items: list[T], handle: Callable[[T], None]) -> None:
        """Handle every item even if one fails; then raise the first failure."""
        failure: ChannelError | None = None
        for item in items:
            try:
                handle(item)
            except ChannelError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
