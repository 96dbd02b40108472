"""The budget-aware first sync: a mailbox's onboarding spends at most FIRST_SYNC_BUDGET_SHARE of the
organization's daily Raynet budget, nearest events first, and goes on over the next days without duplicates.

The Raynet sandbox counts its daily budget midnight to midnight UTC and reports it in X-Ratelimit-*, as Raynet does.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import translation
from django.utils.formats import date_format

from syncapp.models import RaynetBudgetDay, UserMapping
from tests.conftest import make_user
from tests.portal_fixtures import page_text
from tests.sync_fixtures import days_later, soon

pytestmark = pytest.mark.django_db

# Days from today (at 10:00 UTC) of Alice's Outlook events before her first sync: past and future.
OFFSETS = [-9, -6, -4, -2, -1, 1, 2, 3, 5, 7, 8, 11, 15, 20, 26, 33, 41, 50, 62, 75]
DAILY_LIMIT = 60  # a small Raynet instance's budget: first syncs may spend 30 requests a day


def alice_calendar(world) -> list[datetime]:
    starts = [soon(days, 10) for days in OFFSETS]
    for n, start in enumerate(starts):
        world.outlook.person_create_event(world.alice.mailbox_id, f"Meeting {n}", start, start + timedelta(hours=1))
    return starts


def made_in_raynet(world) -> list[datetime]:
    return sorted(datetime.fromisoformat(r["scheduledFrom"]) for r in world.raynet_events(owner=world.alice.person_id))


def first_sync_spend(world) -> int:
    return sum(RaynetBudgetDay.objects.filter(organization=world.org).values_list("first_sync_used", flat=True))


def mapping(world) -> UserMapping:
    return UserMapping.objects.get(pk=world.alice.mapping.pk)


def test_a_first_sync_stops_at_its_share_of_the_budget_nearest_events_first_and_goes_on_the_next_days(world):
    world.raynet.set_daily_limit(DAILY_LIMIT)
    starts = alice_calendar(world)
    now = datetime.now(UTC)

    world.sync()

    made = made_in_raynet(world)
    assert 5 <= len(made) < len(starts)
    assert made == sorted(sorted(starts, key=lambda start: abs(start - now))[: len(made)])
    assert world.writes()["raynet"] <= 30
    # The share, passed at most by the create under way and Bob's first sync reading his empty window.
    assert first_sync_spend(world) <= 30 + 3 + 2
    left = len(starts) - len(made)
    assert world.reasons("later") == [
        f"later: {left} event(s) wait for the first sync's share of the Raynet budget (30 requests a day); "
        "they follow on the next days, the nearest first"
    ]
    assert (mapping(world).first_sync_pending, mapping(world).first_sync_done_at) == (left, None)

    world.reset_calls()
    world.sync()  # later the same day: nothing more, and no whole-window read

    assert made_in_raynet(world) == made
    assert world.writes()["raynet"] == 0
    assert world.raynet.count("GET") <= 4

    for day in (1, 2, 3):
        with days_later(day):
            world.sync()
            world.sync()
    assert made_in_raynet(world) == sorted(starts)  # each event once: nothing made twice
    assert len(world.links(world.alice)) == len(starts)
    assert mapping(world).first_sync_pending == 0
    assert mapping(world).first_sync_done_at is not None


def test_once_the_first_sync_is_done_new_events_are_not_capped(world):
    world.raynet.set_daily_limit(100)  # first syncs may spend 50 requests a day; these events need more
    world.sync()  # Alice's calendar is empty: her first sync is done at once
    assert mapping(world).first_sync_done_at is not None
    alice_calendar(world)

    world.sync()

    assert len(made_in_raynet(world)) == len(OFFSETS)
    assert world.reasons("later") == []
    assert mapping(world).first_sync_pending == 0


def test_the_dashboard_and_the_admin_show_the_first_syncs_progress_and_when_it_should_be_done(
    world, client, admin_user
):
    world.raynet.set_daily_limit(DAILY_LIMIT)
    starts = alice_calendar(world)
    world.sync()
    alice = mapping(world)
    linked, pending = len(world.links(world.alice)), alice.first_sync_pending
    assert linked + pending == len(starts) and pending > 0
    today = RaynetBudgetDay.objects.get(organization=world.org)
    # Nothing is left of today's share: the rest at 30 requests a day, at what an event cost today.
    days = math.ceil(pending * today.first_sync_used / today.first_sync_created / 30)
    done_by = today.day + timedelta(days=days)
    client.force_login(admin_user)

    english = page_text(client.get(f"/org/{world.org.code}/", HTTP_ACCEPT_LANGUAGE="en"))
    with translation.override("en"):
        assert f"{linked} linked, {pending} to do; done by about {date_format(done_by, 'SHORT_DATE_FORMAT')}" in english
    assert f"First syncs: {pending} events still to make in Raynet, the nearest first." in english
    assert "They may use 30 Raynet requests a day (50 % of the budget)" in english
    czech = page_text(client.get(f"/org/{world.org.code}/", HTTP_ACCEPT_LANGUAGE="cs"))
    with translation.override("cs"):
        assert f"propojeno {linked}, zbývá {pending}; hotovo asi {date_format(done_by, 'SHORT_DATE_FORMAT')}" in czech

    client.force_login(make_user("support@raysync.test", is_staff=True, is_superuser=True))
    admin_list = page_text(client.get("/admin/syncapp/usermapping/"))
    assert f"{linked} linked, {pending} to do; done by about {done_by:%Y-%m-%d}" in admin_list
    assert "done " in admin_list  # Bob's empty calendar: his first sync is done
    admin_page = page_text(client.get(f"/admin/syncapp/usermapping/{alice.pk}/change/"))
    assert f"{linked} linked, {pending} to do" in admin_page
