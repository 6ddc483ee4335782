"""The message ledger: one record per RequestId that makes every outbound step idempotent.

A request record moves through these states (every change is an ETag-guarded write,
so concurrent callers and scaled-out instances agree on one winner):

    (none) --begin--> claimed --complete--> done          (Sent or NotSent; answer stored)
                         |--release--> retryable          (provably unsent: 429, refused;
                         |                                 ambiguous again if an earlier
                         |                                 attempt may have reached it)
                         |--mark_ambiguous--> ambiguous   (5xx, read timeout: maybe sent)
                         '-- lease expires --> ambiguous  (the process died mid-send)

    ambiguous --confirm_sent--> done    a status callback carrying our RequestId proves it
    ambiguous --begin, grace over--> claimed   one new attempt, at most MAX_ATTEMPTS in all

The record keeps what a delivery report needs later (ChannelDefinitionId, the ``From``
exactly as Dataverse sent it, the provider message id) and a fingerprint of the
content, never the recipient's number or the text. ``first_attempt_at`` (see
``_claimed``) is the same for every attempt that may repeat an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from channel.contracts import OutboundResponse
from channel.errors import RequestConflict, RequestInFlight, SendAmbiguous
from channel.ledger.store import AlreadyExists, Record, RecordStore, StaleRecord
from channel.ledger.traced import operation

MAX_ATTEMPTS = 2
"""Submissions that may have reached the provider for one RequestId: the first, and one
new attempt after an ambiguous outcome went unconfirmed for the grace period."""


def fingerprint(channel_definition_id: str, sender: str, recipient: str, text: str) -> str:
    """A hash of the content that makes a request the same request."""
    canonical = json.dumps([channel_definition_id.lower(), sender, recipient, text])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Claim:
    """The caller now owns the send for this RequestId."""

    request_id: str
    attempt: int
    record: Record = field(default_factory=dict, compare=False, repr=False)
    """The record as this claim wrote it, and its etag: completing is then one write."""
    etag: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Completed:
    """The RequestId already has its final answer."""

    response: OutboundResponse


class MessageLedger:
    """Domain operations over a RecordStore; the same logic for every backend."""

    def __init__(
        self,
        store: RecordStore,
        *,
        lease_seconds: float,
        ambiguous_grace_seconds: float,
        grace_by_provider: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.grace_seconds = ambiguous_grace_seconds
        self.grace_by_provider = dict(grace_by_provider or {})
        """Each provider's own grace, where it differs (several providers: CHANNEL_ROUTES)."""
        self.clock = clock
        self._senders: dict[str, Record] = {}

    @property
    def kind(self) -> str:
        """The backend's name, for health."""
        return self.store.kind

    def grace_for(self, provider: str | None) -> float:
        """How long an unknown outcome of a send through ``provider`` blocks a new attempt."""
        if provider is None:
            return self.grace_seconds
        return self.grace_by_provider.get(provider, self.grace_seconds)

    @operation
    def begin(
        self,
        request_id: str,
        content: str,
        *,
        channel_definition_id: str,
        sender: str,
        provider: str,
    ) -> Claim | Completed:
        """Claim the send of ``request_id`` or return its stored answer.

        Raises RequestInFlight while another call holds the claim, RequestConflict when
        the content differs from the first call's, SendAmbiguous while an earlier
        attempt's outcome is unknown. The record keeps the provider of the first call: a
        claim's ``record["provider"]`` is the one to send through, whatever ``provider``
        a later call (after a route changed) names.
        """
        key = _request_key(request_id)
        now = self.clock()
        first: Record = {
            "request_id": request_id,
            "content": content,
            "channel_definition_id": channel_definition_id,
            "from": sender,
            "provider": provider,
            "attempts": 0,
            "created_at": now,
        }
        # Insert first: a new RequestId (the common case) costs one write, no read.
        claimed = self._claimed(first, now)
        try:
            etag = self.store.insert(key, claimed)
        except AlreadyExists:
            pass
        else:
            return Claim(request_id, 1, claimed, etag)
        while True:
            now = self.clock()
            found = self.store.get(key)
            if found is None:  # removed meanwhile (retention): start over
                return self.begin(
                    request_id,
                    content,
                    channel_definition_id=channel_definition_id,
                    sender=sender,
                    provider=provider,
                )
            record = found.data
            if record["content"] != content:
                raise RequestConflict(
                    "this RequestId was already used for a different message "
                    "(ChannelDefinitionId, From, To or text differ)"
                )
            decision = self._decide(record, now)
            if isinstance(decision, Completed):
                return decision
            try:
                etag = self.store.replace(key, decision, found.etag)
            except StaleRecord:
                continue
            return Claim(request_id, int(decision["attempts"]) + 1, decision, etag)

    @operation
    def complete(self, claim: Claim, response: OutboundResponse) -> OutboundResponse:
        """Store the final answer; if another writer finished first, theirs stands."""
        fields = response.model_dump(mode="json")
        done = {"state": "done", "answer": fields, "message_id": fields["MessageId"]}
        try:  # the common case: nobody touched the record since we claimed it
            self.store.replace(_request_key(claim.request_id), claim.record | done, claim.etag)
        except StaleRecord:
            pass
        else:
            return response

        def finish(record: Record) -> Record | None:
            if record["state"] == "done":
                return None
            return record | done

        record = self._update(claim.request_id, finish)
        return OutboundResponse.model_validate(record["answer"])

    @operation
    def release(self, request_id: str) -> None:
        """Give the claim back after a provably unsent failure; a retry may claim again.

        A claim taken over an ambiguous attempt gives it back ambiguous: this attempt sent
        nothing, but the earlier one may have (its grace, its count and its first-attempt
        time still hold for the next claim).
        """

        def give_back(record: Record) -> Record | None:
            if record["state"] != "claimed":
                return None
            return record | {"state": "ambiguous" if record["attempts"] else "retryable"}

        self._update(request_id, give_back)

    @operation
    def mark_ambiguous(self, request_id: str) -> None:
        """Remember that an attempt may have reached the provider."""
        now = self.clock()
        self._update(
            request_id,
            lambda r: (
                r | {"state": "ambiguous", "attempts": r["attempts"] + 1, "attempted_at": now}
                if r["state"] == "claimed"
                else None
            ),
        )

    @operation
    def confirm_sent(self, request_id: str, message_id: str) -> bool:
        """A provider callback proves an unanswered attempt was taken: record it as Sent.

        Returns False when the RequestId is unknown. A request already done keeps its
        answer (the first final answer wins).
        """
        if self.store.get(_request_key(request_id)) is None:
            return False

        def confirm(record: Record) -> Record | None:
            if record["state"] == "done":
                return None
            answer = OutboundResponse(
                ChannelDefinitionId=record["channel_definition_id"],
                MessageId=message_id,
                RequestId=record["request_id"],
                Status="Sent",
            ).model_dump(mode="json")
            return record | {"state": "done", "answer": answer, "message_id": message_id}

        self._update(request_id, confirm)
        return True

    @operation
    def remember_sender(
        self, number: str, sender: str, channel_definition_id: str, provider: str | None = None
    ) -> None:
        """Remember how Dataverse writes our number (``number`` in E.164) and its channel.

        Inbound messages name our number in E.164; Dataverse wants it back in its own
        form (often ``12065550100``) with the channel definition it belongs to, and
        ``provider``, the one that sent from it: only its replies are addressed so.
        """
        known: Record = {"from": sender, "channel_definition_id": channel_definition_id}
        if provider is not None:
            known["provider"] = provider
        if self._senders.get(number) == known:
            return  # already written by this process: no storage round trip per send
        key = f"sender:{number}"
        try:
            self.store.insert(key, known)
        except AlreadyExists:
            found = self.store.get(key)
            if found is not None and found.data != known:
                with contextlib.suppress(StaleRecord):  # a concurrent writer's value is as good
                    self.store.replace(key, known, found.etag)
        self._senders[number] = known

    @operation
    def sender(self, number: str, provider: str | None = None) -> Record | None:
        """What ``remember_sender`` learned about our number ``number``, or None.

        With ``provider``, only what a send through that provider taught (or a record
        written before senders named their provider, when one provider served all).
        """
        known = self._senders.get(number)
        if known is None or not _sent_through(known, provider):
            # Not known here, or learned from another provider: another process may have
            # learned it since (the number moved to this provider).
            found = self.store.get(f"sender:{number}")
            if found is None:
                return None
            known = self._senders[number] = found.data
        return known if _sent_through(known, provider) else None

    @operation
    def remember_message(self, provider: str, message_id: str, request_id: str) -> None:
        """Record that ``provider``'s message ``message_id`` is the send of ``request_id``.

        For providers whose reports name nothing of ours but their message id (Telnyx).
        Written once: a repeat of the same send (an idempotent resend) finds it there.
        """
        record: Record = {"request_id": request_id, "created_at": self.clock()}
        with contextlib.suppress(AlreadyExists):
            self.store.insert(_message_key(provider, message_id), record)

    @operation
    def request_of_message(self, provider: str, message_id: str) -> str | None:
        """The RequestId ``remember_message`` recorded for a provider's message id, or None."""
        found = self.store.get(_message_key(provider, message_id))
        return None if found is None else str(found.data["request_id"])

    @operation
    def first_sight(self, provider: str, nonce: str) -> bool:
        """Keep ``provider``'s webhook nonce; True if it was never seen before.

        One conditional insert, so two calls with one nonce, on any instances, cannot
        both see it first. Kept for NONCE_RETENTION_DAYS (see channel.ledger.retention).
        """
        try:
            self.store.insert(f"nonce:{provider}:{nonce}", {"created_at": self.clock()})
        except AlreadyExists:
            return False
        return True

    @operation
    def get(self, request_id: str) -> Record | None:
        """The request record as stored (for correlation and inspection)."""
        found = self.store.get(_request_key(request_id))
        return None if found is None else found.data

    def _decide(self, record: Record, now: float) -> Record | Completed:
        """What a new call for an existing record gets: the answer, an error or a claim."""
        state = record["state"]
        if state == "done":
            return Completed(OutboundResponse.model_validate(record["answer"]))
        if state == "claimed":
            if now < record["lease_until"]:
                raise RequestInFlight("this RequestId is being sent right now; retry shortly")
            # The claimant died mid-send: its POST may have reached the provider.
            record = record | {
                "state": "ambiguous",
                "attempts": record["attempts"] + 1,
                "attempted_at": record["claimed_at"],
            }
            state = "ambiguous"
        if state == "ambiguous":
            grace = self.grace_for(record.get("provider"))
            waited = now - record["attempted_at"]
            if waited < grace:
                raise SendAmbiguous(
                    "an earlier attempt may have reached the provider; waiting for its "
                    "status callback before trying again",
                    retry_after=int(grace - waited) + 1,
                )
            if record["attempts"] >= MAX_ATTEMPTS:
                raise SendAmbiguous(
                    f"{record['attempts']} attempts ended without a known outcome and no "
                    "status callback confirmed one; not submitting again (check the "
                    "provider's message log)",
                    retry_after=int(grace) or 60,
                )
        return self._claimed(record, now)

    def _claimed(self, record: Record, now: float) -> Record:
        # first_attempt_at: when the first attempt that may have reached the provider
        # began. An ambiguous request keeps it, so a new attempt can repeat the first one
        # exactly (ACS dedupes by it); after provably unsent attempts it starts anew.
        if record.get("state") == "ambiguous":
            first = record.get("first_attempt_at", record.get("created_at", now))
        else:
            first = now
        return record | {
            "state": "claimed",
            "claimed_at": now,
            "lease_until": now + self.lease_seconds,
            "first_attempt_at": first,
        }

    def _update(self, request_id: str, change: Callable[[Record], Record | None]) -> Record:
        """Apply ``change`` under optimistic concurrency; None means leave as is."""
        key = _request_key(request_id)
        while True:
            found = self.store.get(key)
            if found is None:
                raise KeyError(request_id)
            updated = change(found.data)
            if updated is None:
                return found.data
            try:
                self.store.replace(key, updated, found.etag)
            except StaleRecord:
                continue
            return updated


def _sent_through(sender: Record, provider: str | None) -> bool:
    """Whether a remembered sender applies to replies through ``provider`` (None: any)."""
    return provider is None or sender.get("provider", provider) == provider


def _request_key(request_id: str) -> str:
    return f"request:{request_id}"


def _message_key(provider: str, message_id: str) -> str:
    return f"message:{provider}:{message_id}"
