"""Crashes, failed requests, spent budgets and revoked credentials: nothing duplicated, nothing lost, all logged."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from io import StringIO
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from syncapp.models import ConnectionStatus, EventLink, SyncLogEntry, SyncRun, UserMapping
from syncapp.providers.outlook import OutlookClient, reset_token_apps
from syncapp.providers.raynet import RaynetClient
from syncapp.sync import sync_organization
from syncapp.sync.apply import Applier
from tests.outlook_fixtures import OUTLOOK_TENANT_ID
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db

REAL_NOW = timezone.now


class Crash(BaseException):
    """The worker is killed: like KeyboardInterrupt/SystemExit, no `except Exception` stops it."""


def crash_after(monkeypatch, cls, name: str) -> list[str]:
    """The next call of cls.name reaches the external system, then the process dies before using the answer."""
    real = getattr(cls, name)
    calls: list[str] = []

    def crashing(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not calls:
            calls.append(name)
            raise Crash(name)
        return result

    monkeypatch.setattr(cls, name, crashing)
    return calls


def crash_before(monkeypatch, cls, name: str) -> list[str]:
    """The next call of cls.name never reaches the external system: the process dies just before."""
    real = getattr(cls, name)
    calls: list[str] = []

    def crashing(self, *args, **kwargs):
        if not calls:
            calls.append(name)
            raise Crash(name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, crashing)
    return calls


def run_org(world) -> dict[int, SyncRun]:
    """One run of the organization without asserting success; runs by mapping id."""
    runs = sync_organization(organization=world.org, trigger=SyncRun.Trigger.MANUAL)
    world.runs = runs
    return {run.mapping_id: run for run in runs}


def later(monkeypatch, minutes: int) -> None:
    """Django's clock (and so both sandboxes' and the cursors') moves on: changes made before the last run
    are no longer inside the Raynet listing's small overlap, as between real polls."""
    monkeypatch.setattr(timezone, "now", lambda: REAL_NOW() + timedelta(minutes=minutes))


def refreshed(mapping: UserMapping) -> UserMapping:
    mapping.refresh_from_db()
    return mapping


def entries(run: SyncRun, action: str) -> list[str]:
    return list(SyncLogEntry.objects.filter(run=run, action=action).order_by("pk").values_list("reason", flat=True))


def event_path(person, event_id: str) -> str:
    """The request path of one event, as the client quotes it."""
    return rf"^v1\.0/users/{person.mailbox_id}/events/" + re.escape(quote(event_id, safe="")) + "$"


# --- crash safety ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_run_killed_around_the_outlook_create_leaves_one_event_and_one_invitation_after_the_rerun(
    world, monkeypatch, when
):
    meeting_id = world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Offer", soon(3, 9), soon(3, 10), participants=[world.customer_id]
    )
    crash = crash_after if when == "after" else crash_before
    crashed = crash(monkeypatch, OutlookClient, "create_event")

    with pytest.raises(Crash):
        world.sync()
    assert crashed == ["create_event"]
    assert len(world.outlook_events(world.alice)) == (1 if when == "after" else 0)
    [pending] = world.links(world.alice)
    assert pending.outlook_event_id is None  # the intent, recorded before the create

    world.sync()
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["subject"] == "Offer"
    assert [m["to"] for m in world.invitations()] == ["jan@customer.test"]
    [link] = world.links(world.alice)
    assert (link.raynet_type, link.raynet_id, link.outlook_event_id) == ("meeting", meeting_id, event["id"])
    assert len(world.raynet_events()) == 1
    assert world.outlook_events(world.bob) == []
    if when == "after":
        found = SyncLogEntry.objects.filter(action="recovered").values_list("reason", flat=True)
        assert list(found) == ["Found the Outlook event an interrupted run had created."]


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_run_killed_around_the_raynet_create_leaves_one_raynet_event_after_the_rerun(world, monkeypatch, when):
    event_id = world.outlook.person_create_event(world.bob.mailbox_id, "Workshop", soon(4, 13), soon(4, 15))
    crash = crash_after if when == "after" else crash_before
    crashed = crash(monkeypatch, RaynetClient, "create_activity")

    with pytest.raises(Crash):
        world.sync()
    assert crashed == ["create_activity"]
    assert len(world.raynet_events()) == (1 if when == "after" else 0)

    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Workshop"
    assert record["owner"] == world.bob.person_id
    [link] = world.links(world.bob)
    assert (link.raynet_id, link.outlook_event_id, link.state) == (record["id"], event_id, EventLink.State.ACTIVE)
    assert len(world.outlook_events(world.bob)) == 1
    assert world.outlook_events(world.alice) == []
    if when == "after":
        found = SyncLogEntry.objects.filter(action="recovered").values_list("reason", flat=True)
        assert list(found) == ["Found the Raynet activity an interrupted run had created."]


