"""Background sync (syncapp/jobs.py): coalesced requests, retries, the budget-driven poll, schedules, brokers."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.tasks import async_task

from syncapp import jobs
from syncapp.models import ConnectionStatus, Organization, RaynetConnection, SyncRun, UserMapping
from syncapp.sync import service
from syncapp.tasks import sync_mapping_task
from tests.sync_fixtures import soon


@pytest.fixture
def queued(monkeypatch):
    """Tasks go to the ORM broker instead of running at once; returns a function counting queued tasks."""
    monkeypatch.setattr(Conf, "SYNC", False)
    return lambda: OrmQ.objects.count()


def test_requests_coalesce_and_one_during_a_run_gives_exactly_one_more(world, queued, monkeypatch):
    mapping = world.alice.mapping
    for _ in range(5):
        jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    assert queued() == 1  # five notifications, one task

    real_sync = service.sync_mapping
    calls = []

    def sync_while_notifications_arrive(**kwargs):
        calls.append(kwargs["trigger"])
        if len(calls) == 1:  # three more notifications while the first run is under way
            for _ in range(3):
                jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)
        return real_sync(**kwargs)

    monkeypatch.setattr(jobs, "sync_mapping", sync_while_notifications_arrive)
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Kickoff", soon(2), soon(2, 11))
    runs = sync_mapping_task(mapping.pk)
    assert calls == [SyncRun.Trigger.WEBHOOK, SyncRun.Trigger.MANUAL]  # exactly one more run, not three
    assert len(runs) == 2 and queued() == 2  # the second queued task finds nothing left to do
    assert sync_mapping_task(mapping.pk) == []
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Kickoff"]


def test_a_request_while_another_worker_holds_the_mailbox_is_run_by_the_holder(world, queued):
    mapping = world.alice.mapping
    jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    from django.db import connections

    other = connections.create_connection("default")  # another worker's database session holds the lock
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [service.MAILBOX_LOCK_BASE + mapping.pk])
        assert sync_mapping_task(mapping.pk) == []  # no run and no SKIPPED run: the request stays pending
        assert UserMapping.objects.get(pk=mapping.pk).sync_requested_at is not None
        cursor.execute("SELECT pg_advisory_unlock(%s)", [service.MAILBOX_LOCK_BASE + mapping.pk])
    other.close()
    assert [SyncRun.objects.get(pk=pk).status for pk in sync_mapping_task(mapping.pk)] == [SyncRun.Status.OK]


def test_a_transient_failure_is_retried_when_the_api_allows(world, queued):
    mapping = world.alice.mapping
    world.outlook.throttle(times=50, retry_after="120")
    jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    runs = sync_mapping_task(mapping.pk)
    mapping.refresh_from_db()
    assert SyncRun.objects.get(pk=runs[0]).status == SyncRun.Status.FAILED
    retry = Schedule.objects.get(func="syncapp.tasks.retry_mapping_task")
    assert retry.args == str((mapping.pk,)) or retry.args == f"({mapping.pk},)"
    assert mapping.not_before is not None and abs((retry.next_run - mapping.not_before).total_seconds()) < 1
    assert retry.next_run > timezone.now() + timedelta(seconds=100)  # Retry-After: 120 s honoured


def test_the_retry_backoff_doubles_with_failures_in_a_row(world):
    mapping = world.alice.mapping
    assert jobs.retry_backoff(mapping) == timedelta(minutes=1)
    for minutes_ago in (30, 20, 10):
        SyncRun.objects.create(
            organization=world.org,
            mapping=mapping,
            trigger="schedule",
            status=SyncRun.Status.FAILED,
            started_at=timezone.now() - timedelta(minutes=minutes_ago),
        )
    assert jobs.retry_backoff(mapping) == timedelta(minutes=4)
    SyncRun.objects.create(organization=world.org, mapping=mapping, trigger="schedule", status=SyncRun.Status.OK)
    assert jobs.retry_backoff(mapping) == timedelta(minutes=1)


def test_a_permanent_failure_sets_health_and_is_not_retried(world, queued):
    mapping = world.alice.mapping
    world.outlook.revoke_consent(world.org.microsoft.tenant_id)
    jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    sync_mapping_task(mapping.pk)
    mapping.refresh_from_db()
    world.org.microsoft.refresh_from_db()
    assert world.org.microsoft.status == ConnectionStatus.DISABLED
    assert mapping.health == UserMapping.Health.ERROR and mapping.health_reason
    assert not Schedule.objects.filter(func="syncapp.tasks.retry_mapping_task").exists()
    assert jobs.poll_cycle() == []  # the poll leaves it alone too, until an admin acts


def budget(connection: RaynetConnection, *, limit: int, remaining: int, hours_to_reset: float) -> None:
    connection.rate_limit_limit, connection.rate_limit_remaining = limit, remaining
    connection.rate_limit_reset_at = timezone.now() + timedelta(hours=hours_to_reset)
    connection.save()


def test_the_poll_interval_stretches_as_the_budget_runs_low(org, raynet_connection, settings):
    settings.SYNC_POLL_INTERVAL_MINUTES = 5
    budget(raynet_connection, limit=10000, remaining=9000, hours_to_reset=10)
    assert jobs.poll_interval(connection=raynet_connection, mailboxes=10) == timedelta(minutes=5)
    budget(raynet_connection, limit=10000, remaining=1500, hours_to_reset=10)
    stretched = jobs.poll_interval(connection=raynet_connection, mailboxes=10)
    # 500 usable requests above the 10 % reserve, 26 per poll: 19 polls in 10 hours, one every ~31 minutes.
    assert timedelta(minutes=30) < stretched < timedelta(minutes=33)
    budget(raynet_connection, limit=10000, remaining=1010, hours_to_reset=10)
    assert jobs.poll_interval(connection=raynet_connection, mailboxes=10) > timedelta(hours=9, minutes=59)


def test_the_poll_queues_due_organizations_and_a_spent_budget_pauses_visibly(world, queued):
    raynet = world.org.raynet
    assert jobs.poll_cycle() == [world.org.pk] and queued() == 1
    assert jobs.poll_cycle() == []  # not due again before its interval
    RaynetConnection.objects.filter(pk=raynet.pk).update(
        next_poll_at=None, paused_until=timezone.now() + timedelta(hours=3)
    )
    assert jobs.poll_cycle() == [] and queued() == 1
    raynet.refresh_from_db()
    assert raynet.status == ConnectionStatus.PAUSED and raynet.get_status_display().startswith("Paused")
    RaynetConnection.objects.filter(pk=raynet.pk).update(paused_until=timezone.now() - timedelta(seconds=1))
    assert jobs.poll_cycle() == [world.org.pk]
    raynet.refresh_from_db()
    assert raynet.status == ConnectionStatus.NEW


def test_setup_schedules_is_idempotent(db, settings):
    settings.SYNC_POLL_INTERVAL_MINUTES = 7
    call_command("setup_schedules")
    first = {s.name: (s.func, s.schedule_type, s.minutes, s.next_run) for s in Schedule.objects.all()}
    call_command("setup_schedules")
    again = {s.name: (s.func, s.schedule_type, s.minutes, s.next_run) for s in Schedule.objects.all()}
    assert first == again and len(first) == 4
    assert first["raysync: poll"][1:3] == (Schedule.MINUTES, 7)
    settings.SYNC_POLL_INTERVAL_MINUTES = 3
    call_command("setup_schedules")
    assert Schedule.objects.get(name="raysync: poll").minutes == 3 and Schedule.objects.count() == 4


def test_log_retention_deletes_old_runs_only(world, settings):
    settings.LOG_RETENTION_DAYS = 90
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Kickoff", soon(2), soon(2, 11))
    world.sync()
    old = SyncRun.objects.create(organization=world.org, trigger="schedule", started_at=timezone.now() - timedelta(91))
    assert jobs.log_retention_cleanup() == 1
    assert not SyncRun.objects.filter(pk=old.pk).exists() and SyncRun.objects.count() == 2


def test_the_redis_broker_is_used_by_configuration(monkeypatch, db):
    """Against the machine's Redis (127.0.0.1:6379), as in CI: a queued task goes through Redis."""
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis
    from django_q.signing import SignedPackage

    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:6379/15")
    broker = get_broker(list_key="raysync-test")
    assert isinstance(broker, Redis) and broker.ping()
    broker.purge_queue()
    monkeypatch.setattr(jobs, "async_task", functools.partial(async_task, broker=broker))
    jobs.organization_sync_request(organization=Organization(pk=42), trigger="schedule")
    assert broker.queue_size() == 1 and OrmQ.objects.count() == 0
    task = SignedPackage.loads(broker.dequeue()[0][1])
    assert task["func"] == "syncapp.tasks.sync_organization_task" and task["args"] == (42, "schedule")
    broker.delete_queue()


def test_q_broker_url_selects_redis_in_settings():
    code = "from portal import settings as s; print(s.Q_CLUSTER.get('redis'), s.Q_CLUSTER.get('orm'))"
    env = {**os.environ, "Q_BROKER_URL": "redis://127.0.0.1:6379/3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["redis://127.0.0.1:6379/3", "None"]
    env["Q_BROKER_URL"] = "amqp://elsewhere"
    refused = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "Q_BROKER_URL must be a redis://" in refused.stderr
