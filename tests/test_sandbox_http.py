"""The sandboxes' HTTP front: the real client talks to them over HTTP, state kept in PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncapp.models import RaynetConnection, SandboxState
from syncapp.providers.raynet import RaynetClient
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.raynet import RaynetSandbox


@pytest.mark.django_db(transaction=True)
def test_the_raynet_client_works_against_the_sandbox_served_over_http(live_server, org):
    with stored_sandbox(RaynetSandbox, "demo") as sandbox:
        sandbox.state["instance"] = "acme"
        sandbox.add_user("api@acme.test", "Acme Integration", api_key="demo-key")
        _, owner_id = sandbox.add_user("alice@acme.test", "Alice Novak")
    connection = RaynetConnection.objects.create(
        organization=org,
        instance_name="acme",
        api_base_url=f"{live_server.url}/sandbox/raynet/demo/api/v2/",
        api_user_email="api@acme.test",
        api_key="demo-key",
    )
    client = RaynetClient(connection)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)

    created = client.create_activity(
        "event",
        {
            "title": "Over HTTP",
            "priority": "DEFAULT",
            "owner": owner_id,
            "scheduledFrom": start,
            "scheduledTill": start + timedelta(hours=1),
        },
    )

    [listed] = client.list_activities("event", owner_id=owner_id)
    assert (listed["id"], listed["title"], listed["scheduledFrom"]) == (created, "Over HTTP", start)
    stored = SandboxState.objects.get(name="raynet:demo").data
    assert any(method == "PUT" for method, _ in stored["calls"])


@pytest.mark.django_db
def test_the_sandbox_is_not_served_when_switched_off(client, settings):
    from django.urls import clear_url_caches

    settings.SANDBOX_ENABLED = False
    import importlib

    import portal.urls

    importlib.reload(portal.urls)
    clear_url_caches()
    try:
        assert client.get("/sandbox/raynet/demo/api/v2/event/").status_code == 404
    finally:
        settings.SANDBOX_ENABLED = True
        importlib.reload(portal.urls)
        clear_url_caches()


def test_a_kill_fault_carries_the_write_out_then_the_in_process_client_dies_before_the_reply(
    raynet_sandbox, raynet_connection, jana
):
    from syncapp.sandbox.base import ClientKilled

    raynet_sandbox.inject_fault(0, method="PUT", path=r"^event/$", kill=True)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)
    fields = {"title": "Kept", "priority": "DEFAULT", "owner": jana, "scheduledFrom": start}

    with pytest.raises(ClientKilled):  # a BaseException: no `except Exception` of the client stops it
        RaynetClient(raynet_connection).create_activity("event", {**fields, "scheduledTill": start})

    assert [record["title"] for record in raynet_sandbox.activities("event")] == ["Kept"]
    assert raynet_sandbox.state["kills"] == [["PUT", "event/"]]
    assert raynet_sandbox.count("PUT") == 1
