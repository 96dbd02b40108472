"""The simulated Raynet and Outlook pages (demo only): a person's changes, made in the sandboxes' own code paths,
and what the sandboxes then send the product (Graph change notifications, Raynet webhooks).

Most tests use the sandboxes' PostgreSQL state (key "pages") with the portal's test client, and catch what
the sandboxes POST to our public address; the last one runs the whole product over HTTPS (`http_world`), so
a Raynet page edit reaches Outlook through the real webhook endpoint and a sync, with no poll.
"""

from __future__ import annotations

import html
import importlib
import json
import re
from datetime import timedelta

import pytest
from django.urls import clear_url_caches
from django.utils import timezone

from syncapp import notifications
from syncapp.models import Membership, MicrosoftConnection, RaynetConnection, SyncRun
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from tests.conftest import make_user
from tests.outlook_fixtures import OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET, OUTLOOK_TENANT_ID
from tests.sync_fixtures import soon

KEY = "pages"
GLOBEX_TENANT = "33333333-3333-3333-3333-333333333333"
PUBLIC = "https://portal.example.test"
HOOK = f"{PUBLIC}/hooks/"


def page_text(response) -> str:
    """The page's words as a reader sees them: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def local_input(moment) -> str:
    """A time as a datetime-local input holds it (the portal's zone)."""
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
def delivered(http_mock) -> list[dict]:
    """What the sandboxes POST to our public address: url, headers and the JSON body."""
    received: list[dict] = []

    def record(prepared):
        received.append({"url": prepared.url, "headers": dict(prepared.headers), "body": json.loads(prepared.body)})
        return 202, {}, b""

    http_mock.add_callback("POST", re.compile(re.escape(HOOK) + ".*"), callback=record)
    return received


@pytest.fixture
def demo(org, other_org, admin_user, outsider, settings, delivered):
    """Acme (Alice signed in) and Globex (Otto) share one Graph sandbox, each with its own tenant; Acme's Raynet is
    sandbox "pages", Globex's is another. Acme's mailboxes have live subscriptions and its Raynet a webhook."""
    settings.MICROSOFT_CLOUDS = {
        **settings.MICROSOFT_CLOUDS,
        "global": {"graph": f"https://sandbox.test/sandbox/graph/{KEY}/v1.0", "authority": "https://sandbox.test"},
    }
    for organization, raynet_key, tenant in ((org, KEY, OUTLOOK_TENANT_ID), (other_org, "globex", GLOBEX_TENANT)):
        RaynetConnection.objects.create(
            organization=organization, instance_name="acme", api_user_email="api@acme.test", api_key="k",
            api_base_url=f"http://testserver/sandbox/raynet/{raynet_key}/api/v2/",
        )  # fmt: skip
        MicrosoftConnection.objects.create(organization=organization, tenant_id=tenant)
    with stored_sandbox(RaynetSandbox, KEY) as raynet, stored_sandbox(GraphSandbox, KEY) as graph:
        raynet.state["deliver_http"] = True
        hook = {"webhookId": "w1", "url": f"{HOOK}raynet/{org.code}/", "secretToken": "t0ken"}
        raynet.state["webhooks"].append(hook | {"eventsFilter": ["record.created", "record.updated", "record.deleted"]})
        alice_account, alice = raynet.add_user("alice@acme.test", "Alice Novak")
        jan = raynet.add_person("jan@customer.test", "Jan Zakaznik")
        graph.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
        graph.add_tenant(GLOBEX_TENANT, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
        mailbox = graph.add_user(OUTLOOK_TENANT_ID, "alice@acme.test", "Alice Novak")
        bob = graph.add_user(OUTLOOK_TENANT_ID, "bob@acme.test", "Bob Dvorak")
        otto = graph.add_user(GLOBEX_TENANT, "otto@globex.test", "Otto Globex")
        expires = (timezone.now() + timedelta(days=2)).isoformat()
        request = {"changeType": "created,updated,deleted", "notificationUrl": f"{HOOK}graph/notify/"}
        request |= {"resource": f"/users/{mailbox}/events", "clientState": "s3cret", "expirationDateTime": expires}
        graph._create_subscription(request, OUTLOOK_TENANT_ID, {"idtype": "ImmutableId"})
        graph.state["deliver_http"] = True
    return {
        "org": org,
        "alice_account": alice_account,
        "alice": alice,
        "jan": jan,
        "mailbox": mailbox,
        "bob": bob,
        "otto": otto,
    }


def raynet_state() -> RaynetSandbox:
    with stored_sandbox(RaynetSandbox, KEY) as raynet:
        return raynet


def graph_state() -> GraphSandbox:
    with stored_sandbox(GraphSandbox, KEY) as graph:
        return graph


def act_in_raynet(method: str, *args, **fields):
    with stored_sandbox(RaynetSandbox, KEY) as raynet:
        return getattr(raynet, method)(*args, **fields)


def act_in_outlook(method: str, *args, **fields):
    with stored_sandbox(GraphSandbox, KEY) as graph:
        return getattr(graph, method)(*args, **fields)


# --- simulated Raynet -------------------------------------------------------------------------------------------


def test_the_raynet_page_shows_the_picked_users_meetings_with_their_status(client, demo, admin_user):
    meeting = act_in_raynet("ui_create_activity", "meeting", demo["alice"], "Quarterly review", soon(2), soon(2, 11))
    act_in_raynet("ui_create_activity", "event", demo["alice"], "Trade fair", soon(3), soon(3, 17))
    act_in_raynet("ui_complete_activity", "meeting", meeting)
    act_in_raynet("ui_create_activity", "meeting", demo["alice"], "Long ago", soon(-60), soon(-60, 11))
    client.force_login(admin_user)

    text = page_text(client.get(f"/sandbox/{KEY}/raynet/?user={demo['alice_account']}"))

    assert "Simulated Raynet — demo only" in text
    assert re.search(r"Quarterly review .*Completed", text) and re.search(r"Trade fair .*Scheduled", text)
    assert "Long ago" not in text  # outside the five weeks shown


def test_a_meeting_created_in_raynet_is_stored_and_raynet_sends_its_webhook(client, demo, admin_user, delivered):
    client.force_login(admin_user)
    form = {
        "entity": "meeting",
        "title": "Visit at Jan's",
        "start": local_input(soon(4)),
        "end": local_input(soon(4, 11)),
    }

    response = client.post(
        f"/sandbox/{KEY}/raynet/?user={demo['alice_account']}", form | {"participants": [demo["jan"]]}
    )

    assert response.status_code == 302
    [record] = raynet_state().activities("meeting")
    assert (record["title"], record["owner"], record["scheduledFrom"]) == (
        "Visit at Jan's",
        demo["alice"],
        soon(4).isoformat(),
    )
    assert demo["jan"] in [p["person"] for p in record["participants"]]
    [hook] = delivered
    assert hook["url"] == f"{HOOK}raynet/{demo['org'].code}/" and hook["headers"]["X-RAYNETCRM-Token"] == "t0ken"
    assert hook["body"]["type"] == "record.created" and hook["body"]["source"]["name"] == "user"
    assert hook["body"]["data"] == {"entityName": "Meeting", "entityId": record["id"], "extIds": None}
    assert raynet_state().pending_webhooks() == []


def test_an_end_before_the_start_is_refused_with_a_message_and_the_typing_is_kept(client, demo, admin_user, delivered):
    client.force_login(admin_user)
    form = {"entity": "event", "title": "Backwards", "start": local_input(soon(4, 12)), "end": local_input(soon(4, 11))}

    response = client.post(f"/sandbox/{KEY}/raynet/?user={demo['alice_account']}", form)

    assert response.status_code == 200
    assert "The end is before the start." in page_text(response)
    assert 'value="Backwards"' in response.content.decode()
    assert raynet_state().activities("event") == [] and delivered == []


def test_editing_and_moving_in_raynet_change_the_record_and_send_updates(client, demo, admin_user, delivered):
    meeting = act_in_raynet("ui_create_activity", "meeting", demo["alice"], "Review", soon(2), soon(2, 11))
    delivered.clear()
    client.force_login(admin_user)
    url = f"/sandbox/{KEY}/raynet/meeting/{meeting}/"
    assert "Review" in page_text(client.get(url))

    edit = {"title": "Review with Jan", "start": local_input(soon(2)), "end": local_input(soon(2, 12)), "place": "Brno"}
    assert client.post(url, edit | {"save": ""}).status_code == 302
    assert client.post(url, {"start": local_input(soon(5, 9)), "move": ""}).status_code == 302

    record = raynet_state().activity("meeting", meeting)
    assert (record["title"], record["meetingPlace"]) == ("Review with Jan", "Brno")
    assert (record["scheduledFrom"], record["scheduledTill"]) == (soon(5, 9).isoformat(), soon(5, 11).isoformat())
    assert [hook["body"]["type"] for hook in delivered] == ["record.updated", "record.updated"]


@pytest.mark.parametrize(
    ("action", "status", "webhook"),
    [
        ("complete", "COMPLETED", "record.updated"),
        ("cancel", "CANCELLED", "record.updated"),
        ("delete", None, "record.deleted"),
    ],
)
def test_completing_cancelling_and_deleting_in_raynet(client, demo, admin_user, delivered, action, status, webhook):
    event = act_in_raynet("ui_create_activity", "event", demo["alice"], "Fair", soon(2), soon(2, 11))
    delivered.clear()
    client.force_login(admin_user)

    response = client.post(f"/sandbox/{KEY}/raynet/event/{event}/act/", {"action": action})

    assert response.url == f"/sandbox/{KEY}/raynet/?user={demo['alice_account']}"
    record = raynet_state().activity("event", event)
    assert (record or {}).get("status") == status
    assert [hook["body"]["type"] for hook in delivered] == [webhook]


# --- simulated Outlook ------------------------------------------------------------------------------------------


def test_the_outlook_page_shows_occurrences_of_a_series_and_private_events_with_a_lock(client, demo, admin_user):
    weekly = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [soon(1).strftime("%A").lower()]}}
    weekly["range"] = {"type": "noEnd", "startDate": soon(1).date().isoformat()}
    act_in_outlook("person_create_event", demo["mailbox"], "Stand-up", soon(1, 8), soon(1, 8, 15), recurrence=weekly)
    act_in_outlook("person_create_event", demo["mailbox"], "Dentist", soon(2, 14), soon(2, 15), private=True)
    client.force_login(admin_user)

    response = client.get(f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}")

    text = page_text(response)
    assert "Simulated Outlook — demo only" in text
    assert text.count("Stand-up") >= 4  # an occurrence a week in the five weeks shown
    assert re.search(r"🔒 Private\s+Dentist", text)


