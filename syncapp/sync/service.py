"""The ways to run a sync: a whole organization, one mapping, or a dry run of one mapping.

Used by jobs, the portal and the CLI. This module alone writes UserMapping (cursors, health, the
wait Raynet or Graph asked for) from the Outcome the engine returns, and the connections' outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from syncapp.models import ConnectionOutcome, ConnectionStatus, Organization, SyncRun, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError, UnreadableItem
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import DATETIME_KEYS, ENTITIES, RaynetClient
from syncapp.sync.deletions import IdScan, scan_raynet_ids
from syncapp.sync.engine import MappingPlan, MappingSync, Outcome
from syncapp.sync.observe import RaynetDirectory, SideFailed
from syncapp.sync.runlog import RunLog

logger = logging.getLogger("syncapp.sync")

MAILBOX_LOCK_BASE = 0x5259_0000_0000  # "RY": a namespace for pg advisory locks on mappings
# A connection's "Working" and last success are written at most this often, not on every run.
SUCCESS_RECORD_INTERVAL = timedelta(minutes=10)
MAPPING_WITH_CONNECTIONS = UserMapping.objects.select_related(
    "organization__policy", "organization__raynet", "organization__microsoft"
)
ORGANIZATION_WITH_CONNECTIONS = Organization.objects.select_related("policy", "raynet", "microsoft")


def make_clients(organization: Organization) -> tuple[RaynetClient, OutlookClient]:
    return RaynetClient(organization.raynet), OutlookClient(organization.microsoft)


@dataclass
class RaynetListing:
    """One organization-wide read of Raynet for a poll: the changes since the oldest cursor, routed to the
    mailboxes by owner, and the id scan that finds deletions (deletions.py)."""

    read_at: datetime  # the changes are known up to here: the mailboxes' cursors move here (organization_listing)
    incremental: list[UserMapping]  # the mappings that take their changes from it (the others read the window)
    changes: dict[int | None, list]
    id_scan: IdScan | None

    def __post_init__(self) -> None:
        # Asked once per mailbox: a set, not a walk through the list (that was O(mailboxes²) a cycle).
        self.incremental_ids = {mapping.pk for mapping in self.incremental}

    def takes_changes(self, mapping: UserMapping) -> bool:
        return mapping.pk in self.incremental_ids

    def changes_for(self, mapping: UserMapping) -> list | None:
        """The mapping's rows (a row without an owner goes to the first), or None: it reads its window."""
        if not self.takes_changes(mapping):
            return None
        unrouted = self.changes.get(None, []) if mapping is self.incremental[0] else []
        return self.changes.get(mapping.raynet_person_id, []) + unrouted


def organization_listing(
    *, organization: Organization, mappings: list[UserMapping], raynet: RaynetClient, full: bool = False
) -> RaynetListing:
    """List Raynet once for the organization's mappings. Raises ProviderError (any other failure is one too:
    a malformed answer must not stop every mailbox silently; each records why and waits for the next run)."""
    read_at = timezone.now()
    incremental = [m for m in mappings if not full and not needs_window_read(m)]
    since = min((m.raynet_cursor for m in incremental), default=None)
    live = raynet.connection.webhooks_live(read_at)
    try:
        window = mappings[0].effective_policy(organization.policy).window()
        # The listings and the id scan share one concurrency slot (two advisory-lock statements, not two each).
        with raynet.session.burst():
            id_scan = (
                scan_raynet_ids(raynet=raynet, connection=raynet.connection, window=window, webhooks_live=live)
                if incremental
                else None
            )
            # The id scan first: it tells which change listings are needed (deletions.IdScan.listings).
            entities, left_to_webhooks = id_scan.listings(since, webhooks_live=live) if id_scan else ([], False)
            changes = fetch_raynet_changes(raynet, since=since, entities=entities)
    except ProviderError:
        raise
    except Exception as exc:
        logger.exception("the Raynet listing of %s could not be read", organization)
        raise ProviderError(
            f"The organization's Raynet change listing could not be read ({type(exc).__name__}); "
            "every mailbox waits for the next run.",
            kind=ErrorKind.TRANSIENT,
            side="raynet",
        ) from exc
    if id_scan is not None:
        # The organization's one query for the links the scan should have shown and did not, made with the
        # listing (the organization's part of a cycle) rather than inside the first mailbox's run.
        id_scan.missed_by_mapping(organization_id=organization.pk, window=window)
    # The mailboxes' cursors move to the listing's time, or stay where the last listing left them while the
    # webhooks bring the changes: the safety net's listing then goes back as far as a lost webhook, and a request
    # heard since then (a webhook) makes its mailbox list Raynet itself (jobs.mapping_poll_request).
    known_to = since if left_to_webhooks else read_at
    return RaynetListing(read_at=known_to, incremental=incremental, changes=changes, id_scan=id_scan)


