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
