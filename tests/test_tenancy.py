from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import RequestFactory
from django.urls import reverse

from syncapp.models import Membership
from syncapp.tenancy import get_organization_for_user


def request_by(user):
    request = RequestFactory().get("/")
    request.user = user
    return request


def overview_url(organization) -> str:
    return reverse("organization", args=[organization.code])


def test_an_admin_gets_their_organization_and_membership(org, admin_user):
    organization, membership = get_organization_for_user(request_by(admin_user), org.code, admin_required=True)

    assert organization == org
    assert membership.user == admin_user and membership.is_admin


def test_a_viewer_may_look_at_their_organization(org, viewer_user):
    organization, membership = get_organization_for_user(request_by(viewer_user), org.code)

    assert organization == org
    assert not membership.is_admin


def test_a_viewer_gets_403_when_changing_things(org, viewer_user):
    with pytest.raises(PermissionDenied):
        get_organization_for_user(request_by(viewer_user), org.code, admin_required=True)


@pytest.mark.parametrize("admin_required", [False, True])
def test_another_organizations_admin_gets_404_not_403(org, outsider, admin_required):
    with pytest.raises(Http404):
        get_organization_for_user(request_by(outsider), org.code, admin_required=admin_required)


def test_an_admin_of_two_organizations_gets_each_with_its_own_role(org, other_org, admin_user):
    Membership.objects.create(organization=other_org, user=admin_user, role=Membership.Role.VIEWER)

    with pytest.raises(PermissionDenied):
        get_organization_for_user(request_by(admin_user), other_org.code, admin_required=True)
    assert get_organization_for_user(request_by(admin_user), org.code, admin_required=True)[0] == org


def test_an_unknown_code_gets_404(db, admin_user):
    with pytest.raises(Http404):
        get_organization_for_user(request_by(admin_user), uuid.uuid4())


def test_an_anonymous_request_gets_404_from_the_helper(org):
    with pytest.raises(Http404):
        get_organization_for_user(request_by(AnonymousUser()), org.code)


# The same rules through the portal's organization page


def test_an_admin_sees_the_organization_page(client, org, admin_user):
    client.force_login(admin_user)

    response = client.get(overview_url(org))

    assert response.status_code == 200
    assert org.name in response.content.decode()


def test_a_viewer_sees_the_organization_page(client, org, viewer_user):
    client.force_login(viewer_user)

    assert client.get(overview_url(org)).status_code == 200


def test_an_outsider_gets_404_for_another_organizations_page(client, org, outsider):
    client.force_login(outsider)

    response = client.get(overview_url(org))

    assert response.status_code == 404
    assert org.name not in response.content.decode()


def test_an_anonymous_visitor_is_sent_to_the_login_page(client, org):
    response = client.get(overview_url(org))

    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_the_home_page_lists_only_the_users_own_organizations(client, org, other_org, admin_user):
    client.force_login(admin_user)

    page = client.get("/").content.decode()

    assert org.name in page
    assert other_org.name not in page
