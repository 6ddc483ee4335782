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
    ambiguous --begin, a final report kept for it--> done    (one that was forwarded from
                                        the fields its URL carried, without reading this)
    ambiguous --begin, grace over--> claimed   one new attempt, at most MAX_SEND_ATTEMPTS in all

The record keeps what a delivery report needs later (ChannelDefinitionId, the ``From``
exactly as Dataverse sent it, the provider message id) and a fingerprint of the
content, never the recipient's number or the text. ``first_attempt_at`` (see
``_claimed``) is the same for every attempt that may repeat an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from channel.contracts import OutboundResponse
from channel.errors import RequestConflict, RequestInFlight, SendAmbiguous
from channel.ledger.store import AlreadyExists, Record, RecordStore, Versioned, update
from channel.ledger.traced import operation


class RequestState(StrEnum):
    """A request record's ``state`` (see the module docstring); stored as its value."""

    CLAIMED = "claimed"
    RETRYABLE = "retryable"
    AMBIGUOUS = "ambiguous"
    DONE = "done"


LAYOUT = 2
"""What a request record's ``layout`` says of records written for it: 2, its outbox items
and markers are of this version (``due``/``done``) only. A record without it was written
by the previous version, whose items and markers (``outbox``/``forwarded``) may exist."""

ANSWERED_KEPT = 10_000
"""Answered request records a process keeps in memory for their delivery reports."""

ANSWERED_KEPT_SECONDS = 3600.0
"""How long it keeps each: most final reports come within minutes of the send; a later
one reads the record from the store (and so finds it gone once retention removed it)."""

MAX_SEND_ATTEMPTS = 2
"""Submissions that may have reached the provider for one RequestId: the first, and one
new attempt after an ambiguous outcome went unconfirmed for the grace period."""


def fingerprint(channel_definition_id: str, sender: str, recipient: str, text: str) -> str:
    """A hash of the content that makes a request the same request."""
    canonical = json.dumps([channel_definition_id.lower(), sender, recipient, text])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RequestRecord:
    """A request record (``request:<RequestId>``), typed; ``row`` is how it is stored.

    Records of the previous version (no ``layout``) and of older ones (no ``provider``,
    no ``first_attempt_at``) read as well: what they lack is None.
    """

    request_id: str
    content: str
    channel_definition_id: str
    sender: str
    """The ``From`` exactly as Dataverse sent it (stored as ``from``)."""
    provider: str | None
    """The provider of the first call: the one every attempt sends through."""
    state: RequestState
    attempts: int
    """Attempts that may have reached the provider (ambiguous ones)."""
    created_at: float | None
    claimed_at: float | None
    lease_until: float | None
    first_attempt_at: float | None
    attempted_at: float | None
    answer: OutboundResponse | None
    """The final answer (state done)."""
    message_id: str | None
    layout: int | None
    row: Record = field(compare=False, repr=False)
    """The record as stored: what ``changed`` writes onto, so fields keep their order and
    anything this version does not know survives."""

    @classmethod
    def from_row(cls, row: Record) -> RequestRecord:
        """The record a store holds as ``row``."""
        answer = row.get("answer")
        return cls(
            request_id=row["request_id"],
            content=row["content"],
            channel_definition_id=row["channel_definition_id"],
            sender=row["from"],
            provider=row.get("provider"),
            state=RequestState(row["state"]),
            attempts=int(row.get("attempts", 0)),
            created_at=row.get("created_at"),
            claimed_at=row.get("claimed_at"),
            lease_until=row.get("lease_until"),
            first_attempt_at=row.get("first_attempt_at"),
            attempted_at=row.get("attempted_at"),
            answer=None if answer is None else OutboundResponse.model_validate(answer),
            message_id=row.get("message_id"),
            layout=row.get("layout"),
            row=row,
        )

    @classmethod
    def claimed_anew(
        cls,
        request_id: str,
        content: str,
        *,
        channel_definition_id: str,
        sender: str,
        provider: str,
        now: float,
        lease_seconds: float,
    ) -> RequestRecord:
        """The record of a RequestId's first call, claimed by it."""
        return cls.from_row(
            {
                "request_id": request_id,
                "content": content,
                "channel_definition_id": channel_definition_id,
                "from": sender,
                "provider": provider,
                "attempts": 0,
                "created_at": now,
                "layout": LAYOUT,
                "state": RequestState.CLAIMED,
                "claimed_at": now,
                "lease_until": now + lease_seconds,
                "first_attempt_at": now,
            }
        )

    def to_row(self) -> Record:
        """The record as a store keeps it."""
        return self.row

    def changed(self, **changes: Any) -> RequestRecord:
        """The record with ``changes`` (by field name), written onto its stored row."""
        stored = {_STORED_AS.get(name, name): value for name, value in changes.items()}
        if "answer" in stored and stored["answer"] is not None:
            stored["answer"] = stored["answer"].model_dump(mode="json")
        return RequestRecord.from_row(self.row | stored)

    @property
    def may_have_legacy_records(self) -> bool:
        """Whether the previous version may have kept outbox records for this request."""
        return self.layout != LAYOUT


