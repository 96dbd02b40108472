"""Fixtures for the Graph (Outlook) sandbox: see issue 4.

- `outlook_sandbox`: a GraphSandbox answering both hosts through `http_mock`
  (`https://login.sandbox.test` for tokens, `https://graph.sandbox.test/v1.0` for Graph), with tenant
  OUTLOOK_TENANT_ID whose app credentials are the ones in `settings` (pointed at the sandbox for the test).
  MSAL's cached apps are reset before and after, so tokens never leak between tests.
- `outlook_connection`: the `org` fixture's MicrosoftConnection to that tenant, consent granted.
- Retries never sleep: `retry_waits` (tests/conftest.py) records each wait, so
  `assert retry_waits == [2.128]` proves a Retry-After was honoured without spending it.
"""

from __future__ import annotations

import pytest

from syncapp.models import MicrosoftConnection
from syncapp.providers.outlook import reset_token_apps
from syncapp.sandbox.base import register_with_responses
from syncapp.sandbox.outlook import GraphSandbox

OUTLOOK_TENANT_ID = "11111111-1111-1111-1111-111111111111"
OUTLOOK_CLIENT_ID = "22222222-2222-2222-2222-222222222222"
OUTLOOK_CLIENT_SECRET = "sandbox-client-secret"
GRAPH_HOST = "https://graph.sandbox.test"
LOGIN_HOST = "https://login.sandbox.test"


@pytest.fixture
def outlook_sandbox(http_mock, settings, retry_waits):
    sandbox = GraphSandbox()
    sandbox.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
    # The graph host is registered at its root: the sandbox tells Graph (`v1.0/...`) from login paths.
    register_with_responses(http_mock, GRAPH_HOST, sandbox)
    register_with_responses(http_mock, LOGIN_HOST, sandbox)
    settings.MICROSOFT_CLIENT_ID = OUTLOOK_CLIENT_ID
    settings.MICROSOFT_CLIENT_SECRET = OUTLOOK_CLIENT_SECRET
    settings.MICROSOFT_CLOUDS = {
        **settings.MICROSOFT_CLOUDS,
        "global": {"graph": f"{GRAPH_HOST}/v1.0", "authority": LOGIN_HOST},
    }
    reset_token_apps()
    yield sandbox
    reset_token_apps()


@pytest.fixture
def outlook_connection(org, outlook_sandbox) -> MicrosoftConnection:
    return MicrosoftConnection.objects.create(
        organization=org, tenant_id=OUTLOOK_TENANT_ID, consent=MicrosoftConnection.Consent.GRANTED
    )


@pytest.fixture
def alice(outlook_sandbox) -> str:
    """Alice's mailbox (user id) in the sandbox tenant."""
    return outlook_sandbox.add_user(OUTLOOK_TENANT_ID, "alice@acme.test", "Alice Novak")


@pytest.fixture
def bob(outlook_sandbox) -> str:
    """Bob's mailbox (user id) in the sandbox tenant."""
    return outlook_sandbox.add_user(OUTLOOK_TENANT_ID, "bob@acme.test", "Bob Dvorak")
