"""The set-up wizard as an organization's admin goes through it, against both sandboxes."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail

from syncapp.models import Membership, MicrosoftConnection, Organization, RaynetConnection, UserMapping
from tests.outlook_fixtures import OUTLOOK_CLIENT_ID, OUTLOOK_TENANT_ID
from tests.portal_fixtures import PORTAL_RAYNET_URL, consent_through_sandbox, page_text, raynet_form
from tests.raynet_fixtures import RAYNET_API_KEY


def enabled_mapping(organization: Organization, email: str) -> UserMapping:
    """One Raynet user mapped to the mailbox of the same address, sync on."""
    return UserMapping.objects.create(
        organization=organization,
        raynet_user_id=1,
        raynet_person_id=1,
        raynet_email=email,
        outlook_user_id="x",
        outlook_upn=email,
        enabled=True,
    )


@pytest.fixture
def new_org(client, admin_user):
    """An organization created through the portal by alice@acme.test."""
    client.force_login(admin_user)
    response = client.post("/new/", {"name": "Nova s.r.o."})
    organization = Organization.objects.get(name="Nova s.r.o.")
    assert response.url == f"/org/{organization.code}/setup/"
    return organization


def test_a_user_without_an_organization_is_offered_to_create_one(client, db):
    from tests.conftest import make_user

    client.force_login(make_user("new@nova.test"))

    page = page_text(client.get("/"))

    assert "Create an organization" in page and 'href="/new/"' in page


def test_creating_an_organization_makes_the_creator_its_admin_with_sync_off(new_org, admin_user, client):
    membership = Membership.objects.get(organization=new_org, user=admin_user)
    assert membership.is_admin
    assert new_org.policy.sync_enabled is False
    assert client.get(f"/org/{new_org.code}/setup/").url == f"/org/{new_org.code}/setup/raynet/"


def test_a_wrong_raynet_key_is_explained_and_nothing_is_saved(new_org, client, portal_raynet):
    response = client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form(api_key="wrong-key"))

    page = page_text(response)
    assert response.status_code == 200
    assert "the API key is wrong or the instance name is unknown" in page
    assert 'value="acme"' in page  # what the admin typed is kept, except the key
    assert "wrong-key" not in page
    assert not RaynetConnection.objects.filter(organization=new_org).exists()


def test_an_unknown_raynet_instance_is_explained(new_org, client, portal_raynet):
    page = page_text(client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form(instance_name="acme-typo")))

    assert "instance name is unknown" in page


def test_a_blocked_address_is_explained(new_org, client, portal_raynet):
    portal_raynet.inject_fault(403, body={"message": "Too many failed login attempts: this IP address is blocked."})

    page = page_text(client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form()))

    assert "blocked logins from this server's address for 60 minutes" in page


def test_a_missing_permission_is_explained(new_org, client, portal_raynet):
    portal_raynet.inject_fault(
        500, body={"message": "cz.ray.AttributeAccessDeniedException: access denied"}, path="meeting"
    )

    page = page_text(client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form()))

    assert "no permission to read users or calendar activities" in page


def test_a_working_raynet_login_is_saved_encrypted_and_the_key_is_never_shown_again(new_org, client, portal_raynet):
    response = client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form())

    assert response.url == f"/org/{new_org.code}/setup/"
    connection = RaynetConnection.objects.get(organization=new_org)
    assert connection.api_key.reveal() == RAYNET_API_KEY and connection.last_success_at is not None
    assert portal_raynet.count("GET", "userAccount") >= 1
    page = page_text(client.get(f"/org/{new_org.code}/setup/raynet/"))
    assert RAYNET_API_KEY not in page and "A key is stored" in page
    # Saving again with the key left empty keeps it.
    assert client.post(f"/org/{new_org.code}/setup/raynet/", raynet_form(api_key="")).status_code == 302
    connection.refresh_from_db()
    assert connection.api_key.reveal() == RAYNET_API_KEY


def test_the_consent_link_goes_to_microsofts_admin_consent_page_with_a_signed_state(new_org, client, portal_tenant):
    response = client.post(f"/org/{new_org.code}/setup/microsoft/", {"cloud": "global"})

    url = urlsplit(response["Location"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.path == "/organizations/v2.0/adminconsent"
    assert query["client_id"] == OUTLOOK_CLIENT_ID
    assert query["redirect_uri"] == "http://testserver/microsoft/consent/"
    assert query["scope"] == "https://graph.sandbox.test/.default"
    assert str(new_org.code) in __import__("base64").urlsafe_b64decode(query["state"].split(":")[0] + "==").decode()


def test_accepting_consent_records_the_tenant_and_validates_users_and_a_calendar(new_org, client, portal_tenant):
    start = client.post(f"/org/{new_org.code}/setup/microsoft/", {"cloud": "global"})

    response = consent_through_sandbox(client, start)

    connection = MicrosoftConnection.objects.get(organization=new_org)
    assert connection.tenant_id == OUTLOOK_TENANT_ID
    assert connection.consent == MicrosoftConnection.Consent.GRANTED and connection.last_success_at
    assert portal_tenant.count("GET", r"v1\.0/users/[^/]+/calendar$") == 1
    assert response.status_code == 302


def test_declined_consent_is_reported_and_records_nothing(new_org, client, portal_tenant):
    start = client.post(f"/org/{new_org.code}/setup/microsoft/", {"cloud": "global"})

    response = consent_through_sandbox(client, start, decision="cancel")

    assert response.url == f"/org/{new_org.code}/setup/microsoft/"
    assert not MicrosoftConnection.objects.filter(organization=new_org).exists()
    page = page_text(client.get(response.url))
    assert "consent was not granted" in page and "declined" in page


def test_a_forged_or_foreign_consent_state_is_refused(new_org, client, portal_tenant, outsider):
    start = client.post(f"/org/{new_org.code}/setup/microsoft/", {"cloud": "global"})
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    callback = {"tenant": OUTLOOK_TENANT_ID, "admin_consent": "True"}

    assert client.get("/microsoft/consent/", callback | {"state": state[:-2] + "xx"}).status_code == 404
    client.force_login(outsider)
    assert client.get("/microsoft/consent/", callback | {"state": state}).status_code == 404
    assert not MicrosoftConnection.objects.filter(organization=new_org).exists()


def test_users_are_matched_by_email_case_insensitively_and_unmatched_rows_are_highlighted(connected_org, client):
    page = page_text(client.get(f"/org/{connected_org.code}/setup/users/"))

    assert 'value="alice@acme.test"' in page
    assert 'value="bob@acme.test"' in page  # Raynet has BOB@acme.test
    assert page.count('class="unmatched"') == 2  # the API user and carol@elsewhere.test have no mailbox


def row_data(page_forms: dict) -> dict:
    return {f"p{pid}-{k}": v for pid, fields in page_forms.items() for k, v in fields.items()}


def raynet_person(portal_raynet, email: str) -> int:
    return next(
        int(pid) for pid, p in portal_raynet.state["persons"].items() if p["email"].casefold() == email.casefold()
    )


def test_saving_the_mapping_stores_mailboxes_overrides_and_switches_sync_on(connected_org, client, portal_raynet):
    alice, bob = raynet_person(portal_raynet, "alice@acme.test"), raynet_person(portal_raynet, "bob@acme.test")
    data = row_data(
        {
            alice: {"mailbox": "alice@acme.test", "enabled": "on", "private_events_mode": "skip"},
            bob: {"mailbox": "DANA@acme.test", "sync_completed": "yes"},
        }
    )

    response = client.post(f"/org/{connected_org.code}/setup/users/", data)

    assert response.status_code == 302
    alice_mapping = UserMapping.objects.get(organization=connected_org, raynet_person_id=alice)
    assert alice_mapping.enabled and alice_mapping.outlook_upn == "alice@acme.test"
    assert alice_mapping.private_events_mode == "skip"
    bob_mapping = UserMapping.objects.get(organization=connected_org, raynet_person_id=bob)
    assert not bob_mapping.enabled and bob_mapping.outlook_upn == "dana@acme.test"
    assert bob_mapping.sync_completed is True


def test_an_unknown_mailbox_is_an_error_beside_the_row_and_nothing_is_saved(connected_org, client, portal_raynet):
    alice = raynet_person(portal_raynet, "alice@acme.test")

    response = client.post(
        f"/org/{connected_org.code}/setup/users/", row_data({alice: {"mailbox": "nobody@acme.test", "enabled": "on"}})
    )

    assert response.status_code == 200
    assert "No mailbox “nobody@acme.test”" in page_text(response)
    assert not UserMapping.objects.filter(organization=connected_org).exists()


def test_switching_on_every_matched_user_at_once(connected_org, client):
    page = client.get(f"/org/{connected_org.code}/setup/users/")
    data = {
        f"{form.prefix}-mailbox": form.initial["mailbox"]
        for _row, form in page.context["forms"]
        if form.initial["mailbox"]
    }

    client.post(f"/org/{connected_org.code}/setup/users/", data | {"enable_all": "1"})

    enabled = set(
        UserMapping.objects.filter(organization=connected_org, enabled=True).values_list("outlook_upn", flat=True)
    )
    assert enabled == {"alice@acme.test", "bob@acme.test"}


def test_policies_show_the_defaults_and_saving_them_moves_on_to_the_preview(connected_org, client):
    enabled_mapping(connected_org, "a@acme.test")
    page = page_text(client.get(f"/org/{connected_org.code}/setup/policies/"))
    assert re.search(r'value="cancel"[^>]*checked', page) and re.search(r'value="latest"[^>]*checked', page)

    data = {
        "private_events_mode": "time_blocker",
        "deletion_mode": "delete",
        "conflict_winner": "raynet",
        "window_days_back": "14",
        "window_days_ahead": "200",
    }
    response = client.post(f"/org/{connected_org.code}/setup/policies/", data)

    assert response.url == f"/org/{connected_org.code}/setup/"
    connected_org.policy.refresh_from_db()
    assert connected_org.policy.private_events_mode == "time_blocker" and connected_org.policy.reviewed_at
    assert client.get(response.url).url == f"/org/{connected_org.code}/setup/preview/"


def test_an_invitation_mail_links_to_a_page_only_the_invited_address_can_accept(client, org, admin_user, outsider):
    from tests.conftest import make_user

    client.force_login(admin_user)
    client.post(f"/org/{org.code}/members/", {"email": "Zoe@acme.test", "role": "admin"})

    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["Zoe@acme.test"]
    link = next(line for line in mail.outbox[0].body.splitlines() if "/invitations/" in line)
    path = urlsplit(link).path
    client.force_login(outsider)
    assert client.get(path).status_code == 404
    client.force_login(make_user("zoe@acme.test"))
    assert client.post(path).status_code == 302
    assert Membership.objects.get(organization=org, user__email="zoe@acme.test").role == "admin"


def test_the_last_admin_can_neither_be_demoted_nor_removed(client, org, admin_user, viewer_user):
    client.force_login(admin_user)
    me = Membership.objects.get(organization=org, user=admin_user)

    client.post(f"/org/{org.code}/members/{me.code}/", {"role": "viewer"})
    client.post(f"/org/{org.code}/members/{me.code}/", {"remove": "1", "role": "admin"})

    me.refresh_from_db()
    assert me.is_admin
    page = page_text(client.get(f"/org/{org.code}/members/"))
    assert "must keep at least one admin" in page


def test_an_admin_promotes_a_viewer_and_may_then_step_down(client, org, admin_user, viewer_user):
    client.force_login(admin_user)
    viewer = Membership.objects.get(organization=org, user=viewer_user)
    me = Membership.objects.get(organization=org, user=admin_user)

    client.post(f"/org/{org.code}/members/{viewer.code}/", {"role": "admin"})
    client.post(f"/org/{org.code}/members/{me.code}/", {"remove": "1"})

    viewer.refresh_from_db()
    assert viewer.is_admin and not Membership.objects.filter(pk=me.pk).exists()


def test_the_preview_step_confirms_switches_sync_on_and_queues_the_first_run(connected_org, client):
    mapping = enabled_mapping(connected_org, "a@acme.test")

    response = client.post(f"/org/{connected_org.code}/setup/preview/")

    assert response.url == f"/org/{connected_org.code}/"
    connected_org.policy.refresh_from_db()
    # Tasks run at once in tests (conftest): the worker's first run of that mailbox has happened.
    assert connected_org.policy.sync_enabled
    assert list(mapping.runs.values_list("trigger", flat=True)) == ["manual"]


def test_the_raynet_region_list_offers_the_sandbox_only_when_it_is_enabled(client, org, admin_user, settings):
    client.force_login(admin_user)
    assert PORTAL_RAYNET_URL in page_text(client.get(f"/org/{org.code}/setup/raynet/"))
    settings.SANDBOX_ENABLED = False
    assert "/sandbox/" not in page_text(client.get(f"/org/{org.code}/setup/raynet/"))


def test_one_mailbox_cannot_be_chosen_for_two_raynet_users(connected_org, client, portal_raynet):
    alice, bob = raynet_person(portal_raynet, "alice@acme.test"), raynet_person(portal_raynet, "bob@acme.test")

    response = client.post(
        f"/org/{connected_org.code}/setup/users/",
        row_data({alice: {"mailbox": "alice@acme.test"}, bob: {"mailbox": "ALICE@acme.test"}}),
    )

    assert "already chosen for another Raynet user" in page_text(response)
    assert not UserMapping.objects.filter(organization=connected_org).exists()


def test_two_users_can_swap_mailboxes_in_one_save(connected_org, client, portal_raynet):
    alice, bob = raynet_person(portal_raynet, "alice@acme.test"), raynet_person(portal_raynet, "bob@acme.test")
    url = f"/org/{connected_org.code}/setup/users/"
    client.post(url, row_data({alice: {"mailbox": "alice@acme.test"}, bob: {"mailbox": "bob@acme.test"}}))

    client.post(url, row_data({alice: {"mailbox": "bob@acme.test"}, bob: {"mailbox": "alice@acme.test"}}))

    upn = dict(UserMapping.objects.filter(organization=connected_org).values_list("raynet_person_id", "outlook_upn"))
    assert upn == {alice: "bob@acme.test", bob: "alice@acme.test"}


class FakePlan:
    """The engine's MappingPlan as the team contract describes it (counts() and invitations)."""

    def __init__(self, invitations):
        self.invitations = invitations

    def counts(self) -> dict:
        return {"to_outlook": {"create": 3}, "to_raynet": {"create": 2, "update": 1, "later": 275}}


