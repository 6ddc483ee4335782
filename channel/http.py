"""azure.functions <-> the channel: reading requests, answering with contracts or problems."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import azure.functions as func

from channel import telemetry
from channel.budget import Budget
from channel.config import MAX_BODY_BYTES, Settings
from channel.envelope import read_outbound
from channel.errors import ChannelError, Forbidden, NotConfigured, PayloadTooLarge, Unauthorized
from channel.logs import log_unexpected
from channel.providers.base import Webhook, WebhookAdapter, WebhookReply
from channel.runtime import get_runtime

if TYPE_CHECKING:
    from channel.ledger.outbox import OutboxStats
    from channel.webhooks import WebhookService

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:d365-sms-channel:problem:"
FORWARDING_GUARANTEE = (
    "at least once: every final report and reply is kept until Dataverse took it; one is "
    "forwarded twice only when Dataverse acted on a call whose answer was lost (a timeout, "
    "a process stopped mid-call), and such a repeat is logged as a possible duplicate"
)
"""What health says forwarding promises (Dataverse has no idempotency key)."""
Handler = Callable[[func.HttpRequest], func.HttpResponse]


def problem(error: ChannelError) -> func.HttpResponse:
    """An ``application/problem+json`` answer for ``error`` (RFC 9457)."""
    body: dict[str, object] = {
        "type": PROBLEM_TYPE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **error.extensions(),
    }
    return func.HttpResponse(
        json.dumps(body),
        status_code=error.status,
        headers=error.headers,
        mimetype="application/problem+json",
    )


def answers_problems(handler: Handler) -> Handler:
    """Turn every exception of ``handler`` into a problem answer; nothing escapes as a 500."""

    @functools.wraps(handler)
    def guarded(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return handler(req)
        except ChannelError as exc:
            if exc.status >= 500:
                log.warning("%s answered %s: %s", handler.__name__, exc.status, exc.title)
            telemetry.note({telemetry.OUTCOME: exc.slug})
            return problem(exc)
        except Exception as exc:
            # The stack goes to the log (our code's frames, no request data); the
            # caller gets a plain problem with no detail of our internals.
            log_unexpected(log, handler.__name__, exc)
            error = ChannelError("an unexpected error occurred; see the app's log")
            telemetry.note(
                {telemetry.OUTCOME: error.slug, telemetry.ERROR_TYPE: type(exc).__name__}
            )
            return problem(error)

    return guarded


def traced(counter: telemetry.Instrument | None = None) -> Callable[[Handler], Handler]:
    """Record one span per call (continuing an incoming ``traceparent``); count its outcome."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def recorded(req: func.HttpRequest) -> func.HttpResponse:
            with telemetry.invocation(handler.__name__, req.headers) as call:
                response = handler(req)
                call.set({telemetry.HTTP_STATUS: response.status_code})
                if response.status_code >= 500:
                    call.failed()
            if counter is not None:
                telemetry.count(counter, call.subset(telemetry.OUTBOUND_KEYS))
            return response

        return recorded

    return decorate


