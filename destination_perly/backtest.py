"""The backtest of the risk score (contract section 8): score every customer as of a past date using only
what was known then, and compare with the churn (MRR to 0) that followed.

    result = run_backtest(store, as_of=None, horizon_days=30)   # -> BacktestResult
    # perly-report --backtest prints it; its HTML page has a section for it (report.backtest_rows)

`as_of` defaults to the newest `as_of` in `perly_customer_health` minus the horizon, so the whole
horizon has been observed. The pure core is `backtest(bundles, churns, as_of, horizon_days, config,
events_since)`; the population is every customer paying (MRR > 0) at `as_of`.

What was known at `as_of` is rebuilt from the stored objects (`state_at`), each at its latest version:

- objects created after `as_of` are dropped: customers, subscriptions, invoices, charges, events,
  MRR snapshots;
- a subscription or customer with events after `as_of` is taken as it was then: the object of its
  latest event up to `as_of`, else the first later event's object with its `previous_attributes`
  laid over it (a `created` event: it did not exist yet);
- without such events, when every event since `as_of` is stored (the oldest stored event is not
  later), nothing changed: the stored object is the one of then;
- otherwise (`as_of` older than the stored events: Stripe keeps 30 days), a subscription is
  rebuilt from its own dates: not ended if it ended later (`active`, or `trialing` inside its
  trial, or `past_due` when one of its invoices was open and past due then); a cancellation
  requested later (`canceled_at`) is removed; `unpaid`/`past_due` that no invoice open then
  explains is `active`, and `unpaid` that one does is `past_due`;
- invoices are taken back along `status_transitions`: not finalized yet is a `draft`, paid,
  voided or marked uncollectible later is `open` with the whole amount remaining.

What cannot be rebuilt, and how it is treated:

- `next_payment_attempt` of an invoice open then: only today's is known, so a retry is taken as
  still pending (Stripe's "retries exhausted" is never seen in the past);
- a change older than the stored events and not visible in the object's dates (a plan or seat
  change, paused collection, a payment method added) is seen as it is today. Plan history before
  the events comes from past invoices, as in the live history (section 7);
- the movements (churn) that decide the outcome are the stored `perly_mrr_movements`: history as
  the pipeline recorded it, which is after `as_of` by design.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from destination_perly.health import CustomerBundle, CustomerHealth, HealthConfig, evaluate_customer
from destination_perly.health.counting import ended_at, in_trial
from destination_perly.health.history import version_before
from destination_perly.health.mrr import known_discounts, with_known_discounts
from destination_perly.health.payments import (
    days_past_due_at,
    invoice_subscription_id,
    was_open_at,
)
from destination_perly.health.values import StripeObject, as_dict, ref_id, to_time
from destination_perly.store.base import HEALTH_TABLE, MOVEMENTS_TABLE, Store, parse_iso, table_for_stream

TOP_SHARE = 0.10  # the top decile by score
PENDING_RETRY = 86_400  # a placeholder next attempt a day later: retries are taken as pending


@dataclass(frozen=True)
class Churn:
    """A stored churn movement: the customer's MRR in a currency went to 0 at `at`."""

    customer_id: str
    at: datetime


@dataclass(frozen=True)
class ScoredCustomer:
    customer_id: str
    currency: str | None
    mrr: int  # at as_of, in `currency`
    risk_score: int
    churned: bool  # MRR to 0 within the horizon


@dataclass
class BacktestResult:
    as_of: datetime
    horizon_days: int
    customers: int  # paying (MRR > 0) at as_of: the population scored
    churned: int  # of them, MRR to 0 within the horizon
    auc: float | None  # ROC AUC of the score for that churn; None when either class is empty
    top_decile: int  # customers in the top 10% by score (then MRR, then id, as the at-risk list)
    top_decile_churned: int
    precision: float | None  # churned share of the top decile
    recall: float | None  # share of the churned found in the top decile
    churned_mrr_by_currency: dict[str, int] = field(default_factory=dict)
    captured_mrr_by_currency: dict[str, int] = field(default_factory=dict)  # in the top decile
    scored: list[ScoredCustomer] = field(default_factory=list)

    def captured_share(self, currency: str) -> float | None:
        """Share of the churned MRR in `currency` that the top decile caught."""
        total = self.churned_mrr_by_currency.get(currency, 0)
        return self.captured_mrr_by_currency.get(currency, 0) / total if total else None


