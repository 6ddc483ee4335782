"""A fake Plivo Message API on 127.0.0.1, and Plivo's webhook signing for tests.

The fake checks the Basic credentials of every send and, like Plivo, dedupes nothing:
every POST it takes is a message. Webhook signatures are computed with the official
``plivo`` SDK (``construct_post_url`` and ``get_signature_v3`` for V3); V2, which the SDK
only checks, is computed here and every signature is confirmed by the SDK's own
validators before a test sends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from plivo.utils import validate_signature
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3, validate_v3_signature
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.data import SENSITIVE
from tests.fake_rest import ScriptedFake, json_response

PLIVO_AUTH_ID = "MAZDQ1ZDA0YJQ5ZJK0MZ"
PLIVO_AUTH_TOKEN = "plivo-test-auth-token-0001-not-a-real-one"
SENSITIVE.append(PLIVO_AUTH_TOKEN)

Form = list[tuple[str, str]]


@dataclass(frozen=True)
class PlivoPost:
    """One POST the fake received, as it arrived."""

    json: dict[str, Any]
    headers: dict[str, str]


class FakePlivo(ScriptedFake[PlivoPost]):
    """``POST /v1/Account/{auth_id}/Message/``: checks Basic auth, takes every message."""

    path = f"/v1/Account/{PLIVO_AUTH_ID}/Message/"

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        self.messages: list[dict[str, Any]] = []
        """Every message the fake took: what a status callback can then be about."""

    def message_uuid(self, n: int) -> str:
        """The n-th message_uuid the fake hands out (Plivo's shape: a UUID)."""
        return f"0936ec98-7c4c-11e7-9e7d-{n:012x}"

    def handle(self, request: Request) -> Response:
        expected = base64.b64encode(f"{PLIVO_AUTH_ID}:{PLIVO_AUTH_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            self.refuse("Basic credentials refused")
            return json_response(401, error("Authentication failed"))
        post = PlivoPost(json.loads(request.get_data()), dict(request.headers.items()))
        scripted, late = self.take(post)
        if scripted is not None:
            return scripted(post)
        with self._lock:
            message_uuid = self.message_uuid(next(self._ids))
            self.messages.append(post.json | {"message_uuid": message_uuid})
        self.wait(late)
        return json_response(
            202,
            {
                "api_id": str(uuid.uuid4()),
                "message": "message(s) queued",
                "message_uuid": [message_uuid],
            },
        )


def error(text: str) -> dict[str, Any]:
    """Plivo's error body: ``{"api_id", "error"}``."""
    return {"api_id": str(uuid.uuid4()), "error": text}


# --- webhook signatures ---------------------------------------------------------------


def nonce() -> str:
    """A fresh nonce, as Plivo makes them (20 digits)."""
    return str(secrets.randbelow(10**20)).zfill(20)


def params_of(form: Form) -> dict[str, list[str]]:
    """The form as the SDK's validators take it: each name with its values."""
    params: dict[str, list[str]] = {}
    for name, value in form:
        params.setdefault(name, []).append(value)
    return params


def sign_v3(
    url: str, form: Form, *, token: str = PLIVO_AUTH_TOKEN, once: str | None = None
) -> dict[str, str]:
    """The V3 headers Plivo puts on a POST of ``form`` to ``url``, computed by the SDK."""
    once = nonce() if once is None else once
    signed_url = construct_post_url(url, params_of(form)).decode("utf-8")
    signature = get_signature_v3(token.encode(), signed_url, once.encode()).decode()
    assert validate_v3_signature("POST", url, once, token, signature, params_of(form))
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": once}


def sign_v2(url: str, *, token: str = PLIVO_AUTH_TOKEN, once: str | None = None) -> dict[str, str]:
    """The V2 headers of a call to ``url``: base64(HMAC-SHA256(token, URL sans query + nonce))."""
    once = nonce() if once is None else once
    base = url.split("?", 1)[0]
    digest = hmac.new(token.encode(), (base + once).encode(), hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode()
    assert validate_signature(url, once, signature, token)  # the SDK's own check agrees
    return {"X-Plivo-Signature-V2": signature, "X-Plivo-Signature-V2-Nonce": once}


def encoded(form: Form) -> bytes:
    """The body Plivo posts for ``form``."""
    return urlencode(form).encode("utf-8")