def sync_organization(*, organization: Organization, trigger: str, full: bool = False) -> list[SyncRun]:
    """Sync every enabled mapping in this process; Raynet is listed once for the organization, then routed.

    The worker does the same in parallel (syncapp/jobs.py organization_fan_out): the listing in one task,
    then one task per mailbox with its share."""
    # The organization's rows (policy, connections) as they are now, read once for the cycle: each mailbox's
    # run re-reads only its own row (sync_mapping).
    organization = ORGANIZATION_WITH_CONNECTIONS.get(pk=organization.pk)
    mappings = list(organization.mappings.filter(enabled=True).order_by("pk"))
    if not mappings or not organization.policy.sync_enabled:
        return []
    if not_ready_reason(mappings[0]):
        # Nothing can be read (a connection missing, stopped or paused): each mapping records why.
        return [sync_mapping(mapping=mapping, trigger=trigger) for mapping in mappings]
    raynet, outlook = make_clients(organization)
    directory = RaynetDirectory(raynet, organization)
    try:
        listing = organization_listing(organization=organization, mappings=mappings, raynet=raynet, full=full)
    except ProviderError as error:
        return [failed_run(m, trigger, error) for m in mappings]
    runs = []
    for mapping in mappings:
        try:
            runs.append(
                sync_mapping(
                    mapping=mapping,
                    trigger=trigger,
                    full=full,
                    clients=(raynet, outlook),
                    directory=directory,
                    raynet_changes=listing.changes_for(mapping),
                    id_scan=listing.id_scan if listing.takes_changes(mapping) else None,
                    read_at=listing.read_at,
                )
            )
        except Exception:
            # Recorded on the run and the mapping by sync_mapping; the other mailboxes still sync.
            logger.exception("sync of %s stopped on an internal error", mapping)
    return runs


def listing_shares(*, organization: Organization, listing: RaynetListing) -> dict[int, dict]:
    """Each incremental mapping's share of the listing, as JSON that its task reads in another process: the
    rows routed to it and the linked records in the window the id scan should have shown but did not (the
    run looks each up; 404 = deleted). One query for the organization's missed links, none per mailbox."""
    suspects: dict[int, list[list]] = {}
    if listing.id_scan is not None:
        window = listing.incremental[0].effective_policy(organization.policy).window()
        missed = listing.id_scan.missed_by_mapping(organization_id=organization.pk, window=window)
        suspects = {
            mapping_id: [[entity, record_id] for _pk, entity, record_id in rows] for mapping_id, rows in missed.items()
        }
    return {
        mapping.pk: {
            "read_at": listing.read_at.isoformat(),
            "rows": [encoded_row(row) for row in listing.changes_for(mapping) or []],
            "checks": suspects.get(mapping.pk, []),
        }
        for mapping in listing.incremental
    }


def encoded_row(row: dict | UnreadableItem) -> dict:
    if isinstance(row, UnreadableItem):
        return {"_unreadable": asdict(row)}
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def decoded_row(row: dict) -> dict | UnreadableItem:
    if "_unreadable" in row:
        return UnreadableItem(**row["_unreadable"])
    return {
        key: datetime.fromisoformat(value) if key in DATETIME_KEYS and isinstance(value, str) else value
        for key, value in row.items()
    }


