"""Near-real-time: Graph change notifications per mailbox and a Raynet webhook per organization.

Both only make the sync faster: the poll stays on. Without a public https base URL (PUBLIC_BASE_URL) the
services cannot reach us, so nothing is registered and the reason is kept on the row for the admin.
The endpoints that receive them are in syncapp/webhooks.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django_q.tasks import async_task

from syncapp.jobs import mapping_sync_request
from syncapp.models import EventLink, Organization, RaynetConnection, SyncRun, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import ENTITIES, RaynetClient

logger = logging.getLogger("syncapp.notifications")

# Under both lifetimes the Graph docs have given for events (4,230 and 10,080 minutes); renewed a day early.
SUBSCRIPTION_LIFETIME = timedelta(minutes=4230)
RENEW_BEFORE = timedelta(hours=24)
RAYNET_EVENTS = ["record.created", "record.updated", "record.deleted"]


def public_base_url() -> tuple[str, str]:
    """(base URL, "") when Graph and Raynet can call us, else ("", the reason in plain words)."""
    base = settings.PUBLIC_BASE_URL
    parts = urlsplit(base)
    if parts.scheme != "https" or not parts.hostname:
        return "", (
            "Change notifications are off: PUBLIC_BASE_URL must be the portal's public https address "
            f"(it is {base or 'not set'}). The regular poll keeps the calendars in sync."
        )
    return base, ""


def graph_client_state(mapping: UserMapping) -> str:
    """The clientState of a mailbox's subscription: keyed by SECRET_KEY, so it is never stored or guessable."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"graph-client-state:{mapping.code}".encode(), hashlib.sha256)
    return digest.hexdigest()


def mailbox_subscribe(*, mapping: UserMapping) -> bool:
    """Create (or renew) the Graph subscription of an enabled mailbox. Returns whether one is live."""
    base, reason = public_base_url()
    microsoft = getattr(mapping.organization, "microsoft", None)
    if microsoft is None:
        base, reason = "", "Change notifications start once Microsoft 365 is connected."
    if not base:
        record_subscription(mapping, "", None, reason)
        return False
    client = OutlookClient(microsoft)
    expires_at = timezone.now() + SUBSCRIPTION_LIFETIME
    if mapping.subscription_id:
        try:
            answer = client.renew_subscription(mapping.subscription_id, expires_at)
            record_subscription(mapping, answer["id"], expires_at, "")
            return True
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                record_subscription(mapping, mapping.subscription_id, mapping.subscription_expires_at, error.message)
                raise
    try:
        answer = client.create_subscription(
            mapping.outlook_user_id,
            notification_url=base + reverse("hooks:graph-notify"),
            lifecycle_url=base + reverse("hooks:graph-lifecycle"),
            client_state=graph_client_state(mapping),
            expires_at=expires_at,
        )
    except ProviderError as error:
        record_subscription(mapping, "", None, f"Change notifications could not be set up: {error.message}")
        raise
    record_subscription(mapping, answer["id"], expires_at, "")
    return True


def mailbox_unsubscribe(*, mapping: UserMapping) -> None:
    """Delete the mailbox's subscription (the mapping was switched off or is being removed)."""
    if mapping.subscription_id:
        OutlookClient(mapping.organization.microsoft).delete_subscription(mapping.subscription_id)
    record_subscription(mapping, "", None, "")


def record_subscription(mapping: UserMapping, subscription_id: str, expires_at, note: str) -> None:
    mapping.subscription_id, mapping.subscription_expires_at, mapping.subscription_note = (
        subscription_id,
        expires_at,
        note,
    )
    mapping.save(update_fields=["subscription_id", "subscription_expires_at", "subscription_note"])


def subscriptions_renew() -> int:
    """Renew the subscriptions that expire within a day; create the missing ones. Returns how many are live."""
    live = 0
    soon = timezone.now() + RENEW_BEFORE
    mappings = UserMapping.objects.filter(enabled=True, organization__policy__sync_enabled=True).select_related(
        "organization__microsoft"
    )
    for mapping in mappings:
        if mapping.subscription_id and mapping.subscription_expires_at and mapping.subscription_expires_at > soon:
            live += 1
            continue
        try:
            live += mailbox_subscribe(mapping=mapping)
        except ProviderError as error:  # the note on the mapping says why; the poll still syncs it
            logger.warning("subscription of %s: %s", mapping, error.message)
    return live


# --- Raynet ---------------------------------------------------------------------------------------------


def raynet_webhook_register(*, organization: Organization) -> bool:
    """Register the organization's webhook in Raynet (once). Returns whether one is registered."""
    connection: RaynetConnection = organization.raynet
    base, reason = public_base_url()
    if not base:
        record_webhook(connection, connection.webhook_id, reason)
        return False
    if connection.webhook_id:
        return True
    token = secrets.token_urlsafe(32)
    url = base + reverse("hooks:raynet", kwargs={"code": organization.code})
    try:
        webhook_id = RaynetClient(connection).add_webhook(url=url, secret_token=token, events=RAYNET_EVENTS)
    except ProviderError as error:
        record_webhook(connection, "", f"The Raynet webhook could not be registered: {error.message}")
        raise
    connection.webhook_token = token
    connection.save(update_fields=["webhook_token"])
    record_webhook(connection, webhook_id, "")
    return True


