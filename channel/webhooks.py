"""The delivery-report and inbound use cases: verify, keep once, forward to Dataverse once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from channel import telemetry
from channel.budget import Budget
from channel.config import Settings
from channel.contracts import DeliveryNotification, InboundMessage
from channel.dataverse import Dataverse
from channel.drafts import Notification, Reply
from channel.errors import (
    ChannelError,
    DataverseUnavailable,
    Forbidden,
    NotConfigured,
    ServiceUnavailable,
)
from channel.ledger import MessageLedger
from channel.ledger.messages import RequestState
from channel.ledger.outbox import ItemState, Lease, Outbox
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


class ChannelDefinitionUnknown(NotConfigured):
    """A reply to a number with no channel definition known: kept until there is one."""


class WebhookService:
    """Turns verified provider webhooks into Dataverse calls, one per message.

    At least once: an item is forwarded again only when its earlier call's answer was
    lost, so Dataverse may have acted on it; that repeat is logged as a possible duplicate.
    """

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
        self._verify(adapter, hook)
        handshake = adapter.handshake(hook)
        if handshake is not None:
            return handshake
        self._each(
            adapter.status_reports(hook),
            lambda report: self._traced_report(adapter.id, report, budget),
        )
        return adapter.acknowledge(hook)

    def inbound(self, adapter: WebhookAdapter, hook: Webhook, budget: Budget) -> WebhookReply:
        """Handle an inbound call: hand each customer message to Dataverse once."""
        self._verify(adapter, hook)
        handshake = adapter.handshake(hook)
        if handshake is not None:
            return handshake
        self._each(
            adapter.received_messages(hook),
            lambda sms: self._traced_receive(adapter.id, sms, budget),
        )
        return adapter.acknowledge(hook)

    def _verify(self, adapter: WebhookAdapter, hook: Webhook) -> None:
        """The adapter's signature check and the ledger's of its nonce, in one span."""
        with telemetry.step("webhook.verify", {telemetry.PROVIDER: adapter.id}) as step:
            try:
                nonce = adapter.verify(hook)
                if nonce is not None:
                    new = self.ledger.first_sight(adapter.id, nonce.value)
                    if nonce.must_be_new and not new:
                        raise Forbidden("the signature's nonce was seen before: a replayed call")
            except ChannelError as exc:
                step.set({telemetry.VERIFICATION: exc.slug})
                raise
            step.set({telemetry.VERIFICATION: "valid"})

    def forward(self, lease: Lease, budget: Budget) -> None:
        """Hand one leased outbox item to Dataverse.

        Raises DataverseUnavailable when Dataverse did not take it within the budget;
        the item then stays pending (or becomes dead after too many attempts).
        Raises ChannelDefinitionUnknown for a reply that cannot be addressed yet; it
        stays pending, without counting an attempt, for the next timer run.
        """
        calling = False  # whether the action call (not WhoAmI) may have gone out
        try:
            if isinstance(lease.payload, Reply) and lease.payload.channel_definition_id is None:
                lease = self._addressed(lease, lease.payload)
            organization = self.dataverse.organization_id(budget)
            if lease.possible_duplicate:
                log.warning(
                    "%s forwarded again: an earlier call's answer was lost and Dataverse "
                    "may have acted on it, so this may be a duplicate",
                    lease.key,
                )
            draft = lease.payload
            if isinstance(draft, Notification):
                notification = _notification(draft, organization)
                calling = True
                self.dataverse.notify(notification, budget)
            else:
                message = _inbound_message(draft, organization)
                calling = True
                self.dataverse.deliver_inbound(message, budget)
        except ChannelDefinitionUnknown:
            raise
        except Exception as exc:
            unavailable = (
                exc
                if isinstance(exc, DataverseUnavailable)
                else DataverseUnavailable(f"forwarding failed: {type(exc).__name__}")
            )
            # An unexpected failure during the call cannot say whether it went out.
            maybe_received = calling and (
                unavailable.maybe_received if unavailable is exc else True
            )
            item = self.outbox.failed(
                lease,
                unavailable.detail,
                retry_after=unavailable.retry_after,
                maybe_received=maybe_received,
            )
            if item.state == ItemState.DEAD:
                log.error(
                    "%s is dead after %s attempts: %s",
                    lease.key,
                    item.attempts,
                    unavailable.detail,
                )
            if unavailable is exc:
                raise
            log_unexpected(log, f"forwarding {lease.key}", exc)
            raise unavailable from exc
        self.outbox.forwarded(lease)

    def _traced_report(self, provider: str, report: StatusReport, budget: Budget) -> None:
        """One status report in its own span, counted by status and what became of it."""
        attributes = {
            telemetry.PROVIDER: provider,
            telemetry.REPORT_STATUS: report.state.value,
            telemetry.MESSAGE_ID: report.message_id,
            telemetry.REQUEST_ID: report.correlation,
        }
        with telemetry.step("delivery_report.status", attributes) as step:
            try:
                self._report(provider, report, budget)
            except ChannelError:
                # e.g. a status for a send not recorded yet: answered 5xx, the provider retries
                if telemetry.REPORT_OUTCOME not in step.attributes:
                    step.set({telemetry.REPORT_OUTCOME: "failed"})
                raise
            finally:
                telemetry.count(telemetry.DELIVERY_REPORTS, step.subset(telemetry.REPORT_KEYS))

    def _traced_receive(self, provider: str, sms: ReceivedSms, budget: Budget) -> None:
        """One reply in its own span, counted by what became of it."""
        attributes = {telemetry.PROVIDER: provider, telemetry.MESSAGE_ID: sms.message_id}
        with telemetry.step("inbound.reply", attributes) as step:
            try:
                self._receive(provider, sms, budget)
            except ChannelError:
                if telemetry.REPLY_OUTCOME not in step.attributes:
                    step.set({telemetry.REPLY_OUTCOME: "failed"})
                raise
            finally:
                telemetry.count(telemetry.REPLIES, step.subset(telemetry.REPLY_KEYS))

    def _report(self, provider: str, report: StatusReport, budget: Budget) -> None:
        rid = report.correlation
        if rid is None and report.correlated_by_id:
            rid = self._recorded_request(provider, report)
        if (
            rid is not None
            and report.channel_definition_id is not None
            and report.requested_from is not None
            and report.state is not DeliveryState.PENDING
            and self.ledger.answered(rid) is None
        ):
            # The report carries its request's fields under our MAC (the adapter checked
            # it): forwarded without reading the request. A send whose answer was lost is
            # settled by the kept report when it is retried (MessageLedger.begin).
            telemetry.note(
                {
                    telemetry.REQUEST_ID: rid,
                    telemetry.CHANNEL_DEFINITION: report.channel_definition_id,
                }
            )
            notification = Notification(
                channel_definition_id=report.channel_definition_id,
                request_id=rid,
                message_id=report.message_id,
                sender=report.requested_from,
                status=report.state.value,
            )
            self._notify(notification, legacy=False, budget=budget)
            return
        request = self.ledger.for_report(rid) if rid is not None else None
        if rid is None or request is None:
            log.info(
                "status %s of message %s acknowledged: not a message this app sent",
                report.state.value,
                report.message_id,
            )
            telemetry.note({telemetry.REPORT_OUTCOME: "unknown_message"})
            return
        telemetry.note(
            {
                telemetry.REQUEST_ID: rid,
                telemetry.CHANNEL_DEFINITION: request.channel_definition_id,
            }
        )
        sent_through = request.provider
        if sent_through is not None and sent_through != provider:
            # A genuine call of one provider naming a message sent through another: its
            # status says nothing about that message (a reused tag, a misrouted
            # subscription, a replay across accounts). It neither settles nor reports it.
            log.warning(
                "a %s status report names request %s, which was sent through %s: "
                "acknowledged and ignored",
                provider,
                rid,
                sent_through,
            )
            telemetry.note({telemetry.REPORT_OUTCOME: "ignored"})
            return
        if (
            report.same_message_only
            and request.state == RequestState.DONE
            and request.message_id != report.message_id
        ):
            # Our RequestId echoed for another message (another system on the account
            # reusing it, or a message we answered NotSent): not this request's status.
            log.warning(
                "a %s status report names request %s but message %s, not the one recorded "
                "for it: acknowledged and ignored",
                provider,
                rid,
                report.message_id,
            )
            telemetry.note({telemetry.REPORT_OUTCOME: "ignored"})
            return
        if request.state != RequestState.DONE:
            # Any callback proves the provider created the message: this settles an
            # attempt whose answer we never saw (see MessageLedger).
            self.ledger.confirm_sent(rid, report.message_id)
        if report.state is DeliveryState.PENDING:
            log.info("request %s: intermediate status acknowledged", rid)
            telemetry.note({telemetry.REPORT_OUTCOME: "intermediate"})
            return
        notification = Notification(
            channel_definition_id=request.channel_definition_id,
            request_id=rid,
            message_id=report.message_id,
            sender=request.sender,
            status=report.state.value,
        )
        self._notify(notification, legacy=request.may_have_legacy_records, budget=budget)

    def _notify(self, notification: Notification, *, legacy: bool, budget: Budget) -> None:
        """Keep a final report (the first one stands) and forward it to Dataverse."""
        rid = notification.request_id
        lease = self.outbox.put(f"notification:{rid}", notification, legacy=legacy)
        if lease is None:
            log.info(
                "request %s: %s again, acknowledged (the first stands)", rid, notification.status
            )
            telemetry.note({telemetry.REPORT_OUTCOME: "repeated"})
            return
        kept = lease.payload  # the status kept first, which a later report does not change
        assert isinstance(kept, Notification)  # noqa: S101 - a notification key keeps one
        log.info("request %s: %s", rid, kept.status)
        telemetry.note({telemetry.REPORT_OUTCOME: "kept"})  # until Dataverse takes it
        self.forward(lease, budget)
        telemetry.note({telemetry.REPORT_OUTCOME: "forwarded"})

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
        # Kept even when no channel definition is known yet (ChannelDefinitionId null,
        # To our number in E.164): forward() addresses it once one is.
        reply = self._address(
            provider,
            Reply(
                channel_definition_id=None,
                our_number=sms.our_number,
                customer=sms.customer,
                message={self.settings.message_part: sms.text},
            ),
        )
        # The key names the provider: forward() addresses a kept reply by it later.
        lease = self.outbox.put(f"inbound:{provider}:{sms.message_id}", reply)
        if lease is None:
            log.info("inbound %s again, acknowledged (already handled)", sms.message_id)
            telemetry.note({telemetry.REPLY_OUTCOME: "repeated"})
            return
        log.info("inbound %s from %s", sms.message_id, mask(sms.customer))
        telemetry.note({telemetry.REPLY_OUTCOME: "kept"})  # until Dataverse takes it
        self.forward(lease, budget)
        telemetry.note({telemetry.REPLY_OUTCOME: "forwarded"})

    def _address(self, provider: str, reply: Reply) -> Reply:
        """The reply with its channel definition and our number's Dataverse form.

        Both are learned from outbound sends from that number through ``provider`` (the
        one the reply came through), else the definition is the one CHANNEL_ROUTES
        routes to that provider or CHANNEL_DEFINITION_ID (Routes.reply_definition) and
        the number stays E.164; None stays when neither is known.
        """
        learned = self.ledger.sender(reply.our_number, provider)
        if learned is not None:
            return reply.addressed(learned.channel_definition_id, learned.sender)
        definition = self.settings.routes.reply_definition(provider, self.settings.definition_id)
        return reply.addressed(definition, reply.our_number)

    def _addressed(self, lease: Lease, reply: Reply) -> Lease:
        """``lease`` (of ``reply``) addressed now, or ChannelDefinitionUnknown (kept)."""
        provider = lease.key.split(":")[1]  # inbound:{provider}:{message id}, see _receive
        addressed = self._address(provider, reply)
        if addressed.channel_definition_id is not None:
            return lease.with_payload(addressed)
        problem = (
            f"a reply to {mask(addressed.our_number)} has no channel definition: it is kept and "
            "forwarded once CHANNEL_DEFINITION_ID (or a CHANNEL_ROUTES route to its provider) is "
            "set or that number has sent a message"
        )
        self.outbox.waiting(lease, "channel definition")
        log.info("%s waits for a channel definition", lease.key)
        raise ChannelDefinitionUnknown([problem])

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


def _notification(draft: Notification, organization: str) -> DeliveryNotification:
    """The contract Dataverse is notified with: ``draft`` of ``organization``, validated."""
    # Validated from the stored fields, so a status the contract does not know is refused.
    return DeliveryNotification.model_validate(
        draft.to_payload() | {"OrganizationId": organization}
    )


def _inbound_message(draft: Reply, organization: str) -> InboundMessage:
    """The contract a reply is delivered with: ``draft`` of ``organization``, validated."""
    return InboundMessage.model_validate(draft.to_payload() | {"OrganizationId": organization})
