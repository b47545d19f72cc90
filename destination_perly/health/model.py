"""Inputs and outputs of the health engine: the one interface between the store and the pure rules.

Everything here is plain data. Money is an integer in the currency's minor unit; times are
timezone-aware UTC datetimes (Stripe's unix seconds are converted at the edge, in `mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

StripeObject = dict[str, Any]


@dataclass(frozen=True)
class TierRule:
    """One entry of the plan-tier map: a price id, plan id, product id or lookup key -> tier."""

    match: str
    tier: str
    rank: float


@dataclass(frozen=True)
class RiskPolicy:
    """Every threshold of the contract, with its defaults (PERLY_CONTRACT.md sections 3, 4, 6)."""

    delinquent_churn_days: int = 30
    failed_payments_flag_count: int = 2
    failed_payments_window_days: int = 30
    downgrade_window_days: int = 90
    invoice_aging_flag_days: int = 1
    trial_expiring_days: int = 3
    mrr_contraction_window_days: int = 30
    uncollectible_window_days: int = 90
    movement_grouping_seconds: int = 3600


@dataclass(frozen=True)
class HealthConfig:
    policy: RiskPolicy = field(default_factory=RiskPolicy)
    tier_rules: tuple[TierRule, ...] = ()


@dataclass(frozen=True)
class MrrSnapshot:
    """The customer's MRR per currency as observed by the pipeline at one moment."""

    at: datetime
    mrr_by_currency: dict[str, int]
    cause: str  # the Stripe object or event id that produced this observation


# The stored charges and events the rules read: failed charges (payment failures), and events about
# the customer, its subscriptions and discounts (invoice and charge events only repeat objects that
# have streams of their own). The store hands the engine nothing else.
BUNDLE_CHARGE_STATUSES = ("failed",)
BUNDLE_EVENT_TYPE_PREFIX = "customer."


@dataclass
class CustomerBundle:
    """What is stored about one customer that the rules read, as raw Stripe objects (latest version
    of each).

    `charges` are its failed ones and `events` those whose type starts with `customer.` (see above),
    any age: the store keeps events after Stripe's 30 days. `coupons`, `prices` and `products` are the
    whole account's, by id. `snapshots` are this customer's earlier MRR observations, oldest first.
    `history` is what the store already holds of its movements and plan changes (append-only).
    """

    customer_id: str
    customer: StripeObject | None
    subscriptions: list[StripeObject]
    invoices: list[StripeObject]
    charges: list[StripeObject]
    events: list[StripeObject]
    coupons: dict[str, StripeObject]
    prices: dict[str, StripeObject]
    products: dict[str, StripeObject]
    snapshots: list[MrrSnapshot] = field(default_factory=list)
    history: StoredHistory | None = None


@dataclass(frozen=True)
class MrrMovement:
    customer_id: str
    at: datetime
    kind: str  # new, expansion, contraction, churn, reactivation
    churn_type: str | None  # involuntary, voluntary, unknown (churn only)
    currency: str
    mrr_before: int
    mrr_after: int
    delta: int
    cause: str  # Stripe object or event id


@dataclass(frozen=True)
class PlanChange:
    customer_id: str
    subscription_id: str
    at: datetime
    kind: str  # upgrade, downgrade, cancellation, trial_conversion, reactivation
    from_plan: str | None
    to_plan: str | None
    from_tier: str | None
    to_tier: str | None
    cause: str


@dataclass(frozen=True)
class StoredHistory:
    """A customer's movements and plan changes as stored (oldest first), and `until`: the `as_of` of
    the evaluation that last stored them. They are the truth up to `until`; a later evaluation only
    appends what happened after it (PERLY_CONTRACT.md section 7)."""

    movements: tuple[MrrMovement, ...] = ()
    plan_changes: tuple[PlanChange, ...] = ()
    until: datetime | None = None


@dataclass
class CustomerHealth:
    """One row of `perly_customer_health` (PERLY_CONTRACT.md section 2)."""

    customer_id: str
    email: str | None
    name: str | None
    created_at: datetime | None
    tenure_days: int | None
    currency: str | None
    mrr: int
    mrr_by_currency: dict[str, int]
    mrr_30d_ago: int
    mrr_change_30d: int
    plan_id: str | None
    plan_tier: str | None
    subscription_health: str  # healthy, trialing, at_risk, churned, none
    payment_risk: str  # none, low, medium, high, critical
    flag_payment_failures: bool
    flag_downgrade: bool
    flag_invoice_aging: bool
    flag_trial_expiring: bool
    flag_mrr_contraction: bool
    failed_payments_30d: int
    failed_payments_90d: int
    past_due_amount: int
    max_days_past_due: int
    trial_end: datetime | None
    trial_converted_at: datetime | None
    cancel_at_period_end: bool
    active_coupon_ids: list[str]
    risk_score: int
    risk_reasons: list[str]
    as_of: datetime
    deleted: bool = False
    # Open invoices 1+ days past due, per currency (`past_due_amount` is the main currency's).
    past_due_by_currency: dict[str, int] = field(default_factory=dict)
    # Figures the key's permissions left unknown or estimated, each naming the permission that would
    # restore it (contract section 9); empty with a full key.
    limitations: list[str] = field(default_factory=list)


@dataclass
class CustomerEvaluation:
    """The engine's answer for one customer.

    `movements` and `plan_changes` are the rows to append to the customer's stored history: what
    happened after `bundle.history.until` (all of it when nothing is stored yet); re-running at the
    same `as_of` appends nothing. `snapshot` is the MRR observed at `as_of`, for the store to append
    when it differs from the last one.
    """

    health: CustomerHealth
    movements: list[MrrMovement]
    plan_changes: list[PlanChange]
    snapshot: MrrSnapshot
    # What was skipped and why (malformed or unresolvable parts of the input); for logs, never fatal.
    problems: list[str] = field(default_factory=list)
