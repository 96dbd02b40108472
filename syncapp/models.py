"""The product's data. Every tenant table carries a NOT NULL organization FK."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from syncapp.providers.base import MAX_MESSAGE, scrub_secrets
from syncapp.secrets import EncryptedSecretField

if TYPE_CHECKING:
    from syncapp.providers.base import ConnectionCheck

# Raynet's daily request budget per instance unless the X-Ratelimit-Limit header says otherwise (reference §6).
RAYNET_DAILY_LIMIT = 24_000
# A Raynet webhook delivered within this long means deliveries work (RaynetConnection.webhooks_live).
WEBHOOKS_LIVE_FOR = timedelta(days=1)
# Raynet requests a first sync spends per event it makes in Raynet, until one has been measured.
FIRST_SYNC_COST_PER_EVENT = 2.0

RAYNET_REGIONS = [
    ("https://app.raynet.cz/api/v2/", "Raynet Czech Republic (app.raynet.cz)"),
    ("https://app.raynetcrm.sk/api/v2/", "Raynet Slovakia (app.raynetcrm.sk)"),
    ("https://app.raynetcrm.com/api/v2/", "Raynet international (app.raynetcrm.com)"),
    ("https://eu.raynetcrm.com/api/v2/", "Raynet EU (eu.raynetcrm.com)"),
]


class Organization(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", _("Admin")
        VIEWER = "viewer", _("Viewer")

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="memberships")
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # the member in portal URLs
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role == self.Role.ADMIN


class Invitation(models.Model):
    """An admin's invitation of a colleague by e-mail; accepted by a signed-in user with that address."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="invitations")
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.VIEWER)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "email"], name="one_invitation_per_email")]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization}"

    def is_for(self, user) -> bool:
        return bool(user.email) and user.email.casefold() == self.email.casefold()


class ConnectionStatus(models.TextChoices):
    NEW = "new", _("Not tested yet")
    OK = "ok", _("Working")
    ERROR = "error", _("Failing (retrying)")
    DISABLED = "disabled", _("Stopped: needs the admin")
    PAUSED = "paused", _("Paused: daily API budget spent")


# A success is written at most this often while nothing changes: callers may report one per run.
SUCCESS_RECORD_INTERVAL = timedelta(minutes=1)


