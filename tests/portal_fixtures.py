"""Fixtures for the portal's tests: the sandboxes where the portal's forms point them.

- `portal_raynet`: a RaynetSandbox at the portal's own "Sandbox Raynet" region (http://testserver/sandbox/...),
  so the connect form is filled in as an admin would; users Alice and Bob besides the API user.
- `portal_tenant`: the Graph sandbox tenant (tests/outlook_fixtures.py) with consent NOT granted yet and
  mailboxes for Alice and Bob; accepting the simulated consent page grants it.
"""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from syncapp.forms import SANDBOX_RAYNET_PATH
from syncapp.models import Membership, Organization
from syncapp.sandbox.base import register_with_responses
from syncapp.sandbox.raynet import RaynetSandbox
from tests.outlook_fixtures import OUTLOOK_TENANT_ID
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER

PORTAL_RAYNET_URL = f"http://testserver{SANDBOX_RAYNET_PATH}"


@pytest.fixture
def portal_raynet(http_mock, retry_waits) -> RaynetSandbox:
    sandbox = RaynetSandbox(instance="acme")
    sandbox.add_user(RAYNET_API_USER, "Acme Integration", api_key=RAYNET_API_KEY)
    sandbox.add_user("alice@acme.test", "Alice Novak")
    sandbox.add_user("BOB@acme.test", "Bob Dvorak")
    sandbox.add_user("carol@elsewhere.test", "Carol Cerna")
    register_with_responses(http_mock, PORTAL_RAYNET_URL, sandbox)
    return sandbox


@pytest.fixture
def portal_tenant(outlook_sandbox):
    outlook_sandbox.state["tenants"][OUTLOOK_TENANT_ID]["consent"] = False
    outlook_sandbox.add_user(OUTLOOK_TENANT_ID, "alice@acme.test", "Alice Novak")
    outlook_sandbox.add_user(OUTLOOK_TENANT_ID, "bob@acme.test", "Bob Dvorak")
    outlook_sandbox.add_user(OUTLOOK_TENANT_ID, "dana@acme.test", "Dana Mala")
    return outlook_sandbox


def raynet_form(**changes) -> dict:
    return {
        "instance_name": "acme",
        "api_base_url": PORTAL_RAYNET_URL,
        "api_user_email": RAYNET_API_USER,
        "api_key": RAYNET_API_KEY,
    } | changes


def consent_through_sandbox(client, start_response, *, decision: str = "accept"):
    """Follow the portal's consent link to the (simulated) Microsoft page, answer it, return to the callback."""
    consent_url = start_response["Location"]
    page = requests.get(consent_url, timeout=5)
    assert page.status_code == 200 and "Permissions requested" in page.text
    fields = {}
    for tag in re.findall(r"<input [^>]*>", page.text):  # hidden fields and the first (checked) tenant
        attributes = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        fields.setdefault(attributes["name"], html.unescape(attributes["value"]))
    fields["decision"] = decision
    answer = requests.post(consent_url.split("?")[0], data=fields, allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["Location"])
    return client.get(back.path, {k: v[0] for k, v in parse_qs(back.query).items()})


@pytest.fixture
def connected_org(db, portal_raynet, portal_tenant, client, admin_user):
    """The `org` fixture (admin: alice@acme.test) with both connections made through the portal."""
    client.force_login(admin_user)
    org = Membership.objects.get(user=admin_user).organization
    org.policy.sync_enabled = False
    org.policy.save()
    assert client.post(f"/org/{org.code}/setup/raynet/", raynet_form()).status_code == 302
    start = client.post(f"/org/{org.code}/setup/microsoft/", {"cloud": "global"})
    consent_through_sandbox(client, start)
    return Organization.objects.get(pk=org.pk)


def page_text(response) -> str:
    """The page as a reader sees it (entities decoded)."""
    return html.unescape(response.content.decode())
