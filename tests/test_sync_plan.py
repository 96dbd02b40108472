"""The reconcile table: plan() is a pure function of (pair, link, policy), tested without sandboxes or database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncapp.models import EffectivePolicy, EventLink
from syncapp.sync.plan import Facts, Kind, Pair, outlook_hash, plan, raynet_hash
from syncapp.sync.reasons import Gone, Reason, render_reason

START = datetime(2026, 6, 1, 9, tzinfo=UTC)
WINDOW = (START - timedelta(days=30), START + timedelta(days=365))
ME, COLLEAGUE = 11, 22


def policy(**overrides) -> EffectivePolicy:
    values = dict(
        private_events_mode="standard",
        sync_completed=False,
        deletion_mode="cancel",
        conflict_winner="latest",
        window_days_back=30,
        window_days_ahead=365,
    )
    return EffectivePolicy(**{**values, **overrides})


def event(subject="Call", start=START, **fields) -> dict:
    graph = {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}
    end = {"dateTime": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}
    return {"id": "AAMk1", "subject": subject, "start": graph, "end": end, "isOrganizer": True, **fields}


def activity(title="Call", start=START, **fields) -> dict:
    return {
        "_entity": "meeting",
        "id": 5,
        "title": title,
        "scheduledFrom": start,
        "scheduledTill": start + timedelta(hours=1),
        "status": "SCHEDULED",
        "owner": {"id": ME},
        **fields,
    }


def link(origin="raynet", **fields) -> EventLink:
    """A link as the last sync left it: both sides' hashes of the default event and activity."""
    made = EventLink(pk=1, origin=origin, raynet_type="meeting", raynet_id=5, outlook_event_id="AAMk1")
    made.outlook_hash = outlook_hash(event(), made, policy())
    made.raynet_hash = raynet_hash(activity())
    for name, value in fields.items():
        setattr(made, name, value)
    return made


