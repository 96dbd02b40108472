"""The portal speaks Czech and English: the Czech catalogue is complete and the pages use it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import polib
import pytest
from django.utils import translation

from tests.portal_fixtures import page_text

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = REPO / "locale" / "cs" / "LC_MESSAGES" / "django.po"
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w*\}")


def test_every_entry_of_the_czech_catalogue_is_translated_and_none_is_fuzzy():
    catalogue = polib.pofile(str(CATALOGUE))

    assert catalogue.untranslated_entries() == []
    assert [e.msgid for e in catalogue.fuzzy_entries()] == []
    assert catalogue.obsolete_entries() == []
    for entry in catalogue.translated_entries():
        assert sorted(PLACEHOLDER.findall(entry.msgid)) == sorted(PLACEHOLDER.findall(entry.msgstr)), entry.msgid


def test_the_catalogue_holds_every_string_of_the_code_and_templates(tmp_path):
    """makemessages over a copy of the sources finds no string the catalogue lacks (nor any it has in excess)."""
    for name in ("portal", "syncapp", "templates", "locale"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    shutil.copy(REPO / "manage.py", tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "cs", "--no-obsolete", "--no-location"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = {e.msgid for e in polib.pofile(str(tmp_path / "locale/cs/LC_MESSAGES/django.po"))}
    ours = {e.msgid for e in polib.pofile(str(CATALOGUE))}
    assert fresh - ours == set(), "run `make messages` and translate the new strings"
    assert ours - fresh == set(), "run `make messages` to drop strings no longer used"


def test_the_language_follows_the_browser(client, admin_user):
    client.force_login(admin_user)

    czech = page_text(client.get("/", HTTP_ACCEPT_LANGUAGE="cs-CZ,cs;q=0.9"))
    english = page_text(client.get("/", HTTP_ACCEPT_LANGUAGE="en-GB,en;q=0.9"))

    assert "Vaše organizace" in czech and '<html lang="cs">' in czech
    assert "Your organizations" in english and '<html lang="en">' in english


def test_the_switcher_overrides_the_browser(client, admin_user):
    client.force_login(admin_user)

    response = client.post("/i18n/setlang/", {"language": "cs", "next": "/"}, HTTP_ACCEPT_LANGUAGE="en")

    assert response.status_code == 302
    assert "Vaše organizace" in page_text(client.get("/", HTTP_ACCEPT_LANGUAGE="en"))


def test_sign_in_pages_are_czech_too(client, db):
    assert "Přihlásit" in page_text(client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="cs"))


@pytest.mark.parametrize("language, expected", [("cs", "1. prosince 2026"), ("en", "Dec. 1, 2026")])
def test_dates_are_written_the_readers_way(language, expected):
    from datetime import datetime

    from django.template import Context, Template

    with translation.override(language):
        text = Template('{{ when|date:"DATE_FORMAT" }}').render(Context({"when": datetime(2026, 12, 1)}))
    assert text == expected


def test_a_form_error_reads_in_czech(client, org, admin_user):
    client.force_login(admin_user)

    page = page_text(
        client.post(
            f"/org/{org.code}/setup/raynet/",
            {"instance_name": "acme", "api_base_url": "x", "api_user_email": "bad"},
            HTTP_ACCEPT_LANGUAGE="cs",
        )
    )

    assert "Zadejte API klíč." in page


@pytest.mark.parametrize("language, expected", [("cs", "5 / 24\xa0000"), ("en", "5 / 24,000")])
def test_numbers_are_written_the_readers_way(client, org, admin_user, raynet_connection, language, expected):
    raynet_connection.rate_limit_limit, raynet_connection.rate_limit_remaining = 24000, 23995
    raynet_connection.save()
    client.force_login(admin_user)

    page = page_text(client.get(f"/org/{org.code}/", HTTP_ACCEPT_LANGUAGE=language))

    assert expected in page
