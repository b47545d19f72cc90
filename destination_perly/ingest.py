"""The one write path: Stripe records into the store, then health recomputed for whom it may change.

Used by the Airbyte writer and the webhook receiver alike. Customers touched by a write are marked
dirty in the same transaction as the records, so a crash before `refresh` loses no recomputation:
the next `refresh_pending` picks them up. `refresh` is safe with concurrent writers (a sync and the
webhook receiver, in one process or several): see its docstring.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from destination_perly import mapping
from destination_perly.health.model import CustomerBundle, CustomerEvaluation, HealthConfig, MrrSnapshot
from destination_perly.store.base import Record, Row, Store, fallback_customer_id, make_row

logger = logging.getLogger("airbyte")

Evaluate = Callable[[CustomerBundle, HealthConfig, datetime], CustomerEvaluation]
# Customers evaluated per transaction: bounds the parsed objects held at once, and how long one
# refresh holds SQLite's write lock (a webhook write waits at most about one chunk).
REFRESH_CHUNK = 200


def customer_ids_of(stream: str, record: Record) -> list[str]:
    """Every customer a record concerns: the mapping's answer, else the record's `customer`."""
    ids = sorted(c for c in mapping.customer_ids_of(stream, record) if c)
    if not ids:
        fallback = fallback_customer_id(stream, record)
        ids = [fallback] if fallback else []
    return ids


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Parsed Stripe objects are trees freed by reference counting, but creating hundreds of thousands
    of them makes the cyclic collector rescan what the chunk holds again and again (about a sixth of a
    refresh's CPU). Paused for one chunk only, so any cycles it made are still collected soon after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class RefreshResult:
    refreshed: int = 0
    failed: list[str] = field(default_factory=list)


class Ingestor:
    def __init__(
        self,
        store: Store,
        config: HealthConfig,
        evaluate: Evaluate | None = None,
        customer_ids: Callable[[str, Record], list[str]] = customer_ids_of,
        refresh_chunk: int = REFRESH_CHUNK,
    ) -> None:
        self.store = store
        self.refresh_chunk = refresh_chunk
        self.config = config
        self._evaluate = evaluate
        self._customer_ids = customer_ids

    @property
    def evaluate(self) -> Evaluate:
        if self._evaluate is None:
            from destination_perly.health import evaluate_customer

            self._evaluate = evaluate_customer
        return self._evaluate

    def prepare(self, stream: str, record: Record, generation_id: int | None = None) -> tuple[Row, list[str]]:
        """The row to store and every customer it touches (the writer buffers these)."""
        ids = self._customer_ids(stream, record)
        return make_row(stream, record, ids[0] if ids else None, generation_id), ids

    def upsert(
        self, stream: str, records: Iterable[Record], generation_id: int | None = None, stage: bool = False
    ) -> set[str]:
        """Stores records (newer `updated` wins) and returns the customers they touch."""
        rows: list[Row] = []
        touched: set[str] = set()
        for record in records:
            row, ids = self.prepare(stream, record, generation_id)
            rows.append(row)
            touched.update(ids)
        self.upsert_rows(stream, rows, touched, stage)
        return touched

    def upsert_rows(self, stream: str, rows: list[Row], touched: set[str], stage: bool = False) -> None:
        """One transaction: the rows and the dirty marks of their customers."""
        with self.store.transaction():
            self.store.upsert_rows(stream, rows, stage)
            self.store.mark_dirty(touched)

    def time_sensitive_customers(self, as_of: datetime) -> set[str]:
        return self.store.time_sensitive_customers(as_of, self.config.policy.uncollectible_window_days)

    def refresh_pending(self, as_of: datetime) -> RefreshResult:
        """Recomputes every dirty customer and every customer whose health can change with the clock."""
        return self.refresh(self.store.dirty_customers() | self.time_sensitive_customers(as_of), as_of)

    def refresh(self, customer_ids: Iterable[str], as_of: datetime) -> RefreshResult:
        """Recomputes and stores health, movements, plan changes and a snapshot when MRR changed.

        Each chunk is read, evaluated and saved in ONE transaction holding its customers (SQLite:
        the write lock; PostgreSQL: per-customer advisory locks), so a concurrent writer such as the
        webhook receiver can never have a newer evaluation overwritten by one computed from older
        data: whoever saves last read last."""
        ids = sorted(set(customer_ids))
        result = RefreshResult()
        for start in range(0, len(ids), self.refresh_chunk):
            chunk = ids[start : start + self.refresh_chunk]
            with self.store.transaction(), cyclic_gc_paused():
                self.store.lock_customers(chunk)
                self._refresh_chunk(chunk, as_of, result)
        return result

    def _refresh_chunk(self, chunk: list[str], as_of: datetime, result: RefreshResult) -> None:
        seen_marks = self.store.dirty_marks(chunk)
        bundles = self.store.load_bundles(chunk, self.store.load_lookups())
        evaluations: list[CustomerEvaluation] = []
        snapshots: list[tuple[str, MrrSnapshot]] = []
        failed: set[str] = set()
        for customer_id in chunk:
            bundle = bundles[customer_id]
            try:
                evaluation = self.evaluate(bundle, self.config, as_of)
            except Exception:  # one customer's bad data must not stop the others
                logger.exception("health evaluation failed for customer %s; it stays pending", customer_id)
                failed.add(customer_id)
                continue
            evaluations.append(evaluation)
            for problem in getattr(evaluation, "problems", ()):
                logger.warning("customer %s: %s", customer_id, problem)
            last = bundle.snapshots[-1] if bundle.snapshots else None
            if last is None or last.mrr_by_currency != evaluation.snapshot.mrr_by_currency:
                snapshots.append((customer_id, evaluation.snapshot))
        self.store.save_results(evaluations, snapshots)
        self.store.clear_dirty({c: m for c, m in seen_marks.items() if c not in failed})
        result.failed.extend(sorted(failed))
        result.refreshed += len(evaluations)
