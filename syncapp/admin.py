"""Django admin for our support staff: read-mostly, across organizations, secrets never shown."""

from __future__ import annotations

from django.contrib import admin, messages

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
    ]
    list_filter = ["status", "api_base_url"]
    search_fields = ["instance_name", "api_user_email", "organization__name"]
    exclude = ["api_key"]
    readonly_fields = ["api_key_masked"]
    client_class = RaynetClient

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
    list_display = ["raynet_email", "outlook_upn", "organization", "enabled", "health", "last_synced_at"]
    list_filter = ["organization", "enabled", "health"]
    search_fields = ["raynet_email", "outlook_upn", "outlook_user_id", "=raynet_person_id"]
    actions = ["reset_mailbox_cursor", "approve_held_deletions"]

    @admin.action(description="Reset the cursors (next run reads both sides' whole window again)")
    def reset_mailbox_cursor(self, request, queryset) -> None:
        count = queryset.update(graph_delta_link="", graph_delta_window_start=None, raynet_cursor=None)
        self.message_user(request, f"Cursors reset for {count} mailbox(es).")

    @admin.action(description="Approve the deletions the mass-delete guard held back (next run only)")
    def approve_held_deletions(self, request, queryset) -> None:
        count = queryset.filter(health=UserMapping.Health.FLAGGED).update(mass_delete_approved=True)
        self.message_user(
            request, f"Deletions approved for {count} flagged mailbox(es); the next run carries them out."
        )


@admin.register(EventLink)
class EventLinkAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "organization", "mapping", "origin", "state", "updated"]
    list_filter = ["organization", "state", "origin", "raynet_type"]
    search_fields = ["=raynet_id", "outlook_event_id", "ical_uid", "=uid", "mapping__raynet_email"]


class SyncLogEntryInline(admin.TabularInline):
    model = SyncLogEntry
    fields = ["created", "direction", "action", "reason", "raynet_id", "outlook_event_id"]
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
    list_display = ["created", "organization", "direction", "action", "reason", "raynet_id", "outlook_event_id"]
    list_filter = ["organization", "action", "direction", "created"]
    search_fields = ["=raynet_id", "outlook_event_id", "reason", "run__mapping__raynet_email"]
    date_hierarchy = "created"
