"""The demo organization on the sandboxes: what `make run` shows with no Raynet, no Microsoft 365 and no accounts.

`demo_seed()` fills the sandbox Raynet (key and instance "demo") and the sandbox Microsoft tenant with a small
company's calendars, then connects a demo organization to them through the portal's own workflows
(syncapp/onboarding.py): Raynet's connection test and webhook, Microsoft's consent record with MSAL's real
client-credentials flow, the user mapping with its Graph subscriptions, the policies, the confirmed first sync.
All of it goes over HTTPS to the sandboxes served by the product itself (`manage.py serve_tls`, settings.DEMO_HTTPS_URL)
and back to the real /hooks/ endpoints, so the demo runs the code a real tenant runs.

Running it again keeps what exists (each step is done only when missing); `reset=True` starts over.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from syncapp import onboarding
from syncapp.jobs import mapping_requested_runs, mapping_sync_request
from syncapp.models import (
    ConnectionStatus,
    EventLink,
    Membership,
    Organization,
    PrivateEventsMode,
    SandboxState,
    SyncRun,
    UserMapping,
)
from syncapp.notifications import (
    mailbox_subscribe,
    mailbox_unsubscribe,
    raynet_webhook_register,
    raynet_webhook_unregister,
)
from syncapp.providers.outlook import reset_token_apps
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from syncapp.sync.service import mailbox_lock

DEMO_KEY = "demo"  # the sandboxes' state rows "raynet:demo" and "graph:demo" (syncapp/sandbox/urls.py)
DEMO_INSTANCE = "demo"
DEMO_TENANT_ID = "5e6d0c1a-7b2f-4c3d-9e8a-0d3e70a11c5e"
# Fixed, so the demo's portal URLs stay the same across resets.
DEMO_ORGANIZATION_CODE = uuid.UUID("d3e0a7c2-1b5f-4e6a-8c9d-2f4b6a8c0e11")
DEMO_ORGANIZATION_NAME = "Modrá hora s.r.o."
DEMO_ADMIN_EMAIL = "demo@example.com"  # the organization's admin in the portal
DEMO_SUPPORT_EMAIL = "support@example.com"  # a superuser for the support admin (/admin/)
DEMO_API_USER = "api@modrahora.example"
DEMO_API_KEY = "demo-raynet-api-key"  # the sandbox's key: it guards nothing but the demo's fake Raynet
ZONE = ZoneInfo("Europe/Prague")


@dataclass(frozen=True)
class DemoPerson:
    name: str
    email: str


# Colleagues: each has a Raynet account and a mailbox, and is mapped.
DEMO_COLLEAGUES = (
    DemoPerson("Jana Nováková", "jana.novakova@modrahora.example"),
    DemoPerson("Petr Svoboda", "petr.svoboda@modrahora.example"),
    DemoPerson("Lucie Dvořáková", "lucie.dvorakova@modrahora.example"),
    DemoPerson("Tomáš Král", "tomas.kral@modrahora.example"),
    DemoPerson("Emma Clarke", "emma.clarke@modrahora.example"),
)
# Customers: Raynet persons (contacts) with e-mails, outside the tenant.
DEMO_CUSTOMERS = (
    DemoPerson("Martin Horák", "martin.horak@pivovarhora.example"),
    DemoPerson("Sarah Mitchell", "sarah.mitchell@northwind-trading.example"),
    DemoPerson("Karel Beneš", "karel.benes@stavby-benes.example"),
)
JANA, PETR, LUCIE, TOMAS, EMMA = DEMO_COLLEAGUES
MARTIN, SARAH, KAREL = DEMO_CUSTOMERS
# A partner agency's manager: neither a Raynet user nor in the tenant; her invitation is not synced.
DEMO_PARTNER = DemoPerson("Olivia Grant", "olivia.grant@brightside-agency.example")

COMPLETED_MEETING_NOTES = "Zápis: zájem o 3 stroje řady X, poslat nabídku do pátku. Další schůzka v lednu."
SETTLE_SECONDS = 120  # how long the seed waits for a mailbox another process is syncing


class DemoError(Exception):
    """The demo cannot be seeded (the sandbox is off, or a connection step failed); the words say why."""


@dataclass(frozen=True)
class DemoSeed:
    organization: Organization
    created: bool  # False: the demo organization existed and was kept as it was
    admin_email: str
    support_email: str
    password: str
    runs: list[SyncRun]  # the organization's sync runs since the seed started (a worker's too)


def demo_seed(*, reset: bool = False) -> DemoSeed:
    """The demo organization, connected, mapped and synced; made once, kept afterwards (`reset`: start over)."""
    if not settings.SANDBOX_ENABLED:
        raise DemoError("The sandbox is off: the demo needs DEMO=1 (or SANDBOX_ENABLED) with DEBUG on.")
    if reset:
        demo_reset()
    started = timezone.now()
    sandbox_content_create()
    admin = login_ensure(email=DEMO_ADMIN_EMAIL, superuser=False)
    login_ensure(email=DEMO_SUPPORT_EMAIL, superuser=True)
    organization, created = organization_ensure(admin=admin)
    connections_ensure(organization=organization)
    mappings_ensure(organization=organization)
    policy_ensure(organization=organization)
    demo_sync(organization=organization)
    completed_meeting_notes_add(organization=organization)
    runs = list(organization.runs.filter(started_at__gte=started).order_by("pk"))
    return DemoSeed(organization, created, DEMO_ADMIN_EMAIL, DEMO_SUPPORT_EMAIL, settings.DEMO_PASSWORD, runs)


def demo_reset() -> None:
    """Forget the demo organization (with its links and log) and both sandboxes' state; the logins stay."""
    Organization.objects.filter(code=DEMO_ORGANIZATION_CODE).delete()
    SandboxState.objects.filter(
        name__in=[f"{RaynetSandbox.name}:{DEMO_KEY}", f"{GraphSandbox.name}:{DEMO_KEY}"]
    ).delete()
    reset_token_apps()  # tokens of the old tenant state


