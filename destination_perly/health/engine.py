"""`evaluate_customer`: one customer's bundle -> health row, movements, plan changes, snapshot."""

from __future__ import annotations

from datetime import datetime, timedelta

from destination_perly.health import history as history_rules
from destination_perly.health.counting import (
    counts_now,
    has_payment_method,
    is_ended,
    set_to_cancel,
    subscription_health,
)
from destination_perly.health.derived import billed_amounts, coupons_seen, prices_seen
from destination_perly.health.model import (
    CustomerBundle,
    CustomerEvaluation,
    CustomerHealth,
    HealthConfig,
    MrrSnapshot,
)
from destination_perly.health.mrr import (
    Catalog,
    ItemAmount,
    SubscriptionAmounts,
    active_discounts,
    coupon_ids,
    known_discounts,
    subscription_discounts,
)
from destination_perly.health.payments import payment_facts, payment_risk
from destination_perly.health.score import LONG_WINDOW_DAYS, RiskEvidence, assess
from destination_perly.health.tiers import tier_of
from destination_perly.health.values import (
    StripeObject,
    as_dict,
    as_list,
    currency_of,
    to_time,
    whole_days,
)


def _unpriced_plan_id(live_subs: list[StripeObject]) -> str | None:
    """The price of a live or trialing subscription whose amount cannot be told (a tiered price whose
    tiers the key cannot read, never billed yet): its plan is known all the same."""
    for sub in live_subs:
        if sub.get("status") in ("active", "past_due", "trialing"):
            for raw in as_list(sub.get("items")):
                price = as_dict(as_dict(raw).get("price"))
                if isinstance(price.get("id"), str):
                    return str(price["id"])
    return None


def _live(objects: list[StripeObject], name: str, problems: list[str]) -> list[StripeObject]:
    """Well-formed, not deleted objects, in a stable order (by id) so output never depends on input order."""
    listed = objects if isinstance(objects, list) else []
    kept = [obj for obj in listed if isinstance(obj, dict) and obj.get("deleted") is not True]
    malformed = sum(1 for obj in listed if not isinstance(obj, dict))
    if malformed:
        problems.append(f"{name}: {malformed} malformed entries skipped")
    return sorted(kept, key=lambda obj: str(obj.get("id")))


def _main_currency(*candidates: dict[str, int]) -> str | None:
    for mrr in candidates:
        positive = {currency: amount for currency, amount in mrr.items() if amount > 0}
        if positive:
            return sorted(positive, key=lambda currency: (-positive[currency], currency))[0]
    return None


def _deleted_by_event(bundle: CustomerBundle, raw_customer: StripeObject | None) -> bool:
    """A `customer.deleted` event newer than the stored customer: a customer deleted before the first
    sync is never listed again, yet its canceled subscriptions and invoices still name it."""
    seen = raw_customer.get("updated") if raw_customer is not None else None
    for event in bundle.events:
        if as_dict(event).get("type") != "customer.deleted":
            continue
        created = as_dict(event).get("created")
        if not isinstance(seen, int) or (isinstance(created, int) and created >= seen):
            return True
    return False


