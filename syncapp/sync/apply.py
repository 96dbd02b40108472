"""Carrying out: each planned Action as intent → one provider call → link update → log entry.

That order gives every crash point one recovery:
- a create's intent is the link row saved before the create, without the new side's id; the next
  run finds what the create made (the Outlook event by our extended property, the Raynet record by
  its ext id, or, when Raynet's reply was lost before the ext id was set, the orphan: a record the
  API user made since the intent with the same owner, type, title and times), adopts it and writes
  what was still missing. A create that made nothing is made again (Graph: the same transactionId).
- an update's intent (EventLink.intent) holds the hash the written side will have; the next run that
  finds exactly that recognizes its own write (not a user's change, not a conflict).
- deletions and cancellations are idempotent: a rerun finds both sides gone and closes the link.
Non-idempotent calls (Raynet create, participant add) are never resent blindly (the session raises
`maybe_applied` instead, syncapp/providers/base.py); the recovery above is what follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.utils import timezone

from syncapp.models import DeletionMode, EffectivePolicy, EventLink, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import RaynetClient
from syncapp.sync import fields as f
from syncapp.sync.observe import RaynetDirectory
from syncapp.sync.plan import (
    ACTIVE,
    TO_OUTLOOK,
    TO_RAYNET,
    Action,
    Facts,
    Kind,
    Pair,
    edited_since_created,
    is_time_blocker,
    outlook_hash,
    owner_of,
    raynet_hash,
)
from syncapp.sync.reasons import Gone, Reason
from syncapp.sync.runlog import RunLog

logger = logging.getLogger("syncapp.sync")

# Links finished (and log entries kept) before the applier commits them together in one transaction.
BATCH_SIZE = 100
# What carrying out an action changes on a link (flush writes these; the rest never changes).
OUTCOME_FIELDS = [
    "raynet_type",
    "raynet_id",
    "outlook_event_id",
    "ical_uid",
    "series_master_id",
    "raynet_hash",
    "outlook_hash",
    "raynet_updated_at",
    "outlook_change_key",
    "outlook_attendees",
    "starts_at",
    "ends_at",
    "state",
    "intent",
    "held_gone",
    "baseline",
    "updated",
]

# How far back of the intent an orphan's rowInfo.createdAt may be: Raynet stamps minutes (reference §4).
ORPHAN_CLOCK_SLACK = timedelta(minutes=2)


def save_outcomes(links: list[EventLink]) -> None:
    """One `UPDATE … FROM (VALUES …)` for the links' OUTCOME_FIELDS.

    Not bulk_update: its CASE WHEN per field and row costs more CPU to build than a statement per link;
    not a save per link: a statement (and a round trip) per event is what the initial sync spends most on.
    """
    if not links:
        return
    fields = [EventLink._meta.get_field(name) for name in OUTCOME_FIELDS]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    casts = ", ".join(f"%s::{field.cast_db_type(connection)}" for field in fields)
    rows = ", ".join(f"(%s::integer, {casts})" for _ in links)
    params: list = []
    for link in links:
        params.append(link.pk)
        params += [field.get_db_prep_save(getattr(link, field.attname), connection) for field in fields]
    assignments = ", ".join(
        f"{connection.ops.quote_name(f.column)} = v.{connection.ops.quote_name(f.column)}" for f in fields
    )
    table = connection.ops.quote_name(EventLink._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS l SET {assignments} FROM (VALUES {rows}) AS v(id, {columns}) WHERE l.id = v.id",
            params,
        )


def raynet_create_intent(write: dict, owner_id: int) -> dict:
    """What find_orphan matches a lost reply's record on: owner, title and times of the create."""
    return {
        "op": Kind.CREATE_IN_RAYNET.value,
        "at": timezone.now().isoformat(),
        "owner": owner_id,
        "title": write["title"],
        "from": write["scheduledFrom"].isoformat(),
        "till": write["scheduledTill"].isoformat(),
    }


def raynet_ext_id(link: EventLink) -> str:
    # A short key of our own: Graph ids contain "/", "+" and "=", unsafe in Raynet's /ext/{extId}/ path.
    return f"raysync:{link.uid.hex}"


def raynet_key(activity: dict | None) -> tuple[str, int | None] | None:
    return (activity["_entity"], activity["id"]) if activity else None