# --- the sandboxes' content -------------------------------------------------------------------------------


def local(days: int, hour: int, minute: int = 0) -> datetime:
    """`days` from today at `hour`:`minute` in Prague (the company's zone)."""
    day = timezone.localdate(timezone=ZONE) + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZONE)


def sandbox_content_create() -> bool:
    """The company in the sandbox Raynet and tenant, once (a marker in Raynet's state). Returns whether it was made.

    Made before anything is connected, so none of it is delivered as a notification: the first sync finds it."""
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet, stored_sandbox(GraphSandbox, DEMO_KEY) as outlook:
        if raynet.state.get("demo"):
            return False
        raynet.state["instance"] = DEMO_INSTANCE
        raynet.add_user(DEMO_API_USER, "Outlook sync (API)", api_key=DEMO_API_KEY)
        outlook.add_tenant(DEMO_TENANT_ID, settings.MICROSOFT_CLIENT_ID, settings.MICROSOFT_CLIENT_SECRET)
        people, mailboxes = {}, {}
        for person in DEMO_COLLEAGUES:
            people[person.email] = raynet.add_user(person.email, person.name)[1]
            mailboxes[person.email] = outlook.add_user(DEMO_TENANT_ID, person.email, person.name)
        customers = {person.email: raynet.add_person(person.email, person.name) for person in DEMO_CUSTOMERS}
        completed = raynet_calendars_fill(raynet, people, customers)
        outlook_calendars_fill(outlook, mailboxes)
        raynet.state["demo"] = {"completed_meeting": completed, "notes_added": False}
        # From here on both sandboxes call our /hooks/ endpoints as Graph and Raynet do.
        raynet.state["deliver_http"] = outlook.state["deliver_http"] = True
    return True


def raynet_calendars_fill(raynet: RaynetSandbox, people: dict[str, int], customers: dict[str, int]) -> int:
    """Client meetings with customers as participants, made in Raynet. Returns the meeting to complete later."""
    jana, tomas, emma = people[JANA.email], people[TOMAS.email], people[EMMA.email]
    martin, sarah, karel = (customers[person.email] for person in (MARTIN, SARAH, KAREL))
    raynet.ui_create_activity(
        "meeting", jana, "Pivovar Hora: nabídka výčepního zařízení", local(2, 10), local(2, 11),
        participants=[martin], meetingPlace="Pivovar Hora, Jihlava",
        description="Představit nové výčepní zařízení a servisní smlouvu.",
    )  # fmt: skip
    raynet.ui_create_activity(
        "meeting", emma, "Contract review with Northwind Trading", local(3, 14), local(3, 15),
        participants=[sarah], meetingPlace="Microsoft Teams", description="Renewal terms for 2027.",
    )  # fmt: skip
    raynet.ui_create_activity(
        "event", tomas, "Uzávěrka čtvrtletní nabídky", local(6, 9), local(6, 9, 30),
        description="Odeslat ceník partnerům.",
    )  # fmt: skip
    # Held yesterday: synced while scheduled; completed with the meeting's notes after the first sync.
    return raynet.ui_create_activity(
        "meeting", jana, "Stavby Beneš: úvodní schůzka", local(-1, 13), local(-1, 14),
        participants=[karel], meetingPlace="Stavby Beneš, Brno", description="Seznámení, potřeby zákazníka.",
    )  # fmt: skip


