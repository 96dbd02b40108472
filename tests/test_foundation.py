from __future__ import annotations

import logging
import sys
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.template import Context, Template
from django.views.debug import ExceptionReporter

from syncapp.models import (
    ConnectionStatus,
    DeletionMode,
    EventLink,
    MicrosoftConnection,
    PrivateEventsMode,
    RaynetConnection,
    UserMapping,
)
from syncapp.secrets import MASK, Secret, UndecryptableSecret

API_KEY = "clear-raynet-api-key-4f1c"


def make_raynet_connection(organization, api_key: str = API_KEY) -> RaynetConnection:
    return RaynetConnection.objects.create(
        organization=organization, instance_name="acme", api_user_email="api@acme.test", api_key=api_key
    )


def make_mapping(organization, number: int = 1, **extra) -> UserMapping:
    fields = {
        "raynet_user_id": number,
        "raynet_person_id": 100 + number,
        "raynet_email": f"user{number}@acme.test",
        "outlook_user_id": f"entra-object-{number}",
        "outlook_upn": f"user{number}@acme.test",
    }
    return UserMapping.objects.create(organization=organization, **(fields | extra))


def make_link(mapping, *, raynet_id=None, outlook_event_id=None, raynet_type=EventLink.RaynetType.EVENT) -> EventLink:
    return EventLink.objects.create(
        organization=mapping.organization,
        mapping=mapping,
        raynet_type=raynet_type,
        raynet_id=raynet_id,
        outlook_event_id=outlook_event_id,
        origin=EventLink.Origin.RAYNET,
    )