def test_an_outlook_event_deleted_after_a_killed_run_is_cancelled_in_raynet_by_the_rerun(world, monkeypatch):
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Visit", soon(6, 9), soon(6, 10))
    crash_after(monkeypatch, RaynetClient, "create_activity")
    with pytest.raises(Crash):
        world.sync()

    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["status"] == "CANCELLED"
    [link] = world.links(world.alice)
    assert (link.raynet_id, link.state) == (record["id"], EventLink.State.DELETED)
    assert SyncLogEntry.objects.filter(action="cancelled").values_list("reason", flat=True).get() == (
        "deleted in Outlook: cancelled on the other side"
    )


def test_an_outlook_edit_of_an_event_a_killed_run_created_reaches_raynet_after_the_rerun(world, monkeypatch):
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Plan", soon(6, 9), soon(6, 10))
    crash_after(monkeypatch, OutlookClient, "create_event")
    with pytest.raises(Crash):
        world.sync()
    [event] = world.outlook_events(world.alice)

    world.outlook.set_now(datetime.now(UTC) + timedelta(minutes=3))  # Alice edits it a few minutes later
    world.outlook.person_edit_event(
        world.alice.mailbox_id, event["id"], subject="Plan (moved)", start=soon(6, 11), end=soon(6, 12)
    )
    world.sync()
    world.sync()

    assert world.raynet.activity("meeting", meeting_id)["title"] == "Plan (moved)"
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Plan (moved)"]
    assert len(world.links()) == 1


def test_a_raynet_cancel_of_an_activity_a_killed_run_created_reaches_outlook_after_the_rerun(world, monkeypatch):
    world.outlook.person_create_event(world.bob.mailbox_id, "Review", soon(6, 9), soon(6, 10))
    crash_after(monkeypatch, RaynetClient, "create_activity")
    with pytest.raises(Crash):
        world.sync()
    [record] = world.raynet_events()

    world.raynet.ui_cancel_activity("event", record["id"])
    world.sync()
    world.sync()

    assert world.outlook_events(world.bob) == []
    [link] = world.links(world.bob)
    assert link.state == EventLink.State.DELETED
    assert world.raynet.activity("event", record["id"])["status"] == "CANCELLED"


def test_a_run_killed_while_saving_the_link_state_is_finished_without_duplicates(world, monkeypatch):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Board", soon(5, 9), soon(5, 10))
    world.outlook.person_create_event(world.alice.mailbox_id, "Gym", soon(5, 18), soon(5, 19))
    real_flush = Applier.flush
    flushes = {"n": 0}

    def flush_then_die(applier):
        # Die on the first batch write that completes a create (a link gets both ids): both creates are made.
        if any(link.raynet_id and link.outlook_event_id for link in applier.finished.values()) and not flushes["n"]:
            flushes["n"] += 1
            raise Crash("Applier.flush")
        return real_flush(applier)

    monkeypatch.setattr(Applier, "flush", flush_then_die)
    with pytest.raises(Crash):
        world.sync()
    monkeypatch.setattr(Applier, "flush", real_flush)

    world.sync()
    world.sync()

    assert sorted(e["subject"] for e in world.outlook_events(world.alice)) == ["Board", "Gym"]
    assert sorted(r["title"] for r in world.raynet_events()) == ["Board", "Gym"]
    links = world.links(world.alice)
    assert len(links) == 2
    assert all(link.raynet_id and link.outlook_event_id for link in links)


