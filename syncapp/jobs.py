"""Background sync: what the worker runs and when. The tasks in syncapp/tasks.py only load rows and call here.

- The poll (a schedule, every SYNC_POLL_INTERVAL_MINUTES) queues one task per organization that is due;
  that task lists Raynet once for the organization and queues one task per mailbox with its share of the
  listing (`organization_fan_out`), so the mailboxes sync in parallel on the workers.
- `mapping_sync_request` is how a notification, a webhook, the portal or an admin asks for a run of one
  mailbox. Requests are coalesced on the mapping row (`sync_requested_at`): a burst gives one run, and a
  request that comes while the mailbox syncs gives exactly one more run after it.
- A run that failed on a passing error is tried again at the time the API asked for (Retry-After, kept
  in UserMapping.not_before) or after a backoff; a permanent error stops the connection (the engine
  records it) and nothing is retried until an admin changes something.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from syncapp.models import ConnectionStatus, Organization, RaynetConnection, SyncLogEntry, SyncRun, UserMapping
from syncapp.providers.base import ProviderError
from syncapp.sync.deletions import reported_deleted
from syncapp.sync.service import (
    decoded_row,
    failed_run,
    listing_shares,
    mailbox_lock,
    make_clients,
    not_ready_reason,
    organization_listing,
    sync_mapping,
)

logger = logging.getLogger("syncapp.jobs")

# A retry of a failed run waits at least this long, doubled after each further failure in a row, up to the cap.
RETRY_BACKOFF = timedelta(minutes=1)
RETRY_BACKOFF_MAX = timedelta(minutes=30)
# Part of the daily Raynet budget the poll leaves for notifications, webhooks and the admins' "sync now".
BUDGET_RESERVE = 0.1
# Raynet requests one poll of an organization costs: two change listings, the deletion id scan, a few reads.
POLL_BASE_COST = 6


def mapping_sync_request(*, mapping: UserMapping, trigger: str, full: bool = False) -> bool:
    """Ask for a run of one mailbox. Returns whether a task was queued (False: one already waits for it).

    A share of the poll's listing waiting for the run is dropped: the change this request reports may be
    newer than the listing, so the run lists Raynet itself (syncapp/sync/service.py fetch_raynet_changes)."""
    now = timezone.now()
    pending = UserMapping.objects.filter(pk=mapping.pk)
    pending.update(
        **({"sync_request_full": True} if full else {}), sync_request_changes=None, sync_request_heard_at=now
    )
    return queue_claimed(mapping, pending.filter(sync_requested_at__isnull=True), now=now, trigger=trigger)


def mapping_poll_request(*, mapping: UserMapping, share: dict | None, trigger: str) -> bool:
    """The poll's request for a run of one mailbox, with the mailbox's share of the organization's listing
    (service.listing_shares; None: the run reads its window). The share is kept only when no other request
    came after the listing was read; the records it asks to check add to those already waiting."""
    now = timezone.now()
    pending = UserMapping.objects.filter(pk=mapping.pk)
    if share is not None:
        checks = share.pop("checks")
        read_at = datetime.fromisoformat(share["read_at"])
        pending.filter(Q(sync_request_heard_at__isnull=True) | Q(sync_request_heard_at__lte=read_at)).update(
            sync_request_changes=share
        )
        if checks:
            checks_add(mapping, checks)
    return queue_claimed(mapping, pending.filter(sync_requested_at__isnull=True), now=now, trigger=trigger)


def raynet_deletion_request(*, mapping: UserMapping, entity: str, record_id: int) -> bool:
    """A Raynet webhook reported a deleted record: the owner's next run looks it up (404 confirms) without
    waiting for the poll. Many deletions before that run starts are checked by that one run."""
    checks_add(mapping, [[entity, record_id]])
    return mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)


def checks_add(mapping: UserMapping, records: list[list]) -> None:
    with transaction.atomic():
        row = UserMapping.objects.select_for_update().filter(pk=mapping.pk).values("sync_request_checks").first()
        if row is None:
            return
        waiting = row["sync_request_checks"] or []
        added = [record for record in records if record not in waiting]
        if added:
            UserMapping.objects.filter(pk=mapping.pk).update(sync_request_checks=waiting + added)


def queue_claimed(mapping: UserMapping, unclaimed, *, now: datetime, trigger: str) -> bool:
    claimed = unclaimed.update(sync_requested_at=now, sync_request_trigger=trigger)
    if claimed:
        async_task("syncapp.tasks.sync_mapping_task", mapping.pk, task_name=f"sync mapping {mapping.pk}")
    return bool(claimed)


def organization_sync_request(*, organization: Organization, trigger: str) -> None:
    """Ask for a run of every enabled mailbox of the organization (one Raynet listing for all)."""
    async_task(
        "syncapp.tasks.sync_organization_task",
        organization.pk,
        trigger,
        task_name=f"sync organization {organization.pk}",
    )


def organization_fan_out(*, organization: Organization, trigger: str) -> list[SyncRun]:
    """The organization's task: list Raynet once for all its mailboxes, then queue one task per mailbox with
    its share, so the mailboxes sync in parallel on the workers. Returns the runs of a failed listing."""
    mappings = list(organization.mappings.filter(enabled=True).order_by("pk"))
    if not mappings or not organization.policy.sync_enabled:
        return []
    shares: dict[int, dict] = {}
    if not not_ready_reason(mappings[0]):  # else each mailbox's run records why nothing can be read
        raynet = make_clients(organization)[0]
        try:
            listing = organization_listing(organization=organization, mappings=mappings, raynet=raynet)
        except ProviderError as error:
            runs = [failed_run(m, trigger, error) for m in mappings]
            for mapping in mappings:
                schedule_retry(mapping=mapping)
            return runs
        shares = listing_shares(organization=organization, listing=listing)
    for mapping in mappings:
        mapping_poll_request(mapping=mapping, share=shares.get(mapping.pk), trigger=trigger)
    return []


@dataclass(frozen=True)
class MailboxRequest:
    trigger: str
    full: bool
    changes: dict | None  # the poll's share: {"read_at", "rows"}
    checks: list[list]  # [type, id] of Raynet records to look up


def mapping_requested_runs(*, mapping: UserMapping) -> list[SyncRun]:
    """Run the mailbox while a request is pending; return the runs. Called by the worker's task.

    The mailbox lock is taken around the claim and the run, and the pending flag is checked again after the
    lock is let go: a request made while another worker held the lock is run by whichever gets it next.
    """
    runs: list[SyncRun] = []
    while True:
        with mailbox_lock(mapping.pk) as locked:
            if not locked:
                return runs  # the holder sees the request when it lets the lock go
            while (request := claim_request(mapping.pk)) is not None:
                run = requested_run(mapping, request)
                runs.append(run)
                if run.status == SyncRun.Status.FAILED:
                    schedule_retry(mapping=mapping)
        if not UserMapping.objects.filter(pk=mapping.pk, sync_requested_at__isnull=False).exists():
            return runs


def requested_run(mapping: UserMapping, request: MailboxRequest) -> SyncRun:
    rows, read_at = None, None
    if request.changes is not None:
        rows = [decoded_row(row) for row in request.changes["rows"]]
        read_at = datetime.fromisoformat(request.changes["read_at"])
    checks = [(entity, int(record_id)) for entity, record_id in request.checks]
    return sync_mapping(
        mapping=mapping,
        trigger=request.trigger,
        full=request.full,
        raynet_changes=rows,
        id_scan=reported_deleted(records=checks, read_at=read_at) if checks else None,
        read_at=read_at,
        lock_held=True,
    )


# Takes the pending request off the row and returns it as it was, in one statement (an UPDATE's RETURNING
# gives the new values; the locked subquery gives the old ones): later requests set it again and queue a task.
CLAIM_SQL = """
    UPDATE syncapp_usermapping AS mapping
    SET sync_requested_at = NULL, sync_request_full = false, sync_request_trigger = '',
        sync_request_changes = NULL, sync_request_heard_at = NULL, sync_request_checks = '[]'::jsonb
    FROM (
        SELECT id, sync_request_trigger, sync_request_full, sync_request_changes, sync_request_checks
        FROM syncapp_usermapping WHERE id = %s AND sync_requested_at IS NOT NULL FOR UPDATE
    ) AS pending
    WHERE mapping.id = pending.id
    RETURNING pending.sync_request_trigger, pending.sync_request_full, pending.sync_request_changes,
        pending.sync_request_checks