def fetch_raynet_changes(
    raynet: RaynetClient, *, since: datetime | None, owner_id: int | None = None, entities: Iterable[str] = ENTITIES
) -> dict[int | None, list]:
    """Meetings and events (of `entities`) changed since `since`, by owner person id (one listing per type).

    A row that could not be read has no owner to route it by: it is filed under None.
    """
    by_owner: dict[int | None, list] = {}
    if since is None:
        return by_owner
    for entity in entities:
        for activity in raynet.list_activities(entity, owner_id=owner_id, modified_since=since):
            if isinstance(activity, UnreadableItem):
                by_owner.setdefault(owner_id, []).append(activity)
                continue
            owner = activity.get("owner") or {}
            by_owner.setdefault(owner.get("id") if isinstance(owner, dict) else owner, []).append(activity)
    return by_owner


def sync_mapping(
    *,
    mapping: UserMapping,
    trigger: str,
    full: bool = False,
    clients: tuple[RaynetClient, OutlookClient] | None = None,
    directory: RaynetDirectory | None = None,
    raynet_changes: list | None = None,
    id_scan: IdScan | None = None,
    read_at: datetime | None = None,
    lock_held: bool = False,
) -> SyncRun:
    """Sync one Raynet user with one mailbox. Never runs twice at once for the same mailbox (`lock_held`:
    the caller holds mailbox_lock already)."""
    with nullcontext(True) if lock_held else mailbox_lock(mapping.pk) as locked:
        if not locked:
            return skipped_run(mapping, trigger, "Another sync of this mailbox is running.")
        reread(mapping, in_cycle=clients is not None)
        reason = not_ready_reason(mapping) or waiting_reason(mapping)
        if reason:
            return skipped_run(mapping, trigger, reason)
        raynet, outlook = clients or make_clients(mapping.organization)
        read_at = read_at or timezone.now()
        log = RunLog(SyncRun.objects.create(organization_id=mapping.organization_id, mapping=mapping, trigger=trigger))
        deadline = time.monotonic() + settings.SYNC_RUN_DEADLINE
        raynet.session.deadline = outlook.session.deadline = deadline
        try:
            # A first sync that waited for budget goes on, with a whole read of both sides, once there is some.
            full = full or first_sync_resumes(mapping)
            if full or needs_window_read(mapping):
                raynet_changes = None  # the window is read whole (a share of an earlier poll is not enough)
            elif raynet_changes is None:
                owner = mapping.raynet_person_id
                changes = fetch_raynet_changes(raynet, since=mapping.raynet_cursor, owner_id=owner)
                raynet_changes = changes.get(owner, [])
            spent_today = None if mapping.first_sync_done_at else raynet.connection.first_sync_used_today()
            engine = engine_for(mapping, raynet, outlook, log, directory, deadline, first_sync_spent=spent_today)
            spent_before = raynet.responses
            try:
                outcome = engine.run(full=full, raynet_changes=raynet_changes, id_scan=id_scan)
            finally:
                if spent_today is not None:
                    created = log.run.counts.get("to_raynet", {}).get("created", 0)
                    raynet.connection.record_first_sync_spend(requests=raynet.responses - spent_before, created=created)
        except (SideFailed, ProviderError) as failure:
            return fail(mapping, log, failure, clients=(raynet, outlook))
        except Exception as exc:
            mapping.set_health(UserMapping.Health.ERROR, "The sync stopped on an internal error; support is notified.")
            log.finish(SyncRun.Status.FAILED, f"Internal error: {type(exc).__name__}")
            raise
        record_outcome(mapping, outcome, log, read_at=read_at, whole_window=raynet_changes is None)
        for client in (raynet, outlook):
            note_success(client.connection)
        return log.finish()


def reread(mapping: UserMapping, *, in_cycle: bool) -> None:
    """The row as it is now (cursors, health, a stop), read under the mailbox lock. In an organization cycle
    the organization's rows (policy, connections) are the cycle's, read once for all its mailboxes and kept
    up to date by its clients; alone, the run reads them with the row, in one query."""
    if not in_cycle:
        mapping.refresh_from_db(from_queryset=MAPPING_WITH_CONNECTIONS)
        return
    organization = mapping.organization
    mapping.refresh_from_db()
    mapping.organization = organization


