"""Compile locale/*/LC_MESSAGES/*.po to .mo with polib, so the build needs no GNU gettext (msgfmt)."""

from __future__ import annotations

from pathlib import Path

import polib
from django.conf import settings
from django.core.management.base import BaseCommand


def compile_catalogues() -> list[Path]:
    """Every catalogue whose .mo is missing or older than its .po, compiled; returns the .mo files written."""
    written = []
    for locale_dir in settings.LOCALE_PATHS:
        for po_path in Path(locale_dir).glob("*/LC_MESSAGES/*.po"):
            mo_path = po_path.with_suffix(".mo")
            if not mo_path.exists() or mo_path.stat().st_mtime < po_path.stat().st_mtime:
                polib.pofile(str(po_path)).save_as_mofile(str(mo_path))
                written.append(mo_path)
    return written


class Command(BaseCommand):
    help = "Compiles the portal's translation catalogues (.po → .mo) that changed."

    def handle(self, *args, **options) -> None:
        for path in compile_catalogues():
            self.stdout.write(f"Compiled {path}")