"""


def claim_request(mapping_id: int) -> MailboxRequest | None:
    with connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL, [mapping_id])
        row = cursor.fetchone()
    if row is None:
        return None
    trigger, full, changes, checks = row
    # psycopg hands jsonb over decoded already; a str is tolerated for other drivers' sake.
    changes, checks = (json.loads(v) if isinstance(v, str) else v for v in (changes, checks))
    return MailboxRequest(trigger=trigger or SyncRun.Trigger.SCHEDULE, full=full, changes=changes, checks=checks or [])


def schedule_retry(*, mapping: UserMapping) -> datetime | None:
    """A failed run is tried again when the API allows it, unless the failure needs an admin (then None)."""
    mapping.refresh_from_db()
    organization = mapping.organization
    connections = [getattr(organization, "raynet", None), getattr(organization, "microsoft", None)]
    if any(c is None or c.status == ConnectionStatus.DISABLED for c in connections):
        return None  # a permanent error stopped a connection: nothing is retried until an admin acts
    now = timezone.now()
    at = max(mapping.not_before or now, now + retry_backoff(mapping))
    schedule(
        "syncapp.tasks.retry_mapping_task",
        mapping.pk,
        name=f"retry mapping {mapping.pk} at {at:%Y-%m-%d %H:%M:%S}",
        schedule_type=Schedule.ONCE,
        next_run=at,
        repeats=1,
    )
    return at


def retry_backoff(mapping: UserMapping) -> timedelta:
    """1, 2, 4 … minutes by the failed runs in a row (the latest ones), at most RETRY_BACKOFF_MAX."""
    recent = mapping.runs.exclude(status=SyncRun.Status.SKIPPED).order_by("-started_at")[:6]
    failures = 0
    for run in recent.values_list("status", flat=True):
        if run != SyncRun.Status.FAILED:
            break
        failures += 1
    return min(RETRY_BACKOFF * 2 ** max(failures - 1, 0), RETRY_BACKOFF_MAX)


# --- the poll -----------------------------------------------------------------------------------------


def poll_cycle(*, now: datetime | None = None) -> list[int]:
    """Queue a sync of every organization whose turn has come; returns their ids."""
    now = now or timezone.now()
    due = []
    connections = RaynetConnection.objects.filter(
        organization__policy__sync_enabled=True, organization__mappings__enabled=True
    ).distinct()
    for raynet in connections.select_related("organization__microsoft"):
        raynet.show_pause()
        microsoft = getattr(raynet.organization, "microsoft", None)
        if microsoft is None or raynet.is_paused() or ConnectionStatus.DISABLED in (raynet.status, microsoft.status):
            continue  # a spent budget waits for its reset; a stopped or missing connection for an admin
        if raynet.next_poll_at is not None and raynet.next_poll_at > now:
            continue
        enabled = raynet.organization.mappings.filter(enabled=True).count()
        interval = poll_interval(connection=raynet, mailboxes=enabled, now=now)
        RaynetConnection.objects.filter(pk=raynet.pk).update(next_poll_at=now + interval)
        organization_sync_request(organization=raynet.organization, trigger=SyncRun.Trigger.SCHEDULE)
        due.append(raynet.organization_id)
    return due


def poll_interval(*, connection: RaynetConnection, mailboxes: int, now: datetime | None = None) -> timedelta:
    """The usual interval, stretched so that the polls until the budget's reset fit in what is left of it.

    The budget is daily (X-Ratelimit-Reset): with `remaining` requests and `t` until the reset, a poll
    costing `cost` may run every t / (usable / cost); a reserve is kept for notifications and manual runs.
    """
    now = now or timezone.now()
    base = timedelta(minutes=settings.SYNC_POLL_INTERVAL_MINUTES)
    limit, remaining, reset_at = (
        connection.rate_limit_limit,
        connection.rate_limit_remaining,
        connection.rate_limit_reset_at,
    )
    if not limit or remaining is None or reset_at is None or reset_at <= now:
        return base  # nothing known yet, or a fresh day: the usual pace
    usable = remaining - limit * BUDGET_RESERVE
    cost = POLL_BASE_COST + 2 * mailboxes
    if usable < cost:
        return reset_at - now  # only the reserve is left: the next poll comes after the reset
    return max(base, (reset_at - now) / (usable / cost))


# --- housekeeping -------------------------------------------------------------------------------------


def log_retention_cleanup(*, now: datetime | None = None) -> int:
    """Delete sync runs (and their log entries) older than LOG_RETENTION_DAYS; returns the runs deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOG_RETENTION_DAYS)
    SyncLogEntry.objects.filter(run__started_at__lt=cutoff).delete()
    deleted, _ = SyncRun.objects.filter(started_at__lt=cutoff).delete()
    return deleted


