"""SPEC policy 6: recurring Outlook events, synced occurrence by occurrence.

Each occurrence inside the window is its own Raynet event with its own link (the link keeps the
series master id). Graph reports no tombstone for a deleted occurrence: the engine compares a
series with its instances when the delta shows the series touched, and on every full read of the
window (the daily one when the window moves on, or a run with full=True).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from syncapp.models import EventLink
from tests.sync_fixtures import days_later, soon

pytestmark = pytest.mark.django_db


def weekly_series(world, subject="Standup", *, weeks=4, first=None):
    """A weekly one-hour series in Alice's mailbox, first occurrence tomorrow at 09:00 UTC."""
    first = first or soon(1, 9)
    recurrence = {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]},
        "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": weeks},
    }
    return world.outlook.person_create_event(
        world.alice.mailbox_id, subject, first, first + timedelta(hours=1), recurrence=recurrence
    )


def week(n: int, hour: int = 9) -> datetime:
    """The start of the n-th occurrence (0-based) of `weekly_series`."""
    return soon(1 + 7 * n, hour)


def copies(world) -> list[dict]:
    """Alice's Raynet events, in order of their time."""
    return sorted(world.raynet_events(owner=world.alice.person_id), key=lambda r: r["scheduledFrom"])


def start_of(record: dict) -> datetime:
    return datetime.fromisoformat(record["scheduledFrom"])


def occurrence_on(world, series_id: str, n: int) -> dict:
    return world.outlook.event(
        world.alice.mailbox_id, world.outlook.occurrence_id(world.alice.mailbox_id, series_id, week(n).date())
    )


def assert_quiet(world) -> None:
    """Once the echoes of our own writes are read, a run writes nothing on either side."""
    world.sync()
    world.reset_calls()
    world.sync()
    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert world.reasons() == []


def test_every_occurrence_in_the_window_becomes_its_own_raynet_event_linked_to_that_occurrence(world):
    series_id = weekly_series(world, weeks=4)

    world.sync()

    records = copies(world)
    assert [r["title"] for r in records] == ["Standup"] * 4
    assert [start_of(r) for r in records] == [week(n) for n in range(4)]
    assert {r["status"] for r in records} == {"SCHEDULED"}
    links = sorted(world.links(world.alice), key=lambda link: link.starts_at)
    assert len(links) == 4
    occurrences = [occurrence_on(world, series_id, n) for n in range(4)]
    assert [link.outlook_event_id for link in links] == [o["id"] for o in occurrences]
    assert [link.raynet_id for link in links] == [r["id"] for r in records]
    assert {link.series_master_id for link in links} == {series_id}
    assert {link.origin for link in links} == {EventLink.Origin.OUTLOOK}
    assert world.reasons("created") == ["created Raynet event “Standup” from Outlook"] * 4
    assert world.reasons("skipped") == []
    assert world.links(world.bob) == []
    assert_quiet(world)


def test_an_edited_and_moved_single_occurrence_updates_only_its_raynet_copy(world):
    series_id = weekly_series(world)
    world.sync()
    before = copies(world)

    world.outlook.person_edit_occurrence(
        world.alice.mailbox_id,
        series_id,
        week(1).date(),
        subject="Standup with Jan",
        location="Room B",
        start=week(1, 13),
        end=week(1, 14),
    )
    world.sync()

    after = copies(world)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert after[1]["title"] == "Standup with Jan"
    assert after[1]["meetingPlace"] == "Room B"
    assert start_of(after[1]) == week(1, 13)
    for n in (0, 2, 3):
        assert (after[n]["title"], start_of(after[n])) == ("Standup", week(n))
        assert after[n] == before[n]
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"]
    assert world.writes()["outlook"] == 0
    occurrence = occurrence_on(world, series_id, 1)
    assert occurrence["type"] == "exception"
    assert world.links(world.alice)[1].outlook_event_id == occurrence["id"]
    assert_quiet(world)


def test_a_deleted_occurrence_is_noticed_when_its_series_is_touched_and_its_copy_is_cancelled(world):
    series_id = weekly_series(world)
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    world.outlook.person_delete_occurrence(world.alice.mailbox_id, series_id, week(2).date())
    # Graph sends no tombstone for a deleted occurrence. Editing another occurrence touches the
    # series in the delta, and the engine then compares the series with its instances.
    world.outlook.person_edit_occurrence(world.alice.mailbox_id, series_id, week(3).date(), subject="Last standup")
    world.sync()

    statuses = [world.raynet.activity("event", i)["status"] for i in record_ids]
    assert statuses == ["SCHEDULED", "SCHEDULED", "CANCELLED", "SCHEDULED"]
    assert world.raynet.activity("event", record_ids[3])["title"] == "Last standup"
    assert world.reasons("cancelled") == ["occurrence deleted in Outlook: cancelled on the other side"]
    assert [link.state for link in world.links(world.alice)] == [
        EventLink.State.ACTIVE,
        EventLink.State.ACTIVE,
        EventLink.State.DELETED,
        EventLink.State.ACTIVE,
    ]
    assert len(world.outlook_events(world.alice)) == 3
    assert_quiet(world)