class ConnectionOutcome(models.Model):
    """Outcome stored on the row: status, the last error in plain words, the last success.

    Only the admin ends a stop: a success or a passing failure seen by a sync (perhaps one that was
    already under way) never turns a DISABLED connection back on; `reenable()` and a passing
    `record_check()` (the admin's "test now") do.
    """

    status = models.CharField(max_length=10, choices=ConnectionStatus.choices, default=ConnectionStatus.NEW)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def record_success(self) -> None:
        """Working, with the time; cheap to call after every successful run (one write a minute at most)."""
        now = timezone.now()
        if (
            self.status == ConnectionStatus.OK
            and not self.last_error
            and self.last_success_at is not None
            and now - self.last_success_at < SUCCESS_RECORD_INTERVAL
        ):
            return
        self._update_unless_stopped(status=ConnectionStatus.OK, last_error="", last_success_at=now)

    def record_failure(self, message: str, *, permanent: bool) -> None:
        """A permanent failure stops the connection until the admin acts; a passing one leaves a stop as it is."""
        # Provider errors come scrubbed already; this keeps any other text from storing a credential.
        fields = {"last_error": scrub_secrets(message, limit=MAX_MESSAGE), "last_error_at": timezone.now()}
        if permanent:
            self._update(status=ConnectionStatus.DISABLED, **fields)
        else:
            self._update_unless_stopped(status=ConnectionStatus.ERROR, **fields)

    def record_check(self, check: ConnectionCheck) -> None:
        """The outcome of the admin's connection test (a providers.base.ConnectionCheck)."""
        if check.ok:
            self._update(status=ConnectionStatus.OK, last_error="", last_success_at=timezone.now())
        else:
            self.record_failure(check.message, permanent=check.permanent)

    def reenable(self) -> bool:
        """Back from DISABLED (the admin fixed the cause), so syncing resumes; False if it was not stopped."""
        if self.status != ConnectionStatus.DISABLED:
            return False
        self._update(status=ConnectionStatus.NEW)
        return True

    def _update(self, **fields) -> None:
        type(self).objects.filter(pk=self.pk).update(**fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def _update_unless_stopped(self, **fields) -> None:
        """Written only while the row in the database is not DISABLED (another process may have stopped it)."""
        updated = type(self).objects.filter(pk=self.pk).exclude(status=ConnectionStatus.DISABLED).update(**fields)
        if updated:
            for name, value in fields.items():
                setattr(self, name, value)
        else:
            self.status = ConnectionStatus.DISABLED


class RaynetConnection(ConnectionOutcome):
    organization = models.OneToOneField(Organization, models.CASCADE, related_name="raynet")
    instance_name = models.CharField(max_length=100, help_text="The X-Instance-Name of the Raynet CRM instance.")
    api_base_url = models.URLField(default=RAYNET_REGIONS[0][0])
    api_user_email = models.EmailField(help_text="Login e-mail of the Raynet user that owns the API key.")
    api_key = EncryptedSecretField()
    # Zone used for date-times Raynet returns without an offset (the API user's zone).
    timezone = models.CharField(max_length=64, default="Europe/Prague")
    # Daily request budget as last reported in the X-Ratelimit-* headers.
    rate_limit_limit = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_remaining = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_reset_at = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    # Where the rotating id listing that finds Raynet deletions goes on, per type (syncapp/sync/deletions.py).
    deletion_scan = models.JSONField(default=dict, blank=True)
    # The poll's next turn for this organization: later than the usual interval when the daily budget runs low.
    next_poll_at = models.DateTimeField(null=True, blank=True)
    # Our webhook registered in Raynet (syncapp/notifications.py); the note says why there is none.
    webhook_id = models.CharField(max_length=64, blank=True)
    webhook_token = EncryptedSecretField(blank=True)
    webhook_note = models.TextField(blank=True)
    # When Raynet last delivered a webhook we accepted (any event, our own writes' echoes too): deliveries work.
    webhook_seen_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Raynet {self.instance_name}"

    def webhooks_live(self, now: datetime) -> bool:
        """Our webhook is registered and Raynet delivered one within the last day: changes arrive within seconds
        (Raynet queues and retries them, reference §7), so the poll's listings are only the safety net."""
        seen = self.webhook_seen_at
        return bool(self.webhook_id) and seen is not None and now - seen < WEBHOOKS_LIVE_FOR

    def is_paused(self) -> bool:
        return self.paused_until is not None and self.paused_until > timezone.now()

    def save_rate_limit(self) -> None:
        """Store the last X-Ratelimit-* numbers, and today's spend for the dashboard's 14-day chart."""
        self.save(update_fields=["rate_limit_limit", "rate_limit_remaining", "rate_limit_reset_at"])
        if self.budget_used is not None:
            RaynetBudgetDay.objects.update_or_create(
                organization_id=self.organization_id, day=self.budget_day(), defaults={"used": self.budget_used}
            )

    def budget_day(self) -> date:
        """The day (UTC) the budget counts now: it resets at midnight UTC (X-Ratelimit-Reset), so the day
        ends at the reset; once that has passed, a new day has begun."""
        now = timezone.now()
        reset_at = self.rate_limit_reset_at
        ends = reset_at if reset_at is not None and reset_at > now else now + timedelta(days=1)
        return (ends.astimezone(UTC) - timedelta(seconds=1)).date()

    @property
    def first_sync_cap(self) -> int:
        """Raynet requests a day first syncs may spend: FIRST_SYNC_BUDGET_SHARE % of the daily budget."""
        return (self.rate_limit_limit or RAYNET_DAILY_LIMIT) * settings.FIRST_SYNC_BUDGET_SHARE // 100

    def first_sync_used_today(self) -> int:
        today = RaynetBudgetDay.objects.filter(organization_id=self.organization_id, day=self.budget_day())
        return today.values_list("first_sync_used", flat=True).first() or 0

    def first_sync_room(self) -> int:
        """What first syncs may still spend today."""
        return max(0, self.first_sync_cap - self.first_sync_used_today())

    def record_first_sync_spend(self, *, requests: int, created: int) -> None:
        """Add a first-sync run's Raynet requests and the events it made in Raynet to today's row."""
        if not requests and not created:
            return
        day, _ = RaynetBudgetDay.objects.get_or_create(
            organization_id=self.organization_id, day=self.budget_day(), defaults={"used": 0}
        )
        RaynetBudgetDay.objects.filter(pk=day.pk).update(
            first_sync_used=F("first_sync_used") + requests, first_sync_created=F("first_sync_created") + created
        )

    def first_sync_cost_per_event(self) -> float:
        """Raynet requests a first sync has spent per event it made in Raynet (the latest day that made any)."""
        day = (
            RaynetBudgetDay.objects.filter(organization_id=self.organization_id, first_sync_created__gt=0)
            .order_by("-day")
            .first()
        )
        return day.first_sync_used / day.first_sync_created if day else FIRST_SYNC_COST_PER_EVENT

    @property
    def budget_used(self) -> int | None:
        """Requests spent of today's budget, as the last X-Ratelimit-* headers said; None before any call."""
        if self.rate_limit_limit is None or self.rate_limit_remaining is None:
            return None
        return max(0, self.rate_limit_limit - self.rate_limit_remaining)

    def show_pause(self) -> None:
        """Status "Paused" while the spent budget waits for its reset, back to "Not tested yet" after it."""
        if self.is_paused() and self.status not in (ConnectionStatus.PAUSED, ConnectionStatus.DISABLED):
            self._update(status=ConnectionStatus.PAUSED)
        elif not self.is_paused() and self.status == ConnectionStatus.PAUSED:
            self._update(status=ConnectionStatus.NEW)

    def reenable(self) -> bool:
        """As for every connection; a pause whose budget reset has passed is cleared too (never an earlier one)."""
        changed = super().reenable()
        if self.paused_until is not None and not self.is_paused():
            self._update(paused_until=None)
            changed = True
        return changed


class RaynetBudgetDay(models.Model):
    """Raynet API requests an organization spent on one day (UTC), as the rate-limit headers said."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="raynet_budget_days")
    day = models.DateField()
    used = models.PositiveIntegerField()
    # Of which first syncs spent (capped at FIRST_SYNC_BUDGET_SHARE), and the events they made in Raynet.
    first_sync_used = models.PositiveIntegerField(default=0)
    first_sync_created = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "day"], name="one_budget_row_per_day")]

    def __str__(self) -> str:
        return f"{self.organization} used {self.used} Raynet requests on {self.day}"


class MicrosoftConnection(ConnectionOutcome):
    class Cloud(models.TextChoices):
        GLOBAL = "global", _("Microsoft 365 (global)")
        USGOV = "usgov", _("Microsoft 365 US Government")
        CHINA = "china", _("Microsoft 365 operated by 21Vianet")

    class Consent(models.TextChoices):
        NONE = "none", _("Not granted yet")
        GRANTED = "granted", _("Granted")
        REVOKED = "revoked", _("Revoked or expired")

    organization = models.OneToOneField(Organization, models.CASCADE, related_name="microsoft")
    tenant_id = models.CharField(max_length=64, help_text="Microsoft Entra tenant id (a GUID).")
    cloud = models.CharField(max_length=10, choices=Cloud.choices, default=Cloud.GLOBAL)
    consent = models.CharField(max_length=10, choices=Consent.choices, default=Consent.NONE)

    def __str__(self) -> str:
        return f"Microsoft tenant {self.tenant_id}"

    @property
    def graph_base_url(self) -> str:
        return settings.MICROSOFT_CLOUDS[self.cloud]["graph"]

    @property
    def authority_url(self) -> str:
        return f"{settings.MICROSOFT_CLOUDS[self.cloud]['authority']}/{self.tenant_id}"


class PrivateEventsMode(models.TextChoices):
    STANDARD = "standard", _("Sync like any other event")
    TIME_BLOCKER = "time_blocker", _("Sync only the time, titled “Time blocker”")
    SKIP = "skip", _("Do not sync")


class DeletionMode(models.TextChoices):
    CANCEL = "cancel", _("Mark the Raynet activity CANCELLED")
    DELETE = "delete", _("Delete the Raynet activity")
    IGNORE = "ignore", _("Leave the Raynet activity as it is")


class ConflictWinner(models.TextChoices):
    LATEST = "latest", _("The latest change wins")
    RAYNET = "raynet", _("Raynet always wins")
    OUTLOOK = "outlook", _("Outlook always wins")


@dataclass(frozen=True)
class EffectivePolicy:
    private_events_mode: str
    sync_completed: bool
    deletion_mode: str
    conflict_winner: str
    window_days_back: int
    window_days_ahead: int

    def window(self, now=None) -> tuple:
        now = now or timezone.now()
        start = (now - timedelta(days=self.window_days_back)).replace(hour=0, minute=0, second=0, microsecond=0)
        return start, now + timedelta(days=self.window_days_ahead)

    def occurrence_horizon(self, now=None):
        """Occurrences of recurring series starting after this become Raynet events later (SPEC policy 6)."""
        return (now or timezone.now()) + timedelta(days=settings.OCCURRENCE_HORIZON_DAYS)


class SyncPolicy(models.Model):
    organization = models.OneToOneField(Organization, models.CASCADE, related_name="policy")
    sync_enabled = models.BooleanField(default=False)
    private_events_mode = models.CharField(
        max_length=20, choices=PrivateEventsMode.choices, default=PrivateEventsMode.STANDARD
    )
    sync_completed = models.BooleanField(default=False)
    deletion_mode = models.CharField(max_length=10, choices=DeletionMode.choices, default=DeletionMode.CANCEL)
    conflict_winner = models.CharField(max_length=10, choices=ConflictWinner.choices, default=ConflictWinner.LATEST)
    window_days_back = models.PositiveIntegerField(default=30)
    window_days_ahead = models.PositiveIntegerField(default=365)
    # When an admin saved the policies in the portal (the onboarding wizard's policy step is done).
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "sync policies"

    def __str__(self) -> str:
        return f"Policy of {self.organization}"


class UserMapping(models.Model):
    class Health(models.TextChoices):
        OK = "ok", _("OK")
        WARNING = "warning", _("Warning")
        ERROR = "error", _("Error")
        FLAGGED = "flagged", _("Flagged: waiting for an admin")

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="mappings")
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # the mapping in portal URLs
    raynet_user_id = models.PositiveIntegerField(help_text="Raynet userAccount id.")
    raynet_person_id = models.PositiveIntegerField(help_text="Raynet person id: the owner of the user's activities.")
    raynet_email = models.EmailField()
    outlook_user_id = models.CharField(max_length=64, help_text="Entra object id of the mailbox user.")
    outlook_upn = models.CharField(max_length=254)
    enabled = models.BooleanField(default=False)
    # Per-user policy overrides; empty means "as the organization".
    private_events_mode = models.CharField(max_length=20, choices=PrivateEventsMode.choices, blank=True)
    sync_completed = models.BooleanField(null=True, blank=True)
    deletion_mode = models.CharField(max_length=10, choices=DeletionMode.choices, blank=True)
    conflict_winner = models.CharField(max_length=10, choices=ConflictWinner.choices, blank=True)

    health = models.CharField(max_length=10, choices=Health.choices, default=Health.OK)
    health_reason = models.TextField(blank=True)
    # Set by an admin to let the next run carry out deletions the mass-delete guard held back.
    mass_delete_approved = models.BooleanField(default=False)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    graph_delta_link = models.TextField(blank=True)
    # First day of the window the delta link was opened for: the window moves daily, which needs a new link.
    graph_delta_window_start = models.DateField(null=True, blank=True)
    # Raynet changes (rowInfo.lastModifiedAt) up to this instant have been synced; empty = read the whole window.
    raynet_cursor = models.DateTimeField(null=True, blank=True)
    # Set when Raynet or Graph asked us to wait longer than a run had left (Retry-After): no run before it.
    not_before = models.DateTimeField(null=True, blank=True)
    subscription_id = models.CharField(max_length=64, blank=True)
    subscription_expires_at = models.DateTimeField(null=True, blank=True)
    # Why there is no Graph subscription (no public address, an API refusal); empty while one is live.
    subscription_note = models.TextField(blank=True)
    # A sync of this mailbox was asked for and has not started yet (syncapp/jobs.py): the requests that come
    # before it starts share that one run; one that comes while it runs gives exactly one more run after it.
    sync_requested_at = models.DateTimeField(null=True, blank=True)
    sync_request_full = models.BooleanField(default=False)
    sync_request_trigger = models.CharField(max_length=10, blank=True)
    # The poll's share of the organization's Raynet listing for the requested run ({"read_at", "rows"}):
    # the run uses it instead of listing Raynet itself. Only a speed-up: the cursor moves to read_at only
    # when the run that used it succeeds, so a share lost in a crash is listed again by the next poll.
    sync_request_changes = models.JSONField(null=True, blank=True)
    # When the latest request that was not the poll came (a notification, a webhook, an admin): a share
    # read before it may miss the change it reports, so the run then lists Raynet itself.
    sync_request_heard_at = models.DateTimeField(null=True, blank=True)
    # Raynet records ([type, id]) to look up for the requested run, 404 = deleted: those a deletion webhook
    # reported and those the poll's id scan did not show. A burst of them is one run that checks them all.
    sync_request_checks = models.JSONField(default=list, blank=True)
    # The first sync (onboarding) spends at most FIRST_SYNC_BUDGET_SHARE of the daily Raynet budget, nearest
    # events first: until it is done, the events still to make in Raynet wait for the next days' budget.
    first_sync_done_at = models.DateTimeField(null=True, blank=True)
    first_sync_pending = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "raynet_person_id"], name="one_mapping_per_raynet_person"),
            models.UniqueConstraint(fields=["organization", "outlook_user_id"], name="one_mapping_per_mailbox"),
        ]

    def __str__(self) -> str:
        return f"{self.raynet_email} ⇄ {self.outlook_upn}"

    def effective_policy(self, policy: SyncPolicy) -> EffectivePolicy:
        return EffectivePolicy(
            private_events_mode=self.private_events_mode or policy.private_events_mode,
            sync_completed=policy.sync_completed if self.sync_completed is None else self.sync_completed,
            deletion_mode=self.deletion_mode or policy.deletion_mode,
            conflict_winner=self.conflict_winner or policy.conflict_winner,
            window_days_back=policy.window_days_back,
            window_days_ahead=policy.window_days_ahead,
        )

    def set_health(self, health: str, reason: str = "") -> None:
        self.health = health
        self.health_reason = reason
        self.save(update_fields=["health", "health_reason"])

    def approve_held_deletions(self) -> None:
        """An admin confirmed the deletions the mass-delete guard held back: the next run carries them out."""
        self.mass_delete_approved = True
        self.save(update_fields=["mass_delete_approved"])

    def reset_cursors(self) -> None:
        """An admin chose "reset": the next run reads both sides' whole window again instead of deleting."""
        self.graph_delta_link = ""
        self.graph_delta_window_start = None
        self.raynet_cursor = None
        self.mass_delete_approved = False
        self.health, self.health_reason = self.Health.OK, ""
        fields = ["graph_delta_link", "graph_delta_window_start", "raynet_cursor", "mass_delete_approved"]
        self.save(update_fields=[*fields, "health", "health_reason"])  # a pending request stays
        self.links.exclude(held_gone="").update(held_gone="")  # what the reading finds again, it holds again


class EventLink(models.Model):
    """One Raynet activity ⇄ one Outlook event (or occurrence), with the state both had when last synced."""

    class RaynetType(models.TextChoices):
        MEETING = "meeting", "Meeting"
        EVENT = "event", "Event"

    class Origin(models.TextChoices):
        RAYNET = "raynet", "Raynet"
        OUTLOOK = "outlook", "Outlook"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        FROZEN = "frozen", "Frozen (completed in Raynet)"
        DELETED = "deleted", "Deleted"

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="links")
    mapping = models.ForeignKey(UserMapping, models.CASCADE, related_name="links")
    # Our own id for the pair: written to the Outlook extended property and the Raynet
    # ext id before the first create, so a retried create finds what it already made.
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    raynet_type = models.CharField(max_length=10, choices=RaynetType.choices, default=RaynetType.EVENT)
    raynet_id = models.PositiveIntegerField(null=True, blank=True)
    # NULL until the Outlook event exists (the unique constraint must ignore not-yet-created links).
    outlook_event_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    ical_uid = models.CharField(max_length=512, blank=True)
    series_master_id = models.CharField(max_length=255, blank=True)
    raynet_hash = models.CharField(max_length=64, blank=True)
    outlook_hash = models.CharField(max_length=64, blank=True)
    raynet_updated_at = models.DateTimeField(null=True, blank=True)
    outlook_change_key = models.CharField(max_length=255, blank=True)
    # The attendee e-mails last written to Outlook: attendees are rewritten only when this set changes.
    outlook_attendees = models.JSONField(default=list, blank=True)
    # When the event was scheduled at the last sync: tells a deletion from an event that left the window.
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    origin = models.CharField(max_length=10, choices=Origin.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    # The write in flight, stored before it is sent (syncapp/sync/apply.py): {"op", "at", hashes expected
    # after it}. The next run tells our own write from a user's change by it, and finds a create whose
    # reply was lost. Empty once the write's outcome is recorded.
    intent = models.JSONField(default=dict, blank=True)
    # A deletion the mass-delete guard holds back for an admin: why the side is gone (a Gone code of
    # syncapp/sync/reasons.py), found once and remembered, so a held mailbox's polls do not look for it
    # again. Empty when nothing is held.
    held_gone = models.CharField(max_length=30, blank=True)
    # What of both sides' last-synced state a write does not carry (Raynet: status, participants, owner;
    # Outlook: all-day, private, attendees): a write's expected hash is computed from it and the write
    # itself, so the record is not read before it is written (apply.py). Empty on links older than it.
    baseline = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "raynet_type", "raynet_id"],
                condition=Q(raynet_id__isnull=False),
                name="one_link_per_raynet_record",
            ),
            models.UniqueConstraint(
                fields=["mapping", "outlook_event_id"],
                condition=Q(outlook_event_id__isnull=False),
                name="one_link_per_outlook_event",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "outlook_event_id"], name="link_by_outlook_id"),
            models.Index(fields=["organization", "ical_uid"], name="link_by_ical_uid"),
            models.Index(fields=["mapping", "series_master_id"], name="link_by_series"),
        ]

    def __str__(self) -> str:
        return f"{self.raynet_type} {self.raynet_id} ⇄ {self.outlook_event_id or '(not created)'}"

    def record_intent(self, op: str, **expected) -> None:
        """Store the write about to be sent, before it is sent: a crash after it leaves this trace."""
        self.intent = {"op": op, "at": timezone.now().isoformat(), **expected}
        self.save()

    def record_outcome(self) -> None:
        """The write's result is on the row (ids, hashes): nothing is in flight any more.

        Not saved here: the applier writes the outcomes of a batch together (Applier.flush). Until then
        the intent stays on the stored row, which is what a run killed meanwhile recovers from.
        """
        self.intent = {}
        self.held_gone = ""  # whatever was held, this run decided it
        self.updated = timezone.now()  # bulk_update does not apply auto_now

    def mark_deleted(self) -> None:
        self.state = self.State.DELETED
        self.record_outcome()

    def freeze(self) -> None:
        self.state = self.State.FROZEN
        self.record_outcome()

    def forget_outlook_side(self) -> None:
        """The Outlook event is gone for good; the link waits for the one made again (a restore)."""
        self.outlook_event_id, self.outlook_attendees, self.outlook_hash = None, [], ""
        # It comes back as a single event: still counted in its old series, it would look deleted there.
        self.series_master_id = ""
        self.save()

    def forget_raynet_side(self) -> None:
        """The Raynet record is gone for good; the link waits for the one made again (a restore)."""
        self.raynet_id, self.raynet_type, self.raynet_hash = None, self.RaynetType.EVENT, ""
        self.save()


