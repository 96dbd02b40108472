"""The portal's workflows: organizations and members, connecting Raynet and Microsoft 365, mapping users.

Views call these and stay thin; each takes keyword arguments and touches only the organization it is given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from syncapp.jobs import mapping_sync_request
from syncapp.models import (
    Invitation,
    Membership,
    MicrosoftConnection,
    Organization,
    RaynetConnection,
    SyncPolicy,
    SyncRun,
    UserMapping,
)
from syncapp.notifications import (
    mailbox_subscribe,
    mailbox_unsubscribe,
    raynet_webhook_register,
    raynet_webhook_unregister,
)
from syncapp.providers.base import ConnectionCheck, ErrorKind, ProviderError
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import RaynetClient, RaynetUser
from syncapp.sync.service import mapping_dry_run

logger = logging.getLogger("syncapp.onboarding")

CONSENT_STATE_SALT = "syncapp.microsoft-consent"
CONSENT_STATE_MAX_AGE = 3600  # seconds an admin has to finish Microsoft's consent page


class LastAdminError(Exception):
    """An organization must keep at least one admin."""


# --- organizations and members --------------------------------------------------------------------------


@transaction.atomic
def organization_create(*, name: str, user: AbstractBaseUser) -> Organization:
    """A new organization with its creator as admin and the default policies (sync off until the preview)."""
    organization = Organization.objects.create(name=name)
    Membership.objects.create(organization=organization, user=user, role=Membership.Role.ADMIN)
    SyncPolicy.objects.create(organization=organization)
    return organization


def organization_delete(*, organization: Organization) -> None:
    """Delete an organization with all of its data, after asking Raynet and Graph to stop calling us."""
    if getattr(organization, "raynet", None) is not None:
        raynet_disconnect(organization=organization)
    if getattr(organization, "microsoft", None) is not None:
        microsoft_disconnect(organization=organization)
    organization.delete()


def invitation_send(*, organization: Organization, email: str, role: str, invited_by, accept_url_for) -> Invitation:
    """Invite a colleague (again: a repeated invitation updates the role and re-sends the link)."""
    invitation, _created = Invitation.objects.update_or_create(
        organization=organization,
        email__iexact=email,
        defaults={"email": email, "role": role, "invited_by": invited_by},
    )
    link = accept_url_for(invitation)
    send_mail(
        _("You are invited to %(organization)s") % {"organization": organization.name},
        _(
            "%(who)s invites you to the Raynet ⇄ Outlook sync of %(organization)s as %(role)s.\n\n"
            "Open this link and sign in or sign up with this e-mail address to join:\n%(link)s\n"
        )
        % {
            "who": invited_by.email,
            "organization": organization.name,
            "role": invitation.get_role_display(),
            "link": link,
        },
        None,
        [email],
    )
    return invitation


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: AbstractBaseUser) -> Membership:
    """Join with the invited role; a member already keeps the higher of the two roles."""
    membership, created = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    if not created and invitation.role == Membership.Role.ADMIN:
        membership.role = Membership.Role.ADMIN
        membership.save(update_fields=["role"])
    invitation.delete()
    return membership


def _other_admins(membership: Membership):
    return Membership.objects.filter(organization=membership.organization, role=Membership.Role.ADMIN).exclude(
        pk=membership.pk
    )


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str) -> None:
    # Locking the admins' rows makes two admins demoting each other at once leave one admin, not none.
    list(Membership.objects.select_for_update().filter(organization=membership.organization, role="admin"))
    if membership.is_admin and role != Membership.Role.ADMIN and not _other_admins(membership).exists():
        raise LastAdminError(_("The organization must keep at least one admin."))
    membership.role = role
    membership.save(update_fields=["role"])


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    list(Membership.objects.select_for_update().filter(organization=membership.organization, role="admin"))
    if membership.is_admin and not _other_admins(membership).exists():
        raise LastAdminError(_("The organization must keep at least one admin."))
    membership.delete()


# --- where the wizard stands ----------------------------------------------------------------------------

WIZARD_STEPS = ("raynet", "microsoft", "mapping", "policies", "preview")


def onboarding_step(organization: Organization) -> str | None:
    """The first unfinished step of the set-up wizard, or None once the first sync was confirmed."""
    raynet = getattr(organization, "raynet", None)
    microsoft = getattr(organization, "microsoft", None)
    if raynet is None or raynet.last_success_at is None:
        return "raynet"
    if microsoft is None or microsoft.consent != MicrosoftConnection.Consent.GRANTED or not microsoft.last_success_at:
        return "microsoft"
    if not organization.mappings.filter(enabled=True).exists():
        return "mapping"
    if organization.policy.reviewed_at is None:
        return "policies"
    if not organization.policy.sync_enabled:
        return "preview"
    return None


# --- Raynet ---------------------------------------------------------------------------------------------


def check_message(check: ConnectionCheck, *, side: str) -> str:
    """A failed connection check in the reader's language; the provider's own words follow for support."""
    error = check.error
    if error is None:
        return check.message
    if side == "raynet":
        if error.kind == ErrorKind.AUTH and error.status == 403:
            plain = _(
                "Raynet has blocked logins from this server's address for 60 minutes after too many failed "
                "logins. Wait an hour, then try again with the correct API key."
            )
        elif error.kind == ErrorKind.AUTH:
            plain = _(
                "Raynet did not accept the login: the API key is wrong or the instance name is unknown. Check "
                "the instance name (as in your Raynet address), the API user's e-mail and the API key."
            )
        elif error.kind == ErrorKind.PERMISSION:
            plain = _(
                "The login works, but the API user has no permission to read users or calendar activities. "
                "Give the user those rights in Raynet (Settings → Security roles)."
            )
        elif error.kind == ErrorKind.NOT_FOUND:
            plain = _("No Raynet API answers in this region: check the region.")
        elif error.kind == ErrorKind.BUDGET_SPENT:
            plain = _("Raynet's daily API request limit is spent; try again after midnight UTC.")
        else:
            plain = _("Raynet could not be reached or answered with an error; try again in a few minutes.")
    else:
        if error.kind == ErrorKind.AUTH:
            plain = _(
                "Microsoft refused access: the consent was not granted, was revoked, or the tenant is unknown. "
                "Grant consent again with a Microsoft 365 administrator account."
            )
        elif error.kind == ErrorKind.PERMISSION:
            plain = _(
                "Microsoft 365 answers, but the app may not read the users or the calendar. If you limited the "
                "app to chosen mailboxes, include them (see the help below)."
            )
        else:
            plain = _("Microsoft 365 could not be reached or answered with an error; try again in a few minutes.")
    return f"{plain} ({error.message})"


@dataclass(frozen=True)
class RaynetDetails:
    instance_name: str
    api_base_url: str
    api_user_email: str
    api_key: str  # empty: keep the stored key (it is never shown again, only replaced)


def raynet_connect(*, organization: Organization, details: RaynetDetails) -> tuple[bool, str]:
    """Test the details live; save them only when Raynet accepts them. Returns (ok, message for the admin)."""
    connection = getattr(organization, "raynet", None) or RaynetConnection(organization=organization)
    connection.instance_name = details.instance_name
    connection.api_base_url = details.api_base_url
    connection.api_user_email = details.api_user_email
    if details.api_key:
        connection.api_key = details.api_key
    check = RaynetClient(connection).test_connection()
    if not check.ok:
        return False, check_message(check, side="raynet")
    connection.save()
    connection.record_check(check)
    register_raynet_webhook(organization)
    return True, _("Connected to Raynet instance “%(instance)s”.") % {"instance": details.instance_name}


def register_raynet_webhook(organization: Organization) -> None:
    """Register Raynet's webhook; a failure is kept on the connection (webhook_note) and polling still syncs."""
    try:
        raynet_webhook_register(organization=organization)
    except ProviderError:
        pass  # recorded by raynet_webhook_register; the dashboard shows it