def test_a_deleted_occurrence_is_noticed_by_a_full_run_and_its_copy_is_cancelled(world):
    series_id = weekly_series(world)
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    world.outlook.person_delete_occurrence(world.alice.mailbox_id, series_id, week(1).date())
    # Nothing else changed: only a full read of the window compares the series with its instances.
    world.sync(full=True)

    statuses = [world.raynet.activity("event", i)["status"] for i in record_ids]
    assert statuses == ["SCHEDULED", "CANCELLED", "SCHEDULED", "SCHEDULED"]
    assert world.reasons("cancelled") == ["occurrence deleted in Outlook: cancelled on the other side"]
    assert_quiet(world)


def test_a_deleted_occurrence_is_noticed_by_the_next_days_window_read_and_deleted_when_policy_is_delete(world):
    world.set_policy(deletion_mode="delete")
    series_id = weekly_series(world, first=soon(2, 9))
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    world.outlook.person_delete_occurrence(world.alice.mailbox_id, series_id, soon(9).date())
    with days_later(1):
        # The window starts a day later: the delta is opened afresh, a full read of the window.
        world.sync()

        assert world.raynet.activity("event", record_ids[1]) is None
        assert [r["id"] for r in copies(world)] == [record_ids[0], *record_ids[2:]]
        assert world.reasons("deleted") == ["occurrence deleted in Outlook: deleted on the other side"]
        assert_quiet(world)


def test_a_new_subject_for_the_whole_series_updates_every_copy(world):
    series_id = weekly_series(world)
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    world.outlook.person_edit_event(world.alice.mailbox_id, series_id, subject="Team sync", location="Room A")
    world.sync()

    records = copies(world)
    assert [r["id"] for r in records] == record_ids
    assert [(r["title"], r["meetingPlace"], start_of(r)) for r in records] == [
        ("Team sync", "Room A", week(n)) for n in range(4)
    ]
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"] * 4
    assert world.reasons("created") == []
    assert world.writes()["outlook"] == 0
    assert_quiet(world)


@pytest.mark.parametrize("full", [False, True], ids=["seen in the delta", "seen by a full read"])
def test_moving_the_whole_series_to_another_hour_updates_every_copy_instead_of_replacing_it(world, full):
    series_id = weekly_series(world)
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    # Every occurrence gets a new id (Graph's ids carry the original start); the iCalUId keeps the date.
    world.outlook.person_edit_event(world.alice.mailbox_id, series_id, start=week(0, 14), end=week(0, 15))
    world.sync(full=full)

    records = copies(world)
    assert [r["id"] for r in records] == record_ids
    assert [start_of(r) for r in records] == [week(n, 14) for n in range(4)]
    assert {r["status"] for r in records} == {"SCHEDULED"}
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"] * 4
    assert world.reasons("created") == [] and world.reasons("cancelled") == []
    links = sorted(world.links(world.alice), key=lambda link: link.starts_at)
    assert {link.state for link in links} == {EventLink.State.ACTIVE}
    assert [link.outlook_event_id for link in links] == [occurrence_on(world, series_id, n)["id"] for n in range(4)]
    assert_quiet(world)


def test_occurrences_entering_the_window_as_time_passes_are_added(world):
    world.set_policy(window_days_ahead=14)
    series_id = weekly_series(world, weeks=10)
    world.sync()

    assert [start_of(r) for r in copies(world)] == [week(0), week(1)]  # week(2) is 15 days ahead

    with days_later(7):
        world.sync()

        assert [start_of(r) for r in copies(world)] == [week(0), week(1), week(2)]
        assert world.reasons("created") == ["created Raynet event “Standup” from Outlook"]
        assert {link.series_master_id for link in world.links(world.alice)} == {series_id}
        assert len(world.links(world.alice)) == 3
        assert_quiet(world)


