"""Issue 8, provider side: no blind resend of a create, run deadlines, token renewal, scrubbed errors, sides."""

from __future__ import annotations

import base64
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django import db

from syncapp.models import ConnectionStatus, Organization, RaynetConnection, SyncLogEntry, SyncRun
from syncapp.providers import base
from syncapp.providers.base import ErrorKind, ProviderError, concurrency_slot, scrub_secrets
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import MAX_CONNECTIONS, RaynetClient
from syncapp.sync.service import sync_organization
from tests.outlook_fixtures import OUTLOOK_CLIENT_SECRET, OUTLOOK_TENANT_ID
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER
from tests.sync_fixtures import soon

pytestmark = pytest.mark.django_db

BASIC = base64.b64encode(f"{RAYNET_API_USER}:{RAYNET_API_KEY}".encode()).decode()


@pytest.fixture
def raynet(raynet_connection) -> RaynetClient:
    return RaynetClient(raynet_connection)


@pytest.fixture
def outlook(outlook_connection) -> OutlookClient:
    return OutlookClient(outlook_connection)


def meeting_fields(owner: int, title: str = "Visit") -> dict:
    return {
        "title": title,
        "priority": "DEFAULT",
        "owner": owner,
        "scheduledFrom": soon(2, 9),
        "scheduledTill": soon(2, 10),
    }


def token_requests(outlook_sandbox) -> int:
    return outlook_sandbox.count("POST", r"oauth2/v2\.0/token$")


# --- point 2: a create is never resent once it may have reached Raynet ---------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503, "after": True},  # done, then the reply was lost in a 503
        {"status": 0, "after": True, "disconnect": "timeout"},  # done, then no reply in time
        {"status": 0, "after": True, "disconnect": "reset"},  # done, then the connection was reset
        {"status": 502},  # a gateway error: whether Raynet did it cannot be known
    ],
    ids=["503-after-processing", "timeout-after-send", "reset-after-send", "502"],
)
def test_a_create_that_may_have_reached_raynet_is_sent_once_and_says_so(raynet, raynet_sandbox, jana, fault):
    raynet_sandbox.inject_fault(method="PUT", path=r"^meeting/$", **fault)

    with pytest.raises(ProviderError) as caught:
        raynet.create_activity("meeting", meeting_fields(jana))

    assert raynet_sandbox.count("PUT", r"^meeting/$") == 1
    assert caught.value.kind == ErrorKind.TRANSIENT and caught.value.maybe_applied
    assert caught.value.side == "raynet" and caught.value.message.startswith("Raynet ")
    assert len(raynet_sandbox.activities("meeting")) == (1 if fault.get("after") else 0)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 0, "disconnect": "refused"},
        {"status": 429, "body": {"message": "Too many concurrent connections (limit 4)."}},
    ],
    ids=["connection-refused", "429-too-many-connections"],
)
def test_a_create_refused_before_processing_is_sent_again(raynet, raynet_sandbox, jana, retry_waits, fault):
    raynet_sandbox.inject_fault(method="PUT", path=r"^meeting/$", **fault)

    activity_id = raynet.create_activity("meeting", meeting_fields(jana))

    assert raynet_sandbox.count("PUT", r"^meeting/$") == 2
    assert [record["id"] for record in raynet_sandbox.activities("meeting")] == [activity_id]
    assert len(retry_waits) == 1


def test_adding_a_participant_is_not_resent_after_a_lost_reply(raynet, raynet_sandbox, jana):
    meeting = raynet_sandbox.ui_create_activity("meeting", jana, "Visit", soon(2, 9), soon(2, 10))
    customer = raynet_sandbox.add_person("jan@customer.test", "Jan Zakaznik")
    raynet_sandbox.inject_fault(503, method="POST", path=rf"^meeting/{meeting}/$", after=True)

    with pytest.raises(ProviderError) as caught:
        raynet.update_activity("meeting", meeting, {"participants": [{"person": customer}]})

    assert caught.value.maybe_applied
    assert raynet_sandbox.count("POST", rf"^meeting/{meeting}/$") == 1
    added = [p for p in raynet_sandbox.activity("meeting", meeting)["participants"] if p.get("person") == customer]
    assert len(added) == 1


def test_updates_reads_and_deletes_keep_retrying_after_a_lost_reply(raynet, raynet_sandbox, jana, retry_waits):
    meeting = raynet_sandbox.ui_create_activity("meeting", jana, "Visit", soon(2, 9), soon(2, 10))
    raynet_sandbox.inject_fault(503, method="POST", after=True)
    raynet_sandbox.inject_fault(503, method="GET")
    raynet_sandbox.inject_fault(0, method="DELETE", after=True, disconnect="timeout")

    raynet.update_activity("meeting", meeting, {"title": "Visit (moved)"})
    assert raynet.get_activity("meeting", meeting)["title"] == "Visit (moved)"
    raynet.delete_activity("meeting", meeting)

    assert raynet_sandbox.count("POST") == 2 and raynet_sandbox.count("DELETE") == 2
    assert raynet_sandbox.activity("meeting", meeting) is None