def raynet_disconnect(*, organization: Organization) -> str:
    """Disconnect Raynet: its webhook is removed in Raynet, the connection (API key, webhook token) deleted.
    Sync stops for every mailbox; the mappings, links and log stay, so connecting again resumes where it
    stopped without duplicates. Returns what the admin should know (empty when everything went through)."""
    note = ""
    try:
        raynet_webhook_unregister(organization=organization)
    except ProviderError as error:  # Raynet drops a webhook that keeps failing after 7 days (reference §7)
        note = _(
            "The webhook could not be removed in Raynet (%(reason)s); remove it there under Settings → Webhook."
        ) % {"reason": error.message}
    RaynetConnection.objects.filter(organization=organization).delete()
    return note


# --- Microsoft 365 --------------------------------------------------------------------------------------


def microsoft_consent_url(*, organization: Organization, user, cloud: str, redirect_uri: str) -> str:
    """Our app's admin-consent link; `state` is signed so the callback knows which organization asked, and who.

    https://learn.microsoft.com/entra/identity-platform/v2-admin-consent
    """
    state = signing.dumps({"org": str(organization.code), "user": user.pk, "cloud": cloud}, salt=CONSENT_STATE_SALT)
    authority = settings.MICROSOFT_CLOUDS[cloud]["authority"]
    graph = settings.MICROSOFT_CLOUDS[cloud]["graph"]
    scope = graph.split("/v1.0")[0] + "/.default"
    query = urlencode(
        {"client_id": settings.MICROSOFT_CLIENT_ID, "scope": scope, "redirect_uri": redirect_uri, "state": state}
    )
    return f"{authority}/organizations/v2.0/adminconsent?{query}"


