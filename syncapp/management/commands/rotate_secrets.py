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
            unreadable = [c for c in connections if c.api_key and not c.api_key.readable]
            for connection in connections:
                connection.save(update_fields=["api_key"])  # an unreadable one is kept as it was
        self.stdout.write(f"Re-encrypted {len(connections) - len(unreadable)} secret(s) with the newest key.")
        if unreadable:
            names = ", ".join(str(c.organization) for c in unreadable)
            self.stderr.write(
                f"{len(unreadable)} secret(s) cannot be decrypted with any configured key (kept as they were; "
                f"put the old key back in SECRET_ENCRYPTION_KEYS or enter the key again): {names}"
            )