def outlook_calendars_fill(outlook: GraphSandbox, mailboxes: dict[str, str]) -> None:
    """What the colleagues did in Outlook: a customer presentation, a colleague's invitation, a private event,
    a weekly stand-up with one occurrence moved and one cancelled, and an invitation from outside."""
    petr, lucie, tomas, emma = (mailboxes[person.email] for person in (PETR, LUCIE, TOMAS, EMMA))
    outlook.person_create_event(
        petr, "Prezentace pro Stavby Beneš", local(4, 9), local(4, 10, 30), location="Showroom Praha",
        attendees=[KAREL.email], body="Ukázka strojů řady X.", time_zone="Europe/Prague",
    )  # fmt: skip
    outlook.person_create_event(
        petr, "Pipeline review", local(2, 13), local(2, 14), location="Zasedačka 2",
        attendees=[JANA.email, LUCIE.email], time_zone="Europe/Prague",
    )  # fmt: skip
    outlook.person_create_event(
        lucie,
        "Lékař",
        local(1, 15),
        local(1, 16),
        body="Preventivní prohlídka",
        private=True,
        time_zone="Europe/Prague",
    )
    monday = local(-timezone.localdate(timezone=ZONE).weekday(), 8, 30)
    series = outlook.person_create_event(
        tomas, "Týdenní porada obchodu", monday, monday + timedelta(minutes=30), time_zone="Europe/Prague",
        recurrence={
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
            "range": {"type": "numbered", "startDate": monday.date().isoformat(), "numberOfOccurrences": 8},
        },
    )  # fmt: skip
    moved: date = (monday + timedelta(days=7)).date()
    outlook.person_edit_occurrence(
        tomas, series, moved, start=monday + timedelta(days=8), end=monday + timedelta(days=8, minutes=30),
        time_zone="Europe/Prague",
    )  # fmt: skip
    outlook.person_delete_occurrence(tomas, series, (monday + timedelta(days=14)).date())
    outlook.person_receive_invitation(
        emma, DEMO_PARTNER.email, DEMO_PARTNER.name, "Partner webinar: spring campaign", local(5, 16), local(5, 17),
        body="Join us for the spring campaign preview.", time_zone="Europe/Prague",
    )  # fmt: skip


# --- the portal side, each step only when missing -----------------------------------------------------------


def login_ensure(*, email: str, superuser: bool):
    """A login with the demo password (set when made; a changed password is kept), its e-mail verified."""
    user_model = get_user_model()
    user = user_model.objects.filter(email__iexact=email).first()
    if user is None:
        make = user_model.objects.create_superuser if superuser else user_model.objects.create_user
        user = make(username=email, email=email, password=settings.DEMO_PASSWORD)
    EmailAddress.objects.get_or_create(user=user, email=email, defaults={"verified": True, "primary": True})
    return user


def organization_ensure(*, admin) -> tuple[Organization, bool]:
    organization = Organization.objects.filter(code=DEMO_ORGANIZATION_CODE).first()
    if organization is not None:
        Membership.objects.get_or_create(
            organization=organization, user=admin, defaults={"role": Membership.Role.ADMIN}
        )
        return organization, False
    organization = onboarding.organization_create(name=DEMO_ORGANIZATION_NAME, user=admin)
    Organization.objects.filter(pk=organization.pk).update(code=DEMO_ORGANIZATION_CODE)
    organization.refresh_from_db()
    return organization, True


def demo_raynet_url() -> str:
    return f"{settings.DEMO_HTTPS_URL}/sandbox/raynet/{DEMO_KEY}/api/v2/"


