"""The Dataverse JSON contracts of a custom SMS channel, with their exact PascalCase names."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr


def _guid(value: str) -> str:
    """Accept any GUID spelling Dataverse uses, and keep it exactly as given."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("not a valid GUID") from None
    return value


Guid = Annotated[StrictStr, AfterValidator(_guid)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


class _Contract(BaseModel):
    """Shared model rules: exact names, strict types, serialised compactly."""

    model_config = ConfigDict(strict=True, frozen=True, defer_build=True)

    def to_json(self) -> str:
        """Serialise with the contract's field names, as Dataverse reads them."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


class OutboundPayload(_Contract):
    """The custom API's ``payload``: one SMS Dataverse asks us to send."""

    # Dataverse adds fields over time (e.g. MarketingAppContext from Journeys): accept them.
    model_config = ConfigDict(extra="allow")

    ChannelDefinitionId: Guid
    RequestId: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    From: NonEmpty
    To: NonEmpty
    Message: dict[StrictStr, StrictStr]


class OutboundResponse(_Contract):
    """The custom API's ``response``: what happened to the submission."""

    ChannelDefinitionId: str
    MessageId: str | None
    RequestId: str
    Status: Literal["Sent", "NotSent"]


class DeliveryNotification(_Contract):
    """``notificationPayLoad`` of ``msdyn_D365ChannelsNotification``: a final delivery state."""

    ChannelDefinitionId: str
    RequestId: str
    MessageId: str
    From: str
    OrganizationId: str
    Status: Literal["Delivered", "NotDelivered"]


class InboundMessage(_Contract):
    """``inboundPayLoad`` of ``msdyn_D365ChannelsInbound``: a customer's reply."""

    ChannelDefinitionId: str
    To: str
    From: str
    OrganizationId: str
    Message: dict[str, str]
