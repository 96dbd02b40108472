"""A whole organization wired to both sandboxes, for the sync engine's scenario tests.

`world` has two mapped users, Alice and Bob, each with a Raynet account and a mailbox,
plus a Raynet contact (a customer) and helpers to run a sync and read its trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.utils.module_loading import import_string
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from syncapp.models import EventLink, SyncLogEntry, SyncRun, UserMapping
from syncapp.sync import sync_organization
from tests.outlook_fixtures import OUTLOOK_TENANT_ID


def soon(days: int = 1, hour: int = 10, minute: int = 0) -> datetime:
    """A time inside the sync window: `days` from today at `hour`:`minute` UTC."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days, hours=hour, minutes=minute)


@contextmanager
def days_later(days: int) -> Iterator[None]:
    """Django's clock (the engine's window, both sandboxes) runs `days` ahead."""
    from syncapp.providers.outlook import reset_token_apps

    with mock.patch("syncapp.models.timezone.now", side_effect=lambda: datetime.now(UTC) + timedelta(days=days)):
        reset_token_apps()  # MSAL's token cache keeps real time: a cached token would be stale by now
        yield
    reset_token_apps()


@dataclass
class Person:
    email: str
    name: str
    person_id: int
    user_account_id: int
    mailbox_id: str = ""
    mapping: UserMapping | None = None


@dataclass
class World:
    org: object
    raynet: object  # RaynetSandbox
    outlook: object  # GraphSandbox
    alice: Person
    bob: Person
    customer_id: int
    runs: list[SyncRun] = field(default_factory=list)

    def sync(self, *, full: bool = False) -> list[SyncRun]:
        runs = sync_organization(organization=self.org, trigger=SyncRun.Trigger.MANUAL, full=full)
        self.runs = runs
        for run in runs:
            assert run.status in (SyncRun.Status.OK, SyncRun.Status.PARTIAL), (run.status, run.error)
        return runs

    def set_policy(self, **fields) -> None:
        policy = self.org.policy
        for name, value in fields.items():
            setattr(policy, name, value)
        policy.save()

    def reasons(self, action: str | None = None) -> list[str]:
        entries = SyncLogEntry.objects.filter(run__in=self.runs).order_by("pk")
        if action:
            entries = entries.filter(action=action)
        return [entry.reason for entry in entries]

    def links(self, person: Person | None = None) -> list[EventLink]:
        links = EventLink.objects.filter(organization=self.org).order_by("pk")
        return list(links.filter(mapping=person.mapping) if person else links)

    def raynet_events(self, **match) -> list[dict]:
        return [
            record
            for entity in ("meeting", "event")
            for record in self.raynet.activities(entity)
            if all(record.get(k) == v for k, v in match.items())
        ]

    def outlook_events(self, person: Person) -> list[dict]:
        return self.outlook.occurrences(person.mailbox_id, soon(-40), soon(400))

    def invitations(self, to: str | None = None) -> list[dict]:
        return [m for m in self.outlook.sent_mail if m["kind"] == "invitation" and (to is None or m["to"] == to)]

    def writes(self) -> dict[str, int]:
        """Write requests both APIs received since the last reset_calls()."""
        return {
            "raynet": sum(self.raynet.count(m) for m in ("PUT", "POST", "DELETE")),
            "outlook": sum(self.outlook.count(m, r"^v1\.0/users") for m in ("POST", "PATCH", "DELETE")),
        }

    def reset_calls(self) -> None:
        self.raynet.reset_calls()
        self.outlook.reset_calls()


def run_queued() -> int:
    """Do what the worker does with the queued tasks (in order), until none is left; returns how many ran."""
    ran = 0
    while task := OrmQ.objects.order_by("pk").first():
        run_one(task)
        ran += 1
    return ran


def run_one(task: OrmQ) -> None:
    package = SignedPackage.loads(task.payload)
    task.delete()
    import_string(package["func"])(*package["args"], **package["kwargs"])


def add_person(world_raynet, world_outlook, email: str, name: str) -> Person:
    user_account_id, person_id = world_raynet.add_user(email, name)
    mailbox_id = world_outlook.add_user(OUTLOOK_TENANT_ID, email, name)
    return Person(email, name, person_id, user_account_id, mailbox_id)


def map_person(org, person: Person, **overrides) -> UserMapping:
    person.mapping = UserMapping.objects.create(
        organization=org,
        raynet_user_id=person.user_account_id,
        raynet_person_id=person.person_id,
        raynet_email=person.email,
        outlook_user_id=person.mailbox_id,
        outlook_upn=person.email,
        enabled=True,
        **overrides,
    )
    return person.mapping


def populate_world(org, raynet, outlook) -> World:
    """Alice and Bob, each with a Raynet account and a mapped mailbox, and Jan, a customer in Raynet."""
    alice = add_person(raynet, outlook, "alice@acme.test", "Alice Novak")
    bob = add_person(raynet, outlook, "bob@acme.test", "Bob Dvorak")
    map_person(org, alice)
    map_person(org, bob)
    customer_id = raynet.add_person("jan@customer.test", "Jan Zakaznik")
    return World(org=org, raynet=raynet, outlook=outlook, alice=alice, bob=bob, customer_id=customer_id)


@pytest.fixture
def world(org, raynet_connection, outlook_connection, raynet_sandbox, outlook_sandbox) -> World:
    return populate_world(org, raynet_sandbox, outlook_sandbox)


def build_world(rsps, *, name: str = "Acme s.r.o.") -> World:
    """As the `world` fixture, but new each call, for tests that need many worlds (hypothesis examples).

    The sandboxes answer on `rsps` (a fresh, started responses.RequestsMock); Django settings must
    already point Microsoft at the sandbox (as `outlook_sandbox` does) and MSAL's cached apps must be
    reset (reset_token_apps), or a token of an earlier sandbox would be sent.
    """
    from syncapp.models import MicrosoftConnection, Organization, RaynetConnection, SyncPolicy
    from syncapp.sandbox.base import register_with_responses
    from syncapp.sandbox.outlook import GraphSandbox
    from syncapp.sandbox.raynet import RaynetSandbox
    from tests.outlook_fixtures import GRAPH_HOST, LOGIN_HOST, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET
    from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER, RAYNET_BASE_URL, RAYNET_INSTANCE

    raynet = RaynetSandbox(instance=RAYNET_INSTANCE)
    raynet.add_user(RAYNET_API_USER, "Acme Integration", api_key=RAYNET_API_KEY)
    register_with_responses(rsps, RAYNET_BASE_URL, raynet)
    outlook = GraphSandbox()
    outlook.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
    register_with_responses(rsps, GRAPH_HOST, outlook)
    register_with_responses(rsps, LOGIN_HOST, outlook)
    org = Organization.objects.create(name=name)
    SyncPolicy.objects.create(organization=org, sync_enabled=True)
    RaynetConnection.objects.create(
        organization=org,
        instance_name=RAYNET_INSTANCE,
        api_base_url=RAYNET_BASE_URL,
        api_user_email=RAYNET_API_USER,
        api_key=RAYNET_API_KEY,
    )
    MicrosoftConnection.objects.create(
        organization=org, tenant_id=OUTLOOK_TENANT_ID, consent=MicrosoftConnection.Consent.GRANTED
    )
    return populate_world(org, raynet, outlook)


__all__ = [
    "World",
    "add_person",
    "build_world",
    "call_command",
    "days_later",
    "map_person",
    "run_one",
    "run_queued",
    "soon",
]
