"""The demo's HTTPS: MSAL's real token flow and Graph calls over TLS to the sandbox, trusting only our CA."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import requests

from syncapp.models import MicrosoftConnection
from syncapp.providers.outlook import OutlookClient, reset_token_apps
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.tls import demo_certificates, https_server

TENANT = "33333333-3333-3333-3333-333333333333"


@pytest.fixture
def tls_server(tmp_path, settings):
    certificates = demo_certificates(tmp_path / "tls")
    server = https_server("127.0.0.1", 0, certificates)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.SANDBOX_CA_BUNDLE = str(certificates.bundle)
    yield f"https://127.0.0.1:{server.server_address[1]}", certificates
    server.shutdown()
    server.server_close()


@pytest.mark.django_db(transaction=True)
def test_msal_gets_a_token_over_tls_from_the_graph_sandbox_and_graph_answers(tls_server, org, settings):
    base, _ = tls_server
    with stored_sandbox(GraphSandbox, "demo") as sandbox:
        sandbox.add_tenant(TENANT, "demo-client", "demo-secret")
        sandbox.add_user(TENANT, "jana.novakova@modrahora.example", "Jana Nováková")
    settings.MICROSOFT_CLIENT_ID, settings.MICROSOFT_CLIENT_SECRET = "demo-client", "demo-secret"
    settings.MICROSOFT_CLOUDS = {
        **settings.MICROSOFT_CLOUDS,
        "global": {"graph": f"{base}/sandbox/graph/demo/v1.0", "authority": f"{base}/sandbox/graph/demo"},
    }
    connection = MicrosoftConnection.objects.create(organization=org, tenant_id=TENANT)
    reset_token_apps()
    try:
        users = OutlookClient(connection).list_users()
    finally:
        reset_token_apps()

    assert [u["userPrincipalName"] for u in users] == ["jana.novakova@modrahora.example"]
    calls = stored_sandbox_calls()
    assert ["GET", f"{TENANT}/v2.0/.well-known/openid-configuration"] in calls  # MSAL's OIDC discovery
    assert ["POST", f"{TENANT}/oauth2/v2.0/token"] in calls


def stored_sandbox_calls() -> list[list[str]]:
    with stored_sandbox(GraphSandbox, "demo") as sandbox:
        return list(sandbox.state["calls"])


@pytest.mark.django_db(transaction=True)
def test_only_sessions_given_the_demo_bundle_trust_the_local_ca(tls_server):
    base, certificates = tls_server
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base}/sandbox/graph/demo/x/v2.0/.well-known/openid-configuration", timeout=5)
    reply = requests.get(
        f"{base}/sandbox/graph/demo/x/v2.0/.well-known/openid-configuration", verify=str(certificates.bundle), timeout=5
    )
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_tenant"


def test_the_certificates_are_made_once_and_reused(tmp_path):
    first = demo_certificates(tmp_path)
    ca = first.ca.read_text()
    assert demo_certificates(tmp_path).ca.read_text() == ca
    assert ca in first.bundle.read_text() and first.bundle.read_text().count("BEGIN CERTIFICATE") > 10


def test_production_settings_refuse_to_start_with_the_sandbox_enabled():
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": "x" * 50, "SANDBOX_ENABLED": "1",
           "SECRET_ENCRYPTION_KEYS": "x7mBUiN1mHnpnPc0lcWk0Cn_xC3Fw1XK5TrlWAyL-1A="}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "never served in production" in result.stderr