def daily_window_read() -> int:
    """Once a day every enabled mailbox reads its whole window (the window moves; the engine's needs_window_read)."""
    count = 0
    for organization in Organization.objects.filter(policy__sync_enabled=True, mappings__enabled=True).distinct():
        organization_sync_request(organization=organization, trigger=SyncRun.Trigger.SCHEDULE)
        count += 1
    return count


SCHEDULES = {
    # name: (function, schedule type, minutes between runs or None)
    "raysync: poll": ("syncapp.tasks.poll_task", Schedule.MINUTES, "SYNC_POLL_INTERVAL_MINUTES"),
    "raysync: renew Graph subscriptions": ("syncapp.tasks.renew_subscriptions_task", Schedule.HOURLY, None),
    "raysync: log retention cleanup": ("syncapp.tasks.log_retention_task", Schedule.DAILY, None),
    "raysync: daily window read": ("syncapp.tasks.daily_window_task", Schedule.DAILY, None),
}


def schedules_setup() -> list[str]:
    """Create or update the product's schedules by name; running it again changes nothing. Returns the names."""
    for name, (func, schedule_type, minutes_setting) in SCHEDULES.items():
        minutes = getattr(settings, minutes_setting) if minutes_setting else None
        # A daily job first runs after the next local midnight (when the sync window moves on).
        first = next_midnight() if schedule_type == Schedule.DAILY else timezone.now()
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1},
            create_defaults={
                "func": func,
                "schedule_type": schedule_type,
                "minutes": minutes,
                "repeats": -1,
                "next_run": first,
            },
        )
    return list(SCHEDULES)


def next_midnight() -> datetime:
    local = timezone.localtime()
    return (local + timedelta(days=1)).replace(hour=0, minute=5, second=0, microsecond=0)