@dataclass
class Applier:
    mapping: UserMapping
    policy: EffectivePolicy
    raynet: RaynetClient
    outlook: OutlookClient
    log: RunLog
    zone: ZoneInfo
    directory: RaynetDirectory
    # The links the run loaded (pending creates, held deletions, what the observer reads); those it creates
    # are not kept here: nothing reads them after their batch, and a first sync makes tens of thousands.
    links: list[EventLink] = field(default_factory=list)
    finished: dict[int, EventLink] = field(default_factory=dict)  # by pk, outcomes not yet written
    prepared: dict[int, EventLink] = field(default_factory=dict)  # by id(action): creates whose intent is stored

    def prepare_creates(self, actions: list[Action]) -> None:
        """The intents of a batch's creates in one INSERT, before any of their calls (not one INSERT each).

        A run killed in the batch leaves the intents of the creates it did not reach: the next run finishes
        them as any interrupted create (finish_pending_creates); those the run skips are dropped (discard).
        """
        links = {}
        for action in actions:
            try:
                if action.kind == Kind.CREATE_IN_OUTLOOK:
                    links[id(action)] = self.export_link(action.pair.activity)
                elif action.kind == Kind.CREATE_IN_RAYNET:
                    links[id(action)] = self.import_link(action.pair.event, action.owner_id)
            except Exception as error:  # one item's data: the action itself meets it again, and logs it
                logger.info("create not prepared: %r", error)
        EventLink.objects.bulk_create(links.values())
        self.prepared.update(links)

    def discard_prepared(self) -> None:
        """The stored intents of creates the run did not carry out (it stopped, or left them for later)."""
        if self.prepared:
            EventLink.objects.filter(pk__in=[link.pk for link in self.prepared.values()]).delete()
            self.prepared = {}

    # --- the batch --------------------------------------------------------------------------------
    def done(self, link: EventLink) -> None:
        """The link's outcome is settled: written with the batch's others, its intent stays stored till then."""
        link.record_outcome()
        self.finished[link.pk] = link

    def flush_if_full(self) -> None:
        if len(self.finished) + len(self.log.pending) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        """The batch's link outcomes and log entries in one transaction (one UPDATE, one INSERT).

        Every intent was stored before its call, so a run killed before this finds each write it made
        (apply.py's docstring): what is lost is the log of the batch, which the recovery logs again.
        """
        with transaction.atomic():
            save_outcomes([link for link in self.finished.values() if link.pk is not None])
            self.log.flush()
        self.finished = {}

    def run(self, action: Action) -> None:
        pair, link = action.pair, action.pair.link
        match action.kind:
            case Kind.CREATE_IN_OUTLOOK:
                self.export_raynet_activity(pair.activity, self.prepared.pop(id(action), None))
            case Kind.CREATE_IN_RAYNET:
                self.import_outlook_event(pair.event, action.owner_id, self.prepared.pop(id(action), None))
            case Kind.UPDATE_OUTLOOK:
                self.push_to_outlook(link, pair.activity, pair.event, action)
            case Kind.UPDATE_RAYNET:
                self.push_to_raynet(link, pair.event, pair.activity, action)
            case Kind.DELETE_IN_RAYNET:
                self.delete_in_raynet(link, action)
            case Kind.DELETE_IN_OUTLOOK:
                self.delete_in_outlook(link, pair.event, action)
            case Kind.RESTORE_IN_OUTLOOK:
                self.restore_outlook(link, pair.activity, action)
            case Kind.RESTORE_IN_RAYNET:
                self.restore_raynet(link, pair, action)
            case Kind.FREEZE:
                self.store_raynet_state(link, pair.activity)
                link.freeze()
                self.done(link)
                self.log.record("frozen", Reason.FROZEN, link=link)
            case Kind.FORGET:
                link.mark_deleted()
                self.done(link)
                self.log.record("deleted", action.reason, action.params, link=link)
            case Kind.SETTLE:
                self.settle(link, pair)
            case Kind.SKIP:
                self.log.record(
                    "skipped",
                    action.reason,
                    action.params,
                    direction=action.direction,
                    link=link,
                    outlook_id=(pair.event or {}).get("id", "") if link is None else "",
                    raynet=raynet_key(pair.activity) if link is None else None,
                )

    # --- crash recovery ---------------------------------------------------------------------------
    def relink(self, links: list[EventLink]) -> None:
        """Occurrences of a moved series carry new ids: the old ones are gone for good, so the new ones are
        recorded before anything else (a run that dies now must not look for the old ones)."""
        for link in links:
            link.save()

    def finish_pending_creates(self) -> None:
        """Links whose create was started by a run that died (or got no reply): find what it made, or make it."""
        pending = [
            link
            for link in self.links
            if link.state == ACTIVE and (link.outlook_event_id is None or link.raynet_id is None)
        ]
        for link in pending:
            try:
                if link.outlook_event_id is None:
                    self.finish_outlook_create(link)
                else:
                    self.finish_raynet_create(link)
            except ProviderError as error:
                if error.permanent:
                    raise
                self.log.record("error", Reason.INTERRUPTED_CREATE_FAILED, {"message": error.message}, link=link)

    def finish_outlook_create(self, link: EventLink) -> None:
        event = self.outlook.find_event_by_link_uid(self.mapping.outlook_user_id, str(link.uid))
        if event is not None:
            self.store_outlook_state(link, event)
            if edited_since_created(event):
                link.outlook_hash = ""  # the user's edits since our create are changes to sync, not our baseline
            self.done(link)
            self.log.record("recovered", Reason.RECOVERED_OUTLOOK, direction=TO_OUTLOOK, link=link)
            return
        # Nothing was made: make it now from the activity as it is today (it may be gone meanwhile).
        activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
        if activity is None:
            self.drop(link)
        else:
            self.create_in_outlook(link, activity)

    def finish_raynet_create(self, link: EventLink) -> None:
        event = self.outlook.get_event(self.mapping.outlook_user_id, link.outlook_event_id)
        found = self.raynet.find_by_ext_id(link.raynet_type, raynet_ext_id(link))
        reason = Reason.RECOVERED_RAYNET
        if found is None:
            found = self.find_orphan(link)
            if found is not None:
                self.raynet.tag_ext_id(found["_entity"], found["id"], raynet_ext_id(link))
                reason = Reason.ADOPTED_RAYNET
        if found is None:
            # Nothing was made: make it now from the event as it is today (it may be gone meanwhile).
            owner_id = self.recovery_owner(event, link) if event is not None else None
            if owner_id is None:
                self.drop(link)
            else:
                self.create_in_raynet(link, event, owner_id)
            return
        link.raynet_type, link.raynet_id = found["_entity"], found["id"]
        self.store_raynet_state(link, found)
        edited = found.get("rowInfo.updatedBy") not in (None, found.get("rowInfo.createdBy"))
        if edited:
            link.raynet_hash = ""  # someone edited it since our create: changes to sync, not our baseline
        self.done(link)
        self.log.record("recovered", reason, direction=TO_RAYNET, link=link)
        if event is not None and not edited:
            # What the interrupted create had still to write (place, participants: the update after it).
            self.push_to_raynet(link, event, None, None, quiet=True)

    def find_orphan(self, link: EventLink) -> dict | None:
        """A record the API user created since the intent, with the intent's owner, type, title and times,
        that no link holds: what a create whose reply was lost made."""
        intent = link.intent or {}
        if intent.get("op") != Kind.CREATE_IN_RAYNET or not intent.get("title"):
            return None
        self.flush()  # a record adopted earlier in this run is taken: the query below must see it
        since = datetime.fromisoformat(intent["at"]) - ORPHAN_CLOCK_SLACK
        start, end = datetime.fromisoformat(intent["from"]), datetime.fromisoformat(intent["till"])
        rows = self.raynet.list_activities(
            link.raynet_type, owner_id=intent["owner"], scheduled_from=start, scheduled_till=end
        )
        api_user = self.raynet.connection.api_user_email.lower()
        candidates = [
            row
            for row in rows
            if isinstance(row, dict)
            and row.get("title") == intent["title"]
            and f.minute(row.get("scheduledFrom")) == start
            and f.minute(row.get("scheduledTill")) == end
            and str(row.get("rowInfo.createdBy") or "").lower() == api_user
            and (row.get("rowInfo.createdAt") is None or row["rowInfo.createdAt"] >= since)
        ]
        taken = set(
            EventLink.objects.filter(
                organization_id=link.organization_id,
                raynet_type=link.raynet_type,
                raynet_id__in=[row["id"] for row in candidates],
            ).values_list("raynet_id", flat=True)
        )
        free = sorted((row for row in candidates if row["id"] not in taken), key=lambda row: row["id"])
        return free[0] if free else None

    def recovery_owner(self, event: dict, link: EventLink) -> int | None:
        self.flush()  # the links finished earlier in this run count too
        existing = (
            EventLink.objects.filter(organization_id=self.mapping.organization_id, ical_uid=event.get("iCalUId") or "-")
            .exclude(state=EventLink.State.DELETED)
            .exclude(pk=link.pk)
            .values_list("ical_uid", "raynet_type", "raynet_id")
            .first()
        )
        organizer = f.outlook_organizer_email(event)
        facts = Facts(
            window=f.outlook_times(event),
            mailbox_person_id=self.mapping.raynet_person_id,
            mapped_organizers=self.directory.mapped_organizers,
            invitation_links={existing[0]: existing[1:]} if existing else {},
            organizer_persons={organizer: self.directory.user_person(organizer)},
        )
        owner_id, _skipped = owner_of(event, facts)
        return owner_id

    def drop(self, link: EventLink) -> None:
        """The intent's source is gone before anything was made: the intent goes with it."""
        self.links.remove(link)
        self.finished.pop(link.pk, None)
        link.delete()

    def settle(self, link: EventLink, pair: Pair) -> None:
        """An interrupted run's own write is on the other side: make it the baseline, write nothing."""
        if pair.event is not None:
            self.store_outlook_state(link, pair.event)
        if pair.activity is not None:
            self.store_raynet_state(link, pair.activity)
        self.done(link)
        self.log.record("recovered", Reason.OWN_WRITE_RECOGNIZED, link=link)

    # --- Outlook → Raynet -------------------------------------------------------------------------
    def import_outlook_event(self, event: dict, owner_id: int, prepared: EventLink | None = None) -> None:
        link = prepared or self.import_link(event, owner_id)
        self.create_in_raynet(link, event, owner_id, intent_stored=prepared is not None)

    def import_link(self, event: dict, owner_id: int) -> EventLink:
        """The link of an Outlook event about to be created in Raynet, with the create's intent (unsaved)."""
        link = EventLink(
            organization_id=self.mapping.organization_id,
            mapping=self.mapping,
            raynet_type=EventLink.RaynetType.EVENT,
            origin=EventLink.Origin.OUTLOOK,
            ical_uid=event.get("iCalUId") or "",
            series_master_id=event.get("seriesMasterId") or "",
        )
        self.store_outlook_state(link, event)
        write, _persons, _blocker = self.raynet_create(link, event, owner_id)
        link.intent = raynet_create_intent(write, owner_id)
        return link

    def raynet_create(self, link: EventLink, event: dict, owner_id: int) -> tuple[dict, set[int], bool]:
        time_blocker = is_time_blocker(event, link, self.policy)
        write = f.raynet_fields_from_outlook(event, zone=self.zone, time_blocker=time_blocker)
        persons = set() if time_blocker else self.persons_for(f.outlook_attendee_emails(event))
        write.update(
            owner=owner_id,
            priority="DEFAULT",
            status="SCHEDULED",
            participants=[{"person": pid} for pid in sorted(persons)],
        )
        return write, persons, time_blocker

    def create_in_raynet(self, link: EventLink, event: dict, owner_id: int, *, intent_stored: bool = False) -> None:
        write, persons, time_blocker = self.raynet_create(link, event, owner_id)
        if not intent_stored:
            # The intent, before the external write: what find_orphan matches a lost reply's record on.
            link.intent = raynet_create_intent(write, owner_id)
            link.save()
        link.raynet_id = self.raynet.create_activity(link.raynet_type, write, ext_id=raynet_ext_id(link))
        expected = f.raynet_after_write(None, write, owner_id=owner_id, wanted_person_ids=persons)
        self.store_raynet_state(link, expected)
        link.outlook_attendees = sorted(set(f.outlook_attendee_emails(event)) & set(self.emails_of(persons)))
        self.done(link)
        reason = Reason.CREATED_TIME_BLOCKER if time_blocker else Reason.CREATED_IN_RAYNET
        self.log.record("created", reason, {"title": write["title"]}, direction=TO_RAYNET, link=link)

    def push_to_raynet(
        self, link: EventLink, event: dict, activity: dict | None, action: Action | None, *, quiet: bool = False
    ) -> None:
        activity = activity or self.raynet_as_synced(link) or self.raynet.get_activity(link.raynet_type, link.raynet_id)
        time_blocker = is_time_blocker(event, link, self.policy)
        wanted = self.participants_wanted(link, activity, event, time_blocker) if activity is not None else set()
        if activity is not None and set(f.raynet_participant_ids(activity)) - wanted and not f.has_row_ids(activity):
            # Removing a participant takes its row id, which only the detail has (not list rows, not the link).
            activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
        if activity is None:
            return self.restore_raynet_gone(link, event)
        write = f.raynet_fields_from_outlook(event, zone=self.zone, time_blocker=time_blocker)
        ops = f.participant_ops(activity, wanted)
        if ops:
            write["participants"] = ops
        expected = f.raynet_after_write(activity, write, owner_id=f.raynet_owner_id(activity), wanted_person_ids=wanted)
        link.record_intent(
            Kind.UPDATE_RAYNET,
            target="raynet",
            raynet_hash=raynet_hash(expected),
            outlook_hash=outlook_hash(event, link, self.policy),
        )
        try:
            self.raynet.update_activity(link.raynet_type, link.raynet_id, write)
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise
            return self.restore_raynet_gone(link, event)  # deleted since the last poll's listing
        self.store_raynet_state(link, expected)
        self.store_outlook_state(link, event)
        self.done(link)
        if not quiet:
            self.log_update(link, action, TO_RAYNET)

    def restore_raynet_gone(self, link: EventLink, event: dict) -> None:
        gone = Action(Kind.RESTORE_IN_RAYNET, Pair(link=link, event=event), TO_RAYNET, Reason.RESTORED_IN_RAYNET)
        self.restore_raynet(link, gone.pair, gone, gone_reason=Gone.DELETED_IN_RAYNET)

    def participants_wanted(self, link, activity, event, time_blocker) -> set[int]:
        """Participants after applying the Outlook attendee changes since the last sync (see link.outlook_attendees)."""
        if time_blocker:
            return set()
        current = set(f.raynet_participant_ids(activity))
        attendees = set(f.outlook_attendee_emails(event))
        shared = set(link.outlook_attendees)
        removed_emails = shared - attendees
        added = self.persons_for(sorted(attendees - shared))
        removed = set()
        if removed_emails:  # who of the participants they are: their e-mails (cached, else one read each)
            removed = {
                pid
                for pid, email in self.raynet.get_person_emails(current).items()
                if email and email.lower() in removed_emails
            }
        link.outlook_attendees = sorted(attendees & (shared | set(self.emails_of(added))))
        return (current - removed) | added

    def restore_raynet(self, link: EventLink, pair: Pair, action: Action, *, gone_reason: Gone | None = None) -> None:
        """Gone in Raynet but edited in Outlook: the edit wins and the activity comes back."""
        gone = gone_reason or action.gone
        if pair.activity is not None and pair.activity.get("status") == "CANCELLED":
            self.raynet.update_activity(link.raynet_type, link.raynet_id, {"status": "SCHEDULED"})
            self.push_to_raynet(link, pair.event, {**pair.activity, "status": "SCHEDULED"}, None, quiet=True)
        else:
            link.forget_raynet_side()
            self.create_in_raynet(link, pair.event, self.mapping.raynet_person_id)
        self.log.record("restored", Reason.RESTORED_IN_RAYNET, {"gone": gone.value}, direction=TO_RAYNET, link=link)

    # --- Raynet → Outlook -------------------------------------------------------------------------
    def export_raynet_activity(self, activity: dict, prepared: EventLink | None = None) -> None:
        link = prepared
        if link is None:
            link = self.export_link(activity)
            link.save()  # the intent, before the external write
        self.create_in_outlook(link, activity)

    def export_link(self, activity: dict) -> EventLink:
        """The link of a Raynet activity about to be created in Outlook, with the create's intent (unsaved)."""
        link = EventLink(
            organization_id=self.mapping.organization_id,
            mapping=self.mapping,
            raynet_type=activity["_entity"],
            raynet_id=activity["id"],
            origin=EventLink.Origin.RAYNET,
        )
        self.store_raynet_state(link, activity)
        link.intent = {"op": Kind.CREATE_IN_OUTLOOK.value, "at": timezone.now().isoformat()}
        return link

    def create_in_outlook(self, link: EventLink, activity: dict, *, restored: bool = False) -> None:
        body = f.outlook_fields_from_raynet(activity, zone=self.zone, keep_all_day=False, time_only=False)
        emails = self.attendee_emails_for(activity)
        if emails:
            body["attendees"] = f.graph_attendees(emails)
        body["showAs"] = "busy"
        # The link's uid is the transactionId of its first create: a rerun's create is the same one (§2).
        transaction_id = None if restored else str(link.uid)
        event = self.outlook.create_event(
            self.mapping.outlook_user_id, body, link_uid=str(link.uid), transaction_id=transaction_id
        )
        self.store_outlook_state(link, event)
        link.outlook_attendees = sorted(set(emails) & set(f.outlook_attendee_emails(event)))
        self.done(link)
        title = str(activity.get("title") or "")
        if emails:
            params = {"title": title, "count": len(emails)}
            self.log.record("created", Reason.CREATED_IN_OUTLOOK_INVITED, params, direction=TO_OUTLOOK, link=link)
        else:
            self.log.record("created", Reason.CREATED_IN_OUTLOOK, {"title": title}, direction=TO_OUTLOOK, link=link)

    def push_to_outlook(self, link: EventLink, activity: dict, event: dict | None, action: Action | None) -> None:
        user_id = self.mapping.outlook_user_id
        as_synced = event is None and self.outlook_as_synced(link) is not None
        event = event or self.outlook_as_synced(link) or self.outlook.get_event(user_id, link.outlook_event_id)
        if event is not None and as_synced and set(self.attendee_emails_for(activity)) != set(link.outlook_attendees):
            # Rewriting the attendees takes them as Outlook has them (names, types, rooms): read the event.
            event, as_synced = self.outlook.get_event(user_id, link.outlook_event_id), False
        if event is None:
            return self.restore_outlook_gone(link, activity)
        time_only = is_time_blocker(event, link, self.policy)
        patch = f.outlook_fields_from_raynet(
            activity, zone=self.zone, keep_all_day=bool(event.get("isAllDay")), time_only=time_only
        )
        if not time_only:
            self.add_attendee_changes(patch, link, activity, event)
        link.record_intent(
            Kind.UPDATE_OUTLOOK,
            target="outlook",
            outlook_hash=outlook_hash({**event, **patch}, link, self.policy),
            raynet_hash=raynet_hash(activity),
        )
        try:
            updated = self.outlook.update_event(user_id, link.outlook_event_id, patch)
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND or not as_synced:
                raise
            return self.restore_outlook_gone(link, activity)  # deleted since the last delta
        self.store_outlook_state(link, updated)
        self.store_raynet_state(link, activity)
        self.done(link)
        self.log_update(link, action, TO_OUTLOOK)

    def restore_outlook_gone(self, link: EventLink, activity: dict) -> None:
        pair = Pair(link=link, activity=activity, outlook_gone=Gone.DELETED_IN_OUTLOOK)
        self.restore_outlook(
            link, activity, Action(Kind.RESTORE_IN_OUTLOOK, pair, TO_OUTLOOK, gone=Gone.DELETED_IN_OUTLOOK)
        )

    def log_update(self, link: EventLink, action: Action | None, direction: str) -> None:
        reason = action.reason if action is not None else None
        if action is not None and action.conflict:
            self.log.record("conflict", reason, direction=direction, link=link, details={"lost": action.conflict})
        else:
            updated = Reason.UPDATED_RAYNET if direction == TO_RAYNET else Reason.UPDATED_OUTLOOK
            self.log.record("updated", updated, direction=direction, link=link)

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

    def restore_outlook(self, link: EventLink, activity: dict, action: Action) -> None:
        """Gone in Outlook but edited in Raynet: the edit wins and the event is created again."""
        link.forget_outlook_side()
        self.create_in_outlook(link, activity, restored=True)
        params = {"gone": action.gone.value}
        self.log.record("restored", Reason.RESTORED_IN_OUTLOOK, params, direction=TO_OUTLOOK, link=link)

    # --- deletion ---------------------------------------------------------------------------------
    def delete_in_raynet(self, link: EventLink, action: Action) -> None:
        mode = self.policy.deletion_mode
        if mode == DeletionMode.DELETE:
            self.raynet.delete_activity(link.raynet_type, link.raynet_id)
            done = "deleted"
        elif mode == DeletionMode.CANCEL:
            self.raynet.update_activity(link.raynet_type, link.raynet_id, {"status": "CANCELLED"})
            done = "cancelled"
        else:
            done = "ignored"
        link.mark_deleted()
        self.done(link)
        self.log.record(done, action.reason, action.params, direction=TO_RAYNET, link=link)

    def delete_in_outlook(self, link: EventLink, event: dict | None, action: Action) -> None:
        """Attendees get Outlook's cancellation notice (SPEC 5): a meeting with attendees the mailbox organizes
        is cancelled, anything else deleted. Without the event in hand (the Raynet side changed, not Outlook's),
        the link tells: we made the event (so the mailbox organizes it) and invited link.outlook_attendees.
        Deleting a meeting on the organizer's calendar sends the cancellations too (graph reference §2), so
        an Outlook-made meeting loses no notice, only the comment."""
        user_id = self.mapping.outlook_user_id
        if event is not None:
            organized_meeting = bool(event.get("isOrganizer") and event.get("attendees"))
        else:
            organized_meeting = link.origin == EventLink.Origin.RAYNET and bool(link.outlook_attendees)
        try:
            if organized_meeting:
                self.outlook.cancel_event(user_id, link.outlook_event_id, "Cancelled in Raynet CRM.")
            else:
                self.outlook.delete_event(user_id, link.outlook_event_id)
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise
            organized_meeting = False  # gone already: nothing to cancel
        done, reason = (
            ("cancelled", Reason.CANCELLED_OTHER_SIDE) if organized_meeting else ("deleted", Reason.DELETED_OTHER_SIDE)
        )
        link.mark_deleted()
        self.done(link)
        self.log.record(done, reason, action.params, direction=TO_OUTLOOK, link=link)

    # --- state on the link ------------------------------------------------------------------------
    def store_outlook_state(self, link: EventLink, event: dict) -> None:
        start, end = f.outlook_times(event)
        link.outlook_event_id = event["id"]
        link.outlook_hash = outlook_hash(event, link, self.policy)
        link.outlook_change_key = event.get("changeKey") or ""
        link.ical_uid = event.get("iCalUId") or link.ical_uid
        link.series_master_id = event.get("seriesMasterId") or link.series_master_id
        link.starts_at, link.ends_at = start, end
        link.baseline = {
            **link.baseline,
            "all_day": bool(event.get("isAllDay")),
            "private": f.outlook_is_private(event),
            "attendees": f.outlook_attendee_emails(event),
        }

    def store_raynet_state(self, link: EventLink, activity: dict) -> None:
        link.raynet_hash = raynet_hash(activity)
        link.raynet_updated_at = activity.get("rowInfo.updatedAt") or link.raynet_updated_at
        if link.starts_at is None:
            link.starts_at, link.ends_at = f.raynet_times(activity)
        link.baseline = {
            **link.baseline,
            "status": activity.get("status") or "",
            "participants": f.raynet_participant_ids(activity),
            "owner": f.raynet_owner_id(activity),
        }

    # --- the other side as last synced, instead of reading it before a write ------------------------
    @staticmethod
    def raynet_as_synced(link: EventLink) -> dict | None:
        """The Raynet record as the link last synced it, for the parts a write from Outlook leaves alone.

        When the record changed since, the change listing brought it (the pair's activity), so this is
        used only when it did not. It has no participant row ids: removing a participant reads the detail.
        """
        if "status" not in link.baseline:
            return None
        return {
            "_entity": link.raynet_type,
            "id": link.raynet_id,
            "owner": {"id": link.baseline.get("owner")},
            "status": link.baseline["status"],
            "participants": [{"person": pid} for pid in link.baseline.get("participants") or []],
        }

    @staticmethod
    def outlook_as_synced(link: EventLink) -> dict | None:
        """The Outlook event as the link last synced it, for the parts a PATCH from Raynet leaves alone
        (the delta brought it when it changed since). Attendees are addresses only: rewriting them reads
        the event (their names, types and rooms)."""
        if "all_day" not in link.baseline:
            return None
        return {
            "id": link.outlook_event_id,
            "isAllDay": link.baseline["all_day"],
            "isCancelled": False,
            "sensitivity": "private" if link.baseline.get("private") else "normal",
            "attendees": [{"emailAddress": {"address": email}} for email in link.baseline.get("attendees") or []],
        }

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
