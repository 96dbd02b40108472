"""What every benchmark needs: a database of its own, meters, and organizations wired to the sandboxes.

The sandboxes run in this process (through `responses`, as in the tests), so their CPU is ours to
subtract: every sandbox callback is timed with time.process_time and time.perf_counter, and a
Measurement reports our own CPU and wall time with the sandboxes' share taken out. DB statements are
counted with a connection execute wrapper; PostgreSQL's own CPU is another process and never counted.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import django

BENCH_DB_ENV = "BENCH_DATABASE_NAME"


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    # The latency section serves the sandboxes over HTTPS, as the demo does; without DEMO they are off.
    os.environ.setdefault("SANDBOX_ENABLED", "True")
    django.setup()
    from django.conf import settings
    from django.db import connections

    from tests.outlook_fixtures import GRAPH_HOST, LOGIN_HOST, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET

    name = os.environ.get(BENCH_DB_ENV)
    if name:  # a scenario's process: the runner made the database
        connections["default"].settings_dict["NAME"] = name
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # A deployed worker runs with DEBUG off. On, Django keeps the SQL of the last 9,000 statements
    # (connection.queries_log): about 40 MB of batched INSERTs and UPDATEs in the initial section, no part of
    # the product's memory or CPU (the setting is read at start only for the sandboxes, which stay on).
    settings.DEBUG = False
    settings.MICROSOFT_CLIENT_ID = OUTLOOK_CLIENT_ID
    settings.MICROSOFT_CLIENT_SECRET = OUTLOOK_CLIENT_SECRET
    settings.MICROSOFT_CLOUDS = {
        **settings.MICROSOFT_CLOUDS,
        "global": {"graph": f"{GRAPH_HOST}/v1.0", "authority": LOGIN_HOST},
    }


def bench_database_name(base: str) -> str:
    suffix = os.environ.get("TOX_PARALLEL_ENV", "")
    return f"test_{base}_bench" + (f"_{suffix}" if suffix else "")


@dataclass
class Measurement:
    """Our own cost over a stretch of code: sandboxes subtracted, DB statements counted."""

    cpu: float = 0.0  # seconds of this process's CPU, sandboxes' excluded
    wall: float = 0.0  # seconds elapsed, time inside the sandboxes excluded
    statements: int = 0
    advisory: int = 0  # of which advisory lock statements (pg_try_advisory_lock / unlock)
    sandbox_cpu: float = 0.0
    # Of cpu and wall, the part inside the mailboxes' own runs (service.sync_mapping); the rest is the
    # organization's (its rows, the Raynet listing and id scan), paid once a cycle however many mailboxes.
    runs_cpu: float = 0.0
    runs_wall: float = 0.0


class Meter:
    def __init__(self) -> None:
        self.sandbox_cpu = 0.0
        self.sandbox_wall = 0.0
        self.statements = 0
        self.advisory = 0

    def timed(self, callback: Callable) -> Callable:
        def call(request):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return callback(request)
            finally:
                self.sandbox_cpu += time.process_time() - cpu
                self.sandbox_wall += time.perf_counter() - wall

        return call

    def timed_runs(self, function: Callable, into: Measurement) -> Callable:
        """`function`, each call's CPU and wall time added to into.runs_cpu / runs_wall, sandboxes subtracted."""

        def call(*args, **kwargs):
            sandbox_cpu, sandbox_wall = self.sandbox_cpu, self.sandbox_wall
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into.runs_cpu += time.process_time() - cpu - (self.sandbox_cpu - sandbox_cpu)
                into.runs_wall += time.perf_counter() - wall - (self.sandbox_wall - sandbox_wall)

        return call

    def count_statement(self, execute, sql, params, many, context):
        self.statements += 1
        if "advisory" in sql:
            self.advisory += 1
        return execute(sql, params, many, context)

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        from django.db import connection

        result = Measurement()
        before = (self.sandbox_cpu, self.sandbox_wall, self.statements, self.advisory)
        cpu, wall = time.process_time(), time.perf_counter()
        with connection.execute_wrapper(self.count_statement):
            yield result
        sandbox_cpu = self.sandbox_cpu - before[0]
        result.cpu = time.process_time() - cpu - sandbox_cpu
        result.wall = time.perf_counter() - wall - (self.sandbox_wall - before[1])
        result.statements = self.statements - before[2]
        result.advisory = self.advisory - before[3]
        result.sandbox_cpu = sandbox_cpu


@dataclass
class BenchOrg:
    """An organization with both sandboxes, its mapped people and a meter around the sandboxes."""

    world: object  # tests.sync_fixtures.World
    meter: Meter
    people: list = field(default_factory=list)  # tests.sync_fixtures.Person, mapped

    @property
    def raynet(self):
        return self.world.raynet

    @property
    def outlook(self):
        return self.world.outlook

    @property
    def org(self):
        return self.world.org

    def sync(self, *, full: bool = False):
        return self.world.sync(full=full)

    def measured_sync(self) -> tuple[Measurement, dict[str, int]]:
        """One organization cycle: our cost and the requests each API received."""
        from unittest import mock

        from syncapp.sync import service

        self.world.reset_calls()
        with self.meter.measure() as cost:
            with mock.patch.object(service, "sync_mapping", self.meter.timed_runs(service.sync_mapping, cost)):
                self.world.sync()
        return cost, self.requests()

    def requests(self) -> dict[str, int]:
        graph_reads = self.outlook.count("GET", r"^v1\.0/")
        raynet_reads = self.raynet.count("GET")
        return {
            "graph": self.outlook.count(None, r"^v1\.0/"),
            "graph_writes": self.outlook.count(None, r"^v1\.0/") - graph_reads,
            "raynet": self.raynet.count(),
            "raynet_writes": self.raynet.count() - raynet_reads,
            # Reads of one item, apart from the poll's listings (Raynet's change and id listings, Graph's delta):
            # what a change costs beyond finding it.
            "raynet_record_reads": self.raynet.count("GET", r"^(meeting|event)/\d+/"),
            "graph_item_reads": graph_reads - self.outlook.count("GET", r"/calendarView/delta"),
        }


