"""The forward_pending timer: forwards what could not be forwarded at once, then retention."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from channel.budget import Budget
from channel.dataverse import DataverseUnavailable
from channel.ledger.retention import sweep
from channel.webhooks import WebhookService

log = logging.getLogger(__name__)

FORWARD_BATCH = 200
"""Items forwarded per run at most: one run must end well before the next minute."""
RETENTION_BATCH = 500
"""Expired records removed per run at most; a backlog drains over the next runs."""
RUN_BUDGET_SECONDS = 45.0
"""A run every minute: leave room so two runs on one instance never overlap."""


@dataclass(frozen=True)
class TimerRun:
    """What one run of the timer did."""

    forwarded: int
    failed: int
    removed: int


def run_timer(service: WebhookService, *, retention_days: float) -> TimerRun:
    """Forward due outbox items oldest first (bounded), then remove expired records."""
    budget = Budget(RUN_BUDGET_SECONDS)
    forwarded = failed = 0
    for key in service.outbox.due(FORWARD_BATCH):
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
        except DataverseUnavailable as exc:
            failed += 1
            if exc.refused:  # about this item (or a privilege): the others may still pass
                continue
            # Dataverse is down or throttling us: the rest waits for the next run
            # rather than hammering it (the item's next attempt honours Retry-After).
            log.warning("forward_pending stopped after %s forwarded: %s", forwarded, exc.detail)
            break
        forwarded += 1
    cutoff = service.outbox.clock() - retention_days * 86400
    removed = sweep(service.outbox.store, cutoff=cutoff, limit=RETENTION_BATCH)
    if forwarded or failed or removed:
        log.info(
            "forward_pending: %s forwarded, %s failed, %s expired records removed",
            forwarded,
            failed,
            removed,
        )
    return TimerRun(forwarded, failed, removed)


def forward_pending() -> TimerRun | None:
    """The timer function's one call: a run with the process's runtime, if configured."""
    from channel.runtime import get_runtime

    runtime = get_runtime()
    if runtime.settings.problems:
        log.warning("forward_pending skipped: the channel is not configured (see health)")
        return None
    return run_timer(runtime.webhook_service, retention_days=runtime.settings.retention_days)
