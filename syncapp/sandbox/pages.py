"""The simulated Raynet and Outlook apps (demo only, mounted with the sandbox urls): act as any person of a sandbox.

Every change goes through the sandbox's own "person" methods (`ui_*` in Raynet, `person_*` in Graph), the code
paths behind its API too, so the sandbox then notifies the product as the real services do: Graph change
notifications to the active subscriptions, Raynet webhooks to the registered URLs, POSTed to our /hooks/
endpoints once the state is saved (`stored_sandbox`).

Who may act on which sandbox: the pages touch fake data only, but a sandbox state can hold several
organizations' worlds (one Graph state, many tenants). A signed-in user may act on the Raynet sandbox that an
organization they are a member of is connected to (any role: showing the demo is not an admin's privilege),
and in the Graph sandbox only on the mailboxes of those organizations' tenants; staff may act on every one.
Anything else is a 404, as the portal answers for another organization's pages.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from syncapp.models import Organization, SandboxState
from syncapp.sandbox.base import stored_sandbox
from syncapp.sandbox.forms import MoveForm, OutlookEventForm, RaynetActivityForm
from syncapp.sandbox.outlook import GraphError, GraphSandbox
from syncapp.sandbox.raynet import ENTITIES, RaynetSandbox

RAYNET_PATH = re.compile(r"/sandbox/raynet/(?P<key>[-\w]+)/api/v2/?$")
GRAPH_PATH = re.compile(r"/sandbox/graph/(?P<key>[-\w]+)/v1\.0/?$")
WINDOW_DAYS = 35  # five weeks a page, from a week back
PAGE_STEP = timedelta(days=28)


# --- access ----------------------------------------------------------------------------------------------------


@dataclass
class SandboxAccess:
    raynet: bool = False
    tenants: set[str] = field(default_factory=set)
    every_tenant: bool = False

    def sees_tenant(self, tenant_id: str) -> bool:
        return self.every_tenant or tenant_id in self.tenants


def sandbox_access(*, user) -> dict[str, SandboxAccess]:
    """Sandbox key → what this user may act on there (see the module docstring)."""
    access: dict[str, SandboxAccess] = defaultdict(SandboxAccess)
    if user.is_staff:
        for name in SandboxState.objects.values_list("name", flat=True):
            kind, _, key = name.partition(":")
            if kind == RaynetSandbox.name:
                access[key].raynet = True
            elif kind == GraphSandbox.name:
                access[key].every_tenant = True
        return dict(access)
    organizations = Organization.objects.filter(memberships__user=user).select_related("raynet", "microsoft")
    for organization in organizations:
        raynet = getattr(organization, "raynet", None)
        if raynet and (found := RAYNET_PATH.search(urlsplit(raynet.api_base_url).path)):
            access[found["key"]].raynet = True
        microsoft = getattr(organization, "microsoft", None)
        if microsoft and (found := GRAPH_PATH.search(urlsplit(microsoft.graph_base_url).path)):
            access[found["key"]].tenants.add(microsoft.tenant_id)
    return dict(access)


def access_or_404(request: HttpRequest, key: str) -> SandboxAccess:
    access = sandbox_access(user=request.user).get(key)
    if access is None:
        raise Http404("No such sandbox")
    return access


def raynet_or_404(request: HttpRequest, key: str) -> None:
    if not access_or_404(request, key).raynet:
        raise Http404("No such sandbox")


def mailbox_or_404(request: HttpRequest, key: str, graph: GraphSandbox, mailbox: str) -> dict:
    access = access_or_404(request, key)
    user = graph.state["users"].get(mailbox)
    if user is None or not access.sees_tenant(user["tenant"]):
        raise Http404("No such mailbox")
    return user


# --- shared helpers ------------------------------------------------------------------------------------------


def window(request: HttpRequest) -> tuple[datetime, datetime]:
    """The calendar's five weeks: from `?from=` (a date), by default a week back."""
    try:
        first = date.fromisoformat(request.GET.get("from", ""))
    except ValueError:
        first = timezone.localdate() - timedelta(days=7)
    start = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    return start, start + timedelta(days=WINDOW_DAYS)


