"""The sync engine: `sync_organization` and `sync_mapping` are its public face."""

from syncapp.sync.service import sync_mapping, sync_organization

__all__ = ["sync_mapping", "sync_organization"]
