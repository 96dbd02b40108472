"""The engine's core: creates both ways, field mapping, edits, echoes and call budgets."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db


def test_a_raynet_meeting_becomes_an_outlook_event_in_the_owners_mailbox(world):
    meeting_id = world.raynet.ui_create_activity(
        "meeting",
        world.alice.person_id,
        "Contract review",
        soon(2, 9),
        soon(2, 10),
        description="<p>Bring the <b>draft</b></p>",
        meetingPlace="Customer office",
    )

    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["subject"] == "Contract review"
    assert event["start"]["dateTime"].startswith(soon(2, 9).strftime("%Y-%m-%dT%H:%M"))
    assert event["end"]["dateTime"].startswith(soon(2, 10).strftime("%Y-%m-%dT%H:%M"))
    assert event["body"]["content"].strip() == "Bring the draft"
    assert event["location"]["displayName"] == "Customer office"
    assert world.outlook_events(world.bob) == []
    [link] = world.links(world.alice)
    assert (link.raynet_type, link.raynet_id, link.outlook_event_id) == ("meeting", meeting_id, event["id"])
    assert world.reasons("created") == ["created Outlook event “Contract review”"]


def test_participants_with_e_mails_are_invited_exactly_once(world):
    world.raynet.ui_create_activity(
        "meeting",
        world.alice.person_id,
        "Demo",
        soon(3, 13),
        soon(3, 14),
        participants=[world.customer_id, world.bob.person_id],
    )

    world.sync()
    world.sync()
    world.sync()

    invited = sorted(mail["to"] for mail in world.invitations())
    assert invited == ["bob@acme.test", "jan@customer.test"]
    [event] = world.outlook_events(world.alice)
    assert sorted(a["emailAddress"]["address"] for a in event["attendees"]) == invited


def test_an_outlook_event_becomes_a_raynet_event_owned_by_the_mapped_user(world):
    world.outlook.person_create_event(
        world.alice.mailbox_id, "Dentist", soon(4, 7), soon(4, 8), body="Line one\nLine two", location="Clinic"
    )

    world.sync()

    [record] = world.raynet_events()
    assert record in world.raynet.activities("event")
    assert record["title"] == "Dentist"
    assert record["owner"] == world.alice.person_id
    assert record["meetingPlace"] == "Clinic"
    assert world.links(world.alice)[0].origin == "outlook"


def test_attendees_who_are_raynet_persons_become_participants_and_others_are_not_invented(world):
    world.outlook.person_create_event(
        world.alice.mailbox_id,
        "Offer call",
        soon(5, 9),
        soon(5, 10),
        attendees=["jan@customer.test", "stranger@elsewhere.test"],
    )
    persons_before = len(world.raynet.state["persons"])

    world.sync()

    [record] = world.raynet_events(title="Offer call")
    people = {p["person"] for p in record["participants"]}
    assert world.customer_id in people
    assert len(world.raynet.state["persons"]) == persons_before


def test_a_second_run_with_no_changes_writes_nothing_and_reads_each_mailbox_once(world):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Weekly", soon(1, 8), soon(1, 9))
    world.outlook.person_create_event(world.bob.mailbox_id, "Gym", soon(1, 18), soon(1, 19))
    world.sync()
    world.sync()  # sees the echoes of the first run's writes
    world.reset_calls()

    world.sync()

    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert world.outlook.count("GET", r"calendarView/delta") == 2
    assert world.outlook.count("GET", r"^v1\.0/users") == 2
    # For the whole organization, per type: one change listing and one id listing (finds deletions).
    assert world.raynet.count("GET") == 4
    assert world.raynet.count("GET", r"^(meeting|event)/$") == 4
    assert world.reasons() == []


def test_a_raynet_edit_updates_outlook_without_inviting_again(world):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Kick-off", soon(6, 9), soon(6, 10), participants=[world.customer_id]
    )
    world.sync()

    world.raynet.ui_edit_activity(
        "meeting", meeting_id, title="Kick-off (moved)", scheduledFrom=soon(6, 11), scheduledTill=soon(6, 12)
    )
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["subject"] == "Kick-off (moved)"
    assert event["start"]["dateTime"].startswith(soon(6, 11).strftime("%Y-%m-%dT%H:%M"))
    assert len(world.invitations()) == 1
    assert world.reasons("updated") == ["updated Outlook from the Raynet change"]


def test_an_outlook_edit_updates_raynet(world):
    event_id = world.outlook.person_create_event(world.bob.mailbox_id, "Lunch", soon(2, 11), soon(2, 12))
    world.sync()

    world.outlook.person_edit_event(
        world.bob.mailbox_id, event_id, subject="Lunch with Jan", location="Bistro", start=soon(2, 12), end=soon(2, 13)
    )
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Lunch with Jan"
    assert record["meetingPlace"] == "Bistro"
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"]


def test_adding_a_participant_in_raynet_invites_only_the_new_attendee(world):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Review", soon(7, 9), soon(7, 10), participants=[world.customer_id]
    )
    world.sync()

    world.raynet.ui_edit_activity("meeting", meeting_id, participants=[world.customer_id, world.bob.person_id])
    world.sync()

    assert [m["to"] for m in world.invitations()] == ["jan@customer.test", "bob@acme.test"]


def test_descriptions_survive_round_trips_without_growing(world):
    event_id = world.outlook.person_create_event(
        world.alice.mailbox_id, "Notes", soon(3, 9), soon(3, 10), body="First line\n\nSecond <line> & more"
    )
    world.sync()
    [record] = world.raynet_events()
    world.raynet.ui_edit_activity("event", record["id"], title="Notes v2")
    world.sync()
    world.sync()

    event = world.outlook.event(world.alice.mailbox_id, event_id)
    assert event["subject"] == "Notes v2"
    assert event["body"]["content"].strip() == "First line\n\nSecond <line> & more"


def test_times_stay_exact_across_a_daylight_saving_change(world):
    prague = ZoneInfo("Europe/Prague")
    year = soon().year + (1 if soon().month > 3 else 0)
    # The last Sunday of March: clocks go forward in Prague at 02:00.
    march_end = datetime(year, 3, 31, tzinfo=prague)
    change_day = march_end - timedelta(days=(march_end.weekday() + 1) % 7)
    start = datetime.combine(change_day.date(), datetime.min.time(), prague) + timedelta(hours=9)
    world.raynet.ui_create_activity("event", world.alice.person_id, "After DST", start, start + timedelta(hours=1))

    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["start"]["dateTime"].startswith(start.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M"))


def test_an_all_day_outlook_event_keeps_its_dates(world):
    day = soon(10).date()
    event_id = world.outlook.person_create_event(
        world.alice.mailbox_id, "Trade fair", day, day + timedelta(days=2), all_day=True
    )
    world.sync()
    [record] = world.raynet_events()
    prague = ZoneInfo("Europe/Prague")
    stored_from = record["scheduledFrom"]
    world.raynet.ui_edit_activity("event", record["id"], title="Trade fair Brno")
    world.sync()

    event = world.outlook.event(world.alice.mailbox_id, event_id)
    assert event["isAllDay"] is True
    assert event["start"]["dateTime"].startswith(day.isoformat())
    assert event["end"]["dateTime"].startswith((day + timedelta(days=2)).isoformat())
    assert stored_from  # stored as the local midnight of the first day
    assert datetime.fromisoformat(stored_from).astimezone(prague).strftime("%H:%M") == "00:00"
