"""The forward_pending timer: forwards what could not be forwarded at once, then retention."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from channel import telemetry
from channel.budget import Budget
from channel.errors import DataverseUnavailable
from channel.ledger.retention import sweep
from channel.webhooks import ChannelDefinitionUnknown, WebhookService

log = logging.getLogger(__name__)

FORWARD_BATCH = 200
"""Items forwarded per run at most: one run must end well before the next minute."""
RETENTION_SCAN_LIMIT = 1000
"""Ledger records retention examines per run at most (from where the last run stopped):
about 1.4 million a day, so a backlog drains over the next runs."""
RUN_BUDGET_SECONDS = 45.0
"""A run every minute: leave room so two runs on one instance never overlap."""
RETENTION_BUDGET_SECONDS = 10.0
"""Retention's share of a run (less when forwarding left less)."""


@dataclass(frozen=True)
class TimerRun:
    """What one run of the timer did."""

    forwarded: int
    failed: int
    removed: int
    waiting: int = 0
    """Replies that still wait for a channel definition."""
    scanned: int = 0
    """Records retention examined."""
    pending: int = 0
    """Outbox items pending when the run began."""
    dead: int = 0
    """Outbox items dead when the run began (each needs an operator)."""


def run_timer(service: WebhookService, *, retention_days: float) -> TimerRun:
    """Forward due outbox items oldest first (bounded), then remove expired records."""
    budget = Budget(RUN_BUDGET_SECONDS)
    forwarded = failed = waiting = 0
    survey = service.outbox.survey(FORWARD_BATCH)
    for key in survey.due:
        if not budget.allows(5.0):
            break
        lease = service.outbox.claim(key)
        if lease is None:  # forwarded or leased by another instance meanwhile
            continue
        # The lease outlives one call's time budget by a margin, not the run's 45 s: a
        # forward given the run's budget could outlast it, and a provider's retry could
        # then claim the item and forward it a second time. Give it what a webhook gets.
        item_budget = Budget(min(budget.remaining(), service.settings.budget_seconds))
        try:
            service.forward(lease, item_budget)
        except ChannelDefinitionUnknown:
            waiting += 1  # kept, no call made: it waits for an operator, not for Dataverse
            continue
        except DataverseUnavailable as exc:
            failed += 1
            if exc.refused:  # about this item (or a privilege): the others may still pass
                continue
            # Dataverse is down or throttling us: the rest waits for the next run
            # rather than hammering it (the item's next attempt honours Retry-After).
            log.warning("forward_pending stopped after %s forwarded: %s", forwarded, exc.detail)
            break
        forwarded += 1
    if waiting:
        log.warning(
            "forward_pending: %s replies wait for a channel definition: set "
            "CHANNEL_DEFINITION_ID, or send from the numbers they were sent to",
            waiting,
        )
    swept = sweep(
        service.outbox.store,
        now=service.outbox.clock(),
        retention_days=retention_days,
        limit=RETENTION_SCAN_LIMIT,
        budget=Budget(min(budget.remaining(), RETENTION_BUDGET_SECONDS)),
    )
    if forwarded or failed or swept.removed:
        log.info(
            "forward_pending: %s forwarded, %s failed, %s expired records removed",
            forwarded,
            failed,
            swept.removed,
        )
    return TimerRun(
        forwarded,
        failed,
        swept.removed,
        waiting=waiting,
        scanned=swept.scanned,
        pending=survey.stats.pending,
        dead=survey.stats.dead,
    )


def forward_pending() -> TimerRun | None:
    """The timer function's one call: a run with the process's runtime, if configured."""
    from channel.runtime import get_runtime

    runtime = get_runtime()
    if runtime.settings.problems:
        log.warning("forward_pending skipped: the channel is not configured (see health)")
        return None
    with telemetry.step("forward_pending") as step:
        run = run_timer(runtime.webhook_service, retention_days=runtime.settings.retention_days)
        step.set(
            {
                telemetry.FORWARDED: run.forwarded,
                telemetry.FAILED: run.failed,
                telemetry.WAITING: run.waiting,
                telemetry.REMOVED: run.removed,
                telemetry.PENDING: run.pending,
                telemetry.DEAD: run.dead,
            }
        )
    # Gauges from the scan the run made anyway: no read of the outbox per request.
    kind = {telemetry.LEDGER_KIND: runtime.settings.ledger_kind}
    telemetry.measure(telemetry.OUTBOX_PENDING, run.pending, kind)
    telemetry.measure(telemetry.OUTBOX_DEAD, run.dead, kind)
    return run