def consent_state_read(state: str) -> dict:
    """The signed state of a consent callback; signing.BadSignature (or SignatureExpired) when forged or old."""
    return signing.loads(state, salt=CONSENT_STATE_SALT, max_age=CONSENT_STATE_MAX_AGE)


def microsoft_consent_record(*, organization: Organization, tenant_id: str, cloud: str) -> tuple[bool, str]:
    """Record the consented tenant and validate it by listing users and reading one calendar."""
    connection = getattr(organization, "microsoft", None) or MicrosoftConnection(organization=organization)
    connection.tenant_id = tenant_id
    connection.cloud = cloud
    connection.consent = MicrosoftConnection.Consent.GRANTED
    connection.save()
    ok, message = microsoft_check(connection=connection)
    if ok:
        mailboxes_subscribe(organization=organization)  # none before the first mapping; again after a disconnect
    return ok, message


def microsoft_check(*, connection: MicrosoftConnection) -> tuple[bool, str]:
    """List users and read one calendar; the outcome is stored on the connection (a pass restarts it)."""
    check = OutlookClient(connection).test_connection()
    connection.record_check(check)
    if check.ok:
        return True, _("Connected to Microsoft 365: users and calendars are readable.")
    return False, check_message(check, side="microsoft")


def microsoft_disconnect(*, organization: Organization) -> str:
    """Disconnect Microsoft 365: every mailbox's Graph subscription is deleted, then the connection (tenant,
    consent). Sync stops for every mailbox; the mappings, links and log stay, so consenting again resumes
    without duplicates. Returns what the admin should know (empty when everything went through)."""
    failed = []
    for mapping in organization.mappings.exclude(subscription_id=""):
        try:
            mailbox_unsubscribe(mapping=mapping)
        except ProviderError as error:  # it expires by itself within days; its notifications get 403 meanwhile
            logger.warning("the subscription of %s could not be deleted: %s", mapping, error.message)
            failed.append(mapping.outlook_upn)
    organization.mappings.update(subscription_id="", subscription_expires_at=None, subscription_note="")
    MicrosoftConnection.objects.filter(organization=organization).delete()
    if failed:
        return _(
            "Graph did not confirm deleting the change notifications of %(mailboxes)s; they expire by themselves."
        ) % {"mailboxes": ", ".join(failed)}
    return ""


def mailboxes_subscribe(*, organization: Organization) -> None:
    """Change notifications for every enabled mailbox (after consenting again); a failure is kept per mapping."""
    for mapping in organization.mappings.filter(enabled=True):
        try:
            mailbox_subscribe(mapping=mapping)
        except ProviderError:
            pass  # recorded by mailbox_subscribe on the mapping; the poll still syncs it


# --- mapping users --------------------------------------------------------------------------------------


