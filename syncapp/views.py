"""The portal's pages. Thin: the tenant helper resolves the organization, forms validate, onboarding.py acts."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from syncapp import dashboard, onboarding
from syncapp.forms import (
    SANDBOX_RAYNET_PATH,
    InviteForm,
    LogFilterForm,
    MappingRowForm,
    MicrosoftForm,
    OrganizationForm,
    PolicyForm,
    RaynetForm,
    RoleForm,
    mailboxes_chosen_once,
)
from syncapp.jobs import mapping_sync_request
from syncapp.models import Invitation, Membership, SyncRun
from syncapp.providers.base import ProviderError
from syncapp.tenancy import get_organization_for_user

LOG_PAGE_SIZE = 50


def portal_context(request: HttpRequest) -> dict:
    """Template context of every page: the languages for the switcher, whether the simulated apps are there."""
    return {"portal_languages": settings.LANGUAGES, "sandbox_enabled": settings.SANDBOX_ENABLED}


@login_required
def index(request: HttpRequest) -> HttpResponse:
    memberships = Membership.objects.filter(user=request.user).select_related("organization")
    invitations = onboarding.invitations_for(request.user)
    return render(request, "syncapp/index.html", {"memberships": memberships, "invitations": invitations})


@login_required
def organization_create(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        organization = onboarding.organization_create(name=form.cleaned_data["name"], user=request.user)
        return redirect("setup", organization.code)
    return render(request, "syncapp/organization_create.html", {"form": form})


# --- members -------------------------------------------------------------------------------------------


@login_required
def members(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=request.method == "POST")
    form = InviteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        onboarding.invitation_send(
            organization=organization,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            invited_by=request.user,
            accept_url_for=lambda inv: request.build_absolute_uri(reverse("invitation", args=[inv.code])),
        )
        messages.success(request, _("Invitation sent to %(email)s.") % {"email": form.cleaned_data["email"]})
        return redirect("members", organization.code)
    context = {
        "organization": organization,
        "membership": membership,
        "members": onboarding.members_of(organization),
        "invitations": organization.invitations.order_by("email"),
        "form": form,
        "role_choices": Membership.Role.choices,
    }
    return render(request, "syncapp/members.html", context)


@login_required
@require_POST
def member_change(request: HttpRequest, code, member) -> HttpResponse:
    organization, _membership = get_organization_for_user(request, code, admin_required=True)
    target = get_object_or_404(Membership, organization=organization, code=member)
    try:
        if "remove" in request.POST:
            onboarding.membership_remove(membership=target)
            messages.success(request, _("%(email)s was removed.") % {"email": target.user.email})
        else:
            form = RoleForm(request.POST)
            if not form.is_valid():
                messages.error(request, _("Choose a role."))
            else:
                onboarding.membership_change_role(membership=target, role=form.cleaned_data["role"])
                messages.success(request, _("Role of %(email)s changed.") % {"email": target.user.email})
    except onboarding.LastAdminError as error:
        messages.error(request, str(error))
    if not Membership.objects.filter(organization=organization, user=request.user).exists():
        return redirect("index")
    return redirect("members", organization.code)


@login_required
@require_POST
def invitation_cancel(request: HttpRequest, code, invitation) -> HttpResponse:
    organization, _membership = get_organization_for_user(request, code, admin_required=True)
    get_object_or_404(Invitation, organization=organization, code=invitation).delete()
    return redirect("members", organization.code)


@login_required
def invitation(request: HttpRequest, invitation) -> HttpResponse:
    """The link in the invitation mail: only the invited address may accept it; anyone else gets 404."""
    found = Invitation.objects.select_related("organization").filter(code=invitation).first()
    if found is None or not found.is_for(request.user):
        raise Http404("Invitation not found")
    if request.method == "POST":
        onboarding.invitation_accept(invitation=found, user=request.user)
        return redirect("organization", found.organization.code)
    return render(request, "syncapp/invitation.html", {"invitation": found})


# --- the set-up wizard ---------------------------------------------------------------------------------


@login_required
def setup(request: HttpRequest, code) -> HttpResponse:
    """Resume the wizard at its first unfinished step."""
    organization, _membership = get_organization_for_user(request, code, admin_required=True)
    step = onboarding.onboarding_step(organization)
    return redirect(f"setup_{step}", organization.code) if step else redirect("organization", organization.code)


def wizard_context(organization, membership, current: str, **extra) -> dict:
    step = onboarding.onboarding_step(organization)
    done_until = onboarding.WIZARD_STEPS.index(step) if step else len(onboarding.WIZARD_STEPS)
    steps = [(name, i < done_until, name == current) for i, name in enumerate(onboarding.WIZARD_STEPS)]
    return {"organization": organization, "membership": membership, "steps": steps, "current": current, **extra}


def sandbox_raynet_url(request: HttpRequest) -> str | None:
    return request.build_absolute_uri(SANDBOX_RAYNET_PATH) if settings.SANDBOX_ENABLED else None


@login_required
def setup_raynet(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=True)
    connection = getattr(organization, "raynet", None)
    initial = (
        {f: getattr(connection, f) for f in ("instance_name", "api_base_url", "api_user_email")} if connection else {}
    )
    form = RaynetForm(
        request.POST or None, initial=initial, has_key=connection is not None, sandbox_url=sandbox_raynet_url(request)
    )
    if request.method == "POST" and form.is_valid():
        ok, message = onboarding.raynet_connect(organization=organization, details=form.details())
        if ok:
            messages.success(request, message)
            return redirect("setup", organization.code)
        form.add_error(None, message)
    context = wizard_context(organization, membership, "raynet", form=form, connection=connection)
    return render(request, "syncapp/setup_raynet.html", context)


@login_required
def setup_microsoft(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=True)
    connection = getattr(organization, "microsoft", None)
    form = MicrosoftForm(request.POST or None, initial={"cloud": connection.cloud} if connection else None)
    if request.method == "POST" and "check" in request.POST and connection is not None:
        ok, message = onboarding.microsoft_check(connection=connection)
        (messages.success if ok else messages.error)(request, message)
        return redirect("setup", organization.code) if ok else redirect("setup_microsoft", organization.code)
    if request.method == "POST" and form.is_valid():
        url = onboarding.microsoft_consent_url(
            organization=organization,
            user=request.user,
            cloud=form.cleaned_data["cloud"],
            redirect_uri=request.build_absolute_uri(reverse("microsoft_consent_callback")),
        )
        return redirect(url)
    context = wizard_context(
        organization,
        membership,
        "microsoft",
        form=form,
        connection=connection,
        configured=bool(settings.MICROSOFT_CLIENT_ID),
    )
    return render(request, "syncapp/setup_microsoft.html", context)


@login_required
def microsoft_consent_callback(request: HttpRequest) -> HttpResponse:
    """Microsoft sends the admin back here with ?tenant=…&admin_consent=True&state=… (or ?error=…)."""
    try:
        state = onboarding.consent_state_read(request.GET.get("state", ""))
    except signing.BadSignature:
        raise Http404("Unknown or expired consent request") from None
    if state["user"] != request.user.pk:
        raise Http404("Unknown or expired consent request")
    organization, _membership = get_organization_for_user(request, state["org"], admin_required=True)
    tenant = request.GET.get("tenant", "")
    if request.GET.get("error") or request.GET.get("admin_consent") != "True" or not tenant:
        messages.error(
            request,
            _("Microsoft 365 consent was not granted: %(reason)s")
            % {"reason": request.GET.get("error_description") or request.GET.get("error") or _("no answer")},
        )
        return redirect("setup_microsoft", organization.code)
    ok, message = onboarding.microsoft_consent_record(organization=organization, tenant_id=tenant, cloud=state["cloud"])
    (messages.success if ok else messages.error)(request, message)
    return redirect("setup", organization.code) if ok else redirect("setup_microsoft", organization.code)


@login_required
def setup_mapping(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=request.method == "POST")
    if onboarding.onboarding_step(organization) in ("raynet", "microsoft"):
        messages.error(request, _("Connect Raynet and Microsoft 365 first."))
        return redirect("organization", organization.code)
    try:
        rows, mailboxes = onboarding.mapping_rows(organization=organization)
    except ProviderError as error:
        messages.error(request, error.message)
        return redirect("organization", organization.code)
    forms = [row_form(row, mailboxes, request.POST if request.method == "POST" else None) for row in rows]
    valid = request.method == "POST" and all(form.is_valid() for _row, form in forms)
    if valid and mailboxes_chosen_once([form for _row, form in forms]):
        if "enable_all" in request.POST:
            for _row, form in forms:
                form.cleaned_data["enabled"] = form.cleaned_data["mailbox"] is not None
        choices = [
            onboarding.MappingChoice(
                raynet=row.raynet,
                mailbox=form.cleaned_data["mailbox"],
                enabled=form.cleaned_data["enabled"],
                overrides=form.overrides(),
            )
            for row, form in forms
        ]
        pending = onboarding.mappings_save(organization=organization, choices=choices)
        messages.success(request, _("User mapping saved."))
        if pending:
            query = "&".join(f"m={m.code}" for m in pending)
            return redirect(reverse("setup_preview", args=[organization.code]) + "?" + query)
        return redirect("setup", organization.code)
    context = wizard_context(organization, membership, "mapping", forms=forms, mailboxes=mailboxes)
    return render(request, "syncapp/setup_mapping.html", context)


def row_form(row: onboarding.MappingRow, mailboxes: list[dict], data) -> tuple:
    mapping = row.mapping
    initial = {
        "mailbox": row.mailbox["userPrincipalName"] if row.mailbox else "",
        "enabled": bool(mapping and mapping.enabled),
    }
    if mapping is not None:
        initial |= {f: getattr(mapping, f) for f in ("private_events_mode", "deletion_mode", "conflict_winner")}
        initial["sync_completed"] = {True: "yes", False: "no"}.get(mapping.sync_completed, "")
    form = MappingRowForm(data, initial=initial, prefix=f"p{row.raynet.person_id}", mailboxes=mailboxes)
    return row, form


@login_required
def setup_policies(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=request.method == "POST")
    form = PolicyForm(request.POST or None, instance=organization.policy)
    if request.method == "POST" and form.is_valid():
        onboarding.policy_save(policy=form.save(commit=False))
        messages.success(request, _("Policies saved."))
        return redirect("setup", organization.code)
    return render(
        request, "syncapp/setup_policies.html", wizard_context(organization, membership, "policies", form=form)
    )


@login_required
def setup_preview(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code, admin_required=request.method == "POST")
    mappings = list(onboarding.preview_mappings(organization=organization, codes=request.GET.getlist("m")))
    if request.method == "POST":
        onboarding.first_sync_start(organization=organization, mappings=mappings)
        messages.success(request, _("The first sync has started."))
        return redirect("organization", organization.code)
    plans = onboarding.preview_plans(mappings=mappings)
    context = wizard_context(
        organization,
        membership,
        "preview",
        plans=plans,
        horizon_days=settings.OCCURRENCE_HORIZON_DAYS,
        forecast=onboarding.first_sync_forecast(organization=organization, plans=plans),
        first_sync_share=settings.FIRST_SYNC_BUDGET_SHARE,
    )
    return render(request, "syncapp/setup_preview.html", context)


# --- dashboard and log ---------------------------------------------------------------------------------


@login_required
@require_GET
def organization_overview(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code)
    mappings = list(dashboard.mappings_with_counts(organization))
    live, total = dashboard.notification_status(organization)
    first_syncs = dashboard.first_sync_outlook(organization, mappings)
    progress = first_syncs.mappings if first_syncs else {}
    context = {
        "organization": organization,
        "membership": membership,
        "setup_step": onboarding.onboarding_step(organization),
        "mappings": [(m, dashboard.advice_for(m), progress.get(m.pk)) for m in mappings],
        "first_syncs": first_syncs,
        "first_sync_share": settings.FIRST_SYNC_BUDGET_SHARE,
        "flagged": [(m, dashboard.held_deletions(m)) for m in mappings if m.health == m.Health.FLAGGED],
        "raynet": getattr(organization, "raynet", None),
        "microsoft": getattr(organization, "microsoft", None),
        "next_run": dashboard.next_scheduled_run(),
        "notifications_live": live,
        "notifications_total": total,
        "chart": dashboard.activity_chart(organization),
        "budget_chart": dashboard.budget_chart(organization),
        "legend": dashboard.chart_legend(),
        "runs": organization.runs.select_related("mapping").order_by("-started_at")[:10],
    }
    return render(request, "syncapp/organization.html", context)


@login_required
@require_POST
def mapping_action(request: HttpRequest, code, mapping) -> HttpResponse:
    organization, _membership = get_organization_for_user(request, code, admin_required=True)
    target = get_object_or_404(organization.mappings, code=mapping)
    if "approve" in request.POST:
        target.approve_held_deletions()
        messages.success(request, _("Deletions confirmed: the next run carries them out."))
    elif "reset" in request.POST:
        target.reset_cursors()
        messages.success(request, _("Mailbox reset: the next run reads both sides again and deletes nothing."))
    mapping_sync_request(mapping=target, trigger=SyncRun.Trigger.MANUAL)
    messages.success(request, _("Sync of %(email)s requested.") % {"email": target.raynet_email})
    return redirect("organization", organization.code)


@login_required
def disconnect(request: HttpRequest, code, side: str) -> HttpResponse:
    """Disconnect Raynet or Microsoft 365: a confirmation page, then the POST does it."""
    organization, membership = get_organization_for_user(request, code, admin_required=True)
    if side not in DISCONNECTS or getattr(organization, side, None) is None:
        raise Http404("Not connected")
    if request.method == "POST":
        note = DISCONNECTS[side](organization=organization)
        messages.success(request, _("Disconnected. Sync is stopped until you connect again."))
        if note:
            messages.warning(request, note)
        return redirect("organization", organization.code)
    context = {"organization": organization, "membership": membership, "side": side}
    return render(request, "syncapp/disconnect.html", context)


DISCONNECTS = {"raynet": onboarding.raynet_disconnect, "microsoft": onboarding.microsoft_disconnect}


@login_required
@require_GET
def sync_log(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code)
    mappings = {str(m.code): m for m in organization.mappings.order_by("raynet_email")}
    form = LogFilterForm(
        request.GET or None,
        users=[(c, m.raynet_email) for c, m in mappings.items()],
        actions=dashboard.log_actions(organization),
    )
    filters = form.cleaned_data if form.is_valid() else {}
    entries = dashboard.log_entries(
        organization,
        mapping=mappings.get(filters.get("user") or ""),
        direction=filters.get("direction") or "",
        action=filters.get("action") or "",
        day=filters.get("day"),
    )
    page = Paginator(entries, LOG_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "organization": organization,
        "membership": membership,
        "form": form,
        "page": page,
        "query": query.urlencode(),
    }
    return render(request, "syncapp/log.html", context)
