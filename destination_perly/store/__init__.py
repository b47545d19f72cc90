"""The Perly store: one interface (`base.Store`), SQLite and PostgreSQL backends."""

from destination_perly.store.base import Row, Store, StoreError, table_for_stream

__all__ = ["Row", "Store", "StoreError", "table_for_stream"]
