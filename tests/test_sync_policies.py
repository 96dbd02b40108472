"""SPEC policies 1, 2, 4 and 7: private events, completed activities, invitations, conflicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncapp.models import EventLink, SyncLogEntry
from tests.sync_fixtures import add_person, soon

pytestmark = pytest.mark.django_db


# --- 1. private Outlook events ------------------------------------------------------------------


def test_private_events_sync_like_others_when_policy_is_standard(world):
    world.outlook.person_create_event(
        world.alice.mailbox_id, "Doctor", soon(2, 8), soon(2, 9), private=True, body="Check-up"
    )
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Doctor"
    assert "Check-up" in record["description"]


def test_private_events_become_time_blockers_with_nothing_but_the_time(world):
    world.set_policy(private_events_mode="time_blocker")
    world.outlook.person_create_event(
        world.alice.mailbox_id,
        "Doctor",
        soon(2, 8),
        soon(2, 9),
        private=True,
        body="Check-up",
        location="Clinic",
        attendees=["jan@customer.test"],
    )
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Time blocker"
    assert not record["description"]
    assert not record.get("meetingPlace")
    assert [p for p in record["participants"] if p["person"] != world.alice.person_id] == []


def test_later_edits_of_a_time_blocker_update_only_its_time(world):
    world.set_policy(private_events_mode="time_blocker")
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Doctor", soon(2, 8), soon(2, 9), private=True)
    world.sync()
    world.outlook.person_edit_event(
        world.alice.mailbox_id, event_id, subject="Dr. Novak, room 4", start=soon(2, 10), end=soon(2, 11)
    )
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Time blocker"
    assert datetime.fromisoformat(record["scheduledFrom"]) == soon(2, 10)
    [link] = world.links(world.alice)
    assert link.starts_at == soon(2, 10)


def test_a_time_blocker_edited_in_raynet_moves_the_outlook_event_but_keeps_its_subject(world):
    world.set_policy(private_events_mode="time_blocker")
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Doctor", soon(2, 8), soon(2, 9), private=True)
    world.sync()
    [record] = world.raynet_events()
    world.raynet.ui_edit_activity("event", record["id"], scheduledFrom=soon(2, 14), scheduledTill=soon(2, 15))
    world.sync()

    event = world.outlook.event(world.alice.mailbox_id, event_id)
    assert event["subject"] == "Doctor"
    assert event["start"]["dateTime"].startswith(soon(2, 14).strftime("%Y-%m-%dT%H:%M"))


def test_private_events_are_skipped_when_policy_is_skip(world):
    world.set_policy(private_events_mode="skip")
    world.outlook.person_create_event(world.alice.mailbox_id, "Doctor", soon(2, 8), soon(2, 9), private=True)
    world.sync()

    assert world.raynet_events() == []
    assert world.reasons("skipped") == ["skipped: private event, policy = skip"]


def test_an_event_made_private_later_leaves_the_sync_scope_when_policy_is_skip(world):
    world.set_policy(private_events_mode="skip")
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Team lunch", soon(2, 12), soon(2, 13))
    world.sync()
    world.outlook.person_edit_event(world.alice.mailbox_id, event_id, private=True)
    world.sync()

    [record] = world.raynet_events()
    assert record["status"] == "CANCELLED"
    assert world.links(world.alice)[0].state == EventLink.State.DELETED
    assert "made private" in world.reasons("cancelled")[0]


def test_an_event_made_private_later_becomes_a_time_blocker(world):
    world.set_policy(private_events_mode="time_blocker")
    event_id = world.outlook.person_create_event(
        world.alice.mailbox_id, "Interview", soon(3, 9), soon(3, 10), body="Candidate CV attached"
    )
    world.sync()
    world.outlook.person_edit_event(world.alice.mailbox_id, event_id, private=True)
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Time blocker"
    assert not record["description"]


def test_a_user_override_wins_over_the_organization_policy(world):
    world.set_policy(private_events_mode="standard")
    world.alice.mapping.private_events_mode = "skip"
    world.alice.mapping.save()
    world.outlook.person_create_event(world.alice.mailbox_id, "Private A", soon(2, 8), soon(2, 9), private=True)
    world.outlook.person_create_event(world.bob.mailbox_id, "Private B", soon(2, 8), soon(2, 9), private=True)
    world.sync()

    assert [r["title"] for r in world.raynet_events()] == ["Private B"]


# --- 2. completed Raynet activities -------------------------------------------------------------


def test_completing_an_activity_freezes_its_link_so_later_notes_are_not_sent(world):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Visit", soon(1, 9), soon(1, 10), participants=[world.customer_id]
    )
    world.sync()
    world.raynet.ui_complete_activity("meeting", meeting_id)
    world.sync()
    world.raynet.ui_edit_activity("meeting", meeting_id, description="<p>Notes: customer wants 20 seats</p>")
    world.reset_calls()
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert "20 seats" not in event["body"]["content"]
    assert world.writes()["outlook"] == 0
    assert world.links(world.alice)[0].state == EventLink.State.FROZEN
    assert [m["kind"] for m in world.outlook.sent_mail] == ["invitation"]


def test_activities_already_completed_when_first_seen_are_not_pushed(world):
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Old", soon(-2, 9), soon(-2, 10))
    world.raynet.ui_complete_activity("meeting", meeting_id)
    world.sync()

    assert world.outlook_events(world.alice) == []
    assert "already completed" in world.reasons("skipped")[0]


def test_completed_activities_keep_syncing_when_sync_completed_is_on(world):
    world.set_policy(sync_completed=True)
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(1, 9), soon(1, 10))
    world.sync()
    world.raynet.ui_complete_activity("meeting", meeting_id)
    world.raynet.ui_edit_activity("meeting", meeting_id, description="Outcome: signed")
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert "Outcome: signed" in event["body"]["content"]


# --- 4. events a user is invited to -------------------------------------------------------------


def test_an_invitation_from_a_mapped_colleague_is_one_raynet_activity_owned_by_the_organizer(world):
    world.outlook.person_create_event(
        world.bob.mailbox_id, "Pipeline review", soon(4, 9), soon(4, 10), attendees=["alice@acme.test"]
    )
    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["owner"] == world.bob.person_id
    assert world.alice.person_id in {p["person"] for p in record["participants"]}
    assert SyncLogEntry.objects.filter(
        reason="skipped: synced from the organizer's own mailbox (bob@acme.test)"
    ).exists()


def test_an_invitation_from_outside_the_organization_is_not_synced_and_the_log_says_why(world):
    world.outlook.person_create_event(world.alice.mailbox_id, "Their meeting", soon(4, 9), soon(4, 10))
    # An invitation copy whose organizer is a customer: made as the sandbox makes attendee copies.
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Customer call", soon(5, 9), soon(5, 10))
    stored = world.outlook.state["events"][world.outlook._internal_id(event_id)]
    stored["isOrganizer"] = False
    stored["organizer"] = {"emailAddress": {"address": "jan@customer.test", "name": "Jan"}}
    world.sync()

    assert [r["title"] for r in world.raynet_events()] == ["Their meeting"]
    assert "skipped: organizer jan@customer.test is not a Raynet user" in world.reasons("skipped")


def test_an_invitation_from_a_raynet_user_without_a_mailbox_mapping_is_synced_once_for_all_invitees(world):
    carol = add_person(world.raynet, world.outlook, "carol@acme.test", "Carol Svoboda")
    world.outlook.person_create_event(
        carol.mailbox_id, "Board", soon(6, 9), soon(6, 10), attendees=["alice@acme.test", "bob@acme.test"]
    )
    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["owner"] == carol.person_id
    assert len(world.links()) == 1
    assert SyncLogEntry.objects.filter(reason__startswith="skipped: invitation already synced as Raynet event").exists()


def test_an_invitation_from_a_colleague_without_raynet_is_skipped(world):
    dave_mailbox = world.outlook.add_user("11111111-1111-1111-1111-111111111111", "dave@acme.test", "Dave")
    world.outlook.person_create_event(dave_mailbox, "Coffee", soon(6, 9), soon(6, 10), attendees=["alice@acme.test"])
    world.sync()

    assert world.raynet_events() == []
    assert "skipped: organizer dave@acme.test is not a Raynet user" in world.reasons("skipped")


# --- 7. conflicts --------------------------------------------------------------------------------


def make_conflict(world, *, raynet_title: str, outlook_title: str, raynet_last: bool):
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Original", soon(3, 9), soon(3, 10))
    world.sync()
    [record] = world.raynet_events()
    first, second = (world.outlook, world.raynet) if raynet_last else (world.raynet, world.outlook)
    for side in (first, second):
        side.set_now(datetime.now(UTC) + timedelta(minutes=1 if side is first else 3))
        if side is world.raynet:
            world.raynet.ui_edit_activity("event", record["id"], title=raynet_title)
        else:
            world.outlook.person_edit_event(world.alice.mailbox_id, event_id, subject=outlook_title)
    world.sync()
    return event_id, record["id"]


@pytest.mark.parametrize("raynet_last", [True, False])
def test_the_latest_change_wins_a_conflict_and_the_loser_is_kept_in_the_log(world, raynet_last):
    event_id, record_id = make_conflict(
        world, raynet_title="From Raynet", outlook_title="From Outlook", raynet_last=raynet_last
    )

    winner = "From Raynet" if raynet_last else "From Outlook"
    loser = "From Outlook" if raynet_last else "From Raynet"
    assert world.outlook.event(world.alice.mailbox_id, event_id)["subject"] == winner
    assert world.raynet.activity("event", record_id)["title"] == winner
    [entry] = SyncLogEntry.objects.filter(action="conflict")
    assert entry.details["lost"]["version"]["title"] == loser


@pytest.mark.parametrize("winner", ["raynet", "outlook"])
def test_a_fixed_conflict_winner_always_wins(world, winner):
    world.set_policy(conflict_winner=winner)
    event_id, record_id = make_conflict(
        world, raynet_title="From Raynet", outlook_title="From Outlook", raynet_last=winner == "outlook"
    )

    expected = "From Raynet" if winner == "raynet" else "From Outlook"
    assert world.outlook.event(world.alice.mailbox_id, event_id)["subject"] == expected
    assert world.raynet.activity("event", record_id)["title"] == expected
    assert SyncLogEntry.objects.filter(action="conflict").count() == 1


@pytest.fixture
def mapped_users_reads(monkeypatch) -> list[int]:
    """One item each time a run asks who the organization's mapped users are (a query, once per directory)."""
    from syncapp.sync.observe import RaynetDirectory

    reads = []
    real = RaynetDirectory.mapped_organizers

    def counted(directory):
        reads.append(1)
        return real.fget(directory)

    monkeypatch.setattr(RaynetDirectory, "mapped_organizers", property(counted))
    return reads


def test_only_a_run_that_meets_an_invitation_asks_who_the_mapped_users_are(world, mapped_users_reads):
    world.outlook.person_create_event(world.alice.mailbox_id, "Gym", soon(1, 18), soon(1, 19))
    world.sync()
    world.sync()
    assert mapped_users_reads == []  # events the mailboxes organize, then idle runs: nobody else's to check

    world.outlook.person_create_event(
        world.bob.mailbox_id, "Pipeline review", soon(4, 9), soon(4, 10), attendees=["alice@acme.test"]
    )
    world.sync()

    assert mapped_users_reads  # Alice's copy of Bob's invitation: Bob is a mapped user, his mailbox syncs it
    assert world.reasons("skipped") == ["skipped: synced from the organizer's own mailbox (bob@acme.test)"]
