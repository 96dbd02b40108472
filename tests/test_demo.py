"""The demo (`make run`): the seed on the sandboxes served over HTTPS by the product, as `make run` serves them.

The seed goes through the portal's own workflows; the sandboxes call our real /hooks/ endpoints over TLS.
Tasks wait in the broker as with a worker (the seed runs its mailboxes' requested runs itself); tests run
what was queued with `run_queued`.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django_q.conf import Conf

from syncapp.demo import (
    DEMO_ADMIN_EMAIL,
    DEMO_KEY,
    DEMO_ORGANIZATION_CODE,
    DEMO_PARTNER,
    DEMO_TENANT_ID,
    EMMA,
    JANA,
    KAREL,
    LUCIE,
    MARTIN,
    PETR,
    TOMAS,
    demo_seed,
)
from syncapp.models import ConnectionStatus, EventLink, SyncLogEntry, SyncRun, UserMapping
from syncapp.providers.outlook import reset_token_apps
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from syncapp.sandbox.tls import demo_certificates, https_server
from tests.test_webhooks import run_queued

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def demo_certificates_dir(tmp_path_factory):
    return demo_certificates(tmp_path_factory.mktemp("demo-tls"))


@pytest.fixture
def demo_https(demo_certificates_dir, settings, monkeypatch, retry_waits):
    """The app over HTTPS with the demo's CA, on a free port, and the settings `make run` derives from it."""
    server = https_server("127.0.0.1", 0, demo_certificates_dir)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    settings.DEMO_HTTPS_URL = settings.PUBLIC_BASE_URL = url
    settings.SANDBOX_CA_BUNDLE = str(demo_certificates_dir.bundle)
    settings.MICROSOFT_CLIENT_ID, settings.MICROSOFT_CLIENT_SECRET = "raysync-demo-app", "demo-app-secret"
    graph = f"{url}/sandbox/graph/{DEMO_KEY}"
    settings.MICROSOFT_CLOUDS = {**settings.MICROSOFT_CLOUDS, "global": {"graph": f"{graph}/v1.0", "authority": graph}}
    monkeypatch.setattr(Conf, "SYNC", False)  # as with a worker: what the endpoints queue waits in the broker
    reset_token_apps()
    yield url
    reset_token_apps()
    server.shutdown()
    server.server_close()


def sandboxes() -> tuple[RaynetSandbox, GraphSandbox]:
    """Snapshots of both demo sandboxes' stored state."""
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet, stored_sandbox(GraphSandbox, DEMO_KEY) as outlook:
        return raynet, outlook


def writes(raynet: RaynetSandbox, outlook: GraphSandbox) -> dict[str, int]:
    return {
        "raynet": sum(raynet.count(method) for method in ("PUT", "POST", "DELETE")),
        "outlook": sum(outlook.count(method, r"^v1\.0/users") for method in ("POST", "PATCH", "DELETE")),
    }


def reset_calls() -> None:
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet, stored_sandbox(GraphSandbox, DEMO_KEY) as outlook:
        raynet.reset_calls()
        outlook.reset_calls()


def demo_counts(seed) -> dict[str, int]:
    raynet, outlook = sandboxes()
    return {
        "raynet activities": len(raynet.activities("meeting")) + len(raynet.activities("event")),
        "outlook events": sum(len(outlook.events(m.outlook_user_id)) for m in seed.organization.mappings.all()),
        "sent mail": len(outlook.sent_mail),
        "links": EventLink.objects.filter(organization=seed.organization).count(),
        "mappings": seed.organization.mappings.count(),
    }


def people(seed) -> dict[str, UserMapping]:
    return {m.raynet_email: m for m in seed.organization.mappings.all()}


def raynet_titled(raynet: RaynetSandbox, title: str) -> list[dict]:
    return [r for entity in ("meeting", "event") for r in raynet.activities(entity) if r["title"] == title]


def outlook_titled(outlook: GraphSandbox, mapping: UserMapping, title: str) -> list[dict]:
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    return [e for e in outlook.occurrences(mapping.outlook_user_id, start, end) if e["subject"] == title]


