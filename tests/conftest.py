"""Shared fixtures: two organizations with an admin, a viewer and an outsider."""

from __future__ import annotations

import pytest
import responses
from django.contrib.auth import get_user_model

from syncapp.models import Membership, Organization, SyncPolicy
from syncapp.providers.base import ProviderSession

# Sandbox fixtures (raynet_sandbox, raynet_connection, outlook_sandbox, outlook_connection) live beside.
pytest_plugins = [
    "tests.raynet_fixtures",
    "tests.outlook_fixtures",
    "tests.sync_fixtures",
    "tests.portal_fixtures",
    "tests.http_world",
]


def pytest_configure(config) -> None:
    """The tests serve the sandboxes over HTTP as the demo does (without DEMO the settings keep them off)."""
    from django.conf import settings

    settings.SANDBOX_ENABLED = True


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """No persistent connections in tests: a live server's thread must not keep the test database open."""
    from django.conf import settings

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session", autouse=True)
def compiled_catalogues() -> None:
    """The Czech pages need the compiled catalogue, as `make` builds it (a run of plain pytest too)."""
    from syncapp.management.commands.compile_catalogues import compile_catalogues

    compile_catalogues()


@pytest.fixture(autouse=True)
def tasks_inline(monkeypatch) -> None:
    """django-q2 tasks run at once in the test's own process (its `sync` setting); tests that need the
    broker switch it off again (tests/test_jobs.py)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture
def retry_waits(monkeypatch) -> list[float]:
    """Seconds ProviderSession would have slept between retries, for every session of the test; none is slept."""
    waits: list[float] = []
    monkeypatch.setattr(ProviderSession, "sleep", staticmethod(waits.append))
    return waits


@pytest.fixture
def http_mock():
    """All HTTP of a test goes to the sandboxes registered here; anything else is an error."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """The production hasher takes ~0.5 s per user on purpose; tests create many users."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(email: str, **extra):
    return get_user_model().objects.create_user(username=email, email=email, password="pw-for-tests", **extra)


@pytest.fixture
def org(db) -> Organization:
    organization = Organization.objects.create(name="Acme s.r.o.")
    SyncPolicy.objects.create(organization=organization, sync_enabled=True)
    return organization


@pytest.fixture
def other_org(db) -> Organization:
    organization = Organization.objects.create(name="Globex a.s.")
    SyncPolicy.objects.create(organization=organization, sync_enabled=True)
    return organization


@pytest.fixture
def admin_user(org):
    user = make_user("alice@acme.test")
    Membership.objects.create(organization=org, user=user, role=Membership.Role.ADMIN)
    return user


@pytest.fixture
def viewer_user(org):
    user = make_user("victor@acme.test")
    Membership.objects.create(organization=org, user=user, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def outsider(other_org):
    user = make_user("otto@globex.test")
    Membership.objects.create(organization=other_org, user=user, role=Membership.Role.ADMIN)
    return user
