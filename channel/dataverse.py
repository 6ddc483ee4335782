"""Dataverse Web API: the two channel actions and WhoAmI, authenticated with managed identity.

Both actions take one parameter whose value is a JSON *string* (not a nested object),
with a capital L in ``PayLoad``: see Microsoft Learn, "Define custom APIs for SMS
channel" (custom-sms-custom-api).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import requests

from channel import telemetry
from channel.budget import Budget
from channel.contracts import DeliveryNotification, InboundMessage
from channel.errors import DataverseUnavailable
from channel.phone import mask
from channel.retry import MAX_ATTEMPTS, backoff, never_sent, parse_retry_after

if TYPE_CHECKING:
    from channel.identity import TokenSource

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2"
NOTIFICATION_ACTION = "msdyn_D365ChannelsNotification"
INBOUND_ACTION = "msdyn_D365ChannelsInbound"
CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 15.0
MAX_CONCURRENT_CALLS = 16
"""Dataverse allows 52 concurrent requests per user (our identity) per web server; stay
well under it so a burst of webhooks meets our queue, not Dataverse's 429."""

_RETRYABLE_STATUSES = {502, 503, 504}


class Dataverse(Protocol):
    """Where notifications and inbound messages go: the Web API, or the log in dev mode."""

    def organization_id(self, budget: Budget) -> str:
        """The organization id the contracts carry."""
        ...

    def notify(self, notification: DeliveryNotification, budget: Budget) -> None:
        """Call ``msdyn_D365ChannelsNotification`` once."""
        ...

    def deliver_inbound(self, message: InboundMessage, budget: Budget) -> None:
        """Call ``msdyn_D365ChannelsInbound`` once."""
        ...