def test_an_outlook_create_that_failed_on_a_503_is_made_by_a_later_run_once(world):
    world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Call", soon(2, 14), soon(2, 15), participants=[world.customer_id]
    )
    world.outlook.inject_fault(503, times=4, method="POST", path=rf"^v1\.0/users/{world.alice.mailbox_id}/events$")

    runs = run_org(world)

    assert runs[world.alice.mapping.pk].status == SyncRun.Status.PARTIAL
    assert world.outlook_events(world.alice) == []
    [reason] = entries(runs[world.alice.mapping.pk], "error")
    assert reason == "Not synced this time: Microsoft Graph had a temporary problem (HTTP 503)."
    assert refreshed(world.alice.mapping).health == UserMapping.Health.WARNING
    assert refreshed(world.alice.mapping).raynet_cursor is not None  # the cursor moved on: the link remembers

    world.sync()
    world.sync()

    [event] = world.outlook_events(world.alice)
    assert event["subject"] == "Call"
    assert len(world.invitations()) == 1
    assert len(world.links(world.alice)) == 1
    assert refreshed(world.alice.mapping).health == UserMapping.Health.OK


def test_a_raynet_create_that_failed_on_a_503_is_made_by_a_later_run_once(world):
    world.outlook.person_create_event(world.alice.mailbox_id, "Lunch", soon(2, 11), soon(2, 12))
    # A create is never resent in the same run once it may have reached Raynet: one 503 fails it for this run.
    world.raynet.inject_fault(503, times=1, method="PUT", path=r"^event/$")

    runs = run_org(world)

    assert runs[world.alice.mapping.pk].status == SyncRun.Status.PARTIAL
    assert world.raynet_events() == []
    [reason] = entries(runs[world.alice.mapping.pk], "error")
    assert reason.startswith("Not synced this time: Raynet had a server error (HTTP 503)")
    assert refreshed(world.alice.mapping).graph_delta_link  # the delta moved on: the link remembers

    world.sync()
    world.sync()

    [record] = world.raynet_events()
    assert record["title"] == "Lunch"
    assert len(world.links(world.alice)) == 1
    assert len(world.outlook_events(world.alice)) == 1


# --- one event fails, the rest syncs -----------------------------------------------------------------------


def test_a_failed_outlook_update_of_one_event_is_logged_and_done_by_the_next_run(world, monkeypatch):
    first = world.raynet.ui_create_activity("meeting", world.alice.person_id, "One", soon(3, 9), soon(3, 10))
    second = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Two", soon(3, 11), soon(3, 12))
    world.outlook.person_create_event(world.bob.mailbox_id, "Bob's", soon(3, 13), soon(3, 14))
    world.sync()
    world.sync()
    failing = next(link for link in world.links(world.alice) if link.raynet_id == first)

    world.raynet.ui_edit_activity("meeting", first, title="One (edited)")
    world.raynet.ui_edit_activity("meeting", second, title="Two (edited)")
    world.outlook.person_create_event(world.bob.mailbox_id, "Bob's second", soon(4, 13), soon(4, 14))
    world.outlook.inject_fault(503, times=4, method="PATCH", path=event_path(world.alice, failing.outlook_event_id))
    later(monkeypatch, 10)
    runs = run_org(world)

    alice_run, bob_run = runs[world.alice.mapping.pk], runs[world.bob.mapping.pk]
    assert alice_run.status == SyncRun.Status.PARTIAL
    assert bob_run.status == SyncRun.Status.OK
    assert entries(alice_run, "error") == ["Not synced this time: Microsoft Graph had a temporary problem (HTTP 503)."]
    error = SyncLogEntry.objects.get(run=alice_run, action="error")
    assert (error.raynet_type, error.raynet_id) == ("meeting", first)
    assert entries(alice_run, "updated") == ["updated Outlook from the Raynet change"]
    assert sorted(e["subject"] for e in world.outlook_events(world.alice)) == ["One", "Two (edited)"]
    assert sorted(r["title"] for r in world.raynet_events()) == [
        "Bob's",
        "Bob's second",
        "One (edited)",
        "Two (edited)",
    ]
    alice = refreshed(world.alice.mapping)
    assert alice.health == UserMapping.Health.WARNING
    assert alice.health_reason == "1 event(s) could not be synced in the last run; see the log."
    assert refreshed(world.bob.mapping).health == UserMapping.Health.OK

    later(monkeypatch, 20)
    world.sync()

    assert sorted(e["subject"] for e in world.outlook_events(world.alice)) == ["One (edited)", "Two (edited)"]
    assert world.reasons("updated") == ["updated Outlook from the Raynet change"]
    assert refreshed(world.alice.mapping).health == UserMapping.Health.OK
    assert len(world.links()) == 4


