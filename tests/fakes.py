"""Fakes of the outside world on 127.0.0.1: Twilio, Dataverse and the identity endpoint."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.data import TWILIO_SID


class FakeTwilio:
    """Twilio's Messages resource: answers from a script, records every POST."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.path = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
        self.base_url = server.url_for("/").rstrip("/")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def accept(self, *, delay: float = 0.0) -> None:
        """Answer every POST with 201 and a fresh message sid (after ``delay`` seconds)."""

        def handler(request: Request) -> Response:
            if delay:
                threading.Event().wait(delay)
            with self._lock:
                sid = f"SM{next(self._ids):032x}"
            return _json(201, {"sid": sid, "status": "queued", "error_code": None})

        self.server.expect_request(self.path, method="POST").respond_with_handler(handler)

    def answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next POST with ``status`` and ``body`` (ordered, once)."""
        self.server.expect_ordered_request(self.path, method="POST").respond_with_response(
            _json(status, body, headers)
        )

    def posts(self) -> list[Request]:
        """Every POST the fake received, in order."""
        return [req for req, _ in self.server.log if req.method == "POST"]

    def always(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer every POST with ``status`` and ``body`` until the handlers are cleared."""
        self.server.expect_request(self.path, method="POST").respond_with_response(
            _json(status, body, headers)
        )

    def stall(self, seconds: float) -> threading.Event:
        """Hold every POST up to ``seconds`` before accepting it; set the event to let go.

        The test server answers one request at a time, so a stalled POST also holds
        back every request after it until it is let go.
        """
        release = threading.Event()

        def handler(request: Request) -> Response:
            release.wait(seconds)
            with self._lock:
                sid = f"SM{next(self._ids):032x}"
            return _json(201, {"sid": sid, "status": "queued", "error_code": None})

        self.server.expect_request(self.path, method="POST").respond_with_handler(handler)
        return release

    def truncate(self) -> None:
        """Answer the next POST with a reply cut off mid-body (the connection drops)."""
        # A generator body keeps werkzeug from correcting the Content-Length to the truth.
        self.server.expect_ordered_request(self.path, method="POST").respond_with_response(
            Response(
                iter([b'{"sid": "SM']),
                status=201,
                headers={"Content-Length": "400"},
                content_type="application/json",
            )
        )

    def settle(self) -> None:
        """Return once the fake has answered every request sent to it before this call.

        The server handles connections one by one in arrival order, so when a request
        of our own comes back, all earlier ones are in the log.
        """
        self.server.expect_request("/settle", method="GET").respond_with_data("")
        with urllib.request.urlopen(self.server.url_for("/settle"), timeout=10) as reply:  # noqa: S310
            reply.read()


@dataclass
class HeldPost:
    """POSTs the fake Twilio holds (see ``hold_posts``): set ``release`` to let them go."""

    arrived: threading.Event
    """Set as soon as a POST came in (it is in flight from then on)."""
    release: threading.Event
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    """The form of each held POST, readable while it is still held."""


