"""Real processes against the test database: `manage.py qcluster` runs a scheduled sync, `run_portal` (the demo,
as `make run` starts it) serves, seeds and prints the login; SIGTERM stops them fast."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import Schedule
from django_q.scheduler import scheduler
from django_q.status import Stat

from syncapp.models import SyncRun
from tests.http_world import ROOT
from tests.sync_fixtures import soon
from tests.test_settings import url_of_the_test_database


def wait_for(condition, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def start_manage(http_world, *args: str) -> subprocess.Popen:
    """`manage.py ARGS` on the test database, talking to the world's sandboxes; one worker process."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=http_world.sync_env(Q_WORKERS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_real_worker_runs_a_scheduled_sync_and_stops_within_10_s_of_sigterm(http_world, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)  # the schedule's task goes to the broker, for the worker process
    with http_world.acting() as world:
        world.raynet.ui_create_activity("meeting", world.alice.person_id, "Board meeting", soon(2), soon(2, 11))
    worker = start_manage(http_world, "qcluster")
    try:
        Schedule.objects.create(
            name="test: poll now",
            func="syncapp.tasks.sync_organization_task",
            args=f"({http_world.org.pk}, 'schedule')",
            schedule_type=Schedule.ONCE,
            next_run=timezone.now(),
        )
        # The cluster's guard loop calls this same scheduler every 30 s; calling it here saves the wait.
        scheduler(broker=get_broker())
        finished = SyncRun.objects.filter(trigger=SyncRun.Trigger.SCHEDULE, finished_at__isnull=False)
        assert wait_for(lambda: finished.count() == 2, seconds=30), worker.poll()
        assert set(finished.values_list("status", flat=True)) == {SyncRun.Status.OK}
        http_world.reload()
        assert [e["subject"] for e in http_world.outlook_events(http_world.alice)] == ["Board meeting"]
        time.sleep(1)  # idle again
        stopping = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=15)
        assert time.monotonic() - stopping < 10
    finally:
        if worker.poll() is None:
            worker.kill()
        output = worker.communicate()[0]
    assert "has stopped" in output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_demo_run_portal_serves_seeds_prints_the_login_and_sigterm_stops_everything_within_10_s(
    transactional_db, tmp_path
):
    """`make run` as it runs on a fresh checkout (DEMO=1): web, worker, HTTPS for the sandboxes, then the seed."""
    port, https_port = free_port(), free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MICROSOFT_", "GRAPH_", "SANDBOX_", "PUBLIC_", "REQUESTS_CA"))
    }
    env |= {
        "DATABASE_URL": url_of_the_test_database(),
        "DEMO": "1",
        "DEMO_HTTPS_URL": f"https://127.0.0.1:{https_port}",
        "DEMO_TLS_DIR": str(tmp_path / "tls"),
        "Q_WORKERS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    portal = subprocess.Popen(
        [sys.executable, "manage.py", "run_portal", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(portal.stdout), daemon=True).start()
    try:

        def serving() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(serving, seconds=30), portal.poll()
        bundle = tmp_path / "tls" / "ca-bundle.pem"
        discovery = f"https://127.0.0.1:{https_port}/sandbox/graph/demo/x/v2.0/.well-known/openid-configuration"
        assert requests.get(discovery, verify=str(bundle), timeout=5).json()["error"] == "invalid_tenant"
        assert wait_for(lambda: Stat.get_all(), seconds=20)  # the worker cluster reports itself
        login = "sign in as demo@example.com, password raysync-demo"
        assert wait_for(lambda: any(login in line for line in output), seconds=90), "".join(output)[-3000:]
        assert SyncRun.objects.filter(status=SyncRun.Status.OK).exists()  # the first sync ran
        stopping = time.monotonic()
        portal.send_signal(signal.SIGTERM)
        portal.wait(timeout=15)
        assert time.monotonic() - stopping < 10
        assert not serving()
        with pytest.raises(requests.ConnectionError):
            requests.get(discovery, verify=str(bundle), timeout=2)
    finally:
        if portal.poll() is None:
            portal.kill()
    assert "has stopped" in "".join(output), "".join(output)[-2000:]