def record_outcome(
    mapping: UserMapping, outcome: Outcome, log: RunLog, *, read_at: datetime, whole_window: bool
) -> None:
    if mapping.first_sync_done_at is None:
        # A whole-window read counts what is left; a run of changes only adds what it had to leave.
        mapping.first_sync_pending = outcome.deferred + (0 if whole_window else mapping.first_sync_pending)
        if whole_window and outcome.released and not outcome.deferred:
            mapping.first_sync_done_at = timezone.now()
    if outcome.released:
        mapping.graph_delta_link = outcome.delta_link
        mapping.graph_delta_window_start = outcome.window_start
        mapping.raynet_cursor = read_at
    if outcome.used_approval:
        mapping.mass_delete_approved = False
    mapping.not_before = outcome.not_before
    mapping.last_synced_at = timezone.now()
    if outcome.flag_reason:
        mapping.health, mapping.health_reason = UserMapping.Health.FLAGGED, outcome.flag_reason
    elif mapping.health != UserMapping.Health.FLAGGED or outcome.released:
        mapping.health, mapping.health_reason = health_after(log, outcome)
    # Only what a run decides: a request for the next run (sync_requested_at …) may have come meanwhile.
    mapping.save(update_fields=RUN_OUTCOME_FIELDS)


RUN_OUTCOME_FIELDS = [
    "graph_delta_link",
    "graph_delta_window_start",
    "raynet_cursor",
    "mass_delete_approved",
    "not_before",
    "last_synced_at",
    "health",
    "health_reason",
    "first_sync_pending",
    "first_sync_done_at",
]


def mapping_dry_run(*, mapping: UserMapping) -> MappingPlan:
    """What the first (or next full) run of a mapping would do, enabled or not. Writes nothing.

    Reading writes nothing by construction (observe.py, plan.py); the clients' own bookkeeping (the
    Raynet budget numbers they keep on the connection row) is rolled back with everything else, so
    the database is as it was.
    """
    if (
        getattr(mapping.organization, "raynet", None) is None
        or getattr(mapping.organization, "microsoft", None) is None
    ):
        # A ProviderError, as any other reason the preview cannot be read: the portal shows its words.
        raise ProviderError("Raynet and Microsoft 365 must both be connected first.", kind=ErrorKind.VALIDATION)
    raynet, outlook = make_clients(mapping.organization)
    raynet.session.deadline = outlook.session.deadline = time.monotonic() + settings.SYNC_RUN_DEADLINE
    with transaction.atomic():
        engine = engine_for(mapping, raynet, outlook, None, None, None)
        plan = engine.preview()
        transaction.set_rollback(True)
    return plan


def needs_window_read(mapping: UserMapping) -> bool:
    """Once a day (the window moves on) and first of all, a mapping reads its whole window; and a first sync
    that waits for budget, once there is some."""
    window_start = mapping.effective_policy(mapping.organization.policy).window()[0]
    if mapping.raynet_cursor is None or mapping.graph_delta_window_start != window_start.date():
        return True
    return first_sync_resumes(mapping)


def first_sync_resumes(mapping: UserMapping) -> bool:
    """A first sync left events for later (the budget's share was spent) and today's share has room again."""
    if mapping.first_sync_done_at is not None or not mapping.first_sync_pending:
        return False
    raynet = getattr(mapping.organization, "raynet", None)
    return raynet is not None and raynet.first_sync_room() > 0


def engine_for(mapping, raynet, outlook, log, directory, deadline, *, first_sync_spent=None) -> MappingSync:
    policy = mapping.effective_policy(mapping.organization.policy)
    directory = directory or RaynetDirectory(raynet, mapping.organization)
    return MappingSync(
        mapping=mapping,
        policy=policy,
        raynet=raynet,
        outlook=outlook,
        log=log,
        zone=ZoneInfo(mapping.organization.raynet.timezone),
        window=policy.window(),
        directory=directory,
        deadline=deadline,
        first_sync_spent=first_sync_spent,
    )