@dataclass
class MappingRow:
    """One Raynet user in the mapping table, with the mailbox stored or suggested."""

    raynet: RaynetUser
    mapping: UserMapping | None
    mailbox: dict | None  # the Graph user: id, userPrincipalName, mail, displayName

    @property
    def matched(self) -> bool:
        return self.mailbox is not None


def mailbox_keys(mailbox: dict) -> set[str]:
    return {str(mailbox.get(k) or "").casefold() for k in ("userPrincipalName", "mail")} - {""}


def mapping_rows(*, organization: Organization) -> tuple[list[MappingRow], list[dict]]:
    """Every Raynet user with its mailbox: the stored mapping, else the mailbox whose UPN or mail equals the
    Raynet username or the person's e-mail (case-insensitive). Also returns all mailboxes, for the search."""
    raynet_users = RaynetClient(organization.raynet).list_users()
    mailboxes = sorted(OutlookClient(organization.microsoft).list_users(), key=lambda m: m["userPrincipalName"])
    by_address = {key: mailbox for mailbox in mailboxes for key in mailbox_keys(mailbox)}
    by_id = {mailbox["id"]: mailbox for mailbox in mailboxes}
    stored = {m.raynet_person_id: m for m in organization.mappings.all()}
    rows = []
    for user in sorted(raynet_users, key=lambda u: u.email.casefold()):
        mapping = stored.get(user.person_id)
        if mapping is not None:
            mailbox = by_id.get(mapping.outlook_user_id)
        else:
            mailbox = by_address.get(user.username.casefold()) or by_address.get(user.email.casefold())
        rows.append(MappingRow(raynet=user, mapping=mapping, mailbox=mailbox))
    return rows, mailboxes


def mailbox_find(mailboxes: list[dict], text: str) -> dict | None:
    """The mailbox an admin typed: its UPN or mail (case-insensitive)."""
    key = text.strip().casefold()
    return next((m for m in mailboxes if key in mailbox_keys(m)), None)


@dataclass(frozen=True)
class MappingChoice:
    raynet: RaynetUser
    mailbox: dict | None
    enabled: bool
    overrides: dict  # private_events_mode, deletion_mode, conflict_winner ("" = as the organization), sync_completed


@transaction.atomic
def mappings_save(*, organization: Organization, choices: list[MappingChoice]) -> list[UserMapping]:
    """Store the table. Returns the mappings newly switched on that never synced, which need the preview first
    when the organization already syncs (nothing is written before the admin has seen what the first run does)."""
    live = organization.policy.sync_enabled
    needs_preview = []
    for choice in choices:
        existing = organization.mappings.filter(raynet_person_id=choice.raynet.person_id).first()
        if choice.mailbox is None:
            if existing is not None and not existing.enabled:
                mapping_delete(mapping=existing)
            elif existing is not None:
                mapping_switch(mapping=existing, enabled=False)
            continue
        mapping = existing or UserMapping(organization=organization, raynet_person_id=choice.raynet.person_id)
        if existing is not None and existing.outlook_user_id != choice.mailbox["id"]:
            # Another mailbox: what was linked belongs to the old one, so start over with a new mapping.
            mapping_delete(mapping=existing)
            mapping = UserMapping(organization=organization, raynet_person_id=choice.raynet.person_id)
        # A mailbox taken by another Raynet user in this same save moves to this row.
        taken = organization.mappings.filter(outlook_user_id=choice.mailbox["id"])
        for other in taken.exclude(raynet_person_id=choice.raynet.person_id):
            mapping_delete(mapping=other)
        mapping.raynet_user_id = choice.raynet.user_account_id
        mapping.raynet_email = choice.raynet.email
        mapping.outlook_user_id = choice.mailbox["id"]
        mapping.outlook_upn = choice.mailbox["userPrincipalName"]
        for name, value in choice.overrides.items():
            setattr(mapping, name, value)
        was_enabled = mapping.enabled
        first_time = mapping.last_synced_at is None
        mapping.save()
        if choice.enabled and not was_enabled and live and first_time:
            needs_preview.append(mapping)
        elif choice.enabled != was_enabled:
            mapping_switch(mapping=mapping, enabled=choice.enabled)
    return needs_preview