_STORED_AS = {"sender": "from"}
"""Fields stored under another name."""


@dataclass(frozen=True)
class KnownSender:
    """What a send taught about one of our numbers (``sender:<E.164>``).

    How Dataverse writes it, its channel definition, and the provider that sent from it
    (None: a record written before senders named their provider, when one provider served
    all).
    """

    sender: str
    channel_definition_id: str
    provider: str | None = None

    @classmethod
    def from_row(cls, row: Record) -> KnownSender:
        """The sender a store holds as ``row``."""
        return cls(row["from"], row["channel_definition_id"], row.get("provider"))

    def to_row(self) -> Record:
        """The sender as a store keeps it (no ``provider`` when there is none)."""
        row: Record = {"from": self.sender, "channel_definition_id": self.channel_definition_id}
        if self.provider is not None:
            row["provider"] = self.provider
        return row

    def sent_through(self, provider: str | None) -> bool:
        """Whether this applies to replies through ``provider`` (None: any)."""
        return provider is None or self.provider in (None, provider)


@dataclass(frozen=True)
class Claim:
    """The caller now owns the send for this RequestId."""

    request_id: str
    attempt: int
    record: RequestRecord = field(compare=False, repr=False)
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
        self._senders: dict[str, KnownSender] = {}
        self._answered: OrderedDict[str, tuple[float, RequestRecord]] = OrderedDict()
        """Request records in state done, by RequestId, with when they were kept.
        A done record never changes (the first final answer stands) until retention
        removes it, so a copy is as good as a read for as long as retention keeps it."""
        self._answered_lock = threading.Lock()

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
        claim's ``record.provider`` is the one to send through, whatever ``provider``
        a later call (after a route changed) names.
        """
        key = _request_key(request_id)
        claimed = RequestRecord.claimed_anew(
            request_id,
            content,
            channel_definition_id=channel_definition_id,
            sender=sender,
            provider=provider,
            now=self.clock(),
            lease_seconds=self.lease_seconds,
        )
        # Insert first: a new RequestId (the common case) costs one write, no read.
        try:
            etag = self.store.insert(key, claimed.to_row())
        except AlreadyExists:
            pass
        else:
            return Claim(request_id, 1, claimed, etag)
        answered: list[Completed] = []

        def decide(row: Record) -> Record | None:
            record = RequestRecord.from_row(row)
            if record.content != content:
                raise RequestConflict(
                    "this RequestId was already used for a different message "
                    "(ChannelDefinitionId, From, To or text differ)"
                )
            decision = self._decide(record, self.clock())
            if isinstance(decision, Completed):
                answered.append(decision)
                return None
            return decision.to_row()

        updated = update(self.store, key, decide)
        if updated.found is None:  # removed meanwhile (retention): start over
            return self.begin(
                request_id,
                content,
                channel_definition_id=channel_definition_id,
                sender=sender,
                provider=provider,
            )
        if not updated.written:
            return answered[-1]
        record = RequestRecord.from_row(updated.found.data)
        if record.state == RequestState.DONE:  # settled by a kept final report, see _decide
            assert record.answer is not None  # noqa: S101 - a record is done with its answer
            self._keep_answered(request_id, record)
            return Completed(record.answer)
        return Claim(request_id, record.attempts + 1, record, updated.found.etag)

    @operation
    def complete(self, claim: Claim, response: OutboundResponse) -> OutboundResponse:
        """Store the final answer; if another writer finished first, theirs stands."""

        def finish(record: RequestRecord) -> RequestRecord | None:
            if record.state == RequestState.DONE:
                return None
            return record.changed(
                state=RequestState.DONE, answer=response, message_id=response.MessageId
            )

        # The claim's own version first: the common case, nobody touched the record since.
        found = Versioned(claim.record.to_row(), claim.etag)
        record = self._update(claim.request_id, finish, found)
        self._keep_answered(claim.request_id, record)
        assert record.answer is not None  # noqa: S101 - a record is done with its answer
        return record.answer

    @operation
    def release(self, request_id: str) -> None:
        """Give the claim back after a provably unsent failure; a retry may claim again.

        A claim taken over an ambiguous attempt gives it back ambiguous: this attempt sent
        nothing, but the earlier one may have (its grace, its count and its first-attempt
        time still hold for the next claim).
        """

        def give_back(record: RequestRecord) -> RequestRecord | None:
            if record.state != RequestState.CLAIMED:
                return None
            return record.changed(
                state=RequestState.AMBIGUOUS if record.attempts else RequestState.RETRYABLE
            )

        self._update(request_id, give_back)

    @operation
    def mark_ambiguous(self, request_id: str) -> None:
        """Remember that an attempt may have reached the provider."""
        now = self.clock()
        self._update(
            request_id,
            lambda r: (
                r.changed(state=RequestState.AMBIGUOUS, attempts=r.attempts + 1, attempted_at=now)
                if r.state == RequestState.CLAIMED
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

        def confirm(record: RequestRecord) -> RequestRecord | None:
            if record.state == RequestState.DONE:
                return None
            return record.changed(
                state=RequestState.DONE, answer=_sent(record, message_id), message_id=message_id
            )

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
        known = KnownSender(sender, channel_definition_id, provider)
        if self._senders.get(number) == known:
            return  # already written by this process: no storage round trip per send
        key = f"sender:{number}"
        row = known.to_row()
        try:
            self.store.insert(key, row)
        except AlreadyExists:
            update(self.store, key, lambda found: None if found == row else row)
        self._senders[number] = known

    @operation
    def sender(self, number: str, provider: str | None = None) -> KnownSender | None:
        """What ``remember_sender`` learned about our number ``number``, or None.

        With ``provider``, only what a send through that provider taught (or a record
        written before senders named their provider, when one provider served all).
        """
        known = self._senders.get(number)
        if known is None or not known.sent_through(provider):
            # Not known here, or learned from another provider: another process may have
            # learned it since (the number moved to this provider).
            found = self.store.get(f"sender:{number}")
            if found is None:
                return None
            known = self._senders[number] = KnownSender.from_row(found.data)
        return known if known.sent_through(provider) else None

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
    def get(self, request_id: str) -> RequestRecord | None:
        """The request record (for correlation and inspection)."""
        found = self.store.get(_request_key(request_id))
        return None if found is None else RequestRecord.from_row(found.data)

    @operation
    def for_report(self, request_id: str) -> RequestRecord | None:
        """The request record a status report is about, or None if there is none.

        A record this process answered (or read answered) within ANSWERED_KEPT_SECONDS
        comes from memory, with no round trip: a final report reaching the instance that
        sent the message costs the outbox's two transactions alone.
        """
        kept = self.answered(request_id)
        if kept is not None:
            return kept
        found = self.store.get(_request_key(request_id))
        if found is None:
            return None
        record = RequestRecord.from_row(found.data)
        self._keep_answered(request_id, record)
        return record

    def answered(self, request_id: str) -> RequestRecord | None:
        """The answered request record this process keeps in memory, or None (no read)."""
        now = self.clock()
        with self._answered_lock:
            kept = self._answered.get(request_id)
        if kept is not None and 0 <= now - kept[0] < ANSWERED_KEPT_SECONDS:
            return kept[1]
        return None

    def _keep_answered(self, request_id: str, record: RequestRecord) -> None:
        """Keep ``record`` in memory if it is answered; the oldest go first."""
        if record.state != RequestState.DONE:
            return
        with self._answered_lock:
            self._answered[request_id] = (self.clock(), record)
            self._answered.move_to_end(request_id)
            while len(self._answered) > ANSWERED_KEPT:
                self._answered.popitem(last=False)

    def _decide(self, record: RequestRecord, now: float) -> RequestRecord | Completed:
        """What a new call for an existing record gets: the answer, an error or a claim."""
        if record.state == RequestState.DONE:
            assert record.answer is not None  # noqa: S101 - a record is done with its answer
            return Completed(record.answer)
        if record.state == RequestState.CLAIMED:
            if now < _known(record.lease_until):
                raise RequestInFlight("this RequestId is being sent right now; retry shortly")
            # The claimant died mid-send: its POST may have reached the provider.
            record = record.changed(
                state=RequestState.AMBIGUOUS,
                attempts=record.attempts + 1,
                attempted_at=record.claimed_at,
            )
        if record.state == RequestState.AMBIGUOUS:
            reported = self._reported_message(record.request_id)
            if reported is not None:
                # A final status callback was kept for this request: the earlier attempt
                # reached the provider. (A callback that carried the request's fields was
                # forwarded without reading the request, so it did not settle it itself.)
                return record.changed(
                    state=RequestState.DONE,
                    answer=_sent(record, reported),
                    message_id=reported,
                )
            grace = self.grace_for(record.provider)
            waited = now - _known(record.attempted_at)
            if waited < grace:
                raise SendAmbiguous(
                    "an earlier attempt may have reached the provider; waiting for its "
                    "status callback before trying again",
                    retry_after=int(grace - waited) + 1,
                )
            if record.attempts >= MAX_SEND_ATTEMPTS:
                raise SendAmbiguous(
                    f"{record.attempts} attempts ended without a known outcome and no "
                    "status callback confirmed one; not submitting again (check the "
                    "provider's message log)",
                    retry_after=int(grace) or 60,
                )
        return self._claimed(record, now)

    def _reported_message(self, request_id: str) -> str | None:
        """The message id of a final report the outbox kept for ``request_id``, or None."""
        # Imported here: only a request whose outcome is unknown needs it, and the outbox
        # stays off the cold path of an outbound call.
        from channel.ledger.outbox import reported_message

        return reported_message(self.store, request_id)

    def _claimed(self, record: RequestRecord, now: float) -> RequestRecord:
        # first_attempt_at: when the first attempt that may have reached the provider
        # began. An ambiguous request keeps it, so a new attempt can repeat the first one
        # exactly (ACS dedupes by it); after provably unsent attempts it starts anew.
        if record.state == RequestState.AMBIGUOUS:
            first = record.first_attempt_at
            if first is None:  # a record of a version that did not keep it
                first = now if record.created_at is None else record.created_at
        else:
            first = now
        return record.changed(
            state=RequestState.CLAIMED,
            claimed_at=now,
            lease_until=now + self.lease_seconds,
            first_attempt_at=first,
        )

    def _update(
        self,
        request_id: str,
        change: Callable[[RequestRecord], RequestRecord | None],
        found: Versioned | None = None,
    ) -> RequestRecord:
        """The request record with ``change`` applied (see ``update``); None leaves it."""

        def change_row(row: Record) -> Record | None:
            changed = change(RequestRecord.from_row(row))
            return None if changed is None else changed.to_row()

        updated = update(self.store, _request_key(request_id), change_row, found=found)
        if updated.found is None:
            raise KeyError(request_id)
        return RequestRecord.from_row(updated.found.data)


def _sent(record: RequestRecord, message_id: str) -> OutboundResponse:
    """The answer of a request a provider callback proved sent as ``message_id``."""
    return OutboundResponse(
        ChannelDefinitionId=record.channel_definition_id,
        MessageId=message_id,
        RequestId=record.request_id,
        Status="Sent",
    )


def _known(moment: float | None) -> float:
    """A time a record in this state always has (0.0, long past, should it lack it)."""
    return 0.0 if moment is None else moment


def _request_key(request_id: str) -> str:
    return f"request:{request_id}"


def _message_key(provider: str, message_id: str) -> str:
    return f"message:{provider}:{message_id}"
