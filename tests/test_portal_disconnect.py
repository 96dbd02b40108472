"""Disconnecting Raynet or Microsoft 365 in the portal, and removing a mapping: what the APIs are told."""

from __future__ import annotations

import pytest

from syncapp import jobs, notifications, onboarding
from syncapp.admin import OrganizationAdmin, UserMappingAdmin
from syncapp.models import MicrosoftConnection, Organization, RaynetConnection, SyncRun, UserMapping
from syncapp.sync import sync_mapping
from tests.outlook_fixtures import OUTLOOK_TENANT_ID
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER, RAYNET_BASE_URL, RAYNET_INSTANCE
from tests.sync_fixtures import soon
from tests.test_webhooks import endpoints  # noqa: F401 - the fixture: our endpoints at a public address

pytestmark = pytest.mark.usefixtures("endpoints")


def disconnect_url(world, side: str) -> str:
    return f"/org/{world.org.code}/disconnect/{side}/"


def synced_meeting(world) -> None:
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Board meeting", soon(2), soon(2, 11))
    world.sync()
    world.sync()


def test_disconnecting_raynet_removes_the_webhook_drops_the_key_and_reconnecting_resumes(world, client, admin_user):
    assert notifications.raynet_webhook_register(organization=world.org)
    synced_meeting(world)
    client.force_login(admin_user)

    page = client.get(disconnect_url(world, "raynet"))
    assert page.status_code == 200 and "Disconnect Raynet?" in page.content.decode()
    assert client.post(disconnect_url(world, "raynet")).status_code == 302

    assert world.raynet.state["webhooks"] == []  # DELETE /webhook/{uuid}/ reached Raynet
    assert not RaynetConnection.objects.filter(organization=world.org).exists()  # the API key with it
    assert jobs.poll_cycle() == []
    world.org.refresh_from_db()
    run = sync_mapping(mapping=world.alice.mapping, trigger=SyncRun.Trigger.MANUAL)
    assert run.status == SyncRun.Status.SKIPPED and "connected" in run.error
    assert len(world.links(world.alice)) == 1  # the links stay

    details = onboarding.RaynetDetails(RAYNET_INSTANCE, RAYNET_BASE_URL, RAYNET_API_USER, RAYNET_API_KEY)
    world.org.refresh_from_db()
    assert onboarding.raynet_connect(organization=world.org, details=details)[0]
    world.org.refresh_from_db()
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "After the break", soon(3), soon(3, 11))
    world.sync()

    assert len(world.raynet.state["webhooks"]) == 1
    subjects = sorted(e["subject"] for e in world.outlook_events(world.alice))
    assert subjects == ["After the break", "Board meeting"]  # no second copy
    assert len(world.raynet_events()) == 2


def test_disconnecting_microsoft_deletes_every_subscription_and_consenting_again_resumes(world, client, admin_user):
    for person in (world.alice, world.bob):
        assert notifications.mailbox_subscribe(mapping=person.mapping)
    assert len(world.outlook.state["subscriptions"]) == 2
    synced_meeting(world)
    client.force_login(admin_user)

    page = client.get(disconnect_url(world, "microsoft"))
    assert page.status_code == 200 and "Enterprise applications" in page.content.decode()
    assert client.post(disconnect_url(world, "microsoft")).status_code == 302

    assert world.outlook.state["subscriptions"] == {}  # DELETE /subscriptions/{id} reached Graph
    assert not MicrosoftConnection.objects.filter(organization=world.org).exists()
    assert set(UserMapping.objects.values_list("subscription_id", flat=True)) == {""}
    assert jobs.poll_cycle() == []

    world.org.refresh_from_db()
    ok, _message = onboarding.microsoft_consent_record(
        organization=world.org, tenant_id=OUTLOOK_TENANT_ID, cloud="global"
    )
    assert ok and len(world.outlook.state["subscriptions"]) == 2
    world.org.refresh_from_db()
    world.sync()
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Board meeting"]
    assert len(world.raynet_events()) == 1


def test_a_viewer_cannot_disconnect_and_nothing_is_removed(world, client, viewer_user):
    notifications.raynet_webhook_register(organization=world.org)
    client.force_login(viewer_user)
    assert client.get(disconnect_url(world, "raynet")).status_code == 403
    assert client.post(disconnect_url(world, "raynet")).status_code == 403
    assert len(world.raynet.state["webhooks"]) == 1 and RaynetConnection.objects.filter(organization=world.org)


def test_another_organizations_admin_gets_404(world, client, outsider):
    client.force_login(outsider)
    assert client.post(disconnect_url(world, "microsoft")).status_code == 404
    assert MicrosoftConnection.objects.filter(organization=world.org).exists()


def test_a_mapping_deleted_in_the_admin_deletes_its_graph_subscription(world, rf):
    mapping = world.alice.mapping
    notifications.mailbox_subscribe(mapping=mapping)
    mapping.refresh_from_db()
    assert mapping.subscription_id in world.outlook.state["subscriptions"]

    UserMappingAdmin(UserMapping, None).delete_queryset(rf.post("/"), UserMapping.objects.filter(pk=mapping.pk))

    assert world.outlook.state["subscriptions"] == {}
    assert not UserMapping.objects.filter(pk=mapping.pk).exists()


def test_an_organization_deleted_in_the_admin_removes_its_webhook_and_subscriptions_first(world, rf):
    notifications.raynet_webhook_register(organization=world.org)
    notifications.mailbox_subscribe(mapping=world.alice.mapping)

    OrganizationAdmin(Organization, None).delete_queryset(rf.post("/"), Organization.objects.filter(pk=world.org.pk))

    assert world.raynet.state["webhooks"] == [] and world.outlook.state["subscriptions"] == {}
    assert not Organization.objects.filter(pk=world.org.pk).exists()
