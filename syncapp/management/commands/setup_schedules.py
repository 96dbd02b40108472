"""Create or update the background schedules by name (the poll, renewals, cleanup, the daily read)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from syncapp.jobs import schedules_setup


class Command(BaseCommand):
    help = "Create or update the worker's schedules (safe to run on every deploy)."

    def handle(self, *args, **options) -> None:
        for name in schedules_setup():
            self.stdout.write(f"schedule ready: {name}")