def test_the_seeded_demo_shows_each_policy_and_a_second_seed_changes_nothing(demo_https):
    seed = demo_seed()

    organization, mapped = seed.organization, people(seed)
    assert seed.created and organization.code == DEMO_ORGANIZATION_CODE
    raynet, outlook = sandboxes()
    # Connected through the portal's workflows, MSAL's real client-credentials flow over TLS included.
    assert ["GET", f"{DEMO_TENANT_ID}/v2.0/.well-known/openid-configuration"] in outlook.state["calls"]
    assert ["POST", f"{DEMO_TENANT_ID}/oauth2/v2.0/token"] in outlook.state["calls"]
    assert organization.raynet.status == organization.microsoft.status == ConnectionStatus.OK
    assert organization.memberships.get().user.email == DEMO_ADMIN_EMAIL
    assert set(mapped) == {person.email for person in (JANA, PETR, LUCIE, TOMAS, EMMA)}
    assert all(m.enabled and m.subscription_id in outlook.state["subscriptions"] for m in mapped.values())
    [webhook] = raynet.state["webhooks"]
    assert webhook["url"] == f"{demo_https}/hooks/raynet/{organization.code}/"

    # A Raynet client meeting reached Outlook, whose invitation went to the customer.
    [meeting] = outlook_titled(outlook, mapped[JANA.email], "Pivovar Hora: nabídka výčepního zařízení")
    assert [a["emailAddress"]["address"] for a in meeting["attendees"]] == [MARTIN.email]
    assert [m["to"] for m in outlook.sent_mail if m["subject"] == meeting["subject"]] == [MARTIN.email]
    # An Outlook presentation for a customer is a Raynet event with the customer as participant.
    [presentation] = raynet_titled(raynet, "Prezentace pro Stavby Beneš")
    karel = next(p["id"] for p in raynet.state["persons"].values() if p["email"] == KAREL.email)
    assert karel in {p["person"] for p in presentation["participants"]}
    # The private doctor's appointment is only a time blocker.
    [blocker] = raynet_titled(raynet, "Time blocker")
    assert blocker["owner"] == mapped[LUCIE.email].raynet_person_id and not blocker["description"]
    assert not raynet_titled(raynet, "Lékař")
    # The colleague's invitation is one Raynet event, the organizer's, with both invitees.
    [review] = raynet_titled(raynet, "Pipeline review")
    assert review["owner"] == mapped[PETR.email].raynet_person_id
    invitees = {mapped[JANA.email].raynet_person_id, mapped[LUCIE.email].raynet_person_id}
    assert invitees <= {p["person"] for p in review["participants"]}
    # The partner's invitation stays out of Raynet, and the log says why.
    assert not raynet_titled(raynet, "Partner webinar: spring campaign")
    assert SyncLogEntry.objects.filter(
        organization=organization, reason=f"skipped: organizer {DEMO_PARTNER.email} is not a Raynet user"
    ).exists()
    # The stand-up: eight weeks, one moved to Tuesday, one cancelled: seven Raynet events.
    standups = raynet_titled(raynet, "Týdenní porada obchodu")
    weekdays = sorted(datetime.fromisoformat(r["scheduledFrom"]).weekday() for r in standups)
    assert weekdays == [0, 0, 0, 0, 0, 0, 1]
    # Yesterday's meeting was completed with notes afterwards: they stay in Raynet, nobody gets an update.
    [completed] = raynet_titled(raynet, "Stavby Beneš: úvodní schůzka")
    assert completed["status"] == "COMPLETED" and "Zápis" in completed["description"]
    [sent] = outlook_titled(outlook, mapped[JANA.email], "Stavby Beneš: úvodní schůzka")
    assert "Zápis" not in sent["body"]["content"]
    assert EventLink.objects.get(raynet_id=completed["id"]).state == EventLink.State.FROZEN
    assert [m["kind"] for m in outlook.sent_mail if m["subject"] == completed["title"]] == ["invitation"]

    before = demo_counts(seed)
    reset_calls()
    again = demo_seed()

    assert not again.created and again.organization == organization
    assert demo_counts(again) == before
    assert again.runs and {run.status for run in again.runs} == {SyncRun.Status.OK}
    assert writes(*sandboxes()) == {"raynet": 0, "outlook": 0}  # a steady state: the second sync writes nothing


def test_an_edit_in_either_sandbox_reaches_the_other_side_through_the_notification_endpoints(demo_https):
    seed = demo_seed()
    run_queued()  # the echoes of the seed's own writes
    mapped = people(seed)
    raynet, outlook = sandboxes()
    [presentation] = outlook_titled(outlook, mapped[PETR.email], "Prezentace pro Stavby Beneš")
    [visit] = raynet_titled(raynet, "Contract review with Northwind Trading")
    seeded_runs = set(SyncRun.objects.values_list("pk", flat=True))

    with stored_sandbox(GraphSandbox, DEMO_KEY) as outlook:  # Graph POSTs the change notification once saved
        outlook.person_edit_event(mapped[PETR.email].outlook_user_id, presentation["id"], subject="Prezentace: řada X")
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet:  # Raynet POSTs its webhook once saved
        raynet.ui_edit_activity("meeting", visit["id"], title="Contract renewal with Northwind Trading")
    assert run_queued() >= 3  # the notification's run, the webhook's lookup and its run

    raynet, outlook = sandboxes()
    assert raynet_titled(raynet, "Prezentace: řada X")
    assert outlook_titled(outlook, mapped[EMMA.email], "Contract renewal with Northwind Trading")
    new_runs = SyncRun.objects.exclude(pk__in=seeded_runs).exclude(status=SyncRun.Status.SKIPPED)
    assert set(new_runs.values_list("trigger", flat=True)) == {SyncRun.Trigger.WEBHOOK}  # no poll did it
