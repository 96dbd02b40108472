"""Finding Raynet deletions on the next poll: Raynet keeps no tombstones (reference §7).

Each poll of an organization lists the ids of the activities in the window, the minimal listing
(`view=rowInfo`, 1,000 rows a page) the reference suggests; a linked record in the window whose id
the listing covered but did not show is then fetched, and 404 means deleted. While the window holds
at most one page per type that is one request per type and poll. Beyond that the pages are read in
rotation, a few per poll, so that the idle cost stays small and every page is read at least once an
hour (RAYNET_DELETION_CHECK_SECONDS); the position is kept on the connection row.

The same rows say when each record was created or last updated, so a poll whose listing read a type's
whole window also knows whether anything of that type changed there: when nothing did, the type's change
listing is not needed (TypeScan.unchanged_since), and an idle organization costs one request per type.

While Raynet's webhooks are live (RaynetConnection.webhooks_live), they bring each change and deletion
within seconds, and the poll is only the safety net for one that got lost: the change listings and the
rotating id pages are then read only as often as RAYNET_DELETION_CHECK_SECONDS requires (IdScan.listings),
not on every poll, and the cursors stay at the last listing so that it finds what a lost webhook missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from syncapp.models import EventLink, RaynetConnection, UserMapping
from syncapp.providers.raynet import ENTITIES, MODIFIED_SINCE_OVERLAP, RaynetClient

# Raynet's rowInfo stamps have minute precision (reference §4): "10:03" may be 10:03:59.
STAMP_PRECISION = timedelta(minutes=1)


@dataclass
class TypeScan:
    ids: set[int] = field(default_factory=set)
    ranges: list[tuple[int, int | None]] = field(default_factory=list)  # (after, up to and including; None = ∞)
    last_change: datetime | None = None  # the latest rowInfo.createdAt / updatedAt of the rows read
    undated: bool = False  # a row said neither: what changed is not known

    def covers(self, record_id: int) -> bool:
        return any(record_id > low and (high is None or record_id <= high) for low, high in self.ranges)

    def add_rows(self, rows: list[dict], raynet: RaynetClient) -> None:
        self.ids.update(row["id"] for row in rows)
        for row in rows:
            changed = raynet.row_changed_at(row)
            if changed is None:
                self.undated = True
            elif self.last_change is None or changed > self.last_change:
                self.last_change = changed

    def read_whole_window(self) -> bool:
        """Whether the pages read this poll, put together, are every id from the first to the last."""
        edge = 0
        for low, high in sorted(self.ranges, key=lambda pair: pair[0]):
            if low != edge:
                return False
            if high is None:
                return True
            edge = high
        return False

    def unchanged_since(self, since: datetime) -> bool:
        """Nothing of this type in the window was created or updated after `since`: the change listing would
        find nothing there. A record moved out of the window is not shown, so it is looked up as missing
        (IdScan.missed_by_mapping), as a deletion is; one moved into it shows with its new stamp. With the
        listing's own overlap and the stamps' minute precision, so this never says "unchanged" sooner than
        the listing would."""
        if not self.read_whole_window() or self.undated:
            return False
        return self.last_change is None or self.last_change + STAMP_PRECISION <= since - MODIFIED_SINCE_OVERLAP


@dataclass
class IdScan:
    """Which Raynet ids in the window exist, for the ranges of ids this poll listed."""

    read_at: datetime
    types: dict[str, TypeScan] = field(default_factory=dict)
    _missing: dict[int, list[tuple[int, str, int]]] | None = None  # see missed_by_mapping

    def missing_links(self, mapping: UserMapping, window: tuple[datetime, datetime]) -> set[int]:
        """The mapping's links in the window whose record the listing should have shown but did not."""
        missed = self.missed_by_mapping(organization_id=mapping.organization_id, window=window)
        return {pk for pk, _entity, _record_id in missed.get(mapping.pk, [])}

    def missed_by_mapping(
        self, *, organization_id: int, window: tuple[datetime, datetime]
    ) -> dict[int, list[tuple[int, str, int]]]:
        """Mapping id → (link id, type, record id) of the links the listing should have shown but did not.

        One query for the organization's mailboxes together, the first time it is asked (the scan is the
        organization's): each mailbox then loads only these, not all its links (misses decides). Held
        deletions (held_gone) are not asked again: they wait for the admin, and cost nothing per poll.
        """
        if self._missing is None:
            self._missing = {}
            start, end = window
            missed = Q()
            for entity, scan in self.types.items():
                covered = Q()
                for low, high in scan.ranges:
                    covered |= Q(raynet_id__gt=low) & (Q() if high is None else Q(raynet_id__lte=high))
                if covered:
                    missed |= Q(raynet_type=entity) & covered & ~Q(raynet_id__in=any_of(scan.ids))
            if missed:
                rows = (
                    EventLink.objects.filter(missed, organization_id=organization_id, created__lt=self.read_at)
                    .filter(state=EventLink.State.ACTIVE, held_gone="")
                    .filter(Q(ends_at=None) | (Q(ends_at__gte=start) & (Q(starts_at=None) | Q(starts_at__lte=end))))
                    .values_list("mapping_id", "pk", "raynet_type", "raynet_id")
                )
                for mapping_id, pk, entity, record_id in rows:
                    self._missing.setdefault(mapping_id, []).append((pk, entity, record_id))
        return self._missing

    def listings(self, since: datetime | None, *, webhooks_live: bool) -> tuple[list[str], bool]:
        """The types whose change listing since `since` this poll makes, and whether some were left to the
        webhooks (the cursors must then stay at `since`). A type this scan shows unchanged needs none; with
        live webhooks, none is made until the safety net is due."""
        if since is None:
            return [], False
        unsure = [
            entity for entity in ENTITIES if not (entity in self.types and self.types[entity].unchanged_since(since))
        ]
        if unsure and webhooks_live and not safety_net_due(since, self.read_at):
            return [], True
        return unsure, False

    def misses(self, link: EventLink) -> bool:
        """Whether the listing should have shown the link's record but did not (a deletion, or it moved)."""
        return self.missing(link.raynet_type, link.raynet_id, link.created)

    def missing(self, entity: str, record_id: int | None, linked_at: datetime) -> bool:
        scan = self.types.get(entity)
        if scan is None or record_id is None or linked_at >= self.read_at:
            return False  # a link made after the listing may point at a record made after it too
        return scan.covers(record_id) and record_id not in scan.ids