def not_ready_reason(mapping: UserMapping) -> str:
    organization = mapping.organization
    if not organization.policy.sync_enabled:
        return "Sync is switched off for the organization."
    if not mapping.enabled:
        return "Sync is switched off for this user."
    raynet = getattr(organization, "raynet", None)
    microsoft = getattr(organization, "microsoft", None)
    if raynet is None or microsoft is None:
        return "Raynet and Microsoft 365 must both be connected first."
    if raynet.is_paused():
        return f"Raynet's daily API budget is spent; sync resumes at {raynet.paused_until:%Y-%m-%d %H:%M} UTC."
    if ConnectionStatus.DISABLED in (raynet.status, microsoft.status):
        return "A connection is stopped until an admin fixes it: " + (raynet.last_error or microsoft.last_error)
    return ""


def waiting_reason(mapping: UserMapping) -> str:
    if mapping.not_before is not None and mapping.not_before > timezone.now():
        return (
            f"Raynet or Microsoft asked to wait; the next sync runs after {mapping.not_before:%Y-%m-%d %H:%M:%S} UTC."
        )
    return ""


def health_after(log: RunLog, outcome: Outcome) -> tuple[str, str]:
    if log.errors:
        return UserMapping.Health.WARNING, f"{log.errors} event(s) could not be synced in the last run; see the log."
    if log.unreadable:
        return UserMapping.Health.WARNING, f"{log.unreadable} item(s) could not be read in the last run; see the log."
    if outcome.not_before is not None:
        return UserMapping.Health.WARNING, f"Throttled: the sync continues after {outcome.not_before:%H:%M:%S} UTC."
    return UserMapping.Health.OK, ""


def fail(
    mapping: UserMapping,
    log: RunLog,
    failure: SideFailed | ProviderError,
    *,
    clients: tuple[RaynetClient, OutlookClient] | None = None,
) -> SyncRun:
    error = failure.error if isinstance(failure, SideFailed) else failure
    message = str(failure) if isinstance(failure, SideFailed) else error.message
    if error.kind == ErrorKind.BUDGET_SPENT:
        mapping.set_health(UserMapping.Health.WARNING, message)
        return log.finish(SyncRun.Status.SKIPPED, message)
    target = failed_connection(mapping, error.side or getattr(failure, "side", ""), clients)
    if error.kind == ErrorKind.AUTH and target is not None:
        target.record_failure(message, permanent=True)  # only the admin can fix it: the connection stops
    elif not error.permanent and target is not None:
        target.record_failure(message, permanent=False)
    if error.retry_after and error.retryable:
        mapping.not_before = timezone.now() + timedelta(seconds=error.retry_after)
        mapping.save(update_fields=["not_before"])
    mapping.set_health(UserMapping.Health.ERROR, message)
    logger.warning("sync of %s failed: %s", mapping, message)
    return log.finish(SyncRun.Status.FAILED, message)


def failed_connection(mapping: UserMapping, side: str, clients) -> ConnectionOutcome | None:
    """The connection that actually failed, by the error's side (never guessed as Raynet)."""
    if side not in ("raynet", "outlook"):
        return None
    if clients is not None:
        return clients[0].connection if side == "raynet" else clients[1].connection
    return mapping.organization.raynet if side == "raynet" else mapping.organization.microsoft


def note_success(connection_row: ConnectionOutcome) -> None:
    """Status Working and the last success, written when they change or have grown old (not on every run)."""
    last = connection_row.last_success_at
    if connection_row.status != ConnectionStatus.OK or last is None or timezone.now() - last > SUCCESS_RECORD_INTERVAL:
        connection_row.record_success()


def skipped_run(mapping: UserMapping, trigger: str, reason: str) -> SyncRun:
    return SyncRun.objects.create(
        organization_id=mapping.organization_id,
        mapping=mapping,
        trigger=trigger,
        status=SyncRun.Status.SKIPPED,
        error=reason,
        finished_at=timezone.now(),
    )


def failed_run(mapping: UserMapping, trigger: str, error: ProviderError) -> SyncRun:
    log = RunLog(SyncRun.objects.create(organization_id=mapping.organization_id, mapping=mapping, trigger=trigger))
    return fail(mapping, log, SideFailed(error.side or "raynet", error))


@contextmanager
def mailbox_lock(mapping_id: int) -> Iterator[bool]:
    """A PostgreSQL session advisory lock: one sync per mailbox across every worker and process."""
    key = MAILBOX_LOCK_BASE + mapping_id
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        locked = cursor.fetchone()[0]
        try:
            yield locked
        finally:
            if locked:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
