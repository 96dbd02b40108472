"""Two-way reconcile of one mailbox with one Raynet user: the status-table algorithm.

Each EventLink stores a hash of both sides as they were at the last sync. A side
changed when its current hash differs (see fields.py); only changed sides are
written to the other. Creates record their intent (a link row with our uid)
before the external write, so a run that dies half way is finished by the next
one without duplicates: the Outlook event carries the uid in an extended
property and the Raynet record carries it as an ext id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from syncapp.models import DeletionMode, EffectivePolicy, EventLink, PrivateEventsMode, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.sync import fields as f
from syncapp.sync.runlog import NO_DIRECTION, TO_OUTLOOK, TO_RAYNET, RunLog

logger = logging.getLogger("syncapp.sync")

ACTIVE = EventLink.State.ACTIVE
FROZEN = EventLink.State.FROZEN
DELETED = EventLink.State.DELETED


class SideFailed(Exception):
    """Reading one side failed as a whole: the mapping's health says why, cursors stay put."""

    def __init__(self, side: str, error: ProviderError) -> None:
        super().__init__(f"{side}: {error.message}")
        self.side = side
        self.error = error


@dataclass
class Pair:
    """What this run knows about one link (or one not yet linked item)."""

    link: EventLink | None = None
    event: dict | None = None  # current Outlook event, when it changed or was looked up
    outlook_gone: str = ""  # why the Outlook side is gone ("deleted", "cancelled", "became private")
    activity: dict | None = None  # current Raynet activity, when it changed or was looked up
    raynet_gone: str = ""


@dataclass
class PlannedDeletion:
    link: EventLink
    direction: str
    reason: str
    event: dict | None = None


