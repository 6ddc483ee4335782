"""A fake Telnyx Messaging v2 on 127.0.0.1, and Telnyx's webhook signing for tests.

The fake dedupes by ``Idempotency-Key`` as Telnyx documents it: a repeat of a key with a
byte-identical body gets the first successful answer again and sends nothing; with
another body, 422. The test owns an Ed25519 key pair and gives the app only the public
half, as Telnyx's portal does.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.data import TELNYX_API_KEY
from tests.fake_rest import ScriptedFake, json_response

SIGNING_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = base64.b64encode(
    SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
).decode()
"""TELNYX_PUBLIC_KEY: base64 of the raw 32-byte public key."""


@dataclass(frozen=True)
class TelnyxPost:
    """One POST the fake received, as it arrived."""

    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        """The decoded body."""
        body: dict[str, Any] = json.loads(self.body)
        return body

    @property
    def key(self) -> str | None:
        """Its Idempotency-Key."""
        return self.headers.get("Idempotency-Key")


class FakeTelnyx(ScriptedFake[TelnyxPost]):
    """``POST /v2/messages``: checks the API key, dedupes by Idempotency-Key."""

    path = "/v2/messages"

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        self.messages: list[dict[str, Any]] = []
        """Every message Telnyx executed (one per Idempotency-Key)."""
        self._results: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def message_id(self, n: int) -> str:
        """The n-th message id the fake hands out (Telnyx's shape: a UUID)."""
        return f"40385f64-5717-4562-b3fc-{n:012x}"

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {TELNYX_API_KEY}":
            self.refuse("unknown API key")
            return json_response(401, failure(10009, "Authentication failed"))
        post = TelnyxPost(request.get_data(), dict(request.headers.items()))
        with self._lock:
            self.posts.append(post)
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted(post)
        with self._lock:
            seen = self._results.get(post.key or "")
            if seen is not None:
                if seen[0] != post.body:
                    return json_response(422, failure(10015, "Idempotency key reused"))
                return json_response(200, seen[1])
            message_id = self.message_id(next(self._ids))
            request_body = post.json
            answer = {
                "data": {
                    "record_type": "message",
                    "direction": "outbound",
                    "id": message_id,
                    "type": "SMS",
                    "from": {"phone_number": request_body["from"]},
                    "to": [{"phone_number": request_body["to"], "status": "queued"}],
                    "text": request_body["text"],
                    "errors": [],
                }
            }
            self.messages.append(request_body | {"id": message_id})
            if post.key:
                self._results[post.key] = (post.body, answer)
            late = self._slow.pop(0) if self._slow else 0.0
        self.wait(late)
        return json_response(200, answer)


def failure(code: int, title: str) -> dict[str, Any]:
    """A Telnyx error body with one error ``code``."""
    return {"errors": [{"code": str(code), "title": title, "detail": "The request failed"}]}


def signed(
    body: bytes, *, timestamp: int | None = None, key: Ed25519PrivateKey = SIGNING_KEY
) -> dict[str, str]:
    """The headers Telnyx puts on a webhook carrying ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + b"|" + body)
    return {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": stamp,
    }
