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
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from syncapp import jobs
from syncapp.models import ConnectionStatus, Organization, RaynetConnection, SyncRun, UserMapping
from syncapp.sync import service
from syncapp.sync.reasons import Gone
from syncapp.tasks import sync_mapping_task, sync_organization_task
from tests.sync_fixtures import run_queued, soon


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


def test_a_request_that_comes_while_the_mailbox_syncs_outlives_the_runs_outcome(world, queued, monkeypatch):
    mapping = world.alice.mapping
    real_engine_for = service.engine_for

    def engine_hearing_a_notification(*args, **kwargs):
        engine = real_engine_for(*args, **kwargs)
        real_run = engine.run

        def run(**kwargs):  # the row was read and the request claimed: now a notification comes
            if mapping.runs.count() == 1:
                jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
            return real_run(**kwargs)

        engine.run = run
        return engine

    monkeypatch.setattr(service, "engine_for", engine_hearing_a_notification)
    jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)

    assert len(sync_mapping_task(mapping.pk)) == 2


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


def test_a_request_left_waiting_by_a_run_that_takes_no_requests_is_queued_again_later(world, queued):
    """`manage.py sync` holds the mailbox and does not look at requests: the task that found it held ends, and
    the request would wait for good, swallowing every later notification of that mailbox, if it never aged."""
    mapping = world.alice.mapping
    jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    from django.db import connections

    cli = connections.create_connection("default")
    with cli.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [service.MAILBOX_LOCK_BASE + mapping.pk])
        assert sync_mapping_task(mapping.pk) == []  # the task ends; the request stays
        cursor.execute("SELECT pg_advisory_unlock(%s)", [service.MAILBOX_LOCK_BASE + mapping.pk])
    cli.close()
    tasks_before = queued()
    assert not jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)  # a task waits
    UserMapping.objects.filter(pk=mapping.pk).update(
        sync_requested_at=timezone.now() - jobs.REQUEST_LOST_AFTER - timedelta(seconds=1)
    )
    assert jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)  # lost: queued again
    assert queued() == tasks_before + 1
    assert [SyncRun.objects.get(pk=pk).trigger for pk in sync_mapping_task(mapping.pk)] == [SyncRun.Trigger.WEBHOOK]


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


# --- the poll's fan-out: one Raynet listing per organization, one task per mailbox ----------------------


def polled(world) -> list[str]:
    """Run the organization's task as the poll queues it; the names of the tasks it queued."""
    world.reset_calls()
    sync_organization_task(world.org.pk, SyncRun.Trigger.SCHEDULE)
    return [SignedPackage.loads(task.payload)["func"] for task in OrmQ.objects.order_by("pk")]


def test_the_poll_lists_raynet_once_and_each_mailbox_syncs_its_share_in_its_own_task(world, queued):
    world.sync()  # the first runs read the window; from here on the poll lists changes
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Alice's demo", soon(2), soon(2, 11))
    world.raynet.ui_create_activity("event", world.bob.person_id, "Bob's trip", soon(3), soon(3, 11))

    tasks = polled(world)

    assert tasks == ["syncapp.tasks.sync_mapping_task"] * 2
    assert world.raynet.count() == 4 and world.outlook.count(None, r"^v1\.0/") == 0  # listing + id scan
    world.reset_calls()
    assert run_queued() == 2
    assert world.raynet.count("GET") == 0  # the mailboxes took their rows from the share
    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Alice's demo"]
    assert [e["subject"] for e in world.outlook_events(world.bob)] == ["Bob's trip"]
    statuses = SyncRun.objects.filter(trigger=SyncRun.Trigger.SCHEDULE).values_list("status", flat=True)
    assert list(statuses) == [SyncRun.Status.OK] * 2


def test_an_idle_poll_costs_two_raynet_requests_one_graph_request_and_few_statements_per_mailbox(world, queued):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    world.sync()
    polled(world)
    run_queued()  # echoes settle
    statements = []
    for _ in range(2):
        polled(world)
        assert world.raynet.count() == 2  # the id scan showed nothing changed: no change listing (deletions.py)
        with CaptureQueriesContext(connection) as captured:
            assert run_queued() == 2
        assert world.outlook.count(None, r"^v1\.0/") == 2 and world.raynet.count() == 2  # one delta each
        # Not the broker's; nor savepoints, which are BEGIN/COMMIT outside the test's transaction (not statements).
        ours = [q for q in captured.captured_queries if "django_q_ormq" not in q["sql"] and "SAVEPOINT" not in q["sql"]]
        statements.append(len(ours) / 2)
    assert statements[0] == statements[1] <= 15, statements


