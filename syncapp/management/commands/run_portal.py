"""`make run`: the web server and the worker cluster together in the foreground; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

# Both children get SIGTERM together; what is still running after this many seconds is killed.
STOP_GRACE_SECONDS = 8


class Command(BaseCommand):
    help = "Run the web server (runserver) and the background worker (qcluster) until Ctrl-C or SIGTERM."

    def add_arguments(self, parser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--noreload", action="store_true", help="Do not restart the web server on code changes.")

    def handle(self, *args, addrport: str, noreload: bool, **options) -> None:
        manage = [sys.executable, sys.argv[0]]
        web = [*manage, "runserver", addrport, *(["--noreload"] if noreload else [])]
        # Each child leads its own process group: Ctrl-C reaches only this process, which stops them in order.
        children = [subprocess.Popen(command, start_new_session=True) for command in (web, [*manage, "qcluster"])]
        stop = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.append(True))
        while not stop and all(child.poll() is None for child in children):
            time.sleep(0.2)
        self.stdout.write("Stopping the web server and the worker…")
        stop_children(children)
        failed = [child.returncode for child in children if child.returncode not in (0, -signal.SIGTERM)]
        if failed and not stop:
            raise SystemExit(f"A process ended on its own (exit codes {failed}); both are stopped.")


def stop_children(children: list[subprocess.Popen]) -> None:
    """The web server's whole group (runserver's reloader runs the server as its child); the cluster's main
    process only, which stops its workers itself (a worker given SIGTERM directly dies mid-task)."""
    web, cluster = children
    if web.poll() is None:
        os.killpg(web.pid, signal.SIGTERM)
    if cluster.poll() is None:
        cluster.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