# --- point 7: the run deadline bounds every wait ---------------------------------------------------------------


def test_a_retry_wait_past_the_deadline_is_not_slept_but_raised_with_its_retry_after(
    raynet, raynet_sandbox, retry_waits
):
    raynet_sandbox.inject_fault(429, times=3, headers={"Retry-After": "30"}, body={"message": "Too many"})
    raynet.session.deadline = time.monotonic() + 10

    with pytest.raises(ProviderError) as caught:
        raynet.list_activities("meeting")

    assert retry_waits == []
    assert caught.value.kind == ErrorKind.RATE_LIMITED and caught.value.retry_after == 30
    assert raynet_sandbox.count() == 1


def test_a_backoff_without_retry_after_past_the_deadline_says_how_long_it_would_have_waited(
    outlook, alice, outlook_sandbox, retry_waits
):
    outlook_sandbox.inject_fault(503, times=5, path=r"^v1\.0/users$")
    outlook.session.deadline = time.monotonic() + 2.5  # room for the 1 s and 2 s back-offs, not the 4 s one

    with pytest.raises(ProviderError) as caught:
        outlook.list_users()

    assert retry_waits == [1, 2]
    assert caught.value.retry_after == 4 and caught.value.side == "outlook"


# --- point 4: an expired or revoked Graph token is renewed once ------------------------------------------------


def test_a_token_that_expired_early_is_renewed_silently(outlook, alice, outlook_sandbox):
    outlook.list_users()
    outlook_sandbox.set_now(outlook_sandbox.now() + timedelta(hours=2))  # MSAL still thinks it is valid

    assert [user["id"] for user in outlook.list_users()] == [alice]
    assert token_requests(outlook_sandbox) == 2
    assert outlook_sandbox.count("GET", r"^v1\.0/users$") == 3  # ok, 401, ok with the new token


def test_a_revoked_token_is_renewed_and_the_request_sent_again(outlook, alice, outlook_sandbox):
    event = outlook.create_event(alice, {"subject": "Demo"} | window_times(), link_uid="u-1")
    outlook_sandbox.revoke_tokens()

    outlook.update_event(alice, event["id"], {"subject": "Demo (moved)"})

    assert outlook.get_event(alice, event["id"])["subject"] == "Demo (moved)"
    assert token_requests(outlook_sandbox) == 2


def test_a_token_refused_again_after_renewal_is_a_permanent_outlook_auth_error(outlook, alice, outlook_sandbox):
    refusal = {"error": {"code": "InvalidAuthenticationToken", "message": "Access token validation failure."}}
    outlook_sandbox.inject_fault(401, times=2, body=refusal, path=r"^v1\.0/users$")

    with pytest.raises(ProviderError) as caught:
        outlook.list_users()

    assert caught.value.kind == ErrorKind.AUTH and caught.value.permanent
    assert caught.value.side == "outlook"
    assert outlook_sandbox.count("GET", r"^v1\.0/users$") == 2
    assert token_requests(outlook_sandbox) == 2


def test_a_token_expiring_in_the_middle_of_a_run_is_renewed_and_the_run_succeeds(world):
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "One", soon(3, 9), soon(3, 10))
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Two", soon(3, 11), soon(3, 12))
    world.outlook.revoke_tokens(after_requests=2)

    world.sync()

    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["One"]
    assert [e["subject"] for e in world.outlook_events(world.bob)] == ["Two"]
    assert token_requests(world.outlook) == 2
    for connection in (world.org.raynet, world.org.microsoft):
        connection.refresh_from_db()
        assert connection.status != ConnectionStatus.DISABLED


def test_consent_revoked_mid_run_stops_the_microsoft_connection_not_the_raynet_one(world):
    world.outlook.person_create_event(world.alice.mailbox_id, "Lunch", soon(2, 11), soon(2, 12))
    world.outlook.revoke_consent(OUTLOOK_TENANT_ID)
    world.outlook.revoke_tokens()

    sync_organization(organization=world.org, trigger=SyncRun.Trigger.MANUAL)

    raynet, microsoft = world.org.raynet, world.org.microsoft
    raynet.refresh_from_db()
    microsoft.refresh_from_db()
    assert microsoft.status == ConnectionStatus.DISABLED and "admin consent" in microsoft.last_error
    assert raynet.status != ConnectionStatus.DISABLED


def window_times() -> dict:
    from syncapp.providers.outlook import graph_datetime

    return {"start": graph_datetime(soon(2, 9)), "end": graph_datetime(soon(2, 10))}