def test_while_raynet_webhooks_are_live_a_poll_that_left_a_change_to_them_does_not_swallow_its_waiting_run(
    world, queued
):
    world.sync()
    polled(world)
    run_queued()
    RaynetConnection.objects.filter(organization=world.org).update(webhook_id="hook-1", webhook_seen_at=timezone.now())
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Demo", soon(2), soon(2, 11))
    jobs.mapping_sync_request(mapping=world.alice.mapping, trigger=SyncRun.Trigger.WEBHOOK)  # its webhook, waiting

    # The poll leaves the meetings' listing to the webhooks (the safety net is not due), so its share says
    # nothing of the new meeting: Alice's waiting run must not take the share for the whole truth.
    polled(world)
    run_queued()

    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Demo"]
    assert world.raynet.count("GET", r"^meeting/$") == 2  # the id scan, and Alice's run listing Raynet itself


def test_the_poll_asks_a_mailbox_to_check_a_vanished_record_but_not_a_deletion_held_for_the_admin(world, queued):
    world.sync()
    first, second = (
        world.raynet.ui_create_activity("meeting", world.alice.person_id, title, soon(day), soon(day, 11))
        for day, title in ((2, "Kickoff"), (3, "Review"))
    )
    world.sync()
    links = {link.raynet_id: link for link in world.alice.mapping.links.filter(raynet_id__in=[first, second])}
    for record_id in (first, second):
        world.raynet.ui_delete_activity("meeting", record_id)
    links[second].held_gone = Gone.DELETED_IN_RAYNET  # the mass-delete guard holds this one until an admin decides
    links[second].save(update_fields=["held_gone"])

    polled(world)

    checks = UserMapping.objects.get(pk=world.alice.mapping.pk).sync_request_checks
    assert checks == [["meeting", first]]  # the held one costs nothing per poll


def test_a_share_lost_in_a_crash_is_listed_again_by_the_next_poll(world, queued, monkeypatch):
    world.sync()
    world.raynet.ui_create_activity("meeting", world.alice.person_id, "Kickoff", soon(2), soon(2, 11))
    cursor = UserMapping.objects.get(pk=world.alice.mapping.pk).raynet_cursor
    polled(world)
    OrmQ.objects.all().delete()  # the worker died with the tasks; the shares are claimed by the next run
    monkeypatch.setattr(jobs, "sync_mapping", crash)
    with pytest.raises(SystemExit):
        sync_mapping_task(world.alice.mapping.pk)
    assert UserMapping.objects.get(pk=world.alice.mapping.pk).raynet_cursor == cursor  # nothing taken as synced
    monkeypatch.undo()
    monkeypatch.setattr(Conf, "SYNC", False)
    RaynetConnection.objects.filter(organization=world.org).update(next_poll_at=None)

    polled(world)
    run_queued()

    assert [e["subject"] for e in world.outlook_events(world.alice)] == ["Kickoff"]


def crash(**kwargs):
    raise SystemExit("killed")


def test_a_request_after_the_listing_makes_the_run_list_raynet_itself(world, queued):
    world.sync()
    polled(world)
    run_queued()
    OrmQ.objects.all().delete()
    polled(world)  # the share is read now; Bob then edits in Raynet and the webhook asks for a run
    world.raynet.ui_create_activity("meeting", world.bob.person_id, "Late change", soon(2), soon(2, 11))
    jobs.mapping_sync_request(mapping=world.bob.mapping, trigger=SyncRun.Trigger.WEBHOOK)
    assert UserMapping.objects.get(pk=world.bob.mapping.pk).sync_request_changes is None
    world.reset_calls()

    run_queued()

    assert world.raynet.count("GET", "meeting|event") == 2  # Bob's run listed his changes itself, Alice's did not
    assert [e["subject"] for e in world.outlook_events(world.bob)] == ["Late change"]
