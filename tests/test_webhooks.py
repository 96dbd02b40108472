"""Graph change notifications and Raynet webhooks, delivered by the sandboxes to our real endpoints."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.test import Client
from django_q.conf import Conf
from django_q.models import OrmQ

from syncapp import notifications
from syncapp.models import RaynetConnection, UserMapping
from tests.sync_fixtures import run_one, run_queued, soon

PUBLIC = "https://portal.example.test"


@pytest.fixture
def endpoints(http_mock, settings, monkeypatch):
    """Our portal at PUBLIC: what the sandboxes POST there reaches the real views; tasks wait in the broker."""
    settings.PUBLIC_BASE_URL = PUBLIC
    monkeypatch.setattr(Conf, "SYNC", False)  # as with a worker: the endpoint only queues
    received = []
    client = Client()

    def forward(prepared):
        parts = urlsplit(prepared.url)
        headers = {k: v for k, v in prepared.headers.items() if k.lower().startswith("x-")}
        reply = client.post(
            f"{parts.path}?{parts.query}" if parts.query else parts.path,
            data=prepared.body or b"",
            content_type=prepared.headers.get("Content-Type", "application/json"),
            headers=headers,
        )
        received.append((parts.path, reply.status_code))
        return reply.status_code, {"Content-Type": reply.get("Content-Type", "text/plain")}, reply.content

    http_mock.add_callback("POST", re.compile(re.escape(PUBLIC) + r"/.*"), callback=forward)
    return received


def test_the_validation_handshake_echoes_the_decoded_token(db):
    reply = Client().post("/hooks/graph/notify/?validationToken=Validation%3A%20a%2Bb%26c", content_type="text/plain")
    assert reply.status_code == 200 and reply["Content-Type"].startswith("text/plain")
    assert reply.content.decode() == "Validation: a+b&c"


def test_an_outlook_change_arrives_through_a_notification_with_no_poll(world, endpoints):
    world.outlook.state["deliver_http"] = True
    mapping = world.alice.mapping
    assert notifications.mailbox_subscribe(mapping=mapping)
    assert ("/hooks/graph/notify/", 200) in endpoints and ("/hooks/graph/lifecycle/", 200) in endpoints  # handshakes
    mapping.refresh_from_db()
    assert mapping.subscription_id in world.outlook.state["subscriptions"] and mapping.subscription_expires_at
    world.sync()  # the first run reads the window; from here on only the notification triggers a run
    run_queued()
    world.outlook.person_create_event(world.alice.mailbox_id, "Call with Jan", soon(3), soon(3, 11))
    assert endpoints[-1] == ("/hooks/graph/notify/", 202)
    assert run_queued() >= 1
    assert [r["title"] for r in world.raynet_events()] == ["Call with Jan"]


def test_a_wrong_client_state_is_refused_and_nothing_is_queued(world, endpoints):
    mapping = world.alice.mapping
    notifications.mailbox_subscribe(mapping=mapping)
    mapping.refresh_from_db()
    item = {"subscriptionId": mapping.subscription_id, "clientState": "guess", "changeType": "created"}
    reply = Client().post("/hooks/graph/notify/", {"value": [item]}, content_type="application/json")
    assert reply.status_code == 403 and OrmQ.objects.count() == 0
    assert UserMapping.objects.get(pk=mapping.pk).sync_requested_at is None


def test_a_flood_of_notifications_collapses_into_one_run(world, endpoints):
    mapping = world.alice.mapping
    notifications.mailbox_subscribe(mapping=mapping)
    mapping.refresh_from_db()
    item = {
        "subscriptionId": mapping.subscription_id,
        "clientState": notifications.graph_client_state(mapping),
        "changeType": "updated",
    }
    for _ in range(20):  # replays and duplicates too
        reply = Client().post("/hooks/graph/notify/", {"value": [item, item]}, content_type="application/json")
        assert reply.status_code == 202
    assert OrmQ.objects.count() == 1 and run_queued() == 1
    assert mapping.runs.count() == 1


def test_a_body_over_the_limit_is_refused(db, settings):
    settings.WEBHOOK_MAX_BODY = 1000
    reply = Client().post("/hooks/graph/notify/", {"value": ["x" * 2000]}, content_type="application/json")
    assert reply.status_code == 413


def test_without_a_public_address_nothing_is_registered_and_the_reason_is_kept(world, settings):
    settings.PUBLIC_BASE_URL = "http://localhost:8000"
    world.outlook.reset_calls()
    assert not notifications.mailbox_subscribe(mapping=world.alice.mapping)
    assert not notifications.raynet_webhook_register(organization=world.org)
    world.alice.mapping.refresh_from_db()
    assert "PUBLIC_BASE_URL" in world.alice.mapping.subscription_note
    assert "PUBLIC_BASE_URL" in RaynetConnection.objects.get(organization=world.org).webhook_note
    assert world.outlook.state["subscriptions"] == {} and world.raynet.state["webhooks"] == []


def test_subscription_removed_recreates_it_and_resyncs(world, endpoints):
    world.outlook.state["deliver_http"] = True
    mapping = world.alice.mapping
    notifications.mailbox_subscribe(mapping=mapping)
    mapping.refresh_from_db()
    old = mapping.subscription_id
    world.outlook.send_lifecycle_event(old, "subscriptionRemoved")
    assert endpoints[-1] == ("/hooks/graph/lifecycle/", 202)
    run_queued()
    mapping.refresh_from_db()
    assert mapping.subscription_id and mapping.subscription_id != old
    assert mapping.subscription_id in world.outlook.state["subscriptions"]
    assert mapping.runs.count() == 1


def test_a_raynet_change_arrives_through_the_webhook_and_echoes_are_dropped(world, endpoints):
    assert notifications.raynet_webhook_register(organization=world.org)
    raynet = RaynetConnection.objects.get(organization=world.org)
    (hook,) = world.raynet.state["webhooks"]
    assert hook["url"] == f"{PUBLIC}/hooks/raynet/{world.org.code}/" and hook["secretToken"]
    with connection.cursor() as cursor:  # stored encrypted, never in the clear
        cursor.execute("SELECT webhook_token FROM syncapp_raynetconnection WHERE id = %s", [raynet.pk])
        assert hook["secretToken"] not in cursor.fetchone()[0]
    world.sync()
    run_queued()
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Demo", soon(4), soon(4, 11))
    assert world.raynet.deliver_webhooks() == 1
    assert run_queued() == 2  # the webhook's lookup, then the owner's mailbox run
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Demo"]

    world.outlook.person_create_event(world.alice.mailbox_id, "From Outlook", soon(5), soon(5, 11))
    world.sync()  # writes the new Raynet record through the API: Raynet sends it back as a webhook
    assert world.raynet.pending_webhooks() and world.raynet.deliver_webhooks() >= 1
    assert OrmQ.objects.count() == 0  # our own write's echo was dropped


def test_a_wrong_raynet_token_is_refused_and_nothing_is_queued(world, endpoints):
    notifications.raynet_webhook_register(organization=world.org)
    payload = {"type": "record.updated", "source": {"name": "user"}, "data": {"entityName": "Meeting", "entityId": 1}}
    url = f"/hooks/raynet/{world.org.code}/"
    for headers in ({"X-RAYNETCRM-Token": "wrong"}, {}):
        reply = Client().post(url, payload, content_type="application/json", headers=headers)
        assert reply.status_code == 403
    assert OrmQ.objects.count() == 0


def test_a_delivered_raynet_webhook_marks_the_webhooks_live_and_a_refused_one_does_not(world, endpoints):
    from django.utils import timezone

    notifications.raynet_webhook_register(organization=world.org)
    raynet = RaynetConnection.objects.get(organization=world.org)
    assert not raynet.webhooks_live(timezone.now())  # registered, nothing delivered yet
    payload = {"type": "record.updated", "source": {"name": "user"}, "data": {"entityName": "Meeting", "entityId": 1}}
    Client().post(f"/hooks/raynet/{world.org.code}/", payload, content_type="application/json", headers={})
    raynet.refresh_from_db()
    assert raynet.webhook_seen_at is None

    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Demo", soon(4), soon(4, 11))
    assert world.raynet.deliver_webhooks() == 1

    raynet.refresh_from_db()
    assert raynet.webhooks_live(timezone.now())
    assert not raynet.webhooks_live(timezone.now() + timedelta(days=2))  # nothing for a day: the poll alone
    raynet.webhook_id = ""
    assert not raynet.webhooks_live(timezone.now())


def test_a_raynet_deletion_reaches_outlook_through_the_webhook_with_no_poll(world, endpoints):
    notifications.raynet_webhook_register(organization=world.org)
    meeting = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Demo", soon(4), soon(4, 11))
    world.sync()
    run_queued()
    world.raynet.deliver_webhooks()
    run_queued()
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Demo"]

    world.raynet.ui_delete_activity("meeting", meeting)
    assert world.raynet.deliver_webhooks() == 1
    run_queued()

    assert [e["subject"] for e in world.outlook_events(world.alice)] == []


def test_unregistering_removes_the_raynet_webhook_and_its_token_stops_working(world, endpoints):
    notifications.raynet_webhook_register(organization=world.org)
    (hook,) = world.raynet.state["webhooks"]

    notifications.raynet_webhook_unregister(organization=world.org)

    assert world.raynet.state["webhooks"] == []
    payload = {"type": "record.updated", "source": {"name": "user"}, "data": {"entityName": "Meeting", "entityId": 1}}
    reply = Client().post(
        f"/hooks/raynet/{world.org.code}/",
        payload,
        content_type="application/json",
        headers={"X-RAYNETCRM-Token": hook["secretToken"]},
    )
    assert reply.status_code == 403 and OrmQ.objects.count() == 0


def test_a_burst_of_raynet_deletions_is_one_run_that_checks_every_reported_record(world, endpoints):
    notifications.raynet_webhook_register(organization=world.org)
    meetings = [
        world.raynet.ui_create_activity("meeting", world.alice.person_id, f"Demo {n}", soon(4, 9 + n), soon(4, 10 + n))
        for n in range(3)
    ]
    world.sync()
    world.raynet.deliver_webhooks()
    run_queued()
    runs_before = world.alice.mapping.runs.count()

    for meeting in meetings:
        world.raynet.ui_delete_activity("meeting", meeting)
    assert world.raynet.deliver_webhooks() == 3
    run_queued()

    assert world.alice.mapping.runs.count() == runs_before + 1
    assert [e["subject"] for e in world.outlook_events(world.alice)] == []


def test_a_missed_lifecycle_event_asks_for_a_full_resync(world, endpoints):
    world.outlook.state["deliver_http"] = True
    mapping = world.alice.mapping
    notifications.mailbox_subscribe(mapping=mapping)
    world.sync()
    run_queued()
    mapping.refresh_from_db()

    world.outlook.send_lifecycle_event(mapping.subscription_id, "missed")

    assert endpoints[-1] == ("/hooks/graph/lifecycle/", 202)
    (lifecycle,) = OrmQ.objects.all()
    run_one(lifecycle)
    mapping.refresh_from_db()
    assert mapping.sync_requested_at and mapping.sync_request_full  # not just a delta run
    runs = mapping.runs.count()
    assert run_queued() == 1 and mapping.runs.count() == runs + 1
    assert not UserMapping.objects.get(pk=mapping.pk).sync_request_full
