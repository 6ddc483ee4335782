"""The Dataverse Web API as the provisioning steps see it: reads, writes, dry runs, errors.

Exceptions::

    ProvisionError          a step cannot go on; what is done stays, rerun to resume
     ├─ AccessDenied        401/403: names the privilege or role that is missing
     ├─ WebApiError         any other error answer, with Dataverse's code and message
     └─ Conflict            a record exists with a value that cannot be changed in place
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from azure.core.credentials import TokenCredential

API = "/api/data/v9.2/"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 120.0
"""Creating a table or uploading an assembly takes a while; nothing waits longer."""
ATTEMPTS = 4
RETRY_AFTER_CAP = 60.0
_TOKEN_MARGIN = 300
_RETRIED = (429, 502, 503, 504)

Json = dict[str, Any]


class ProvisionError(Exception):
    """A step could not finish; the records written before it stay in place."""


class AccessDenied(ProvisionError):
    """Dataverse refused the call (401/403)."""


class WebApiError(ProvisionError):
    """Dataverse answered with an error other than 401/403."""


class Conflict(ProvisionError):
    """A record exists with a value that cannot be changed in place."""


@dataclass(frozen=True)
class Write:
    """One write the run made (or, dry, would make)."""

    method: str
    path: str
    body: Any
    solution: str | None = None

    def describe(self, secrets: tuple[str, ...]) -> str:
        """One line: method, path and the body with secret values masked."""
        text = f"{self.method} {self.path}"
        if self.solution:
            text += f" [MSCRM.SolutionUniqueName: {self.solution}]"
        if self.body is not None:
            body = json.dumps(self.body, sort_keys=True)
            for secret in secrets:
                body = body.replace(secret, "***")
            text += " " + _shorten(body)
        return text


def _shorten(text: str, limit: int = 400) -> str:
    # Assembly content is base64 of a whole DLL: keep the plan readable.
    text = re.sub(r'"content": "[A-Za-z0-9+/=]{64,}"', '"content": "<base64 of the DLL>"', text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class WebApi:
    """Calls {url}/api/data/v9.2 with a bearer token for ``{url}/.default``."""

    url: str
    credential: TokenCredential
    dry_run: bool = False
    session: requests.Session = field(default_factory=requests.Session)
    secrets: tuple[str, ...] = ()
    report: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    writes: list[Write] = field(default_factory=list)
    _token: str = ""
    _expires_on: int = 0

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Json | None:
        """GET ``path`` (relative to the API root); None on 404."""
        response = self._send("GET", path, params=params)
        if response.status_code == 404:
            return None
        body: Json = response.json()
        return body

    def rows(self, entity_set: str, filter_: str, select: str, **extra: str) -> list[Json]:
        """The rows of ``entity_set`` matching an OData ``$filter``."""
        body = self.get(entity_set, {"$filter": filter_, "$select": select, **extra})
        rows: list[Json] = body["value"] if body else []
        return rows

    def write(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        solution: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response | None:
        """POST/PATCH/PUT; in a dry run, only reports it. Returns the answer (None when dry)."""
        write = Write(method, path, body, solution)
        self.writes.append(write)
        self.report(("would " if self.dry_run else "") + write.describe(self.secrets))
        if self.dry_run:
            return None
        extra = dict(headers or {})
        if solution:
            extra["MSCRM.SolutionUniqueName"] = solution
        return self._send(method, path, json_body=body, headers=extra)

    def call(self, path: str, body: Json) -> Json:
        """POST an action that returns data (never dry: used only to verify)."""
        response = self._send("POST", path, json_body=body)
        answer: Json = response.json() if response.content else {}
        return answer

    def _headers(self) -> dict[str, str]:
        now = int(time.time())
        if not self._token or now > self._expires_on - _TOKEN_MARGIN:
            token = self.credential.get_token(f"{self.url}/.default")
            self._token, self._expires_on = token.token, token.expires_on
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = self.url + API + path
        for attempt in range(1, ATTEMPTS + 1):
            sent = {**self._headers(), **(headers or {})}
            data = None
            if json_body is not None:
                sent["Content-Type"] = "application/json; charset=utf-8"
                data = json.dumps(json_body).encode("utf-8")
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=sent,
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                )
            except requests.RequestException as error:
                raise WebApiError(f"{method} {path}: Dataverse did not answer ({error})") from error
            if response.status_code in _RETRIED and attempt < ATTEMPTS:
                self.sleep(_retry_after(response, attempt))
                continue
            if response.status_code < 400 or (response.status_code == 404 and method == "GET"):
                return response
            raise _error(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _retry_after(response: requests.Response, attempt: int) -> float:
    try:
        return min(RETRY_AFTER_CAP, max(0.0, float(response.headers["Retry-After"])))
    except (KeyError, ValueError):
        return float(2**attempt)


_PRIVILEGE = re.compile(r"\bprv[A-Za-z0-9_]+")


def _error(method: str, path: str, response: requests.Response) -> ProvisionError:
    try:
        detail = response.json()["error"]
        code, message = str(detail.get("code", "")), str(detail.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", response.text[:300]
    where = f"{method} {path}: HTTP {response.status_code}"
    if code:
        where += f" {code}"
    if response.status_code == 401:
        return AccessDenied(
            f"{where}: Dataverse refused the sign-in. The identity running this command must "
            "be a user of the environment (for a service principal: an application user) "
            "with the System Administrator role; with `az login`, sign in to the tenant "
            f"of the environment. ({message})"
        )
    if response.status_code == 403:
        privilege = _PRIVILEGE.search(message)
        missing = (
            f"the privilege {privilege.group(0)} is missing"
            if privilege
            else "a privilege is missing"
        )
        return AccessDenied(
            f"{where}: {missing}. Run this command as a System Administrator of the "
            f"environment (or add a role holding {privilege.group(0) if privilege else 'it'} "
            f"to the identity that runs it). ({message})"
        )
    return WebApiError(f"{where}: {message}")
