"""Fixtures for the Raynet sandbox: see issue 3.

- `raynet_sandbox`: a RaynetSandbox answering every request below RAYNET_BASE_URL on `http_mock`;
  instance "acme", API user RAYNET_API_USER (key RAYNET_API_KEY) already exists. Act in Raynet's UI
  with `raynet_sandbox.add_user(...)`, `ui_create_activity(...)`, ...; move time with `set_now()`.
- `raynet_connection`: the `org` fixture's RaynetConnection pointed at it.
- `jana`: the person id of a second Raynet user, who owns activities.
- Retries never sleep: `raynet_connection` uses `retry_waits` (tests/conftest.py), which records each wait
  of every session built in the test, the sync engine's too.
"""

from __future__ import annotations

import pytest

from syncapp.models import RaynetConnection
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
def raynet_connection(org, raynet_sandbox, retry_waits) -> RaynetConnection:
    """The `org` fixture's Raynet connection, pointed at `raynet_sandbox`; retries do not sleep."""
    return RaynetConnection.objects.create(
        organization=org,
        instance_name=RAYNET_INSTANCE,
        api_base_url=RAYNET_BASE_URL,
        api_user_email=RAYNET_API_USER,
        api_key=RAYNET_API_KEY,
    )


@pytest.fixture
def jana(raynet_sandbox) -> int:
    """Jana's person id: she is a Raynet user and owns activities."""
    return raynet_sandbox.add_user("jana@acme.test", "Jana Nováková")[1]
