"""Fixtures for the Raynet sandbox: see issue 3.

- `raynet_sandbox`: a RaynetSandbox answering every request below RAYNET_BASE_URL on `http_mock`;
  instance "acme", API user RAYNET_API_USER (key RAYNET_API_KEY) already exists. Act in Raynet's UI
  with `raynet_sandbox.add_user(...)`, `ui_create_activity(...)`, ...; move time with `set_now()`.
- `raynet_connection`: the `org` fixture's RaynetConnection pointed at it.
- `raynet_retry_sleeps`: retries never really sleep in tests. `ProviderSession.sleep` is patched for
  the whole test to record the seconds it would have waited in this list (used by `raynet_connection`,
  so every client built in the test, also by the sync engine, is covered).
"""

from __future__ import annotations

import pytest

from syncapp.models import RaynetConnection
from syncapp.providers.base import ProviderSession
from syncapp.sandbox.base import register_with_responses
from syncapp.sandbox.raynet import RaynetSandbox

RAYNET_BASE_URL = "https://raynet.sandbox.test/api/v2/"
RAYNET_INSTANCE = "acme"
RAYNET_API_USER = "api@acme.test"
RAYNET_API_KEY = "raynet-test-key"


@pytest.fixture
def raynet_sandbox(http_mock) -> RaynetSandbox:
    """The fake Raynet at RAYNET_BASE_URL, instance "acme"; RAYNET_API_USER may call it with RAYNET_API_KEY.

    Read it with `activity(entity, id)`, `activities(entity)`, `count(method, path_regex)`; break it
    with `inject_fault(...)`, `deny_permission(...)`, `set_daily_limit(...)`; move its clock with `set_now()`.
    """
    sandbox = RaynetSandbox(instance=RAYNET_INSTANCE)
    sandbox.add_user(RAYNET_API_USER, "Acme Integration", api_key=RAYNET_API_KEY)
    register_with_responses(http_mock, RAYNET_BASE_URL, sandbox)
    return sandbox


@pytest.fixture
def raynet_retry_sleeps(monkeypatch) -> list[float]:
    """Seconds ProviderSession would have slept between retries; nothing really sleeps.

    Patches the class attribute `ProviderSession.sleep` for the test, so it covers every session,
    including those the sync engine builds itself (a session's own `session.sleep = ...` still wins).
    """
    sleeps: list[float] = []
    monkeypatch.setattr(ProviderSession, "sleep", staticmethod(sleeps.append), raising=False)
    return sleeps


@pytest.fixture
def raynet_connection(org, raynet_sandbox, raynet_retry_sleeps) -> RaynetConnection:
    """The `org` fixture's Raynet connection, pointed at `raynet_sandbox`; retries do not sleep."""
    return RaynetConnection.objects.create(
        organization=org,
        instance_name=RAYNET_INSTANCE,
        api_base_url=RAYNET_BASE_URL,
        api_user_email=RAYNET_API_USER,
        api_key=RAYNET_API_KEY,
    )
