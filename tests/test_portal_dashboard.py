"""The dashboard, the log and the forms under stress: fixed query counts, escaping, fuzzed input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncapp.models import EventLink, SyncLogEntry, SyncRun, UserMapping
from tests.portal_fixtures import page_text

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def add_mapping(org, n: int, **fields) -> UserMapping:
    return UserMapping.objects.create(
        organization=org,
        raynet_user_id=n,
        raynet_person_id=n,
        raynet_email=f"user{n}@acme.test",
        outlook_user_id=f"mbx-{n}",
        outlook_upn=f"user{n}@acme.test",
        enabled=True,
        **fields,
    )


def add_history(org, mapping: UserMapping, events: int, *, reason: str = "created in Outlook") -> None:
    run = SyncRun.objects.create(organization=org, mapping=mapping, trigger="schedule", status="ok")
    for i in range(events):
        link = EventLink.objects.create(
            organization=org, mapping=mapping, raynet_id=mapping.pk * 1000 + i, origin="raynet"
        )
        SyncLogEntry.objects.create(
            organization=org,
            run=run,
            link=link,
            direction="to_outlook",
            action="created",
            reason=reason,
            created=timezone.now() - timedelta(days=i % 14),
        )


def queries_for(client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(path).status_code == 200
    return len(captured)


@pytest.mark.parametrize("path", ["/org/{code}/", "/org/{code}/log/", "/org/{code}/members/", "/"])
def test_a_page_costs_the_same_queries_with_one_user_or_many(client, org, admin_user, path):
    client.force_login(admin_user)
    add_history(org, add_mapping(org, 1), 2)
    small = queries_for(client, path.format(code=org.code))

    for n in range(2, 12):
        add_history(org, add_mapping(org, n, health="flagged" if n == 3 else "ok"), 5)
    large = queries_for(client, path.format(code=org.code))

    # The flagged mailbox's held deletions take one query of their own (two: its log entry and its links).
    assert large <= small + (2 if path == "/org/{code}/" else 0)
    assert large <= 16


def test_the_dashboard_shows_each_users_health_linked_events_and_advice(client, org, admin_user):
    client.force_login(admin_user)
    mapping = add_mapping(org, 1, health="error", health_reason="Mailbox not reachable.")
    add_history(org, mapping, 3)

    page = page_text(client.get(f"/org/{org.code}/"))

    assert "Mailbox not reachable." in page and "press “Sync now”" in page
    assert "<td>3</td>" in page
    assert "<svg" in page and page.count("<rect") >= 3


def test_a_flagged_mailbox_offers_confirm_or_reset_with_the_held_events(client, org, admin_user):
    client.force_login(admin_user)
    mapping = add_mapping(org, 1, health="flagged", health_reason="15 deletions held back.")
    add_history(org, mapping, 2)
    held = list(mapping.links.all())
    run = SyncRun.objects.create(organization=org, mapping=mapping, trigger="schedule", status="ok")
    SyncLogEntry.objects.create(organization=org, run=run, action="held", reason="x", details={"planned": [held[0].pk]})

    page = page_text(client.get(f"/org/{org.code}/"))
    assert "Deletions held for user1@acme.test" in page and f"Raynet event {held[0].raynet_id}" in page
    assert f"Raynet event {held[1].raynet_id}" not in page

    client.post(f"/org/{org.code}/users/{mapping.code}/", {"reset": "1"})
    mapping.refresh_from_db()
    assert mapping.health == "ok" and mapping.raynet_cursor is None and not mapping.mass_delete_approved

    mapping.set_health("flagged", "again")
    client.post(f"/org/{org.code}/users/{mapping.code}/", {"approve": "1"})
    mapping.refresh_from_db()
    assert mapping.mass_delete_approved


def test_the_log_filters_by_user_direction_action_and_date_and_pages(client, org, admin_user):
    client.force_login(admin_user)
    first, second = add_mapping(org, 1), add_mapping(org, 2)
    add_history(org, first, 60)
    add_history(org, second, 1, reason="only-second")

    everything = client.get(f"/org/{org.code}/log/")
    assert "Page 1 of 2" in page_text(everything)
    by_user = page_text(client.get(f"/org/{org.code}/log/", {"user": str(second.code)}))
    assert "only-second" in by_user and by_user.count("<tr>") == 2
    today = timezone.localdate().isoformat()
    by_day = page_text(
        client.get(f"/org/{org.code}/log/", {"day": today, "direction": "to_outlook", "action": "created"})
    )
    assert "only-second" in by_day
    assert "only-second" not in page_text(client.get(f"/org/{org.code}/log/", {"direction": "to_raynet"}))


def test_calendar_text_is_never_rendered_unescaped(client, org, admin_user):
    client.force_login(admin_user)
    mapping = add_mapping(org, 1, health="error", health_reason=EVIL)
    add_history(org, mapping, 1, reason=f"created “{EVIL}”")
    SyncRun.objects.create(organization=org, mapping=mapping, trigger="schedule", status="failed", error=EVIL)

    for path in (f"/org/{org.code}/", f"/org/{org.code}/log/"):
        body = client.get(path).content.decode()
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "&lt;script&gt;" in body


FORM_POSTS = [
    "/new/",
    "/org/{code}/members/",
    "/org/{code}/setup/raynet/",
    "/org/{code}/setup/microsoft/",
    "/org/{code}/setup/policies/",
    "/org/{code}/setup/preview/",
    "/org/{code}/log/",
]
TEXT = st.one_of(
    st.text(max_size=300), st.sampled_from(["", "0", "-1", "99999999999999999999", "on", "admin", EVIL, "a\x00b"])
)
FIELDS = [
    "name",
    "email",
    "role",
    "instance_name",
    "api_base_url",
    "api_user_email",
    "api_key",
    "cloud",
    "private_events_mode",
    "sync_completed",
    "deletion_mode",
    "conflict_winner",
    "window_days_back",
    "window_days_ahead",
    "user",
    "direction",
    "action",
    "day",
    "page",
    "check",
    "m",
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.sampled_from(FIELDS), TEXT, max_size=8), path=st.sampled_from(FORM_POSTS))
def test_no_form_answers_500_to_anything(client, org, admin_user, monkeypatch, data, path):
    from syncapp import onboarding

    monkeypatch.setattr(onboarding, "raynet_connect", lambda *, organization, details: (False, "not tried"))
    client.force_login(admin_user)
    url = path.format(code=org.code)
    method = client.get if url.endswith("/log/") else client.post

    response = method(url, data)

    assert response.status_code < 500


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.dictionaries(st.sampled_from(["mailbox", "enabled", "private_events_mode", "sync_completed"]), TEXT))
def test_the_mapping_table_answers_no_500_to_anything(client, org, admin_user, monkeypatch, rows):
    from syncapp import onboarding
    from syncapp.providers.raynet import RaynetUser

    user = RaynetUser(user_account_id=1, person_id=2, username="a@acme.test", email="a@acme.test", full_name="A")
    mailbox = {"id": "m1", "userPrincipalName": "a@acme.test", "mail": "a@acme.test", "displayName": "A"}
    monkeypatch.setattr(
        onboarding, "mapping_rows", lambda *, organization: ([onboarding.MappingRow(user, None, mailbox)], [mailbox])
    )
    client.force_login(admin_user)

    response = client.post(f"/org/{org.code}/setup/users/", {f"p2-{k}": v for k, v in rows.items()})

    assert response.status_code < 500


def test_raynet_requests_per_day_are_kept_and_drawn(client, org, admin_user, raynet_connection, raynet_sandbox):
    from syncapp.models import RaynetBudgetDay
    from syncapp.providers.raynet import RaynetClient

    RaynetClient(raynet_connection).list_users()

    day = RaynetBudgetDay.objects.get(organization=org)
    raynet_connection.refresh_from_db()
    assert day.used == raynet_connection.budget_used >= 1
    client.force_login(admin_user)
    page = page_text(client.get(f"/org/{org.code}/"))
    assert '<rect class="series-budget"' in page and f"{day.day:%d.%m.}: {day.used}" in page