def window_links(request: HttpRequest, start: datetime, **query: str) -> dict[str, str]:
    def link(day: date) -> str:
        return f"{request.path}?{urlencode({**query, 'from': day.isoformat()})}"

    return {"earlier": link((start - PAGE_STEP).date()), "later": link((start + PAGE_STEP).date())}


def utc(text: str | None) -> datetime | None:
    """A sandbox's stored or rendered UTC time (ISO, with or without an offset or fraction) → aware datetime."""
    if not text:
        return None
    return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)


def back_to(name: str, key: str, **query: str) -> HttpResponse:
    return redirect(f"{reverse(name, args=[key])}?{urlencode(query)}")


@login_required
def sandbox_index(request: HttpRequest) -> HttpResponse:
    keys = sorted(sandbox_access(user=request.user).items())
    return render(request, "sandbox/index.html", {"keys": keys, "app": ""})


# --- simulated Raynet ------------------------------------------------------------------------------------------


def raynet_people(raynet: RaynetSandbox) -> list[tuple[str, str]]:
    persons = sorted(raynet.state["persons"].values(), key=lambda p: (p["lastName"], p["firstName"]))
    return [(str(p["id"]), f"{p['firstName']} {p['lastName']} <{p['email']}>".strip()) for p in persons]


def raynet_user(raynet: RaynetSandbox, user_id: str | None) -> dict | None:
    return raynet.state["users"].get(user_id or "")


def raynet_rows(raynet: RaynetSandbox, person_id: int, start: datetime, end: datetime) -> list[dict]:
    """The person's meetings and events in the window, earliest first, times as aware datetimes."""
    rows = []
    for entity in ENTITIES:
        for record in raynet.activities(entity):
            begins = utc(record["scheduledFrom"])
            if record["owner"] != person_id or begins is None or not (start <= begins < end):
                continue
            names = [raynet.person_name(p["person"]) for p in record["participants"] if not p["owner"]]
            rows.append(
                {
                    **record,
                    "entity": entity,
                    "start": begins,
                    "end": utc(record["scheduledTill"]),
                    "participant_names": [name for name in names if name],
                }
            )
    return sorted(rows, key=lambda row: (row["start"], row["id"]))


def raynet_owner(raynet: RaynetSandbox, record: dict) -> str:
    """The id of the user account owning a record (its calendar to go back to)."""
    return next((str(u["id"]) for u in raynet.state["users"].values() if u["person"] == record["owner"]), "")


def raynet_initial(record: dict) -> dict:
    return {
        "title": record["title"],
        "start": utc(record["scheduledFrom"]),
        "end": utc(record["scheduledTill"]),
        "place": record["meetingPlace"] or "",
        "description": record["description"] or "",
        "participants": [str(p["person"]) for p in record["participants"] if not p["owner"] and p["person"]],
    }


RAYNET_FIELDS = {
    "title": "title", "start": "scheduledFrom", "end": "scheduledTill", "place": "meetingPlace",
    "description": "description",
}  # fmt: skip


def raynet_fields(cleaned: dict, changed: list[str]) -> dict:
    """The changed form fields in the sandbox's stored form (ui_edit_activity's keyword arguments); Raynet
    stores an emptied text as null."""
    fields = {RAYNET_FIELDS[name]: cleaned[name] or None for name in changed if name in RAYNET_FIELDS}
    if "participants" in changed:
        fields["participants"] = [int(person) for person in cleaned["participants"]]
    return fields