def test_a_failed_raynet_update_of_one_event_is_logged_and_done_by_the_next_run(world, monkeypatch):
    first = world.outlook.person_create_event(world.alice.mailbox_id, "One", soon(3, 9), soon(3, 10))
    world.outlook.person_create_event(world.alice.mailbox_id, "Two", soon(3, 11), soon(3, 12))
    world.sync()
    world.sync()
    failing = EventLink.objects.get(outlook_event_id=first)

    world.outlook.person_edit_event(world.alice.mailbox_id, first, subject="One (edited)")
    world.outlook.person_create_event(world.alice.mailbox_id, "Three", soon(3, 13), soon(3, 14))
    world.raynet.inject_fault(503, times=4, method="POST", path=rf"^event/{failing.raynet_id}/$")
    later(monkeypatch, 10)
    runs = run_org(world)

    alice_run = runs[world.alice.mapping.pk]
    assert alice_run.status == SyncRun.Status.PARTIAL
    [reason] = entries(alice_run, "error")
    assert reason.startswith("Not synced this time: Raynet had a server error (HTTP 503)")
    assert sorted(r["title"] for r in world.raynet_events()) == ["One", "Three", "Two"]
    assert refreshed(world.alice.mapping).health == UserMapping.Health.WARNING

    later(monkeypatch, 20)
    world.sync()

    assert sorted(r["title"] for r in world.raynet_events()) == ["One (edited)", "Three", "Two"]
    assert world.reasons("updated") == ["updated Raynet from the Outlook change"]
    assert refreshed(world.alice.mapping).health == UserMapping.Health.OK


# --- a whole side fails --------------------------------------------------------------------------------------


def test_an_outlook_delta_that_keeps_failing_fails_the_run_and_keeps_the_cursors(world):
    world.sync()
    alice_before = refreshed(world.alice.mapping)
    cursors = (alice_before.graph_delta_link, alice_before.raynet_cursor)
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Held", soon(2, 9), soon(2, 10))
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Bob's", soon(2, 9), soon(2, 10))
    world.outlook.inject_fault(
        500, times=100, method="GET", path=rf"^v1\.0/users/{world.alice.mailbox_id}/calendarView/delta"
    )

    runs = run_org(world)

    alice_run, bob_run = runs[world.alice.mapping.pk], runs[world.bob.mapping.pk]
    assert alice_run.status == SyncRun.Status.FAILED
    assert alice_run.error == "Outlook: Microsoft Graph had a temporary problem (HTTP 500)."
    alice = refreshed(world.alice.mapping)
    assert (alice.health, alice.health_reason) == (UserMapping.Health.ERROR, alice_run.error)
    assert (alice.graph_delta_link, alice.raynet_cursor) == cursors
    assert world.outlook_events(world.alice) == []
    assert bob_run.status == SyncRun.Status.OK
    assert [e["subject"] for e in world.outlook_events(world.bob)] == ["Bob's"]

    world.outlook.state["faults"].clear()
    world.sync()

    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Held"]
    assert refreshed(world.alice.mapping).health == UserMapping.Health.OK


