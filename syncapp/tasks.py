"""What django-q2 runs: each task loads its rows by id and calls syncapp/jobs.py (the logic lives there)."""

from __future__ import annotations

from syncapp import jobs, notifications
from syncapp.models import Organization, SyncRun, UserMapping


def sync_mapping_task(mapping_id: int) -> list[int]:
    mapping = UserMapping.objects.filter(pk=mapping_id).select_related("organization").first()
    if mapping is None:
        return []  # removed since the request
    return [run.pk for run in jobs.mapping_requested_runs(mapping=mapping)]


def retry_mapping_task(mapping_id: int) -> bool:
    mapping = UserMapping.objects.filter(pk=mapping_id).first()
    return mapping is not None and jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.SCHEDULE)


def sync_organization_task(organization_id: int, trigger: str) -> list[int]:
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return []
    return [run.pk for run in jobs.organization_fan_out(organization=organization, trigger=trigger)]


def poll_task() -> list[int]:
    return jobs.poll_cycle()


def renew_subscriptions_task() -> int:
    return notifications.subscriptions_renew()


def log_retention_task() -> int:
    return jobs.log_retention_cleanup()


def daily_window_task() -> int:
    return jobs.daily_window_read()


def subscription_lifecycle_task(mapping_id: int, event: str) -> None:
    mapping = UserMapping.objects.filter(pk=mapping_id).select_related("organization").first()
    if mapping is not None and mapping.enabled:
        notifications.subscription_lifecycle(mapping=mapping, event=event)


def raynet_change_task(organization_id: int, entity: str, entity_id: int, deleted: bool = False) -> bool:
    organization = Organization.objects.filter(pk=organization_id).first()
    mapping = organization and notifications.raynet_change_owner(
        organization=organization, entity=entity, entity_id=entity_id
    )
    if mapping and deleted:
        return jobs.raynet_deletion_request(mapping=mapping, entity=entity, record_id=entity_id)
    return bool(mapping) and jobs.mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
