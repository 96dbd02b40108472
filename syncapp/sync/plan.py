"""Deciding: one pair of (Outlook event, Raynet activity, link state) → one Action with its reason.

Everything here is a pure function of what observe.py read, the link as the database holds it and
the mapping's policy: no request, no query, no save. That is what lets the reconcile table be tested
as a table (tests/test_sync_plan.py) and what makes a dry run the same code as a real one.
The status-table rule (vdirsyncer's): a side changed when its normalized hash differs from the one
stored on the link at the last sync (fields.py), never by comparing the two sides with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from syncapp.models import ConflictWinner, DeletionMode, EffectivePolicy, EventLink, PrivateEventsMode, SyncLogEntry
from syncapp.sync import fields as f
from syncapp.sync.reasons import Gone, Reason

ACTIVE = EventLink.State.ACTIVE
FROZEN = EventLink.State.FROZEN
DELETED = EventLink.State.DELETED
TO_OUTLOOK = SyncLogEntry.Direction.TO_OUTLOOK
TO_RAYNET = SyncLogEntry.Direction.TO_RAYNET
NO_DIRECTION = SyncLogEntry.Direction.NONE


class Kind(StrEnum):
    CREATE_IN_OUTLOOK = "create_in_outlook"
    CREATE_IN_RAYNET = "create_in_raynet"
    UPDATE_OUTLOOK = "update_outlook"
    UPDATE_RAYNET = "update_raynet"
    DELETE_IN_OUTLOOK = "delete_in_outlook"
    DELETE_IN_RAYNET = "delete_in_raynet"
    RESTORE_IN_OUTLOOK = "restore_in_outlook"
    RESTORE_IN_RAYNET = "restore_in_raynet"
    FREEZE = "freeze"
    FORGET = "forget"  # both sides are gone: the link is closed, nothing is written
    SETTLE = "settle"  # an interrupted run's own write is on the other side: record it, write nothing
    SKIP = "skip"
    # An occurrence of a recurring series beyond the occurrence horizon: not yet (SPEC policy 6). Never a
    # deletion: it is created when a whole-window read finds it within the horizon.
    LATER = "later"
    NOTHING = "nothing"


DELETIONS = {Kind.DELETE_IN_OUTLOOK, Kind.DELETE_IN_RAYNET}
CREATES = {Kind.CREATE_IN_OUTLOOK, Kind.CREATE_IN_RAYNET}


@dataclass
class Pair:
    """What this run read about one link (or one not yet linked item)."""

    link: EventLink | None = None
    event: dict | None = None  # current Outlook event, when it changed or was looked up
    outlook_gone: Gone | None = None
    activity: dict | None = None  # current Raynet activity, when it changed or was looked up
    raynet_gone: Gone | None = None


@dataclass(frozen=True)
class Facts:
    """What observe learned beyond the pairs, for decisions that look past one pair."""

    window: tuple[datetime, datetime]
    mailbox_person_id: int
    # E-mails of users with an enabled mapping: an invitation they organize is synced from their own mailbox.
    mapped_organizers: frozenset[str] = frozenset()
    # Raynet records already linked to another mailbox: (type, id) → that mailbox.
    elsewhere: Mapping[tuple[str, int], str] = field(default_factory=dict)
    # iCalUId → Raynet (type, id) of a live link in the organization: an invitation synced already.
    invitation_links: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)
    # Organizer e-mail → Raynet person id, for the organizers of invitations in this run (None: not a user).
    organizer_persons: Mapping[str, int | None] = field(default_factory=dict)
    # Occurrences of a series starting after this become Raynet events later (None: no horizon).
    occurrence_horizon: datetime | None = None


@dataclass(frozen=True)
class Action:
    kind: Kind
    pair: Pair
    direction: str = NO_DIRECTION
    reason: Reason | None = None
    params: dict = field(default_factory=dict)
    owner_id: int | None = None  # the Raynet owner of a create in Raynet
    conflict: dict | None = None  # the losing side's version, kept in the log
    gone: Gone | None = None

    @property
    def title(self) -> str:
        if self.pair.activity is not None:
            return str(self.pair.activity.get("title") or "")
        if self.pair.event is not None:
            return str(self.pair.event.get("subject") or "")
        return ""

    @property
    def starts_at(self) -> datetime | None:
        if self.pair.link is not None and self.pair.link.starts_at:
            return self.pair.link.starts_at
        if self.pair.activity is not None:
            return f.raynet_times(self.pair.activity)[0]
        if self.pair.event is not None:
            return f.outlook_times(self.pair.event)[0]
        return None


# --- hashes and scope -----------------------------------------------------------------------------


def is_time_blocker(event: dict, link: EventLink | None, policy: EffectivePolicy) -> bool:
    # Privacy is an Outlook notion: it governs what Outlook events reveal in Raynet,
    # never what Raynet's own activities show (those were not private to begin with).
    from_outlook = link is None or link.origin == EventLink.Origin.OUTLOOK
    return from_outlook and f.outlook_is_private(event) and policy.private_events_mode == PrivateEventsMode.TIME_BLOCKER


def outlook_hash(event: dict, link: EventLink | None, policy: EffectivePolicy) -> str:
    return f.fingerprint_hash(f.outlook_fingerprint(event, time_blocker=is_time_blocker(event, link, policy)))


def raynet_hash(activity: dict) -> str:
    return f.fingerprint_hash(f.raynet_fingerprint(activity))


def is_out_of_scope(event: dict, link: EventLink, policy: EffectivePolicy) -> bool:
    return (
        link.origin == EventLink.Origin.OUTLOOK
        and f.outlook_is_private(event)
        and policy.private_events_mode == PrivateEventsMode.SKIP
    )


# --- the table ------------------------------------------------------------------------------------


def plan(pair: Pair, policy: EffectivePolicy, facts: Facts) -> Action:
    link = pair.link
    if link is None:
        if pair.event is not None:
            return plan_import(pair, policy, facts)
        if pair.activity is not None:
            return plan_export(pair, policy, facts)
        return Action(Kind.NOTHING, pair)
    if link.state == DELETED:
        return Action(Kind.NOTHING, pair)
    if link.state == FROZEN:
        if pair.activity is not None or pair.event is not None or pair.outlook_gone:
            return Action(Kind.SKIP, pair, reason=Reason.FROZEN_SKIPPED)
        return Action(Kind.NOTHING, pair)
    return plan_link(pair, link, policy)


def plan_link(pair: Pair, link: EventLink, policy: EffectivePolicy) -> Action:
    event, outlook_gone, activity, raynet_gone = pair.event, pair.outlook_gone, pair.activity, pair.raynet_gone
    if event is not None and is_out_of_scope(event, link, policy):
        outlook_gone, event = Gone.MADE_PRIVATE, None
    outlook_now = outlook_hash(event, link, policy) if event is not None else None
    raynet_now = raynet_hash(activity) if activity is not None else None
    outlook_base, raynet_base, own_write = baselines(link, outlook_now, raynet_now)
    outlook_changed = outlook_now is not None and outlook_now != outlook_base
    raynet_changed = raynet_now is not None and raynet_now != raynet_base
    status = (activity or {}).get("status")
    if raynet_changed and status == "COMPLETED" and not policy.sync_completed:
        return Action(Kind.FREEZE, pair, reason=Reason.FROZEN)
    if raynet_changed and status == "CANCELLED":
        raynet_gone, raynet_changed = Gone.CANCELLED_IN_RAYNET, False
    if outlook_gone and raynet_gone:
        params = {"outlook_gone": outlook_gone.value, "raynet_gone": raynet_gone.value}
        return Action(Kind.FORGET, pair, reason=Reason.BOTH_GONE, params=params)
    if outlook_gone and raynet_changed:
        return restore(Kind.RESTORE_IN_OUTLOOK, pair, outlook_gone, TO_OUTLOOK, Reason.RESTORED_IN_OUTLOOK)
    if raynet_gone and outlook_changed:
        return restore(Kind.RESTORE_IN_RAYNET, pair, raynet_gone, TO_RAYNET, Reason.RESTORED_IN_RAYNET)
    if outlook_gone:
        reason = RAYNET_DELETION_REASONS[policy.deletion_mode]
        return Action(Kind.DELETE_IN_RAYNET, pair, TO_RAYNET, reason, {"gone": outlook_gone.value}, gone=outlook_gone)
    if raynet_gone:
        # Deleted or cancelled: apply decides, by whether Outlook's event is a meeting with attendees.
        return Action(Kind.DELETE_IN_OUTLOOK, pair, TO_OUTLOOK, params={"gone": raynet_gone.value}, gone=raynet_gone)
    if outlook_changed and raynet_changed:
        return plan_conflict(pair, policy)
    if outlook_changed:
        return Action(Kind.UPDATE_RAYNET, pair, TO_RAYNET, Reason.UPDATED_RAYNET)
    if raynet_changed:
        return Action(Kind.UPDATE_OUTLOOK, pair, TO_OUTLOOK, Reason.UPDATED_OUTLOOK)
    if own_write:
        return Action(Kind.SETTLE, pair, reason=Reason.OWN_WRITE_RECOGNIZED)
    return Action(Kind.NOTHING, pair)


def baselines(link: EventLink, outlook_now: str | None, raynet_now: str | None) -> tuple[str, str, bool]:
    """The hashes to compare with: the link's, or those of a write a run sent but died before recording.

    The intent names the side written and the hash it will have; when that side shows exactly it, the
    write landed, so neither side's state is a user's change (not a conflict, nothing flattened).
    """
    intent = link.intent or {}
    target = intent.get("target")
    if target == "outlook" and outlook_now is not None and outlook_now == intent.get("outlook_hash"):
        return outlook_now, intent.get("raynet_hash") or link.raynet_hash, True
    if target == "raynet" and raynet_now is not None and raynet_now == intent.get("raynet_hash"):
        return intent.get("outlook_hash") or link.outlook_hash, raynet_now, True
    return link.outlook_hash, link.raynet_hash, False


def restore(kind: Kind, pair: Pair, gone: Gone, direction: str, reason: Reason) -> Action:
    return Action(kind, pair, direction, reason, {"gone": gone.value}, gone=gone)


RAYNET_DELETION_REASONS = {
    DeletionMode.DELETE: Reason.DELETED_OTHER_SIDE,
    DeletionMode.CANCEL: Reason.CANCELLED_OTHER_SIDE,
    DeletionMode.IGNORE: Reason.DELETION_IGNORED,
}


def plan_conflict(pair: Pair, policy: EffectivePolicy) -> Action:
    winner = policy.conflict_winner
    if winner == ConflictWinner.LATEST:
        outlook_at = parse_iso(pair.event.get("lastModifiedDateTime"))
        raynet_at = pair.activity.get("rowInfo.updatedAt")
        winner = (
            ConflictWinner.RAYNET if raynet_at and outlook_at and raynet_at > outlook_at else ConflictWinner.OUTLOOK
        )
    if winner == ConflictWinner.OUTLOOK:
        lost = {"side": "raynet", "version": f.raynet_fingerprint(pair.activity)}
        return Action(Kind.UPDATE_RAYNET, pair, TO_RAYNET, Reason.CONFLICT_OUTLOOK_KEPT, conflict=lost)
    lost = {"side": "outlook", "version": f.outlook_fingerprint(pair.event)}
    return Action(Kind.UPDATE_OUTLOOK, pair, TO_OUTLOOK, Reason.CONFLICT_RAYNET_KEPT, conflict=lost)


def plan_import(pair: Pair, policy: EffectivePolicy, facts: Facts) -> Action:
    """An Outlook event with no link: a Raynet event to create, or a skip with its reason."""
    event = pair.event
    skipped = import_skip(event, policy, facts.window)
    if skipped is None:
        owner_id, skipped = owner_of(event, facts)
        if skipped is None and beyond_horizon(event, facts.occurrence_horizon):
            return Action(Kind.LATER, pair, TO_RAYNET, Reason.BEYOND_HORIZON)
        if skipped is None:
            return Action(Kind.CREATE_IN_RAYNET, pair, TO_RAYNET, owner_id=owner_id)
    reason, params = skipped
    return Action(Kind.SKIP, pair, TO_RAYNET, reason, params)


def import_skip(event: dict, policy: EffectivePolicy, window: tuple[datetime, datetime]):
    if event.get("type") == "seriesMaster":
        return Reason.SERIES_MASTER, {}
    if event.get("isCancelled"):
        return Reason.CANCELLED_EVENT, {}
    if f.outlook_is_private(event) and policy.private_events_mode == PrivateEventsMode.SKIP:
        return Reason.PRIVATE_SKIPPED, {}
    start, end = f.outlook_times(event)
    if end < window[0] or start > window[1]:
        return Reason.OUTSIDE_WINDOW, {}
    return None


def beyond_horizon(event: dict, horizon: datetime | None) -> bool:
    """An occurrence of a series (a single event never is) that starts after the occurrence horizon."""
    return horizon is not None and bool(event.get("seriesMasterId")) and f.outlook_times(event)[0] > horizon


def owner_of(event: dict, facts: Facts):
    """Raynet owner of an Outlook event: the mailbox's user, or for an invitation, its organizer (SPEC 4)."""
    if event.get("isOrganizer", True):
        return facts.mailbox_person_id, None
    organizer = f.outlook_organizer_email(event)
    existing = facts.invitation_links.get(event.get("iCalUId") or "")
    if existing is not None:
        return None, (Reason.INVITATION_ALREADY_SYNCED, {"raynet_type": existing[0], "raynet_id": existing[1]})
    if organizer in facts.mapped_organizers:
        return None, (Reason.FROM_ORGANIZERS_MAILBOX, {"organizer": organizer})
    person_id = facts.organizer_persons.get(organizer)
    if person_id is None:
        return None, (Reason.ORGANIZER_NOT_RAYNET_USER, {"organizer": organizer or "(unknown)"})
    return person_id, None