def test_an_event_with_attendees_created_in_outlook_sends_invitations_and_a_notification(
    client, demo, admin_user, delivered
):
    client.force_login(admin_user)
    form = {"subject": "Call with Jan", "start": local_input(soon(3)), "end": local_input(soon(3, 11))}

    client.post(f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}", form | {"attendees": "jan@customer.test"})

    [event] = graph_state().events(demo["mailbox"])
    assert (event["subject"], event["start"]["dateTime"][:16]) == ("Call with Jan", soon(3).isoformat()[:16])
    [notification] = [hook["body"]["value"][0] for hook in delivered]
    assert notification["changeType"] == "created" and notification["clientState"] == "s3cret"
    assert notification["resourceData"]["id"] == event["id"]
    mail = page_text(client.get(f"/sandbox/{KEY}/outlook/mail/"))
    assert re.search(r"Invitation\s+alice@acme.test\s+jan@customer.test\s+Call with Jan", mail)


def test_editing_an_outlook_event_sends_an_update_only_when_its_time_changed(client, demo, admin_user, delivered):
    event_id = act_in_outlook(
        "person_create_event", demo["mailbox"], "Call", soon(3), soon(3, 11), attendees=["jan@customer.test"]
    )
    delivered.clear()
    client.force_login(admin_user)
    url = f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{event_id}/"
    same_times = {"start": local_input(soon(3)), "end": local_input(soon(3, 11)), "attendees": "jan@customer.test"}

    client.post(url, same_times | {"subject": "Call with Jan", "save": ""})
    client.post(url, {"start": local_input(soon(4, 9)), "move": ""})

    event = graph_state().event(demo["mailbox"], event_id)
    assert event["subject"] == "Call with Jan" and event["start"]["dateTime"][:16] == soon(4, 9).isoformat()[:16]
    assert event["end"]["dateTime"][:16] == soon(4, 10).isoformat()[:16]  # the hour's length kept
    assert [mail["kind"] for mail in graph_state().sent_mail] == ["invitation", "update"]
    assert [hook["body"]["value"][0]["changeType"] for hook in delivered] == ["updated", "updated"]