@login_required
def raynet_calendar(request: HttpRequest, key: str) -> HttpResponse:
    """The picked user's calendar, and a new meeting or event for them (POST)."""
    raynet_or_404(request, key)
    user_id = request.GET.get("user", "")
    start, end = window(request)
    with stored_sandbox(RaynetSandbox, key) as raynet:
        user = raynet_user(raynet, user_id)
        form = RaynetActivityForm(request.POST or None, people=raynet_people(raynet))
        if request.method == "POST" and user and form.is_valid():
            data = form.cleaned_data
            raynet.ui_create_activity(
                data["entity"], user["person"], data["title"], data["start"], data["end"],
                meetingPlace=data["place"] or None, description=data["description"] or None,
                participants=[int(person) for person in data["participants"]],
            )  # fmt: skip
            created = True
        else:
            created = False
        rows = raynet_rows(raynet, user["person"], start, end) if user else []
        users = sorted(raynet.state["users"].values(), key=lambda u: u["username"].lower())
        choices = [(str(u["id"]), f"{raynet.person_name(u['person'])} <{u['username']}>") for u in users]
        picked_name = raynet.person_name(user["person"]) if user else ""
    if created:
        messages.success(request, _("Saved in the simulated Raynet."))
        return back_to("sandbox-raynet", key, user=user_id)
    context = {
        "app": "raynet", "key": key, "picked": user, "picked_name": picked_name, "rows": rows, "form": form,
        "picker": {"label": _("Act as the Raynet user"), "name": "user", "choices": choices, "value": user_id},
        "window": (start, end), "links": window_links(request, start, user=user_id or ""),
    }  # fmt: skip
    return render(request, "sandbox/raynet.html", context)


@login_required
def raynet_edit(request: HttpRequest, key: str, entity: str, activity_id: int) -> HttpResponse:
    """Edit (title, times, place, description, participants) or move (a new start, the length kept)."""
    raynet_or_404(request, key)
    with stored_sandbox(RaynetSandbox, key) as raynet:
        record = raynet.activity(entity, activity_id) if entity in ENTITIES else None
        if record is None:
            raise Http404("No such activity")
        owner = raynet_owner(raynet, record)
        initial = raynet_initial(record)
        posted = request.POST if request.method == "POST" else None
        moving = posted is not None and "move" in posted
        form = RaynetActivityForm(
            None if moving else posted, initial=initial, people=raynet_people(raynet), editing=True
        )
        move_form = MoveForm(posted if moving else None, initial={"start": initial["start"]})
        saved = False
        if moving and move_form.is_valid():
            length = initial["end"] - initial["start"] if initial["end"] else timedelta(0)
            new_start = move_form.cleaned_data["start"]
            raynet.ui_edit_activity(entity, activity_id, scheduledFrom=new_start, scheduledTill=new_start + length)
            saved = True
        elif posted is not None and not moving and form.is_valid():
            if form.changed_data:
                raynet.ui_edit_activity(entity, activity_id, **raynet_fields(form.cleaned_data, form.changed_data))
            saved = True
    if saved:
        messages.success(request, _("Saved in the simulated Raynet."))
        return back_to("sandbox-raynet", key, user=owner)
    context = {"app": "raynet", "key": key, "record": record, "owner": owner, "form": form, "move_form": move_form}
    return render(request, "sandbox/raynet_edit.html", context)


@login_required
@require_POST
def raynet_action(request: HttpRequest, key: str, entity: str, activity_id: int) -> HttpResponse:
    """Complete, cancel or delete, as the buttons in Raynet's activity detail."""
    raynet_or_404(request, key)
    action = request.POST.get("action")
    actions = {"complete": "ui_complete_activity", "cancel": "ui_cancel_activity", "delete": "ui_delete_activity"}
    with stored_sandbox(RaynetSandbox, key) as raynet:
        record = raynet.activity(entity, activity_id) if entity in ENTITIES else None
        if record is None or action not in actions:
            raise Http404("No such activity")
        owner = raynet_owner(raynet, record)
        getattr(raynet, actions[action])(entity, activity_id)
    done = {
        "complete": _("Marked as completed in the simulated Raynet."),
        "cancel": _("Cancelled in the simulated Raynet."),
        "delete": _("Deleted from the simulated Raynet."),
    }
    messages.success(request, done[action])
    return back_to("sandbox-raynet", key, user=owner)


