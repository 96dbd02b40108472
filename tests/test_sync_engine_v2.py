"""Issue 8, engine side: each observed failure reproduced, then fixed (deletions, poison items, freshness,
lost replies, the failing side, the run deadline, connection status)."""

from __future__ import annotations

import itertools
import re
import time
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
from django.utils import timezone

from syncapp.models import ConnectionStatus, RaynetConnection, SyncLogEntry, SyncRun, UserMapping
from syncapp.providers.raynet import RaynetClient
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from syncapp.sync import sync_mapping, sync_organization
from syncapp.sync.apply import BATCH_SIZE
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db


def run_org(world) -> dict[int, SyncRun]:
    runs = sync_organization(organization=world.org, trigger=SyncRun.Trigger.MANUAL)
    world.runs = runs
    return {run.mapping_id: run for run in runs}


def refreshed(mapping: UserMapping) -> UserMapping:
    mapping.refresh_from_db()
    return mapping


# --- 1. deletions on the next poll --------------------------------------------------------------


def test_a_raynet_deletion_reaches_outlook_on_the_next_poll_not_a_day_later(world):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10), participants=[world.customer_id]
    )
    world.sync()
    world.sync()
    [event] = world.outlook_events(world.alice)

    world.raynet.ui_delete_activity("meeting", meeting_id)
    world.sync()  # an ordinary poll: no full read

    assert world.outlook.event(world.alice.mailbox_id, event["id"]) is None
    assert [m["kind"] for m in world.outlook.sent_mail] == ["invitation", "cancellation"]
    assert world.reasons("cancelled") == ["deleted in Raynet: cancelled on the other side"]


def test_beyond_one_page_the_id_pages_rotate_and_a_deletion_is_still_found(world, monkeypatch):
    monkeypatch.setattr("syncapp.providers.raynet.PAGE_SIZE", 2)
    ids = [
        world.raynet.ui_create_activity("meeting", world.alice.person_id, f"M{n}", soon(2, 8 + n), soon(2, 9 + n))
        for n in range(5)
    ]
    world.sync()
    world.sync()
    world.raynet.ui_delete_activity("meeting", ids[-1])

    for _poll in range(4):  # three pages of ids: one a poll at this pace, a whole cycle within the hour
        world.sync()
        if len(world.outlook_events(world.alice)) == 4:
            break

    assert sorted(e["subject"] for e in world.outlook_events(world.alice)) == ["M0", "M1", "M2", "M3"]
    world.org.raynet.refresh_from_db()
    assert world.org.raynet.deletion_scan["meeting"]["pages"] == 2  # four records left: two pages of two


def raynet_listings(http_mock) -> list[str]:
    """Which Raynet listings the calls were: "ids" (view=rowInfo, the deletion scan) or "changes"."""
    kinds = []
    for call in http_mock.calls:
        url = unquote(call.request.url)
        if "raynet" in url and call.request.method == "GET" and re.search(r"/(meeting|event)/\?", url):
            kinds.append("ids" if "view=rowInfo" in url else "changes")
    return kinds


def polled_listings(world, http_mock) -> list[str]:
    http_mock.calls.reset()
    world.reset_calls()
    world.sync()
    return raynet_listings(http_mock)


def an_hour_ago(world) -> None:
    """What is set up next was done an hour ago in Raynet: older than the change listing's overlap."""
    world.raynet.set_now(timezone.now() - timedelta(hours=1))


def now_in_raynet(world) -> None:
    world.raynet.set_now(timezone.now())


def test_an_idle_poll_reads_only_the_id_listing_when_it_shows_nothing_changed(world, http_mock):
    an_hour_ago(world)
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    world.sync()
    world.sync()

    assert polled_listings(world, http_mock) == ["ids", "ids"]  # one a type; nothing else from Raynet
    assert world.raynet.count() == 2


def test_a_raynet_edit_the_id_listing_shows_is_listed_and_reaches_outlook_on_the_next_poll(world, http_mock):
    an_hour_ago(world)
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    world.sync()
    world.sync()
    assert polled_listings(world, http_mock) == ["ids", "ids"]

    now_in_raynet(world)
    world.raynet.ui_edit_activity("meeting", meeting_id, title="Visit, moved")

    assert polled_listings(world, http_mock) == ["ids", "ids", "changes"]  # the meetings' listing only
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Visit, moved"]


