"""The custom API envelope: plain or wrapped ``payload`` requests, replies wrapped alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from channel.contracts import OutboundPayload, OutboundResponse
from channel.errors import BadRequest


@dataclass(frozen=True)
class OutboundRequest:
    """An outbound payload and whether it came wrapped as ``{"payload": ...}``."""

    payload: OutboundPayload
    wrapped: bool

    def reply(self, response: OutboundResponse) -> str:
        """The reply body: the response, wrapped as the custom API's output if asked so."""
        body = response.to_json()
        if self.wrapped:
            return json.dumps({"response": body}, separators=(",", ":"), ensure_ascii=False)
        return body


def read_outbound(body: bytes) -> OutboundRequest:
    """Parse an outbound request body, raising BadRequest that names the faulty field."""
    document = _json(body, "body")
    wrapped = isinstance(document, dict) and "payload" in document and "RequestId" not in document
    if wrapped:
        inner = document["payload"]
        if isinstance(inner, str):
            inner = _json(inner.encode("utf-8"), "payload")
        document = inner
        if not isinstance(document, dict):
            raise BadRequest("payload", "must be a JSON object or a string holding one")
    if not isinstance(document, dict):
        raise BadRequest("body", "must be a JSON object")
    try:
        payload = OutboundPayload.model_validate(document)
    except ValidationError as exc:
        raise _bad_request(exc, "payload." if wrapped else "") from None
    return OutboundRequest(payload=payload, wrapped=wrapped)


def _json(raw: bytes, field: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(field, f"not valid JSON ({type(exc).__name__})") from None
    except RecursionError:  # e.g. "[" * 60000: deeper than the parser goes
        raise BadRequest(field, "JSON nested too deeply") from None


def _bad_request(exc: ValidationError, prefix: str) -> BadRequest:
    """Turn pydantic's first error into a sentence naming the field, e.g. ``Message.text``."""
    error = exc.errors(include_url=False, include_input=False)[0]
    field = prefix + ".".join(str(part) for part in error["loc"])
    reason = "is required" if error["type"] == "missing" else error["msg"]
    return BadRequest(field, reason)
