"""The Raynet sandbox behaves as the reference and Raynet's OpenAPI examples say (raw HTTP, no client).

Reference: /work/shared/reference/raynet-api.md (§9 "Checklist for the fake server") and
raynet-openapi-calendar.json beside it, whose examples pin the response shapes below.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from syncapp.sandbox.base import register_with_responses
from syncapp.sandbox.raynet import RaynetSandbox
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER, RAYNET_BASE_URL, RAYNET_INSTANCE

OPENAPI = json.loads((Path("/work/shared/reference") / "raynet-openapi-calendar.json").read_text())
MINUTE_FORMAT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")
ISO_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
MONDAY_9_PRAGUE = datetime(2026, 6, 15, 7, 0, tzinfo=UTC)


def example(path: str, method: str = "get", status: str = "200") -> dict:
    return OPENAPI["paths"][path][method]["responses"][status]["content"]["application/json"]["example"]


def call(method: str, path: str, *, auth=(RAYNET_API_USER, RAYNET_API_KEY), instance=RAYNET_INSTANCE, **kwargs):
    headers = {"X-Instance-Name": instance} if instance else {}
    return requests.request(method, RAYNET_BASE_URL + path, auth=auth, headers=headers, timeout=5, **kwargs)


@pytest.fixture
def meeting_id(raynet_sandbox, jana) -> int:
    return raynet_sandbox.ui_create_activity(
        "meeting", jana, "Coffee", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE + timedelta(hours=1), meetingPlace="Café"
    )


def assert_same_shape(actual: dict, pinned: dict, *, extra: set[str] = frozenset()) -> None:
    """Same keys as the OpenAPI example (plus `extra`), and the same JSON types where both are set."""
    assert set(actual) == set(pinned) | extra
    for key, value in pinned.items():
        if value is not None and actual[key] is not None:
            assert type(actual[key]) is type(value), key


# --- contract: shapes pinned to the OpenAPI examples ------------------------------------------------------


@pytest.mark.parametrize("entity", ["meeting", "event"])
def test_list_rows_have_the_example_shape_flat_row_info_and_a_boolean_success(raynet_sandbox, jana, entity):
    raynet_sandbox.ui_create_activity(entity, jana, "Coffee", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE + timedelta(hours=1))
    pinned = example(f"/{entity}/")

    body = call("GET", f"{entity}/").json()

    assert body["success"] is True and body["totalCount"] == 1
    assert_same_shape(body["data"][0], pinned["data"][0])
    assert "owner" not in body["data"][0]  # list rows carry no owner, only the detail does
    assert set(body["data"][0]["participants"][0]) == set(pinned["data"][0]["participants"][0])  # no "id"
    assert MINUTE_FORMAT.match(body["data"][0]["rowInfo.updatedAt"])


@pytest.mark.parametrize("entity", ["meeting", "event"])
def test_the_detail_has_the_example_shape_and_the_string_true(raynet_sandbox, jana, entity):
    activity_id = raynet_sandbox.ui_create_activity(entity, jana, "Coffee", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE)
    pinned = example(f"/{entity}/{{{entity}Id}}/")

    body = call("GET", f"{entity}/{activity_id}/").json()

    assert body["success"] == "true"
    assert_same_shape(body["data"], pinned["data"], extra={"extIds"})  # extIds: the newer spec (S2)
    assert body["data"]["owner"] == {"id": jana, "fullName": "Jana Nováková"}
    assert set(body["data"]["participants"][0]) == set(pinned["data"]["participants"][0])


def test_create_answers_201_with_the_new_id_as_the_insert_example(raynet_sandbox, jana):
    response = call("PUT", "meeting/", json={"title": "New", "priority": "DEFAULT", "owner": jana})

    assert response.status_code == 201
    assert_same_shape(response.json(), OPENAPI["components"]["schemas"]["Insert201Response"]["example"])


def test_update_answers_success_only_and_delete_an_empty_200(raynet_sandbox, meeting_id):
    updated = call("POST", f"meeting/{meeting_id}/", json={"title": "Renamed"})
    deleted = call("DELETE", f"meeting/{meeting_id}/")

    assert (updated.status_code, updated.json()) == (200, {"success": True})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert raynet_sandbox.activity("meeting", meeting_id) is None


def test_user_and_person_endpoints_have_the_example_shapes(raynet_sandbox, jana):
    users = call("GET", "userAccount/").json()
    user = call("GET", f"userAccount/{users['data'][0]['id']}/").json()
    persons = call("GET", "person/").json()
    person = call("GET", f"person/{jana}/").json()

    assert users["success"] == example("/userAccount/")["success"] == "true"
    assert_same_shape(users["data"][0], example("/userAccount/")["data"][0])
    assert_same_shape(user["data"], example("/userAccount/{userAccountId}/")["data"])
    assert user["data"]["timezone"] == "EUROPE_PRAGUE"
    assert persons["success"] == example("/person/")["success"]
    assert_same_shape(persons["data"][0], example("/person/")["data"][0])
    assert_same_shape(person["data"], example("/person/{personId}/")["data"])


def test_errors_have_the_documented_bodies(raynet_sandbox):
    raynet_sandbox.deny_permission(path="^event/")

    unknown = call("GET", "meeting/", params={"colour[EQ]": "red"})
    denied = call("GET", "event/")

    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("Unsupported filter column")
    assert denied.status_code == 500
    assert set(denied.json()) == set(example("/event/", status="500"))
    assert denied.json()["message"] == "AttributeAccessDeniedException"


# --- authentication -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "instance"),
    [
        (None, RAYNET_INSTANCE),
        ((RAYNET_API_USER, "wrong"), RAYNET_INSTANCE),
        ((RAYNET_API_USER, RAYNET_API_KEY), None),
        ((RAYNET_API_USER, RAYNET_API_KEY), "globex"),
        (("nobody@acme.test", RAYNET_API_KEY), RAYNET_INSTANCE),
    ],
)
def test_it_answers_401_without_basic_auth_and_the_instance_name(raynet_sandbox, auth, instance):
    response = call("GET", "meeting/", auth=auth, instance=instance)

    assert response.status_code == 401
    assert response.json()["message"]


def test_more_than_20_bad_logins_block_the_address_for_an_hour(raynet_sandbox):
    for _ in range(21):
        call("GET", "meeting/", auth=(RAYNET_API_USER, "wrong"))

    blocked = call("GET", "meeting/")
    raynet_sandbox.advance(timedelta(minutes=61))
    unblocked = call("GET", "meeting/")

    assert blocked.status_code == 403 and "blocked" in blocked.json()["message"]
    assert unblocked.status_code == 200


# --- date-times ------------------------------------------------------------------------------------------


def test_date_times_are_minutes_in_the_users_zone_or_iso_8601_on_request(raynet_sandbox, meeting_id):
    plain = call("GET", f"meeting/{meeting_id}/").json()["data"]
    iso = call("GET", f"meeting/{meeting_id}/", params={"dateFormat": "ISO8601"}).json()["data"]

    assert (plain["scheduledFrom"], plain["scheduledTill"]) == ("2026-06-15 09:00", "2026-06-15 10:00")
    assert iso["scheduledFrom"] == "2026-06-15T09:00:00.000+02:00"
    assert ISO_FORMAT.match(iso["rowInfo.createdAt"])


def test_it_accepts_both_date_formats_on_write_and_stores_utc_instants(raynet_sandbox, meeting_id):
    # 29 March 2026: Prague moves from +01:00 to +02:00 at 02:00 local time.
    call("POST", f"meeting/{meeting_id}/", json={"scheduledFrom": "2026-03-29 01:30"})
    call("POST", f"meeting/{meeting_id}/", json={"scheduledTill": "2026-03-29T03:30:00.000+02:00"})

    stored = raynet_sandbox.activity("meeting", meeting_id)
    assert stored["scheduledFrom"] == "2026-03-29T00:30:00+00:00"
    assert stored["scheduledTill"] == "2026-03-29T01:30:00+00:00"
    assert call("POST", f"meeting/{meeting_id}/", json={"scheduledFrom": "next tuesday"}).status_code == 400


# --- lists: filters, paging ---------------------------------------------------------------------------


def test_filters_take_operator_suffixes_and_owner_id_with_a_hyphen(raynet_sandbox, jana):
    other = raynet_sandbox.add_user("petr@acme.test", "Petr Svetr")[1]
    early = raynet_sandbox.ui_create_activity("meeting", jana, "Early", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE)
    late_start = MONDAY_9_PRAGUE + timedelta(days=2)
    late = raynet_sandbox.ui_create_activity("meeting", jana, "Late", late_start, late_start, status="COMPLETED")
    raynet_sandbox.ui_create_activity("meeting", other, "Petr's", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE)

    def ids(**params) -> list[int]:
        return [row["id"] for row in call("GET", "meeting/", params=params).json()["data"]]

    assert ids(**{"owner-id": jana}) == [early, late]
    assert ids(**{"owner-id[NE]": other}) == [early, late]
    assert ids(**{"owner-id": jana, "scheduledFrom[GT]": "2026-06-16 00:00"}) == [late]
    assert ids(**{"owner-id": jana, "scheduledFrom[LE]": "2026-06-15T09:00:00+02:00"}) == [early]
    assert ids(**{"status[NE]": "COMPLETED", "title[LIKE]": "Ea%"}) == [early]
    assert ids(**{"id[IN]": f"{early},{late}", "sortColumn": "id", "sortDirection": "DESC"}) == [late, early]
    assert ids(**{"title[LIKE_NOCASE]": "%LATE"}) == [late]


def test_last_modified_at_has_minute_precision_like_the_real_api(raynet_sandbox, meeting_id):
    raynet_sandbox.set_now(datetime(2026, 6, 1, 10, 5, 30, tzinfo=UTC))
    raynet_sandbox.ui_edit_activity("meeting", meeting_id, title="Edited at 10:05:30")

    def ids(since: str) -> list[int]:
        params = {"rowInfo.lastModifiedAt[GT]": since}
        return [row["id"] for row in call("GET", "meeting/", params=params).json()["data"]]

    assert ids("2026-06-01T10:05:10+00:00") == []  # 10:05 is not after 10:05: the edit is missed
    assert ids("2026-06-01T10:04:59+00:00") == [meeting_id]


def test_limit_is_capped_at_1000_and_offset_pages(raynet_sandbox, jana):
    for number in range(1003):
        raynet_sandbox.ui_create_activity("event", jana, f"E{number}", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE)

    first = call("GET", "event/", params={"limit": 5000}).json()
    rest = call("GET", "event/", params={"limit": 1000, "offset": 1000}).json()

    assert (first["totalCount"], len(first["data"]), len(rest["data"])) == (1003, 1000, 3)


def test_persons_filter_by_email_and_by_having_a_user_account(raynet_sandbox, jana):
    customer = raynet_sandbox.add_person("karel@customer.test", "Karel Zákazník")

    by_email = call("GET", "person/", params={"contactInfo.email[EQ]": "karel@customer.test"}).json()
    users = call("GET", "person/", params={"userAccount-id[NE]": ""}).json()

    assert [row["id"] for row in by_email["data"]] == [customer]
    assert customer not in [row["id"] for row in users["data"]] and jana in [row["id"] for row in users["data"]]


# --- writes --------------------------------------------------------------------------------------------


def test_create_requires_title_priority_and_owner_and_drops_fields_outside_its_schema(raynet_sandbox, jana):
    missing = call("PUT", "meeting/", json={"title": "No owner", "priority": "DEFAULT"})
    created = call(
        "PUT",
        "meeting/",
        json={"title": "T", "priority": "DEFAULT", "owner": jana, "meetingPlace": "Café", "status": "COMPLETED"},
    )

    stored = raynet_sandbox.activity("meeting", created.json()["data"]["id"])
    assert missing.status_code == 400
    assert (stored["meetingPlace"], stored["status"]) == (None, "NEW")  # not in the create schema (§3)
    assert stored["participants"][0]["person"] == jana and stored["participants"][0]["owner"] is True


def test_owner_cannot_be_changed_by_update(raynet_sandbox, meeting_id, jana):
    response = call("POST", f"meeting/{meeting_id}/", json={"owner": jana})

    assert response.status_code == 403


def test_participants_follow_the_id_rules(raynet_sandbox, meeting_id):
    guest = raynet_sandbox.add_person("karel@customer.test", "Karel Zákazník")
    other_guest = raynet_sandbox.add_person("eva@customer.test", "Eva Zákaznice")
    call("POST", f"meeting/{meeting_id}/", json={"participants": [{"person": guest}]})
    added = dict(raynet_sandbox.activity("meeting", meeting_id)["participants"][-1])

    call("POST", f"meeting/{meeting_id}/", json={"participants": [{"id": added["id"], "person": other_guest}]})
    modified = [p["person"] for p in raynet_sandbox.activity("meeting", meeting_id)["participants"]]
    call("POST", f"meeting/{meeting_id}/", json={"participants": [{"id": -added["id"]}]})
    deleted = [p["person"] for p in raynet_sandbox.activity("meeting", meeting_id)["participants"]]

    assert added["person"] == guest
    assert other_guest in modified and guest not in modified
    assert other_guest not in deleted and len(deleted) == 1  # only the owner is left


def test_completed_only_takes_effect_with_a_final_status(raynet_sandbox, meeting_id):
    call("POST", f"meeting/{meeting_id}/", json={"completed": "2026-06-15 10:00"})
    ignored = raynet_sandbox.activity("meeting", meeting_id)["completed"]
    call("POST", f"meeting/{meeting_id}/", json={"completed": "2026-06-15 10:00", "status": "COMPLETED"})

    assert ignored is None
    assert raynet_sandbox.activity("meeting", meeting_id)["completed"] == "2026-06-15T08:00:00+00:00"


def test_ext_ids_are_added_looked_up_and_removed(raynet_sandbox, meeting_id):
    added = call("PUT", f"meeting/{meeting_id}/extId/", json={"extId": "outlook:abc"})
    found = call("GET", "meeting/ext/outlook:abc/")
    removed = call("DELETE", f"meeting/{meeting_id}/extId/outlook:abc")
    gone = call("GET", "meeting/ext/outlook:abc/")

    assert added.json() == example("/{entityName}/{entityId}/extId/", "put") == {"success": "true"}
    assert (found.json()["success"], found.json()["data"]["id"]) == ("true", meeting_id)
    assert found.json()["data"]["extIds"] == ["outlook:abc"]
    assert removed.json() == {"success": "true"}
    assert gone.status_code == 404


def test_an_ext_id_removed_or_of_a_deleted_record_can_go_to_another_record(raynet_sandbox, jana, meeting_id):
    other = raynet_sandbox.ui_create_activity(
        "meeting", jana, "Tea", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE + timedelta(hours=1)
    )
    call("PUT", f"meeting/{meeting_id}/extId/", json={"extId": "outlook:abc"})
    taken = call("PUT", f"meeting/{other}/extId/", json={"extId": "outlook:abc"})
    call("DELETE", f"meeting/{meeting_id}/extId/outlook:abc")
    moved = call("PUT", f"meeting/{other}/extId/", json={"extId": "outlook:abc"})
    found = call("GET", "meeting/ext/outlook:abc/")
    call("DELETE", f"meeting/{other}/")
    gone = call("GET", "meeting/ext/outlook:abc/")
    given_back = call("PUT", f"meeting/{meeting_id}/extId/", json={"extId": "outlook:abc"})

    assert taken.status_code == 400
    assert moved.json() == {"success": "true"}
    assert found.json()["data"]["id"] == other
    assert gone.status_code == 404
    assert given_back.json() == {"success": "true"}
    assert call("GET", "meeting/ext/outlook:abc/").json()["data"]["id"] == meeting_id


def test_a_missing_record_is_404(raynet_sandbox):
    assert call("GET", "meeting/999/").status_code == 404
    assert call("DELETE", "event/999/").status_code == 404


# --- acting as a person in Raynet's UI ----------------------------------------------------------------


def test_ui_changes_bump_updated_at_and_version_without_counting_requests(raynet_sandbox, meeting_id):
    before = dict(raynet_sandbox.activity("meeting", meeting_id))
    raynet_sandbox.advance(timedelta(minutes=5))

    raynet_sandbox.ui_complete_activity("meeting", meeting_id)

    after = raynet_sandbox.activity("meeting", meeting_id)
    assert after["status"] == "COMPLETED" and after["completed"]
    assert after["_version"] == before["_version"] + 1 and after["updatedAt"] > before["updatedAt"]
    assert raynet_sandbox.count() == 0


def test_ui_cancel_keeps_the_record_and_ui_delete_removes_it(raynet_sandbox, meeting_id):
    raynet_sandbox.ui_cancel_activity("meeting", meeting_id)
    cancelled = raynet_sandbox.activity("meeting", meeting_id)["status"]
    raynet_sandbox.ui_delete_activity("meeting", meeting_id)

    assert cancelled == "CANCELLED"
    assert raynet_sandbox.activities("meeting") == []


# --- rate limits, concurrency, faults ------------------------------------------------------------------


def test_every_response_carries_the_rate_limit_headers(raynet_sandbox):
    raynet_sandbox.set_now(datetime(2026, 1, 22, 15, 0, tzinfo=UTC))
    ok = call("GET", "meeting/")
    refused = call("GET", "meeting/", auth=(RAYNET_API_USER, "wrong"))

    for response in (ok, refused):
        assert response.headers["X-Ratelimit-Limit"] == "24000"
        assert response.headers["X-Ratelimit-Reset"] == "1769126400"  # 2026-01-23 00:00 UTC, as observed (S6)
    assert ok.headers["X-Ratelimit-Remaining"] == "23999"


@pytest.mark.parametrize("status", [429, 503])
def test_a_spent_daily_budget_answers_request_limit_reached_until_midnight_utc(raynet_sandbox, status):
    raynet_sandbox.state["budget_status"] = status  # 503: the 2021 docs' answer
    raynet_sandbox.set_now(datetime(2026, 1, 22, 23, 0, tzinfo=UTC))
    raynet_sandbox.set_daily_limit(2)
    call("GET", "meeting/")
    call("GET", "meeting/")

    spent = call("GET", "meeting/")
    raynet_sandbox.advance(timedelta(hours=1))
    next_day = call("GET", "meeting/")

    assert spent.status_code == status
    assert spent.json()["type"] == "RequestLimitReached"
    assert spent.headers["X-Ratelimit-Remaining"] == "0"
    assert next_day.status_code == 200 and next_day.headers["X-Ratelimit-Remaining"] == "1"


def test_a_fifth_concurrent_request_gets_429(raynet_sandbox):
    raynet_sandbox.inject_fault(0, times=6, delay=0.3)  # slow, then served
    responses = []

    def fetch() -> None:
        responses.append(call("GET", "meeting/"))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(429) >= 1 and statuses.count(200) >= 4
    assert raynet_sandbox.peak_in_flight == 4
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["X-Ratelimit-Remaining"]) > 0  # not the daily budget


def test_permission_errors_can_be_injected_per_user_and_per_operation(raynet_sandbox, meeting_id):
    raynet_sandbox.add_user("reader@acme.test", "Read Only", api_key="reader-key")
    raynet_sandbox.deny_permission(user="reader@acme.test")
    raynet_sandbox.deny_permission(method="DELETE", path=r"^meeting/", times=1)

    reader = call("GET", "meeting/", auth=("reader@acme.test", "reader-key"))
    api_read = call("GET", "meeting/")
    first_delete = call("DELETE", f"meeting/{meeting_id}/")
    second_delete = call("DELETE", f"meeting/{meeting_id}/")

    assert (reader.status_code, api_read.status_code) == (500, 200)
    assert (first_delete.status_code, second_delete.status_code) == (500, 200)


def test_requests_are_counted_by_method_and_path(raynet_sandbox, meeting_id):
    call("GET", "meeting/")
    call("POST", f"meeting/{meeting_id}/", json={"title": "x"})

    assert raynet_sandbox.count("GET", r"^meeting/$") == 1
    assert raynet_sandbox.count("POST") == 1


def test_its_state_survives_a_json_round_trip_and_keeps_working(raynet_sandbox, meeting_id, http_mock):
    raynet_sandbox.set_now(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    revived = RaynetSandbox(json.loads(json.dumps(raynet_sandbox.state)))
    http_mock.reset()
    register_with_responses(http_mock, RAYNET_BASE_URL, revived)

    response = call("GET", f"meeting/{meeting_id}/")
    created = call("PUT", "event/", json={"title": "After", "priority": "DEFAULT", "owner": 1})

    assert response.json()["data"]["meetingPlace"] == "Café"
    assert created.status_code == 201 and revived.activity("event", created.json()["data"]["id"])
    assert revived.now() == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- webhooks (reference §7) -----------------------------------------------------------------------------

RECEIVER = "https://portal.test/webhooks/raynet/"


@pytest.fixture
def subscribed(raynet_sandbox) -> str:
    """A webhook for every record event, with a secret token."""
    body = {"url": RECEIVER, "secretToken": "s3cret", "events": ["record.created", "record.updated", "record.deleted"]}
    return call("PUT", "webhook/", json=body).json()["data"]["uuid"]


def test_webhooks_are_registered_listed_and_removed_as_the_examples(raynet_sandbox, subscribed):
    listed = call("GET", "webhook/").json()
    removed = call("DELETE", f"webhook/{subscribed}/")

    assert_same_shape(listed, example("/webhook/"))
    assert listed["data"]["webhooks"][0]["webhookId"] == subscribed
    assert_same_shape(listed["data"]["webhooks"][0], example("/webhook/")["data"]["webhooks"][0])
    assert removed.json() == example("/webhook/{uuid}/", "delete")
    assert call("GET", "webhook/").json()["data"]["webhooks"] == []


def test_changes_queue_identifier_only_events_that_say_who_made_them(raynet_sandbox, subscribed, jana):
    created = call("PUT", "meeting/", json={"title": "T", "priority": "DEFAULT", "owner": jana}).json()["data"]["id"]
    raynet_sandbox.ui_edit_activity("meeting", created, title="Edited in the browser")
    call("DELETE", f"meeting/{created}/")

    events = raynet_sandbox.pending_webhooks()

    assert [event["type"] for event in events] == ["record.created", "record.updated", "record.deleted"]
    assert [event["source"] for event in events] == [
        {"name": "api", "description": "Outlook sync"},  # the API key's name
        {"name": "user", "description": "browser"},
        {"name": "api", "description": "Outlook sync"},
    ]
    assert events[0]["data"] == {"entityName": "Meeting", "entityId": created, "extIds": None}
    assert events[1]["author"] == "jana@acme.test"


def test_delivery_posts_with_the_secret_token_and_keeps_failures_queued(raynet_sandbox, subscribed, jana, http_mock):
    raynet_sandbox.ui_create_activity("event", jana, "Anniversary", MONDAY_9_PRAGUE, MONDAY_9_PRAGUE)
    http_mock.add("POST", RECEIVER, status=503)
    http_mock.add("POST", RECEIVER, status=200)

    first = raynet_sandbox.deliver_webhooks()
    second = raynet_sandbox.deliver_webhooks()

    posted = [call.request for call in http_mock.calls if call.request.url == RECEIVER]
    assert (first, second) == (0, 1)
    assert [request.headers["X-RAYNETCRM-Token"] for request in posted] == ["s3cret", "s3cret"]
    assert json.loads(posted[-1].body)["type"] == "record.created"
    assert raynet_sandbox.pending_webhooks() == []