def test_the_preview_shows_counts_and_invitations_with_external_addresses_highlighted(
    connected_org, client, monkeypatch
):
    from datetime import UTC, datetime

    from syncapp import onboarding

    mapping = enabled_mapping(connected_org, "alice@acme.test")
    seen = []
    invitations = [("Kick-off <b>", datetime(2026, 12, 3, 9, tzinfo=UTC), ["bob@acme.test", "jan@customer.test"])]
    monkeypatch.setattr(onboarding, "mapping_dry_run", lambda *, mapping: seen.append(mapping) or FakePlan(invitations))

    page = page_text(client.get(f"/org/{connected_org.code}/setup/preview/"))

    assert seen == [mapping]
    assert "<td>3</td>" in page and "<td>2</td>" in page
    assert "Kick-off &lt;b&gt;" in client.get(f"/org/{connected_org.code}/setup/preview/").content.decode()
    assert '<span class="">bob@acme.test</span>' in page
    assert '<span class="external">jan@customer.test (external)</span>' in page
    assert "Later: 275 occurrences of recurring series more than 90 days ahead." in page
    # 2 events at 2 requests each, 12,000 requests a day (no budget known yet: Raynet's default 24,000).
    assert (
        "The first sync makes 2 events in Raynet. It may use 12,000 Raynet requests a day (50 % of the budget)" in page
    )
    assert "so it takes about 1 day(s)." in page


def test_sync_now_asks_the_background_worker_for_that_mailbox(client, org, admin_user):
    mapping = enabled_mapping(org, "a@acme.test")
    client.force_login(admin_user)

    client.post(f"/org/{org.code}/users/{mapping.code}/")

    # Tasks run at once in tests (conftest): the run the worker made for that mailbox is there.
    assert list(mapping.runs.values_list("trigger", flat=True)) == ["manual"]
    assert "Sync of a@acme.test requested." in page_text(client.get(f"/org/{org.code}/"))


def test_the_users_page_before_both_connections_says_what_is_missing(client, org, admin_user):
    client.force_login(admin_user)

    response = client.get(f"/org/{org.code}/setup/users/")

    assert response.url == f"/org/{org.code}/"
    assert "Connect Raynet and Microsoft 365 first." in page_text(client.get(response.url))


def test_a_failing_api_on_the_users_page_is_reported_in_plain_words(connected_org, client, portal_raynet):
    portal_raynet.inject_fault(500, times=10, path="userAccount")

    response = client.get(f"/org/{connected_org.code}/setup/users/")

    assert response.status_code == 302
    assert "Raynet" in page_text(client.get(response.url))