def any_of(ids: set[int]) -> RawSQL:
    """The ids as one array parameter, not a thousand placeholders to build and parse."""
    return RawSQL("SELECT unnest(%s::integer[])", [sorted(ids)])


def reported_deleted(*, records: list[tuple[str, int]], read_at: datetime | None = None) -> IdScan:
    """Records to look up (a deletion webhook reported them, or the poll's id scan did not show them): a scan
    that covers each alone and did not see it, so the engine fetches it (404 confirms) and handles the
    deletion by policy, the mass-delete guard included."""
    scan = IdScan(read_at=read_at or timezone.now())
    for entity, record_id in records:
        scan.types.setdefault(entity, TypeScan()).ranges.append((record_id - 1, record_id))
    return scan


def safety_net_due(last: datetime, now: datetime) -> bool:
    """Waiting for the next poll would leave what was last read at `last` older than RAYNET_DELETION_CHECK_SECONDS.
    (The poll's own interval: an organization whose polls are stretched for budget is that much later.)"""
    return (now - last).total_seconds() + poll_seconds() > settings.RAYNET_DELETION_CHECK_SECONDS


def poll_seconds() -> float:
    return settings.SYNC_POLL_INTERVAL_MINUTES * 60


def scan_raynet_ids(
    *,
    raynet: RaynetClient,
    connection: RaynetConnection,
    window: tuple[datetime, datetime],
    webhooks_live: bool = False,
) -> IdScan:
    read_at = timezone.now()
    state = dict(connection.deletion_scan or {})
    scan = IdScan(read_at=read_at)
    for entity in ENTITIES:
        scan.types[entity], state[entity] = scan_type(
            raynet, entity, window, state.get(entity) or {}, read_at, webhooks_live=webhooks_live
        )
    if state != (connection.deletion_scan or {}):
        connection.deletion_scan = state
        connection.save(update_fields=["deletion_scan"])
    return scan


def scan_type(
    raynet: RaynetClient, entity: str, window, state: dict, read_at: datetime, *, webhooks_live: bool
) -> tuple[TypeScan, dict]:
    """Read this poll's share of the pages, from where the last poll stopped; the new position."""
    after, cycle_pages = int(state.get("after") or 0), int(state.get("pages") or 1)
    pages_now = pages_this_poll(cycle_pages, state.get("at"), read_at, webhooks_live=webhooks_live)
    if pages_now == 0:
        return TypeScan(), state  # covers nothing: no record is taken as missing
    scan, read, pages_in_cycle = TypeScan(), 0, int(state.get("in_cycle") or 0)
    while read < pages_now:
        rows, left = raynet.list_activity_ids(
            entity, scheduled_from=window[0], scheduled_till=window[1], after_id=after
        )
        read += 1
        pages_in_cycle += 1
        scan.add_rows(rows, raynet)
        last_page = left <= len(rows) or not rows
        high = None if last_page else max(row["id"] for row in rows)
        scan.ranges.append((after, high))
        if last_page:
            cycle_pages, pages_in_cycle, after = pages_in_cycle, 0, 0
            if cycle_pages == 1 or read >= pages_now:
                break
        else:
            after = high
    if cycle_pages == 1 and after == 0:
        return scan, {"after": 0, "pages": 1}  # one page holds the window: nothing to remember but that
    return scan, {"after": after, "pages": cycle_pages, "in_cycle": pages_in_cycle, "at": read_at.isoformat()}


def pages_this_poll(cycle_pages: int, last_at: str | None, now: datetime, *, webhooks_live: bool = False) -> int:
    """Enough pages that a whole cycle takes no longer than RAYNET_DELETION_CHECK_SECONDS at this poll rate:
    at least one a poll, or, while the webhooks bring deletions, none until waiting for the next poll would
    make the cycle late. A window of one page is read every poll (the deletion check on the next poll)."""
    if cycle_pages <= 1 or not last_at:
        return 1
    elapsed = max(1.0, (now - datetime.fromisoformat(last_at)).total_seconds())
    if webhooks_live:
        due = cycle_pages * (elapsed + poll_seconds()) / settings.RAYNET_DELETION_CHECK_SECONDS
        return min(cycle_pages, math.floor(due))
    share = cycle_pages * elapsed / settings.RAYNET_DELETION_CHECK_SECONDS
    return max(1, min(cycle_pages, math.ceil(share)))
