"""Support staff's Django admin: every page renders, none shows a secret."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from cryptography.fernet import Fernet
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule, Task
from django_q.tasks import async_task

from syncapp.models import (
    ConnectionStatus,
    EventLink,
    MicrosoftConnection,
    Organization,
    RaynetConnection,
    SyncLogEntry,
    SyncRun,
    UserMapping,
)
from tests.conftest import make_user
from tests.test_foundation import API_KEY, make_link, make_mapping, make_raynet_connection

REGISTERED_MODELS = sorted(admin.site._registry, key=lambda model: model._meta.label)


@pytest.fixture
def staff_client(client, db):
    client.force_login(make_user("support@raysync.test", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def rows(org, admin_user):
    """A few rows in every table support looks at, the Raynet connection with a known key."""
    raynet = make_raynet_connection(org)
    raynet.record_failure("Raynet rejected the API key (401)", permanent=True)
    MicrosoftConnection.objects.create(organization=org, tenant_id="c0ffee00-0000-4000-8000-000000000001")
    mapping = make_mapping(org)
    link = make_link(mapping, raynet_id=7, outlook_event_id="AAMk-1")
    run = SyncRun.objects.create(organization=org, mapping=mapping, trigger=SyncRun.Trigger.SCHEDULE, error="")
    for action, reason in [("created", "created in Outlook"), ("skipped", "skipped: private event, policy = skip")]:
        SyncLogEntry.objects.create(
            organization=org, run=run, link=link, raynet_id=7, direction="to_outlook", action=action, reason=reason
        )
    EmailAddress.objects.create(user=admin_user, email=admin_user.email, primary=True, verified=True)
    Group.objects.create(name="Support")
    Schedule.objects.create(func="math.floor", args="1.5", schedule_type=Schedule.MINUTES, minutes=5)
    async_task("math.floor", 1.5, sync=False)  # a queued task, on the ORM broker
    for number, success in enumerate([True, False]):
        now = timezone.now()
        Task.objects.create(
            id=f"task-{number}", name=f"task-{number}", func="math.floor", started=now, stopped=now, success=success
        )
    return {"raynet": raynet, "run": run, "link": link}


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def get_page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_every_changelist_renders_without_the_secret(staff_client, rows, model):
    page = get_page(staff_client, admin_url(model, "changelist"))

    assert API_KEY not in page


@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_every_changelist_search_works_with_words_and_numbers(staff_client, rows, model):
    if not admin.site._registry[model].search_fields:
        pytest.skip("no search box")
    for term in ("acme", "7"):
        get_page(staff_client, admin_url(model, "changelist") + f"?q={term}")


@pytest.mark.parametrize("model", REGISTERED_MODELS, ids=lambda model: model._meta.label)
def test_every_change_page_renders_without_the_secret(staff_client, rows, model):
    objects = model._default_manager.all()
    if not objects.exists():
        pytest.skip(f"no {model._meta.verbose_name} rows in this set-up")
    for obj in objects:
        page = get_page(staff_client, admin_url(model, "change", obj.pk))
        assert API_KEY not in page


def test_the_raynet_connection_page_shows_a_mask_and_the_reason_it_stopped(staff_client, rows):
    page = get_page(staff_client, admin_url(type(rows["raynet"]), "change", rows["raynet"].pk))

    assert "••••••••" in page
    assert "Raynet rejected the API key (401)" in page
    assert API_KEY not in page
    assert 'name="api_key"' not in page


def test_a_sync_run_page_shows_its_log_entries(staff_client, rows):
    page = get_page(staff_client, admin_url(SyncRun, "change", rows["run"].pk))

    assert "skipped: private event, policy = skip" in page
    assert API_KEY not in page


def test_support_reads_a_log_reason_in_the_language_of_their_browser(staff_client, rows):
    entry = rows["run"].entries.get(action="skipped")
    entry.reason_code, entry.reason_params = "private_skipped", {}
    entry.save()
    url = admin_url(SyncLogEntry, "changelist")

    assert "skipped: private event, policy = skip" in get_page(staff_client, url)
    czech = staff_client.get(url, headers={"accept-language": "cs"}).content.decode()
    assert "přeskočeno: soukromá událost, pravidlo = vynechat" in czech


def test_the_organization_delete_and_history_pages_do_not_show_the_secret(staff_client, rows, org):
    for view in ("delete", "history"):
        assert API_KEY not in get_page(staff_client, admin_url(Organization, view, org.pk))


def test_support_can_reset_a_mailbox_cursor(staff_client, rows):
    mapping = rows["link"].mapping
    mapping.graph_delta_link = "https://graph.microsoft.com/v1.0/users/x/calendarView/delta?$deltatoken=abc"
    mapping.save()

    response = staff_client.post(
        admin_url(type(mapping), "changelist"),
        {"action": "reset_mailbox_cursor", "_selected_action": [mapping.pk]},
        follow=True,
    )

    assert response.status_code == 200
    mapping.refresh_from_db()
    assert (mapping.graph_delta_link, mapping.graph_delta_window_start, mapping.raynet_cursor) == ("", None, None)


def test_support_can_approve_deletions_held_by_the_mass_delete_guard(staff_client, rows):
    mapping = rows["link"].mapping
    mapping.set_health(type(mapping).Health.FLAGGED, "This run would delete 40 of 50 synced events.")

    run = SyncRun.objects.create(organization=mapping.organization, mapping=mapping, trigger="schedule")
    SyncLogEntry.objects.create(
        organization=mapping.organization, run=run, action="held", reason="held", details={"planned": [rows["link"].pk]}
    )
    action = {"action": "approve_held_deletions", "_selected_action": [mapping.pk]}
    confirm = staff_client.post(admin_url(type(mapping), "changelist"), action)
    mapping.refresh_from_db()
    assert mapping.mass_delete_approved is False  # first the list of what would be deleted
    assert "Carry out the held deletions?" in confirm.content.decode() and "AAMk-1" in confirm.content.decode()

    staff_client.post(admin_url(type(mapping), "changelist"), {**action, "confirm": "yes"}, follow=True)
    mapping.refresh_from_db()
    assert mapping.mass_delete_approved is True
    assert LogEntry.objects.filter(object_id=str(mapping.pk), change_message__startswith="Flag cleared").exists()


def test_support_sync_now_and_disable_are_queued_and_recorded(staff_client, rows, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    mapping = rows["link"].mapping
    UserMapping.objects.filter(pk=mapping.pk).update(enabled=True)
    url = admin_url(type(mapping), "changelist")
    staff_client.post(url, {"action": "sync_now", "_selected_action": [mapping.pk]}, follow=True)
    staff_client.post(url, {"action": "full_resync", "_selected_action": [mapping.pk]}, follow=True)
    mapping.refresh_from_db()
    assert mapping.sync_requested_at is not None and mapping.sync_request_full  # one run, full
    staff_client.post(url, {"action": "disable", "_selected_action": [mapping.pk]}, follow=True)
    mapping.refresh_from_db()
    assert mapping.enabled is False
    messages = set(LogEntry.objects.filter(object_id=str(mapping.pk)).values_list("change_message", flat=True))
    assert {m.split(":")[0] for m in messages} >= {"Sync now", "Full resync", "Disabled"}


def test_support_cannot_edit_sync_records_in_the_admin(staff_client, rows):
    link = rows["link"]

    staff_client.post(admin_url(EventLink, "change", link.pk), {"raynet_id": 8, "origin": "raynet", "state": "active"})

    link.refresh_from_db()
    assert link.raynet_id == 7


# --- a secret no configured key decrypts -----------------------------------------------------------------


@pytest.fixture
def undecryptable(rows, settings):
    """The Raynet row was encrypted under a key that is no longer configured."""
    settings.SECRET_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    return rows["raynet"]


def test_the_connection_pages_render_when_a_key_cannot_be_decrypted(staff_client, undecryptable):
    listing = get_page(staff_client, admin_url(RaynetConnection, "changelist"))
    page = get_page(staff_client, admin_url(RaynetConnection, "change", undecryptable.pk))

    assert "cannot be decrypted: enter the key again" in listing
    assert "cannot be decrypted: enter the key again" in page
    for model in REGISTERED_MODELS:
        get_page(staff_client, admin_url(model, "changelist"))


def test_support_sees_when_raynet_last_delivered_a_webhook_and_whether_the_poll_is_only_the_safety_net(
    staff_client, raynet_connection
):
    assert "never" in get_page(staff_client, admin_url(RaynetConnection, "change", raynet_connection.pk))
    RaynetConnection.objects.filter(pk=raynet_connection.pk).update(
        webhook_id="hook-1", webhook_seen_at=timezone.now() - timedelta(hours=2)
    )

    listing = get_page(staff_client, admin_url(RaynetConnection, "changelist"))

    assert "(live: the poll is the safety net)" in listing


# --- support actions on connections ------------------------------------------------------------------------


def run_action(client, model, action: str, obj) -> str:
    response = client.post(
        admin_url(model, "changelist"), {"action": action, "_selected_action": [obj.pk]}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


def history(obj) -> list[str]:
    return [entry.get_change_message() for entry in LogEntry.objects.filter(object_id=str(obj.pk))]


def test_test_now_records_a_working_raynet_connection_and_who_tested_it(staff_client, raynet_connection):
    raynet_connection.record_failure("Raynet refused the login", permanent=True)

    page = run_action(staff_client, RaynetConnection, "test_now", raynet_connection)

    raynet_connection.refresh_from_db()
    assert raynet_connection.status == ConnectionStatus.OK and raynet_connection.last_success_at
    assert "Connected to Raynet instance" in page
    [entry] = LogEntry.objects.filter(object_id=str(raynet_connection.pk))
    assert entry.user.email == "support@raysync.test"
    assert entry.get_change_message().startswith("Connection test passed: Connected to Raynet instance")


def test_test_now_records_a_failing_microsoft_connection(staff_client, outlook_connection, outlook_sandbox):
    outlook_sandbox.revoke_consent(outlook_connection.tenant_id)

    page = run_action(staff_client, MicrosoftConnection, "test_now", outlook_connection)

    outlook_connection.refresh_from_db()
    assert outlook_connection.status == ConnectionStatus.DISABLED
    assert "admin consent" in outlook_connection.last_error and "admin consent" in page
    assert history(outlook_connection)[0].startswith("Connection test failed:")


def test_reenable_resumes_a_stopped_connection_and_is_recorded(staff_client, outlook_connection):
    outlook_connection.record_failure("Microsoft refused the token", permanent=True)

    run_action(staff_client, MicrosoftConnection, "reenable", outlook_connection)

    outlook_connection.refresh_from_db()
    assert outlook_connection.status == ConnectionStatus.NEW
    assert history(outlook_connection) == ["Re-enabled: syncing resumes."]


def test_reenable_clears_a_raynet_pause_only_once_the_budget_has_reset(staff_client, raynet_connection):
    raynet_connection.record_failure("Raynet refused the login", permanent=True)
    RaynetConnection.objects.filter(pk=raynet_connection.pk).update(paused_until=timezone.now() + timedelta(hours=3))

    run_action(staff_client, RaynetConnection, "reenable", raynet_connection)
    raynet_connection.refresh_from_db()
    assert raynet_connection.status == ConnectionStatus.NEW and raynet_connection.is_paused()

    RaynetConnection.objects.filter(pk=raynet_connection.pk).update(paused_until=timezone.now() - timedelta(minutes=1))
    run_action(staff_client, RaynetConnection, "reenable", raynet_connection)
    raynet_connection.refresh_from_db()
    assert raynet_connection.paused_until is None
