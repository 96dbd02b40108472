"""Endpoints Graph and Raynet call (under /hooks/). CSRF-exempt: each authenticates what it receives itself.

- POST /hooks/graph/notify/ and /hooks/graph/lifecycle/: Graph change and lifecycle notifications; the
  validation handshake answers the URL-decoded token as text/plain; each item's clientState is checked.
- POST /hooks/raynet/<organization code>/: Raynet webhooks, authenticated by the X-RAYNETCRM-Token secret.
They answer at once (Graph allows 3 s): the work is queued for the worker.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from syncapp import notifications
from syncapp.models import Organization


def read_json(request: HttpRequest) -> tuple[object | None, HttpResponse | None]:
    """The JSON body, or the refusal: 413 over WEBHOOK_MAX_BODY (checked before reading it), 400 if not JSON."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.WEBHOOK_MAX_BODY:
        return None, HttpResponse("Body too large.", status=413, content_type="text/plain")
    body = request.read(settings.WEBHOOK_MAX_BODY + 1)
    if len(body) > settings.WEBHOOK_MAX_BODY:
        return None, HttpResponse("Body too large.", status=413, content_type="text/plain")
    try:
        return json.loads(body), None
    except ValueError:
        return None, HttpResponse("The body is not JSON.", status=400, content_type="text/plain")


@csrf_exempt
@require_POST
def graph_notifications(request: HttpRequest) -> HttpResponse:
    if "validationToken" in request.GET:  # the handshake; request.GET holds the URL-decoded value
        return HttpResponse(request.GET["validationToken"], content_type="text/plain")
    payload, refusal = read_json(request)
    if refusal:
        return refusal
    items = payload.get("value") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        return HttpResponse("No notifications in the body.", status=400, content_type="text/plain")
    if not notifications.graph_notifications_accept(items=items):
        return HttpResponse("Unknown subscription or wrong clientState.", status=403, content_type="text/plain")
    return HttpResponse(status=202)


@csrf_exempt
@require_POST
def raynet_webhook(request: HttpRequest, code) -> HttpResponse:
    organization = get_object_or_404(Organization.objects.select_related("raynet"), code=code)
    if not notifications.raynet_token_valid(
        organization=organization, token=request.headers.get("X-RAYNETCRM-Token", "")
    ):
        return HttpResponse("Wrong or missing X-RAYNETCRM-Token.", status=403, content_type="text/plain")
    notifications.raynet_webhook_seen(connection=organization.raynet)
    payload, refusal = read_json(request)
    if refusal:
        return refusal
    if isinstance(payload, dict):
        notifications.raynet_event_accept(organization=organization, payload=payload)
    # 200 for events we ignore too: Raynet would otherwise retry them for days (reference §7).
    return HttpResponse(status=200)


app_name = "hooks"
urlpatterns = [
    path("graph/notify/", graph_notifications, name="graph-notify"),
    path("graph/lifecycle/", graph_notifications, name="graph-lifecycle"),
    path("raynet/<uuid:code>/", raynet_webhook, name="raynet"),
]
