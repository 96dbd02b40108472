"""The dry run (SPEC 8, first-sync preview): what a run would do, per mailbox, with nothing written anywhere."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from syncapp.models import EventLink, RaynetConnection, SyncLogEntry, SyncRun, UserMapping
from syncapp.sync import mapping_dry_run
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db


def database_snapshot() -> tuple:
    raynet = RaynetConnection.objects.values_list("rate_limit_remaining", "status", "last_success_at").get()
    mappings = list(UserMapping.objects.order_by("pk").values_list("graph_delta_link", "raynet_cursor", "health"))
    return SyncRun.objects.count(), EventLink.objects.count(), SyncLogEntry.objects.count(), raynet, mappings


def test_a_dry_run_of_a_mapping_not_enabled_yet_lists_creates_and_invitations_and_writes_nothing(world):
    alice = world.alice.mapping
    alice.enabled = False
    alice.save()
    world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Demo", soon(3, 13), soon(3, 14), participants=[world.customer_id]
    )
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Solo", soon(4, 9), soon(4, 10))
    world.outlook.person_create_event(world.alice.mailbox_id, "Dentist", soon(5, 7), soon(5, 8))
    world.outlook.person_create_event(world.alice.mailbox_id, "Private", soon(5, 9), soon(5, 10), private=True)
    world.set_policy(private_events_mode="skip")
    before = database_snapshot()
    world.reset_calls()

    plan = mapping_dry_run(mapping=alice)

    assert plan.counts() == {"to_outlook": {"create": 2}, "to_raynet": {"create": 1, "skip": 1}}
    assert sorted((a.direction, a.action, a.title) for a in plan.actions) == [
        ("to_outlook", "create", "Demo"),
        ("to_outlook", "create", "Solo"),
        ("to_raynet", "create", "Dentist"),
        ("to_raynet", "skip", "Private"),
    ]
    [skip] = [a for a in plan.actions if a.action == "skip"]
    assert skip.reason_text == "skipped: private event, policy = skip"
    assert plan.invitations == [("Demo", soon(3, 13), ["jan@customer.test"])]
    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert world.outlook.sent_mail == []
    assert database_snapshot() == before


def test_the_sync_command_with_dry_run_prints_the_plan_per_mailbox_and_syncs_nothing(world):
    world.raynet.ui_create_activity(
        "meeting", world.alice.person_id, "Demo", soon(3, 13), soon(3, 14), participants=[world.customer_id]
    )
    world.outlook.person_create_event(world.bob.mailbox_id, "Gym", soon(2, 18), soon(2, 19))
    world.reset_calls()
    out = StringIO()

    call_command("sync", "--dry-run", stdout=out)

    text = out.getvalue()
    assert "alice@acme.test ⇄ alice@acme.test (dry run, nothing written):" in text
    assert "→ Outlook: 1 create" in text
    assert "create “Demo”" in text
    assert "Outlook would invite jan@customer.test to “Demo”" in text
    assert "create “Gym”" in text
    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert SyncRun.objects.count() == 0
    assert EventLink.objects.count() == 0


def test_a_dry_run_after_edits_lists_updates_and_deletions_each_way(world):
    meeting_id = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Visit", soon(3, 9), soon(3, 10))
    event_id = world.outlook.person_create_event(world.alice.mailbox_id, "Call", soon(4, 9), soon(4, 10))
    world.sync()
    world.sync()
    world.raynet.ui_edit_activity("meeting", meeting_id, title="Visit (moved)")
    world.outlook.person_delete_event(world.alice.mailbox_id, event_id)
    world.reset_calls()

    plan = mapping_dry_run(mapping=world.alice.mapping)

    assert plan.counts() == {"to_outlook": {"update": 1}, "to_raynet": {"cancel": 1}}
    assert world.writes() == {"raynet": 0, "outlook": 0}
    assert {r["status"] for r in world.raynet_events()} == {"SCHEDULED"}