FACTS = Facts(window=WINDOW, mailbox_person_id=ME)
HORIZON_FACTS = Facts(window=WINDOW, mailbox_person_id=ME, occurrence_horizon=START + timedelta(days=90))
CASES = [
    # (name, pair, policy, facts, kind, reason)
    ("new Outlook event", Pair(event=event()), policy(), FACTS, Kind.CREATE_IN_RAYNET, None),
    (
        "private Outlook event, policy skip",
        Pair(event=event(sensitivity="private")),
        policy(private_events_mode="skip"),
        FACTS,
        Kind.SKIP,
        Reason.PRIVATE_SKIPPED,
    ),
    ("series master", Pair(event=event(type="seriesMaster")), policy(), FACTS, Kind.SKIP, Reason.SERIES_MASTER),
    ("cancelled new event", Pair(event=event(isCancelled=True)), policy(), FACTS, Kind.SKIP, Reason.CANCELLED_EVENT),
    (
        "outside the window",
        Pair(event=event(start=START + timedelta(days=400))),
        policy(),
        FACTS,
        Kind.SKIP,
        Reason.OUTSIDE_WINDOW,
    ),
    (
        "invitation from a stranger",
        Pair(event=event(isOrganizer=False, organizer={"emailAddress": {"address": "jan@customer.com"}})),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, organizer_persons={"jan@customer.com": None}),
        Kind.SKIP,
        Reason.ORGANIZER_NOT_RAYNET_USER,
    ),
    (
        "invitation from a mapped colleague",
        Pair(event=event(isOrganizer=False, organizer={"emailAddress": {"address": "bob@acme.test"}})),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, mapped_organizers=frozenset({"bob@acme.test"})),
        Kind.SKIP,
        Reason.FROM_ORGANIZERS_MAILBOX,
    ),
    (
        "invitation synced already",
        Pair(event=event(isOrganizer=False, iCalUId="U1")),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, invitation_links={"U1": ("event", 9)}),
        Kind.SKIP,
        Reason.INVITATION_ALREADY_SYNCED,
    ),
    (
        "occurrence of a series beyond the occurrence horizon: later, not a skip",
        Pair(event=event(start=START + timedelta(days=91), seriesMasterId="S1", type="occurrence")),
        policy(),
        HORIZON_FACTS,
        Kind.LATER,
        Reason.BEYOND_HORIZON,
    ),
    (
        "occurrence within the horizon",
        Pair(event=event(start=START + timedelta(days=89), seriesMasterId="S1", type="occurrence")),
        policy(),
        HORIZON_FACTS,
        Kind.CREATE_IN_RAYNET,
        None,
    ),
    (
        "single event beyond the horizon: the horizon is for series only",
        Pair(event=event(start=START + timedelta(days=200))),
        policy(),
        HORIZON_FACTS,
        Kind.CREATE_IN_RAYNET,
        None,
    ),
    (
        "linked occurrence beyond the horizon, edited in Outlook: updated as ever",
        Pair(link=link(origin="outlook", series_master_id="S1"), event=event("New", seriesMasterId="S1")),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, occurrence_horizon=START - timedelta(days=1)),
        Kind.UPDATE_RAYNET,
        Reason.UPDATED_RAYNET,
    ),
    (
        "linked occurrence beyond the horizon, deleted in Outlook: the deletion policy as ever",
        Pair(link=link(origin="outlook", series_master_id="S1"), outlook_gone=Gone.OCCURRENCE_DELETED),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, occurrence_horizon=START - timedelta(days=1)),
        Kind.DELETE_IN_RAYNET,
        Reason.CANCELLED_OTHER_SIDE,
    ),
    ("new Raynet activity", Pair(activity=activity()), policy(), FACTS, Kind.CREATE_IN_OUTLOOK, None),
    (
        "completed when first seen",
        Pair(activity=activity(status="COMPLETED")),
        policy(),
        FACTS,
        Kind.SKIP,
        Reason.COMPLETED_WHEN_FIRST_SEEN,
    ),
    (
        "completed when first seen, sync_completed",
        Pair(activity=activity(status="COMPLETED")),
        policy(sync_completed=True),
        FACTS,
        Kind.CREATE_IN_OUTLOOK,
        None,
    ),
    (
        "cancelled new activity",
        Pair(activity=activity(status="CANCELLED")),
        policy(),
        FACTS,
        Kind.SKIP,
        Reason.CANCELLED_IN_RAYNET,
    ),
    (
        "linked to another mailbox",
        Pair(activity=activity()),
        policy(),
        Facts(window=WINDOW, mailbox_person_id=ME, elsewhere={("meeting", 5): "bob@acme.test"}),
        Kind.SKIP,
        Reason.ALREADY_SYNCED_ELSEWHERE,
    ),
    ("nothing changed", Pair(link=link(), event=event(), activity=activity()), policy(), FACTS, Kind.NOTHING, None),
    (
        "Outlook edit",
        Pair(link=link(), event=event("Call v2")),
        policy(),
        FACTS,
        Kind.UPDATE_RAYNET,
        Reason.UPDATED_RAYNET,
    ),
    (
        "Raynet edit",
        Pair(link=link(), activity=activity("Call v2")),
        policy(),
        FACTS,
        Kind.UPDATE_OUTLOOK,
        Reason.UPDATED_OUTLOOK,
    ),
    (
        "both edited, Raynet later",
        Pair(
            link=link(),
            event=event("From Outlook", lastModifiedDateTime="2026-05-01T10:00:00Z"),
            activity=activity("From Raynet", **{"rowInfo.updatedAt": datetime(2026, 5, 1, 11, tzinfo=UTC)}),
        ),
        policy(),
        FACTS,
        Kind.UPDATE_OUTLOOK,
        Reason.CONFLICT_RAYNET_KEPT,
    ),
    (
        "both edited, Outlook always wins",
        Pair(link=link(), event=event("From Outlook"), activity=activity("From Raynet")),
        policy(conflict_winner="outlook"),
        FACTS,
        Kind.UPDATE_RAYNET,
        Reason.CONFLICT_OUTLOOK_KEPT,
    ),
    (
        "deleted in Outlook, cancel",
        Pair(link=link(), outlook_gone=Gone.DELETED_IN_OUTLOOK),
        policy(),
        FACTS,
        Kind.DELETE_IN_RAYNET,
        Reason.CANCELLED_OTHER_SIDE,
    ),
    (
        "deleted in Outlook, ignore",
        Pair(link=link(), outlook_gone=Gone.DELETED_IN_OUTLOOK),
        policy(deletion_mode="ignore"),
        FACTS,
        Kind.DELETE_IN_RAYNET,
        Reason.DELETION_IGNORED,
    ),
    (
        "made private, policy skip",
        Pair(link=link(origin="outlook"), event=event(sensitivity="private")),
        policy(private_events_mode="skip"),
        FACTS,
        Kind.DELETE_IN_RAYNET,
        Reason.CANCELLED_OTHER_SIDE,
    ),
    (
        "deleted in Raynet",
        Pair(link=link(), raynet_gone=Gone.DELETED_IN_RAYNET),
        policy(),
        FACTS,
        Kind.DELETE_IN_OUTLOOK,
        None,
    ),
    (
        "deleted in Outlook, edited in Raynet",
        Pair(link=link(), outlook_gone=Gone.DELETED_IN_OUTLOOK, activity=activity("Agenda added")),
        policy(),
        FACTS,
        Kind.RESTORE_IN_OUTLOOK,
        Reason.RESTORED_IN_OUTLOOK,
    ),
    (
        "deleted in Raynet, edited in Outlook",
        Pair(link=link(), raynet_gone=Gone.DELETED_IN_RAYNET, event=event("Moved")),
        policy(),
        FACTS,
        Kind.RESTORE_IN_RAYNET,
        Reason.RESTORED_IN_RAYNET,
    ),
    (
        "cancelled in Raynet, deleted in Outlook",
        Pair(link=link(), outlook_gone=Gone.DELETED_IN_OUTLOOK, activity=activity(status="CANCELLED")),
        policy(),
        FACTS,
        Kind.FORGET,
        Reason.BOTH_GONE,
    ),
    (
        "completed in Raynet",
        Pair(link=link(), activity=activity(status="COMPLETED")),
        policy(),
        FACTS,
        Kind.FREEZE,
        Reason.FROZEN,
    ),
    (
        "completed in Raynet, sync_completed",
        Pair(link=link(), activity=activity(status="COMPLETED")),
        policy(sync_completed=True),
        FACTS,
        Kind.UPDATE_OUTLOOK,
        Reason.UPDATED_OUTLOOK,
    ),
    (
        "frozen link, Raynet notes added",
        Pair(link=link(state="frozen"), activity=activity(description="Notes")),
        policy(),
        FACTS,
        Kind.SKIP,
        Reason.FROZEN_SKIPPED,
    ),
    ("closed link", Pair(link=link(state="deleted"), event=event("x")), policy(), FACTS, Kind.NOTHING, None),
]


