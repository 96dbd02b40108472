"""A sync run's trace: one log entry per decision, with counts per direction and action.

Entries are kept until the applier commits its batch (Applier.flush: the batch's link updates and its
entries in one transaction, one INSERT for the entries) or the run finishes, not written one by one.
A run killed before that loses the entries of its last batch only; what its writes did is found and
logged again by the next run (the recovery in apply.py).
"""

from __future__ import annotations

from django.utils import timezone

from syncapp.models import EventLink, SyncLogEntry, SyncRun
from syncapp.sync.reasons import Reason, render_reason_en

TO_OUTLOOK = SyncLogEntry.Direction.TO_OUTLOOK
TO_RAYNET = SyncLogEntry.Direction.TO_RAYNET
NO_DIRECTION = SyncLogEntry.Direction.NONE


class RunLog:
    def __init__(self, run: SyncRun) -> None:
        self.run = run
        self.errors = 0
        self.unreadable = 0
        self.pending: list[SyncLogEntry] = []

    def record(
        self,
        action: str,
        reason: Reason,
        params: dict | None = None,
        *,
        direction: str = NO_DIRECTION,
        link: EventLink | None = None,
        raynet: tuple[str, int | None] | None = None,
        outlook_id: str = "",
        details: dict | None = None,
    ) -> None:
        raynet_type, raynet_id = raynet or ((link.raynet_type, link.raynet_id) if link else ("", None))
        params = params or {}
        self.pending.append(
            SyncLogEntry(
                organization_id=self.run.organization_id,
                run=self.run,
                link=link if link is not None and link.pk else None,
                raynet_type=raynet_type or "",
                raynet_id=raynet_id if isinstance(raynet_id, int) else None,
                outlook_event_id=outlook_id or (link.outlook_event_id if link else "") or "",
                direction=direction,
                action=action,
                reason=render_reason_en(reason, params),
                reason_code=reason.value,
                reason_params=params,
                details=details or {},
            )
        )
        counts = self.run.counts.setdefault(direction, {})
        counts[action] = counts.get(action, 0) + 1
        if action == "error":
            self.errors += 1
        if reason == Reason.UNREADABLE:
            self.unreadable += 1

    def flush(self) -> None:
        """Write the entries kept so far (inside the applier's batch transaction, or at the end)."""
        if self.pending:
            SyncLogEntry.objects.bulk_create(self.pending)
            self.pending = []

    def finish(self, status: str | None = None, error: str = "") -> SyncRun:
        self.flush()
        run = self.run
        run.status = status or (SyncRun.Status.PARTIAL if self.errors else SyncRun.Status.OK)
        run.error = error
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at", "counts"])
        return run
