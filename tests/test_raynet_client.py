"""The Raynet client against the Raynet sandbox: what it sends, what it returns, how it fails."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests
from django.db import connection as db_connection
from hypothesis import given
from hypothesis import strategies as st

from syncapp.models import RaynetConnection
from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.providers.raynet import RaynetClient, RaynetUser, classify, parse_datetime
from syncapp.sandbox.raynet import render_datetime
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER, RAYNET_INSTANCE

pytestmark = pytest.mark.django_db

PRAGUE = ZoneInfo("Europe/Prague")
JUNE_15_9_PRAGUE = datetime(2026, 6, 15, 7, 0, tzinfo=UTC)


@pytest.fixture
def client(raynet_connection) -> RaynetClient:
    return RaynetClient(raynet_connection)


@pytest.fixture
def meeting_id(raynet_sandbox, jana) -> int:
    end = JUNE_15_9_PRAGUE + timedelta(hours=1)
    return raynet_sandbox.ui_create_activity("meeting", jana, "Coffee", JUNE_15_9_PRAGUE, end, meetingPlace="Café")


def sent(http_mock, index: int = -1) -> tuple[str, str, dict, dict | None]:
    """Method, path below /api/v2/, query and JSON body of a request the client sent."""
    request = http_mock.calls[index].request
    parts = urlsplit(request.url)
    body = json.loads(request.body) if request.body else None
    return request.method, parts.path.removeprefix("/api/v2/"), parse_qs(parts.query, keep_blank_values=True), body


def response(status: int, body: dict | None = None, headers: dict | None = None) -> requests.Response:
    reply = requests.Response()
    reply.status_code = status
    reply._content = json.dumps(body).encode() if body is not None else b""
    reply.headers.update(headers or {})
    return reply


# --- every call ------------------------------------------------------------------------------------------


def test_every_call_sends_basic_auth_the_instance_name_and_a_timeout(client, http_mock, meeting_id):
    client.get_activity("meeting", meeting_id)
    client.list_users()

    expected_auth = "Basic " + base64.b64encode(f"{RAYNET_API_USER}:{RAYNET_API_KEY}".encode()).decode()
    for call in http_mock.calls:
        assert call.request.headers["Authorization"] == expected_auth
        assert call.request.headers["X-Instance-Name"] == RAYNET_INSTANCE
        assert call.request.req_kwargs["timeout"]
        assert call.request.url.startswith("https://raynet.sandbox.test/api/v2/")


def test_the_api_key_never_appears_in_an_error_message(client, raynet_sandbox):
    raynet_sandbox.state["api_keys"][RAYNET_API_USER] = "rotated"

    with pytest.raises(ProviderError) as failure:
        client.get_activity("meeting", 1)

    assert RAYNET_API_KEY not in failure.value.message
    assert RAYNET_API_KEY not in client.test_connection().message


# --- activities --------------------------------------------------------------------------------------------


def test_list_sends_the_documented_filters_and_always_asks_for_iso_dates(client, http_mock, jana):
    client.list_activities(
        "meeting",
        owner_id=jana,
        scheduled_from=datetime(2026, 6, 1, tzinfo=UTC),
        scheduled_till=datetime(2026, 7, 1, tzinfo=UTC),
        modified_since=datetime(2026, 6, 10, 8, 0, tzinfo=UTC),
        status="SCHEDULED",
    )

    method, path, query, _ = sent(http_mock)
    assert (method, path) == ("GET", "meeting/")
    assert query == {
        "owner-id": [str(jana)],
        "scheduledTill[GE]": ["2026-06-01T02:00:00.000+02:00"],  # overlaps the window: ends after its start
        "scheduledFrom[LE]": ["2026-07-01T02:00:00.000+02:00"],  # ... and starts before its end
        "rowInfo.lastModifiedAt[GT]": ["2026-06-10T09:58:00.000+02:00"],  # two minutes of overlap
        "status": ["SCHEDULED"],
        "limit": ["1000"],
        "sortColumn": ["id"],
        "sortDirection": ["ASC"],
        "dateFormat": ["ISO8601"],
    }


def test_list_returns_utc_datetimes_the_entity_and_the_owner_list_rows_lack(client, meeting_id, jana):
    [activity] = client.list_activities("meeting", owner_id=jana)

    assert activity["id"] == meeting_id and activity["_entity"] == "meeting"
    assert activity["scheduledFrom"] == JUNE_15_9_PRAGUE
    assert activity["scheduledTill"] == JUNE_15_9_PRAGUE + timedelta(hours=1)
    assert activity["rowInfo.createdAt"].tzinfo == UTC
    assert activity["owner"]["id"] == jana  # list rows carry no owner; the owner participant says it


def test_a_window_selects_the_activities_that_overlap_it(client, raynet_sandbox, jana):
    window_start = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    started_before = raynet_sandbox.ui_create_activity("event", jana, "A", window_start - hour, window_start + hour)
    raynet_sandbox.ui_create_activity("event", jana, "Ended before", window_start - 2 * hour, window_start - hour)
    inside = raynet_sandbox.ui_create_activity("event", jana, "B", window_start + hour, window_start + 2 * hour)
    raynet_sandbox.ui_create_activity("event", jana, "After", window_start + 30 * hour, window_start + 31 * hour)

    found = client.list_activities("event", scheduled_from=window_start, scheduled_till=window_start + 24 * hour)

    assert [activity["id"] for activity in found] == [started_before, inside]


def test_list_pages_by_1000_until_the_total_count(client, raynet_sandbox, http_mock, jana):
    for number in range(2003):
        raynet_sandbox.ui_create_activity("event", jana, f"E{number}", JUNE_15_9_PRAGUE, JUNE_15_9_PRAGUE)

    found = client.list_activities("event")

    assert len(found) == len({activity["id"] for activity in found}) == 2003
    assert raynet_sandbox.count("GET", r"^event/$") == 3
    assert "id[GT]" not in sent(http_mock, 0)[2]
    assert sent(http_mock, 1)[2]["id[GT]"] == [str(found[999]["id"])]


def test_get_returns_the_detail_and_none_once_deleted(client, raynet_sandbox, meeting_id, jana):
    activity = client.get_activity("meeting", meeting_id)
    raynet_sandbox.ui_delete_activity("meeting", meeting_id)

    assert activity["owner"] == {"id": jana, "fullName": "Jana Nováková"}
    assert activity["meetingPlace"] == "Café" and activity["_entity"] == "meeting"
    assert client.get_activity("meeting", meeting_id) is None


def test_create_puts_then_tags_the_ext_id_then_posts_what_the_create_schema_lacks(
    client, raynet_sandbox, http_mock, jana
):
    guest = raynet_sandbox.add_person("karel@customer.test", "Karel Zákazník")
    fields = {
        "title": "Planning",
        "priority": "DEFAULT",
        "owner": jana,
        "scheduledFrom": datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
        "scheduledTill": datetime(2026, 6, 15, 8, 0, tzinfo=UTC),
        "description": "<p>Agenda</p>",
        "status": "SCHEDULED",
        "meetingPlace": "Room 1",
        "personal": True,
        "participants": [{"person": guest}],
    }

    new_id = client.create_activity("meeting", fields, ext_id="outlook:link-1")

    assert [sent(http_mock, i)[:2] for i in range(3)] == [
        ("PUT", "meeting/"),
        ("PUT", f"meeting/{new_id}/extId/"),
        ("POST", f"meeting/{new_id}/"),
    ]
    assert sent(http_mock, 0)[3] == {
        "title": "Planning",
        "priority": "DEFAULT",
        "owner": jana,
        "scheduledFrom": "2026-06-15T09:00:00.000+02:00",
        "scheduledTill": "2026-06-15T10:00:00.000+02:00",
        "description": "<p>Agenda</p>",
    }
    assert sent(http_mock, 1)[3] == {"extId": "outlook:link-1"}
    assert sent(http_mock, 2)[3] == {  # a scheduled activity is SCHEDULED from its create: no status here
        "meetingPlace": "Room 1",
        "personal": True,
        "participants": [{"person": guest}],
    }
    stored = raynet_sandbox.activity("meeting", new_id)
    assert (stored["meetingPlace"], stored["personal"], stored["status"]) == ("Room 1", True, "SCHEDULED")
    assert guest in [participant["person"] for participant in stored["participants"]]
    assert stored["extIds"] == ["outlook:link-1"]


def test_a_create_with_no_place_and_no_participants_is_two_writes(client, raynet_sandbox, http_mock, jana):
    fields = {
        "title": "Planning",
        "priority": "DEFAULT",
        "owner": jana,
        "scheduledFrom": datetime(2026, 6, 15, 7, 0, tzinfo=UTC),
        "scheduledTill": datetime(2026, 6, 15, 8, 0, tzinfo=UTC),
        "status": "SCHEDULED",
        "meetingPlace": "",
        "participants": [],
    }

    new_id = client.create_activity("meeting", fields, ext_id="outlook:link-2")

    assert [sent(http_mock, i)[:2] for i in range(len(http_mock.calls))] == [
        ("PUT", "meeting/"),
        ("PUT", f"meeting/{new_id}/extId/"),
    ]
    stored = raynet_sandbox.activity("meeting", new_id)
    assert (stored["status"], stored["meetingPlace"], stored["extIds"]) == ("SCHEDULED", None, ["outlook:link-2"])


def test_create_with_only_create_fields_and_no_ext_id_is_one_request(client, raynet_sandbox, jana):
    client.create_activity("event", {"title": "Anniversary", "priority": "DEFAULT", "owner": jana})

    assert raynet_sandbox.count() == 1


def test_a_create_retried_after_a_crash_finds_the_record_it_made(raynet_connection, raynet_sandbox, jana):
    first_process = RaynetClient(raynet_connection)
    first_process.create_activity("meeting", {"title": "T", "priority": "DEFAULT", "owner": jana}, ext_id="ol:9")
    # ... the process dies here, before the new id is stored on the link.

    retry = RaynetClient(RaynetConnection.objects.get(pk=raynet_connection.pk))
    found = retry.find_by_ext_id("meeting", "ol:9")

    assert found is not None and found["title"] == "T"
    assert len(raynet_sandbox.activities("meeting")) == 1
    assert retry.find_by_ext_id("meeting", "ol:unknown") is None


def test_update_posts_a_partial_body_with_participant_operations(client, raynet_sandbox, http_mock, meeting_id):
    guest = raynet_sandbox.add_person("karel@customer.test", "Karel Zákazník")
    start = datetime(2026, 6, 16, 7, 0, tzinfo=UTC)

    client.update_activity("meeting", meeting_id, {"scheduledFrom": start, "participants": [{"person": guest}]})
    participant = client.get_activity("meeting", meeting_id)["participants"][-1]
    client.update_activity("meeting", meeting_id, {"participants": [{"id": -participant["id"]}]})

    assert sent(http_mock, 0) == (
        "POST",
        f"meeting/{meeting_id}/",
        {},
        {"scheduledFrom": "2026-06-16T09:00:00.000+02:00", "participants": [{"person": guest}]},
    )
    assert participant["person"] == guest
    assert guest not in [p["person"] for p in raynet_sandbox.activity("meeting", meeting_id)["participants"]]
    assert raynet_sandbox.activity("meeting", meeting_id)["scheduledFrom"] == start.isoformat()


def test_update_refuses_to_change_the_owner_without_calling_raynet(client, raynet_sandbox, meeting_id, jana):
    with pytest.raises(ProviderError) as failure:
        client.update_activity("meeting", meeting_id, {"owner": jana})

    assert failure.value.kind == ErrorKind.VALIDATION
    assert raynet_sandbox.count() == 0


def test_delete_sends_delete_and_a_record_already_gone_is_fine(client, raynet_sandbox, http_mock, meeting_id):
    client.delete_activity("meeting", meeting_id)
    client.delete_activity("meeting", meeting_id)

    assert sent(http_mock, 0)[:2] == ("DELETE", f"meeting/{meeting_id}/")
    assert raynet_sandbox.activities("meeting") == []


def test_an_unknown_entity_is_a_programming_error(client):
    with pytest.raises(ValueError):
        client.list_activities("task")


# --- users and persons -----------------------------------------------------------------------------------


def test_list_users_joins_accounts_to_their_person_and_email(client, raynet_sandbox, http_mock):
    user_id, person_id = raynet_sandbox.add_user("jana@acme.test", "Jana Nováková")
    raynet_sandbox.state["persons"][str(person_id)]["email"] = "jana.novakova@acme.test"

    users = client.list_users()

    assert RaynetUser(user_id, person_id, "jana@acme.test", "jana.novakova@acme.test", "Jana Nováková") in users
    assert [sent(http_mock, i)[:2] for i in range(2)] == [("GET", "userAccount/"), ("GET", "person/")]
    assert sent(http_mock, 1)[2]["userAccount-id[NE]"] == [""]


def test_find_person_by_email_ignores_case_and_is_cached(client, raynet_sandbox, jana):
    customer = raynet_sandbox.add_person("Karel@Customer.test", "Karel Zákazník")

    assert client.find_person_by_email("karel@customer.test") == customer
    assert client.find_person_by_email("KAREL@customer.test") == customer
    assert client.find_person_by_email("nobody@customer.test") is None
    assert client.find_person_by_email("nobody@customer.test") is None
    assert raynet_sandbox.count("GET", "^person/$") == 2


def test_get_person_emails_reads_each_person_once(client, raynet_sandbox, jana):
    customer = raynet_sandbox.add_person("karel@customer.test", "Karel Zákazník")

    first = client.get_person_emails([jana, customer, 999])
    second = client.get_person_emails([customer])

    assert first == {jana: "jana@acme.test", customer: "karel@customer.test"}
    assert second == {customer: "karel@customer.test"}
    assert raynet_sandbox.count("GET", r"^person/\d+/$") == 3


# --- connection test -------------------------------------------------------------------------------------


def test_connection_test_says_it_works(client):
    check = client.test_connection()

    assert check.ok
    assert "acme" in check.message and RAYNET_API_USER in check.message


def test_connection_test_names_what_to_check_when_the_login_fails(raynet_connection, raynet_sandbox):
    raynet_connection.api_key = "wrong-key"

    check = RaynetClient(raynet_connection).test_connection()

    assert not check.ok
    assert "instance name" in check.message and "API key" in check.message


def test_connection_test_explains_a_missing_permission(client, raynet_sandbox):
    raynet_sandbox.deny_permission(path="^meeting/")

    check = client.test_connection()

    assert not check.ok and "may not read" in check.message


# --- errors ---------------------------------------------------------------------------------------------


def test_bad_credentials_are_an_auth_error_and_are_not_retried(client, raynet_sandbox):
    raynet_sandbox.state["api_keys"][RAYNET_API_USER] = "rotated"

    with pytest.raises(ProviderError) as failure:
        client.list_activities("meeting")

    assert (failure.value.kind, failure.value.status, failure.value.permanent) == (ErrorKind.AUTH, 401, True)
    assert raynet_sandbox.count() == 1


def test_a_500_attribute_access_denied_is_a_permanent_permission_error(client, raynet_sandbox):
    raynet_sandbox.deny_permission(path="^event/")

    with pytest.raises(ProviderError) as failure:
        client.list_activities("event")

    assert failure.value.kind == ErrorKind.PERMISSION and failure.value.permanent
    assert failure.value.message == (
        "The Raynet API user lacks a permission this needs. "
        "Raynet says: “Nemáte dostatečná oprávnění pro tuto operaci.”"  # the translatedMessage
    )
    assert raynet_sandbox.count() == 1  # a 500, yet never retried


def test_a_missing_record_on_update_is_not_found(client):
    with pytest.raises(ProviderError) as failure:
        client.update_activity("meeting", 999, {"title": "x"})

    assert failure.value.kind == ErrorKind.NOT_FOUND


def test_an_unknown_filter_is_a_validation_error_with_raynets_message(client):
    with pytest.raises(ProviderError) as failure:
        client.session.request("GET", "meeting/", params={"colour": "red"})

    assert failure.value.kind == ErrorKind.VALIDATION
    assert failure.value.message.endswith("Raynet says: “Unsupported filter column colour”")


def test_a_spent_daily_budget_pauses_the_connection_until_the_reset(client, raynet_sandbox, raynet_connection):
    raynet_sandbox.set_daily_limit(24000, used=24000)

    with pytest.raises(ProviderError) as failure:
        client.list_activities("meeting")
    calls = raynet_sandbox.count()
    with pytest.raises(ProviderError) as while_paused:
        client.get_activity("meeting", 1)

    reset = datetime.fromtimestamp(raynet_sandbox._reset_timestamp(), UTC)
    raynet_connection.refresh_from_db()
    assert failure.value.kind == ErrorKind.BUDGET_SPENT and calls == 1  # never a retry loop
    assert raynet_connection.paused_until == reset and raynet_connection.is_paused()
    assert while_paused.value.kind == ErrorKind.BUDGET_SPENT
    assert raynet_sandbox.count() == calls  # no request while paused


def test_the_old_503_request_limit_reached_is_a_spent_budget_too(client, raynet_sandbox):
    raynet_sandbox.state["budget_status"] = 503
    raynet_sandbox.set_daily_limit(24000, used=24000)

    with pytest.raises(ProviderError) as failure:
        client.list_activities("meeting")

    assert failure.value.kind == ErrorKind.BUDGET_SPENT and raynet_sandbox.count() == 1


def test_a_429_for_too_many_connections_is_retried_with_backoff(client, raynet_sandbox, retry_waits):
    raynet_sandbox.inject_fault(429, times=2, body={"message": "Too many connections"})

    assert client.list_activities("meeting") == []
    assert raynet_sandbox.count() == 3
    assert retry_waits == [1, 2]


def test_a_server_error_is_transient_and_retried_a_bounded_number_of_times(client, raynet_sandbox, retry_waits):
    raynet_sandbox.inject_fault(502, times=10)

    with pytest.raises(ProviderError) as failure:
        client.list_activities("meeting")

    assert failure.value.kind == ErrorKind.TRANSIENT and failure.value.retryable
    assert raynet_sandbox.count() == 4 and len(retry_waits) == 3


def test_a_timeout_is_transient_and_retried(client, raynet_sandbox, monkeypatch):
    real_request = client.session.http.request
    attempts = []

    def time_out_once(*args, **kwargs):
        attempts.append(kwargs["timeout"])
        if len(attempts) == 1:
            raise requests.ReadTimeout("read timed out")
        return real_request(*args, **kwargs)

    monkeypatch.setattr(client.session.http, "request", time_out_once)

    assert client.list_activities("meeting") == []
    assert len(attempts) == 2 and all(attempts)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        (401, {"message": "Unauthorized"}, {}, ErrorKind.AUTH),
        (403, {"message": "AccessTokenNotFoundException: Access token not found"}, {}, ErrorKind.AUTH),
        (500, {"message": "AttributeAccessDeniedException"}, {}, ErrorKind.PERMISSION),
        (500, {"message": "TranslatedApplicationException: exception.stillReferenced"}, {}, ErrorKind.VALIDATION),
        (500, {"message": "NullPointerException"}, {}, ErrorKind.TRANSIENT),
        (502, None, {}, ErrorKind.TRANSIENT),
        (404, {"message": "Not found"}, {}, ErrorKind.NOT_FOUND),
        (400, {"message": "Unsupported filter column x"}, {}, ErrorKind.VALIDATION),
        (429, {"type": "RequestLimitReached"}, {"X-Ratelimit-Remaining": "0"}, ErrorKind.BUDGET_SPENT),
        (429, {"message": "Too many connections"}, {"X-Ratelimit-Remaining": "120"}, ErrorKind.RATE_LIMITED),
        (503, {"type": "RequestLimitReached", "documentation_url": "x"}, {}, ErrorKind.BUDGET_SPENT),
        (503, {"message": "Service Unavailable"}, {}, ErrorKind.TRANSIENT),
    ],
)
def test_each_documented_error_is_classified(status, body, headers, kind):
    assert classify(response(status, body, headers)).kind == kind


def test_admins_see_translated_message_else_message():
    translated = classify(response(500, {"message": "TranslatedApplicationException", "translatedMessage": "Nelze"}))
    plain = classify(response(400, {"message": "Unsupported filter column x"}))
    empty = classify(response(502))

    assert translated.message == "Raynet refused the change. Raynet says: “Nelze”"
    assert plain.message == "Raynet rejected the request (HTTP 400). Raynet says: “Unsupported filter column x”"
    assert empty.message == "Raynet had a server error (HTTP 502)."


# --- rate-limit headers and concurrency ------------------------------------------------------------------


def test_rate_limit_headers_are_kept_on_the_connection(client, raynet_sandbox, raynet_connection):
    raynet_sandbox.set_daily_limit(24000, used=100)

    client.list_activities("meeting")

    raynet_connection.refresh_from_db()
    assert (raynet_connection.rate_limit_limit, raynet_connection.rate_limit_remaining) == (24000, 23899)
    assert raynet_connection.rate_limit_reset_at == datetime.fromtimestamp(raynet_sandbox._reset_timestamp(), UTC)


@pytest.mark.django_db(transaction=True)
def test_no_more_than_four_requests_are_in_flight_across_threads(raynet_connection, raynet_sandbox):
    raynet_sandbox.inject_fault(0, times=16, delay=0.15)  # slow, then served
    failures = []

    def worker() -> None:
        try:
            own_client = RaynetClient(RaynetConnection.objects.get(pk=raynet_connection.pk))  # as another process
            own_client.list_activities("meeting")
            own_client.list_activities("event")
        except Exception as error:  # collected for the assertion below
            failures.append(error)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert raynet_sandbox.peak_in_flight == 4
    assert raynet_sandbox.concurrency_rejections == 0
    assert raynet_sandbox.count() == 16


# --- time zones and watermarks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("naive", "utc"),
    [
        ("2026-03-29 01:30", datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),  # CET, +01:00
        ("2026-03-29 03:30", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),  # CEST, +02:00
        ("2026-10-25 01:30", datetime(2026, 10, 24, 23, 30, tzinfo=UTC)),  # still CEST
        ("2026-10-25 03:30", datetime(2026, 10, 25, 2, 30, tzinfo=UTC)),  # CET again
        ("2026-03-29T03:30:00.000+02:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ],
)
def test_raynet_times_become_utc_instants_across_a_dst_change(naive, utc):
    assert parse_datetime(naive, PRAGUE) == utc


def test_naive_times_in_a_response_are_read_in_the_connections_zone(client, raynet_sandbox, meeting_id):
    detail = {
        "success": "true",
        "data": {
            "id": meeting_id,
            "scheduledFrom": "2026-03-29 01:30",
            "scheduledTill": "2026-03-29 03:30",
            "completed": None,
        },
    }
    raynet_sandbox.inject_fault(200, body=detail)

    activity = client.get_activity("meeting", meeting_id)

    assert activity["scheduledFrom"] == datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert activity["scheduledTill"] == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert activity["completed"] is None


def test_an_event_across_the_dst_change_round_trips_to_the_same_instants(client, raynet_sandbox, jana):
    start, end = datetime(2026, 3, 28, 23, 0, tzinfo=UTC), datetime(2026, 3, 29, 3, 0, tzinfo=UTC)
    new_id = client.create_activity(
        "event", {"title": "Night", "priority": "DEFAULT", "owner": jana, "scheduledFrom": start, "scheduledTill": end}
    )

    activity = client.get_activity("event", new_id)

    assert (activity["scheduledFrom"], activity["scheduledTill"]) == (start, end)


def test_the_modified_since_watermark_overlaps_so_minute_precision_misses_nothing(client, raynet_sandbox, meeting_id):
    last_run = datetime(2026, 6, 1, 10, 5, 10, tzinfo=UTC)
    raynet_sandbox.set_now(datetime(2026, 6, 1, 10, 5, 30, tzinfo=UTC))
    raynet_sandbox.ui_edit_activity("meeting", meeting_id, title="Edited twenty seconds after the last run")

    found = client.list_activities("meeting", modified_since=last_run)

    assert [activity["id"] for activity in found] == [meeting_id]


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)))
def test_iso_dates_round_trip_every_minute_even_in_the_repeated_autumn_hour(instant):
    instant = instant.replace(second=0, microsecond=0)
    rendered = render_datetime(instant.isoformat(), PRAGUE, iso=True)  # what the sandbox sends

    assert parse_datetime(rendered, PRAGUE) == instant


def test_naive_dates_cannot_tell_the_repeated_autumn_hour_apart_which_is_why_the_client_asks_for_iso():
    first, second = datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)

    assert render_datetime(first.isoformat(), PRAGUE, iso=False) == render_datetime(
        second.isoformat(), PRAGUE, iso=False
    )


def test_a_listed_row_tells_when_its_record_last_changed_only_when_it_carries_the_update_stamp(client):
    # view=rowInfo's shape is UNCONFIRMED (reference §4): a row that cannot tell makes the poll list changes.
    created, updated = "2026-06-10 09:15", "2026-06-12 14:30"
    assert client.row_changed_at({"rowInfo.createdAt": created, "rowInfo.updatedAt": updated}) == datetime(
        2026, 6, 12, 12, 30, tzinfo=UTC
    )  # the API user's zone (Prague, summer)
    assert client.row_changed_at({"rowInfo.createdAt": created, "rowInfo.updatedAt": None}) == datetime(
        2026, 6, 10, 7, 15, tzinfo=UTC
    )
    assert client.row_changed_at({"rowInfo.createdAt": created}) is None
    assert client.row_changed_at({"rowInfo.createdAt": created, "rowInfo.updatedAt": "yesterday"}) is None