def connections_ensure(*, organization: Organization) -> None:
    """Raynet (connection test, webhook) and Microsoft 365 (consent record: MSAL's token flow, users, a calendar).

    When the demo's HTTPS address changed since it was seeded (another PORT), both are pointed at the new one,
    with the webhook and the subscriptions registered again for it and the mailboxes' cursors reset."""
    raynet = getattr(organization, "raynet", None)
    moved = raynet is not None and raynet.api_base_url != demo_raynet_url()
    if raynet is None or moved or raynet.status != ConnectionStatus.OK:
        details = onboarding.RaynetDetails(DEMO_INSTANCE, demo_raynet_url(), DEMO_API_USER, DEMO_API_KEY)
        ok, message = onboarding.raynet_connect(organization=organization, details=details)
        if not ok:
            raise DemoError(message)
    if moved:
        raynet_webhook_unregister(organization=organization)
        raynet_webhook_register(organization=organization)
        for mapping in organization.mappings.filter(enabled=True):
            mailbox_unsubscribe(mapping=mapping)
            mailbox_subscribe(mapping=mapping)
            mapping.reset_cursors()  # Graph's delta links are absolute URLs at the old address
    microsoft = getattr(organization, "microsoft", None)
    if microsoft is None:
        ok, message = onboarding.microsoft_consent_record(
            organization=organization, tenant_id=DEMO_TENANT_ID, cloud="global"
        )
    elif microsoft.status != ConnectionStatus.OK:
        ok, message = onboarding.microsoft_check(connection=microsoft)  # a pass restarts a stopped connection
    else:
        ok, message = True, ""
    if not ok:
        raise DemoError(message)


def mappings_ensure(*, organization: Organization) -> None:
    """Every Raynet user with a mailbox of the same address, mapped and on (which subscribes the mailbox)."""
    if organization.mappings.exists():
        return
    rows, _mailboxes = onboarding.mapping_rows(organization=organization)
    choices = [
        onboarding.MappingChoice(raynet=row.raynet, mailbox=row.mailbox, enabled=True, overrides={})
        for row in rows
        if row.matched
    ]
    onboarding.mappings_save(organization=organization, choices=choices)


def policy_ensure(*, organization: Organization) -> None:
    """Private events as "Time blocker"; the other policies at their defaults; then the first sync is confirmed."""
    policy = organization.policy
    if policy.reviewed_at is None:
        policy.private_events_mode = PrivateEventsMode.TIME_BLOCKER
        onboarding.policy_save(policy=policy)
    if not policy.sync_enabled:
        onboarding.first_sync_start(
            organization=organization, mappings=list(organization.mappings.filter(enabled=True))
        )


# --- syncing ------------------------------------------------------------------------------------------------


def demo_sync(*, organization: Organization) -> None:
    """A run of every mailbox as the worker makes one: requested, then run here unless a worker has it already.

    Returns once no mailbox is syncing or asked for, so what the seed does next sees the synced state."""
    mappings = list(organization.mappings.filter(enabled=True).order_by("pk"))
    for mapping in mappings:
        mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)
    for mapping in mappings:
        mailbox_settle(mapping=mapping)


def mailbox_settle(*, mapping: UserMapping) -> None:
    """Run what is asked for the mailbox here, until nothing is asked and no other process (a worker) runs it.

    The pending request is checked after the lock is let go, as mapping_requested_runs does: a request whose own
    task found the mailbox held by this probe is then run by the next turn of the loop."""
    give_up = time.monotonic() + SETTLE_SECONDS
    while True:
        mapping_requested_runs(mapping=mapping)
        with mailbox_lock(mapping.pk) as free:
            pass
        if free and not UserMapping.objects.filter(pk=mapping.pk, sync_requested_at__isnull=False).exists():
            return
        if time.monotonic() > give_up:
            raise DemoError("A sync of the demo took too long; see the portal's log, then run the seed again.")
        time.sleep(0.2)


def completed_meeting_notes_add(*, organization: Organization) -> None:
    """After the first sync: yesterday's meeting is completed in Raynet and its notes are added (once).

    The link froze when it was completed, so the notes stay in Raynet and the customer gets no update."""
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet:
        demo = raynet.state["demo"]
        meeting = demo["completed_meeting"]
        if demo["notes_added"]:
            return
        linked = EventLink.objects.filter(
            organization=organization, raynet_type="meeting", raynet_id=meeting, outlook_event_id__isnull=False
        )
        if not linked.exists():
            raise DemoError("Yesterday's meeting did not reach Outlook in the first sync; see the portal's log.")
        raynet.ui_complete_activity("meeting", meeting)
        notes = raynet.activity("meeting", meeting)["description"] + "\n\n" + COMPLETED_MEETING_NOTES
        raynet.ui_edit_activity("meeting", meeting, description=notes)
        demo["notes_added"] = True
    demo_sync(organization=organization)