# --- simulated Outlook -----------------------------------------------------------------------------------------


def outlook_mailboxes(request: HttpRequest, key: str, graph: GraphSandbox) -> list[dict]:
    access = access_or_404(request, key)
    mailboxes = [
        {"id": user_id, **user} for user_id, user in graph.state["users"].items() if access.sees_tenant(user["tenant"])
    ]
    return sorted(mailboxes, key=lambda m: m["mail"].lower())


def outlook_row(event: dict) -> dict:
    """A rendered Graph event (UTC, as the sandbox's readers give it) for the template."""
    return {
        **event,
        "starts": utc(event["start"]["dateTime"]),
        "ends": utc(event["end"]["dateTime"]),
        "private": event["sensitivity"] in ("private", "confidential"),
        "in_series": event["type"] in ("occurrence", "exception"),
        "place": event["location"].get("displayName", ""),
        "attendee_addresses": [a["emailAddress"]["address"] for a in event["attendees"]],
    }


def outlook_initial(event: dict) -> dict:
    row = outlook_row(event)
    return {
        "subject": event["subject"],
        "start": row["starts"],
        "end": row["ends"],
        "location": row["place"],
        "body": event["body"]["content"],
        "private": row["private"],
        "attendees": ", ".join(row["attendee_addresses"]),
    }


def outlook_fields(cleaned: dict, changed: list[str]) -> dict:
    """The changed fields as person_edit_event's keyword arguments: only those, so Outlook sends an update
    to the attendees only when the time or place really changed."""
    return {name: cleaned[name] for name in changed if name != "weekly"}


def weekly_from(start: datetime) -> dict:
    local = timezone.localtime(start)
    return {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [local.strftime("%A").lower()]},
        "range": {"type": "noEnd", "startDate": local.date().isoformat()},
    }


@login_required
def outlook_calendar(request: HttpRequest, key: str) -> HttpResponse:
    """The picked mailbox's calendar view (single events and the occurrences of series), and a new event (POST)."""
    access_or_404(request, key)
    mailbox = request.GET.get("mailbox", "")
    start, end = window(request)
    form = OutlookEventForm(request.POST or None)
    created = False
    try:
        with stored_sandbox(GraphSandbox, key) as graph:
            mailboxes = outlook_mailboxes(request, key, graph)
            picked = mailbox_or_404(request, key, graph, mailbox) if mailbox else None
            if request.method == "POST" and picked and form.is_valid():
                data = form.cleaned_data
                graph.person_create_event(
                    mailbox, data["subject"], data["start"], data["end"], body=data["body"],
                    private=data["private"], attendees=data["attendees"], location=data["location"],
                    recurrence=weekly_from(data["start"]) if data["weekly"] else None, time_zone=settings.TIME_ZONE,
                )  # fmt: skip
                created = True
    except GraphError as error:
        form.add_error(None, error.message)
        created = False
    if created:
        messages.success(request, _("Saved in the simulated Outlook."))
        return back_to("sandbox-outlook", key, mailbox=mailbox)
    with stored_sandbox(GraphSandbox, key) as graph:
        rows = [outlook_row(event) for event in graph.occurrences(mailbox, start, end)] if picked else []
    context = {
        "app": "outlook", "key": key, "picked": picked, "mailbox": mailbox, "rows": rows, "form": form,
        "picker": {
            "label": _("Act as the mailbox"), "name": "mailbox", "value": mailbox,
            "choices": [(m["id"], f"{m['displayName']} <{m['mail']}>") for m in mailboxes],
        },
        "window": (start, end), "links": window_links(request, start, mailbox=mailbox),
    }  # fmt: skip
    return render(request, "sandbox/outlook.html", context)