def raynet_webhook_unregister(*, organization: Organization) -> None:
    connection = getattr(organization, "raynet", None)
    if connection is None:
        return
    if connection.webhook_id:
        RaynetClient(connection).remove_webhook(connection.webhook_id)
    connection.webhook_token = ""
    connection.save(update_fields=["webhook_token"])
    record_webhook(connection, "", "")


def record_webhook(connection: RaynetConnection, webhook_id: str, note: str) -> None:
    connection.webhook_id, connection.webhook_note = webhook_id, note
    connection.save(update_fields=["webhook_id", "webhook_note"])


# --- what the endpoints received (syncapp/webhooks.py) -----------------------------------------------------


def graph_notifications_accept(*, items: list) -> int:
    """Queue a sync of each mailbox a notification with the right clientState names; returns how many matched.

    Many notifications for one mailbox give one run (mapping_sync_request coalesces); a replay is harmless.
    """
    accepted = 0
    for item in items:
        mapping = subscribed_mapping(item)
        if mapping is None:
            continue
        accepted += 1
        if "lifecycleEvent" in item:
            async_task("syncapp.tasks.subscription_lifecycle_task", mapping.pk, str(item["lifecycleEvent"]))
        else:
            mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    return accepted


def subscribed_mapping(item) -> UserMapping | None:
    """The mapping whose subscription the item is for, when its clientState is ours (constant-time compare)."""
    if not isinstance(item, dict) or not isinstance(item.get("subscriptionId"), str) or not item["subscriptionId"]:
        return None
    mapping = UserMapping.objects.filter(subscription_id=item["subscriptionId"]).select_related("organization").first()
    given = item.get("clientState")
    if mapping is None or not isinstance(given, str):
        return None
    return mapping if hmac.compare_digest(given.encode(), graph_client_state(mapping).encode()) else None


def subscription_lifecycle(*, mapping: UserMapping, event: str) -> None:
    """Graph's lifecycle notifications (graph-api.md §4)."""
    if event == "reauthorizationRequired":
        mailbox_subscribe(mapping=mapping)  # the PATCH renewal re-authorizes it
    elif event == "subscriptionRemoved":
        record_subscription(mapping, "", None, "")
        mailbox_subscribe(mapping=mapping)
        mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK)
    elif event == "missed":
        # Graph could not deliver some notifications: read the whole window of both sides, as the docs advise
        # (https://learn.microsoft.com/graph/change-notifications-lifecycle-events), rather than trust the delta.
        mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.WEBHOOK, full=True)


def raynet_token_valid(*, organization: Organization, token: str) -> bool:
    connection = getattr(organization, "raynet", None)
    expected = connection.webhook_token.reveal() if connection is not None and connection.webhook_token else ""
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def raynet_webhook_seen(*, connection: RaynetConnection) -> None:
    """Raynet delivers our webhook (RaynetConnection.webhooks_live): one UPDATE a minute at most, not one a webhook."""
    now = timezone.now()
    stale = RaynetConnection.objects.filter(pk=connection.pk).exclude(webhook_seen_at__gt=now - timedelta(minutes=1))
    stale.update(webhook_seen_at=now)


def raynet_event_accept(*, organization: Organization, payload: dict) -> bool:
    """Queue the sync of the activity's owner for a meeting or event change; False when it is not one of ours.

    Our own API writes come back as webhooks too (source.name "api", author our API user): they are dropped.
    The activity entityName values are UNCONFIRMED (reference §7): compared case-insensitively.
    """
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    entity = str(data.get("entityName") or "").lower()
    if payload.get("type") not in RAYNET_EVENTS or entity not in ENTITIES:
        return False
    try:
        entity_id = int(data.get("entityId"))
    except (TypeError, ValueError):
        return False
    source = payload.get("source") if isinstance(payload.get("source"), dict) else {}
    author = str(payload.get("author") or "").casefold()
    if source.get("name") == "api" and author == organization.raynet.api_user_email.casefold():
        return False
    deleted = payload["type"] == "record.deleted"  # goes straight to the deletion check (jobs.raynet_deletion_request)
    async_task("syncapp.tasks.raynet_change_task", organization.pk, entity, entity_id, deleted)
    return True


def raynet_change_owner(*, organization: Organization, entity: str, entity_id: int) -> UserMapping | None:
    """The mapping a Raynet change belongs to: by our link (a deleted record too), else by the record's owner."""
    link = EventLink.objects.filter(organization=organization, raynet_type=entity, raynet_id=entity_id).first()
    if link is not None:
        return link.mapping
    record = RaynetClient(organization.raynet).get_activity(entity, entity_id)
    owner = (record or {}).get("owner")
    owner_id = owner.get("id") if isinstance(owner, dict) else owner
    return organization.mappings.filter(raynet_person_id=owner_id, enabled=True).first() if owner_id else None