class DataverseClient:
    """A Dataverse environment's Web API, reached with the process's tokens and session."""

    def __init__(
        self,
        url: str,
        tokens: TokenSource,
        *,
        session: requests.Session,
        organization_id: str | None = None,
        max_concurrent_calls: int = MAX_CONCURRENT_CALLS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.scope = f"{self.url}/.default"
        self._tokens = tokens
        self._session = session
        self._organization_id = organization_id
        self._organization_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent_calls)
        self._sleep = sleep

    def organization_id(self, budget: Budget) -> str:
        """The organization id: from settings, else read once from WhoAmI and kept."""
        if self._organization_id is None:
            # Bounded wait: during an outage, callers must not queue behind each other's
            # WhoAmI retries past their own budgets.
            if not self._organization_lock.acquire(timeout=budget.remaining()):
                raise DataverseUnavailable("Dataverse's WhoAmI is still being read; retry")
            try:
                if self._organization_id is None:
                    who = self._call("GET", "WhoAmI", None, budget)
                    organization = who.get("OrganizationId")
                    if not isinstance(organization, str) or not organization:
                        raise DataverseUnavailable("WhoAmI answered without an OrganizationId")
                    self._organization_id = organization
            finally:
                self._organization_lock.release()
        return self._organization_id

    def notify(self, notification: DeliveryNotification, budget: Budget) -> None:
        """Report a final delivery state to Dataverse."""
        self._call(
            "POST", NOTIFICATION_ACTION, {"notificationPayLoad": notification.to_json()}, budget
        )

    def deliver_inbound(self, message: InboundMessage, budget: Budget) -> None:
        """Hand a customer's reply to Dataverse."""
        self._call("POST", INBOUND_ACTION, {"inboundPayLoad": message.to_json()}, budget)

    def _call(
        self, method: str, name: str, body: dict[str, str] | None, budget: Budget
    ) -> dict[str, Any]:
        """One Web API call with bounded retries: 429 honours Retry-After, 502-504 back off."""
        url = f"{self.url}{API_PATH}/{name}"
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            with telemetry.timed(
                f"dataverse {name}",
                telemetry.DATAVERSE_DURATION,
                telemetry.DATAVERSE_KEYS,
                {telemetry.DATAVERSE_ACTION: name, telemetry.ATTEMPT: attempt},
            ) as call:
                reply = self._send(method, url, data, budget)
                if reply is not None:
                    call.set({telemetry.HTTP_STATUS: reply.status_code})
                if reply is not None and 200 <= reply.status_code < 300:
                    call.set({telemetry.OUTCOME_CLASS: "ok"})
                    return _json(reply)
                if reply is None:
                    call.set({telemetry.OUTCOME_CLASS: "unreachable"})
                    wait, why = backoff(attempt), "Dataverse could not be reached"
                elif reply.status_code == 429:
                    retry_after = parse_retry_after(reply.headers.get("Retry-After"))
                    wait = retry_after if retry_after is not None else backoff(attempt)
                    why = "Dataverse is throttling our identity (429)"
                    call.set({telemetry.OUTCOME_CLASS: "throttled"})
                    call.set({telemetry.RETRY_AFTER: retry_after})
                elif reply.status_code in _RETRYABLE_STATUSES:
                    call.set({telemetry.OUTCOME_CLASS: "unavailable"})
                    wait, why = backoff(attempt), f"Dataverse answered {reply.status_code}"
                else:
                    call.set({telemetry.OUTCOME_CLASS: "refused"})
                    raise _error(reply, name)
            if attempt >= MAX_ATTEMPTS or not budget.allows(wait, then=0.5):
                log.warning("%s not delivered: %s", name, why)
                raise DataverseUnavailable(
                    f"{why}; giving up within the time budget", retry_after=max(1, round(wait))
                )
            log.info("%s: %s; retrying in %.1f s", name, why, wait)
            self._sleep(wait)

    def _send(
        self, method: str, url: str, data: bytes | None, budget: Budget
    ) -> requests.Response | None:
        """Send once; None when the connection failed before the request left."""
        token = self._tokens.token(self.scope)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }
        if data is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if not self._slots.acquire(timeout=budget.remaining()):
            raise DataverseUnavailable("too many Dataverse calls in flight in this process")
        try:
            return self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=budget.timeout(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        except requests.RequestException as exc:
            if never_sent(exc):
                return None
            # The call may have been acted on: a blind retry could notify twice.
            raise DataverseUnavailable(
                f"Dataverse did not answer ({type(exc).__name__}); not retried in this call",
                maybe_received=True,
            ) from None
        finally:
            self._slots.release()


class LoggedDataverse:
    """Dev mode: Dataverse calls written to the log (masked) instead of being made."""

    def __init__(self, organization_id: str | None = None) -> None:
        self._organization_id = organization_id or "00000000-0000-0000-0000-000000000000"

    def organization_id(self, budget: Budget) -> str:
        """The configured organization id, or an all-zero GUID."""
        return self._organization_id

    def notify(self, notification: DeliveryNotification, budget: Budget) -> None:
        """Log the notification that would be sent."""
        log.info(
            "dev mode: %s for request %s (%s from %s): %s",
            NOTIFICATION_ACTION,
            notification.RequestId,
            notification.MessageId,
            mask(notification.From),
            notification.Status,
        )

    def deliver_inbound(self, message: InboundMessage, budget: Budget) -> None:
        """Log the inbound message that would be delivered (never its text)."""
        log.info(
            "dev mode: %s from %s to %s, %d message part(s)",
            INBOUND_ACTION,
            mask(message.From),
            mask(message.To),
            len(message.Message),
        )


def _json(reply: requests.Response) -> dict[str, Any]:
    if not reply.content:
        return {}
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(reply: requests.Response, name: str) -> DataverseUnavailable:
    """A clear error from Dataverse's ``{"error": {"code", "message"}}`` body."""
    error = _json(reply).get("error")
    code = message = None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    code = _printable(code)
    # Dataverse's messages may quote the payload (a customer's number, a reply's text):
    # the ERROR line carries the code and the privileges a message names, nothing else.
    log.error(
        "%s failed: HTTP %s, Dataverse error %s%s",
        name,
        reply.status_code,
        code,
        _privileges(message),
    )
    log.debug("%s error message: %s", name, message)
    return DataverseUnavailable(
        f"Dataverse refused {name}: HTTP {reply.status_code}, error {code or 'unknown'}",
        retry_after=60,
        code=code or f"HTTP {reply.status_code}",
    )


_PRIVILEGE = re.compile(r"\bprv[A-Za-z0-9_]{1,100}")
"""Dataverse names privileges ``prv<Verb><entity>`` (e.g. ``prvWritemsdyn_channeldefinition``)."""
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,40}")


def _privileges(message: object) -> str:
    """``; missing privilege prvX, prvY`` when the message names privileges, else ``""``."""
    if not isinstance(message, str):
        return ""
    named = list(dict.fromkeys(_PRIVILEGE.findall(message)))[:5]
    return f"; privilege {', '.join(named)}" if named else ""


def _printable(code: object) -> str | None:
    """The error code if it looks like one (``0x80040220``), else None: it is logged."""
    if isinstance(code, str | int) and _CODE.fullmatch(str(code)):
        return str(code)
    return None
