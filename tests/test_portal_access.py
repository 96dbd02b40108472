"""Every portal URL against every kind of visitor, and the security headers and settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import URLPattern, reverse

from syncapp.models import Invitation, Membership, UserMapping
from tests.test_settings import url_of_the_test_database

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def objects(org, admin_user, viewer_user):
    """One of each object a portal URL names, in `org`."""
    mapping = UserMapping.objects.create(
        organization=org,
        raynet_user_id=7,
        raynet_person_id=8,
        raynet_email="secret-person@acme.test",
        outlook_user_id="mbx-1",
        outlook_upn="secret-person@acme.test",
        enabled=True,
    )
    invitation = Invitation.objects.create(organization=org, email="invitee-secret@acme.test", role="viewer")
    member = Membership.objects.get(user=viewer_user)
    return {
        "mapping": mapping.code,
        "member": member.code,
        "invitation": invitation.code,
        "code": org.code,
        "side": "raynet",
    }


def portal_urls(objects) -> list[tuple[str, str]]:
    """(name, path) of every route of syncapp/urls.py that names an organization, filled in with `objects`."""
    from syncapp import urls

    found = []
    for pattern in urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if "code" not in pattern.pattern.converters:
            continue
        kwargs = {name: objects[name] for name in pattern.pattern.converters}
        found.append((pattern.name, reverse(pattern.name, kwargs=kwargs)))
    return found


# Routes that change things on POST only; the others change things on POST and show on GET.
POST_ONLY = {"member_change", "invitation_cancel", "mapping_action"}
# Pages that only show (a POST is 405); the wizard's connection steps are for admins only.
READ_ONLY = {"organization", "log"}
ADMIN_ONLY_GET = {"setup", "setup_raynet", "setup_microsoft", "disconnect"}


def test_the_matrix_covers_every_organization_route(objects):
    names = {name for name, _path in portal_urls(objects)}
    assert len(names) == 13 and {"organization", "log", "members", "setup_preview"} <= names


def test_another_organizations_admin_gets_404_everywhere_and_sees_nothing(client, objects, outsider, org):
    client.force_login(outsider)
    for name, path in portal_urls(objects):
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            assert response.status_code in (404, 405), (name, method, response.status_code)
            body = response.content.decode()
            assert org.name not in body and "secret-person" not in body and "invitee-secret" not in body


def test_a_viewer_changing_anything_gets_403(client, objects, viewer_user):
    client.force_login(viewer_user)
    for name, path in portal_urls(objects):
        expected = 405 if name in READ_ONLY else 403
        assert client.post(path, {"role": "admin", "remove": "1"}).status_code == expected, name
    assert Membership.objects.get(user=viewer_user).role == "viewer"


def test_a_viewer_reads_the_pages_but_not_the_admin_only_ones(client, objects, viewer_user, monkeypatch):
    from syncapp import onboarding

    monkeypatch.setattr(onboarding, "mapping_rows", lambda *, organization: ([], []))
    monkeypatch.setattr(onboarding, "onboarding_step", lambda organization: "mapping")  # as if both connected
    client.force_login(viewer_user)
    for name, path in portal_urls(objects):
        if name in POST_ONLY:
            assert client.get(path).status_code == 405, name
        elif name in ADMIN_ONLY_GET:
            assert client.get(path).status_code == 403, name
        else:
            assert client.get(path).status_code == 200, name


def test_an_anonymous_visitor_is_sent_to_the_login_page_everywhere(client, objects):
    for name, path in [*portal_urls(objects), ("index", "/"), ("new", "/new/")]:
        response = client.get(path)
        assert response.status_code in (302, 405), name
        if response.status_code == 302:
            assert response.url.startswith("/accounts/login/"), name


def test_pages_carry_a_content_security_policy_without_inline_script(client, org, admin_user):
    client.force_login(admin_user)

    response = client.get(f"/org/{org.code}/")

    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "form-action 'self' https://login.chinacloudapi.cn https://login.microsoftonline.com" in policy
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    body = response.content.decode()
    assert "<script" not in body and "<style" not in body and " style=" not in body


def test_the_sign_in_page_uses_the_portals_layout_and_posts_with_csrf(client, db):
    page = client.get("/accounts/login/").content.decode()

    assert "/static/portal.css" in page and 'method="post"' in page and "csrfmiddlewaretoken" in page
    assert "Sign in with Microsoft" not in page and "/accounts/microsoft/" not in page


def test_the_microsoft_button_appears_once_the_app_is_configured(client, db, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {
        "microsoft": {"APPS": [{"client_id": "abc", "secret": "def", "settings": {"tenant": "organizations"}}]}
    }

    page = client.get("/accounts/login/").content.decode()

    assert "/accounts/microsoft/login/" in page


def test_a_get_to_the_microsoft_login_does_not_leave_the_portal(client, db, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {
        "microsoft": {"APPS": [{"client_id": "abc", "secret": "def", "settings": {"tenant": "organizations"}}]}
    }

    response = client.get("/accounts/microsoft/login/")

    assert response.status_code == 200  # a confirmation page with a POST form, not a redirect to Microsoft


def test_sign_up_is_rate_limited(client, db, settings):
    settings.ACCOUNT_RATE_LIMITS = {"signup": "2/m/ip"}
    statuses = [
        client.post("/accounts/signup/", {"email": f"u{i}@x.test", "password1": "x", "password2": "y"}).status_code
        for i in range(4)
    ]
    assert statuses[-1] == 429


def test_production_settings_pass_the_deploy_check(transactional_db):
    from cryptography.fernet import Fernet

    env = {
        "DEBUG": "0",
        "SECRET_KEY": "a-long-production-secret-key-" + "x" * 40,
        "SECRET_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "sync.example.com",
    }
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "SECRET_ENCRYPTION_KEYS")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=clean | env | {"DATABASE_URL": url_of_the_test_database()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