def test_one_occurrence_of_a_series_is_moved_and_another_deleted(client, demo, admin_user, delivered):
    weekly = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [soon(1).strftime("%A").lower()]}}
    weekly["range"] = {"type": "noEnd", "startDate": soon(1).date().isoformat()}
    series = act_in_outlook(
        "person_create_event", demo["mailbox"], "Stand-up", soon(1, 8), soon(1, 9), recurrence=weekly
    )
    graph = graph_state()
    second, third = (graph.occurrence_id(demo["mailbox"], series, soon(days).date()) for days in (8, 15))
    delivered.clear()
    client.force_login(admin_user)

    client.post(f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{second}/", {"start": local_input(soon(9, 8)), "move": ""})
    client.post(f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{third}/act/", {"action": "delete"})

    starts = [e["start"]["dateTime"][:16] for e in graph_state().occurrences(demo["mailbox"], soon(0), soon(21))]
    assert starts == [soon(1, 8).isoformat()[:16], soon(9, 8).isoformat()[:16]]  # the 15th's is gone
    changes = [hook["body"]["value"][0] for hook in delivered]
    assert [(change["changeType"], change["resourceData"]["id"]) for change in changes] == [
        ("updated", second), ("deleted", third)
    ]  # fmt: skip


def test_outlook_refusals_and_bad_input_are_shown_and_nothing_changes(client, demo, admin_user, delivered):
    weekly = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [soon(1).strftime("%A").lower()]}}
    weekly["range"] = {"type": "noEnd", "startDate": soon(1).date().isoformat()}
    series = act_in_outlook(
        "person_create_event", demo["mailbox"], "Stand-up", soon(1, 8), soon(1, 9), recurrence=weekly
    )
    first = graph_state().occurrence_id(demo["mailbox"], series, soon(1).date())
    delivered.clear()
    client.force_login(admin_user)

    past_the_next = client.post(
        f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{first}/", {"start": local_input(soon(9, 8)), "move": ""}
    )
    backwards = client.post(
        f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}",
        {
            "subject": "Backwards",
            "start": local_input(soon(3, 12)),
            "end": local_input(soon(3, 11)),
            "attendees": "no-address",
        },
    )

    assert "An occurrence cannot overlap or skip past its neighbours." in page_text(past_the_next)
    text = page_text(backwards)
    assert "The end is before the start." in text and "“no-address” is not an e-mail address." in text
    assert 'value="Backwards"' in backwards.content.decode()
    assert [e["subject"] for e in graph_state().events(demo["mailbox"])] == ["Stand-up"]
    assert graph_state().event(demo["mailbox"], first)["type"] == "occurrence" and delivered == []


