"""Real processes against the test database: `manage.py qcluster` runs the scheduled poll, the mailbox lock holds
across clusters, SIGTERM stops them fast; `run_portal` (the demo, as `make run` starts it) serves, seeds and
prints the login, and SIGTERM stops everything."""

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
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule, Task
from django_q.status import Stat
from django_q.tasks import async_task

from syncapp import jobs
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


def start_manage(http_world, *args: str, **env: str) -> subprocess.Popen:
    """`manage.py ARGS` on the test database, talking to the world's sandboxes; one worker process."""
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=http_world.sync_env(Q_WORKERS="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a failed test kills the cluster's children too
    )


def test_two_real_clusters_run_the_scheduled_poll_never_sync_one_mailbox_at_once_and_stop_fast(http_world, monkeypatch):
    """Two `qcluster` processes (one worker each) on the test database: the clusters' own scheduler queues
    the due poll, its fan-out syncs both mailboxes; then both get tasks for Alice's mailbox while it syncs,
    and its runs never overlap; SIGTERM stops both within 10 s."""
    monkeypatch.setattr(Conf, "SYNC", False)  # what the test queues goes to the broker, for the clusters
    with http_world.acting() as world:
        world.raynet.ui_create_activity("meeting", world.alice.person_id, "Board meeting", soon(2), soon(2, 11))
        world.raynet.ui_create_activity("meeting", world.bob.person_id, "Site visit", soon(3), soon(3, 11))
    Schedule.objects.create(
        name="test: poll now",
        func="syncapp.tasks.sync_organization_task",
        args=f"({http_world.org.pk}, 'schedule')",
        schedule_type=Schedule.ONCE,
        next_run=timezone.now(),
    )
    # Q_GUARD_CYCLE=30: the guard runs django-q2's scheduler at its first cycle (see Q_CLUSTER in settings).
    clusters = [start_manage(http_world, "qcluster", Q_GUARD_CYCLE="30") for _ in range(2)]
    try:
        scheduled = SyncRun.objects.filter(trigger=SyncRun.Trigger.SCHEDULE, finished_at__isnull=False)
        assert wait_for(lambda: scheduled.count() == 2, seconds=60), [c.poll() for c in clusters]
        assert set(scheduled.values_list("status", flat=True)) == {SyncRun.Status.OK}
        http_world.reload()
        assert [e["subject"] for e in http_world.outlook_events(http_world.alice)] == ["Board meeting"]
        assert [e["subject"] for e in http_world.outlook_events(http_world.bob)] == ["Site visit"]

        alice = http_world.alice.mapping
        runs = SyncRun.objects.filter(mapping=alice, trigger=SyncRun.Trigger.WEBHOOK)
        with http_world.acting() as world:  # the next delta read of the mailbox answers 2 s late
            world.outlook.inject_fault(0, path="calendarView/delta", hold=2.0)
        jobs.mapping_sync_request(mapping=alice, trigger=SyncRun.Trigger.WEBHOOK)
        assert wait_for(lambda: runs.filter(finished_at__isnull=True).exists(), seconds=20)
        started = timezone.now()
        for _ in range(3):  # notifications while it syncs, and stray tasks for the other cluster to take
            jobs.mapping_sync_request(mapping=alice, trigger=SyncRun.Trigger.WEBHOOK)
            async_task("syncapp.tasks.sync_mapping_task", alice.pk)
        assert wait_for(
            lambda: not OrmQ.objects.exists() and runs.filter(finished_at__isnull=False).count() == 2, seconds=30
        )
        time.sleep(1)  # anything still to come would start now

        first, second = runs.order_by("started_at")
        assert runs.count() == 2  # the requests during the first run gave exactly one more run
        assert first.finished_at <= second.started_at  # never two at once
        alongside = Task.objects.filter(
            func="syncapp.tasks.sync_mapping_task", started__gte=started, stopped__lte=first.finished_at
        )
        assert alongside.exists()  # the other cluster had a task for the mailbox during the first run

        stopping = time.monotonic()
        for cluster in clusters:
            cluster.send_signal(signal.SIGTERM)
        for cluster in clusters:
            cluster.wait(timeout=15)
        assert time.monotonic() - stopping < 10
    finally:
        for cluster in clusters:
            if cluster.poll() is None:
                os.killpg(cluster.pid, signal.SIGKILL)
        outputs = [cluster.communicate()[0] for cluster in clusters]
    assert all("has stopped" in output for output in outputs), outputs[0][-2000:]


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

        def sandbox_over_https() -> bool:
            try:
                return requests.get(discovery, verify=str(bundle), timeout=2).json()["error"] == "invalid_tenant"
            except requests.RequestException:
                return False

        assert wait_for(sandbox_over_https, seconds=30), portal.poll()
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
        if portal.poll() is None:  # a failed test: run_portal stops its children (each in its own session) itself
            portal.send_signal(signal.SIGTERM)
            try:
                portal.wait(timeout=15)
            except subprocess.TimeoutExpired:
                portal.kill()
    assert "has stopped" in "".join(output), "".join(output)[-2000:]