def body_of(req: func.HttpRequest, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes."""
    body = req.get_body() or b""
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is {len(body)} bytes; the limit is {limit}")
    return body


@traced(telemetry.OUTBOUND_MESSAGES)
@answers_problems
def outbound(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/outbound: send one Dataverse payload, answer the response contract."""
    body = body_of(req)
    runtime = get_runtime()
    telemetry.note({telemetry.PROVIDER: runtime.settings.provider})
    runtime.require_configured()
    request = read_outbound(body)
    payload = request.payload
    telemetry.note(
        {
            telemetry.REQUEST_ID: payload.RequestId,
            telemetry.CHANNEL_DEFINITION: payload.ChannelDefinitionId,
        }
    )
    response = runtime.outbound.send(payload, Budget(runtime.settings.budget_seconds))
    telemetry.note({telemetry.OUTCOME: response.Status, telemetry.MESSAGE_ID: response.MessageId})
    return func.HttpResponse(request.reply(response), mimetype="application/json")


@traced()
@answers_problems
def delivery_report(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/delivery-report/{provider}: a provider's status callback."""
    return _webhook_call(req, "delivery-report", lambda service: service.delivery_report)


@traced()
@answers_problems
def inbound(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/inbound/{provider}: a customer's reply from a provider."""
    return _webhook_call(req, "inbound", lambda service: service.inbound)


def _webhook_call(
    req: func.HttpRequest,
    route: str,
    use_case: Callable[[WebhookService], Callable[[WebhookAdapter, Webhook, Budget], WebhookReply]],
) -> func.HttpResponse:
    """Run one webhook use case with the provider's adapter; the adapter verifies first."""
    runtime = get_runtime()
    try:
        adapter = runtime.webhooks(_provider_id(req))
        handle = use_case(runtime.webhook_service)
    except NotConfigured as exc:
        # The caller is not authenticated yet: which setting is missing is for the
        # operator (health, the log), not for whoever posts to a public route.
        log.warning("webhook refused, the channel is not configured: %s", exc.detail)
        telemetry.count(
            telemetry.WEBHOOK_REFUSALS,
            {telemetry.WEBHOOK_ROUTE: route, telemetry.REFUSAL: exc.slug},
        )
        raise exc.for_anonymous_caller() from None
    telemetry.note({telemetry.PROVIDER: adapter.id})
    try:
        # The provider's own size limit first: nothing of a body over it is parsed.
        hook = _webhook(req, adapter.max_body_bytes)
        reply = handle(adapter, hook, Budget(runtime.settings.budget_seconds))
    except (Unauthorized, Forbidden, PayloadTooLarge) as exc:
        # Refused webhooks leave a record of our own (a wrong CHANNEL_PUBLIC_URL makes
        # every Twilio callback a 403): the route and the reason, which names what was
        # wrong, never a signature, a secret or the body.
        log.warning(
            "webhook %s/%s refused with %s: %s",
            route,
            adapter.id,
            exc.status,
            exc.detail,
        )
        telemetry.count(
            telemetry.WEBHOOK_REFUSALS,
            {
                telemetry.WEBHOOK_ROUTE: route,
                telemetry.PROVIDER: adapter.id,
                telemetry.REFUSAL: exc.slug,
            },
        )
        raise
    telemetry.note({telemetry.OUTCOME: "acknowledged"})
    return func.HttpResponse(
        reply.body, status_code=reply.status, headers=dict(reply.headers), mimetype=reply.mimetype
    )


@answers_problems
def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: 200 when configured and ready, 503 with every problem otherwise."""
    runtime = get_runtime()
    report = health_report(runtime.settings)
    ready = not runtime.settings.problems
    if ready:
        try:
            stats = runtime.outbox.stats()
        except Exception as exc:  # health must answer even when the ledger does not
            # A ledger that cannot be read: nothing can be sent.
            log.warning("health could not read the message ledger: %s", type(exc).__name__)
            problem = (
                f"the message ledger ({runtime.settings.ledger_kind}) could not be read "
                f"({type(exc).__name__}); check CHANNEL_STORAGE_* or the ledger file"
            )
            report |= {
                "forwarding": {"error": problem},
                "status": "unavailable",
                "problems": [problem],
            }
            ready = False
        else:
            report["forwarding"] = _forwarding_health(stats)
    return func.HttpResponse(
        json.dumps(report),
        status_code=200 if ready else 503,
        mimetype="application/json",
    )


def health_report(settings: Settings) -> dict[str, object]:
    """What an operator needs to know about the configuration; never a secret."""
    return {
        "status": "unavailable" if settings.problems else "ok",
        "provider": settings.provider,
        # Every provider sending for this app (CHANNEL_PROVIDER and CHANNEL_ROUTES') and
        # each route: whether its provider's settings are complete.
        "providers": {
            provider_id: settings.provider_configured(provider_id)
            for provider_id in settings.providers_in_use
        },
        "routes": [
            {
                route.kind: route.shown(),
                "provider": route.provider,
                "configured": settings.provider_configured(route.provider),
            }
            for route in settings.routes.entries
        ],
        "ledger": settings.ledger_kind,
        "dataverse": {
            "configured": settings.dataverse_url is not None,
            "mode": "log" if settings.dataverse_dev_mode else "web-api",
        },
        "publicUrl": settings.public_url,
        "problems": list(settings.problems),
        "notes": list(settings.notes),
    }


def _forwarding_health(stats: OutboxStats) -> dict[str, object]:
    """What waits in the outbox: counts and ages; dead items need an operator."""
    return {
        "pending": stats.pending,
        "dead": stats.dead,
        "oldestPendingSeconds": stats.oldest_pending_seconds,
        "oldestDeadSeconds": stats.oldest_dead_seconds,
        "inDoubt": stats.in_doubt,
        "waitingForChannelDefinition": stats.waiting,
        "guarantee": FORWARDING_GUARANTEE,
    }


def _provider_id(req: func.HttpRequest) -> str:
    provider: str = req.route_params.get("provider") or ""
    return provider


def _webhook(req: func.HttpRequest, limit: int) -> Webhook:
    """The neutral view of a webhook call the provider adapters work on.

    ``limit`` is the adapter's: what its provider sends at most (413 beyond it).
    """
    return Webhook(
        method=req.method,
        url=req.url,
        headers={name.lower(): value for name, value in req.headers.items()},
        body=body_of(req, limit),
    )
