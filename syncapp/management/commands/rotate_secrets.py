from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from syncapp.models import RaynetConnection


class Command(BaseCommand):
    help = "Re-encrypt every stored secret with the newest key of SECRET_ENCRYPTION_KEYS."

    def handle(self, *args, **options) -> None:
        # Reading decrypts with any configured key; saving encrypts with the newest.
        with transaction.atomic():
            connections = list(RaynetConnection.objects.select_for_update())
            for connection in connections:
                connection.save(update_fields=["api_key"])
        self.stdout.write(f"Re-encrypted {len(connections)} secret(s) with the newest key.")