# ---------------------------------------------------------------------------------------------------
# Rebuilding what was known at a past moment


def _event_time(event: StripeObject) -> datetime | None:
    return to_time(event.get("created"))


def _from_events(events: list[StripeObject], at: datetime) -> tuple[bool, StripeObject | None]:
    """(decided, the object at `at`) from one object's events, oldest first; not decided when no event
    came after `at` (the stored object is then the latest word)."""
    later = [event for event in events if (_event_time(event) or at) > at]
    if not later:
        return False, None
    earlier = [event for event in events if (_event_time(event) or at) <= at]
    if earlier:
        return True, dict(as_dict(as_dict(earlier[-1].get("data")).get("object")))
    first = later[0]
    if str(first.get("type", "")).endswith(".created"):
        return True, None
    data = as_dict(first.get("data"))
    before = version_before(as_dict(data.get("object")), as_dict(data.get("previous_attributes")))
    before.pop("deleted", None)  # a `.deleted` event after `at`: the object still existed then
    return True, before


def _events_by_object(events: list[StripeObject], prefix: str) -> dict[str, list[StripeObject]]:
    found: dict[str, list[StripeObject]] = {}
    for event in events:
        kind = str(event.get("type", ""))
        if not kind.startswith(prefix) or kind.count(".") != prefix.count("."):
            continue
        object_id = ref_id(as_dict(as_dict(event.get("data")).get("object")).get("id"))
        if object_id:
            found.setdefault(object_id, []).append(event)
    for listed in found.values():
        listed.sort(key=lambda event: (event.get("created") or 0, str(event.get("id"))))
    return found


def _subscription_by_dates(
    sub: StripeObject, invoices: list[StripeObject], at: datetime, status_known: bool
) -> StripeObject:
    """What a subscription's own dates and its invoices say about `at`: not ended yet, not asked to
    cancel yet; its status too when no event told it (`status_known`)."""
    state = dict(sub)
    late = any(
        invoice_subscription_id(invoice) == sub.get("id") and (days_past_due_at(invoice, at) or 0) >= 1
        for invoice in invoices
    )
    ended = ended_at(state)
    if ended is not None and ended > at:
        state["ended_at"] = None
        state["status"] = "active"
        status_known = False
    requested = to_time(state.get("canceled_at"))
    if requested is not None and requested > at:
        state.update(canceled_at=None, cancel_at=None, cancel_at_period_end=False)
        state["cancellation_details"] = {"comment": None, "feedback": None, "reason": None}
    if status_known:
        return state
    if in_trial(state, at):
        state["status"] = "trialing"
    elif state.get("status") in ("unpaid", "past_due", "active"):
        state["status"] = "past_due" if late else "active"
    return state


def _invoice_at(invoice: StripeObject, at: datetime) -> StripeObject | None:
    created = to_time(invoice.get("created"))
    if created is None or created > at:
        return None
    transitions = dict(as_dict(invoice.get("status_transitions")))
    finalized = to_time(transitions.get("finalized_at"))
    state = dict(invoice)
    if finalized is None or finalized > at:  # a draft then (never aged)
        transitions.update(finalized_at=None, paid_at=None, voided_at=None, marked_uncollectible_at=None)
        state.update(status="draft", status_transitions=transitions)
        return state
    later = {
        key: None
        for key in ("paid_at", "voided_at", "marked_uncollectible_at")
        if (moment := to_time(transitions.get(key))) is not None and moment > at
    }
    if later or was_open_at(invoice, at):
        transitions.update(later)
        amount_due = invoice.get("amount_due")
        state.update(status="open", status_transitions=transitions)
        if invoice.get("status") != "open" and isinstance(amount_due, int):
            state.update(amount_remaining=amount_due, amount_paid=0)
        if state.get("collection_method", "charge_automatically") == "charge_automatically":
            state["next_payment_attempt"] = int(at.timestamp()) + PENDING_RETRY
    return state


