"""A fake Vonage Messages API on 127.0.0.1, and Vonage's webhook signing for tests.

The fake checks every send's RS256 application JWT against the public half of the test
application's key; the webhook signer mints the HS256 JWT Vonage puts on its callbacks
(``payload_hash`` = SHA-256 of the body), as Vonage's signed-webhooks page describes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.data import SENSITIVE, VONAGE_APPLICATION_ID, VONAGE_SIGNATURE_SECRET
from tests.fake_rest import ScriptedFake

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_KEY_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
"""The test application's private key, as Vonage's dashboard hands out private.key."""
PUBLIC_KEY = _KEY.public_key()
SENSITIVE.extend(line for line in PRIVATE_KEY_PEM.splitlines() if "-----" not in line)


@dataclass(frozen=True)
class VonagePost:
    """One POST the fake received, as it arrived."""

    json: dict[str, Any]
    headers: dict[str, str]
    claims: dict[str, Any]


class FakeVonage(ScriptedFake[VonagePost]):
    """``POST /v1/messages``: checks the JWT, answers from a script or takes the message."""

    path = "/v1/messages"

    def __init__(self, server: HTTPServer) -> None:
        super().__init__(server)
        self.messages: list[dict[str, Any]] = []
        """Every message the fake took: what a status callback can then be about."""

    def message_uuid(self, n: int) -> str:
        """The n-th message_uuid the fake hands out."""
        return f"aaaaaaaa-bbbb-4ccc-8ddd-{n:012x}"

    def respond(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        """Vonage's JSON, errors as problem JSON."""
        return _json(status, body, headers)

    def handle(self, request: Request) -> Response:
        claims, problems = _check_token(request.headers.get("Authorization", ""))
        if problems:
            for problem in problems:
                self.refuse(problem)
            return _json(401, error(1010, "Unauthorized", 401))
        post = VonagePost(json.loads(request.get_data()), dict(request.headers.items()), claims)
        scripted, late = self.take(post)
        if scripted is not None:
            return scripted(post)
        with self._lock:
            message_uuid = self.message_uuid(next(self._ids))
            self.messages.append(post.json | {"message_uuid": message_uuid})
        self.wait(late)
        return _json(202, {"message_uuid": message_uuid})


def _check_token(authorization: str) -> tuple[dict[str, Any], list[str]]:
    token = authorization.removeprefix("Bearer ")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, PUBLIC_KEY, algorithms=["RS256"], options={"require": ["iat", "exp", "jti"]}
        )
    except jwt.InvalidTokenError as exc:
        return {}, [f"application JWT refused: {exc}"]
    problems = []
    if claims.get("application_id") != VONAGE_APPLICATION_ID:
        problems.append(f"application_id {claims.get('application_id')!r}")
    if not 0 < claims["exp"] - time.time() <= 15 * 60:
        problems.append("exp is not within 15 minutes")
    return claims, problems


def error(code: int, title: str, status: int = 422) -> dict[str, Any]:
    """A Messages API problem+json body for error ``code``."""
    return {
        "type": f"https://developer.vonage.com/api-errors/messages#{code}",
        "title": title,
        "detail": "The request was rejected",
        "instance": str(uuid.uuid4()),
    }


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    mimetype = "application/json" if status < 400 else "application/problem+json"
    return Response(json.dumps(body), status=status, headers=headers, content_type=mimetype)


def signed(
    body: bytes,
    *,
    secret: str = VONAGE_SIGNATURE_SECRET,
    iat: float | None = None,
    payload_hash: str | None = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> dict[str, str]:
    """The Authorization header Vonage puts on a callback carrying ``body``."""
    token = jwt.encode(
        {
            "iat": int(time.time() if iat is None else iat),
            "jti": str(uuid.uuid4()),
            "iss": "Vonage",
            "payload_hash": hashlib.sha256(body).hexdigest()
            if payload_hash is None
            else payload_hash,
            "api_key": "abcd1234",
            "application_id": VONAGE_APPLICATION_ID,
        }
        | claims,
        secret,
        algorithm=algorithm,
    )
    return {"Authorization": f"Bearer {token}"}
