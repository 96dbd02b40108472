"""A world whose sandboxes are served over HTTPS by a live server, state in PostgreSQL, for real processes.

The crash matrix and the concurrency tests run `manage.py sync` as subprocesses: a process can be
SIGKILLed, two processes really race. The subprocess cannot see a `responses` mock, so both sandboxes
are served by the portal's own sandbox views (syncapp/sandbox/urls.py) from a server thread of the test.

Why HTTPS: MSAL accepts only an https authority (msal/authority.py `canonicalize`), and the product code
must not learn a way around it. So the server thread speaks TLS with a throwaway certificate authority
from trustme, and each process trusts it through REQUESTS_CA_BUNDLE (requests reads it at each request;
MSAL's HTTP goes through requests too). Nothing in the product changes for the test. When the demo
serves the sandbox over TLS itself, `tls_sandbox_server` can be swapped for that server: the tests only
use `.url` and `.ca_path`.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connection

from syncapp.models import MicrosoftConnection, Organization, RaynetConnection, SandboxState, SyncPolicy
from syncapp.providers.outlook import reset_token_apps
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from tests.outlook_fixtures import OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET, OUTLOOK_TENANT_ID
from tests.raynet_fixtures import RAYNET_API_KEY, RAYNET_API_USER, RAYNET_INSTANCE
from tests.sync_fixtures import World, populate_world

# The crash matrix as measured (point → outcome columns), printed at the end of the session.
CRASH_MATRIX: dict[str, dict[str, str]] = {}

ROOT = Path(__file__).resolve().parent.parent
KEY = "crash"  # the sandboxes' state rows: "raynet:crash" and "graph:crash"


class QuietHandler(WSGIRequestHandler):
    def get_environ(self) -> dict:
        # wsgiref then says wsgi.url_scheme "https": the links the sandbox hands out (token endpoint) keep TLS.
        return {**super().get_environ(), "HTTPS": "on"}

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


@dataclass
class TLSServer:
    url: str
    ca_path: str


@pytest.fixture(scope="session")
def tls_authority(tmp_path_factory):
    import trustme

    authority = trustme.CA()
    ca_path = tmp_path_factory.mktemp("tls") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_path))
    return authority, str(ca_path)


@pytest.fixture
def tls_sandbox_server(tls_authority, transactional_db) -> Iterator[TLSServer]:
    with portal_over_tls(*tls_authority) as server:
        yield server


@contextmanager
def portal_over_tls(authority, ca_path: str) -> Iterator[TLSServer]:
    """The whole portal (with the sandbox views) over HTTPS on a free loopback port, in a thread."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield TLSServer(url=f"https://127.0.0.1:{server.server_port}", ca_path=ca_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class HttpWorld(World):
    """The sync_fixtures World, its sandboxes in PostgreSQL: `raynet`/`outlook` are snapshots taken by
    `reload()`; act on them (UI actions, faults) only inside `with world.acting():`, which holds the rows."""

    server: TLSServer

    def reload(self) -> None:
        self.raynet = RaynetSandbox(SandboxState.objects.get(name=f"raynet:{KEY}").data)
        self.outlook = GraphSandbox(SandboxState.objects.get(name=f"graph:{KEY}").data)

    @contextmanager
    def acting(self) -> Iterator[HttpWorld]:
        with stored_sandbox(RaynetSandbox, KEY) as raynet, stored_sandbox(GraphSandbox, KEY) as outlook:
            self.raynet, self.outlook = raynet, outlook
            yield self
        self.reload()

    def sync(self, *, full: bool = False):
        runs = super().sync(full=full)
        self.reload()
        return runs

    def sync_env(self, **extra: str) -> dict[str, str]:
        """The environment of a `manage.py sync` process of this world: same database and secrets."""
        db = connection.settings_dict
        host = quote(db["HOST"] or "", safe="")
        password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
        credentials = quote(db["USER"] or "", safe="") + password
        return {
            **os.environ,
            "DATABASE_URL": f"postgres://{credentials}@{host}:{db['PORT'] or 5432}/{db['NAME']}",
            "MICROSOFT_CLIENT_ID": OUTLOOK_CLIENT_ID,
            "MICROSOFT_CLIENT_SECRET": OUTLOOK_CLIENT_SECRET,
            "GRAPH_BASE_URL": graph_base(self.server) + "/v1.0",
            "MICROSOFT_AUTHORITY_HOST": graph_base(self.server),
            "REQUESTS_CA_BUNDLE": self.server.ca_path,
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def start_sync(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", "sync", *args],
            cwd=ROOT,
            env=self.sync_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def outlook_duplicates(self) -> dict[str, int]:
        """Events (occurrences too) of one mailbox with the same subject and start: a second copy."""
        seen = Counter(
            (person.mailbox_id, event["subject"], event["start"]["dateTime"][:16])
            for person in (self.alice, self.bob)
            for event in self.outlook_events(person)
            if not event.get("isCancelled")
        )
        return {subject: n for (_, subject, _), n in seen.items() if n > 1}

    def raynet_duplicates(self) -> dict[str, int]:
        """Records with the same owner, title and start: a second copy (a series' copies differ by start)."""
        seen = Counter((r["owner"], r["title"], r["scheduledFrom"]) for r in self.raynet_events())
        return {title: n for (_, title, _), n in seen.items() if n > 1}

    def invitation_duplicates(self) -> dict[str, int]:
        sent = Counter((m["iCalUId"], m["occurrence"], m["to"]) for m in self.invitations())
        return {f"{key[2]} for {key[0][:8]}…": n for key, n in sent.items() if n > 1}


def graph_base(server: TLSServer) -> str:
    return f"{server.url}/sandbox/graph/{KEY}"


@pytest.fixture
def http_world(tls_sandbox_server, settings, retry_waits, monkeypatch) -> Iterator[HttpWorld]:
    """Alice and Bob mapped, Jan a customer (as `world`), both sandboxes served over HTTPS from PostgreSQL.

    In-process syncs (`http_world.sync()`) go over the same HTTPS as the subprocesses; their retries do not sleep.
    """
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_sandbox_server.ca_path)
    yield build_http_world(tls_sandbox_server, settings)
    reset_token_apps()


def build_http_world(server: TLSServer, settings) -> HttpWorld:
    """The http_world, for a caller that set REQUESTS_CA_BUNDLE and may change `settings` (the bench too)."""
    settings.MICROSOFT_CLIENT_ID = OUTLOOK_CLIENT_ID
    settings.MICROSOFT_CLIENT_SECRET = OUTLOOK_CLIENT_SECRET
    settings.MICROSOFT_CLOUDS = {
        **django_settings.MICROSOFT_CLOUDS,
        "global": {"graph": graph_base(server) + "/v1.0", "authority": graph_base(server)},
    }
    reset_token_apps()
    org = Organization.objects.create(name="Acme s.r.o.")
    SyncPolicy.objects.create(organization=org, sync_enabled=True)
    RaynetConnection.objects.create(
        organization=org,
        instance_name=RAYNET_INSTANCE,
        api_base_url=f"{server.url}/sandbox/raynet/{KEY}/api/v2/",
        api_user_email=RAYNET_API_USER,
        api_key=RAYNET_API_KEY,
    )
    MicrosoftConnection.objects.create(
        organization=org, tenant_id=OUTLOOK_TENANT_ID, consent=MicrosoftConnection.Consent.GRANTED
    )
    with stored_sandbox(RaynetSandbox, KEY) as raynet, stored_sandbox(GraphSandbox, KEY) as outlook:
        raynet.state["instance"] = RAYNET_INSTANCE
        raynet.add_user(RAYNET_API_USER, "Acme Integration", api_key=RAYNET_API_KEY)
        outlook.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET)
        base = populate_world(org, raynet, outlook)
    world = HttpWorld(**{name: getattr(base, name) for name in base.__dataclass_fields__})
    world.server = server
    world.reload()
    return world


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the crash matrix (tests/test_sync_crash_matrix.py), when it ran."""
    if not CRASH_MATRIX:
        return
    columns = ["point", "killed", "duplicates", "lost", "converged"]
    rows = [{"point": point, **outcome} for point, outcome in CRASH_MATRIX.items()]
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    terminalreporter.section("crash matrix: SIGKILL right after each accepted write, then rerun")
    for row in [dict(zip(columns, columns, strict=True)), *rows]:
        terminalreporter.write_line(" | ".join(f"{row[c]:<{widths[c]}}" for c in columns).rstrip())
