"""The Graph sandbox behaves as the reference describes Graph (raw HTTP, no client in between)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
import requests

from syncapp.sandbox.base import SandboxRequest, make_sandbox_view, stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from tests.outlook_fixtures import GRAPH_HOST, LOGIN_HOST, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET, OUTLOOK_TENANT_ID

PREFER = 'IdType="ImmutableId", outlook.timezone="UTC", outlook.body-content-type="text"'
GRAPH = f"{GRAPH_HOST}/v1.0"


def at(month: int, day: int, hour: int = 9, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.fixture
def sandbox(outlook_sandbox) -> GraphSandbox:
    return outlook_sandbox


@pytest.fixture
def token(sandbox) -> str:
    reply = requests.post(
        f"{LOGIN_HOST}/{OUTLOOK_TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": OUTLOOK_CLIENT_ID,
            "client_secret": OUTLOOK_CLIENT_SECRET,
            "scope": f"{GRAPH_HOST}/.default",
        },
    )
    return reply.json()["access_token"]


@pytest.fixture
def graph(token):
    def call(method: str, path: str, *, prefer: str = PREFER, **kwargs) -> requests.Response:
        url = path if path.startswith("https://") else f"{GRAPH}/{path}"
        headers = {"Authorization": f"Bearer {token}", "Prefer": prefer, **kwargs.pop("headers", {})}
        return requests.request(method, url, headers=headers, **kwargs)

    return call


def window(start: datetime, end: datetime) -> dict:
    return {"startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ")}


def delta_all(graph, first: str, params: dict | None = None, page_size: int = 50) -> tuple[list[dict], str]:
    items, url = [], first
    prefer = f"{PREFER}, odata.maxpagesize={page_size}"
    while True:
        page = graph("GET", url, params=params, prefer=prefer).json()
        params = None
        items.extend(page["value"])
        if "@odata.deltaLink" in page:
            return items, page["@odata.deltaLink"]
        url = page["@odata.nextLink"]


def starts(items: list[dict]) -> list[str]:
    return [item["start"]["dateTime"][:16] for item in items]


# --- login host --------------------------------------------------------------------------------------------


def test_the_openid_configuration_names_the_tenants_token_endpoint(sandbox):
    config = requests.get(f"{LOGIN_HOST}/{OUTLOOK_TENANT_ID}/v2.0/.well-known/openid-configuration").json()

    assert config["token_endpoint"] == f"{LOGIN_HOST}/{OUTLOOK_TENANT_ID}/oauth2/v2.0/token"
    assert config["authorization_endpoint"].startswith("https://")


def test_an_unknown_tenant_gets_400_from_discovery(sandbox):
    reply = requests.get(f"{LOGIN_HOST}/00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration")

    assert reply.status_code == 400
    assert reply.json()["error_codes"] == [90002]


def test_a_wrong_secret_gets_401_invalid_client(sandbox):
    reply = requests.post(
        f"{LOGIN_HOST}/{OUTLOOK_TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": OUTLOOK_CLIENT_ID,
            "client_secret": "x",
            "scope": "a/.default",
        },
    )

    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert reply.json()["error_codes"] == [7000215]


def test_graph_refuses_a_missing_or_unknown_bearer_token(sandbox, alice):
    assert requests.get(f"{GRAPH}/users").status_code == 401
    reply = requests.get(f"{GRAPH}/users", headers={"Authorization": "Bearer forged"})
    assert reply.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_tokens_expire_with_the_sandbox_clock(sandbox, alice, graph):
    assert graph("GET", "users").status_code == 200
    sandbox.set_now(datetime.now(UTC) + timedelta(hours=2))

    assert graph("GET", "users").status_code == 401


# --- headers ---------------------------------------------------------------------------------------------


def test_without_the_prefer_header_ids_are_not_immutable_and_bodies_are_html(sandbox, alice, graph):
    event_id = sandbox.person_create_event(alice, "Call", at(3, 2), at(3, 2, 10), body="Hi <you>")

    plain = graph("GET", f"users/{alice}/events/{event_id}", prefer="").json()
    preferred = graph("GET", f"users/{alice}/events/{event_id}")

    assert plain["id"] != event_id and plain["id"].startswith("AAMkAG")
    assert "<body>" in plain["body"]["content"] and "Hi &lt;you&gt;" in plain["body"]["content"]
    assert preferred.json()["id"] == event_id
    assert preferred.json()["body"] == {"contentType": "text", "content": "Hi <you>"}
    assert preferred.headers["Preference-Applied"] == 'outlook.timezone="UTC", outlook.body-content-type="text"'
    assert graph("GET", f"users/{alice}/events/{plain['id']}").json()["id"] == event_id  # both forms resolve


def test_outlook_timezone_renders_times_in_that_zone(sandbox, alice, graph):
    event_id = sandbox.person_create_event(alice, "Call", at(7, 1), at(7, 1, 10))

    event = graph("GET", f"users/{alice}/events/{event_id}", prefer='outlook.timezone="Europe/Prague"').json()

    assert event["start"] == {"dateTime": "2026-07-01T11:00:00.0000000", "timeZone": "Europe/Prague"}


# --- writing events ----------------------------------------------------------------------------------------


def test_a_posted_event_is_stored_in_utc_and_returned_with_graph_fields(sandbox, alice, graph):
    reply = graph(
        "POST",
        f"users/{alice}/events",
        json={
            "subject": "Visit",
            "start": {"dateTime": "2026-03-02T10:00:00", "timeZone": "Europe/Prague"},
            "end": {"dateTime": "2026-03-02T11:00:00", "timeZone": "Europe/Prague"},
            "location": {"displayName": "Brno"},
        },
    )

    assert reply.status_code == 201
    event = reply.json()
    assert event["start"] == {"dateTime": "2026-03-02T09:00:00.0000000", "timeZone": "UTC"}
    assert event["type"] == "singleInstance" and event["isOrganizer"] is True
    assert event["@odata.etag"] == f'W/"{event["changeKey"]}"'
    assert event["location"]["displayName"] == "Brno"
    assert event["organizer"]["emailAddress"]["address"] == "alice@acme.test"
    assert len(event["createdDateTime"]) == len("2026-03-02T09:00:00.0000000Z")
    assert "transactionId" not in event


def test_an_all_day_event_must_span_midnights(sandbox, alice, graph):
    day = {"isAllDay": True, "start": graph_time(at(3, 2, 0)), "end": graph_time(at(3, 3, 0)), "subject": "Off"}

    assert graph("POST", f"users/{alice}/events", json=day).status_code == 201
    not_midnight = {**day, "end": graph_time(at(3, 3, 12))}
    assert graph("POST", f"users/{alice}/events", json=not_midnight).status_code == 400


def test_unknown_properties_are_rejected(sandbox, alice, graph):
    reply = graph("POST", f"users/{alice}/events", json={"subject": "x", "color": "red", "start": {}, "end": {}})

    assert reply.status_code == 400


def test_a_repeated_transaction_id_returns_the_first_event(sandbox, alice, graph):
    body = {"subject": "Once", "start": graph_time(at(3, 2)), "end": graph_time(at(3, 2, 10)), "transactionId": "t-1"}

    first, second = graph("POST", f"users/{alice}/events", json=body), graph("POST", f"users/{alice}/events", json=body)

    assert first.json()["id"] == second.json()["id"]
    assert second.json()["transactionId"] == "t-1"
    assert len(sandbox.events(alice)) == 1


def test_a_transaction_id_is_per_mailbox_and_free_again_once_its_event_is_deleted(sandbox, alice, bob, graph):
    body = {"subject": "Once", "start": graph_time(at(3, 2)), "end": graph_time(at(3, 2, 10)), "transactionId": "t-1"}
    first = graph("POST", f"users/{alice}/events", json=body).json()
    bobs = graph("POST", f"users/{bob}/events", json=body).json()

    graph("DELETE", f"users/{alice}/events/{first['id']}")
    again = graph("POST", f"users/{alice}/events", json=body).json()

    assert bobs["id"] != first["id"]
    assert again["id"] != first["id"]
    assert [event["id"] for event in sandbox.events(alice)] == [again["id"]]
    assert graph("POST", f"users/{alice}/events", json=body).json()["id"] == again["id"]


def test_the_extended_property_filter_matches_name_exactly_and_value_ignoring_case(sandbox, alice, graph):
    prop = "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name CrmEventId"
    body = {"subject": "x", "start": graph_time(at(3, 2)), "end": graph_time(at(3, 2, 10))}
    graph(
        "POST",
        f"users/{alice}/events",
        json={**body, "singleValueExtendedProperties": [{"id": prop, "value": "Crm-1"}]},
    )

    def find(property_id: str, value: str) -> list:
        condition = f"singleValueExtendedProperties/Any(ep: ep/id eq '{property_id}' and ep/value eq '{value}')"
        return graph("GET", f"users/{alice}/events", params={"$filter": condition}).json()["value"]

    assert len(find(prop, "crm-1")) == 1
    assert len(find(prop.upper().replace("NAME CRMEVENTID", "Name CrmEventId"), "CRM-1")) == 1
    assert find(prop.replace("CrmEventId", "crmeventid"), "Crm-1") == []
    assert "singleValueExtendedProperties" not in find(prop, "crm-1")[0]


def test_deleting_twice_gets_404_error_item_not_found(sandbox, alice, graph):
    event_id = sandbox.person_create_event(alice, "x", at(3, 2), at(3, 2, 10))

    assert graph("DELETE", f"users/{alice}/events/{event_id}").status_code == 204
    again = graph("DELETE", f"users/{alice}/events/{event_id}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "ErrorItemNotFound"


def test_another_tenants_mailbox_is_not_visible(sandbox, alice, graph):
    sandbox.add_tenant("33333333-3333-3333-3333-333333333333", "other-app", "other-secret")
    stranger = sandbox.add_user("33333333-3333-3333-3333-333333333333", "eve@globex.test", "Eve")

    assert graph("GET", f"users/{stranger}/calendar").status_code == 404
    assert [u["id"] for u in graph("GET", "users").json()["value"]] == [alice]


# --- recurrence expansion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "span", "expected"),
    [
        ({"type": "daily", "interval": 2}, {"type": "numbered", "numberOfOccurrences": 3}, ["01-05", "01-07", "01-09"]),
        (
            {"type": "weekly", "interval": 1, "daysOfWeek": ["monday", "thursday"], "firstDayOfWeek": "sunday"},
            {"type": "endDate", "endDate": "2026-01-15"},
            ["01-05", "01-08", "01-12", "01-15"],
        ),
        (
            {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 5},
            {"type": "numbered", "numberOfOccurrences": 3},
            ["01-05", "02-05", "03-05"],
        ),
        (
            {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["friday"], "index": "last"},
            {"type": "numbered", "numberOfOccurrences": 3},
            ["01-30", "02-27", "03-27"],
        ),
        (
            {"type": "absoluteYearly", "interval": 1, "month": 1, "dayOfMonth": 5},
            {"type": "noEnd"},
            ["01-05", "01-05", "01-05"],
        ),
        (
            {"type": "relativeYearly", "interval": 1, "month": 3, "daysOfWeek": ["monday"], "index": "second"},
            {"type": "numbered", "numberOfOccurrences": 2},
            ["03-09", "03-08"],
        ),
    ],
)
def test_every_pattern_type_is_expanded(sandbox, alice, pattern, span, expected):
    recurrence = {"pattern": pattern, "range": {**span, "startDate": "2026-01-05"}}
    sandbox.person_create_event(alice, "Series", at(1, 5), at(1, 5, 10), recurrence=recurrence)

    shown = sandbox.occurrences(alice, at(1, 1, 0), at(1, 1, 0, year=2029))

    assert [o["start"]["dateTime"][5:10] for o in shown] == expected
    assert {o["type"] for o in shown} == {"occurrence"}


def test_a_weekly_series_keeps_its_local_time_across_daylight_saving(sandbox, alice):
    weekly = {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["friday"]},
        "range": {"type": "numbered", "startDate": "2026-03-20", "numberOfOccurrences": 3},
    }
    sandbox.person_create_event(
        alice, "Prague", at(3, 20, 8), at(3, 20, 9), recurrence=weekly, time_zone="Europe/Prague"
    )

    shown = sandbox.occurrences(alice, at(3, 1), at(4, 30))

    # 09:00 in Prague every week; summer time starts on 29 March
    assert starts(shown) == ["2026-03-20T08:00", "2026-03-27T08:00", "2026-04-03T07:00"]


def test_occurrences_have_their_own_ical_uid_and_original_start(sandbox, alice):
    series = sandbox.person_create_event(alice, "S", at(3, 2), at(3, 2, 10), recurrence=daily(2, "2026-03-02"))

    first, second = sandbox.occurrences(alice, at(3, 1), at(3, 31))

    assert first["iCalUId"] != second["iCalUId"]
    assert first["seriesMasterId"] == series
    assert first["originalStart"] == "2026-03-02T09:00:00Z"


def test_instances_lists_occurrences_and_exceptions_but_not_deleted_ones(sandbox, alice, graph):
    series = sandbox.person_create_event(alice, "S", at(3, 2), at(3, 2, 10), recurrence=daily(4, "2026-03-02"))
    sandbox.person_edit_occurrence(
        alice, series, date(2026, 3, 3), subject="Moved", start=at(3, 3, 14), end=at(3, 3, 15)
    )
    sandbox.person_delete_occurrence(alice, series, date(2026, 3, 4))

    instances = graph("GET", f"users/{alice}/events/{series}/instances", params=window(at(3, 1), at(3, 31))).json()[
        "value"
    ]

    assert [(i["type"], i["start"]["dateTime"][:16]) for i in instances] == [
        ("occurrence", "2026-03-02T09:00"),
        ("exception", "2026-03-03T14:00"),
        ("occurrence", "2026-03-05T09:00"),
    ]


# --- calendarView/delta -----------------------------------------------------------------------------------


def test_delta_needs_a_window(sandbox, alice, graph):
    assert graph("GET", f"users/{alice}/calendarView/delta").status_code == 400


def test_delta_pages_replay_a_change_and_end_with_a_delta_link(sandbox, alice, graph):
    for day in range(2, 7):
        sandbox.person_create_event(alice, f"E{day}", at(3, day), at(3, day, 10))

    first = graph(
        "GET",
        f"users/{alice}/calendarView/delta",
        params=window(at(3, 1), at(4, 1)),
        prefer=f"{PREFER}, odata.maxpagesize=2",
    ).json()
    second = graph("GET", first["@odata.nextLink"], prefer=PREFER).json()

    assert len(first["value"]) == 2 and "@odata.deltaLink" not in first
    assert second["value"][0] == first["value"][-1]  # Graph may send a change again (§3)
    items, delta_link = delta_all(graph, first["@odata.nextLink"], page_size=2)
    assert {i["subject"] for i in first["value"] + items} == {f"E{d}" for d in range(2, 7)}
    assert "$deltatoken=" in delta_link


def test_an_event_leaving_the_window_is_reported_removed(sandbox, alice, graph):
    event_id = sandbox.person_create_event(alice, "Moves", at(3, 2), at(3, 2, 10))
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.person_edit_event(alice, event_id, start=at(5, 2), end=at(5, 2, 10))

    items, _ = delta_all(graph, link)

    assert items == [{"@odata.type": "#microsoft.graph.event", "id": event_id, "@removed": {"reason": "deleted"}}]


def test_changes_outside_the_window_come_as_removals_of_unknown_ids(sandbox, alice, graph):
    outside = sandbox.person_create_event(alice, "Later", at(6, 2), at(6, 2, 10))
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.person_edit_event(alice, outside, subject="Later still")
    added_outside = sandbox.person_create_event(alice, "Much later", at(7, 2), at(7, 2, 10))
    sandbox.person_delete_event(alice, outside)

    items, _ = delta_all(graph, link)

    assert sorted(i["id"] for i in items) == sorted([outside, added_outside])
    assert all(i["@removed"] == {"reason": "deleted"} for i in items)


def test_a_deleted_occurrence_disappears_from_delta_without_a_tombstone(sandbox, alice, graph):
    series = sandbox.person_create_event(alice, "S", at(3, 2), at(3, 2, 10), recurrence=daily(3, "2026-03-02"))
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.person_delete_occurrence(alice, series, date(2026, 3, 3))

    items, link = delta_all(graph, link)
    assert items == []

    sandbox.person_delete_event(alice, series)
    items, _ = delta_all(graph, link)
    assert len(items) == 2 and all("@removed" in i for i in items)


def test_an_edited_occurrence_comes_as_an_exception_in_the_next_round(sandbox, alice, graph):
    series = sandbox.person_create_event(alice, "S", at(3, 2), at(3, 2, 10), recurrence=daily(3, "2026-03-02"))
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.person_edit_occurrence(alice, series, date(2026, 3, 3), subject="Special")

    items, _ = delta_all(graph, link)

    assert [(i["type"], i["subject"]) for i in items] == [("exception", "Special")]


def test_an_expired_delta_token_gets_410_sync_state_not_found(sandbox, alice, graph):
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.expire_delta_tokens()

    reply = graph("GET", link)

    assert reply.status_code == 410
    assert reply.json()["error"]["code"] == "syncStateNotFound"


def test_replaying_an_old_delta_link_returns_the_same_changes_again(sandbox, alice, graph):
    _, link = delta_all(graph, f"users/{alice}/calendarView/delta", window(at(3, 1), at(4, 1)))
    sandbox.person_create_event(alice, "New", at(3, 2), at(3, 2, 10))

    once, _ = delta_all(graph, link)
    twice, _ = delta_all(graph, link)

    assert once == twice and len(once) == 1


# --- meetings: attendee copies and sent mail -------------------------------------------------------------


def test_a_meeting_puts_a_copy_in_each_internal_attendees_mailbox_and_invites_everyone(sandbox, alice, bob):
    meeting = sandbox.person_create_event(
        alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test", "carol@client.test"]
    )

    [copy] = sandbox.events(bob)
    organizer_copy = sandbox.event(alice, meeting)
    assert copy["isOrganizer"] is False and copy["id"] != meeting
    assert copy["iCalUId"] == organizer_copy["iCalUId"]
    assert copy["organizer"]["emailAddress"]["address"] == "alice@acme.test"
    assert [(m["kind"], m["to"]) for m in sandbox.sent_mail] == [
        ("invitation", "bob@acme.test"),
        ("invitation", "carol@client.test"),
    ]


def test_the_organizers_changes_reach_the_copies_and_send_updates(sandbox, alice, bob):
    meeting = sandbox.person_create_event(alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test"])
    sandbox.person_edit_event(alice, meeting, subject="Kickoff v2")  # no mail for a subject change here
    sandbox.person_edit_event(alice, meeting, start=at(3, 2, 11), end=at(3, 2, 12))

    [copy] = sandbox.events(bob)
    assert copy["subject"] == "Kickoff v2"
    assert copy["start"]["dateTime"].startswith("2026-03-02T11:00")
    assert [m["kind"] for m in sandbox.sent_mail] == ["invitation", "update"]


def test_a_patch_with_only_attendees_mails_only_the_changed_attendees(sandbox, alice, bob, graph):
    carol = sandbox.add_user(OUTLOOK_TENANT_ID, "carol@acme.test", "Carol")
    meeting = sandbox.person_create_event(
        alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test", "dan@client.test"]
    )
    attendees = [{"emailAddress": {"address": a}, "type": "required"} for a in ("bob@acme.test", "carol@acme.test")]

    graph("PATCH", f"users/{alice}/events/{meeting}", json={"attendees": attendees})

    assert [(m["kind"], m["to"]) for m in sandbox.sent_mail[2:]] == [
        ("invitation", "carol@acme.test"),
        ("cancellation", "dan@client.test"),
    ]
    assert len(sandbox.events(carol)) == 1


def test_deleting_a_meeting_cancels_it_for_attendees_once(sandbox, alice, bob, graph):
    meeting = sandbox.person_create_event(alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test"])

    graph("DELETE", f"users/{alice}/events/{meeting}")

    [copy] = sandbox.events(bob)
    assert copy["isCancelled"] is True and copy["subject"] == "Canceled: Kickoff"
    assert [m["kind"] for m in sandbox.sent_mail] == ["invitation", "cancellation"]


def test_only_the_organizer_can_cancel(sandbox, alice, bob, graph):
    sandbox.person_create_event(alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test"])
    [copy] = sandbox.events(bob)

    reply = graph("POST", f"users/{bob}/events/{copy['id']}/cancel", json={"comment": "no"})

    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "You need to be an organizer to cancel a meeting."


def test_accepting_updates_the_copy_and_the_organizers_attendee_status(sandbox, alice, bob):
    meeting = sandbox.person_create_event(alice, "Kickoff", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test"])
    [copy] = sandbox.events(bob)

    sandbox.person_accept(bob, copy["id"])

    assert sandbox.event(bob, copy["id"])["responseStatus"]["response"] == "accepted"
    assert sandbox.event(alice, meeting)["attendees"][0]["status"]["response"] == "accepted"


def test_a_meetings_occurrence_edit_reaches_the_attendee_copy(sandbox, alice, bob):
    series = sandbox.person_create_event(
        alice, "Weekly", at(3, 2), at(3, 2, 10), attendees=["bob@acme.test"], recurrence=daily(3, "2026-03-02")
    )
    sandbox.person_edit_occurrence(alice, series, date(2026, 3, 3), location="Room 2")

    shown = sandbox.occurrences(bob, at(3, 1), at(4, 1))

    assert [o["location"]["displayName"] for o in shown] == ["", "Room 2", ""]
    assert [m["kind"] for m in sandbox.sent_mail] == ["invitation", "update"]


# --- subscriptions ----------------------------------------------------------------------------------------


def test_notifications_reach_the_callback_with_the_client_state(sandbox, alice, graph):
    received = []
    sandbox.on_notification = received.append
    sandbox.set_now(at(3, 1))
    subscription = graph(
        "POST",
        "subscriptions",
        json={
            "changeType": "created,updated,deleted",
            "notificationUrl": "https://portal.test/hook",
            "lifecycleNotificationUrl": "https://portal.test/lifecycle",
            "resource": f"/users/{alice}/events",
            "expirationDateTime": "2026-03-05T00:00:00Z",
            "clientState": "s3cret",
        },
    ).json()

    event_id = sandbox.person_create_event(alice, "x", at(3, 2), at(3, 2, 10))

    [payload] = received
    [note] = payload["value"]
    assert note["subscriptionId"] == subscription["id"] and note["clientState"] == "s3cret"
    assert note["changeType"] == "created" and note["resourceData"]["id"] == event_id


def test_a_lifecycle_event_reaches_the_callback_and_removal_ends_the_subscription(sandbox, alice, graph):
    received = []
    sandbox.on_notification = received.append
    sandbox.set_now(at(3, 1))
    subscription = graph(
        "POST",
        "subscriptions",
        json={
            "changeType": "updated",
            "notificationUrl": "https://p.test/h",
            "lifecycleNotificationUrl": "https://p.test/l",
            "resource": f"/users/{alice}/events",
            "expirationDateTime": "2026-03-02T00:00:00Z",
            "clientState": "s",
        },
    ).json()

    sandbox.send_lifecycle_event(subscription["id"], "subscriptionRemoved")

    assert received[0]["value"][0]["lifecycleEvent"] == "subscriptionRemoved"
    assert graph("GET", f"subscriptions/{subscription['id']}").status_code == 404


def test_no_notifications_after_the_subscription_expired(sandbox, alice, graph):
    received = []
    sandbox.on_notification = received.append
    sandbox.set_now(at(3, 1))
    graph(
        "POST",
        "subscriptions",
        json={
            "changeType": "created",
            "notificationUrl": "https://p.test/h",
            "resource": f"/users/{alice}/events",
            "expirationDateTime": "2026-03-02T00:00:00Z",
            "clientState": "s",
        },
    )
    sandbox.set_now(at(3, 3))

    sandbox.person_create_event(alice, "x", at(3, 4), at(3, 4, 10))

    assert received == []


def test_an_http_notification_url_is_refused(sandbox, alice, graph):
    sandbox.set_now(at(3, 1))
    reply = graph(
        "POST",
        "subscriptions",
        json={
            "changeType": "created",
            "notificationUrl": "http://p.test/h",
            "resource": f"/users/{alice}/events",
            "expirationDateTime": "2026-03-02T00:00:00Z",
        },
    )

    assert reply.status_code == 400


# --- the HTTP front ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_state_survives_a_round_trip_through_postgresql(sandbox, alice):
    series = sandbox.person_create_event(
        alice, "S", at(3, 2), at(3, 2, 10), recurrence=daily(3, "2026-03-02"), attendees=["x@y.test"]
    )
    with stored_sandbox(GraphSandbox, "demo") as stored:
        stored.state.update(json.loads(json.dumps(sandbox.state)))

    with stored_sandbox(GraphSandbox, "demo") as stored:
        reply = stored.handle(
            SandboxRequest(
                "GET",
                f"{OUTLOOK_TENANT_ID}/v2.0/.well-known/openid-configuration",
                {},
                {},
                url=f"https://demo.test/sandbox/graph/demo/{OUTLOOK_TENANT_ID}/v2.0/.well-known/openid-configuration",
            )
        )
        assert len(stored.occurrences(alice, at(3, 1), at(4, 1))) == 3
        assert stored.event(alice, series)["subject"] == "S"
    assert reply.body["token_endpoint"] == f"https://demo.test/sandbox/graph/demo/{OUTLOOK_TENANT_ID}/oauth2/v2.0/token"


@pytest.mark.django_db
def test_the_django_view_serves_tokens_and_graph_from_one_mount(rf, settings):
    settings.ALLOWED_HOSTS = ["demo.test"]
    view = make_sandbox_view(GraphSandbox)
    base = "https://demo.test/sandbox/graph/demo"
    with stored_sandbox(GraphSandbox, "demo") as stored:
        stored.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
        alice = stored.add_user(OUTLOOK_TENANT_ID, "alice@acme.test", "Alice")

    def call(method: str, path: str, **kwargs):
        request = getattr(rf, method)(f"/sandbox/graph/demo/{path}", secure=True, HTTP_HOST="demo.test", **kwargs)
        return view(request, key="demo", path=path)

    credentials = f"client_id={OUTLOOK_CLIENT_ID}&client_secret={OUTLOOK_CLIENT_SECRET}"
    form = f"grant_type=client_credentials&{credentials}&scope={base}/.default"
    token = json.loads(
        call(
            "post",
            f"{OUTLOOK_TENANT_ID}/oauth2/v2.0/token",
            data=form,
            content_type="application/x-www-form-urlencoded",
        ).content
    )
    users = call("get", "v1.0/users", HTTP_AUTHORIZATION=f"Bearer {token['access_token']}")

    assert users.status_code == 200
    assert [u["id"] for u in json.loads(users.content)["value"]] == [alice]


# --- helpers ----------------------------------------------------------------------------------------------


def daily(count: int, start: str) -> dict:
    return {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "startDate": start, "numberOfOccurrences": count},
    }


def graph_time(moment: datetime) -> dict:
    return {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
