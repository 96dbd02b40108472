"""Resolving the organization a request may see (see healthchecks' _get_project_for_user)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from syncapp.models import Membership, Organization


def get_organization_for_user(
    request: HttpRequest, code, *, admin_required: bool = False
) -> tuple[Organization, Membership]:
    """The organization with this code if the user is a member: 404 otherwise, 403 for a viewer changing things."""
    if not request.user.is_authenticated:
        raise Http404("Organization not found")
    membership = (
        Membership.objects.select_related("organization").filter(organization__code=code, user=request.user).first()
    )
    if membership is None:
        raise Http404("Organization not found")
    if admin_required and not membership.is_admin:
        raise PermissionDenied("Only an admin of this organization can change this.")
    return membership.organization, membership
