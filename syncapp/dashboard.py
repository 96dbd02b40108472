"""What the dashboard and the log show: read-only queries over one organization, a fixed number each."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from syncapp.models import EventLink, Organization, RaynetBudgetDay, SyncLogEntry, SyncRun, UserMapping

CHART_DAYS = 14
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 700, 180, 30
BUDGET_HEIGHT = 120
# Series of the chart: (direction, action) → label; errors are counted apart.
CHART_SERIES = [
    ("to_outlook", "created", "series-1"),
    ("to_outlook", "updated", "series-2"),
    ("to_outlook", "deleted", "series-3"),
    ("to_raynet", "created", "series-4"),
    ("to_raynet", "updated", "series-5"),
    ("to_raynet", "deleted", "series-6"),
]


def mappings_with_counts(organization: Organization):
    """Every mapping with its number of active linked events, in one query."""
    return organization.mappings.annotate(
        linked=Count("links", filter=Q(links__state=EventLink.State.ACTIVE))
    ).order_by("raynet_email")


@dataclass(frozen=True)
class FirstSyncProgress:
    """A first sync waiting for budget: events linked, events still to make in Raynet, and when it ends."""

    linked: int
    pending: int
    done_by: date  # the budget day (UTC) its last events should be made on


@dataclass(frozen=True)
class FirstSyncOutlook:
    """All first syncs of an organization that wait for budget."""

    pending: int
    cap: int  # Raynet requests a day first syncs may spend
    done_by: date
    mappings: dict[int, FirstSyncProgress]


def first_sync_outlook(organization: Organization, mappings: list[UserMapping]) -> FirstSyncOutlook | None:
    """When the first syncs that wait for budget should be done, from the events each has left, what a first
    sync has spent per event made, and the share a day: runs take the mailboxes in turn (by pk), so each
    day's share goes to the first ones. `mappings` carry `linked` (mappings_with_counts). Two queries."""
    raynet = getattr(organization, "raynet", None)
    waiting = sorted((m for m in mappings if m.first_sync_done_at is None and m.first_sync_pending), key=lambda m: m.pk)
    if raynet is None or not waiting:
        return None
    cost, cap, room, today = (
        raynet.first_sync_cost_per_event(),
        raynet.first_sync_cap,
        raynet.first_sync_room(),
        raynet.budget_day(),
    )
    progress, requests = {}, 0.0
    for mapping in waiting:
        requests += mapping.first_sync_pending * cost
        days = 0 if requests <= room else math.ceil((requests - room) / max(cap, 1))
        progress[mapping.pk] = FirstSyncProgress(
            mapping.linked, mapping.first_sync_pending, today + timedelta(days=days)
        )
    pending = sum(p.pending for p in progress.values())
    return FirstSyncOutlook(pending=pending, cap=cap, done_by=progress[waiting[-1].pk].done_by, mappings=progress)


def advice_for(mapping: UserMapping) -> str:
    """What the admin can do about a mapping's state, in plain words."""
    if mapping.health == UserMapping.Health.FLAGGED:
        return _("Check the held deletions below: confirm them, or reset the mailbox to re-read both sides.")
    if mapping.health == UserMapping.Health.ERROR:
        return _("Fix the cause named here, then press “Sync now”. Runs retry on their own meanwhile.")
    if mapping.health == UserMapping.Health.WARNING:
        return _("Syncing continues; if this stays, check the connection pages.")
    return ""


def next_scheduled_run():
    """The next run of the background schedule (django-q2), or None when no schedule is set up."""
    from django_q.models import Schedule

    schedule = Schedule.objects.filter(func__startswith="syncapp.").order_by("next_run").first()
    return schedule.next_run if schedule else None


def notification_status(organization: Organization) -> tuple[int, int]:
    """(mailboxes with a live Graph subscription, enabled mailboxes)."""
    now = timezone.now()
    counts = organization.mappings.filter(enabled=True).aggregate(
        total=Count("pk"), live=Count("pk", filter=Q(subscription_id__gt="", subscription_expires_at__gt=now))
    )
    return counts["live"], counts["total"]


@dataclass
class ChartBar:
    x: float
    y: float
    height: float
    width: float
    css: str
    title: str


