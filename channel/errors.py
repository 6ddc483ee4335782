"""The channel's exceptions and what each one means as an HTTP answer.

ChannelError                      base: carries status, title and detail
├── BadRequest (400)              malformed JSON, missing or mistyped field; names the field
├── Unauthorized (401)            a webhook without its credential
├── Forbidden (403)               a webhook whose signature or secret is wrong
├── NotFound (404)                unknown provider id in a webhook route
├── RequestInFlight (409)         the same RequestId is being sent right now
├── PayloadTooLarge (413)         body over the limit
│   └── RecordTooLarge            a ledger record that the store cannot hold
├── RequestConflict (422)         the same RequestId with different content
├── NotImplementedYet (501)       a route whose capability has not landed
└── ServiceUnavailable (503)      try again later; carries Retry-After
    ├── NotConfigured             settings are missing or wrong; lists every problem
    ├── ProviderUnavailable       the provider provably did not take the message
    ├── StoreUnavailable          the message ledger did not answer within the budget
    ├── DataverseUnavailable      Dataverse did not take a call within the budget
    └── SendAmbiguous             the provider may have taken it; we will not re-POST blindly

Every subclass maps to exactly one HTTP answer in ``channel.http``; nothing else
decides statuses.
"""

from __future__ import annotations

from typing import ClassVar


class ChannelError(Exception):
    """Base class of every error the channel answers over HTTP."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer must carry."""
        return {}

    def extensions(self) -> dict[str, object]:
        """Extra members of the problem JSON."""
        return {}


class BadRequest(ChannelError):
    """The request body is not a valid contract; ``field`` names what is wrong."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field

    def extensions(self) -> dict[str, object]:
        """Name the offending field so a caller can fix it."""
        return {"field": self.field} if self.field else {}


class Unauthorized(ChannelError):
    """A webhook call carried no credential at all."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ChannelError):
    """A webhook call's signature or secret does not match: it is not from the provider."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(ChannelError):
    """Nothing answers at this route (e.g. an unknown provider id)."""

    status = 404
    title = "Not found"
    slug = "not-found"


class RequestInFlight(ChannelError):
    """Another call with the same RequestId is sending right now."""

    status = 409
    title = "Request in flight"
    slug = "request-in-flight"


class PayloadTooLarge(ChannelError):
    """The body exceeds the size the channel accepts."""

    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class RecordTooLarge(PayloadTooLarge):
    """A ledger record over what the store holds; inputs are bounded so that none is."""

    title = "Record too large"
    slug = "record-too-large"


class RequestConflict(ChannelError):
    """The RequestId was already used for a different message."""

    status = 422
    title = "RequestId reused with different content"
    slug = "request-conflict"


class NotImplementedYet(ChannelError):
    """The route exists but its capability has not been built."""

    status = 501
    title = "Not implemented"
    slug = "not-implemented"


class ServiceUnavailable(ChannelError):
    """A transient condition: the caller should retry after ``retry_after`` seconds."""

    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"

    def __init__(self, detail: str, *, retry_after: int = 30) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        """Tell the caller when to come back."""
        return {"Retry-After": str(self.retry_after)}


class NotConfigured(ServiceUnavailable):
    """The app's settings are missing or invalid."""

    title = "Channel not configured"
    slug = "not-configured"

    def __init__(self, problems: list[str], *, listed: bool = True) -> None:
        detail = (
            "; ".join(problems)
            if listed
            else "the channel is not configured to take this call; see GET /api/health"
        )
        super().__init__(detail, retry_after=60)
        self.problems = problems
        self.listed = listed

    def extensions(self) -> dict[str, object]:
        """List every configuration problem, in plain words (unless withheld)."""
        return {"problems": self.problems} if self.listed else {}

    def for_anonymous_caller(self) -> NotConfigured:
        """The same 503 without the problems: for callers not authenticated yet."""
        return NotConfigured(self.problems, listed=False)


class ProviderUnavailable(ServiceUnavailable):
    """The provider did not take the message (throttled or unreachable); safe to retry."""

    title = "SMS provider unavailable"
    slug = "provider-unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The message ledger could not be read or written in time (locked, unreachable)."""

    title = "Message ledger unavailable"
    slug = "ledger-unavailable"


class DataverseUnavailable(ServiceUnavailable):
    """Dataverse did not take the call within the budget; it may be retried later."""

    title = "Dataverse unavailable"
    slug = "dataverse-unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int = 30,
        code: str | None = None,
        maybe_received: bool = False,
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.code = code
        self.maybe_received = maybe_received
        """The request went out and no answer came back: Dataverse may have acted on it."""

    @property
    def refused(self) -> bool:
        """Dataverse answered with an error of its own (a refusal, not an outage)."""
        return self.code is not None


class SendAmbiguous(ServiceUnavailable):
    """The provider may have accepted the message; it will not be submitted again blindly."""

    title = "SMS submission outcome unknown"
    slug = "send-ambiguous"
