"""Django admin for our support staff: read-mostly, across organizations, secrets never shown."""

from __future__ import annotations

from django.contrib import admin

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
from syncapp.secrets import MASK


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


@admin.register(RaynetConnection)
class RaynetConnectionAdmin(ReadOnlyAdmin):
    list_display = ["organization", "instance_name", "api_user_email", "status", "rate_limit_remaining"]
    list_filter = ["status", "api_base_url"]
    search_fields = ["instance_name", "api_user_email", "organization__name"]
    exclude = ["api_key"]
    readonly_fields = ["api_key_masked"]

    @admin.display(description="API key")
    def api_key_masked(self, obj: RaynetConnection) -> str:
        return MASK if obj.api_key else "(not set)"


@admin.register(MicrosoftConnection)
class MicrosoftConnectionAdmin(ReadOnlyAdmin):
    list_display = ["organization", "tenant_id", "cloud", "consent", "status"]
    list_filter = ["status", "consent", "cloud"]
    search_fields = ["tenant_id", "organization__name"]


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
