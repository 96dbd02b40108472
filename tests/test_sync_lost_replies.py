"""Replies lost after the work was done, and a Retry-After storm bounded by the run deadline (issue 8)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from syncapp.models import SyncRun, UserMapping
from syncapp.providers.base import ProviderSession
from syncapp.sync import sync_organization
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db

# The sandbox carries the request out, then the reply is lost: a 503, or the connection breaks.
LOST_REPLIES = {
    "503 after processing": {"status": 503, "after": True},
    "connection reset after processing": {"status": 0, "after": True, "disconnect": "reset"},
    "timeout after processing": {"status": 0, "after": True, "disconnect": "timeout"},
}


def runs(world) -> list[SyncRun]:
    result = sync_organization(organization=world.org, trigger=SyncRun.Trigger.MANUAL)
    world.runs = result
    return result


def only_workshop(world) -> dict:
    [record] = world.raynet_events()
    assert record["title"] == "Workshop"
    assert record["meetingPlace"] == "Room 1"
    assert [p["person"] for p in record["participants"] if not p.get("owner")] == [world.customer_id]
    return record


@pytest.mark.parametrize("loss", list(LOST_REPLIES), ids=list(LOST_REPLIES))
def test_a_raynet_create_whose_reply_is_lost_leaves_exactly_one_record(world, loss):
    world.outlook.person_create_event(
        world.alice.mailbox_id, "Workshop", soon(4, 13), soon(4, 15), location="Room 1", attendees=["jan@customer.test"]
    )
    world.raynet.inject_fault(method="PUT", path=r"^event/$", **LOST_REPLIES[loss])

    runs(world)
    world.sync()
    world.sync()

    only_workshop(world)
    assert world.raynet.count("PUT", r"^event/$") == 1  # never sent again: found and adopted instead
    assert len(world.links()) == 1
    assert len(world.outlook_events(world.alice)) == 1


@pytest.mark.parametrize("loss", list(LOST_REPLIES), ids=list(LOST_REPLIES))
@pytest.mark.parametrize("when", ["in the create's follow-up", "in a later update"])
def test_a_participant_add_whose_reply_is_lost_leaves_exactly_one_participant(world, loss, when):
    attendees = ["jan@customer.test"]
    if when == "in a later update":
        event_id = world.outlook.person_create_event(
            world.alice.mailbox_id, "Workshop", soon(4, 13), soon(4, 15), location="Room 1"
        )
        world.sync()
        world.outlook.person_edit_event(world.alice.mailbox_id, event_id, attendees=attendees)
    else:
        world.outlook.person_create_event(
            world.alice.mailbox_id, "Workshop", soon(4, 13), soon(4, 15), location="Room 1", attendees=attendees
        )
    world.raynet.inject_fault(method="POST", path=r"^event/\d+/$", **LOST_REPLIES[loss])

    runs(world)
    world.sync()
    world.sync()

    only_workshop(world)  # Jan once: the add was not resent blindly, and the next runs saw him there
    assert len(world.links()) == 1


# --- the run deadline --------------------------------------------------------------------------------------


@pytest.fixture
def simulated_clock(monkeypatch, retry_waits) -> list[float]:
    """Retry waits are not slept, but the monotonic clock (run deadlines) moves on by them: a storm of
    Retry-After answers costs simulated time only. Returns the waits, as retry_waits."""
    real = time.monotonic
    offset = [0.0]

    def sleep(seconds: float) -> None:
        retry_waits.append(seconds)
        offset[0] += seconds

    monkeypatch.setattr(ProviderSession, "sleep", staticmethod(sleep))
    monkeypatch.setattr(time, "monotonic", lambda: real() + offset[0])
    return retry_waits


def test_a_retry_after_storm_stops_the_run_at_its_deadline_and_the_next_run_continues(
    world, settings, simulated_clock, monkeypatch
):
    settings.SYNC_RUN_DEADLINE = 50
    for n in range(6):
        world.outlook.person_create_event(world.alice.mailbox_id, f"Item {n}", soon(2, 8 + n), soon(2, 9 + n))
    # Every Raynet create is throttled: 429 with Retry-After 30, again and again.
    busy = {"message": "Too many requests, try again later."}
    world.raynet.inject_fault(429, times=1000, method="PUT", headers={"Retry-After": "30"}, body=busy)

    started = timezone.now()
    runs(world)

    alice = UserMapping.objects.get(pk=world.alice.mapping.pk)
    assert sum(simulated_clock) <= settings.SYNC_RUN_DEADLINE  # never slept past the deadline
    assert alice.not_before is not None and alice.not_before >= started + timedelta(seconds=29)
    assert len(world.raynet_events()) == 0

    again = {run.mapping_id: run for run in runs(world)}
    assert again[alice.pk].status == SyncRun.Status.SKIPPED  # not before the time Raynet asked for
    assert world.raynet_events() == []

    world.raynet.state["faults"].clear()
    later = timezone.now() + timedelta(seconds=31)
    monkeypatch.setattr(timezone, "now", lambda: later)
    world.sync()
    world.sync()
    assert sorted(r["title"] for r in world.raynet_events()) == [f"Item {n}" for n in range(6)]  # each once
