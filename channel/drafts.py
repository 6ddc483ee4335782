"""What the outbox forwards to Dataverse: drafts of its two calls, before OrganizationId.

A draft is stored as the contract's fields by their Dataverse names (``to_payload``),
the shape every version of the outbox has kept, so items kept before an upgrade read
back (``from_payload``). The contract model itself (``channel.contracts``) is built
and validated only when forwarding, with the OrganizationId known then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar


@dataclass(frozen=True)
class Notification:
    """A final delivery state of one sent message (``DeliveryNotification`` less OrganizationId)."""

    kind: ClassVar[str] = "notification"
    """The outbox item's stored ``kind``."""

    channel_definition_id: str
    request_id: str
    message_id: str
    sender: str
    """Who the message was sent from, as Dataverse named it (``From``)."""
    status: str
    """``Delivered`` or ``NotDelivered``, checked by the contract when forwarding."""

    def to_payload(self) -> dict[str, Any]:
        """The draft as the outbox stores it: the contract's fields by their names."""
        return {
            "ChannelDefinitionId": self.channel_definition_id,
            "RequestId": self.request_id,
            "MessageId": self.message_id,
            "From": self.sender,
            "Status": self.status,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Notification:
        """The draft the outbox stored as ``payload``."""
        return cls(
            channel_definition_id=payload["ChannelDefinitionId"],
            request_id=payload["RequestId"],
            message_id=payload["MessageId"],
            sender=payload["From"],
            status=payload["Status"],
        )

    def to_marker(self) -> dict[str, Any]:
        """What a forwarded marker keeps of it: all of it (it holds no personal data)."""
        return self.to_payload()


@dataclass(frozen=True)
class Reply:
    """A customer's reply to one of our numbers (``InboundMessage`` less OrganizationId)."""

    kind: ClassVar[str] = "inbound"
    """The outbox item's stored ``kind``."""

    channel_definition_id: str | None
    """None until one is known for our number: the reply waits for it (see WebhookService)."""
    our_number: str
    """The number replied to (``To``): E.164, or the form Dataverse sends from once learned."""
    customer: str
    """The customer's number (``From``)."""
    message: Mapping[str, str]
    """The text by message part name (``Message``)."""

    def to_payload(self) -> dict[str, Any]:
        """The draft as the outbox stores it: the contract's fields by their names."""
        return {
            "ChannelDefinitionId": self.channel_definition_id,
            "To": self.our_number,
            "From": self.customer,
            "Message": dict(self.message),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Reply:
        """The draft the outbox stored as ``payload``."""
        return cls(
            channel_definition_id=payload["ChannelDefinitionId"],
            our_number=payload["To"],
            customer=payload["From"],
            message=dict(payload["Message"]),
        )

    def to_marker(self) -> dict[str, Any]:
        """What a forwarded marker keeps of it: no text and no customer number.

        The marker outlives the content by far (see retention).
        """
        return {"ChannelDefinitionId": self.channel_definition_id, "To": self.our_number}

    def addressed(self, channel_definition_id: str | None, our_number: str) -> Reply:
        """The reply sent to ``our_number`` of ``channel_definition_id``."""
        return replace(self, channel_definition_id=channel_definition_id, our_number=our_number)


Draft = Notification | Reply
"""What one outbox item forwards."""


def draft_from(kind: str, payload: Mapping[str, Any]) -> Draft:
    """The draft an outbox item of ``kind`` stored as ``payload``."""
    if kind == Notification.kind:
        return Notification.from_payload(payload)
    if kind == Reply.kind:
        return Reply.from_payload(payload)
    raise ValueError(f"an outbox item of unknown kind {kind[:32]!r}")
