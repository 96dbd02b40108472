"""`make run`: the web server and the worker cluster together in the foreground; Ctrl-C stops everything.

With the demo on (settings.DEMO) also the HTTPS server the sandboxes and our callback endpoints need
(`serve_tls`), and once it answers `seed_demo`, which seeds the demo organization the first time, syncs it and
prints how to sign in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from syncapp.sandbox.tls import demo_certificates, wait_until_answering

# Every child gets SIGTERM together; what is still running after this many seconds is killed.
STOP_GRACE_SECONDS = 8
HTTPS_START_SECONDS = 60


class Command(BaseCommand):
    help = "Run the web server (runserver) and the background worker (qcluster) until Ctrl-C or SIGTERM."

    def add_arguments(self, parser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--noreload", action="store_true", help="Do not restart the web server on code changes.")

    def handle(self, *args, addrport: str, noreload: bool, **options) -> None:
        manage = [sys.executable, sys.argv[0]]
        commands = [[*manage, "runserver", addrport, *(["--noreload"] if noreload else [])], [*manage, "qcluster"]]
        if settings.DEMO:
            # Made before any child starts: every child's sessions verify with the bundle from their first request.
            demo_certificates(settings.DEMO_TLS_DIR)
            commands.append([*manage, "serve_tls"])
        # Each child leads its own process group: Ctrl-C reaches only this process, which stops them in order.
        children = [subprocess.Popen(command, start_new_session=True) for command in commands]
        stop = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.append(True))
        portal = f"http://{addrport}/"
        self.stdout.write(f"Portal: {portal}  (admin: {portal}admin/)")
        seeding = None
        if settings.DEMO and wait_until_answering(
            settings.DEMO_HTTPS_URL,
            seconds=HTTPS_START_SECONDS,
            still_waiting=lambda: not stop and all(child.poll() is None for child in children),
        ):
            seeding = subprocess.Popen([*manage, "seed_demo", "--portal-url", portal], start_new_session=True)
        while not stop and all(child.poll() is None for child in children):
            if seeding is not None and seeding.poll() is not None:
                if seeding.returncode:
                    self.stderr.write("The demo could not be seeded (see above); the portal runs anyway.")
                seeding = None
            time.sleep(0.2)
        self.stdout.write("Stopping the web server and the worker…")
        stop_children(children, seeding)
        failed = [child.returncode for child in children if child.returncode not in (0, -signal.SIGTERM)]
        if failed and not stop:
            raise SystemExit(f"A process ended on its own (exit codes {failed}); all are stopped.")


def stop_children(children: list[subprocess.Popen], seeding: subprocess.Popen | None) -> None:
    """The web server's whole group (runserver's reloader runs the server as its child); the cluster's main
    process only, which stops its workers itself (a worker given SIGTERM directly dies mid-task); the HTTPS
    server and a seed under way (each of its steps is kept or redone whole by the next seed)."""
    web, *others = children
    if web.poll() is None:
        os.killpg(web.pid, signal.SIGTERM)
    running = [*others, *([seeding] if seeding is not None else [])]
    for child in running:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in [web, *running]:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