@pytest.mark.parametrize(("mode", "action"), [("cancel", "cancelled"), ("delete", "deleted")])
def test_shrinking_a_series_removes_the_copies_of_the_occurrences_that_no_longer_exist(world, mode, action):
    world.set_policy(deletion_mode=mode)
    series_id = weekly_series(world, weeks=4)
    world.sync()
    record_ids = [r["id"] for r in copies(world)]

    recurrence = world.outlook.event(world.alice.mailbox_id, series_id)["recurrence"]
    recurrence["range"] = {**recurrence["range"], "type": "endDate", "endDate": week(1).date().isoformat()}
    world.outlook.person_edit_event(world.alice.mailbox_id, series_id, recurrence=recurrence)
    world.sync()

    assert len(world.outlook_events(world.alice)) == 2
    kept = [world.raynet.activity("event", i) for i in record_ids[:2]]
    assert [(r["status"], start_of(r)) for r in kept] == [("SCHEDULED", week(0)), ("SCHEDULED", week(1))]
    gone = [world.raynet.activity("event", i) for i in record_ids[2:]]
    if mode == "delete":
        assert gone == [None, None]
    else:
        assert [r["status"] for r in gone] == ["CANCELLED", "CANCELLED"]
    assert len(world.reasons(action)) == 2
    # Graph reports the ids of the occurrences the new range dropped as removed.
    assert set(world.reasons(action)) == {f"deleted in Outlook: {action} on the other side"}
    assert world.reasons("updated") == [] and world.reasons("created") == []
    assert_quiet(world)


def test_a_raynet_edit_of_one_copy_patches_only_that_occurrence_in_outlook(world):
    series_id = weekly_series(world)
    world.sync()
    world.sync()
    records = copies(world)
    others_before = [occurrence_on(world, series_id, n) for n in (0, 2, 3)]

    world.raynet.ui_edit_activity(
        "event",
        records[1]["id"],
        title="Standup at the customer",
        meetingPlace="Customer office",
        scheduledFrom=week(1, 11),
        scheduledTill=week(1, 12),
    )
    world.sync()

    occurrence = occurrence_on(world, series_id, 1)
    assert occurrence["type"] == "exception"
    assert occurrence["subject"] == "Standup at the customer"
    assert occurrence["location"]["displayName"] == "Customer office"
    assert occurrence["start"]["dateTime"].startswith(week(1, 11).strftime("%Y-%m-%dT%H:%M"))
    assert [occurrence_on(world, series_id, n) for n in (0, 2, 3)] == others_before
    series = world.outlook.event(world.alice.mailbox_id, series_id)
    assert (series["type"], series["subject"]) == ("seriesMaster", "Standup")
    assert len(world.outlook_events(world.alice)) == 4
    assert world.reasons("updated") == ["updated Outlook from the Raynet change"]
    assert [r["title"] for r in copies(world)] == ["Standup", "Standup at the customer", "Standup", "Standup"]
    assert_quiet(world)


def test_a_quiet_run_after_all_kinds_of_series_changes_writes_nothing(world):
    series_id = weekly_series(world, weeks=6)
    world.sync()
    world.outlook.person_edit_occurrence(world.alice.mailbox_id, series_id, week(1).date(), subject="Moved")
    world.outlook.person_delete_occurrence(world.alice.mailbox_id, series_id, week(2).date())
    world.sync()
    world.outlook.person_edit_event(world.alice.mailbox_id, series_id, subject="Team sync")
    world.sync()
    [record] = [r for r in copies(world) if start_of(r) == week(4)]
    world.raynet.ui_edit_activity("event", record["id"], title="Team sync (demo)")
    world.sync()

    world.sync()
    world.reset_calls()
    world.sync()

    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert world.reasons() == []
    titles = [(r["title"], r["status"]) for r in copies(world)]
    assert titles == [
        ("Team sync", "SCHEDULED"),
        ("Moved", "SCHEDULED"),  # an exception keeps its own subject
        ("Standup", "CANCELLED"),
        ("Team sync", "SCHEDULED"),
        ("Team sync (demo)", "SCHEDULED"),
        ("Team sync", "SCHEDULED"),
    ]


# --- the occurrence horizon (SPEC policy 6): a daily series costs ~90 days of Raynet records, not a year --------


def daily_series(world, subject="Daily stand-up", *, days=365):
    """A daily 15-minute series in Alice's mailbox from tomorrow 08:00 UTC, a year long."""
    first = soon(1, 8)
    recurrence = {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "startDate": first.date().isoformat(), "numberOfOccurrences": days},
    }
    world.outlook.person_create_event(
        world.alice.mailbox_id, subject, first, first + timedelta(minutes=15), recurrence=recurrence
    )
    return first


def within(horizon_days: int, first: datetime, *, days_on: int = 0, count: int = 365) -> list[datetime]:
    """The starts of the daily series' occurrences that are at most `horizon_days` ahead, `days_on` days later."""
    horizon = datetime.now(UTC) + timedelta(days=days_on + horizon_days)
    return [first + timedelta(days=n) for n in range(count) if first + timedelta(days=n) <= horizon]


