"""A fake Sinch SMS REST API on 127.0.0.1, and Sinch's webhook signing for tests.

The fake checks the service plan's bearer token, reads every send with the official
SDK's ``TextRequest`` model (the oracle of the request's shape), keeps the batches it
created, and lists them filtered by ``client_reference`` and ``start_date`` as Sinch's
``GET /batches`` does (its answer read back by the SDK's ``ListBatchesResponse``). Sinch
dedupes nothing: every POST that reaches it creates a batch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pytest_httpserver import HTTPServer
from sinch.domains.sms.models.v1.response.list_batches_response import ListBatchesResponse
from sinch.domains.sms.models.v1.shared.text_request import TextRequest
from werkzeug import Request, Response

from tests.data import SINCH_API_TOKEN, SINCH_SERVICE_PLAN_ID, SINCH_WEBHOOK_SECRET
from tests.fake_rest import ScriptedFake, json_response


@dataclass(frozen=True)
class SinchPost:
    """One POST the fake received, as it arrived."""

    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        """The decoded body."""
        body: dict[str, Any] = json.loads(self.body)
        return body


class FakeSinch(ScriptedFake[SinchPost]):
    """``POST`` and ``GET /xms/v1/{plan}/batches``: a batch per POST, listed by reference."""

    path = f"/xms/v1/{SINCH_SERVICE_PLAN_ID}/batches"

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        self.lookups: list[dict[str, str]] = []
        """The query of every GET of the batch list."""
        self.batches: list[dict[str, Any]] = []
        """Every batch Sinch created: what a delivery report can then be about."""
        self.list_script: list[Response] = []
        server.expect_request(self.path, method="GET").respond_with_handler(self.list)

    def batch_id(self, n: int) -> str:
        """The n-th batch id the fake hands out (Sinch's shape: a 26-character ULID)."""
        return f"01FC66621XXXXX119Z8P{n:06d}"

    def _authorised(self, request: Request) -> bool:
        if request.headers.get("Authorization") == f"Bearer {SINCH_API_TOKEN}":
            return True
        self.refuse("unknown API token")
        return False

    def handle(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response(401, {"code": "unauthorized", "text": "Unauthorized"})
        post = SinchPost(request.get_data(), dict(request.headers.items()))
        TextRequest.model_validate(post.json)  # the SDK's model of a send: raises if off
        scripted, late = self.take(post)
        if scripted is not None:
            return scripted(post)
        with self._lock:
            batch = post.json | {
                "id": self.batch_id(next(self._ids)),
                "type": "mt_text",
                "to": [number.removeprefix("+") for number in post.json["to"]],
                "canceled": False,
                "created_at": _iso(time.time()),
                "modified_at": _iso(time.time()),
            }
            self.batches.append(batch)
        self.wait(late)
        return json_response(201, batch)

    def list(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response(401, {"code": "unauthorized", "text": "Unauthorized"})
        query = dict(request.args.items())
        with self._lock:
            self.lookups.append(query)
            if self.list_script:
                return self.list_script.pop(0)
            since = query.get("start_date")
            found = [
                batch
                for batch in self.batches
                if batch.get("client_reference")
                == query.get("client_reference", batch.get("client_reference"))
                and (since is None or batch["created_at"] >= since)
            ]
        page_size = int(query.get("page_size", "30"))
        answer = {
            "count": len(found),
            "page": 0,
            "page_size": page_size,
            "batches": found[:page_size],
        }
        ListBatchesResponse.model_validate(answer)  # what the SDK reads back
        return json_response(200, answer)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def signed(
    body: bytes,
    *,
    secret: str = SINCH_WEBHOOK_SECRET,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers Sinch puts on a signed callback carrying ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    once = uuid.uuid4().hex.upper()[:26] if nonce is None else nonce
    signed_data = body + f".{once}.{stamp}".encode()
    digest = hmac.new(secret.encode(), signed_data, hashlib.sha256).digest()
    return {
        "x-sinch-webhook-signature": base64.b64encode(digest).decode(),
        "x-sinch-webhook-signature-nonce": once,
        "x-sinch-webhook-signature-timestamp": stamp,
    }