def test_a_raynet_meeting_moved_into_the_window_from_beyond_it_reaches_outlook(world, http_mock):
    an_hour_ago(world)
    later = timezone.now() + timedelta(days=500)
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Next year", later, later)
    world.sync()
    world.sync()
    assert polled_listings(world, http_mock) == ["ids", "ids"]

    now_in_raynet(world)
    world.raynet.ui_edit_activity("meeting", meeting_id, scheduledFrom=soon(4, 9), scheduledTill=soon(4, 10))

    assert "changes" in polled_listings(world, http_mock)
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Next year"]


def test_when_the_id_rows_carry_no_update_stamp_every_poll_lists_the_changes(world, http_mock, monkeypatch):
    # Whether view=rowInfo rows carry rowInfo.updatedAt is UNCONFIRMED (reference §4): without it, as before.
    real = RaynetSandbox._render_row_info

    def render(sandbox, record, zone, iso):
        row = real(sandbox, record, zone, iso)
        del row["rowInfo.updatedAt"]
        return row

    monkeypatch.setattr(RaynetSandbox, "_render_row_info", render)
    an_hour_ago(world)
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    world.sync()
    world.sync()

    # The meetings' rows cannot tell what changed: their listing is made. The window holds no event at all.
    assert polled_listings(world, http_mock) == ["ids", "ids", "changes"]
    now_in_raynet(world)
    world.raynet.ui_edit_activity("meeting", meeting_id, title="Visit, moved")
    world.sync()
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Visit, moved"]


def test_while_the_id_pages_rotate_every_poll_lists_the_changes(world, http_mock, monkeypatch):
    monkeypatch.setattr("syncapp.providers.raynet.PAGE_SIZE", 2)
    an_hour_ago(world)
    ids = [
        world.raynet.ui_create_activity("meeting", world.alice.person_id, f"M{n}", soon(2, 8 + n), soon(2, 9 + n))
        for n in range(5)
    ]
    world.sync()
    world.sync()

    assert polled_listings(world, http_mock).count("changes") == 1  # the meetings' pages were not all read
    now_in_raynet(world)
    world.raynet.ui_edit_activity("meeting", ids[0], title="M0, moved")
    world.sync()
    assert "M0, moved" in [e["subject"] for e in world.outlook_events(world.alice)]


def webhooks_delivering(world) -> None:
    """Our Raynet webhook is registered and Raynet delivered one a moment ago (RaynetConnection.webhooks_live)."""
    RaynetConnection.objects.filter(organization=world.org).update(webhook_id="hook-1", webhook_seen_at=timezone.now())


def test_while_raynet_webhooks_are_live_the_poll_lists_only_as_the_safety_net_which_finds_a_lost_change(
    world, http_mock, monkeypatch, settings
):
    monkeypatch.setattr("syncapp.providers.raynet.PAGE_SIZE", 2)
    an_hour_ago(world)
    ids = [
        world.raynet.ui_create_activity("meeting", world.alice.person_id, f"M{n}", soon(2, 8 + n), soon(2, 9 + n))
        for n in range(5)
    ]
    for _poll in range(4):  # the window read, then a whole cycle of the three id pages: the cycle is known
        world.sync()
    cursor = refreshed(world.alice.mapping).raynet_cursor
    webhooks_delivering(world)
    settings.RAYNET_DELETION_CHECK_SECONDS = 3 * 3600
    now_in_raynet(world)
    world.raynet.ui_edit_activity("meeting", ids[0], title="M0, moved")  # its webhook got lost

    # No meeting page is due yet and the webhooks bring the changes: only the events' one page, the deletion
    # check of a window that fits a page, read every poll. The cursors stay for the safety net's listing.
    assert polled_listings(world, http_mock) == ["ids"]
    assert "M0, moved" not in [e["subject"] for e in world.outlook_events(world.alice)]
    assert refreshed(world.alice.mapping).raynet_cursor == cursor

    settings.RAYNET_DELETION_CHECK_SECONDS = 60  # as if the hour had passed: the safety net is due
    listings = polled_listings(world, http_mock)

    assert listings.count("ids") == 4 and listings.count("changes") == 1  # every meeting page; their listing
    assert "M0, moved" in [e["subject"] for e in world.outlook_events(world.alice)]
    assert refreshed(world.alice.mapping).raynet_cursor > cursor


def test_while_raynet_webhooks_are_live_a_window_of_one_page_is_still_checked_for_deletions_every_poll(
    world, http_mock
):
    an_hour_ago(world)
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    world.sync()
    world.sync()
    webhooks_delivering(world)
    world.raynet.ui_delete_activity("meeting", meeting_id)  # its webhook got lost

    assert polled_listings(world, http_mock) == ["ids", "ids"]
    assert world.outlook_events(world.alice) == []