@login_required
def outlook_edit(request: HttpRequest, key: str, mailbox: str, event_id: str) -> HttpResponse:
    """Edit or move an event, a whole series (its master's id) or one occurrence (its own id)."""
    posted = request.POST if request.method == "POST" else None
    moving = posted is not None and "move" in posted
    with stored_sandbox(GraphSandbox, key) as graph:
        mailbox_or_404(request, key, graph, mailbox)
        event = graph.event(mailbox, event_id)
    if event is None:
        raise Http404("No such event")
    initial = outlook_initial(event)
    form = OutlookEventForm(None if moving else posted, initial=initial, editing=True)
    move_form = MoveForm(posted if moving else None, initial={"start": initial["start"]})
    fields = None
    if moving and move_form.is_valid():
        new_start = move_form.cleaned_data["start"]
        fields = {"start": new_start, "end": new_start + (initial["end"] - initial["start"])}
    elif posted is not None and not moving and form.is_valid():
        fields = outlook_fields(form.cleaned_data, form.changed_data)
    if fields is not None:
        try:
            if fields:
                with stored_sandbox(GraphSandbox, key) as graph:
                    graph.person_edit_event(mailbox, event_id, time_zone=event["originalStartTimeZone"], **fields)
        except GraphError as error:  # e.g. an occurrence moved past its neighbour: Outlook refuses it too
            (move_form if moving else form).add_error(None, error.message)
        else:
            messages.success(request, _("Saved in the simulated Outlook."))
            return back_to("sandbox-outlook", key, mailbox=mailbox)
    context = {"app": "outlook", "key": key, "mailbox": mailbox, "event": outlook_row(event), "form": form}
    context["move_form"] = move_form
    return render(request, "sandbox/outlook_edit.html", context)


@login_required
@require_POST
def outlook_action(request: HttpRequest, key: str, mailbox: str, event_id: str) -> HttpResponse:
    """Delete (an event, a series or one occurrence), switch private on or off, or accept an invitation."""
    changes = {
        "delete": lambda graph: graph.person_delete_event(mailbox, event_id),
        "private": lambda graph: graph.person_edit_event(mailbox, event_id, private=True),
        "normal": lambda graph: graph.person_edit_event(mailbox, event_id, private=False),
        "accept": lambda graph: graph.person_accept(mailbox, event_id),
    }
    action = request.POST.get("action", "")
    if action not in changes:
        raise Http404("No such action")
    try:
        with stored_sandbox(GraphSandbox, key) as graph:
            mailbox_or_404(request, key, graph, mailbox)
            changes[action](graph)
    except GraphError as error:
        messages.error(request, error.message)
    else:
        done = {
            "delete": _("Deleted from the simulated Outlook."),
            "private": _("Marked as private in the simulated Outlook."),
            "normal": _("No longer private in the simulated Outlook."),
            "accept": _("Accepted in the simulated Outlook: the organizer gets the response."),
        }
        messages.success(request, done[action])
    return back_to("sandbox-outlook", key, mailbox=mailbox)


@login_required
def outlook_mail(request: HttpRequest, key: str) -> HttpResponse:
    """What the simulated Outlook sent to attendees (invitations, updates, cancellations, responses), newest first,
    for the mailboxes this user may see."""
    with stored_sandbox(GraphSandbox, key) as graph:
        addresses = {m["mail"].lower() for m in outlook_mailboxes(request, key, graph)}
        sent = [
            {**mail, "sent_at": datetime.fromisoformat(mail["at"])}
            for mail in reversed(graph.sent_mail)
            if mail["from"].lower() in addresses or mail["to"].lower() in addresses
        ]
    return render(request, "sandbox/outlook_mail.html", {"app": "outlook", "key": key, "sent": sent})