def state_at(
    bundle: CustomerBundle, at: datetime, events_since: datetime | None = None
) -> CustomerBundle | None:
    """The bundle as it was known at `at` (see the module's docstring); None: no customer yet.

    `events_since`: from when on every event is stored (the oldest stored event). From then on, an
    object with no later event has not changed since `at`; before it, its dates are all we have."""
    events = [event for event in bundle.events if isinstance(event, dict)]
    customer = bundle.customer
    if isinstance(customer, dict):
        created = to_time(customer.get("created"))
        if created is not None and created > at:
            return None
        decided, earlier = _from_events(
            _events_by_object(events, "customer.").get(bundle.customer_id, []), at
        )
        customer = earlier if decided else customer
        if customer is not None and (to_time(as_dict(customer.get("discount")).get("start")) or at) > at:
            customer = {**customer, "discount": None}
    invoices = [found for invoice in bundle.invoices if (found := _invoice_at(invoice, at)) is not None]
    by_subscription = _events_by_object(events, "customer.subscription.")
    subscriptions = []
    for sub in bundle.subscriptions:
        created = to_time(sub.get("created"))
        if created is None or created > at:
            continue
        decided, earlier = _from_events(by_subscription.get(str(sub.get("id")), []), at)
        if decided and earlier is None:
            continue  # created after `at`
        # An event's object names its discounts by id; the stored object has them expanded.
        state = with_known_discounts(earlier, known_discounts(sub)) if earlier is not None else sub
        unchanged = not decided and events_since is not None and events_since <= at
        subscriptions.append(_subscription_by_dates(state, invoices, at, status_known=decided or unchanged))
    return replace(
        bundle,
        customer=customer,
        subscriptions=subscriptions,
        invoices=invoices,
        charges=[c for c in bundle.charges if (to_time(c.get("created")) or at) <= at],
        events=[e for e in events if (_event_time(e) or at) <= at],
        snapshots=[s for s in bundle.snapshots if s.at <= at],
    )


def score_at(
    bundle: CustomerBundle, config: HealthConfig, at: datetime, events_since: datetime | None = None
) -> CustomerHealth | None:
    """The health row (score, reasons, MRR) as Perly would have computed it at `at`."""
    earlier = state_at(bundle, at, events_since)
    return None if earlier is None else evaluate_customer(earlier, config, at).health