# --- 3. one unreadable item never blocks the mailbox --------------------------------------------


def test_a_raynet_row_with_a_date_that_cannot_be_read_is_skipped_and_the_rest_syncs(world, monkeypatch):
    world.sync()
    bad = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Broken", soon(2, 9), soon(2, 10))
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Fine", soon(3, 9), soon(3, 10))
    real = RaynetSandbox._render_activity

    def render(sandbox, entity, record, **kwargs):
        row = real(sandbox, entity, record, **kwargs)
        return {**row, "scheduledFrom": "31.02.2026 25:61"} if record["id"] == bad else row

    monkeypatch.setattr(RaynetSandbox, "_render_activity", render)
    runs = run_org(world)

    assert runs[world.alice.mapping.pk].status == SyncRun.Status.OK
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Fine"]
    [entry] = SyncLogEntry.objects.filter(run=runs[world.alice.mapping.pk], action="skipped")
    assert entry.reason.startswith(f"skipped: could not read Raynet item {bad} “Broken”")
    assert entry.reason_code == "unreadable"
    alice = refreshed(world.alice.mapping)
    assert alice.raynet_cursor >= runs[world.alice.mapping.pk].started_at - timedelta(seconds=5)
    assert alice.health == UserMapping.Health.WARNING


def test_an_outlook_event_in_a_windows_time_zone_is_skipped_and_the_rest_syncs(world, monkeypatch):
    world.outlook.person_create_event(world.alice.mailbox_id, "Odd zone", soon(2, 9), soon(2, 10))
    world.outlook.person_create_event(world.alice.mailbox_id, "Fine", soon(3, 9), soon(3, 10))
    real = GraphSandbox._render

    def render(sandbox, view, prefs, **kwargs):
        item = real(sandbox, view, prefs, **kwargs)
        if item.get("subject") == "Odd zone":  # as Graph answers when the UTC preference is not honoured
            item["start"] = {"dateTime": item["start"]["dateTime"], "timeZone": "W. Europe Standard Time"}
        return item

    monkeypatch.setattr(GraphSandbox, "_render", render)

    runs = run_org(world)

    assert runs[world.alice.mapping.pk].status == SyncRun.Status.OK
    assert [r["title"] for r in world.raynet_events()] == ["Fine"]
    [reason] = world.reasons("skipped")
    assert reason.startswith("skipped: could not read Outlook item") and "“Odd zone”" in reason
    assert refreshed(world.alice.mapping).graph_delta_link


def test_an_organization_wide_listing_that_fails_unexpectedly_fails_every_run_in_plain_words(world, monkeypatch):
    world.sync()
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "New", soon(2, 9), soon(2, 10))  # to list

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected shape")

    monkeypatch.setattr(RaynetClient, "list_activities", broken)
    runs = run_org(world)

    assert {run.status for run in runs.values()} == {SyncRun.Status.FAILED}
    assert all("Raynet change listing could not be read (RuntimeError)" in run.error for run in runs.values())
    assert {refreshed(p.mapping).health for p in (world.alice, world.bob)} == {UserMapping.Health.ERROR}


# --- 5. an older version never overwrites a newer one -------------------------------------------


def test_a_listing_read_before_a_newer_edit_was_synced_does_not_overwrite_it(world):
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "V1", soon(3, 9), soon(3, 10))
    world.sync()
    world.sync()
    client = RaynetClient(world.org.raynet)
    stale = client.list_activities("meeting", owner_id=world.alice.person_id)  # read by a slow process
    world.raynet.advance(timedelta(minutes=5))
    world.raynet.ui_edit_activity("meeting", meeting_id, title="V2")
    world.sync()  # another process syncs the newer version first
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["V2"]

    sync_mapping(mapping=world.alice.mapping, trigger=SyncRun.Trigger.MANUAL, raynet_changes=stale)

    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["V2"]


# --- 2. a lost reply to a Raynet create ---------------------------------------------------------


