"""SPEC policy 5: deletions both ways, restores, the sync window, and the mass-delete guard."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.test import override_settings

from syncapp.models import EventLink, UserMapping
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db


def synced_outlook_event(world, subject="Planning", days=2):
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, subject, soon(days, 9), soon(days, 10))
    world.sync()
    [record] = world.raynet_events(title=subject)
    return event_id, record["id"]


def synced_raynet_meeting(world, title="Visit", participants=()):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, title, soon(3, 9), soon(3, 10), participants=list(participants)
    )
    world.sync()
    [event] = [e for e in world.outlook_events(world.alice) if e["subject"] == title]
    return meeting_id, event["id"]


# --- Outlook → Raynet ---------------------------------------------------------------------------


def test_an_outlook_deletion_marks_the_raynet_activity_cancelled_by_default(world):
    event_id, record_id = synced_outlook_event(world)
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.sync()

    assert world.raynet.activity("event", record_id)["status"] == "CANCELLED"
    assert world.reasons("cancelled") == ["deleted in Outlook: cancelled on the other side"]
    assert world.links(world.alice)[0].state == EventLink.State.DELETED


def test_an_outlook_deletion_deletes_the_raynet_activity_when_policy_is_delete(world):
    world.set_policy(deletion_mode="delete")
    event_id, record_id = synced_outlook_event(world)
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.sync()

    assert world.raynet.activity("event", record_id) is None


def test_an_outlook_deletion_is_ignored_when_policy_is_ignore(world):
    world.set_policy(deletion_mode="ignore")
    event_id, record_id = synced_outlook_event(world)
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.reset_calls()
    world.sync()

    assert world.raynet.activity("event", record_id)["status"] == "SCHEDULED"
    assert world.writes()["raynet"] == 0
    assert world.reasons("ignored") == ["deleted in Outlook: left as it is (deletion policy = ignore)"]


def test_a_meeting_cancelled_by_its_organizer_cancels_the_raynet_copy(world):
    event_id = world.outlook.person_create_event(
        world.alice.mailbox_id, "Steering", soon(4, 9), soon(4, 10), attendees=["jan@customer.test"]
    )
    world.sync()
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.sync()

    [record] = world.raynet_events(title="Steering")
    assert record["status"] == "CANCELLED"


# --- Raynet → Outlook ---------------------------------------------------------------------------


def test_a_raynet_cancellation_cancels_the_meeting_and_attendees_get_outlooks_notice(world):
    meeting_id, event_id = synced_raynet_meeting(world, participants=[world.customer_id])
    world.raynet.ui_cancel_activity("meeting", meeting_id)
    world.sync()

    assert world.outlook.event(world.alice.mailbox_id, event_id) is None
    assert [(m["kind"], m["to"]) for m in world.outlook.sent_mail] == [
        ("invitation", "jan@customer.test"),
        ("cancellation", "jan@customer.test"),
    ]
    assert world.reasons("cancelled") == ["cancelled in Raynet: cancelled on the other side"]


def test_a_raynet_deletion_deletes_the_outlook_event(world):
    meeting_id, event_id = synced_raynet_meeting(world)
    world.raynet.ui_delete_activity("meeting", meeting_id)
    # Raynet keeps no tombstones: deletions show when the window is read again (daily, or --full).
    world.sync(full=True)

    assert world.outlook.event(world.alice.mailbox_id, event_id) is None
    assert world.reasons("deleted") == ["deleted in Raynet: deleted on the other side"]


# --- both sides ---------------------------------------------------------------------------------


def test_an_event_deleted_in_outlook_but_edited_in_raynet_is_restored(world):
    event_id, record_id = synced_outlook_event(world)
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.raynet.ui_edit_activity("event", record_id, title="Planning (agenda added)")
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["subject"] == "Planning (agenda added)"
    assert world.raynet.activity("event", record_id)["status"] == "SCHEDULED"
    assert "restored in Outlook: deleted in Outlook, but edited in Raynet since" in world.reasons("restored")


def test_an_activity_deleted_in_raynet_but_edited_in_outlook_is_restored(world):
    event_id, record_id = synced_outlook_event(world)
    world.raynet.ui_delete_activity("event", record_id)
    world.outlook.person_edit_event(world.alice.mailbox_id, event_id, subject="Planning v2")
    world.sync(full=True)

    [record] = world.raynet_events()
    assert record["title"] == "Planning v2"
    assert record["id"] != record_id
    assert world.links(world.alice)[0].raynet_id == record["id"]
    assert world.outlook.event(world.alice.mailbox_id, event_id) is not None


def test_an_event_moved_out_of_the_window_is_not_a_deletion(world):
    event_id, record_id = synced_outlook_event(world)
    far = soon(500, 9)
    world.outlook.person_edit_event(world.alice.mailbox_id, event_id, start=far, end=soon(500, 10))
    world.sync()

    record = world.raynet.activity("event", record_id)
    assert record["status"] == "SCHEDULED"
    assert datetime.fromisoformat(record["scheduledFrom"]) == far  # the move itself is synced
    assert world.links(world.alice)[0].state == EventLink.State.ACTIVE
    assert world.reasons("cancelled") == []


# --- the mass-delete guard ----------------------------------------------------------------------


def delete_some_of_six_synced_events(world, count: int) -> None:
    ids = [
        world.outlook.person_create_event(world.alice.mailbox_id, f"E{n}", soon(2, 8 + n), soon(2, 9 + n))
        for n in range(6)
    ]
    world.sync()
    for event_id in ids[:count]:
        world.outlook.person_delete_event(world.alice.mailbox_id, event_id)


@override_settings(MASS_DELETE_MIN_COUNT=3, MASS_DELETE_MIN_PERCENT=25)
def test_a_run_that_would_delete_too_much_deletes_nothing_and_flags_the_mailbox(world):
    delete_some_of_six_synced_events(world, 5)
    world.reset_calls()
    world.sync()

    assert world.writes()["raynet"] == 0
    assert {r["status"] for r in world.raynet_events()} == {"SCHEDULED"}
    mapping = UserMapping.objects.get(pk=world.alice.mapping.pk)
    assert mapping.health == UserMapping.Health.FLAGGED
    assert "would delete 5 of 6 synced events" in mapping.health_reason

    world.sync()  # still held: the next run sees the same deletions
    assert {r["status"] for r in world.raynet_events()} == {"SCHEDULED"}

    mapping.mass_delete_approved = True
    mapping.save()
    world.sync()

    assert sorted(r["status"] for r in world.raynet_events()) == ["CANCELLED"] * 5 + ["SCHEDULED"]
    mapping.refresh_from_db()
    assert (mapping.health, mapping.mass_delete_approved) == (UserMapping.Health.OK, False)


@override_settings(MASS_DELETE_MIN_COUNT=3, MASS_DELETE_MIN_PERCENT=25)
def test_a_few_deletions_pass_the_guard(world):
    delete_some_of_six_synced_events(world, 2)
    world.sync()

    assert sorted(r["status"] for r in world.raynet_events()) == ["CANCELLED"] * 2 + ["SCHEDULED"] * 4
