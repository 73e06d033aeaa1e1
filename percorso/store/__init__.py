"""Stores: the only package that speaks SQL. ``open_store(settings)`` picks the engine."""

from __future__ import annotations

import logging

from percorso.config import Settings
from percorso.store.base import ApiKey, DataRejected, Store, StoreError, StoreUnavailable


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Opens the configured store (DuckDB file by default) and applies pending migrations."""
    store: Store
    if settings.engine == "postgres":
        from percorso.store.postgres import PostgresStore

        store = PostgresStore(settings.database_url, pool_size=settings.pool_size)
    else:
        from percorso.store.duckdb import DuckDBStore

        url = settings.database_url
        path = url.removeprefix("duckdb://") if url.startswith("duckdb://") else settings.duckdb_path
        store = DuckDBStore(path, memory_mb=settings.duckdb_memory_mb)
    if migrate:
        store.migrate()
        if store.erasures_pending():
            # A contact erased while the file was shared (a running server): its bytes leave now.
            try:
                store.compact()
            except Exception as exc:  # the store stays usable on the uncompacted file
                logging.getLogger("percorso.store").warning(
                    "could not compact %s after an erasure (tried again at the next start): %s",
                    store.describe(),
                    exc,
                )
    return store


__all__ = ["ApiKey", "DataRejected", "Store", "StoreError", "StoreUnavailable", "open_store"]
