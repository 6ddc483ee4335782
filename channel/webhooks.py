"""The delivery-report and inbound use cases: verify, keep once, forward to Dataverse once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from channel.budget import Budget
from channel.config import Settings
from channel.contracts import DeliveryNotification, InboundMessage
from channel.dataverse import Dataverse, DataverseUnavailable
from channel.errors import ChannelError, NotConfigured, ServiceUnavailable
from channel.ledger import MessageLedger
from channel.ledger.outbox import Lease, Outbox
from channel.logs import log_unexpected
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
        self._each(
            adapter.status_reports(hook),
            lambda report: self._report(report, budget, adapter.id),
        )
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

    def forward(self, lease: Lease, budget: Budget) -> None:
        """Hand one leased outbox item to Dataverse.

        Raises DataverseUnavailable when Dataverse did not take it within the budget;
        the item then stays pending (or becomes dead after too many attempts).
        """
        try:
            organization = self.dataverse.organization_id(budget)
            payload: dict[str, Any] = lease.payload | {"OrganizationId": organization}
            if lease.kind == "notification":
                self.dataverse.notify(DeliveryNotification.model_validate(payload), budget)
            else:
                self.dataverse.deliver_inbound(InboundMessage.model_validate(payload), budget)
        except Exception as exc:
            unavailable = (
                exc
                if isinstance(exc, DataverseUnavailable)
                else DataverseUnavailable(f"forwarding failed: {type(exc).__name__}")
            )
            item = self.outbox.failed(
                lease, unavailable.detail, retry_after=unavailable.retry_after
            )
            if item["state"] == "dead":
                log.error(
                    "%s is dead after %s attempts: %s",
                    lease.key,
                    item["attempts"],
                    unavailable.detail,
                )
            if unavailable is exc:
                raise
            log_unexpected(log, f"forwarding {lease.key}", exc)
            raise unavailable from exc
        self.outbox.forwarded(lease)

    def _report(self, report: StatusReport, budget: Budget, provider: str) -> None:
        rid = report.correlation
        if rid is None and report.correlated_by_id:
            rid = self._recorded_request(provider, report)
        request = self.ledger.get(rid) if rid is not None else None
        if rid is None or request is None:
            log.info(
                "status %s of message %s acknowledged: not a message this app sent",
                report.state.value,
                report.message_id,
            )
            return
        if request["state"] != "done":
            # Any callback proves the provider created the message: this settles an
            # attempt whose answer we never saw (see MessageLedger).
            self.ledger.confirm_sent(rid, report.message_id)
        if report.state is DeliveryState.PENDING:
            log.info("request %s: intermediate status acknowledged", rid)
            return
        lease = self.outbox.put(
            f"notification:{rid}",
            "notification",
            {
                "ChannelDefinitionId": request["channel_definition_id"],
                "RequestId": rid,
                "MessageId": report.message_id,
                "From": request["from"],
                "Status": report.state.value,
            },
        )
        if lease is None:
            log.info(
                "request %s: %s again, acknowledged (the first stands)", rid, report.state.value
            )
            return
        log.info("request %s: %s", rid, lease.payload["Status"])
        self.forward(lease, budget)

    def _recorded_request(self, provider: str, report: StatusReport) -> str | None:
        """The RequestId recorded at send for the report's message id.

        A final status for an id not recorded (yet) may belong to a send whose answer
        is still on its way to us: 503, so the provider delivers it again later (Telnyx
        tries each URL 3 times, then the failover URL). Reports of messages this app
        never sent get the same answer until the provider gives up.
        """
        rid = self.ledger.request_of_message(provider, report.message_id)
        if rid is None and report.state is not DeliveryState.PENDING:
            log.info("status of message %s before its send was recorded", report.message_id)
            raise ServiceUnavailable(
                "no send of this message is recorded yet; deliver the report again later",
                retry_after=5,
            )
        return rid

    def _receive(self, provider: str, sms: ReceivedSms, budget: Budget) -> None:
        learned = self.ledger.sender(sms.our_number)
        definition = learned["channel_definition_id"] if learned else self.settings.definition_id
        if definition is None:
            raise NotConfigured(
                [
                    f"an inbound message to {mask(sms.our_number)} has no channel "
                    "definition: set CHANNEL_DEFINITION_ID or send from that number first"
                ]
            )
        lease = self.outbox.put(
            f"inbound:{provider}:{sms.message_id}",
            "inbound",
            {
                "ChannelDefinitionId": definition,
                "To": learned["from"] if learned else sms.our_number,
                "From": sms.customer,
                "Message": {self.settings.message_part: sms.text},
            },
        )
        if lease is None:
            log.info("inbound %s again, acknowledged (already handled)", sms.message_id)
            return
        log.info("inbound %s from %s", sms.message_id, mask(sms.customer))
        self.forward(lease, budget)

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