def test_a_raynet_create_whose_reply_was_lost_is_adopted_with_its_place_and_participants(world):
    world.outlook.person_create_event(
        world.alice.mailbox_id, "Workshop", soon(4, 13), soon(4, 15), location="Room 1", attendees=["jan@customer.test"]
    )
    world.raynet.inject_fault(503, method="PUT", path=r"^event/$", after=True)

    run_org(world)
    assert len(world.raynet_events()) == 1  # made, but the reply was lost: never sent again blindly
    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["meetingPlace"] == "Room 1"
    assert world.customer_id in {p["person"] for p in record["participants"]}
    [link] = world.links(world.alice)
    assert link.raynet_id == record["id"] and not link.intent
    recovered = SyncLogEntry.objects.filter(action="recovered").values_list("reason", flat=True)
    assert "its reply was lost" in " ".join(recovered)


# --- 4 and 10. the connection that failed, and the one that works -------------------------------


def test_after_a_successful_run_both_connections_say_working_with_their_last_success(world):
    world.sync()

    world.org.raynet.refresh_from_db()
    world.org.microsoft.refresh_from_db()
    assert (world.org.raynet.status, world.org.microsoft.status) == (ConnectionStatus.OK, ConnectionStatus.OK)
    assert world.org.raynet.last_success_at and world.org.microsoft.last_success_at


def test_an_outlook_write_refused_for_its_token_stops_the_microsoft_connection_not_raynet(world):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    world.outlook.inject_fault(
        401,
        times=2,  # the session renews the token once; the new one is refused too
        method="POST",
        path=rf"^v1\.0/users/{world.alice.mailbox_id}/events$",
        body={"error": {"code": "InvalidAuthenticationToken", "message": "expired"}},
    )

    run_org(world)

    world.org.raynet.refresh_from_db()
    world.org.microsoft.refresh_from_db()
    assert world.org.microsoft.status == ConnectionStatus.DISABLED
    assert world.org.raynet.status != ConnectionStatus.DISABLED


# --- 7. the run deadline and Retry-After --------------------------------------------------------


def test_a_run_that_reaches_its_deadline_stops_between_items_and_the_next_run_continues(world, settings):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "One", soon(3, 9), soon(3, 10))
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Two", soon(4, 9), soon(4, 10))
    settings.SYNC_RUN_DEADLINE = 0

    run_org(world)

    assert world.outlook_events(world.alice) == []
    assert world.reasons("stopped")[0].startswith("The run reached its time limit")
    assert refreshed(world.alice.mapping).raynet_cursor is None  # nothing released: read again next time

    settings.SYNC_RUN_DEADLINE = 240
    world.sync()
    assert sorted(e["subject"] for e in world.outlook_events(world.alice)) == ["One", "Two"]


def test_a_run_stopped_in_its_second_batch_keeps_what_it_made_and_the_next_run_makes_the_rest_once(world, monkeypatch):
    for n in range(BATCH_SIZE + 50):
        start = soon(1 + n // 8, 8 + n % 8)
        world.raynet.ui_create_activity(
            "meeting", world.alice.person_id, f"Meeting {n}", start, start + timedelta(minutes=30)
        )
    checks = itertools.count()
    # The engine's clock passes the deadline at its 131st check: the run stops in its second batch of creates,
    # whose intents were stored before any of its calls.
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + (10**6 if next(checks) >= BATCH_SIZE + 30 else 0))
    monkeypatch.setattr("syncapp.sync.engine.time", clock)

    world.sync()

    assert len(world.outlook_events(world.alice)) == BATCH_SIZE + 30
    assert world.reasons("stopped")[0].startswith("The run reached its time limit")
    assert len(world.links(world.alice)) == BATCH_SIZE + 30  # the intents of the creates not reached are dropped

    monkeypatch.undo()
    world.sync()

    subjects = sorted(event["subject"] for event in world.outlook_events(world.alice))
    assert subjects == sorted(f"Meeting {n}" for n in range(BATCH_SIZE + 50))
    assert len(world.links(world.alice)) == BATCH_SIZE + 50


def test_a_retry_after_longer_than_the_run_has_left_is_remembered_not_slept_through(world, settings, retry_waits):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "One", soon(3, 9), soon(3, 10))
    world.outlook.inject_fault(
        429, times=10, method="POST", path=r"^v1\.0/users/.*/events$", headers={"Retry-After": "900"}
    )

    runs = run_org(world)

    assert runs[world.alice.mapping.pk].status == SyncRun.Status.PARTIAL
    alice = refreshed(world.alice.mapping)
    assert alice.not_before > timezone.now() + timedelta(minutes=10)
    again = sync_mapping(mapping=alice, trigger=SyncRun.Trigger.MANUAL)
    assert again.status == SyncRun.Status.SKIPPED
    assert "asked to wait" in again.error
