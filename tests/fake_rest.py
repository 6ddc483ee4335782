"""What the fakes of REST providers (Vonage, Telnyx, Sinch, Plivo) share.

Each fake takes POSTs at its ``path`` on a pytest-httpserver, records them in ``posts``,
answers from a ``script`` when a test scripted one, and otherwise takes the message and
answers as the provider would, ``slow``ed when a test asked (held until ``release`` is
set or the delay runs out). What it refuses (wrong credentials) goes to ``rejected``,
which every fixture expects empty.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

Post = TypeVar("Post")


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer of ``status``."""
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class ScriptedFake(Generic[Post]):
    """The state and script of a fake provider API; subclasses answer in ``handle``."""

    path: ClassVar[str]

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.base_url = server.url_for("/").rstrip("/")
        self.posts: list[Post] = []
        """Every POST with our credentials, taken or answered from the script."""
        self.rejected: list[str] = []
        """What broke the fake's checks: requests refused for their credentials."""
        self.script: list[Callable[[Post], Response]] = []
        self.release = threading.Event()
        self._slow: list[float] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        server.expect_request(self.path, method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        """The provider's answer to one POST."""
        raise NotImplementedError

    def respond(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        """A JSON answer as this provider writes it."""
        return json_response(status, body, headers)

    def answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next POST with ``status`` and ``body`` (nothing is sent)."""
        self.script.append(lambda post: self.respond(status, body, headers))

    def slow(self, seconds: float, count: int = 1) -> None:
        """Take the next ``count`` unscripted POSTs at once, answer each ``seconds`` late."""
        self._slow.extend([seconds] * count)

    def refuse(self, why: str) -> None:
        """Note a request refused for its credentials."""
        with self._lock:
            self.rejected.append(why)

    def take(self, post: Post) -> tuple[Callable[[Post], Response] | None, float]:
        """Record ``post``; the scripted answer for it, or how late to answer it."""
        with self._lock:
            self.posts.append(post)
            scripted = self.script.pop(0) if self.script else None
            late = 0.0 if scripted or not self._slow else self._slow.pop(0)
        return scripted, late

    def wait(self, late: float) -> None:
        """Hold the answer ``late`` seconds, or until ``release`` is set."""
        if late:
            self.release.wait(late)