class SyncRun(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", _("Schedule")
        WEBHOOK = "webhook", _("Webhook")
        MANUAL = "manual", _("Manual (portal)")
        CLI = "cli", _("Command line")

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        OK = "ok", _("OK")
        PARTIAL = "partial", _("Finished with errors")
        FAILED = "failed", _("Failed")
        SKIPPED = "skipped", _("Skipped")

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="runs")
    mapping = models.ForeignKey(UserMapping, models.CASCADE, null=True, blank=True, related_name="runs")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    # {"to_outlook": {"created": 2, ...}, "to_raynet": {...}}
    counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "-started_at"], name="run_by_org_time")]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.get_trigger_display()}, {self.status})"


class SyncLogEntry(models.Model):
    class Direction(models.TextChoices):
        TO_OUTLOOK = "to_outlook", "Raynet → Outlook"
        TO_RAYNET = "to_raynet", "Outlook → Raynet"
        NONE = "none", "—"

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="log_entries")
    run = models.ForeignKey(SyncRun, models.CASCADE, related_name="entries")
    link = models.ForeignKey(EventLink, models.SET_NULL, null=True, blank=True, related_name="log_entries")
    raynet_type = models.CharField(max_length=10, blank=True)
    raynet_id = models.PositiveIntegerField(null=True, blank=True)
    outlook_event_id = models.CharField(max_length=255, blank=True)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.NONE)
    action = models.CharField(max_length=20)
    reason = models.TextField()  # the English words, for search; reason_text gives the reader's language
    reason_code = models.CharField(max_length=40, blank=True)  # syncapp.sync.reasons.Reason
    reason_params = models.JSONField(default=dict, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "sync log entries"
        indexes = [
            models.Index(fields=["organization", "-created"], name="log_by_org_time"),
            models.Index(fields=["organization", "raynet_id"], name="log_by_raynet_id"),
            models.Index(fields=["organization", "outlook_event_id"], name="log_by_outlook_id"),
        ]

    def __str__(self) -> str:
        return f"{self.action}: {self.reason}"

    @property
    def reason_text(self) -> str:
        """The reason in the active language (entries written before reason codes keep their words)."""
        from syncapp.sync.reasons import render_reason

        return render_reason(self.reason_code, self.reason_params) if self.reason_code else self.reason


class SandboxState(models.Model):
    """State of a sandbox (our fake Raynet or Graph) served over HTTP for the demo; not tenant data."""

    name = models.CharField(max_length=200, unique=True)
    data = models.JSONField(default=dict)

    def __str__(self) -> str:
        return self.name