@dataclass
class MappingSync:
    """One run of one mapping; the engine's working state."""

    mapping: UserMapping
    policy: EffectivePolicy
    raynet: object  # RaynetClient
    outlook: object  # OutlookClient
    log: RunLog
    zone: ZoneInfo
    window: tuple[datetime, datetime]
    directory: RaynetDirectory  # who in the organization has a Raynet account
    mapped_person_by_email: dict[str, int]  # e-mail → person id of users with an enabled mapping
    deletions: list[PlannedDeletion] = field(default_factory=list)
    links_by_outlook: dict[str, EventLink] = field(default_factory=dict)
    links_by_raynet: dict[tuple[str, int], EventLink] = field(default_factory=dict)
    hold_cursors: bool = False  # a change failed to sync: read it again next run

    # --- entry ------------------------------------------------------------------------------------
    def run(self, *, full: bool, raynet_changes: list[dict] | None) -> bool:
        """Reconcile; True when cursors may advance (nothing held back)."""
        self.load_links()
        self.finish_pending_creates()
        delta = self.read_outlook(full=full)
        raynet_full = raynet_changes is None
        activities = raynet_changes if raynet_changes is not None else self.read_raynet_window()
        pairs = self.build_pairs(delta, activities)
        if delta.full:
            self.find_missing_outlook(pairs, seen={*(e["id"] for e in delta.events), *delta.removed_ids})
        if raynet_full:
            self.find_missing_raynet(pairs, seen={(a["_entity"], a["id"]) for a in activities})
        self.check_series(pairs, delta)
        for pair in pairs.values():
            self.reconcile_safely(pair)
        released = self.carry_out_deletions() and not self.hold_cursors
        if released:
            self.mapping.graph_delta_link = delta.delta_link
            self.mapping.graph_delta_window_start = self.window[0].date()
        return released

    # --- reading ----------------------------------------------------------------------------------
    def load_links(self) -> None:
        for link in EventLink.objects.filter(mapping=self.mapping):
            if link.outlook_event_id:
                self.links_by_outlook[link.outlook_event_id] = link
            if link.raynet_id:
                self.links_by_raynet[(link.raynet_type, link.raynet_id)] = link

    def read_outlook(self, *, full: bool):
        start, end = self.window
        fresh = full or self.mapping.graph_delta_window_start != start.date()
        try:
            return self.outlook.delta(
                self.mapping.outlook_user_id,
                delta_link="" if fresh else self.mapping.graph_delta_link,
                start=start,
                end=end,
            )
        except ProviderError as error:
            raise SideFailed("Outlook", error) from error

    def read_raynet_window(self) -> list[dict]:
        start, end = self.window
        try:
            return [
                activity
                for entity in ("meeting", "event")
                for activity in self.raynet.list_activities(
                    entity, owner_id=self.mapping.raynet_person_id, scheduled_from=start, scheduled_till=end
                )
            ]
        except ProviderError as error:
            raise SideFailed("Raynet", error) from error

    def build_pairs(self, delta, activities: list[dict]) -> dict:
        pairs: dict = {}

        def pair_for(link: EventLink | None, key) -> Pair:
            return pairs.setdefault(link.pk if link else key, Pair(link=link))

        for event in delta.events:
            link = self.links_by_outlook.get(event["id"]) or self.moved_occurrence_link(event, delta)
            pair = pair_for(link, ("outlook", event["id"]))
            if event.get("isCancelled") and link:
                pair.outlook_gone = "cancelled in Outlook"
            else:
                pair.event = event
        for event_id in delta.removed_ids:
            link = self.links_by_outlook.get(event_id)
            if link and link.state != DELETED:
                self.confirm_outlook_removal(pair_for(link, None), event_id)
        for activity in activities:
            key = (activity["_entity"], activity["id"])
            link = self.links_by_raynet.get(key)
            pair_for(link, ("raynet", key)).activity = activity
        return pairs

    def moved_occurrence_link(self, event: dict, delta) -> EventLink | None:
        """Moving a whole series gives each occurrence a new id, but its iCalUId (which carries the
        occurrence's date) stays: the copy is kept and updated rather than cancelled and made again."""
        master_id, ical_uid = event.get("seriesMasterId"), event.get("iCalUId")
        if not master_id or not ical_uid:
            return None
        for link in self.links_of_series(master_id):
            old_id = link.outlook_event_id
            if link.ical_uid != ical_uid or old_id == event["id"]:
                continue
            if old_id in delta.removed_ids or (delta.full and all(e["id"] != old_id for e in delta.events)):
                self.links_by_outlook.pop(old_id, None)
                link.outlook_event_id = event["id"]
                link.save()  # the old id is gone for good: a run that dies now must not look for it
                self.links_by_outlook[link.outlook_event_id] = link
                return link
        return None

    def confirm_outlook_removal(self, pair: Pair, event_id: str) -> None:
        """The delta reports deletions and events that left the window alike: ask which it was."""
        event = self.outlook.get_event(self.mapping.outlook_user_id, event_id)
        if event is None:
            pair.outlook_gone = "deleted in Outlook"
        elif event.get("isCancelled"):
            pair.outlook_gone = "cancelled in Outlook"
        else:
            pair.event = event  # it only left the window (or moved): not a deletion

    def find_missing_outlook(self, pairs: dict, seen: set[str]) -> None:
        """After a full read, a linked event inside the window that did not show up is looked up once."""
        for link in self.active_links_in_window():
            if link.outlook_event_id and link.outlook_event_id not in seen:
                paired = link.pk in pairs
                pair = pairs.setdefault(link.pk, Pair(link=link))
                # Also when the Raynet side is paired (a full Raynet read lists every linked record): a full
                # delta reports no deletions, so this lookup is the only way to notice one. A paired
                # occurrence is left to check_series, which lists its series once.
                if not paired or (pair.event is None and not pair.outlook_gone and not link.series_master_id):
                    self.confirm_outlook_removal(pair, link.outlook_event_id)

    def find_missing_raynet(self, pairs: dict, seen: set[tuple[str, int]]) -> None:
        """Raynet has no tombstones: a linked record missing from the window listing is fetched; gone = deleted."""
        for link in self.active_links_in_window():
            key = (link.raynet_type, link.raynet_id)
            if link.raynet_id and key not in seen:
                pair = pairs.setdefault(link.pk, Pair(link=link))
                if pair.activity is None:
                    activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
                    if activity is None:
                        pair.raynet_gone = "deleted in Raynet"
                    else:
                        pair.activity = activity

    def check_series(self, pairs: dict, delta) -> None:
        """Graph reports no tombstone for a deleted occurrence: compare a touched series with its instances."""
        series = {e["seriesMasterId"] for e in delta.events if e.get("seriesMasterId")}
        if delta.full:
            series |= {link.series_master_id for link in self.active_links_in_window() if link.series_master_id}
        start, end = self.window
        for master_id in sorted(series):
            try:
                instances = self.outlook.list_instances(self.mapping.outlook_user_id, master_id, start, end)
            except ProviderError as error:
                if error.kind != ErrorKind.NOT_FOUND:
                    raise
                instances = []  # the whole series is gone
            alive = {event["id"] for event in instances}
            for link in self.links_of_series(master_id):
                if link.outlook_event_id not in alive and self.in_window(link):
                    pair = pairs.setdefault(link.pk, Pair(link=link))
                    if pair.event is None and not pair.outlook_gone:
                        pair.outlook_gone = "occurrence deleted in Outlook"

    def links_of_series(self, master_id: str) -> list[EventLink]:
        return [
            link
            for link in self.links_by_outlook.values()
            if link.series_master_id == master_id and link.state == ACTIVE
        ]

    def active_links_in_window(self) -> list[EventLink]:
        links = {link.pk: link for link in [*self.links_by_outlook.values(), *self.links_by_raynet.values()]}
        return [link for link in links.values() if link.state == ACTIVE and self.in_window(link)]

    def in_window(self, link: EventLink) -> bool:
        start, end = self.window
        return link.ends_at is None or (link.ends_at >= start and (link.starts_at or start) <= end)

    # --- crash recovery ---------------------------------------------------------------------------
    def finish_pending_creates(self) -> None:
        """Links whose create was started by a run that died: find what it made, or make it now."""
        # The very instances load_links indexed: a second copy would go stale once finished here, and
        # saving that copy later in the run would write the missing id back as empty.
        pending = [
            link
            for link in self.active_links()
            if link.state == ACTIVE and (link.outlook_event_id is None or link.raynet_id is None)
        ]
        for link in pending:
            try:
                if link.outlook_event_id is None:
                    self.finish_outlook_create(link)
                else:
                    self.finish_raynet_create(link)
            except ProviderError as error:
                self.log.record("error", f"Could not finish an interrupted create: {error.message}", link=link)

    def finish_outlook_create(self, link: EventLink) -> None:
        event = self.outlook.find_event_by_link_uid(self.mapping.outlook_user_id, str(link.uid))
        if event is not None:
            self.store_outlook_state(link, event)
            if _edited_since_created(event):
                link.outlook_hash = ""  # the user's edits since our create are changes to sync, not our baseline
            link.save()
            self.links_by_outlook[link.outlook_event_id] = link
            self.log.record(
                "recovered", "Found the Outlook event an interrupted run had created.", direction=TO_OUTLOOK, link=link
            )
            return
        # Nothing was made: make it now from the activity as it is today (it may be gone meanwhile).
        activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
        if activity is None:
            self.links_by_raynet.pop((link.raynet_type, link.raynet_id), None)
            link.delete()
        else:
            self.create_in_outlook(link, activity)

    def finish_raynet_create(self, link: EventLink) -> None:
        found = self.raynet.find_by_ext_id(link.raynet_type, raynet_ext_id(link))
        if found is not None:
            link.raynet_id = found["id"]
            self.store_raynet_state(link, found)
            if found.get("rowInfo.updatedBy") != found.get("rowInfo.createdBy"):
                link.raynet_hash = ""  # someone edited it since our create: changes to sync, not our baseline
            link.save()
            self.links_by_raynet[(link.raynet_type, link.raynet_id)] = link
            self.log.record(
                "recovered", "Found the Raynet activity an interrupted run had created.", direction=TO_RAYNET, link=link
            )
            return
        # Nothing was made: make it now from the event as it is today (it may be gone meanwhile).
        event = self.outlook.get_event(self.mapping.outlook_user_id, link.outlook_event_id)
        owner_id = self.owner_for(event, exclude=link) if event is not None else None
        if owner_id is None:
            self.links_by_outlook.pop(link.outlook_event_id, None)
            link.delete()
        else:
            self.create_in_raynet(link, event, owner_id)

    # --- deciding -----------------------------------------------------------------------------------
    def reconcile_safely(self, pair: Pair) -> None:
        try:
            self.reconcile(pair)
        except ProviderError as error:
            if error.permanent or error.kind == ErrorKind.BUDGET_SPENT:
                raise
            # Past the cursors, a change comes back only when they stay put; a failed create alone
            # needs no such help, its saved intent link is finished by the next run. A rejected change
            # would fail again: it waits for the next edit or the daily full read, not for every run.
            if error.retryable and not self.left_intent(pair):
                self.hold_cursors = True
            self.log.record(
                "error",
                f"Not synced this time: {error.message}",
                link=pair.link,
                outlook_id=(pair.event or {}).get("id", ""),
                raynet=_raynet_key(pair.activity),
                details={"kind": error.kind.value},
            )

    def left_intent(self, pair: Pair) -> bool:
        """Whether a failed create of a not yet linked item saved its intent link (see finish_pending_creates)."""
        if pair.link is not None:
            return False
        links = EventLink.objects.filter(mapping=self.mapping, state=ACTIVE)
        if pair.event is not None:
            return links.filter(outlook_event_id=pair.event["id"]).exists()
        key = _raynet_key(pair.activity)
        return key is not None and links.filter(raynet_type=key[0], raynet_id=key[1]).exists()

    def reconcile(self, pair: Pair) -> None:
        link = pair.link
        if link is None:
            if pair.event is not None:
                self.import_outlook_event(pair.event)
            elif pair.activity is not None:
                self.export_raynet_activity(pair.activity)
            return
        if link.state == DELETED:
            return
        if link.state == FROZEN:
            self.note_frozen(pair)
            return
        self.reconcile_link(pair, link)

    def reconcile_link(self, pair: Pair, link: EventLink) -> None:
        if pair.event is not None and self.is_out_of_scope(pair.event, link):
            pair.outlook_gone, pair.event = "made private (policy: skip private events)", None
        outlook_changed = pair.event is not None and self.outlook_hash(pair.event, link) != link.outlook_hash
        raynet_changed = (
            pair.activity is not None and f.fingerprint_hash(f.raynet_fingerprint(pair.activity)) != link.raynet_hash
        )
        status = (pair.activity or {}).get("status")
        if raynet_changed and status == "COMPLETED" and not self.policy.sync_completed:
            return self.freeze(link, pair.activity)
        if raynet_changed and status == "CANCELLED":
            pair.raynet_gone, raynet_changed = "cancelled in Raynet", False
        if pair.outlook_gone and pair.raynet_gone:
            return self.forget(link, f"{pair.outlook_gone} and {pair.raynet_gone}")
        if pair.outlook_gone and raynet_changed:
            return self.restore_outlook(link, pair)
        if pair.raynet_gone and outlook_changed:
            return self.restore_raynet(link, pair)
        if pair.outlook_gone:
            return self.plan_deletion(link, TO_RAYNET, pair.outlook_gone)
        if pair.raynet_gone:
            return self.plan_deletion(link, TO_OUTLOOK, pair.raynet_gone, event=pair.event)
        if outlook_changed and raynet_changed:
            return self.resolve_conflict(link, pair)
        if outlook_changed:
            return self.push_to_raynet(link, pair.event, pair.activity)
        if raynet_changed:
            return self.push_to_outlook(link, pair.activity, pair.event)

    def outlook_hash(self, event: dict, link: EventLink | None = None) -> str:
        return f.fingerprint_hash(f.outlook_fingerprint(event, time_blocker=self.is_time_blocker(event, link)))

    def is_time_blocker(self, event: dict, link: EventLink | None) -> bool:
        # Privacy is an Outlook notion: it governs what Outlook events reveal in Raynet,
        # never what Raynet's own activities show (those were not private to begin with).
        from_outlook = link is None or link.origin == EventLink.Origin.OUTLOOK
        return (
            from_outlook
            and f.outlook_is_private(event)
            and self.policy.private_events_mode == PrivateEventsMode.TIME_BLOCKER
        )

    def is_out_of_scope(self, event: dict, link: EventLink) -> bool:
        return (
            link.origin == EventLink.Origin.OUTLOOK
            and f.outlook_is_private(event)
            and self.policy.private_events_mode == PrivateEventsMode.SKIP
        )

    def resolve_conflict(self, link: EventLink, pair: Pair) -> None:
        winner = self.policy.conflict_winner
        if winner == "latest":
            outlook_at = _parse_iso(pair.event.get("lastModifiedDateTime"))
            raynet_at = pair.activity.get("rowInfo.updatedAt")
            winner = "raynet" if raynet_at and outlook_at and raynet_at > outlook_at else "outlook"
        if winner == "outlook":
            lost = {"side": "raynet", "version": f.raynet_fingerprint(pair.activity)}
            self.push_to_raynet(link, pair.event, pair.activity, conflict=lost)
        else:
            lost = {"side": "outlook", "version": f.outlook_fingerprint(pair.event)}
            self.push_to_outlook(link, pair.activity, pair.event, conflict=lost)

    # --- Outlook → Raynet -------------------------------------------------------------------------
    def import_outlook_event(self, event: dict) -> None:
        reason = self.import_skip_reason(event)
        if reason:
            self.log.record("skipped", reason, direction=TO_RAYNET, outlook_id=event["id"])
            return
        owner_id = self.owner_for(event)
        if owner_id is None:
            return
        link = EventLink(
            organization_id=self.mapping.organization_id,
            mapping=self.mapping,
            raynet_type="event",
            origin=EventLink.Origin.OUTLOOK,
            ical_uid=event.get("iCalUId") or "",
            series_master_id=event.get("seriesMasterId") or "",
        )
        self.store_outlook_state(link, event)
        link.save()  # the intent, before the external write
        self.create_in_raynet(link, event, owner_id)

    def import_skip_reason(self, event: dict) -> str:
        if event.get("type") == "seriesMaster":
            return "skipped: series master (its occurrences are synced one by one)"
        if event.get("isCancelled"):
            return "skipped: cancelled event"
        if f.outlook_is_private(event) and self.policy.private_events_mode == PrivateEventsMode.SKIP:
            return "skipped: private event, policy = skip"
        start, end = f.outlook_times(event)
        if end < self.window[0] or start > self.window[1]:
            return "skipped: outside the sync window"
        return ""

    def owner_for(self, event: dict, exclude: EventLink | None = None) -> int | None:
        """Raynet owner of an Outlook event: the mailbox's user, or for an invitation, its organizer."""
        if event.get("isOrganizer", True):
            return self.mapping.raynet_person_id
        organizer = f.outlook_organizer_email(event)
        existing = (
            EventLink.objects.filter(organization_id=self.mapping.organization_id, ical_uid=event.get("iCalUId") or "-")
            .exclude(state=DELETED)
            .exclude(pk=exclude.pk if exclude else None)
            .first()
        )
        if existing is not None:
            reason = f"skipped: invitation already synced as Raynet {existing.raynet_type} {existing.raynet_id}"
        elif organizer in self.mapped_person_by_email:
            reason = f"skipped: synced from the organizer's own mailbox ({organizer})"
        elif self.directory.user_person(organizer) is None:
            reason = f"skipped: organizer {organizer or '(unknown)'} is not a Raynet user"
        else:
            return self.directory.user_person(organizer)
        self.log.record("skipped", reason, direction=TO_RAYNET, outlook_id=event["id"])
        return None

    def create_in_raynet(self, link: EventLink, event: dict, owner_id: int) -> None:
        time_blocker = self.is_time_blocker(event, link)
        write = f.raynet_fields_from_outlook(event, zone=self.zone, time_blocker=time_blocker)
        persons = set() if time_blocker else self.persons_for(f.outlook_attendee_emails(event))
        write.update(
            owner=owner_id,
            priority="DEFAULT",
            status="SCHEDULED",
            participants=[{"person": pid} for pid in sorted(persons)],
        )
        link.raynet_id = self.raynet.create_activity("event", write, ext_id=raynet_ext_id(link))
        expected = f.raynet_after_write(None, write, owner_id=owner_id, wanted_person_ids=persons)
        self.store_raynet_state(link, expected)
        link.outlook_attendees = sorted(set(f.outlook_attendee_emails(event)) & set(self.emails_of(persons)))
        link.save()
        self.links_by_raynet[(link.raynet_type, link.raynet_id)] = link
        self.log.record(
            "created",
            f"created Raynet event “{write['title']}” from Outlook"
            + (" (private: time blocker)" if time_blocker else ""),
            direction=TO_RAYNET,
            link=link,
        )

    def push_to_raynet(self, link: EventLink, event: dict, activity: dict | None, *, conflict=None) -> None:
        if activity is None or any("id" not in p for p in activity.get("participants") or []):
            # List rows carry no participant ids, which removing a participant needs: read the detail.
            activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
        if activity is None:
            return self.restore_raynet(link, Pair(link=link, event=event, raynet_gone="deleted in Raynet"))
        time_blocker = self.is_time_blocker(event, link)
        write = f.raynet_fields_from_outlook(event, zone=self.zone, time_blocker=time_blocker)
        persons, ops = self.participant_changes(link, activity, event, time_blocker)
        if ops:
            write["participants"] = ops
        self.raynet.update_activity(link.raynet_type, link.raynet_id, write)
        expected = f.raynet_after_write(
            activity, write, owner_id=f.raynet_owner_id(activity), wanted_person_ids=persons
        )
        self.store_raynet_state(link, expected)
        self.store_outlook_state(link, event)
        link.save()
        self.log_update(link, TO_RAYNET, conflict)

    def participant_changes(self, link, activity, event, time_blocker) -> tuple[set[int], list[dict]]:
        """Participants after applying the Outlook attendee changes since the last sync (see link.outlook_attendees)."""
        current = set(f.raynet_participant_ids(activity))
        if time_blocker:
            return set(), f.participant_ops(activity, set())
        attendees = set(f.outlook_attendee_emails(event))
        shared = set(link.outlook_attendees)
        removed_emails = shared - attendees
        added = self.persons_for(sorted(attendees - shared))
        removed = {
            pid
            for pid, email in self.raynet.get_person_emails(current).items()
            if email and email.lower() in removed_emails
        }
        wanted = (current - removed) | added
        link.outlook_attendees = sorted(attendees & (shared | set(self.emails_of(added))))
        return wanted, f.participant_ops(activity, wanted)

    def restore_raynet(self, link: EventLink, pair: Pair) -> None:
        """Gone in Raynet but edited in Outlook: the edit wins and the activity comes back."""
        if pair.activity is not None and pair.activity.get("status") == "CANCELLED":
            self.raynet.update_activity(link.raynet_type, link.raynet_id, {"status": "SCHEDULED"})
            pair.activity = {**pair.activity, "status": "SCHEDULED"}
            self.push_to_raynet(link, pair.event, pair.activity)
        else:
            self.links_by_raynet.pop((link.raynet_type, link.raynet_id), None)
            link.raynet_id, link.raynet_type = None, "event"
            link.save()
            self.create_in_raynet(link, pair.event, self.mapping.raynet_person_id)
        self.log.record(
            "restored",
            f"restored in Raynet: {pair.raynet_gone}, but edited in Outlook since",
            direction=TO_RAYNET,
            link=link,
        )

    # --- Raynet → Outlook -------------------------------------------------------------------------
    def export_raynet_activity(self, activity: dict) -> None:
        reason = self.export_skip_reason(activity)
        if reason:
            self.log.record("skipped", reason, direction=TO_OUTLOOK, raynet=_raynet_key(activity))
            return
        link = EventLink(
            organization_id=self.mapping.organization_id,
            mapping=self.mapping,
            raynet_type=activity["_entity"],
            raynet_id=activity["id"],
            origin=EventLink.Origin.RAYNET,
        )
        self.store_raynet_state(link, activity)
        link.save()  # the intent, before the external write
        self.links_by_raynet[(link.raynet_type, link.raynet_id)] = link
        self.create_in_outlook(link, activity)

    def export_skip_reason(self, activity: dict) -> str:
        elsewhere = (
            EventLink.objects.filter(
                organization_id=self.mapping.organization_id, raynet_type=activity["_entity"], raynet_id=activity["id"]
            )
            .select_related("mapping")
            .first()
        )
        if elsewhere is not None:
            return f"skipped: already synced with the mailbox of {elsewhere.mapping.outlook_upn}"
        status = activity.get("status")
        if status == "CANCELLED":
            return "skipped: cancelled in Raynet"
        if status == "COMPLETED" and not self.policy.sync_completed:
            return "skipped: already completed when first seen (completed activities are not pushed)"
        start, end = f.raynet_times(activity)
        if start is None:
            return "skipped: no scheduled time"
        if end < self.window[0] or start > self.window[1]:
            return "skipped: outside the sync window"
        return ""

    def create_in_outlook(self, link: EventLink, activity: dict) -> None:
        body = f.outlook_fields_from_raynet(activity, zone=self.zone, keep_all_day=False, time_only=False)
        emails = self.attendee_emails_for(activity)
        if emails:
            body["attendees"] = f.graph_attendees(emails)
        body["showAs"] = "busy"
        event = self.outlook.create_event(self.mapping.outlook_user_id, body, link_uid=str(link.uid))
        self.store_outlook_state(link, event)
        link.outlook_attendees = sorted(set(emails) & set(f.outlook_attendee_emails(event)))
        link.save()
        self.links_by_outlook[link.outlook_event_id] = link
        invited = f" and invited {len(emails)} attendee(s)" if emails else ""
        self.log.record(
            "created", f"created Outlook event “{activity.get('title')}”{invited}", direction=TO_OUTLOOK, link=link
        )

    def push_to_outlook(self, link: EventLink, activity: dict, event: dict | None, *, conflict=None) -> None:
        event = event or self.outlook.get_event(self.mapping.outlook_user_id, link.outlook_event_id)
        if event is None:
            return self.restore_outlook(link, Pair(link=link, activity=activity, outlook_gone="deleted in Outlook"))
        time_only = self.is_time_blocker(event, link)
        patch = f.outlook_fields_from_raynet(
            activity, zone=self.zone, keep_all_day=bool(event.get("isAllDay")), time_only=time_only
        )
        if not time_only:
            self.add_attendee_changes(patch, link, activity, event)
        updated = self.outlook.update_event(self.mapping.outlook_user_id, link.outlook_event_id, patch)
        self.store_outlook_state(link, updated)
        self.store_raynet_state(link, activity)
        link.save()
        self.log_update(link, TO_OUTLOOK, conflict)

    def log_update(self, link: EventLink, direction: str, conflict: dict | None) -> None:
        source, target = ("Outlook", "Raynet") if direction == TO_RAYNET else ("Raynet", "Outlook")
        if conflict:
            reason = f"conflict: both sides changed; {source} change kept"
            self.log.record("conflict", reason, direction=direction, link=link, details={"lost": conflict})
        else:
            self.log.record("updated", f"updated {target} from the {source} change", direction=direction, link=link)

    def add_attendee_changes(self, patch: dict, link: EventLink, activity: dict, event: dict) -> None:
        """Attendees are rewritten only when Raynet's participant set changed, so Outlook never re-invites."""
        wanted = set(self.attendee_emails_for(activity))
        shared = set(link.outlook_attendees)
        if wanted == shared:
            return
        current = {(a.get("emailAddress") or {}).get("address", "").lower(): a for a in event.get("attendees") or []}
        for email in shared - wanted:
            current.pop(email, None)
        for email in wanted - set(current):
            current[email] = f.graph_attendees([email])[0]
        patch["attendees"] = list(current.values())
        link.outlook_attendees = sorted(wanted)

    def restore_outlook(self, link: EventLink, pair: Pair) -> None:
        """Gone in Outlook but edited in Raynet: the edit wins and the event is created again."""
        self.links_by_outlook.pop(link.outlook_event_id, None)
        link.outlook_event_id, link.outlook_attendees = None, []
        # It comes back as a single event: still counted in its old series, it would look deleted there.
        link.series_master_id = ""
        link.save()
        self.create_in_outlook(link, pair.activity)
        self.log.record(
            "restored",
            f"restored in Outlook: {pair.outlook_gone}, but edited in Raynet since",
            direction=TO_OUTLOOK,
            link=link,
        )

    # --- completion and deletion ------------------------------------------------------------------
    def freeze(self, link: EventLink, activity: dict) -> None:
        link.state = FROZEN
        self.store_raynet_state(link, activity)
        link.save()
        self.log.record(
            "frozen",
            "completed in Raynet: later changes are no longer sent to Outlook",
            direction=NO_DIRECTION,
            link=link,
        )

    def note_frozen(self, pair: Pair) -> None:
        if pair.activity is not None or pair.event is not None or pair.outlook_gone:
            self.log.record("skipped", "skipped: the activity is completed in Raynet (link frozen)", link=pair.link)

    def forget(self, link: EventLink, reason: str) -> None:
        link.state = DELETED
        link.save()
        self.log.record("deleted", f"{reason}: nothing left to do", link=link)

    def plan_deletion(self, link: EventLink, direction: str, reason: str, event: dict | None = None) -> None:
        self.deletions.append(PlannedDeletion(link, direction, reason, event))

    def carry_out_deletions(self) -> bool:
        """The mass-delete guard: too many deletions at once wait for an admin. False when held back."""
        if not self.deletions:
            return True
        active = sum(1 for link in self.active_links() if link.state == ACTIVE)
        too_many = len(self.deletions) > settings.MASS_DELETE_MIN_COUNT and len(
            self.deletions
        ) * 100 > settings.MASS_DELETE_MIN_PERCENT * max(active, 1)
        if too_many and not self.mapping.mass_delete_approved:
            reason = (
                f"This run would delete {len(self.deletions)} of {active} synced events. Nothing was deleted; "
                "an admin must confirm the deletions or reset the mailbox."
            )
            self.mapping.health, self.mapping.health_reason = UserMapping.Health.FLAGGED, reason
            self.log.record("held", reason, details={"planned": [d.link.pk for d in self.deletions]})
            return False
        self.mapping.mass_delete_approved = False
        for deletion in self.deletions:
            try:
                self.delete_other_side(deletion)
            except ProviderError as error:
                if error.permanent:
                    raise
                self.hold_cursors = self.hold_cursors or error.retryable  # reported once: read it again
                self.log.record("error", f"Deletion not done this time: {error.message}", link=deletion.link)
        return True

    def active_links(self) -> list[EventLink]:
        return list(
            {link.pk: link for link in [*self.links_by_outlook.values(), *self.links_by_raynet.values()]}.values()
        )

    def delete_other_side(self, deletion: PlannedDeletion) -> None:
        link = deletion.link
        if deletion.direction == TO_RAYNET:
            action = self.delete_in_raynet(link)
        else:
            action = self.delete_in_outlook(link, deletion.event)
        link.state = DELETED
        link.save()
        self.log.record(action, f"{deletion.reason}: {ACTION_WORDS[action]}", direction=deletion.direction, link=link)

    def delete_in_raynet(self, link: EventLink) -> str:
        mode = self.policy.deletion_mode
        if mode == DeletionMode.DELETE:
            self.raynet.delete_activity(link.raynet_type, link.raynet_id)
            return "deleted"
        if mode == DeletionMode.CANCEL:
            self.raynet.update_activity(link.raynet_type, link.raynet_id, {"status": "CANCELLED"})
            return "cancelled"
        return "ignored"

    def delete_in_outlook(self, link: EventLink, event: dict | None) -> str:
        user_id = self.mapping.outlook_user_id
        event = event or self.outlook.get_event(user_id, link.outlook_event_id)
        if event is None:
            return "deleted"
        if event.get("isOrganizer") and event.get("attendees"):
            self.outlook.cancel_event(user_id, link.outlook_event_id, "Cancelled in Raynet CRM.")
            return "cancelled"
        self.outlook.delete_event(user_id, link.outlook_event_id)
        return "deleted"

    # --- state on the link ------------------------------------------------------------------------
    def store_outlook_state(self, link: EventLink, event: dict) -> None:
        start, end = f.outlook_times(event)
        link.outlook_event_id = event["id"]
        link.outlook_hash = self.outlook_hash(event, link)
        link.outlook_change_key = event.get("changeKey") or ""
        link.ical_uid = event.get("iCalUId") or link.ical_uid
        link.series_master_id = event.get("seriesMasterId") or link.series_master_id
        link.starts_at, link.ends_at = start, end

    def store_raynet_state(self, link: EventLink, activity: dict) -> None:
        link.raynet_hash = f.fingerprint_hash(f.raynet_fingerprint(activity))
        link.raynet_updated_at = activity.get("rowInfo.updatedAt") or link.raynet_updated_at
        if link.starts_at is None:
            link.starts_at, link.ends_at = f.raynet_times(activity)

    # --- people -----------------------------------------------------------------------------------
    def persons_for(self, emails: list[str]) -> set[int]:
        """Raynet persons for Outlook attendees; unknown addresses are not invented as contacts."""
        own = {self.mapping.outlook_upn.lower(), self.mapping.raynet_email.lower()}
        persons = set()
        for email in emails:
            if email in own:
                continue
            person_id = self.directory.user_person(email) or self.raynet.find_person_by_email(email)
            if person_id and person_id != self.mapping.raynet_person_id:
                persons.add(person_id)
        return persons

    def emails_of(self, person_ids: set[int]) -> list[str]:
        return sorted(email.lower() for email in self.raynet.get_person_emails(person_ids).values() if email)

    def attendee_emails_for(self, activity: dict) -> list[str]:
        own = {self.mapping.outlook_upn.lower(), self.mapping.raynet_email.lower()}
        return [email for email in self.emails_of(set(f.raynet_participant_ids(activity))) if email not in own]