def evaluate_customer(bundle: CustomerBundle, config: HealthConfig, as_of: datetime) -> CustomerEvaluation:
    policy = config.policy
    raw_customer = bundle.customer if isinstance(bundle.customer, dict) else None
    deleted = (raw_customer is not None and raw_customer.get("deleted") is True) or _deleted_by_event(
        bundle, raw_customer
    )
    customer = None if deleted else raw_customer
    problems: list[str] = []
    subscriptions = _live(bundle.subscriptions, "subscriptions", problems)
    event_objects = [as_dict(as_dict(event).get("data")).get("object") for event in bundle.events]
    invoices = _live(bundle.invoices, "invoices", problems)
    # What the core resources show of prices and coupons, under what a fuller key stored (section 9).
    discounts_seen = known_discounts(*event_objects, customer, *subscriptions)
    attached = known_discounts(customer, *subscriptions)
    coupons_rebuilt, coupon_limitations = coupons_seen(attached.values(), invoices)
    catalog = Catalog(
        prices={**prices_seen([*event_objects, *subscriptions], invoices, bundle.prices), **bundle.prices},
        coupons={**coupons_rebuilt, **bundle.coupons},
        products=bundle.products,
        discounts=discounts_seen,
        billed=billed_amounts(invoices),
    )
    limitations: list[str] = []
    charges = _live(bundle.charges, "charges", problems)
    amount_of = SubscriptionAmounts(customer, catalog)

    # MRR now.
    mrr_by_currency: dict[str, int] = {}
    counting_items: list[tuple[ItemAmount, str]] = []
    for sub in subscriptions:
        if not counts_now(sub, invoices, policy, as_of):
            continue
        amount = amount_of(sub, as_of)
        problems.extend(amount.problems)  # each names the item or discount it is about
        limitations.extend(amount.limitations)
        if amount.currency is None:
            problems.append(f"{sub.get('id')}: no currency, left out of MRR")
            continue
        mrr_by_currency[amount.currency] = mrr_by_currency.get(amount.currency, 0) + amount.mrr
        counting_items.extend((item, amount.currency) for item in amount.items)
    mrr_by_currency = {currency: amount for currency, amount in sorted(mrr_by_currency.items()) if amount > 0}

    history = history_rules.build_history(
        bundle.customer_id,
        customer,
        subscriptions,
        invoices,
        bundle.events,
        bundle.snapshots,
        catalog,
        config,
        as_of,
        mrr_by_currency,
        charges,
        amount_of,
        bundle.history,
    )
    window_start = as_of - timedelta(days=policy.mrr_contraction_window_days)
    mrr_at_window_start = history.mrr_by_currency_at(window_start)
    facts = payment_facts(invoices, charges, policy, as_of)
    past_due_by_currency = {c: a for c, a in sorted(facts.past_due_amount_by_currency.items()) if c and a > 0}
    currency = (
        _main_currency(mrr_by_currency, mrr_at_window_start, past_due_by_currency)
        or currency_of(as_dict(customer).get("currency"))
        or next((c for sub in subscriptions if (c := currency_of(sub.get("currency")))), None)
    )
    mrr = mrr_by_currency.get(currency or "", 0)
    mrr_30d_ago = mrr_at_window_start.get(currency or "", 0)

    # Plan: the largest counting item (ties broken by price id); a trialing item when nothing counts.
    plan_item: ItemAmount | None = None
    candidates = [item for item, item_currency in counting_items if item_currency == currency]
    if not candidates:
        for sub in subscriptions:
            if sub.get("status") == "trialing" and not is_ended(sub, as_of):
                candidates.extend(amount_of(sub, as_of).items)
    if candidates:
        plan_item = sorted(candidates, key=lambda item: (-item.gross, item.price_id or ""))[0]
    plan_tier = tier_of(plan_item, config.tier_rules, catalog) if plan_item else None

    live_subs = [sub for sub in subscriptions if not is_ended(sub, as_of)]
    trials = sorted(
        (
            (end, sub)
            for sub in live_subs
            if sub.get("status") == "trialing" and (end := to_time(sub.get("trial_end"))) is not None
        ),
        key=lambda trial: (trial[0], str(trial[1].get("id"))),
    )
    expiring = [
        (end, sub)
        for end, sub in trials
        if as_of <= end <= as_of + timedelta(days=policy.trial_expiring_days)
        and not has_payment_method(sub, customer)
    ]
    downgrades = [
        change
        for change in history.plan_changes
        if change.kind == "downgrade"
        and as_of - timedelta(days=policy.downgrade_window_days) <= change.at <= as_of
    ]
    aged_late = [
        (invoice_id, days) for invoice_id, days in facts.aged_days if days >= policy.invoice_aging_flag_days
    ]
    flags = {
        "flag_payment_failures": facts.failed_30d >= policy.failed_payments_flag_count,
        "flag_downgrade": bool(downgrades),
        "flag_invoice_aging": bool(aged_late),
        "flag_trial_expiring": bool(expiring),
        "flag_mrr_contraction": mrr < mrr_30d_ago,
    }
    past_due_amount = past_due_by_currency.get(currency or "", 0)

    discounts: list[StripeObject] = []
    ignored: list[str] = []
    for sub in live_subs:
        discounts.extend(subscription_discounts(sub, customer, as_of, ignored, catalog))
        for raw in as_list(sub.get("items")):
            discounts.extend(active_discounts(as_dict(raw).get("discounts"), as_of, ignored, catalog))
    if customer is not None:
        discounts.extend(active_discounts(customer.get("discount"), as_of, ignored, catalog))

    active_coupons = sorted(set(coupon_ids(discounts, catalog)))
    limitations.extend(
        coupon_limitations[coupon]
        for coupon in active_coupons
        if coupon in coupon_limitations and coupon not in bundle.coupons  # read with a fuller key
    )
    plan_price = as_dict(catalog.prices.get(plan_item.price_id or "")) if plan_item else {}
    if plan_tier and not plan_tier.from_map and plan_price.get("billing_scheme") == "tiered":
        if plan_price.get("tiers") is None:
            limitations.append(
                f"plan rank: tiered price {plan_price.get('id')} is ranked by its average unit price, as"
                " its tiers are unreadable (rak_plan_read tells, or map it in plan_tiers)"
            )
    created_at = to_time(as_dict(customer).get("created"))
    name = as_dict(customer).get("name")
    email = as_dict(customer).get("email")
    health = CustomerHealth(
        customer_id=bundle.customer_id,
        email=email if isinstance(email, str) else None,
        name=name if isinstance(name, str) else None,
        created_at=created_at,
        tenure_days=whole_days(created_at, as_of) if created_at else None,
        currency=currency,
        mrr=mrr,
        mrr_by_currency=mrr_by_currency,
        mrr_30d_ago=mrr_30d_ago,
        mrr_change_30d=mrr - mrr_30d_ago,
        plan_id=(plan_item.price_id or plan_item.plan_id) if plan_item else _unpriced_plan_id(live_subs),
        plan_tier=plan_tier.name if plan_tier else None,
        subscription_health=subscription_health(subscriptions, invoices, policy, as_of, history.ever_counted),
        payment_risk=payment_risk(facts),
        failed_payments_30d=facts.failed_30d,
        failed_payments_90d=facts.failed_90d,
        past_due_amount=past_due_amount,
        max_days_past_due=max([days for _, days in facts.aged_days if days > 0], default=0),
        trial_end=trials[0][0] if trials else None,
        trial_converted_at=history.trial_converted_at,
        cancel_at_period_end=any(set_to_cancel(sub, as_of) for sub in live_subs),
        active_coupon_ids=active_coupons,
        risk_score=0,
        risk_reasons=[],
        as_of=as_of,
        deleted=deleted,
        past_due_by_currency=past_due_by_currency,
        limitations=sorted(set(limitations)),
        **flags,
    )
    health.risk_score, health.risk_reasons = assess(
        health,
        RiskEvidence(
            live_subs,
            customer,
            charges,
            facts,
            downgrades,
            policy,
            history.mrr_by_currency_at(as_of - timedelta(days=LONG_WINDOW_DAYS)).get(currency or "", 0),
        ),
    )
    snapshot = MrrSnapshot(at=as_of, mrr_by_currency=dict(mrr_by_currency), cause="as_of")
    return CustomerEvaluation(
        health=health,
        movements=history.new_movements,
        plan_changes=history.new_plan_changes,
        snapshot=snapshot,
        problems=sorted(set(problems + ignored)),
    )
