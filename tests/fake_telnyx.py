"""A fake Telnyx Messaging v2 on 127.0.0.1, and Telnyx's webhook signing for tests.

The fake dedupes by ``Idempotency-Key`` as Telnyx documents it: a repeat of a key with a
byte-identical body gets the first successful answer again and sends nothing; with
another body, 422. The test owns an Ed25519 key pair and gives the app only the public
half, as Telnyx's portal does.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.data import TELNYX_API_KEY

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


TelnyxAnswer = Callable[[TelnyxPost], Response]


class FakeTelnyx:
    """``POST /v2/messages``: checks the API key, dedupes by Idempotency-Key."""

    path = "/v2/messages"

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.base_url = server.url_for("/").rstrip("/")
        self.posts: list[TelnyxPost] = []
        self.rejected: list[str] = []
        self.messages: list[dict[str, Any]] = []
        """Every message Telnyx executed (one per Idempotency-Key)."""
        self.script: list[TelnyxAnswer] = []
        self.release = threading.Event()
        self._slow: list[float] = []
        self._results: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        server.expect_request(self.path, method="POST").respond_with_handler(self.handle)

    def message_id(self, n: int) -> str:
        """The n-th message id the fake hands out (Telnyx's shape: a UUID)."""
        return f"40385f64-5717-4562-b3fc-{n:012x}"

    def answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next POST with ``status`` and ``body`` (nothing is sent)."""
        self.script.append(lambda post: _json(status, body, headers))

    def slow(self, seconds: float, count: int = 1) -> None:
        """Execute the next ``count`` unscripted POSTs at once, answer each ``seconds`` late."""
        self._slow.extend([seconds] * count)

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {TELNYX_API_KEY}":
            with self._lock:
                self.rejected.append("unknown API key")
            return _json(401, failure(10009, "Authentication failed"))
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
                    return _json(422, failure(10015, "Idempotency key reused"))
                return _json(200, seen[1])
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
        if late:
            self.release.wait(late)
        return _json(200, answer)


def failure(code: int, title: str) -> dict[str, Any]:
    """A Telnyx error body with one error ``code``."""
    return {"errors": [{"code": str(code), "title": title, "detail": "The request failed"}]}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


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