def mapping_switch(*, mapping: UserMapping, enabled: bool) -> None:
    """Switch one mailbox's sync on or off, with its Graph change notifications (once the jobs area has them)."""
    mapping.enabled = enabled
    mapping.save(update_fields=["enabled"])
    hook = mailbox_subscribe if enabled else mailbox_unsubscribe
    try:
        hook(mapping=mapping)
    except ProviderError as error:  # the poll still syncs; the dashboard shows why notifications are off
        mapping.set_health(UserMapping.Health.WARNING, error.message)


def mapping_delete(*, mapping: UserMapping) -> None:
    """Remove a mapping outright (its links and runs go with it), its Graph subscription first: Graph would
    otherwise keep notifying about the mailbox until the subscription expires."""
    try:
        mailbox_unsubscribe(mapping=mapping)
    except ProviderError as error:  # it expires by itself within days; its notifications get 403 meanwhile
        logger.warning("the subscription of %s could not be deleted: %s", mapping, error.message)
    mapping.delete()


def policy_save(*, policy: SyncPolicy) -> None:
    policy.reviewed_at = timezone.now()
    policy.save()


def preview_mappings(*, organization: Organization, codes: list[str] | None = None):
    """The mappings the first-sync preview is about: the given ones, else every enabled one never synced."""
    mappings = organization.mappings.filter(last_synced_at__isnull=True)
    if codes:
        return mappings.filter(code__in=codes)
    return mappings.filter(enabled=True)


def first_sync_start(*, organization: Organization, mappings: list[UserMapping]) -> None:
    """The admin confirmed the preview: switch the organization's sync (and these mailboxes) on and queue the runs."""
    policy = organization.policy
    if not policy.sync_enabled:
        policy.sync_enabled = True
        policy.save(update_fields=["sync_enabled"])
    for mapping in mappings:
        if not mapping.enabled:
            mapping_switch(mapping=mapping, enabled=True)
        mapping_sync_request(mapping=mapping, trigger=SyncRun.Trigger.MANUAL)


def members_of(organization: Organization):
    return organization.memberships.select_related("user").order_by("user__email")


def invitations_for(user) -> list[Invitation]:
    return list(Invitation.objects.filter(Q(email__iexact=user.email)).select_related("organization"))


@dataclass
class PreviewPlan:
    mapping: UserMapping
    counts: dict  # {"to_outlook": {"create": n, ...}, "to_raynet": {...}}
    invitations: list  # (title, starts_at, [(address, external)])
    error: str = ""


def preview_plans(*, mappings: list[UserMapping]) -> list[PreviewPlan]:
    """The engine's dry run per mailbox (it writes nothing to either API or the database)."""
    plans = []
    domains = organization_domains(mappings[0].organization) if mappings else set()
    for mapping in mappings:
        try:
            plan = mapping_dry_run(mapping=mapping)
        except ProviderError as error:
            plans.append(PreviewPlan(mapping, {}, [], error.message))
            continue
        invitations = [
            (title, starts_at, [(a, a.rpartition("@")[2].casefold() not in domains) for a in attendees])
            for title, starts_at, attendees in plan.invitations
        ]
        plans.append(PreviewPlan(mapping, plan.counts(), invitations))
    return plans


@dataclass(frozen=True)
class FirstSyncForecast:
    events: int  # events the first syncs make in Raynet
    cap: int  # Raynet requests a day first syncs may spend
    days: int  # days it takes at that cap


def first_sync_forecast(*, organization: Organization, plans: list[PreviewPlan]) -> FirstSyncForecast | None:
    """How long the previewed first syncs take at FIRST_SYNC_BUDGET_SHARE of the daily Raynet budget."""
    raynet = getattr(organization, "raynet", None)
    events = sum(plan.counts.get("to_raynet", {}).get("create", 0) for plan in plans)
    if raynet is None or not events:
        return None
    cap = raynet.first_sync_cap
    days = math.ceil(events * raynet.first_sync_cost_per_event() / max(cap, 1))
    return FirstSyncForecast(events=events, cap=cap, days=days)


def organization_domains(organization: Organization) -> set[str]:
    """The e-mail domains of the organization's own mailboxes: any other attendee is external."""
    return {m.outlook_upn.rpartition("@")[2].casefold() for m in organization.mappings.all()}