def raw_api_key(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM syncapp_raynetconnection WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def assert_integrity_error(create) -> None:
    # The savepoint keeps the test's transaction usable after the expected failure.
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


# The schema


@pytest.mark.django_db
def test_migrations_are_complete():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_the_database_is_postgresql():
    assert connection.vendor == "postgresql"


def test_the_system_checks_pass():
    call_command("check", fail_level="WARNING")


# Secrets at rest


def test_an_api_key_reads_back_as_a_secret_with_its_clear_value(org):
    make_raynet_connection(org)

    api_key = RaynetConnection.objects.get(organization=org).api_key

    assert isinstance(api_key, Secret)
    assert api_key.reveal() == API_KEY


def test_a_freshly_created_connection_holds_its_key_as_a_secret_too(org):
    # Code that connects right after saving (the portal's "test connection") must get a Secret, not a str.
    created = make_raynet_connection(org)

    assert isinstance(created.api_key, Secret)
    assert created.api_key.reveal() == API_KEY


def test_the_database_column_holds_no_clear_text(org):
    created = make_raynet_connection(org)

    raw = raw_api_key(created.pk)

    assert API_KEY not in raw
    assert raw.startswith("gAAAAA")  # a Fernet token


def test_an_empty_api_key_stays_empty(org):
    created = make_raynet_connection(org, api_key="")

    assert raw_api_key(created.pk) == ""
    assert not RaynetConnection.objects.get(pk=created.pk).api_key


def test_rotating_keys_reencrypts_every_secret_with_the_newest_key(org, settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SECRET_ENCRYPTION_KEYS = [old_key]
    created = make_raynet_connection(org)
    Fernet(old_key).decrypt(raw_api_key(created.pk).encode())

    settings.SECRET_ENCRYPTION_KEYS = [new_key, old_key]
    assert RaynetConnection.objects.get(pk=created.pk).api_key.reveal() == API_KEY
    call_command("rotate_secrets", stdout=StringIO())

    assert Fernet(new_key).decrypt(raw_api_key(created.pk).encode()).decode() == API_KEY
    settings.SECRET_ENCRYPTION_KEYS = [new_key]
    assert RaynetConnection.objects.get(pk=created.pk).api_key.reveal() == API_KEY


def test_a_secret_that_no_key_decrypts_still_loads_and_fails_only_when_used_saying_why(org, settings):
    created = make_raynet_connection(org)
    settings.SECRET_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    loaded = RaynetConnection.objects.get(pk=created.pk)
    with pytest.raises(UndecryptableSecret, match="rotate_secrets") as failure:
        loaded.api_key.reveal()

    assert API_KEY not in str(failure.value)
    assert loaded.api_key and not loaded.api_key.readable and str(loaded.api_key) == MASK


def test_saving_a_row_whose_secret_cannot_be_decrypted_keeps_the_stored_secret(org, settings):
    created = make_raynet_connection(org)
    stored = raw_api_key(created.pk)
    old_keys = settings.SECRET_ENCRYPTION_KEYS
    settings.SECRET_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    loaded = RaynetConnection.objects.get(pk=created.pk)
    loaded.instance_name = "acme2"
    loaded.save()
    errors = StringIO()
    call_command("rotate_secrets", stdout=StringIO(), stderr=errors)

    assert raw_api_key(created.pk) == stored
    assert "1 secret(s) cannot be decrypted" in errors.getvalue()
    settings.SECRET_ENCRYPTION_KEYS = old_keys  # the old key put back: nothing was lost
    assert RaynetConnection.objects.get(pk=created.pk).api_key.reveal() == API_KEY


# Secrets never show


def test_a_secret_prints_as_a_mask():
    secret = Secret(API_KEY)

    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", str([secret])):
        assert API_KEY not in shown
    assert MASK in str(secret)


def test_a_secret_renders_as_a_mask_in_templates():
    rendered = Template("{{ key }}").render(Context({"key": Secret(API_KEY)}))

    assert API_KEY not in rendered


def test_a_secret_logs_as_a_mask(caplog):
    with caplog.at_level(logging.INFO, logger="syncapp"):
        logging.getLogger("syncapp").info("connecting with %s / %r", Secret(API_KEY), Secret(API_KEY))

    assert API_KEY not in caplog.text


def test_a_connection_never_shows_its_key(org):
    for connection_ in (make_raynet_connection(org), RaynetConnection.objects.get(organization=org)):
        assert API_KEY not in repr(connection_)
        assert API_KEY not in str(connection_)
        assert API_KEY not in repr(vars(connection_))


def test_a_validation_error_does_not_quote_the_key(org):
    connection_ = make_raynet_connection(org)
    connection_.api_user_email = "not an e-mail"

    with pytest.raises(ValidationError) as failure:
        connection_.full_clean()

    assert API_KEY not in str(failure.value)


def test_a_debug_error_page_does_not_show_a_key_held_in_a_local_variable(org):
    make_raynet_connection(org)

    def fail_while_holding_the_key():
        api_key = RaynetConnection.objects.get(organization=org).api_key  # noqa: F841 (shown in the report)
        raise RuntimeError("Raynet answered 401")

    try:
        fail_while_holding_the_key()
    except RuntimeError:
        report = ExceptionReporter(None, *sys.exc_info())

    assert API_KEY not in report.get_traceback_text()


# Link and mapping constraints


def test_the_same_raynet_record_cannot_be_linked_twice_in_an_organization(org):
    first, second = make_mapping(org, 1), make_mapping(org, 2)
    make_link(first, raynet_id=7)

    assert_integrity_error(lambda: make_link(second, raynet_id=7))


def test_a_meeting_and_an_event_with_the_same_raynet_id_are_different_records(org):
    mapping = make_mapping(org)
    make_link(mapping, raynet_id=7, raynet_type=EventLink.RaynetType.EVENT)

    make_link(mapping, raynet_id=7, raynet_type=EventLink.RaynetType.MEETING)


def test_the_same_raynet_id_may_be_linked_in_two_organizations(org, other_org):
    make_link(make_mapping(org), raynet_id=7)

    make_link(make_mapping(other_org), raynet_id=7)


def test_the_same_outlook_event_cannot_be_linked_twice_for_a_mailbox(org):
    mapping = make_mapping(org)
    make_link(mapping, raynet_id=1, outlook_event_id="AAMk-1")

    assert_integrity_error(lambda: make_link(mapping, raynet_id=2, outlook_event_id="AAMk-1"))


def test_links_not_created_yet_on_either_side_do_not_collide(org):
    mapping = make_mapping(org)

    make_link(mapping)
    make_link(mapping)

    assert EventLink.objects.filter(mapping=mapping, raynet_id=None, outlook_event_id=None).count() == 2


def test_the_same_outlook_id_may_be_linked_in_two_mailboxes(org):
    # Invitees' copies of one meeting live in different mailboxes.
    make_link(make_mapping(org, 1), outlook_event_id="AAMk-1")

    make_link(make_mapping(org, 2), outlook_event_id="AAMk-1")


def test_a_raynet_person_is_mapped_once_per_organization(org, other_org):
    make_mapping(org, 1)
    make_mapping(other_org, 1)

    assert_integrity_error(lambda: make_mapping(org, 1, outlook_user_id="another-mailbox"))


def test_a_mailbox_is_mapped_once_per_organization(org, other_org):
    make_mapping(org, 1)
    make_mapping(other_org, 1)

    assert_integrity_error(lambda: make_mapping(org, 2, outlook_user_id="entra-object-1"))


# Policies


def test_without_overrides_a_user_gets_the_organization_policy(org):
    org.policy.private_events_mode = PrivateEventsMode.SKIP
    org.policy.sync_completed = True
    org.policy.deletion_mode = DeletionMode.DELETE

    effective = make_mapping(org).effective_policy(org.policy)

    assert effective.private_events_mode == PrivateEventsMode.SKIP
    assert effective.sync_completed is True
    assert effective.deletion_mode == DeletionMode.DELETE
    assert effective.conflict_winner == org.policy.conflict_winner
    assert (effective.window_days_back, effective.window_days_ahead) == (30, 365)


def test_a_user_override_wins_over_the_organization_policy(org):
    org.policy.sync_completed = True
    mapping = make_mapping(
        org, private_events_mode=PrivateEventsMode.TIME_BLOCKER, sync_completed=False, conflict_winner="outlook"
    )

    effective = mapping.effective_policy(org.policy)

    assert effective.private_events_mode == PrivateEventsMode.TIME_BLOCKER
    assert effective.sync_completed is False  # an explicit False is an override, not a blank
    assert effective.conflict_winner == "outlook"
    assert effective.deletion_mode == org.policy.deletion_mode


# Outcome stored on the row


def test_a_permanent_failure_disables_the_connection_with_the_reason(org):
    raynet = make_raynet_connection(org)

    raynet.record_failure("Raynet rejected the API key (401)", permanent=True)

    raynet.refresh_from_db()
    assert raynet.status == ConnectionStatus.DISABLED
    assert raynet.last_error == "Raynet rejected the API key (401)"
    assert raynet.last_error_at is not None


def test_a_temporary_failure_keeps_the_connection_retrying(org):
    microsoft = MicrosoftConnection.objects.create(organization=org, tenant_id="tenant-guid")

    microsoft.record_failure("Graph answered 503", permanent=False)

    microsoft.refresh_from_db()
    assert microsoft.status == ConnectionStatus.ERROR
    assert microsoft.last_error == "Graph answered 503"


def test_a_success_clears_the_last_error(org):
    raynet = make_raynet_connection(org)
    raynet.record_failure("Raynet answered 503", permanent=False)

    raynet.record_success()

    raynet.refresh_from_db()
    assert raynet.status == ConnectionStatus.OK
    assert raynet.last_error == ""
    assert raynet.last_success_at is not None
    assert raynet.api_key.reveal() == API_KEY


def test_repeated_successes_write_the_row_once_a_minute_at_most(org, django_assert_num_queries):
    raynet = make_raynet_connection(org)
    raynet.record_success()

    with django_assert_num_queries(0):
        raynet.record_success()


def test_a_stopped_connection_stays_stopped_whatever_a_sync_under_way_reports(org):
    raynet = make_raynet_connection(org)
    seen_by_a_running_sync = RaynetConnection.objects.get(pk=raynet.pk)
    raynet.record_failure("Raynet refused the login", permanent=True)

    seen_by_a_running_sync.record_success()
    seen_by_a_running_sync.record_failure("Raynet answered 503", permanent=False)

    raynet.refresh_from_db()
    assert raynet.status == ConnectionStatus.DISABLED
    assert raynet.last_error == "Raynet refused the login"
    assert seen_by_a_running_sync.status == ConnectionStatus.DISABLED


def test_a_mapping_records_its_health_and_the_reason(org):
    mapping = make_mapping(org)

    mapping.set_health(UserMapping.Health.FLAGGED, "12 of 20 linked events would be deleted")

    mapping.refresh_from_db()
    assert mapping.health == UserMapping.Health.FLAGGED
    assert mapping.health_reason == "12 of 20 linked events would be deleted"