@pytest.mark.parametrize(
    ("pair", "rules", "facts", "kind", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_reconcile_table(pair, rules, facts, kind, reason):
    action = plan(pair, rules, facts)

    assert (action.kind, action.reason) == (kind, reason)


def test_an_invitation_from_a_raynet_user_without_a_mapping_is_owned_by_the_organizer():
    invitation = event(isOrganizer=False, organizer={"emailAddress": {"address": "carol@acme.test"}})
    facts = Facts(window=WINDOW, mailbox_person_id=ME, organizer_persons={"carol@acme.test": COLLEAGUE})

    action = plan(Pair(event=invitation), policy(), facts)

    assert (action.kind, action.owner_id) == (Kind.CREATE_IN_RAYNET, COLLEAGUE)


def test_the_skip_reasons_read_as_the_spec_words_them():
    stranger = event(isOrganizer=False, organizer={"emailAddress": {"address": "jan@customer.com"}})
    facts = Facts(window=WINDOW, mailbox_person_id=ME, organizer_persons={"jan@customer.com": None})
    action = plan(Pair(event=stranger), policy(), facts)

    assert render_reason(action.reason, action.params) == "skipped: organizer jan@customer.com is not a Raynet user"
    private = plan(Pair(event=event(sensitivity="private")), policy(private_events_mode="skip"), FACTS)
    assert render_reason(private.reason, private.params) == "skipped: private event, policy = skip"
    conflict = plan(
        Pair(link=link(), event=event("O"), activity=activity("R")), policy(conflict_winner="outlook"), FACTS
    )
    assert render_reason(conflict.reason, conflict.params).startswith("conflict: Outlook change kept")


def test_our_own_write_recorded_as_an_intent_is_not_a_change_nor_a_conflict():
    """A run died after its Outlook PATCH and before recording it: Outlook shows exactly what we wrote."""
    patched, edited = event("Call v2"), activity("Call v2")
    before = link()
    before.intent = {
        "target": "outlook",
        "outlook_hash": outlook_hash(patched, before, policy()),
        "raynet_hash": raynet_hash(edited),
    }

    settled = plan(Pair(link=before, event=patched, activity=edited), policy(), FACTS)
    later_edit = plan(Pair(link=before, event=patched, activity=activity("Call v3")), policy(), FACTS)
    not_landed = plan(Pair(link=before, event=event(), activity=edited), policy(), FACTS)

    assert settled.kind == Kind.SETTLE
    assert (later_edit.kind, later_edit.reason) == (Kind.UPDATE_OUTLOOK, Reason.UPDATED_OUTLOOK)
    assert (not_landed.kind, not_landed.reason) == (Kind.UPDATE_OUTLOOK, Reason.UPDATED_OUTLOOK)