# --- sides ---------------------------------------------------------------------------------------------------


def test_every_raynet_error_says_it_is_raynets(raynet, raynet_sandbox, raynet_connection):
    raynet_sandbox.inject_fault(0, disconnect="refused", times=4)
    failures = []
    for call in (lambda: raynet.list_activities("meeting"), lambda: raynet.update_activity("meeting", 1, {"owner": 2})):
        with pytest.raises(ProviderError) as caught:
            call()
        failures.append(caught.value)
    raynet_sandbox.state["api_keys"][RAYNET_API_USER] = "rotated"
    with pytest.raises(ProviderError) as caught:
        raynet.get_activity("meeting", 1)
    failures.append(caught.value)

    assert [f.side for f in failures] == ["raynet"] * 3


def test_every_outlook_error_says_it_is_outlooks(outlook, alice, outlook_sandbox):
    with pytest.raises(ProviderError) as missing:
        outlook.update_event(alice, "AAkALgAAAA=", {"subject": "x"})
    outlook_sandbox.revoke_consent(OUTLOOK_TENANT_ID)
    outlook_sandbox.revoke_tokens()
    with pytest.raises(ProviderError) as token:
        outlook.list_users()

    assert (missing.value.side, token.value.side) == ("outlook", "outlook")


# --- point 8: no secret leaves the provider layer ----------------------------------------------------------------


def test_scrub_secrets_removes_keys_tokens_and_credential_values_and_trims():
    text = (
        f"key {RAYNET_API_KEY}; header Authorization: Basic {BASIC}; bearer Bearer eyJ0eXAi.abc-def_1; "
        f'form client_secret={OUTLOOK_CLIENT_SECRET}&scope=x; json {{"client_secret": "s3cr3t-value"}}; '
        '{"secretToken": "hook-token-1", "clientState": "state-1"}; '
        f"b64 {base64.b64encode(RAYNET_API_KEY.encode()).decode()} " + "x" * 400
    )

    scrubbed = scrub_secrets(text, secrets=[RAYNET_API_KEY])

    for leaked in (RAYNET_API_KEY, BASIC, "eyJ0eXAi", OUTLOOK_CLIENT_SECRET, "s3cr3t-value", "hook-token", "state-1"):
        assert leaked not in scrubbed
    assert base64.b64encode(RAYNET_API_KEY.encode()).decode() not in scrubbed
    assert scrubbed.startswith("key [redacted]; header Authorization: [redacted]")
    assert len(scrubbed) <= 300 and scrubbed.endswith("…")


def test_a_raynet_error_that_echoes_the_credentials_is_stored_nowhere(world):
    echo = (
        f"Bad request from {RAYNET_API_USER} with key {RAYNET_API_KEY} "
        f"(Authorization: Basic {BASIC}) and apiKey={RAYNET_API_KEY}"
    )
    world.outlook.person_create_event(world.alice.mailbox_id, "Lunch", soon(2, 11), soon(2, 12))
    world.raynet.inject_fault(400, times=20, body={"message": echo}, method="PUT")
    world.raynet.inject_fault(500, times=20, body={"message": echo}, method="GET")

    sync_organization(organization=world.org, trigger=SyncRun.Trigger.MANUAL)

    raynet = world.org.raynet
    raynet.refresh_from_db()
    stored = [raynet.last_error] + [f"{r.error}" for r in SyncRun.objects.all()]
    stored += [f"{e.reason} {e.details}" for e in SyncLogEntry.objects.all()]
    stored += [m.health_reason for m in world.org.mappings.all()]
    assert any("Raynet says" in text for text in stored)  # the upstream's words are kept, without the key
    for text in stored:
        assert RAYNET_API_KEY not in text and BASIC not in text


def test_a_graph_error_that_echoes_the_token_and_secret_keeps_neither(outlook, alice, outlook_sandbox):
    outlook.list_users()
    token = next(iter(outlook_sandbox.state["access_tokens"]))
    echo = {"error": {"code": "BadRequest", "message": f"bad token {token} for client_secret={OUTLOOK_CLIENT_SECRET}"}}
    outlook_sandbox.inject_fault(400, body=echo, path=r"^v1\.0/users$")

    with pytest.raises(ProviderError) as caught:
        outlook.list_users()

    assert token not in str(caught.value) and OUTLOOK_CLIENT_SECRET not in caught.value.message


# --- a whole response that is not JSON ---------------------------------------------------------------------------


def test_a_raynet_answer_that_is_not_json_is_a_transient_error_in_plain_words(raynet, raynet_sandbox, retry_waits):
    raynet_sandbox.inject_fault(200, times=4, body="<html>Maintenance</html>", headers={"Content-Type": "text/html"})

    with pytest.raises(ProviderError) as caught:
        raynet.list_activities("meeting")

    assert caught.value.kind == ErrorKind.TRANSIENT and caught.value.side == "raynet"
    assert "not valid JSON (HTTP 200, text/html)" in caught.value.message