class RaynetDirectory:
    """The organization's Raynet users by e-mail, read once per run and only when needed."""

    def __init__(self, raynet) -> None:
        self.raynet = raynet
        self._by_email: dict[str, int] | None = None

    def user_person(self, email: str) -> int | None:
        if self._by_email is None:
            self._by_email = {}
            for user in self.raynet.list_users():
                for address in (user.username, user.email):
                    if address:
                        self._by_email[address.strip().lower()] = user.person_id
        return self._by_email.get(email.strip().lower()) if email else None


ACTION_WORDS = {
    "deleted": "deleted on the other side",
    "cancelled": "cancelled on the other side",
    "ignored": "left as it is (deletion policy = ignore)",
}


def raynet_ext_id(link: EventLink) -> str:
    # A short key of our own: Graph ids contain "/", "+" and "=", unsafe in Raynet's /ext/{extId}/ path.
    return f"raysync:{link.uid.hex}"


def _raynet_key(activity: dict | None) -> tuple[str, int | None] | None:
    return (activity["_entity"], activity["id"]) if activity else None


def _edited_since_created(event: dict) -> bool:
    """Whether a person changed the event after it was created (Graph stamps a create a moment apart)."""
    created, modified = _parse_iso(event.get("createdDateTime")), _parse_iso(event.get("lastModifiedDateTime"))
    return bool(created and modified and modified - created > timedelta(seconds=5))


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else timezone.make_aware(parsed, timezone.utc)
