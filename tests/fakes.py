"""Fakes of the outside world on 127.0.0.1: a Twilio Messages API over pytest-httpserver."""

from __future__ import annotations

import itertools
import json
import threading
import urllib.request
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