def test_making_an_event_private_and_deleting_a_meeting_cancels_it_for_the_attendees(
    client, demo, admin_user, delivered
):
    meeting = act_in_outlook(
        "person_create_event", demo["mailbox"], "Call", soon(3), soon(3, 11), attendees=["jan@customer.test"]
    )
    client.force_login(admin_user)
    url = f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{meeting}/act/"

    client.post(url, {"action": "private"})
    assert graph_state().event(demo["mailbox"], meeting)["sensitivity"] == "private"
    client.post(url, {"action": "delete"})

    assert graph_state().event(demo["mailbox"], meeting) is None
    assert [mail["kind"] for mail in graph_state().sent_mail] == ["invitation", "cancellation"]
    assert "Cancellation" in page_text(client.get(f"/sandbox/{KEY}/outlook/mail/"))


def test_accepting_a_colleagues_invitation_answers_the_organizer(client, demo, admin_user, delivered):
    act_in_outlook(
        "person_create_event", demo["bob"], "Team lunch", soon(2, 11), soon(2, 12), attendees=["alice@acme.test"]
    )
    [invitation] = graph_state().events(demo["mailbox"])
    delivered.clear()
    client.force_login(admin_user)
    calendar = page_text(client.get(f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}"))
    assert "Team lunch Invitation from bob@acme.test" in calendar and "Accept" in calendar

    client.post(f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{invitation['id']}/act/", {"action": "accept"})

    graph = graph_state()
    assert graph.event(demo["mailbox"], invitation["id"])["responseStatus"]["response"] == "accepted"
    [organizers] = graph.events(demo["bob"])
    assert organizers["attendees"][0]["status"]["response"] == "accepted"
    assert [(m["kind"], m["from"], m["to"]) for m in graph.sent_mail][-1] == (
        "response",
        "alice@acme.test",
        "bob@acme.test",
    )
    [change] = [hook["body"]["value"][0] for hook in delivered]  # Bob's mailbox has no subscription
    assert (change["changeType"], change["resourceData"]["id"]) == ("updated", invitation["id"])


# --- access -----------------------------------------------------------------------------------------------------


def test_a_member_acts_only_on_the_sandboxes_of_their_own_organizations(client, demo, outsider):
    event = act_in_outlook("person_create_event", demo["mailbox"], "Acme only", soon(3), soon(3, 11))
    meeting = act_in_raynet("ui_create_activity", "meeting", demo["alice"], "Acme only", soon(2), soon(2, 11))
    client.force_login(outsider)  # Globex: its own tenant in the same Graph sandbox, another Raynet

    outlook = page_text(client.get(f"/sandbox/{KEY}/outlook/"))
    assert "otto@globex.test" in outlook and "alice@acme.test" not in outlook
    assert client.get(f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}").status_code == 404
    assert client.get(f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{event}/").status_code == 404
    assert (
        client.post(f"/sandbox/{KEY}/outlook/{demo['mailbox']}/{event}/act/", {"action": "delete"}).status_code == 404
    )
    assert client.get(f"/sandbox/{KEY}/raynet/").status_code == 404
    assert client.post(f"/sandbox/{KEY}/raynet/meeting/{meeting}/act/", {"action": "delete"}).status_code == 404
    assert graph_state().event(demo["mailbox"], event) and raynet_state().activity("meeting", meeting)


def test_the_index_lists_the_users_sandboxes_and_staff_see_every_one(client, demo, admin_user, outsider):
    client.force_login(admin_user)
    assert f"/sandbox/{KEY}/raynet/" in client.get("/sandbox/").content.decode()
    client.force_login(outsider)
    listing = client.get("/sandbox/").content.decode()
    assert f"/sandbox/{KEY}/outlook/" in listing and f"/sandbox/{KEY}/raynet/" not in listing
    staff = make_user("support@raysync.test", is_staff=True)
    client.force_login(staff)
    assert client.get(f"/sandbox/{KEY}/outlook/?mailbox={demo['mailbox']}").status_code == 200
    assert client.get(f"/sandbox/{KEY}/raynet/?user={demo['alice_account']}").status_code == 200


def test_signed_out_visitors_are_sent_to_sign_in(client, demo):
    response = client.get(f"/sandbox/{KEY}/outlook/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_the_portal_links_the_simulated_apps_only_when_the_sandbox_is_on(client, admin_user, settings):
    client.force_login(admin_user)
    assert "Demo: simulated Raynet / Outlook" in page_text(client.get("/"))
    settings.SANDBOX_ENABLED = False
    assert "Demo: simulated Raynet / Outlook" not in page_text(client.get("/"))


@pytest.mark.django_db
def test_the_pages_are_not_served_when_the_sandbox_is_off(client, settings, admin_user):
    import portal.urls

    client.force_login(admin_user)
    settings.SANDBOX_ENABLED = False
    importlib.reload(portal.urls)
    clear_url_caches()
    try:
        for url in (
            "/sandbox/",
            f"/sandbox/{KEY}/raynet/",
            f"/sandbox/{KEY}/outlook/",
            f"/sandbox/{KEY}/outlook/mail/",
        ):
            assert client.get(url).status_code == 404
    finally:
        settings.SANDBOX_ENABLED = True
        importlib.reload(portal.urls)
        clear_url_caches()


# --- the whole product --------------------------------------------------------------------------------------------


def test_a_raynet_page_edit_reaches_outlook_through_the_webhook_without_a_poll(http_world, settings, client):
    world = http_world
    settings.PUBLIC_BASE_URL = world.server.url
    with world.acting():
        world.raynet.state["deliver_http"] = True
        meeting = world.raynet.ui_create_activity("meeting", world.alice.person_id, "Review", soon(2), soon(2, 11))
    assert notifications.raynet_webhook_register(organization=world.org)
    world.sync()
    alice = make_user("alice@acme.test")
    Membership.objects.create(organization=world.org, user=alice, role=Membership.Role.VIEWER)
    client.force_login(alice)

    response = client.post(f"/sandbox/crash/raynet/meeting/{meeting}/", {"start": local_input(soon(6, 9)), "move": ""})

    assert response.status_code == 302
    world.reload()
    [event] = world.outlook_events(world.alice)
    assert event["start"]["dateTime"][:16] == soon(6, 9).isoformat()[:16]
    last = world.alice.mapping.runs.order_by("pk").last()
    assert last.trigger == SyncRun.Trigger.WEBHOOK