@dataclass
class Chart:
    bars: list[ChartBar]
    labels: list[tuple[float, str]]
    maximum: int
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def activity_chart(organization: Organization, *, today: date | None = None) -> Chart:
    """Events synced per day, direction and action, and errors, over the last CHART_DAYS days (2 queries)."""
    today = today or timezone.localdate()
    first = today - timedelta(days=CHART_DAYS - 1)
    since = timezone.make_aware(timezone.datetime.combine(first, timezone.datetime.min.time()))
    entries = (
        SyncLogEntry.objects.filter(organization=organization, created__gte=since)
        .annotate(day=TruncDate("created", tzinfo=timezone.get_current_timezone()))
        .values("day", "direction", "action")
        .annotate(n=Count("pk"))
    )
    counts: dict[tuple, int] = {(row["day"], row["direction"], row["action"]): row["n"] for row in entries}
    errors = dict(
        SyncRun.objects.filter(organization=organization, started_at__gte=since)
        .filter(status__in=[SyncRun.Status.FAILED, SyncRun.Status.PARTIAL])
        .annotate(day=TruncDate("started_at", tzinfo=timezone.get_current_timezone()))
        .values_list("day")
        .annotate(n=Count("pk"))
    )
    days = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    series = [*CHART_SERIES, ("errors", "errors", "series-err")]
    value = {
        (day, css): errors.get(day, 0) if css == "series-err" else counts.get((day, direction, action), 0)
        for day in days
        for direction, action, css in series
    }
    maximum = max([1, *value.values()])
    slot = (CHART_WIDTH - CHART_PAD) / CHART_DAYS
    bar = slot / (len(series) + 1)
    scale = (CHART_HEIGHT - CHART_PAD) / maximum
    bars, labels = [], []
    for i, day in enumerate(days):
        x0 = CHART_PAD + i * slot
        labels.append((x0 + slot / 2, day.strftime("%d.%m.")))
        for j, (direction, action, css) in enumerate(series):
            n = value[(day, css)]
            if not n:
                continue
            height = n * scale
            title = f"{day:%d.%m.}: {n} × {_('errors') if css == 'series-err' else f'{direction} {action}'}"
            bars.append(ChartBar(x0 + j * bar, CHART_HEIGHT - CHART_PAD - height, height, bar, css, title))
    return Chart(bars=bars, labels=labels, maximum=maximum)


def budget_chart(organization: Organization, *, today: date | None = None) -> Chart:
    """Raynet API requests spent per day (UTC) over the last CHART_DAYS days, one query."""
    today = today or timezone.now().astimezone(UTC).date()
    days = [today - timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]
    used = dict(RaynetBudgetDay.objects.filter(organization=organization, day__gte=days[0]).values_list("day", "used"))
    maximum = max([1, *used.values()])
    slot = (CHART_WIDTH - CHART_PAD) / CHART_DAYS
    scale = (BUDGET_HEIGHT - CHART_PAD) / maximum
    bars = [
        ChartBar(
            CHART_PAD + i * slot + slot / 4,
            BUDGET_HEIGHT - CHART_PAD - used[day] * scale,
            used[day] * scale,
            slot / 2,
            "series-budget",
            f"{day:%d.%m.}: {used[day]}",
        )
        for i, day in enumerate(days)
        if used.get(day)
    ]
    labels = [(CHART_PAD + i * slot + slot / 2, day.strftime("%d.%m.")) for i, day in enumerate(days)]
    return Chart(bars=bars, labels=labels, maximum=maximum, height=BUDGET_HEIGHT)


def chart_legend() -> list[tuple[str, str]]:
    return [
        ("series-1", _("Created in Outlook")),
        ("series-2", _("Updated in Outlook")),
        ("series-3", _("Deleted in Outlook")),
        ("series-4", _("Created in Raynet")),
        ("series-5", _("Updated in Raynet")),
        ("series-6", _("Deleted in Raynet")),
        ("series-err", _("Runs with errors")),
    ]


def held_deletions(mapping: UserMapping) -> list[EventLink]:
    """The linked events the mass-delete guard's last hold named (its log entry's details)."""
    entry = (
        SyncLogEntry.objects.filter(organization=mapping.organization, run__mapping=mapping, action="held")
        .order_by("-created")
        .first()
    )
    planned = (entry.details or {}).get("planned", []) if entry else []
    return list(EventLink.objects.filter(mapping=mapping, pk__in=planned).order_by("starts_at"))


def log_entries(organization: Organization, *, mapping=None, direction="", action="", day=None):
    entries = SyncLogEntry.objects.filter(organization=organization).select_related("run__mapping")
    if mapping is not None:
        entries = entries.filter(run__mapping=mapping)
    if direction:
        entries = entries.filter(direction=direction)
    if action:
        entries = entries.filter(action=action)
    if day:
        entries = entries.filter(created__date=day)
    return entries.order_by("-created", "-pk")


def log_actions(organization: Organization) -> list[str]:
    return list(
        SyncLogEntry.objects.filter(organization=organization)
        .values_list("action", flat=True)
        .distinct()
        .order_by("action")
    )
