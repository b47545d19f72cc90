"""A writer process for the SQLite concurrency test (spawned: imports nothing heavy)."""

from __future__ import annotations

from destination_perly.store.sqlite import SqliteStore


def write_batches(path: str, prefix: str, batches: int) -> None:
    store = SqliteStore(path)
    try:
        for batch in range(batches):
            with store.transaction():
                rows = [
                    {"id": f"{prefix}_{batch}_{n}", "updated": batch, "customer": prefix} for n in range(50)
                ]
                store.upsert_records("charges", rows)
                store.mark_dirty([prefix])
    finally:
        store.close()
