"""The Dataverse JSON contracts of a custom SMS channel, with their exact PascalCase names."""

from __future__ import annotations

import json
import os
import unicodedata
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from channel.phone import MAX_NUMBER_CHARS

# pydantic looks for plugins when it builds its first validator: a scan of every
# installed distribution's entry points, on the cold path of the first request. The app
# uses none; whoever wants one (e.g. logfire's) sets PYDANTIC_DISABLE_PLUGINS to a value
# that names no plugin (e.g. "none"), which is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

# Bounds on what the ledger keeps and the logs show: every field fits a Table Storage
# property many times over, and nothing sizeable is parsed, hashed or cached.
MAX_GUID_CHARS = 64
"""A GUID in any spelling uuid accepts (braces, ``urn:uuid:``) is at most 45 characters."""
MAX_REQUEST_ID_CHARS = 512
MAX_PART_NAME_CHARS = 64
MAX_TEXT_CHARS = 10_000
"""Six times the longest concatenated SMS a provider takes (Twilio: 1,600 characters)."""


def _guid(value: str) -> str:
    """Accept any GUID spelling Dataverse uses, and keep it exactly as given."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("not a valid GUID") from None
    return value


def _printable(value: str) -> str:
    """Refuse control characters, line breaks and lone surrogates in names and numbers.

    Such values reach the log (a RequestId with a newline would forge a log line) and
    the providers; no real RequestId, number or sender id holds them. Spaces of any
    kind are kept (numbers copied from elsewhere carry no-break spaces).
    """
    if not value.isprintable() and not all(
        char.isprintable() or unicodedata.category(char) == "Zs" for char in value
    ):
        raise ValueError("must not contain control characters, line breaks or lone surrogates")
    return value


def _unicode(value: str) -> str:
    """Refuse text that is not valid Unicode: a lone surrogate (JSON may escape one).

    No provider request can carry it, so it is refused before anything is claimed.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (it holds a lone surrogate)") from None
    return value


Guid = Annotated[StrictStr, Field(max_length=MAX_GUID_CHARS), AfterValidator(_guid)]
Number = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_NUMBER_CHARS), AfterValidator(_printable)
]
RequestIdText = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS), AfterValidator(_printable)
]
PartName = Annotated[StrictStr, Field(max_length=MAX_PART_NAME_CHARS), AfterValidator(_printable)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_unicode)]


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
    RequestId: RequestIdText
    From: Number
    To: Number
    Message: dict[PartName, Text]


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
