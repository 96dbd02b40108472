"""The sync engine: `sync_organization`, `sync_mapping` and `mapping_dry_run` are its public face."""

from syncapp.sync.service import mapping_dry_run, sync_mapping, sync_organization

__all__ = ["mapping_dry_run", "sync_mapping", "sync_organization"]
