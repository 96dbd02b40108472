"""OutlookClient against the Graph sandbox: what it sends, what it returns, how it fails."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import requests
from django import db

from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.providers.outlook import (
    LINK_PROPERTY_ID,
    PREFER,
    OutlookClient,
    acquire_token,
    graph_attendee,
    graph_datetime,
    link_uid_of,
    text_body,
    token_error,
)
from tests.outlook_fixtures import GRAPH_HOST, OUTLOOK_TENANT_ID

pytestmark = pytest.mark.django_db

WINDOW = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
GRAPH = f"{GRAPH_HOST}/v1.0"


def at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def client(outlook_connection) -> OutlookClient:
    return OutlookClient(outlook_connection)


@pytest.fixture
def graph_token(outlook_connection) -> str:
    return acquire_token(outlook_connection)


def graph_requests(http_mock) -> list:
    return [call.request for call in http_mock.calls if "graph.sandbox.test" in call.request.url]


def new_event(subject: str = "Demo", day: int = 2, **extra) -> dict:
    return {
        "subject": subject,
        "body": text_body("Agenda"),
        "start": graph_datetime(at(day)),
        "end": graph_datetime(at(day, 10)),
        **extra,
    }


# --- headers and tokens -----------------------------------------------------------------------------


def test_every_graph_request_carries_the_bearer_token_and_the_prefer_header(client, alice, http_mock):
    client.list_users()
    client.delta(alice, start=WINDOW[0], end=WINDOW[1])

    sent = graph_requests(http_mock)
    assert len(sent) == 2
    for request in sent:
        assert request.headers["Authorization"].startswith("Bearer sbx.")
        assert 'IdType="ImmutableId"' in request.headers["Prefer"]
        assert 'outlook.timezone="UTC"' in request.headers["Prefer"]
        assert 'outlook.body-content-type="text"' in request.headers["Prefer"]
    assert sent[1].headers["Prefer"] == f"{PREFER}, odata.maxpagesize=100"


def test_the_token_comes_from_msal_once_and_is_reused_from_its_cache(client, alice, outlook_sandbox, http_mock):
    client.list_users()
    OutlookClient(client.connection).list_users()

    token_posts = [c.request for c in http_mock.calls if c.request.url.endswith("/oauth2/v2.0/token")]
    assert len(token_posts) == 1
    form = token_posts[0].body
    assert "grant_type=client_credentials" in form
    assert "scope=https%3A%2F%2Fgraph.sandbox.test%2F.default" in form
    assert "client_secret=sandbox-client-secret" in form
    assert outlook_sandbox.count("GET", r"v2.0/.well-known/openid-configuration") == 1


def test_a_wrong_client_secret_is_an_auth_error_in_plain_words(client, settings):
    settings.MICROSOFT_CLIENT_SECRET = "not-the-secret"

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.kind == ErrorKind.AUTH
    assert "client secret is wrong or has expired" in caught.value.message
    assert "not-the-secret" not in caught.value.message


def test_revoked_consent_is_an_auth_error_asking_for_admin_consent(client, outlook_sandbox):
    outlook_sandbox.revoke_consent(OUTLOOK_TENANT_ID)

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.kind == ErrorKind.AUTH
    assert "admin consent" in caught.value.message


def test_an_unknown_tenant_is_an_auth_error_naming_the_tenant(client):
    client.connection.tenant_id = "99999999-9999-9999-9999-999999999999"

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.kind == ErrorKind.AUTH
    assert "99999999-9999-9999-9999-999999999999" in caught.value.message


def test_an_http_authority_is_reported_as_such_not_as_an_unknown_tenant(client, settings):
    settings.MICROSOFT_CLOUDS = {**settings.MICROSOFT_CLOUDS, "global": {"graph": GRAPH, "authority": "http://login.x"}}

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.kind == ErrorKind.AUTH and caught.value.side == "outlook"
    assert caught.value.message.startswith(
        f"The sign-in authority must be an https address with the tenant in its path: http://login.x/{OUTLOOK_TENANT_ID}."
    )
    assert "does not know the tenant" not in caught.value.message


def test_a_malformed_tenant_id_is_reported_as_malformed(client):
    client.connection.tenant_id = "acme"

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.message.startswith("“acme” is not a valid tenant id: enter the tenant's GUID")


def test_an_authority_without_an_openid_configuration_says_so(client, outlook_sandbox):
    outlook_sandbox.inject_fault(200, body="<html>portal</html>", path=r"openid-configuration$")

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert "did not answer with a valid OpenID configuration" in caught.value.message


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ({"error": "unauthorized_client", "error_codes": [7000112]}, "app is disabled in tenant"),
        ({"error": "invalid_request", "error_codes": [53003]}, "Conditional Access policy"),
        ({"error": "invalid_tenant", "error_codes": [900023]}, "is not a valid tenant id"),
        ({"error": "invalid_resource", "error_codes": [500011]}, "check the connection's cloud"),
        ({"error": "unauthorized_client", "error_codes": [700016]}, "no admin consent"),
    ],
)
def test_each_token_refusal_names_what_to_fix(result, words):
    error = token_error(result, OUTLOOK_TENANT_ID)

    assert words in error.message and error.kind == ErrorKind.AUTH and error.side == "outlook"


# --- users ------------------------------------------------------------------------------------------


def test_list_users_follows_every_page(client, outlook_sandbox):
    outlook_sandbox.state["max_page_size"] = 2
    for n in range(5):
        outlook_sandbox.add_user(OUTLOOK_TENANT_ID, f"user{n}@acme.test", f"User {n}")

    users = client.list_users()

    assert [u["userPrincipalName"] for u in users] == [f"user{n}@acme.test" for n in range(5)]
    assert set(users[0]) == {"id", "mail", "userPrincipalName", "displayName"}
    assert outlook_sandbox.count("GET", r"^v1\.0/users$") == 3


# --- creating, reading, finding -----------------------------------------------------------------------


def test_create_event_posts_utc_times_a_transaction_id_and_our_link_property(client, alice, http_mock):
    created = client.create_event(alice, new_event(sensitivity="private", showAs="oof"), link_uid="link-1")

    posted = graph_requests(http_mock)[-1]
    body = json.loads(posted.body)
    assert posted.method == "POST" and posted.url.endswith(f"/users/{alice}/events")
    assert body["start"] == {"dateTime": "2026-03-02T09:00:00", "timeZone": "UTC"}
    assert body["body"] == {"contentType": "text", "content": "Agenda"}
    assert len(body["transactionId"]) == 36
    assert body["singleValueExtendedProperties"] == [{"id": LINK_PROPERTY_ID, "value": "link-1"}]
    assert created["start"] == {"dateTime": "2026-03-02T09:00:00.0000000", "timeZone": "UTC"}
    assert created["body"] == {"contentType": "text", "content": "Agenda"}
    assert created["sensitivity"] == "private" and created["showAs"] == "oof"
    assert created["id"].startswith("AAkALg")  # an immutable id
    assert "singleValueExtendedProperties" not in created  # Graph does not echo it


def test_get_event_returns_the_event_with_its_link_uid(client, alice):
    created = client.create_event(alice, new_event(), link_uid="link-1")

    event = client.get_event(alice, created["id"])

    assert event["subject"] == "Demo"
    assert link_uid_of(event) == "link-1"


def test_get_event_returns_none_for_a_deleted_event(client, alice, outlook_sandbox):
    created = client.create_event(alice, new_event(), link_uid="link-1")
    outlook_sandbox.person_delete_event(alice, created["id"])

    assert client.get_event(alice, created["id"]) is None


def test_html_bodies_written_in_outlook_come_back_as_text(client, alice, outlook_sandbox):
    event_id = outlook_sandbox.person_create_event(alice, "Call", at(3), at(3, 10))
    outlook_sandbox.state["events"][event_id]["body"] = {
        "contentType": "html",
        "content": "<html><head><style>p{}</style></head><body><p>Bring &amp; share</p><p>Line 2</p></body></html>",
    }

    assert client.get_event(alice, event_id)["body"] == {"contentType": "text", "content": "Bring & share\nLine 2"}


def test_after_a_crash_the_created_event_is_found_by_its_link_uid(client, alice, outlook_sandbox):
    client.create_event(alice, new_event(), link_uid="link-1")  # the reply was lost in the crash

    found = client.find_event_by_link_uid(alice, "link-1")

    assert found["subject"] == "Demo"
    assert link_uid_of(found) == "link-1"
    assert client.find_event_by_link_uid(alice, "link-2") is None


def test_a_create_retried_after_a_503_resends_the_same_transaction_id(client, alice, outlook_sandbox, http_mock):
    outlook_sandbox.inject_fault(503, path=r"events$", method="POST")

    client.create_event(alice, new_event(), link_uid="link-1")

    posts = [json.loads(r.body) for r in graph_requests(http_mock) if r.method == "POST"]
    assert len(posts) == 2
    assert posts[0]["transactionId"] == posts[1]["transactionId"]
    assert len(outlook_sandbox.events(alice)) == 1


def test_a_repeated_transaction_id_returns_the_event_already_created(client, alice, outlook_sandbox, http_mock):
    first = client.create_event(alice, new_event(), link_uid="link-1")
    body = json.loads(graph_requests(http_mock)[-1].body)

    again = client.session.request("POST", f"users/{alice}/events", json=body).json()

    assert again["id"] == first["id"]
    assert len(outlook_sandbox.events(alice)) == 1


# --- updating, deleting, cancelling --------------------------------------------------------------------


def test_a_retried_meeting_create_sends_one_invitation(client, alice, bob, outlook_sandbox):
    outlook_sandbox.inject_fault(502, path=r"events$", method="POST")

    client.create_event(alice, new_event(attendees=[graph_attendee("bob@acme.test")]), link_uid="link-1")

    assert [(m["kind"], m["to"]) for m in outlook_sandbox.sent_mail] == [("invitation", "bob@acme.test")]
    assert len(outlook_sandbox.events(bob)) == 1


def test_moving_an_occurrence_past_its_neighbour_is_a_validation_error(client, alice, outlook_sandbox):
    series = outlook_sandbox.person_create_event(alice, "Standup", at(2), at(2, 10), recurrence=daily(5))
    second = client.list_instances(alice, series, *WINDOW)[1]

    with pytest.raises(ProviderError) as caught:
        client.update_event(alice, second["id"], {"start": graph_datetime(at(4, 9)), "end": graph_datetime(at(4, 10))})

    assert caught.value.kind == ErrorKind.VALIDATION
    assert caught.value.code == "ErrorOccurrenceCrossingBoundary"


def test_update_event_patches_and_returns_the_new_version(client, alice, http_mock):
    created = client.create_event(alice, new_event(), link_uid="link-1")

    updated = client.update_event(alice, created["id"], {"subject": "Renamed", "start": graph_datetime(at(2, 8))})

    assert graph_requests(http_mock)[-1].method == "PATCH"
    assert updated["subject"] == "Renamed"
    assert updated["start"]["dateTime"] == "2026-03-02T08:00:00.0000000"
    assert updated["changeKey"] != created["changeKey"]


def test_patching_one_occurrence_turns_it_into_an_exception(client, alice, outlook_sandbox):
    series = outlook_sandbox.person_create_event(alice, "Standup", at(2), at(2, 10), recurrence=daily(5))
    second = client.list_instances(alice, series, *WINDOW)[1]

    updated = client.update_event(
        alice,
        second["id"],
        {"subject": "Standup (moved)", "start": graph_datetime(at(3, 11)), "end": graph_datetime(at(3, 12))},
    )

    assert updated["type"] == "exception" and updated["id"] == second["id"]
    instances = client.list_instances(alice, series, *WINDOW)
    assert [(i["type"], i["subject"]) for i in instances][:3] == [
        ("occurrence", "Standup"),
        ("exception", "Standup (moved)"),
        ("occurrence", "Standup"),
    ]


def test_delete_event_is_fine_when_the_event_is_already_gone(client, alice, outlook_sandbox):
    created = client.create_event(alice, new_event(), link_uid="link-1")

    client.delete_event(alice, created["id"])
    client.delete_event(alice, created["id"])

    assert outlook_sandbox.events(alice) == []
    assert outlook_sandbox.count("DELETE", r"events/") == 2


def test_cancel_event_sends_the_comment_and_cancels_the_meeting(client, alice, bob, outlook_sandbox, http_mock):
    created = client.create_event(alice, new_event(attendees=[graph_attendee("bob@acme.test")]), link_uid="link-1")

    client.cancel_event(alice, created["id"], "Customer cancelled")

    request = graph_requests(http_mock)[-1]
    assert request.url.endswith("/cancel") and b"Customer cancelled" in request.body
    assert [m["kind"] for m in outlook_sandbox.sent_mail] == ["invitation", "cancellation"]


def test_cancelling_someone_elses_meeting_is_a_validation_error(client, alice, bob, outlook_sandbox):
    outlook_sandbox.person_create_event(bob, "Bob's meeting", at(2), at(2, 10), attendees=["alice@acme.test"])
    copy = next(e for e in outlook_sandbox.events(alice))

    with pytest.raises(ProviderError) as caught:
        client.cancel_event(alice, copy["id"])

    assert caught.value.kind == ErrorKind.VALIDATION


# --- delta -------------------------------------------------------------------------------------------------


def test_the_first_delta_round_is_a_full_read_across_pages(client, alice, outlook_sandbox):
    ids = [outlook_sandbox.person_create_event(alice, f"E{n}", at(n + 2), at(n + 2, 10)) for n in range(5)]

    result = client.delta(alice, start=WINDOW[0], end=WINDOW[1], page_size=2)

    assert result.full is True
    assert sorted(e["id"] for e in result.events) == sorted(ids)  # replays deduplicated
    assert result.removed_ids == []
    assert "$deltatoken=" in result.delta_link
    assert outlook_sandbox.count("GET", r"calendarView/delta") == 3


def test_delta_keeps_the_last_word_on_each_id_across_pages(client, monkeypatch):
    pages = iter(
        [
            {"value": [{"id": "a", "v": 1}, {"id": "b", "v": 1}], "@odata.nextLink": "https://graph.sandbox.test/next"},
            {"value": [{"id": "a", "@removed": {"reason": "deleted"}}, {"id": "b", "v": 2}, {"id": "c", "v": 1}]},
            {"value": [{"id": "c", "@removed": {"reason": "deleted"}}, {"id": "c", "v": 2}], "@odata.deltaLink": "D"},
        ]
    )
    pages_with_links = [next(pages), next(pages) | {"@odata.nextLink": "https://graph.sandbox.test/last"}, next(pages)]
    monkeypatch.setattr(client, "_json", lambda *args, **kwargs: pages_with_links.pop(0))

    result = client.delta("u", start=WINDOW[0], end=WINDOW[1])

    assert result.events == [{"id": "b", "v": 2}, {"id": "c", "v": 2}]
    assert result.removed_ids == ["a"]
    assert result.delta_link == "D"


def test_an_incremental_round_returns_only_changes_and_deletions(client, alice, outlook_sandbox):
    kept = outlook_sandbox.person_create_event(alice, "Kept", at(2), at(2, 10))
    edited = outlook_sandbox.person_create_event(alice, "Edited", at(3), at(3, 10))
    deleted = outlook_sandbox.person_create_event(alice, "Deleted", at(4), at(4, 10))
    moved = outlook_sandbox.person_create_event(alice, "Moved away", at(5), at(5, 10))
    first = client.delta(alice, start=WINDOW[0], end=WINDOW[1])
    outlook_sandbox.person_edit_event(alice, edited, subject="Edited again")
    outlook_sandbox.person_delete_event(alice, deleted)
    outlook_sandbox.person_edit_event(
        alice, moved, start=at(5) + timedelta(days=60), end=at(5, 10) + timedelta(days=60)
    )
    added = outlook_sandbox.person_create_event(alice, "New", at(6), at(6, 10))

    second = client.delta(alice, delta_link=first.delta_link, start=WINDOW[0], end=WINDOW[1])

    assert second.full is False
    assert {e["id"]: e["subject"] for e in second.events} == {edited: "Edited again", added: "New"}
    assert sorted(second.removed_ids) == sorted([deleted, moved])
    assert kept not in second.removed_ids


def test_an_expired_delta_link_becomes_a_full_read_not_an_error(client, alice, outlook_sandbox):
    outlook_sandbox.person_create_event(alice, "Kept", at(2), at(2, 10))
    first = client.delta(alice, start=WINDOW[0], end=WINDOW[1])
    outlook_sandbox.expire_delta_tokens(alice)

    again = client.delta(alice, delta_link=first.delta_link, start=WINDOW[0], end=WINDOW[1])

    assert again.full is True
    assert [e["subject"] for e in again.events] == ["Kept"]
    assert again.delta_link != first.delta_link


def test_series_arrive_in_delta_as_occurrences_without_the_master(client, alice, outlook_sandbox):
    series = outlook_sandbox.person_create_event(alice, "Standup", at(2), at(2, 10), recurrence=daily(3))

    result = client.delta(alice, start=WINDOW[0], end=WINDOW[1])

    assert [e["type"] for e in result.events] == ["occurrence"] * 3
    assert {e["seriesMasterId"] for e in result.events} == {series}


def test_list_instances_reads_the_series_in_the_window(client, alice, outlook_sandbox, http_mock):
    series = outlook_sandbox.person_create_event(alice, "Standup", at(2), at(2, 10), recurrence=daily(30))

    instances = client.list_instances(alice, series, at(10, 0), at(20, 0))

    assert [i["start"]["dateTime"][:10] for i in instances] == [f"2026-03-{d:02d}" for d in range(10, 20)]
    assert "startDateTime=2026-03-10T00%3A00%3A00Z" in graph_requests(http_mock)[0].url


# --- throttling and errors -------------------------------------------------------------------------------


def test_a_429_with_a_fractional_retry_after_is_waited_for_then_retried(client, alice, outlook_sandbox, retry_waits):
    outlook_sandbox.throttle(retry_after="2.128")

    users = client.list_users()

    assert [u["id"] for u in users] == [alice]
    assert retry_waits == [2.128]
    assert outlook_sandbox.count("GET", r"^v1\.0/users$") == 2


def test_throttling_that_does_not_end_gives_up_after_bounded_retries(client, alice, outlook_sandbox, retry_waits):
    outlook_sandbox.throttle(times=10, retry_after="1", status=503)

    with pytest.raises(ProviderError) as caught:
        client.list_users()

    assert caught.value.kind == ErrorKind.TRANSIENT
    assert retry_waits == [1.0, 1.0, 1.0]
    assert outlook_sandbox.count("GET", r"^v1\.0/users$") == 4


def test_a_mailbox_outside_the_application_access_policy_is_a_permission_error(client, alice, outlook_sandbox):
    outlook_sandbox.set_mailbox_access(alice, False)

    with pytest.raises(ProviderError) as caught:
        client.delta(alice, start=WINDOW[0], end=WINDOW[1])

    assert caught.value.kind == ErrorKind.PERMISSION
    assert caught.value.code == "ErrorAccessDenied"
    assert "application access policy" in caught.value.message and alice in caught.value.message


def run_in_threads(count: int, work) -> list:
    results: list = []

    def run():
        try:
            results.append(work())
        except Exception as error:  # noqa: BLE001 - the test inspects what each thread got
            results.append(error)
        finally:
            db.connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_the_sandbox_refuses_a_fifth_concurrent_request_to_one_mailbox(alice, outlook_sandbox, graph_token):
    outlook_sandbox.inject_fault(0, times=6, delay=0.2, path="events")
    url = f"https://graph.sandbox.test/v1.0/users/{alice}/events"

    replies = run_in_threads(6, lambda: requests.get(url, headers={"Authorization": f"Bearer {graph_token}"}))

    assert sorted(r.status_code for r in replies) == [200] * 4 + [429] * 2
    assert {r.json()["error"]["code"] for r in replies if r.status_code == 429} == {"ApplicationThrottled"}


@pytest.mark.django_db(transaction=True)
def test_the_client_keeps_to_four_concurrent_requests_per_mailbox(outlook_connection, alice, outlook_sandbox):
    outlook_sandbox.inject_fault(0, times=6, delay=0.2, path="events")
    OutlookClient(outlook_connection).list_users()  # the token, once

    results = run_in_threads(6, lambda: OutlookClient(outlook_connection).find_event_by_link_uid(alice, "x"))

    assert results == [None] * 6
    assert outlook_sandbox.peak_in_flight[alice] == 4
    assert outlook_sandbox.count("GET", r"/events$") == 6  # none refused, none retried


def test_requests_are_limited_per_mailbox(client, alice):
    key = client.session.concurrency_key
    assert key(f"https://graph.sandbox.test/v1.0/users/{alice}/events") == ("graph", alice)
    assert key("https://graph.sandbox.test/v1.0/subscriptions") == ("graph", OUTLOOK_TENANT_ID)
    assert client.session.concurrency_limit == 4


# --- subscriptions and connection test ---------------------------------------------------------------------


def test_subscriptions_are_created_renewed_and_deleted(client, alice, outlook_sandbox, http_mock):
    outlook_sandbox.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    created = client.create_subscription(
        alice,
        notification_url="https://portal.test/hooks/graph",
        lifecycle_url="https://portal.test/hooks/graph/lifecycle",
        client_state="s3cret",
        expires_at=datetime(2026, 3, 3, tzinfo=UTC),
    )
    body = json.loads(graph_requests(http_mock)[-1].body)
    assert body == {
        "changeType": "created,updated,deleted",
        "notificationUrl": "https://portal.test/hooks/graph",
        "lifecycleNotificationUrl": "https://portal.test/hooks/graph/lifecycle",
        "resource": f"/users/{alice}/events",
        "expirationDateTime": "2026-03-03T00:00:00Z",
        "clientState": "s3cret",
    }

    renewed = client.renew_subscription(created["id"], datetime(2026, 3, 7, tzinfo=UTC))
    client.delete_subscription(created["id"])
    client.delete_subscription(created["id"])

    assert renewed["expirationDateTime"].startswith("2026-03-07T00:00:00")
    assert outlook_sandbox.state["subscriptions"] == {}


def test_a_subscription_longer_than_a_week_is_refused(client, alice, outlook_sandbox):
    outlook_sandbox.set_now(datetime(2026, 3, 1, tzinfo=UTC))

    with pytest.raises(ProviderError) as caught:
        client.create_subscription(
            alice, notification_url="https://p.test/h", lifecycle_url="https://p.test/l", client_state="s",
            expires_at=datetime(2026, 3, 9, tzinfo=UTC),
        )  # fmt: skip

    assert caught.value.kind == ErrorKind.VALIDATION


def test_test_connection_reports_success_in_plain_words(client, alice):
    check = client.test_connection()

    assert check.ok is True
    assert "calendars are readable" in check.message


def test_test_connection_explains_a_mailbox_outside_the_policy(client, alice, outlook_sandbox):
    outlook_sandbox.set_mailbox_access(alice, False)

    check = client.test_connection(alice)

    assert check.ok is False
    assert "application access policy" in check.message


def test_test_connection_explains_a_wrong_secret(client, settings):
    settings.MICROSOFT_CLIENT_SECRET = "wrong"

    check = client.test_connection()

    assert check.ok is False and "secret" in check.message


# --- helpers -----------------------------------------------------------------------------------------------


def daily(count: int) -> dict:
    return {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "startDate": "2026-03-02", "numberOfOccurrences": count},
    }
