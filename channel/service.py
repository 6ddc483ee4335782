"""The outbound use case: one Dataverse payload to at most one provider submission."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from channel import telemetry
from channel.budget import Budget
from channel.config import Settings
from channel.contracts import OutboundPayload, OutboundResponse
from channel.errors import (
    BadRequest,
    NotConfigured,
    ProviderUnavailable,
    RequestConflict,
    SendAmbiguous,
    ServiceUnavailable,
    StoreUnavailable,
)
from channel.ledger import Claim, Completed, MessageLedger, fingerprint
from channel.phone import mask, sender_for_provider, to_e164
from channel.providers.base import (
    Accepted,
    OutboundSms,
    OutcomeUnknown,
    Provider,
    ProviderMisconfigured,
    SafeToRepeat,
    SendOutcome,
    Throttled,
    Unreachable,
    Unsendable,
)
from channel.retry import MAX_ATTEMPTS, backoff
from channel.segments import segments

log = logging.getLogger(__name__)

RESERVE_SECONDS = 1.0
"""Budget kept back for writing the ledger and answering after the last provider call."""

STORE_WRITE_SECONDS = 0.1
"""Budget a retry of the ledger write needs left after its back-off to be worth it."""


class OutboundService:
    """Sends outbound payloads exactly once per RequestId, each through its route's provider."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        ledger: MessageLedger,
        *,
        sleep: Callable[[float], None] = time.sleep,
        providers: Callable[[str], Provider] | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        """CHANNEL_PROVIDER's adapter."""
        self.providers = providers
        """The adapter of any other provider id (CHANNEL_ROUTES), built on first use."""
        self.ledger = ledger
        self.sleep = sleep
        self._unrecorded: dict[str, tuple[Claim, OutboundResponse]] = {}
        """Answers the ledger could not take, by RequestId: the next call records them."""
        self._unrecorded_lock = threading.Lock()

    def send(self, payload: OutboundPayload, budget: Budget) -> OutboundResponse:
        """Answer ``payload``: the stored answer, a new submission's, or an error."""
        with budget.applied():  # every ledger call of this one answers within it too
            return self._send(payload, budget)

    def _send(self, payload: OutboundPayload, budget: Budget) -> OutboundResponse:
        part = self.settings.message_part
        text = payload.Message.get(part)
        if text is None:
            raise BadRequest(f"Message.{part}", f"the message part '{part}' is required")
        rid = payload.RequestId
        content = fingerprint(payload.ChannelDefinitionId, payload.From, payload.To, text)
        unrecorded = self._unrecorded.get(rid)
        if unrecorded is not None:
            # The provider answered an earlier call, but the ledger did not take the
            # answer: record that one, never submit again.
            kept, response = unrecorded
            if kept.record.content != content:
                raise RequestConflict(
                    "this RequestId was already used for a different message "
                    "(ChannelDefinitionId, From, To or text differ)"
                )
            log.info("request %s: recording the answer the ledger could not take before", rid)
            return self._record(payload, kept, response, budget)
        routed = self.settings.routes.provider_for(payload.ChannelDefinitionId, payload.From)
        claim = self.ledger.begin(
            rid,
            content,
            channel_definition_id=payload.ChannelDefinitionId,
            sender=payload.From,
            provider=routed,
        )
        if isinstance(claim, Completed):
            # counted apart from first answers
            telemetry.note({telemetry.REPLAYED: True, telemetry.OUTCOME: claim.response.Status})
            log.info("request %s answered from the ledger: %s", rid, claim.response.Status)
            return claim.response
        try:
            # The provider the first call chose: a retry after a route changed must not
            # reach a second provider (which could not dedupe it) with the same message.
            provider = self._adapter(claim.record.provider or routed, routed)
            telemetry.note({telemetry.PROVIDER: provider.id})
            prepared = self._prepare(payload, provider, text, claim)
        except BaseException:
            self.ledger.release(rid)  # nothing left this process: a retry may claim again
            raise
        if isinstance(prepared, OutboundResponse):
            return self._record(payload, claim, prepared, budget)
        try:
            response = self._submit(payload, provider, prepared, budget)
        except Unsendable as exc:
            self.ledger.release(rid)  # the request was never built, so never sent
            if exc.field is None:
                raise
            field = {"to": "To", "sender": "From"}.get(exc.field, f"Message.{part}")
            raise BadRequest(field, str(exc)) from exc
        except SendAmbiguous:
            self.ledger.mark_ambiguous(rid)
            raise
        except ServiceUnavailable:  # provably unsent: a retry may claim again
            self.ledger.release(rid)
            raise
        except BaseException:
            # A submission may have left (or we cannot tell): never re-POST blindly.
            self.ledger.mark_ambiguous(rid)
            raise
        return self._record(payload, claim, response, budget)

    def _record(
        self, payload: OutboundPayload, claim: Claim, response: OutboundResponse, budget: Budget
    ) -> OutboundResponse:
        """Store the answer in the ledger, retrying within the budget; never drop it.

        The provider has answered: a second submission must never follow. When the
        ledger cannot take the answer in time, it is kept in this process and the call
        answers 503; the next call with this RequestId records it and answers with it.
        (Elsewhere the claim's lease runs out and the request waits as ambiguous for the
        provider's status callback, as after a crash.)
        """
        rid = payload.RequestId
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self.ledger.complete(claim, response)  # idempotent: safe to repeat
                break
            except Exception as exc:
                wait = backoff(attempt)
                if attempt < MAX_ATTEMPTS and budget.allows(wait, then=STORE_WRITE_SECONDS):
                    log.warning(
                        "request %s: the ledger did not take the answer (%s); retrying",
                        rid,
                        type(exc).__name__,
                    )
                    self.sleep(wait)
                    continue
                with self._unrecorded_lock:
                    self._unrecorded[rid] = (claim, response)
                log.error(
                    "request %s %s (%s) but the ledger could not record it (%s); kept in "
                    "this process until a retry records it",
                    rid,
                    response.Status,
                    response.MessageId or "no message id",
                    type(exc).__name__,
                )
                retry_after = exc.retry_after if isinstance(exc, ServiceUnavailable) else 5
                raise StoreUnavailable(
                    "the message was handled but the message ledger could not record the "
                    "answer; retry with the same RequestId to get it (it will not be sent "
                    "again)",
                    retry_after=retry_after,
                ) from exc
        with self._unrecorded_lock:
            self._unrecorded.pop(rid, None)
        if answer.Status == "Sent":
            self._remember_sender(payload, claim.record.provider or self.provider.id)
        return answer

    def _adapter(self, provider_id: str, routed: str) -> Provider:
        """The adapter of ``provider_id``; NotConfigured when it cannot be built."""
        if provider_id == self.provider.id:
            return self.provider
        try:
            if self.providers is None:
                raise NotConfigured([f"no adapter for provider '{provider_id}' in this process"])
            return self.providers(provider_id)
        except NotConfigured as exc:
            if provider_id == routed:
                raise
            # Sending it through the provider routed now could send it twice.
            raise NotConfigured(
                [
                    f"this RequestId was first sent through {provider_id}, whose settings are "
                    "needed to finish it (its route has changed since)",
                    *exc.problems,
                ]
            ) from None

    def _remember_sender(self, payload: OutboundPayload, provider: str) -> None:
        """Learn our number's Dataverse form, so replies to it can be routed back.

        Best effort, after the answer is stored: a ledger hiccup here must not turn a
        sent message into an unanswered one.
        """
        number = to_e164(payload.From, self.settings.default_region)
        if number is None:
            return
        try:
            self.ledger.remember_sender(
                number, payload.From, payload.ChannelDefinitionId, provider=provider
            )
        except Exception as exc:
            log.warning("could not remember sender %s: %s", mask(number), type(exc).__name__)

    def _prepare(
        self, payload: OutboundPayload, provider: Provider, text: str, claim: Claim
    ) -> OutboundSms | OutboundResponse:
        """The SMS for the provider, or a NotSent answer the app can give beforehand."""
        rid = payload.RequestId
        first_attempt_at = claim.record.first_attempt_at
        to = to_e164(payload.To, self.settings.default_region)
        if to is None:
            # Noted before the log line, so the record carries them as dimensions too.
            telemetry.note({telemetry.OUTCOME: "NotSent", telemetry.REASON: "invalid_recipient"})
            log.info(
                "request %s NotSent: recipient %s is not a valid number", rid, mask(payload.To)
            )
            return _answer(payload, "NotSent", None)
        if not text.strip():
            telemetry.note({telemetry.OUTCOME: "NotSent", telemetry.REASON: "empty_text"})
            log.info("request %s NotSent: the message text is empty", rid)
            return _answer(payload, "NotSent", None)
        parts = segments(text)
        telemetry.note({telemetry.SEGMENTS: parts.count, telemetry.ENCODING: parts.encoding})
        limit = self.settings.max_segments
        if limit is not None and parts.count > limit:
            telemetry.note({telemetry.OUTCOME: "NotSent", telemetry.REASON: "too_many_segments"})
            log.info(
                "request %s NotSent: the text needs %d %s segments; CHANNEL_MAX_SEGMENTS is %d",
                rid,
                parts.count,
                parts.encoding,
                limit,
            )
            return _answer(payload, "NotSent", None)
        # What the provider will bill, known before its invoice.
        telemetry.record(
            telemetry.SEGMENT_COUNT,
            parts.count,
            {telemetry.PROVIDER: provider.id, telemetry.ENCODING: parts.encoding},
        )
        return OutboundSms(
            to=to,
            sender=sender_for_provider(payload.From, self.settings.default_region),
            text=text,
            correlation=rid,
            status_callback_url=self.settings.status_callback_url(provider.id),
            # The ledger's: the same for every attempt that may repeat an earlier one.
            first_attempt_at=time.time() if first_attempt_at is None else first_attempt_at,
            maybe_sent_before=claim.attempt > 1,
            channel_definition_id=payload.ChannelDefinitionId,
            requested_from=payload.From,
        )

    def _submit(
        self, payload: OutboundPayload, provider: Provider, sms: OutboundSms, budget: Budget
    ) -> OutboundResponse:
        rid = payload.RequestId
        outcome = self._send_with_retries(provider, sms, budget)
        if isinstance(outcome, Accepted):
            if outcome.correlated_by_id:
                self._remember_message(provider.id, rid, outcome.message_id)
            telemetry.note({telemetry.OUTCOME: "Sent", telemetry.MESSAGE_ID: outcome.message_id})
            log.info("request %s Sent as %s", rid, outcome.message_id)
            return _answer(payload, "Sent", outcome.message_id)
        telemetry.note({telemetry.OUTCOME: "NotSent", telemetry.REASON: "provider_rejected"})
        log.info("request %s NotSent: provider code %s", rid, outcome.code)
        return _answer(payload, "NotSent", None)

    def _remember_message(self, provider: str, rid: str, message_id: str) -> None:
        """Record which RequestId the provider's message id belongs to, before answering.

        Its reports will name nothing else (Telnyx; Plivo's V2-signed ones). If the
        record cannot be written, the send is treated as ambiguous: a provider that
        dedupes (Telnyx) answers a later attempt under its idempotency key with the same
        id, recorded then; for one that does not (Plivo), a status callback naming our
        RequestId settles it, as after any unknown outcome.
        """
        try:
            self.ledger.remember_message(provider, message_id, rid)
        except Exception as exc:
            log.warning("request %s: could not record message %s", rid, message_id)
            raise SendAmbiguous(
                "the message was sent but its id could not be recorded; retry later",
                retry_after=max(1, int(self.ledger.grace_for(provider)) + 1),
            ) from exc

    def _send_with_retries(
        self, provider: Provider, sms: OutboundSms, budget: Budget
    ) -> SendOutcome:
        """Retry what provably did not send, and what the provider dedupes; nothing else.

        Throttling and refused connections left nothing at the provider; a SafeToRepeat
        outcome may have, but the provider answers a repeat with the first one's result.
        Any other unknown outcome is never POSTed again in this call.
        """
        attempt = 0
        maybe_sent: SafeToRepeat | None = None
        while True:
            attempt += 1
            try:
                with telemetry.timed(
                    "provider.send",
                    telemetry.PROVIDER_DURATION,
                    telemetry.PROVIDER_KEYS,
                    {telemetry.PROVIDER: provider.id, telemetry.ATTEMPT: attempt},
                ) as call:
                    # The provider's share ends early enough to record its answer after it.
                    outcome = provider.send(sms, budget.keeping(_reserve(budget)))
                    call.set({telemetry.OUTCOME_CLASS: type(outcome).__name__})
                return outcome
            except SafeToRepeat as exc:
                # The provider executes a repeat of this exact request at most once and
                # answers it with the first one's result: repeating is safe, and settles it.
                maybe_sent = exc
                wait = exc.retry_after if exc.retry_after is not None else backoff(attempt)
                reason = f"the provider's answer is unknown ({exc})"
            except Throttled as exc:
                wait = exc.retry_after if exc.retry_after is not None else backoff(attempt)
                reason = "the provider is throttling"
            except Unreachable:
                wait = backoff(attempt)
                reason = "the provider is unreachable"
            except OutcomeUnknown as exc:
                raise self._ambiguous(provider, sms, exc) from exc
            except ProviderMisconfigured as exc:
                log.error("provider %s refused our configuration: %s", provider.id, exc)
                if maybe_sent is not None:  # an earlier attempt of this call may have sent
                    raise self._ambiguous(provider, sms, maybe_sent) from exc
                raise ServiceUnavailable(str(exc), retry_after=60) from exc
            if attempt >= MAX_ATTEMPTS or not budget.allows(wait, then=RESERVE_SECONDS):
                if maybe_sent is not None:
                    raise self._ambiguous(provider, sms, maybe_sent) from maybe_sent
                log.warning("request %s not sent: %s", sms.correlation, reason)
                raise ProviderUnavailable(
                    f"{reason}; the message was not sent, retry later",
                    retry_after=max(1, round(wait)),
                )
            if maybe_sent is not None:
                log.info("request %s: %s; repeating it", sms.correlation, reason)
            self.sleep(wait)

    def _ambiguous(
        self, provider: Provider, sms: OutboundSms, exc: OutcomeUnknown
    ) -> SendAmbiguous:
        log.warning("request %s outcome unknown: %s", sms.correlation, exc)
        return SendAmbiguous(
            "the provider may have accepted the message; it will not be submitted "
            "again until its outcome is known",
            retry_after=max(1, int(self.ledger.grace_for(provider.id)) + 1),
        )


def _reserve(budget: Budget) -> float:
    """What the provider's calls leave for the ledger: a quarter of a budget under 4 s."""
    return min(RESERVE_SECONDS, budget.seconds / 4)


def _answer(
    payload: OutboundPayload, status: Literal["Sent", "NotSent"], message_id: str | None
) -> OutboundResponse:
    return OutboundResponse(
        ChannelDefinitionId=payload.ChannelDefinitionId,
        MessageId=message_id,
        RequestId=payload.RequestId,
        Status=status,
    )