# ---------------------------------------------------------------------------------------------------
# Measuring


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """The chance that a churned customer outscores one who stayed (ties count half)."""
    ranked = sorted(zip(scores, positives, strict=True), key=lambda pair: pair[0])
    n_pos = sum(1 for positive in positives if positive)
    n_neg = len(ranked) - n_pos
    if not n_pos or not n_neg:
        return None
    rank_sum = 0.0
    start = 0
    while start < len(ranked):
        end = start
        while end < len(ranked) and ranked[end][0] == ranked[start][0]:
            end += 1
        average_rank = (start + 1 + end) / 2  # ranks start..end-1, counted from 1
        rank_sum += average_rank * sum(1 for _, positive in ranked[start:end] if positive)
        start = end
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def backtest(
    bundles: Iterable[CustomerBundle],
    churns: Iterable[Churn],
    as_of: datetime,
    horizon_days: int = 30,
    config: HealthConfig | None = None,
    events_since: datetime | None = None,
) -> BacktestResult:
    """Score every customer paying at `as_of` with what was known then; a customer churned when a churn
    movement falls in (as_of, as_of + horizon]. `events_since`: see `state_at`."""
    config = config or HealthConfig()
    end = as_of + timedelta(days=horizon_days)
    churned_ids = {churn.customer_id for churn in churns if as_of < churn.at <= end}
    scored: list[ScoredCustomer] = []
    for bundle in bundles:
        health = score_at(bundle, config, as_of, events_since)
        if health is None or health.deleted or health.mrr <= 0:
            continue
        churned = bundle.customer_id in churned_ids
        scored.append(
            ScoredCustomer(bundle.customer_id, health.currency, health.mrr, health.risk_score, churned)
        )
    scored.sort(key=lambda c: (-c.risk_score, -c.mrr, c.customer_id))
    top = scored[: math.ceil(len(scored) * TOP_SHARE)]
    churned_total = sum(1 for c in scored if c.churned)
    top_churned = sum(1 for c in top if c.churned)
    churned_mrr: dict[str, int] = {}
    captured: dict[str, int] = {}
    for rank, customer in enumerate(scored):
        if customer.churned and customer.currency:
            churned_mrr[customer.currency] = churned_mrr.get(customer.currency, 0) + customer.mrr
            if rank < len(top):
                captured[customer.currency] = captured.get(customer.currency, 0) + customer.mrr
    return BacktestResult(
        as_of=as_of,
        horizon_days=horizon_days,
        customers=len(scored),
        churned=churned_total,
        auc=roc_auc([c.risk_score for c in scored], [c.churned for c in scored]),
        top_decile=len(top),
        top_decile_churned=top_churned,
        precision=top_churned / len(top) if top else None,
        recall=top_churned / churned_total if churned_total else None,
        churned_mrr_by_currency=dict(sorted(churned_mrr.items())),
        captured_mrr_by_currency=dict(sorted(captured.items())),
        scored=scored,
    )


# ---------------------------------------------------------------------------------------------------
# Reading the store and printing


class BacktestUnavailable(Exception):
    """The store cannot support the backtest asked for (no data, or a horizon not observed yet)."""


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else parse_iso(str(value))


def run_backtest(
    store: Store, as_of: datetime | None = None, horizon_days: int = 30, config: HealthConfig | None = None
) -> BacktestResult:
    """The backtest over a Perly store: its customers' stored Stripe objects and the churn movements it
    recorded. Raises BacktestUnavailable when the store cannot answer (no data, horizon not seen yet)."""
    if horizon_days < 1:
        raise BacktestUnavailable("the horizon must be at least 1 day")
    if not store.has_table(HEALTH_TABLE) or not store.has_table(MOVEMENTS_TABLE):
        raise BacktestUnavailable("the store holds no Perly tables yet: run a sync first")
    newest = [row["newest"] for row in store.query("SELECT MAX(as_of) AS newest FROM perly_customer_health")]
    if not newest or newest[0] is None:
        raise BacktestUnavailable("the store holds no health rows yet: run a sync first")
    observed = _time(newest[0])
    as_of = as_of or observed - timedelta(days=horizon_days)
    if as_of + timedelta(days=horizon_days) > observed:
        raise BacktestUnavailable(
            f"as-of + {horizon_days} days is after the newest data ({observed.isoformat()}): "
            "the churn that followed is not known yet"
        )
    rows = store.query("SELECT customer_id, at FROM perly_mrr_movements WHERE kind = 'churn'")
    churns = [Churn(str(row["customer_id"]), _time(row["at"])) for row in rows]
    ids = sorted(
        str(row["customer_id"]) for row in store.query("SELECT customer_id FROM perly_customer_health")
    )
    lookups = store.load_lookups()
    events = table_for_stream("events")
    oldest = store.query(f"SELECT MIN(created) AS oldest FROM {events}") if store.has_table(events) else []
    events_since = to_time(oldest[0]["oldest"]) if oldest else None

    def bundles() -> Iterable[CustomerBundle]:
        for start in range(0, len(ids), 200):
            yield from store.load_bundles(ids[start : start + 200], lookups).values()

    return backtest(bundles(), churns, as_of, horizon_days, config, events_since)