def test_a_daily_series_becomes_raynet_events_only_within_the_90_day_horizon(world):
    first = daily_series(world)

    world.sync()

    expected = within(90, first)
    assert 88 <= len(expected) <= 90
    assert [start_of(r) for r in copies(world)] == expected
    assert world.writes()["raynet"] <= 3 * len(expected)
    later = len(within(365, first)) - len(expected)  # the rest of the 365-day window
    assert world.reasons("later") == [
        f"later: {later} occurrence(s) of recurring series are more than 90 days ahead; "
        "each becomes a Raynet event when it comes within 90 days"
    ]
    assert len(world.links(world.alice)) == len(expected)
    assert_quiet(world)


def test_occurrences_coming_within_the_horizon_as_days_pass_are_added_by_the_daily_window_read(world):
    first = daily_series(world)
    world.sync()
    before = {r["id"] for r in copies(world)}

    with days_later(5):
        # The day moved on: the window is read whole again, and five more days are within the horizon.
        world.sync()

        records = copies(world)
        assert [start_of(r) for r in records] == within(90, first, days_on=5)
        assert before < {r["id"] for r in records}
        assert len(world.reasons("created")) == 5
        assert world.reasons("cancelled") == [] and world.reasons("deleted") == []
        assert_quiet(world)


def test_copies_beyond_the_horizon_are_never_deleted_and_a_series_edit_still_updates_every_copy(world):
    first = daily_series(world, days=120)
    with override_settings(OCCURRENCE_HORIZON_DAYS=365):
        world.sync()
    record_ids = [r["id"] for r in copies(world)]
    assert len(record_ids) == 120  # synced before the horizon was shortened: beyond today's 90 days too
    world.sync()  # the echoes of our own writes
    world.reset_calls()

    world.sync(full=True)

    assert world.reasons("cancelled") == [] and world.reasons("deleted") == []
    assert {link.state for link in world.links(world.alice)} == {EventLink.State.ACTIVE}
    assert world.writes()["raynet"] == 0

    series_id = world.links(world.alice)[0].series_master_id
    world.outlook.person_edit_event(world.alice.mailbox_id, series_id, subject="Daily sync")
    world.sync()

    records = copies(world)
    assert [r["id"] for r in records] == record_ids
    assert {r["title"] for r in records} == {"Daily sync"}
    assert [start_of(r) for r in records] == [first + timedelta(days=n) for n in range(120)]
    assert world.reasons("created") == []
    assert_quiet(world)


@override_settings(OCCURRENCE_HORIZON_DAYS=30)
def test_an_occurrence_moved_into_the_horizon_is_created_and_one_moved_beyond_it_keeps_its_copy(world):
    # Exchange moves an occurrence only between its neighbours: one series for each direction.
    coming = weekly_series(world, "Coming", weeks=8, first=soon(1, 9))  # days 1, 8 … 29 within; 36 … not yet
    going = weekly_series(world, "Going", weeks=8, first=soon(3, 9))  # days 3, 10, 17, 24 within; 31 … not yet
    world.sync()
    assert [(r["title"], start_of(r)) for r in copies(world)] == sorted(
        [("Coming", soon(d, 9)) for d in (1, 8, 15, 22, 29)] + [("Going", soon(d, 9)) for d in (3, 10, 17, 24)],
        key=lambda pair: pair[1],
    )

    world.outlook.person_edit_occurrence(
        world.alice.mailbox_id, coming, soon(36).date(), subject="Brought forward", start=soon(29, 20), end=soon(29, 21)
    )
    world.outlook.person_edit_occurrence(
        world.alice.mailbox_id, going, soon(24).date(), start=soon(31, 8), end=soon(31, 8, 30)
    )
    world.sync()

    starts = {(r["title"], start_of(r)) for r in copies(world)}
    assert ("Brought forward", soon(29, 20)) in starts
    assert ("Going", soon(31, 8)) in starts and ("Going", soon(24, 9)) not in starts  # its copy moved with it
    assert len(starts) == 10
    assert world.reasons("created") == ["created Raynet event “Brought forward” from Outlook"]
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"]
    assert world.reasons("cancelled") == []
    assert_quiet(world)


def test_the_preview_counts_the_occurrences_beyond_the_horizon_as_later(world):
    from syncapp.sync.service import mapping_dry_run

    first = daily_series(world)

    plan = mapping_dry_run(mapping=world.alice.mapping)

    expected = len(within(90, first))
    assert plan.counts()["to_raynet"] == {"create": expected, "later": len(within(365, first)) - expected}
    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert world.raynet_events() == []