def test_a_mailbox_outside_the_access_policy_fails_its_run_in_plain_words_and_others_still_sync(world):
    world.sync()
    cursors = (refreshed(world.alice.mapping).graph_delta_link, world.alice.mapping.raynet_cursor)
    world.outlook.set_mailbox_access(world.alice.mailbox_id, False)
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Bob's", soon(2, 9), soon(2, 10))

    runs = run_org(world)

    alice_run = runs[world.alice.mapping.pk]
    assert alice_run.status == SyncRun.Status.FAILED
    assert alice_run.error.startswith("Outlook: Microsoft refused the portal access to mailbox")
    assert "application access policy" in alice_run.error
    alice = refreshed(world.alice.mapping)
    assert (alice.health, alice.health_reason) == (UserMapping.Health.ERROR, alice_run.error)
    assert (alice.graph_delta_link, alice.raynet_cursor) == cursors
    assert runs[world.bob.mapping.pk].status == SyncRun.Status.OK
    assert [e["subject"] for e in world.outlook_events(world.bob)] == ["Bob's"]
    world.org.microsoft.refresh_from_db()
    assert world.org.microsoft.status != ConnectionStatus.DISABLED  # one mailbox, not the whole tenant


# --- budgets and credentials ---------------------------------------------------------------------------------


def test_a_spent_raynet_budget_skips_runs_pauses_the_connection_and_does_not_retry(world):
    world.outlook.person_create_event(world.alice.mailbox_id, "Lunch", soon(2, 11), soon(2, 12))
    world.raynet.set_daily_limit(100, used=100)
    world.reset_calls()

    runs = run_org(world)

    assert {run.status for run in runs.values()} == {SyncRun.Status.SKIPPED}
    alice_run = runs[world.alice.mapping.pk]
    assert "daily API request limit is spent" in alice_run.error
    assert "daily API budget is spent" in runs[world.bob.mapping.pk].error
    assert world.raynet.count() == 1  # one refused request, no retry loop
    world.org.raynet.refresh_from_db()
    assert world.org.raynet.is_paused()
    assert world.raynet_events() == []

    world.reset_calls()
    again = run_org(world)

    assert {run.status for run in again.values()} == {SyncRun.Status.SKIPPED}
    assert all(run.error.startswith("Raynet's daily API budget is spent; sync resumes at") for run in again.values())
    assert world.raynet.count() == 0
    assert world.outlook.count() == 0


@pytest.mark.parametrize("breakage", ["revoked consent", "wrong secret"])
def test_bad_microsoft_credentials_disable_the_connection_and_later_runs_are_skipped(world, settings, breakage):
    world.sync()
    if breakage == "revoked consent":
        world.outlook.revoke_consent(OUTLOOK_TENANT_ID)
        expected = "has no admin consent in tenant"
    else:
        settings.MICROSOFT_CLIENT_SECRET = "not-the-secret"
        expected = "rejected the portal's app credentials"
    reset_token_apps()  # the cached token would keep working until it expires

    runs = run_org(world)

    first = runs[world.alice.mapping.pk]
    assert first.status == SyncRun.Status.FAILED
    assert expected in first.error
    world.org.microsoft.refresh_from_db()
    assert world.org.microsoft.status == ConnectionStatus.DISABLED
    assert expected in world.org.microsoft.last_error
    assert runs[world.bob.mapping.pk].status == SyncRun.Status.SKIPPED
    world.reset_calls()

    again = run_org(world)

    assert {run.status for run in again.values()} == {SyncRun.Status.SKIPPED}
    for run in again.values():
        assert run.error.startswith("A connection is stopped until an admin fixes it:")
        assert expected in run.error
    assert world.outlook.count() == 0
    assert world.raynet.count() == 0


# --- the command ----------------------------------------------------------------------------------------------


def sync_command(*args) -> str:
    out = StringIO()
    call_command("sync", *args, stdout=out)
    return out.getvalue()


def test_the_sync_command_prints_one_summary_line_per_mapping(world):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Weekly", soon(1, 8), soon(1, 9))

    output = sync_command()

    lines = output.splitlines()
    assert lines == [
        "Acme s.r.o. / alice@acme.test ⇄ alice@acme.test: OK (to_outlook: 1 created)",
        "Acme s.r.o. / bob@acme.test ⇄ bob@acme.test: OK (no changes)",
    ]
    assert SyncRun.objects.filter(trigger=SyncRun.Trigger.CLI).count() == 2