def test_a_graph_answer_that_is_not_json_is_a_transient_error_in_plain_words(outlook, alice, outlook_sandbox):
    outlook_sandbox.inject_fault(200, body="{truncated", path=r"^v1\.0/users$")

    with pytest.raises(ProviderError) as caught:
        outlook.list_users()

    assert caught.value.kind == ErrorKind.TRANSIENT and caught.value.side == "outlook"
    assert "Microsoft Graph answered with something that is not valid JSON" in caught.value.message


# --- point 9: a key no configured key decrypts ----------------------------------------------------------------


def test_a_sync_with_an_undecryptable_key_stops_the_raynet_connection_in_plain_words(world, settings):
    settings.SECRET_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    organization = Organization.objects.get(pk=world.org.pk)  # as a worker loads it: nothing decrypted yet

    runs = sync_organization(organization=organization, trigger=SyncRun.Trigger.MANUAL)

    raynet = RaynetConnection.objects.get(organization=organization)
    assert runs[0].status == SyncRun.Status.FAILED  # the next mailbox is skipped: the connection is stopped
    assert all("cannot be decrypted: enter the key again" in run.error for run in runs)
    assert raynet.status == ConnectionStatus.DISABLED
    assert raynet.last_error.endswith("The stored Raynet API key cannot be decrypted: enter the key again.")
    assert world.raynet.count() == 0


def test_waiting_for_a_free_connection_slot_ends_at_the_deadline(raynet, raynet_sandbox, retry_waits):
    namespace, key = raynet._concurrency_key(raynet.session.url("meeting/"))
    holding, release = threading.Semaphore(0), threading.Event()

    def hold_a_slot() -> None:  # other processes using all 4 connections to this Raynet
        try:
            with concurrency_slot(namespace, key, MAX_CONNECTIONS):
                holding.release()
                release.wait(10)
        finally:
            db.connection.close()

    holders = [threading.Thread(target=hold_a_slot) for _ in range(MAX_CONNECTIONS)]
    for holder in holders:
        holder.start()
    try:
        for _ in holders:
            assert holding.acquire(timeout=10)
        raynet.session.deadline = time.monotonic() + 0.3
        with pytest.raises(ProviderError) as caught:
            raynet.list_activities("meeting")
    finally:
        release.set()
        for holder in holders:
            holder.join()

    assert caught.value.kind == ErrorKind.RATE_LIMITED and not caught.value.maybe_applied
    assert raynet_sandbox.count() == 0 and retry_waits == []


@pytest.fixture
def slot_timeline(monkeypatch, world) -> list[tuple[str, str, int]]:
    """(taken / given back, the API's slot namespace, Raynet requests so far) for every concurrency slot."""
    timeline = []
    real_slot = base.concurrency_slot

    @contextmanager
    def recorded(namespace, key, limit, **kwargs):
        with real_slot(namespace, key, limit, **kwargs) as slot:
            timeline.append(("taken", namespace, world.raynet.count()))
            try:
                yield slot
            finally:
                timeline.append(("given back", namespace, world.raynet.count()))

    monkeypatch.setattr(base, "concurrency_slot", recorded)
    return timeline


def test_an_idle_cycle_takes_the_raynet_slot_once_for_the_listing_and_no_mailbox_takes_it(world, slot_timeline):
    world.sync()
    world.sync()  # the echoes of the first sync settle
    world.raynet.reset_calls()
    slot_timeline.clear()

    world.sync()

    assert world.raynet.count() == 2  # the organization's id scan (nothing changed); the mailboxes ask nothing
    assert [event for event in slot_timeline if event[1] == "raynet"] == [
        ("taken", "raynet", 0),
        ("given back", "raynet", 2),
    ]
    assert [event[0] for event in slot_timeline if event[1] == "graph"] == ["taken", "given back"] * 2


def test_a_run_that_writes_to_raynet_holds_the_raynet_slot_from_its_first_request_to_its_end(world, slot_timeline):
    world.sync()
    world.sync()
    world.outlook.person_create_event(world.bob.mailbox_id, "Gym", soon(1, 18), soon(1, 19))
    world.raynet.reset_calls()
    slot_timeline.clear()

    world.sync()

    requests = world.raynet.count()
    assert world.raynet.count("POST") + world.raynet.count("PUT") >= 1  # Bob's run wrote the event to Raynet
    assert [event for event in slot_timeline if event[1] == "raynet"] == [
        ("taken", "raynet", 0),
        ("given back", "raynet", 2),  # the id scan (Raynet holds nothing in the window: no change listing)
        ("taken", "raynet", 2),
        ("given back", "raynet", requests),  # Bob's run: once, for all of its requests
    ]