def hold_posts(twilio: FakeTwilio, seconds: float) -> HeldPost:
    """Like ``FakeTwilio.stall``, but tell when a POST arrived and what it carried."""
    held = HeldPost(threading.Event(), threading.Event())

    def handler(request: Request) -> Response:
        held.forms.append(request.form.to_dict(flat=False))
        held.arrived.set()
        held.release.wait(seconds)
        with twilio._lock:
            sid = f"SM{next(twilio._ids):032x}"
        return _json(201, {"sid": sid, "status": "queued", "error_code": None})

    twilio.server.expect_request(twilio.path, method="POST").respond_with_handler(handler)
    return held


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def twilio_error(code: int, status: int = 400, *, rfc9457: bool = False) -> dict[str, Any]:
    """A Twilio error body in either of the formats Twilio uses."""
    if rfc9457:
        return {
            "type": f"https://www.twilio.com/docs/errors/{code}",
            "title": "Error",
            "status": status,
            "code": code,
            "detail": "The request was rejected",
        }
    return {
        "code": code,
        "message": "The request was rejected",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


ORGANIZATION_ID = "7d2f4e3a-1b2c-4d5e-8f90-123456789abc"
IDENTITY_SECRET = "identity-header-secret"


class FakeIdentity:
    """The App Service managed-identity endpoint: hands out one-hour tokens, counts them."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.requests: list[Request] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        server.expect_request("/msi/token", method="GET").respond_with_handler(self.handle)

    @property
    def tokens(self) -> int:
        """How many tokens were handed out."""
        return len(self.issued)

    def handle(self, request: Request) -> Response:
        self.requests.append(request)
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_SECRET:
            return Response("bad header", status=400)
        with self._lock:
            token = f"token-{len(self.issued) + 1}"
            self.issued.append(token)
        body = {
            "access_token": token,
            "expires_on": str(int(time.time()) + 3600),
            "resource": request.args["resource"],
            "token_type": "Bearer",
        }
        return Response(json.dumps(body), content_type="application/json")


class FakeDataverse:
    """A Dataverse Web API that checks the token, headers and body shape of each call.

    Calls that break the contract are answered 400 and listed in ``rejected``; tests
    assert it stays empty. ``script`` holds answers to give before the default 204.
    """

    def __init__(self, server: HTTPServer, identity: FakeIdentity) -> None:
        self.server = server
        self.identity = identity
        self.url = server.url_for("/").rstrip("/")
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rejected: list[str] = []
        self.script: list[Response] = []
        self.whoami = 0
        self._lock = threading.Lock()
        for action in ("msdyn_D365ChannelsNotification", "msdyn_D365ChannelsInbound"):
            server.expect_request(f"/api/data/v9.2/{action}", method="POST").respond_with_handler(
                self.handle
            )
        server.expect_request("/api/data/v9.2/WhoAmI", method="GET").respond_with_handler(
            self.who_am_i
        )

    def problems(self, request: Request) -> list[str]:
        """What is wrong with a request's authentication and OData headers."""
        found = []
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.identity.issued:
            found.append(f"unknown bearer token {token!r}")
        expected = {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }
        if request.method == "POST":
            expected["Content-Type"] = "application/json; charset=utf-8"
        for name, value in expected.items():
            if request.headers.get(name) != value:
                found.append(f"{name}: {request.headers.get(name)!r}")
        return found

    def who_am_i(self, request: Request) -> Response:
        problems = self.problems(request)
        if problems:
            self.rejected.extend(problems)
            return Response(status=400)
        with self._lock:
            self.whoami += 1
        body = {"BusinessUnitId": "b", "UserId": "u", "OrganizationId": ORGANIZATION_ID}
        return Response(json.dumps(body), content_type="application/json")

    def handle(self, request: Request) -> Response:
        problems = self.problems(request)
        action = request.path.rsplit("/", 1)[1]
        body = json.loads(request.data)
        parameter = {
            "msdyn_D365ChannelsNotification": "notificationPayLoad",
            "msdyn_D365ChannelsInbound": "inboundPayLoad",
        }[action]
        if list(body) != [parameter] or not isinstance(body[parameter], str):
            problems.append(f"{action} body {body!r}")
        with self._lock:
            if problems:
                self.rejected.extend(problems)
                return Response(status=400)
            if self.script:
                answer = self.script.pop(0)
                if answer.status_code < 300:
                    self.calls.append((action, json.loads(body[parameter])))
                return answer
            self.calls.append((action, json.loads(body[parameter])))
        return Response(status=204)

    def payloads(self, action: str) -> list[dict[str, Any]]:
        """The decoded payloads of the successful calls of one action."""
        return [payload for name, payload in self.calls if name == action]


# --- Azure Communication Services (SMS) ---
# (kept in one block at the end, imports included, so it merges apart from the rest)

import base64  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from email.utils import formatdate, parsedate_to_datetime  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

ACS_REPEATABILITY_WINDOW = 300.0
"""ACS tracks repeatable requests for 5 minutes after their first-sent time."""


@dataclass(frozen=True)
class AcsPost:
    """One POST the fake ACS received, as it arrived."""

    body: bytes
    headers: dict[str, str]
    api_version: str | None

    @property
    def json(self) -> dict[str, Any]:
        """The decoded body."""
        body: dict[str, Any] = json.loads(self.body)
        return body

    @property
    def pair(self) -> tuple[str, str]:
        """The (repeatabilityRequestId, repeatabilityFirstSent) of its one recipient."""
        (recipient,) = self.json["smsRecipients"]
        return recipient["repeatabilityRequestId"], recipient["repeatabilityFirstSent"]


AcsAnswer = Callable[[AcsPost], Response]


class FakeAcs:
    """ACS's ``POST /sms``: checks every request's authentication and dedupes repeats.

    Authentication is HMAC-SHA256 with ``key`` (rebuilt from what arrived: the raw path
    and query, the Host header, the hash of the bytes received) or, with ``identity``,
    a bearer token that fake endpoint issued. A request that fails it is answered 401
    and listed in ``rejected``; tests assert that list stays empty.

    Like ACS (learn.microsoft.com/rest/api/communication/repeatable-requests), a
    recipient whose repeatability pair was seen before within 5 minutes gets the first
    answer again and nothing is sent; ``messages`` lists what was really sent.
    ``script`` holds answers to give (in order, once) before that behaviour.
    """

    path = "/sms"

    def __init__(
        self, server: HTTPServer, *, key: bytes | None, identity: FakeIdentity | None = None
    ) -> None:
        self.server = server
        self.endpoint = server.url_for("/").rstrip("/")
        self.key = key
        self.identity = identity
        self.posts: list[AcsPost] = []
        self.rejected: list[str] = []
        self.messages: list[dict[str, Any]] = []
        """Every message ACS executed (one per repeatability pair): recipient, text, id."""
        self.script: list[AcsAnswer] = []
        self.bad_numbers: set[str] = set()
        self.release = threading.Event()
        """Set it to let go of the answers ``slow`` holds (tests set it when they end)."""
        self._slow: list[float] = []
        self._results: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        server.expect_request(self.path, method="POST").respond_with_handler(self.handle)

    def message_id(self, n: int) -> str:
        """The n-th message id the fake hands out (ACS's shape)."""
        return f"Outgoing_20240611093015{n:08x}-5c2d-4e8a-9b1f-7a6e4d3c2b10_noam"

    def pairs(self) -> set[tuple[str, str]]:
        """The distinct repeatability pairs of every POST received."""
        return {post.pair for post in self.posts}

    def answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next unscripted POST with ``status`` and ``body`` (nothing is sent)."""
        self.script.append(lambda post: _json(status, body, headers))

    def handle(self, request: Request) -> Response:
        problems = self.authentication_problems(request)
        if problems:
            with self._lock:
                self.rejected.extend(problems)
            return _json(401, {"error": {"code": "Denied", "message": "; ".join(problems)}})
        query = parse_qs(urlsplit(request.environ["RAW_URI"]).query)
        post = AcsPost(
            request.get_data(),
            dict(request.headers.items()),
            query.get("api-version", [None])[0],
        )
        with self._lock:
            self.posts.append(post)
            scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted(post)
        items = [self._recipient(post, recipient) for recipient in post.json["smsRecipients"]]
        with self._lock:
            late = self._slow.pop(0) if self._slow else 0.0
        if late:
            self.release.wait(late)  # executed, but the answer comes late (a read timeout)
        return _json(202, {"value": items})

    def slow(self, seconds: float, count: int = 1) -> None:
        """Execute the next ``count`` unscripted POSTs at once but answer each ``seconds`` late.

        The server is threaded: other POSTs are answered meanwhile.
        """
        self._slow.extend([seconds] * count)

    def _recipient(self, post: AcsPost, recipient: dict[str, Any]) -> dict[str, Any]:
        to = recipient["to"]
        request_id = recipient.get("repeatabilityRequestId", "")
        first_sent = recipient.get("repeatabilityFirstSent", "")
        try:
            uuid.UUID(request_id)
            sent_at = parsedate_to_datetime(first_sent)
            assert formatdate(sent_at.timestamp(), usegmt=True) == first_sent
        except (ValueError, TypeError, AssertionError):
            return _rejected(to, 400, "Invalid repeatability-request-id or -first-sent value.")
        age = (datetime.now(UTC) - sent_at).total_seconds()
        if not -60 <= age <= ACS_REPEATABILITY_WINDOW:
            return _rejected(to, 412, "Repeatability first sent is not within the 5 min window.")
        request = json.loads(post.body)
        content = json.dumps(
            {k: v for k, v in request.items() if k != "smsRecipients"} | {"to": to}
        )
        with self._lock:
            seen = self._results.get((request_id, first_sent))
            if seen is not None:
                if seen[0] != content.encode():
                    return _rejected(to, 400, "Repeated request does not match the first one.")
                return seen[1] | {"repeatabilityResult": "accepted"}
            if to in self.bad_numbers:
                item = {
                    "to": to,
                    "httpStatusCode": 400,
                    "errorMessage": "Invalid To phone number format.",
                    "successful": False,
                }
            else:
                message_id = self.message_id(next(self._ids))
                item = {
                    "to": to,
                    "messageId": message_id,
                    "httpStatusCode": 202,
                    "successful": True,
                }
                self.messages.append(
                    {
                        "to": to,
                        "from": request["from"],
                        "message": request["message"],
                        "id": message_id,
                    }
                )
            self._results[(request_id, first_sent)] = (content.encode(), item)
        return item | {"repeatabilityResult": "accepted"}

    def authentication_problems(self, request: Request) -> list[str]:
        """What is wrong with a request's HMAC signature or bearer token."""
        authorization = request.headers.get("Authorization", "")
        if self.identity is not None:
            token = authorization.removeprefix("Bearer ")
            return [] if token in self.identity.issued else [f"unknown bearer token {token!r}"]
        assert self.key is not None
        found = []
        body = request.get_data()
        content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if request.headers.get("x-ms-content-sha256") != content_hash:
            found.append("x-ms-content-sha256 is not the hash of the body received")
        date = request.headers.get("x-ms-date", "")
        try:
            when = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            found.append(f"x-ms-date {date!r} is not an HTTP date")
        else:
            if formatdate(when.timestamp(), usegmt=True) != date:
                found.append(f"x-ms-date {date!r} is not in the English RFC 1123 form")
            if abs((datetime.now(UTC) - when).total_seconds()) > 900:
                found.append(f"x-ms-date {date!r} is more than 15 minutes off")
        signed = (
            f"{request.method}\n{request.environ['RAW_URI']}\n"
            f"{date};{request.headers.get('Host')};{request.headers.get('x-ms-content-sha256')}"
        )
        signature = base64.b64encode(hmac.new(self.key, signed.encode(), hashlib.sha256).digest())
        expected = (
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
            + signature.decode()
        )
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            found.append("the HMAC signature does not match")
        return found


def _rejected(to: str, status: int, message: str) -> dict[str, Any]:
    return {
        "to": to,
        "httpStatusCode": status,
        "repeatabilityResult": "rejected",
        "errorMessage": message,
        "successful": False,
    }
