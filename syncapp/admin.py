"""Django admin for our support staff: read-mostly, across organizations, secrets never shown."""

from __future__ import annotations

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone

from syncapp.dashboard import first_sync_outlook, mappings_with_counts
from syncapp.jobs import mapping_sync_request
from syncapp.models import (
    EventLink,
    Membership,
    MicrosoftConnection,
    Organization,
    RaynetConnection,
    SyncLogEntry,
    SyncPolicy,
    SyncRun,
    UserMapping,
)
from syncapp.onboarding import mapping_delete, mapping_switch, organization_delete
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import RaynetClient
from syncapp.secrets import MASK, UNREADABLE


class ReadOnlyAdmin(admin.ModelAdmin):
    """Support looks; changes go through the portal or the explicit actions below."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "created"]
    search_fields = ["name", "code"]
    readonly_fields = ["code", "created"]
    inlines = [MembershipInline]

    def delete_model(self, request, obj) -> None:
        organization_delete(organization=obj)  # Raynet's webhook and the Graph subscriptions go first

    def delete_queryset(self, request, queryset) -> None:
        for organization in queryset:
            organization_delete(organization=organization)


@admin.register(SyncPolicy)
class SyncPolicyAdmin(ReadOnlyAdmin):
    list_display = ["organization", "sync_enabled", "private_events_mode", "deletion_mode", "conflict_winner"]
    list_filter = ["sync_enabled", "private_events_mode", "deletion_mode"]


class ConnectionAdmin(ReadOnlyAdmin):
    """Support's two actions on a connection, each recorded in the admin's history (LogEntry)."""

    actions = ["test_now", "reenable"]
    client_class: type[RaynetClient] | type[OutlookClient]

    @admin.action(description="Test now (and record the outcome on the connection)")
    def test_now(self, request, queryset) -> None:
        for connection in queryset:
            check = self.client_class(connection).test_connection()
            connection.record_check(check)
            outcome = "passed" if check.ok else "failed"
            self.log_change(request, connection, f"Connection test {outcome}: {check.message}")
            level = messages.SUCCESS if check.ok else messages.ERROR
            self.message_user(request, f"{connection}: {check.message}", level)

    @admin.action(description="Re-enable (syncing resumes; the cause must be fixed first)")
    def reenable(self, request, queryset) -> None:
        enabled = []
        for connection in queryset:
            if connection.reenable():
                self.log_change(request, connection, "Re-enabled: syncing resumes.")
                enabled.append(str(connection))
        skipped = queryset.count() - len(enabled)
        note = f" {skipped} connection(s) were not stopped and are unchanged." if skipped else ""
        self.message_user(request, f"Re-enabled {len(enabled)} connection(s).{note}")


@admin.register(RaynetConnection)
class RaynetConnectionAdmin(ConnectionAdmin):
    list_display = [
        "organization",
        "instance_name",
        "api_user_email",
        "api_key_masked",
        "status",
        "rate_limit_remaining",
        "webhook_note",
        "webhook_seen",
    ]
    list_filter = ["status", "api_base_url"]
    search_fields = ["instance_name", "api_user_email", "organization__name"]
    exclude = ["api_key", "webhook_seen_at"]
    readonly_fields = ["api_key_masked", "webhook_seen"]
    client_class = RaynetClient

    @admin.display(description="Last webhook received")
    def webhook_seen(self, obj: RaynetConnection) -> str:
        """Within a day: Raynet delivers, and the poll is only the safety net (RaynetConnection.webhooks_live)."""
        if obj.webhook_seen_at is None:
            return "never"
        live = " (live: the poll is the safety net)" if obj.webhooks_live(timezone.now()) else ""
        return f"{obj.webhook_seen_at:%Y-%m-%d %H:%M} UTC{live}"

    @admin.display(description="API key")
    def api_key_masked(self, obj: RaynetConnection) -> str:
        if not obj.api_key:
            return "(not set)"
        return MASK if obj.api_key.readable else UNREADABLE


@admin.register(MicrosoftConnection)
class MicrosoftConnectionAdmin(ConnectionAdmin):
    list_display = ["organization", "tenant_id", "cloud", "consent", "status"]
    list_filter = ["status", "consent", "cloud"]
    search_fields = ["tenant_id", "organization__name"]
    client_class = OutlookClient


@admin.register(UserMapping)
class UserMappingAdmin(ReadOnlyAdmin):
    """Support's actions on a mailbox; each is recorded in the admin's history (LogEntry) with who and when."""

    list_display = [
        "raynet_email",
        "outlook_upn",
        "organization",
        "enabled",
        "health",
        "last_synced_at",
        "subscription_expires_at",
        "subscription_note",
        "first_sync",
    ]
    readonly_fields = ["first_sync"]
    list_filter = ["organization", "enabled", "health"]
    search_fields = ["raynet_email", "outlook_upn", "outlook_user_id", "=raynet_person_id"]
    actions = ["sync_now", "full_resync", "approve_held_deletions", "disable", "reset_mailbox_cursor"]

    def delete_model(self, request, obj) -> None:
        mapping_delete(mapping=obj)  # its Graph subscription goes too

    def delete_queryset(self, request, queryset) -> None:
        for mapping in queryset.select_related("organization__microsoft"):
            mapping_delete(mapping=mapping)

    @admin.display(description="First sync")
    def first_sync(self, obj: UserMapping) -> str:
        """Progress of a first sync that waits for the Raynet budget, and when it should be done."""
        if obj.first_sync_done_at:
            return f"done {obj.first_sync_done_at:%Y-%m-%d %H:%M} UTC"
        if not obj.first_sync_pending:
            return "under way" if obj.last_synced_at else "not started"
        outlook = first_sync_outlook(obj.organization, list(mappings_with_counts(obj.organization)))
        if outlook is None:  # no Raynet connection any more
            return f"{obj.first_sync_pending} to do"
        progress = outlook.mappings[obj.pk]
        return (
            f"{progress.linked} linked, {progress.pending} to do; done by about {progress.done_by:%Y-%m-%d} "
            f"(first syncs may spend {outlook.cap} Raynet requests a day)"
        )

    @admin.action(description="Sync now")
    def sync_now(self, request, queryset) -> None:
        for mapping in queryset:
            mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)
            self.log_change(request, mapping, "Sync now: a run was asked of the worker.")
        self.message_user(request, f"A sync was queued for {queryset.count()} mailbox(es).")

    @admin.action(description="Full resync (drop the delta link, compare everything)")
    def full_resync(self, request, queryset) -> None:
        for mapping in queryset:
            mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL, full=True)
            self.log_change(request, mapping, "Full resync: a full comparison of both sides was asked of the worker.")
        self.message_user(request, f"A full resync was queued for {queryset.count()} mailbox(es).")

    @admin.action(description="Clear the flag: carry out the deletions the mass-delete guard held back")
    def approve_held_deletions(self, request, queryset):
        flagged = list(queryset.filter(health=UserMapping.Health.FLAGGED).select_related("organization"))
        if request.POST.get("confirm") != "yes":
            held = [(mapping, held_links(mapping)) for mapping in flagged]
            context = {
                **self.admin_site.each_context(request),
                "title": "Carry out the held deletions?",
                "held": held,
                "selected": [m.pk for m in queryset],
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/syncapp/usermapping/clear_flag.html", context)
        for mapping in flagged:
            mapping.approve_held_deletions()
            mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)
            self.log_change(request, mapping, "Flag cleared: the held deletions were approved for the next run.")
        self.message_user(
            request, f"Deletions approved for {len(flagged)} flagged mailbox(es); the next run carries them out."
        )
        return None

    @admin.action(description="Disable (stop syncing this mailbox)")
    def disable(self, request, queryset) -> None:
        for mapping in queryset.filter(enabled=True):
            mapping_switch(mapping=mapping, enabled=False)
            self.log_change(request, mapping, "Disabled: this mailbox is no longer synced.")
        self.message_user(request, "The selected mailboxes are no longer synced.")

    @admin.action(description="Reset the cursors (next run reads both sides' whole window again)")
    def reset_mailbox_cursor(self, request, queryset) -> None:
        for mapping in queryset:
            mapping.reset_cursors()
            self.log_change(request, mapping, "Cursors reset: the next run reads both sides' whole window.")
        self.message_user(request, f"Cursors reset for {queryset.count()} mailbox(es).")


def held_links(mapping: UserMapping) -> list[EventLink]:
    """The links whose deletion the mass-delete guard held back in the mailbox's last run that held any."""
    entry = SyncLogEntry.objects.filter(run__mapping=mapping, action="held").order_by("-created").first()
    planned = (entry.details or {}).get("planned", []) if entry else []
    return list(EventLink.objects.filter(mapping=mapping, pk__in=planned).order_by("starts_at"))


@admin.register(EventLink)
class EventLinkAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "organization", "mapping", "origin", "state", "updated"]
    list_filter = ["organization", "state", "origin", "raynet_type"]
    search_fields = ["=raynet_id", "outlook_event_id", "ical_uid", "=uid", "mapping__raynet_email"]


class SyncLogEntryInline(admin.TabularInline):
    model = SyncLogEntry
    fields = ["created", "direction", "action", "reason_text", "raynet_id", "outlook_event_id"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "organization", "mapping", "trigger", "status", "finished_at"]
    list_filter = ["organization", "status", "trigger", "started_at"]
    search_fields = ["mapping__raynet_email", "mapping__outlook_upn", "error"]
    date_hierarchy = "started_at"
    inlines = [SyncLogEntryInline]


@admin.register(SyncLogEntry)
class SyncLogEntryAdmin(ReadOnlyAdmin):
    list_display = ["created", "organization", "direction", "action", "reason_text", "raynet_id", "outlook_event_id"]
    list_filter = ["organization", "action", "direction", "reason_code", "run__status", "created"]
    search_fields = ["=raynet_id", "outlook_event_id", "reason", "run__mapping__raynet_email"]
    date_hierarchy = "created"
