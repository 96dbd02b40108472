"""A real `manage.py qcluster` against the test database: a scheduled sync completes; SIGTERM stops it fast."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

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


def test_run_portal_serves_and_works_and_sigterm_stops_both_within_10_s(http_world):
    port = free_port()
    portal = start_manage(http_world, "run_portal", f"127.0.0.1:{port}", "--noreload")
    try:

        def serving() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        assert wait_for(serving, seconds=30), portal.poll()
        assert wait_for(lambda: Stat.get_all(), seconds=20)  # the worker cluster reports itself
        stopping = time.monotonic()
        portal.send_signal(signal.SIGTERM)
        portal.wait(timeout=15)
        assert time.monotonic() - stopping < 10
        assert not serving()
    finally:
        if portal.poll() is None:
            portal.kill()
        output = portal.communicate()[0]
    assert "has stopped" in output, output[-2000:]
