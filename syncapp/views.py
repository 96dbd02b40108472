from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from syncapp.models import Membership
from syncapp.tenancy import get_organization_for_user


@login_required
def index(request: HttpRequest) -> HttpResponse:
    memberships = Membership.objects.filter(user=request.user).select_related("organization")
    return render(request, "syncapp/index.html", {"memberships": memberships})


@login_required
def organization_overview(request: HttpRequest, code) -> HttpResponse:
    organization, membership = get_organization_for_user(request, code)
    mappings = organization.mappings.order_by("raynet_email")
    runs = organization.runs.order_by("-started_at")[:20]
    context = {"organization": organization, "membership": membership, "mappings": mappings, "runs": runs}
    return render(request, "syncapp/organization.html", context)