def plan_export(pair: Pair, policy: EffectivePolicy, facts: Facts) -> Action:
    """A Raynet activity with no link: an Outlook event to create, or a skip with its reason."""
    activity = pair.activity
    elsewhere = facts.elsewhere.get((activity["_entity"], activity["id"]))
    status = activity.get("status")
    start, end = f.raynet_times(activity)
    if elsewhere is not None:
        reason, params = Reason.ALREADY_SYNCED_ELSEWHERE, {"mailbox": elsewhere}
    elif status == "CANCELLED":
        reason, params = Reason.CANCELLED_IN_RAYNET, {}
    elif status == "COMPLETED" and not policy.sync_completed:
        reason, params = Reason.COMPLETED_WHEN_FIRST_SEEN, {}
    elif start is None:
        reason, params = Reason.NO_SCHEDULED_TIME, {}
    elif end < facts.window[0] or start > facts.window[1]:
        reason, params = Reason.OUTSIDE_WINDOW, {}
    else:
        return Action(Kind.CREATE_IN_OUTLOOK, pair, TO_OUTLOOK)
    return Action(Kind.SKIP, pair, TO_OUTLOOK, reason, params)


# --- the first sync's order ----------------------------------------------------------------------


def nearest_first(actions: list[Action], now: datetime) -> list[Action]:
    """Creates by their distance from now, past or future: a first sync that the Raynet budget (or the run's
    deadline) cuts short has made the events that matter soonest. Other actions first, deletions last."""

    def key(action: Action) -> tuple[bool, bool, timedelta]:
        if action.kind not in CREATES:
            return action.kind in DELETIONS, False, timedelta(0)
        start = action.starts_at
        return False, True, abs(start - now) if start is not None else timedelta.max

    return sorted(actions, key=key)


# --- the mass-delete guard ------------------------------------------------------------------------


def too_many_deletions(deletions: int, active: int, *, min_count: int, min_percent: int) -> bool:
    """A run that would delete more than the threshold of a mailbox's links stops for an admin (SPEC 5)."""
    return deletions > min_count and deletions * 100 > min_percent * max(active, 1)


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def edited_since_created(event: dict) -> bool:
    """Whether a person changed the event after it was created (Graph stamps a create a moment apart)."""
    created, modified = parse_iso(event.get("createdDateTime")), parse_iso(event.get("lastModifiedDateTime"))
    return bool(created and modified and modified - created > timedelta(seconds=5))