@contextmanager
def bench_org(users: int, *, name: str = "Bench s.r.o.") -> Iterator[BenchOrg]:
    """`users` mapped people (Alice and Bob first) on fresh sandboxes; requests are unlimited here,
    because the figures count them rather than letting the sandbox refuse them."""
    import responses

    from syncapp.providers.outlook import reset_token_apps
    from tests.sync_fixtures import add_person, build_world, map_person

    reset_token_apps()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        world = build_world(rsps, name=name)
        meter = Meter()
        for registered in rsps.registered():
            registered.callback = meter.timed(forgetful(rsps, registered.callback))
        world.raynet.set_daily_limit(10**9)
        # Raynet's change listing looks back MODIFIED_SINCE_OVERLAP (minutes) before the last poll: what is
        # set up here is dated an hour back, so an idle poll after it lists nothing, as it would in a day.
        # Acting as a person later (`act_now`) moves the clock to the present again.
        world.raynet.set_now(datetime.now(UTC) - timedelta(hours=1))
        people = [world.alice, world.bob]
        for n in range(len(people), users):
            person = add_person(world.raynet, world.outlook, f"user{n}@acme.test", f"User {n}")
            map_person(world.org, person)
            people.append(person)
        yield BenchOrg(world=world, meter=meter, people=people[:users])
    reset_token_apps()


def forgetful(rsps, callback: Callable) -> Callable:
    """The mock keeps every request and response it served (`rsps.calls`, and each registered response's
    own `calls` too), bodies included: hundreds of MB in a 20,000-event run that are no part of the
    product's memory. It keeps the last one only."""

    def call(request):
        rsps.calls.reset()
        for registered in rsps.registered():
            registered.calls.reset()
        return callback(request)

    return call


def act_now(bench: BenchOrg) -> None:
    """Raynet stamps what a person does now with the present time (see bench_org)."""
    bench.raynet.set_now(datetime.now(UTC))


def day_start(days: int = 0) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


def add_events(bench: BenchOrg, person, count: int, *, per_day: int = 8, first_day: int = 1, tag: str = "") -> None:
    """`count` events in the person's calendar from `first_day` on, `per_day` a day in 15-minute slots
    from 06:00 UTC; alternately made in Raynet (even n) and in Outlook (odd n)."""
    for n in range(count):
        start = day_start(first_day + n // per_day) + timedelta(hours=6, minutes=15 * (n % per_day))
        end = start + timedelta(minutes=10)
        title = f"{tag}Event {n} of {person.email}"
        if n % 2:
            bench.outlook.person_create_event(person.mailbox_id, title, start, end)
        else:
            bench.raynet.ui_create_activity("meeting", person.person_id, title, start, end)


def settle(bench: BenchOrg) -> None:
    """Sync until nothing changes: the first run creates, the second sees the echoes of its writes."""
    for _ in range(3):
        runs = bench.sync()
        if all(not run.counts for run in runs):
            return
    raise AssertionError("the organization did not settle in three runs")


def freeze_setup() -> None:
    """Keep what the setup made (the sandboxes' calendars: hundreds of thousands of objects that a worker
    never holds) out of the garbage collector's walks, as if the sandboxes ran in another process: a full
    collection during a measured cycle would otherwise count their size as our CPU."""
    gc.collect()
    gc.freeze()


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@contextmanager
def live_world(meetings: int = 5) -> Iterator:
    """Alice and Bob on sandboxes served over HTTPS from PostgreSQL with the portal's endpoints at a public
    https address (tests/http_world.py), `meetings` of Alice's meetings linked, her mailbox subscribed to
    Graph notifications, the Raynet webhook registered, and a real `qcluster` process running."""
    import signal
    import subprocess
    import sys
    import tempfile

    import trustme
    from django.conf import settings
    from django_q.status import Stat

    from syncapp import notifications
    from tests.http_world import ROOT, build_http_world, portal_over_tls
    from tests.sync_fixtures import soon

    authority = trustme.CA()
    with tempfile.TemporaryDirectory() as folder:
        ca_path = os.path.join(folder, "ca.pem")
        authority.cert_pem.write_to_path(ca_path)
        os.environ["REQUESTS_CA_BUNDLE"] = ca_path  # this process's sandbox deliveries and clients trust it
        with portal_over_tls(authority, ca_path) as server:
            settings.PUBLIC_BASE_URL = server.url
            world = build_http_world(server, settings)
            with world.acting() as acting:
                acting.outlook.state["deliver_http"] = True
                for n in range(meetings):
                    acting.raynet.ui_create_activity(
                        "meeting", world.alice.person_id, f"Meeting {n}", soon(2 + n), soon(2 + n, 11)
                    )
            world.sync()
            world.sync()
            assert notifications.mailbox_subscribe(mapping=world.alice.mapping)
            assert notifications.raynet_webhook_register(organization=world.org)
            with open(os.path.join(folder, "qcluster.log"), "w") as log:
                worker = subprocess.Popen(
                    [sys.executable, "manage.py", "qcluster"],
                    cwd=ROOT,
                    env=world.sync_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    started = time.monotonic()
                    while not Stat.get_all() and time.monotonic() - started < 30:
                        time.sleep(0.2)
                    yield world
                finally:
                    worker.send_signal(signal.SIGTERM)
                    try:
                        worker.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)  # its workers too
                        raise