def test_the_sync_command_with_user_syncs_only_that_user(world):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Alice's", soon(1, 8), soon(1, 9))
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Bob's", soon(1, 8), soon(1, 9))

    output = sync_command("--user", "alice@acme.test")

    assert output.splitlines() == ["Acme s.r.o. / alice@acme.test ⇄ alice@acme.test: OK (to_outlook: 1 created)"]
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Alice's"]
    assert world.outlook_events(world.bob) == []
    assert list(SyncRun.objects.values_list("mapping_id", flat=True)) == [world.alice.mapping.pk]


def test_the_sync_command_with_org_syncs_only_that_organization(world, other_org):
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Bob's", soon(1, 8), soon(1, 9))

    output = sync_command("--org", str(world.org.code))

    assert len(output.splitlines()) == 2
    assert all(line.startswith("Acme s.r.o. / ") for line in output.splitlines())
    with pytest.raises(CommandError, match="No organization with code"):
        sync_command("--org", "00000000-0000-0000-0000-000000000000")


def test_the_sync_command_with_full_reads_the_whole_window(world):
    world.sync()
    world.sync()
    world.reset_calls()

    output = sync_command("--full")

    assert len(output.splitlines()) == 2
    # A full read lists each Raynet type per mailbox, instead of one change listing for the organization.
    assert world.raynet.count("GET", r"^(meeting|event)/$") == 4
    assert world.outlook.count("GET", r"calendarView/delta") == 2


def test_the_sync_command_refuses_an_unknown_user(world):
    with pytest.raises(CommandError, match="No mapped user with e-mail nobody@acme.test"):
        sync_command("--user", "nobody@acme.test")
    assert SyncRun.objects.count() == 0


def test_the_sync_command_shows_why_a_run_failed(world):
    world.outlook.set_mailbox_access(world.alice.mailbox_id, False)

    output = sync_command("--user", "alice@acme.test")

    line, reason = output.splitlines()
    assert line.startswith("Acme s.r.o. / alice@acme.test ⇄ alice@acme.test: Failed")
    assert reason.strip().startswith("Outlook: Microsoft refused the portal access to mailbox")


def test_a_mailbox_switched_off_while_its_organization_cycle_runs_is_not_synced(world, monkeypatch):
    from syncapp.sync import service

    world.sync()
    world.raynet.reset_calls()
    real_listing = service.organization_listing

    def listing_then_admin_switches_bob_off(**kwargs):
        listing = real_listing(**kwargs)
        UserMapping.objects.filter(pk=world.bob.mapping.pk).update(enabled=False)
        return listing

    monkeypatch.setattr(service, "organization_listing", listing_then_admin_switches_bob_off)
    world.outlook.person_create_event(world.bob.mailbox_id, "Gym", soon(1, 18), soon(1, 19))

    runs = run_org(world)

    # Each run reads its own row again under the mailbox lock: Bob's sees the switch made after the cycle began.
    assert runs[world.alice.mapping.pk].status == SyncRun.Status.OK
    assert runs[world.bob.mapping.pk].status == SyncRun.Status.SKIPPED
    assert runs[world.bob.mapping.pk].error == "Sync is switched off for this user."
    assert world.raynet.count("POST") == 0


def test_a_connection_an_admin_stopped_between_two_cycles_stops_the_next_cycle(world):
    from syncapp.models import RaynetConnection

    world.sync()
    world.raynet.reset_calls()
    RaynetConnection.objects.filter(organization=world.org).update(
        status=ConnectionStatus.DISABLED, last_error="Stopped by the admin."
    )

    runs = run_org(world)

    # The cycle reads the organization's connections once, when it starts, not from an earlier cycle's objects.
    assert {run.status for run in runs.values()} == {SyncRun.Status.SKIPPED}
    assert all(run.error.endswith("Stopped by the admin.") for run in runs.values())
    assert world.raynet.count() == 0
