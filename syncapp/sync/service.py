"""The two ways to run a sync: a whole organization, or one mapping (used by jobs, the portal and the CLI)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from zoneinfo import ZoneInfo

from django.db import connection
from django.utils import timezone

from syncapp.models import ConnectionStatus, Organization, SyncRun, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.sync.engine import MappingSync, RaynetDirectory, SideFailed
from syncapp.sync.runlog import RunLog

logger = logging.getLogger("syncapp.sync")

MAILBOX_LOCK_BASE = 0x5259_0000_0000  # "RY": a namespace for pg advisory locks on mappings


def make_clients(organization: Organization):
    from syncapp.providers.outlook import OutlookClient
    from syncapp.providers.raynet import RaynetClient

    return RaynetClient(organization.raynet), OutlookClient(organization.microsoft)


def sync_organization(*, organization: Organization, trigger: str, full: bool = False) -> list[SyncRun]:
    """Sync every enabled mapping; Raynet changes are listed once for the organization, then routed by owner."""
    mappings = list(organization.mappings.filter(enabled=True).order_by("pk"))
    if not mappings or not organization.policy.sync_enabled:
        return []
    if not_ready_reason(mappings[0]):
        # Nothing can be read (a connection missing, stopped or paused): each mapping records why.
        return [sync_mapping(mapping=mapping, trigger=trigger) for mapping in mappings]
    raynet, outlook = make_clients(organization)
    directory = RaynetDirectory(raynet)
    read_at = timezone.now()
    incremental = [m for m in mappings if not full and not needs_window_read(m)]
    try:
        changes = fetch_raynet_changes(raynet, since=min((m.raynet_cursor for m in incremental), default=None))
    except ProviderError as error:
        return [failed_run(m, trigger, error) for m in mappings]
    runs = []
    for mapping in mappings:
        batch = changes.get(mapping.raynet_person_id, []) if mapping in incremental else None
        try:
            runs.append(
                sync_mapping(
                    mapping=mapping,
                    trigger=trigger,
                    full=full,
                    clients=(raynet, outlook),
                    directory=directory,
                    raynet_changes=batch,
                    read_at=read_at,
                )
            )
        except Exception:
            # Recorded on the run and the mapping by sync_mapping; the other mailboxes still sync.
            logger.exception("sync of %s stopped on an internal error", mapping)
    return runs


def fetch_raynet_changes(raynet, *, since: datetime | None, owner_id: int | None = None) -> dict[int, list[dict]]:
    """Meetings and events changed since `since`, by owner person id (one listing per type)."""
    by_owner: dict[int, list[dict]] = {}
    if since is None:
        return by_owner
    for entity in ("meeting", "event"):
        for activity in raynet.list_activities(entity, owner_id=owner_id, modified_since=since):
            owner = activity.get("owner") or {}
            by_owner.setdefault(owner.get("id") if isinstance(owner, dict) else owner, []).append(activity)
    return by_owner


def sync_mapping(
    *,
    mapping: UserMapping,
    trigger: str,
    full: bool = False,
    clients=None,
    directory: RaynetDirectory | None = None,
    raynet_changes: list[dict] | None = None,
    read_at: datetime | None = None,
) -> SyncRun:
    """Sync one Raynet user with one mailbox. Never runs twice at once for the same mailbox."""
    with mailbox_lock(mapping.pk) as locked:
        if not locked:
            return skipped_run(mapping, trigger, "Another sync of this mailbox is running.")
        mapping.refresh_from_db()
        reason = not_ready_reason(mapping)
        if reason:
            return skipped_run(mapping, trigger, reason)
        raynet, outlook = clients or make_clients(mapping.organization)
        read_at = read_at or timezone.now()
        log = RunLog(SyncRun.objects.create(organization_id=mapping.organization_id, mapping=mapping, trigger=trigger))
        try:
            if raynet_changes is None and not full and not needs_window_read(mapping):
                owner = mapping.raynet_person_id
                changes = fetch_raynet_changes(raynet, since=mapping.raynet_cursor, owner_id=owner)
                raynet_changes = changes.get(owner, [])
            released = engine_for(mapping, raynet, outlook, log, directory).run(
                full=full, raynet_changes=raynet_changes
            )
        except (SideFailed, ProviderError) as failure:
            return fail(mapping, log, failure)
        except Exception as exc:
            mapping.set_health(UserMapping.Health.ERROR, "The sync stopped on an internal error; support is notified.")
            log.finish(SyncRun.Status.FAILED, f"Internal error: {exc!r}")
            raise
        if released:
            mapping.raynet_cursor = read_at
        mapping.last_synced_at = timezone.now()
        if mapping.health != UserMapping.Health.FLAGGED or released:
            mapping.health, mapping.health_reason = health_after(log)
        mapping.save()
        return log.finish()


def needs_window_read(mapping: UserMapping) -> bool:
    """Raynet keeps no tombstones: once a day (and first of all) a mapping reads its whole window."""
    window_start = mapping.effective_policy(mapping.organization.policy).window()[0]
    return mapping.raynet_cursor is None or mapping.graph_delta_window_start != window_start.date()


def engine_for(mapping, raynet, outlook, log, directory) -> MappingSync:
    policy = mapping.effective_policy(mapping.organization.policy)
    mapped = {}
    for other in mapping.organization.mappings.filter(enabled=True):
        for email in (other.outlook_upn, other.raynet_email):
            mapped[email.lower()] = other.raynet_person_id
    return MappingSync(
        mapping=mapping,
        policy=policy,
        raynet=raynet,
        outlook=outlook,
        log=log,
        zone=ZoneInfo(mapping.organization.raynet.timezone),
        window=policy.window(),
        directory=directory or RaynetDirectory(raynet),
        mapped_person_by_email=mapped,
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


def health_after(log: RunLog) -> tuple[str, str]:
    if log.errors:
        return UserMapping.Health.WARNING, f"{log.errors} event(s) could not be synced in the last run; see the log."
    return UserMapping.Health.OK, ""


def fail(mapping: UserMapping, log: RunLog, failure: SideFailed | ProviderError) -> SyncRun:
    error = failure.error if isinstance(failure, SideFailed) else failure
    message = str(failure) if isinstance(failure, SideFailed) else error.message
    if error.kind == ErrorKind.BUDGET_SPENT:
        mapping.set_health(UserMapping.Health.WARNING, message)
        return log.finish(SyncRun.Status.SKIPPED, message)
    if error.permanent:
        # The error knows the connection that failed (ProviderError.side); the engine's wrapper may not.
        side = error.side or getattr(failure, "side", "").lower()
        target = mapping.organization.microsoft if side == "outlook" else mapping.organization.raynet
        if error.kind == ErrorKind.AUTH:
            target.record_failure(message, permanent=True)
    mapping.set_health(UserMapping.Health.ERROR, message)
    logger.warning("sync of %s failed: %s", mapping, message)
    return log.finish(SyncRun.Status.FAILED, message)


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
    return fail(mapping, log, SideFailed("Raynet", error))


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
