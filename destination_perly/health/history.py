"""MRR history, movements and plan changes (contract section 7).

Each subscription's past is rebuilt as a list of versions, each valid from a moment on:

1. its Stripe events: the version after each event is `data.object`; the version just before the
   oldest event is that object with `previous_attributes` laid over it (a `created` event means
   the subscription did not exist before);
2. before the events (or with none), its paid/open invoices: each full subscription period gives
   the items (price, quantity) billed from its start, and proration lines give mid-period changes
   (credited items removed, charged ones added) at their start. From the latest billed moment on,
   the subscription object itself holds; if its items differ from what was billed then and nothing
   dates the change (an item's `created` may), the change is dated at the end of the interval:
   `as_of`, or the first event;
3. the current object, which is the truth at `as_of` and, lacking the above, for all earlier time
   (an `unpaid` one counted as past_due until its last failed retry).

A version also implies moments: its start, trial end, end, discount start/end and the day its
oldest open invoice became delinquent. The customer's MRR is evaluated at every such moment with
the same rules as now. Snapshots the pipeline stored earlier override the rebuilt values between
the first and last snapshot (they are what was actually observed); a change between two
snapshots is dated by the latest rebuilt change in between when there is one.

The stored history is append-only: the rebuilt timeline only decides what happened after the stored
rows (see `_append_new` and docs/DESIGN.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from destination_perly.health.counting import counted_at, ended_at, in_trial, is_delinquent
from destination_perly.health.derived import recurring_of_days
from destination_perly.health.model import HealthConfig, MrrMovement, MrrSnapshot, PlanChange, StoredHistory
from destination_perly.health.mrr import (
    Catalog,
    ItemAmount,
    SubscriptionAmounts,
    resolve_price,
    subscription_and_item_discounts,
)
from destination_perly.health.payments import aging_reference, invoice_subscription_id
from destination_perly.health.tiers import direction, tier_of
from destination_perly.health.values import StripeObject, as_dict, as_list, ref_id, text, to_time

INVOLUNTARY_REASONS = frozenset({"payment_failed", "payment_disputed"})


@dataclass(frozen=True)
class Version:
    """One version of a subscription, valid from `start` (None: since always) until the next one."""

    start: datetime | None
    state: StripeObject | None  # None: the subscription did not exist
    cause: str


@dataclass(frozen=True)
class Change:
    """The customer's MRR right after a moment where it changed."""

    at: datetime
    mrr: dict[str, int]
    cause: str
    churn_hint: str | None  # involuntary / voluntary when a subscription stopped counting for that reason
    risers: tuple[str, ...]  # subscriptions that went from 0 to counting


@dataclass
class History:
    """`movements` and `plan_changes`: the stored rows followed by the `new_*` ones (oldest first);
    `changes`: the timeline rebuilt from the evidence (it decides what is new)."""

    movements: list[MrrMovement] = field(default_factory=list)
    plan_changes: list[PlanChange] = field(default_factory=list)
    new_movements: list[MrrMovement] = field(default_factory=list)
    new_plan_changes: list[PlanChange] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    trial_converted_at: datetime | None = None

    def mrr_by_currency_at(self, at: datetime) -> dict[str, int]:
        """MRR per currency at a moment, as the movements tell it (empty before any)."""
        return _level([movement for movement in self.movements if movement.at <= at])

    @property
    def ever_counted(self) -> bool:
        return any(amount > 0 for change in self.changes for amount in change.mrr.values()) or any(
            movement.mrr_after > 0 for movement in self.movements
        )


def _level(movements: Iterable[MrrMovement]) -> dict[str, int]:
    """MRR per currency after these movements (oldest first)."""
    found = {movement.currency: movement.mrr_after for movement in movements}
    return {currency: amount for currency, amount in sorted(found.items()) if amount > 0}


def version_before(after: StripeObject, previous: StripeObject) -> StripeObject:
    """The object before an update: `previous_attributes` laid over the object after it."""
    before = dict(after)
    for key, value in previous.items():
        if isinstance(value, dict) and isinstance(after.get(key), dict):
            before[key] = version_before(after[key], value)
        else:
            before[key] = value
    return before


def _subscription_events(events: list[StripeObject], as_of: datetime) -> dict[str, list[StripeObject]]:
    by_subscription: dict[str, list[StripeObject]] = {}
    for event in events:
        if not isinstance(event, dict) or not str(event.get("type", "")).startswith("customer.subscription."):
            continue
        obj = as_dict(as_dict(event.get("data")).get("object"))
        created = to_time(event.get("created"))
        sub_id = ref_id(obj.get("id"))
        if (
            sub_id is None
            or created is None
            or created > as_of
            or obj.get("object") not in (None, "subscription")
        ):
            continue
        by_subscription.setdefault(sub_id, []).append(event)
    for found in by_subscription.values():
        found.sort(key=lambda event: (event.get("created"), str(event.get("id"))))
    return by_subscription


def _event_objects(by_subscription: dict[str, list[StripeObject]]) -> list[StripeObject]:
    return [
        as_dict(as_dict(event.get("data")).get("object"))
        for found in by_subscription.values()
        for event in found
    ]


def _known_prices(catalog: Catalog, states: list[StripeObject], invoices: list[StripeObject]) -> Catalog:
    """The catalog completed with the prices the subscriptions carry expanded, then the per-unit prices
    full-period invoice lines show: invoice lines name prices by id only, and a key without Read on
    Prices has no other copy of them (an old plan is on no subscription any more)."""
    found = _prices_from_lines(invoices, catalog.prices)
    found.update(
        (str(price["id"]), price)
        for state in states
        for raw in as_list(state.get("items"))
        if isinstance(price := as_dict(raw).get("price"), dict) and isinstance(price.get("id"), str)
    )
    missing = {price_id: price for price_id, price in found.items() if price_id not in catalog.prices}
    return replace(catalog, prices={**catalog.prices, **missing}) if missing else catalog


def _prices_from_lines(invoices: list[StripeObject], known: Mapping[str, Any]) -> dict[str, StripeObject]:
    """Per-unit recurring prices as full-period subscription lines show them: the line's unit amount
    times its quantity is its amount (a tiered price's is not, and is left out). Prices already
    `known` are not rebuilt (nearly every line's: the engine's catalog has what the lines show)."""
    found: dict[str, StripeObject] = {}
    for invoice in invoices:
        for line in as_list(invoice.get("lines")):
            line = as_dict(line)
            pricing = as_dict(line.get("pricing"))
            price_id = as_dict(pricing.get("price_details")).get("price")
            if not isinstance(price_id, str) or price_id in known:
                continue
            details = as_dict(as_dict(line.get("parent")).get("subscription_item_details"))
            period = as_dict(line.get("period"))
            start, end = to_time(period.get("start")), to_time(period.get("end"))
            unit = str(pricing.get("unit_amount_decimal") or "")
            amount, quantity = line.get("amount"), line.get("quantity")
            if (
                not details
                or details.get("proration") is not False
                or not isinstance(price_id, str)
                or start is None
                or end is None
                or not unit.isdecimal()
                or not isinstance(quantity, int)
                or amount != int(unit) * quantity
            ):
                continue
            found[price_id] = {
                "id": price_id,
                "product": as_dict(pricing.get("price_details")).get("product"),
                "currency": line.get("currency"),
                "recurring": {**recurring_of_days((end - start).days), "usage_type": "licensed"},
                "unit_amount": int(unit),
                "type": "recurring",
            }
    return found


def _line_price(line: StripeObject) -> Any:
    details = as_dict(as_dict(line.get("pricing")).get("price_details"))
    return details.get("price") or line.get("price") or ref_id(line.get("plan"))


def _invoice_items(
    invoice: StripeObject, catalog: Catalog
) -> tuple[datetime, datetime, list[StripeObject]] | None:
    """The subscription items one invoice billed for a full period: (period start, end, items)."""
    if as_dict(invoice.get("lines")).get("has_more") is True:
        return None  # an incomplete list of lines would understate the MRR of its period
    items: list[StripeObject] = []
    start: datetime | None = None
    end: datetime | None = None
    total = 0
    for line in as_list(invoice.get("lines")):
        line = as_dict(line)
        parent = as_dict(line.get("parent"))
        details = as_dict(parent.get("subscription_item_details"))
        if parent.get("type") not in (None, "subscription_item_details") or not details:
            continue
        if details.get("proration") is True:
            continue
        period = as_dict(line.get("period"))
        line_start, line_end = to_time(period.get("start")), to_time(period.get("end"))
        if line_start is None or line_end is None or line_end <= line_start:
            continue
        price = _line_price(line)
        known = as_dict(catalog.prices.get(ref_id(price) or ""))
        if as_dict(known.get("recurring")).get("usage_type") == "metered":
            continue  # usage is billed in arrears for the previous period: not this period's plan
        if start is None or line_start > start:
            start, end = line_start, line_end
        quantity = _quantity(line.get("quantity"))
        amount = line.get("amount")
        total += amount if isinstance(amount, int) else 0
        if isinstance(price, str) and isinstance(catalog.prices.get(price), dict):
            price = catalog.prices[price]  # whole: the engine's catalog may not hold it (see _known_prices)
        elif ref_id(price) is None or isinstance(price, str):
            if not isinstance(amount, int):
                continue
            # Unknown price: the billed amount is what the period cost, per unit when it divides
            # exactly (else as one unit); its id and product are the line's, so tiers still match.
            if amount % quantity:
                quantity = 1
            price = {
                "id": price if isinstance(price, str) else f"billed:{amount}",
                "product": as_dict(as_dict(line.get("pricing")).get("price_details")).get("product"),
                "recurring": {**recurring_of_days((line_end - line_start).days), "usage_type": "licensed"},
                "unit_amount": amount // quantity,
                "type": "recurring",
            }
        items.append({"id": ref_id(details.get("subscription_item")), "price": price, "quantity": quantity})
    if not items or start is None or end is None or total <= 0:
        return None  # nothing billed (e.g. a trial's zero invoice): not evidence of MRR
    return start, end, items


def _versions(
    sub_id: str,
    current: StripeObject | None,
    events: list[StripeObject],
    invoices: list[StripeObject],
    catalog: Catalog,
    as_of: datetime,
) -> list[Version]:
    after_states = [as_dict(as_dict(event.get("data")).get("object")) for event in events]
    if events:
        first = events[0]
        previous = as_dict(first.get("data")).get("previous_attributes")
        if first.get("type") == "customer.subscription.created":
            base: StripeObject | None = None
        elif isinstance(previous, dict):
            base = version_before(after_states[0], previous)
        else:
            base = after_states[0]
    else:
        base = current
    first_event_at = to_time(events[0].get("created")) if events else None
    before = first_event_at or as_of
    billed = _invoice_versions(sub_id, base, invoices, catalog, before) if base is not None else []
    earliest = base
    if base is not None and billed and billed[0].state is not base:
        # Before the first period an invoice shows (e.g. its invoice was voided), the items billed
        # nearest in time, not today's.
        earliest = {**base, "items": as_dict(billed[0].state).get("items")}
    versions = [Version(None, earliest, sub_id), *billed]
    for event, state in zip(events, after_states, strict=True):
        created = to_time(event.get("created"))
        versions.append(Version(created, state, str(event.get("id"))))
    if current is not None and events:
        last = versions[-1]
        versions[-1] = Version(last.start, current, last.cause)
    return versions


def _with_item_terms(items: list[StripeObject], base: StripeObject) -> list[StripeObject]:
    """Billed items with the discounts and tax rates of the matching subscription item (same item id,
    else same price), so a period billed like today's items has exactly today's MRR."""
    known: dict[str, StripeObject] = {}
    for raw in as_list(base.get("items")):
        raw = as_dict(raw)
        for key in (ref_id(raw.get("id")), ref_id(raw.get("price"))):
            if key and key not in known:
                known[key] = raw
    completed = []
    for item in items:
        match = known.get(ref_id(item.get("id")) or "") or known.get(ref_id(item.get("price")) or "") or {}
        completed.append(
            {**item, "discounts": match.get("discounts", []), "tax_rates": match.get("tax_rates", [])}
        )
    return completed


def _proration_changes(
    invoice: StripeObject, catalog: Catalog
) -> list[tuple[datetime, list[StripeObject], set[str]]]:
    """Mid-period changes shown by proration lines: at each line's period start, the prices credited
    (negative lines: removed, by price and item) and the items charged for the rest of the period
    (positive: added)."""
    if as_dict(invoice.get("lines")).get("has_more") is True:
        return []
    changes: dict[datetime, tuple[list[StripeObject], set[str]]] = {}
    for line in as_list(invoice.get("lines")):
        line = as_dict(line)
        # A proration is billed through a pending invoice item: either parent may describe it.
        parent = as_dict(line.get("parent"))
        details = as_dict(parent.get(str(parent.get("type") or "subscription_item_details")))
        if details.get("proration") is not True:
            continue  # (most lines: before reading the rest)
        amount = line.get("amount")
        price_id = ref_id(_line_price(line))
        at = to_time(as_dict(line.get("period")).get("start"))
        if not isinstance(amount, int) or price_id is None or at is None:
            continue
        added, removed = changes.setdefault(at, ([], set()))
        if amount < 0:
            # By price, and by item too: a billed item whose price is unknown has a made-up price id.
            removed.update(key for key in (price_id, ref_id(details.get("subscription_item"))) if key)
        elif amount > 0 and isinstance(known := catalog.prices.get(price_id), dict):
            added.append(
                {
                    "id": ref_id(details.get("subscription_item")),
                    "price": known,
                    "quantity": _quantity(line.get("quantity")),
                }
            )
    return [(at, added, removed) for at, (added, removed) in changes.items()]


def _unpaid_history(
    versions: list[Version], sub_id: str, invoices: list[StripeObject], charges: list[StripeObject]
) -> list[Version]:
    """An unpaid subscription was past_due (and counting) until Stripe gave up retrying. Without an
    event saying when, that is taken as the last failed charge after its oldest open invoice was
    finalized (else that invoice's due or finalization date)."""
    current = versions[-1].state
    if current is None or current.get("status") != "unpaid":
        return versions
    open_refs = [
        (reference, finalized)
        for invoice in invoices
        if invoice.get("status") == "open"
        and invoice_subscription_id(invoice) == sub_id
        and (reference := aging_reference(invoice)) is not None
        and (
            finalized := to_time(as_dict(invoice.get("status_transitions")).get("finalized_at")) or reference
        )
    ]
    if not open_refs:
        return versions
    reference, finalized = min(open_refs)
    failures = [
        created
        for charge in charges
        if charge.get("status") == "failed"
        and (created := to_time(charge.get("created"))) is not None
        and created >= finalized
    ]
    unpaid_since = max(failures, default=reference)
    past_due = {**current, "status": "past_due"}
    earlier = [
        Version(version.start, past_due if version.state is current else version.state, version.cause)
        for version in versions
        if version.start is None or version.start < unpaid_since
    ]
    return [*earlier, Version(unpaid_since, current, sub_id)]


def _invoice_versions(
    sub_id: str, base: StripeObject, invoices: list[StripeObject], catalog: Catalog, before: datetime
) -> list[Version]:
    """Versions rebuilt from the items billed on past invoices (full periods and mid-period prorations).

    The latest billed moment belongs to the subscription object itself, so only changes before it
    come from invoices; a gap after a billed period is left to the subscription object too."""
    # (moment, kind, cause, items, removed prices and items); kind orders same-moment entries.
    moments: list[tuple[datetime, str, str, list[StripeObject], set[str]]] = []
    ends: set[datetime] = set()
    for invoice in invoices:
        if invoice.get("status") not in ("paid", "open") or invoice_subscription_id(invoice) != sub_id:
            continue
        invoice_id = str(invoice.get("id"))
        period = _invoice_items(invoice, catalog)
        if period is not None and period[0] < before:
            moments.append((period[0], "1-period", invoice_id, period[2], set()))
            ends.add(period[1])
        for at, added, removed in _proration_changes(invoice, catalog):
            if at < before:
                moments.append((at, "2-proration", invoice_id, added, removed))
    if not moments:
        return []
    cutoff = max(moment[0] for moment in moments)
    starts = {moment[0] for moment in moments}
    moments.extend((end, "0-gap", sub_id, [], set()) for end in ends if end < cutoff and end not in starts)
    moments.sort(key=lambda moment: (moment[0], moment[1], moment[2]))
    versions: list[Version] = []
    items: list[StripeObject] = []
    last_signature: Any = None
    last_cause = sub_id
    for at, kind, cause, billed, removed in moments:
        if kind == "0-gap":
            versions.append(Version(at, base, cause))
            items, last_signature = [], None
            continue
        items = (
            billed
            if kind == "1-period"
            else [i for i in items if not {ref_id(i["price"]), ref_id(i.get("id"))} & removed] + billed
        )
        if at < cutoff and (signature := _signature(items)) != last_signature:
            versions.append(Version(at, _billed_state(base, items), cause))
            last_signature = signature
        last_cause = cause
    if _signature(items) == _signature(_licensed_items(base, catalog)):
        versions.append(Version(cutoff, base, sub_id))
        return versions
    # The object differs from what was last billed, and no invoice says when it changed: the change
    # is dated by the item it added when that item is newer, else at the end of the interval
    # (`before`: as_of or the first event), never back-dated to the billed period.
    versions.append(Version(cutoff, {**base, "items": {"data": _with_item_terms(items, base)}}, last_cause))
    versions.append(Version(_undated_change_at(items, base, cutoff, before), base, sub_id))
    return versions


def _signature(items: list[StripeObject]) -> list[tuple[str, int]]:
    """What was billed, by price and quantity (an unknown price's id names its billed amount)."""
    return sorted((str(ref_id(i.get("price"))), _quantity(i.get("quantity"))) for i in items)


def _quantity(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _licensed_items(state: StripeObject, catalog: Catalog) -> list[StripeObject]:
    """The subscription's items an invoice bills for a full period (metered usage is billed later)."""
    found = []
    for raw in as_list(state.get("items")):
        raw = as_dict(raw)
        price = as_dict(resolve_price(raw, catalog))
        if price.get("id") is None or as_dict(price.get("recurring")).get("usage_type") == "metered":
            continue
        found.append({"price": price, "quantity": raw.get("quantity")})
    return found


def _undated_change_at(
    billed: list[StripeObject], base: StripeObject, cutoff: datetime, before: datetime
) -> datetime:
    billed_ids = {ref_id(item.get("id")) for item in billed}
    added = [
        created
        for raw in as_list(base.get("items"))
        if ref_id(as_dict(raw).get("id")) not in billed_ids
        and (created := to_time(as_dict(raw).get("created"))) is not None
        and cutoff < created <= before
    ]
    return max(added, default=before)


def _billed_state(base: StripeObject, items: list[StripeObject]) -> StripeObject:
    """The subscription as it was while these items were billed: counting, with today's terms (a
    past_due one stays past_due, so its open invoices still make it delinquent on the day they do)."""
    return {
        **base,
        "items": {"data": _with_item_terms(items, base)},
        "status": "past_due" if base.get("status") == "past_due" else "active",
        "ended_at": None,
        "canceled_at": None,
        "cancel_at": None,
        "pause_collection": None,
        "trial_end": None,
        "trial_start": None,
    }


def _moments(
    state: StripeObject, sub_id: str, invoices: list[StripeObject], delinquent_days: int, catalog: Catalog
) -> list[datetime]:
    """The moments at which this version's MRR may change by itself (start, trial, end, discounts,
    delinquency)."""
    found = [
        to_time(state.get(key)) for key in ("start_date", "created", "trial_start", "trial_end", "cancel_at")
    ]
    found.append(ended_at(state))
    for raw in subscription_and_item_discounts(state, catalog):
        discount = as_dict(raw)
        found.extend([to_time(discount.get("start")), to_time(discount.get("end"))])
    if state.get("status") == "past_due":
        for invoice in invoices:
            reference = aging_reference(invoice)
            if reference is not None and invoice_subscription_id(invoice) == sub_id:
                found.append(reference + timedelta(days=delinquent_days + 1))
    return [moment for moment in found if moment is not None]


def _churn_hint(
    state: StripeObject | None, invoices: list[StripeObject], config: HealthConfig, at: datetime
) -> str:
    if state is None:
        return "unknown"
    reason = text(as_dict(state.get("cancellation_details")).get("reason"))
    if state.get("status") == "unpaid" or reason in INVOLUNTARY_REASONS:
        return "involuntary"
    if is_delinquent(state, invoices, config.policy, at):
        return "involuntary"
    if reason == "cancellation_requested":
        return "voluntary"
    return "unknown"


@dataclass
class _Point:
    """One subscription at one moment."""

    value: int
    currency: str | None
    counting: bool
    trialing: bool
    ended: bool
    plan: ItemAmount | None
    state: StripeObject | None
    cause: str


def build_history(
    customer_id: str,
    customer: StripeObject | None,
    subscriptions: list[StripeObject],
    invoices: list[StripeObject],
    events: list[StripeObject],
    snapshots: list[MrrSnapshot],
    catalog: Catalog,
    config: HealthConfig,
    as_of: datetime,
    mrr_now: dict[str, int],
    charges: list[StripeObject] | None = None,
    amount_of: SubscriptionAmounts | None = None,
    stored: StoredHistory | None = None,
) -> History:
    """The customer's MRR timeline, movements and plan changes up to `as_of` (see the module doc)."""
    policy = config.policy
    amount_of = amount_of or SubscriptionAmounts(customer, catalog)
    by_sub_events = _subscription_events(events, as_of)
    current_by_id = {str(sub.get("id")): sub for sub in subscriptions}
    billed_catalog = _known_prices(catalog, [*subscriptions, *_event_objects(by_sub_events)], invoices)
    all_versions: dict[str, list[Version]] = {}
    moments: set[datetime] = set()
    for sub_id in sorted(set(current_by_id) | set(by_sub_events)):
        versions = _versions(
            sub_id, current_by_id.get(sub_id), by_sub_events.get(sub_id, []), invoices, billed_catalog, as_of
        )
        if not by_sub_events.get(sub_id):
            versions = _unpaid_history(versions, sub_id, invoices, charges or [])
        all_versions[sub_id] = versions
        for version in versions:
            if version.start is not None:
                moments.add(version.start)
            if version.state is not None:
                moments.update(
                    _moments(version.state, sub_id, invoices, policy.delinquent_churn_days, catalog)
                )
    times = sorted(moment for moment in moments if moment < as_of)

    since_always = datetime.min.replace(tzinfo=as_of.tzinfo)
    starts = {
        sub_id: [version.start or since_always for version in versions]
        for sub_id, versions in all_versions.items()
    }

    def point(sub_id: str, at: datetime) -> _Point:
        versions = all_versions[sub_id]
        index = bisect.bisect_right(starts[sub_id], at)
        version = versions[max(index - 1, 0)]
        state = version.state
        if state is None:
            return _Point(0, None, False, False, False, None, None, version.cause)
        counting = counted_at(state, invoices, policy, at)
        end = ended_at(state)
        trialing = not counting and (state.get("status") == "trialing" or in_trial(state, at))
        amount = amount_of(state, at) if counting or trialing else None
        plan = (
            max(amount.items, key=lambda item: (item.gross, item.price_id or ""), default=None)
            if amount
            else None
        )
        return _Point(
            value=amount.mrr if amount and counting else 0,
            currency=amount.currency if amount else None,
            counting=counting,
            trialing=trialing and (end is None or at < end),
            ended=end is not None and end <= at,
            plan=plan,
            state=state,
            cause=version.cause,
        )

    history = History()
    previous_points: dict[str, _Point] = {}
    previous_mrr: dict[str, int] = {}
    rebuilt: list[Change] = []
    for at in [*times, as_of]:
        points = {sub_id: point(sub_id, at) for sub_id in all_versions}
        # At as_of the engine's own figure is the truth (the same rules, on the current objects).
        mrr = dict(mrr_now) if at == as_of else _sum(points.values())
        _plan_changes(history, customer_id, previous_points, points, at, config, catalog)
        if mrr != previous_mrr:
            before = {sub_id: found.value for sub_id, found in previous_points.items()}
            moved = [sub_id for sub_id, now in points.items() if before.get(sub_id, 0) != now.value]
            risers = tuple(sub_id for sub_id in moved if before.get(sub_id, 0) == 0)
            cause = points[moved[-1]].cause if moved else customer_id
            hint = _group_hint(previous_points, points, invoices, config, at)
            rebuilt.append(Change(at, mrr, cause, hint, risers))
        previous_points, previous_mrr = points, mrr
    final_points = previous_points

    history.changes = _merge_snapshots(rebuilt, snapshots, as_of, mrr_now)
    _append_new(history, customer_id, stored or StoredHistory(), config, as_of, mrr_now, final_points)
    conversions = [
        change.at
        for change in history.plan_changes
        if change.kind == "trial_conversion" and change.at <= as_of
    ]
    history.trial_converted_at = max(conversions, default=None)
    return history


def _append_new(
    history: History,
    customer_id: str,
    stored: StoredHistory,
    config: HealthConfig,
    as_of: datetime,
    mrr_now: dict[str, int],
    final_points: dict[str, _Point],
) -> None:
    """Reconciles the rebuilt timeline with the stored history (append-only, contract section 7).

    The stored rows are the truth up to the horizon (the last evaluation that stored them). Only the
    rebuilt changes after it become new rows, each measured from the stored level; evidence found
    later about an earlier time (a proration line dating a change a past sync dated at its own as_of)
    is already told by the stored rows and adds nothing."""
    horizon = _horizon(stored)
    level = _level(stored.movements)
    changes = _changes_after(history.changes, horizon, level, as_of, mrr_now)
    paid_before = any(movement.mrr_after > 0 for movement in stored.movements)
    new_movements = _movements(customer_id, changes, config, level, paid_before)
    reactivations: list[PlanChange] = []
    for movement in new_movements:
        if movement.kind == "reactivation":
            reactivations.extend(_reactivation_changes(history, customer_id, movement, final_points))
    candidates = sorted(
        {
            change
            for change in [*history.plan_changes, *reactivations]
            if horizon is None or horizon < change.at <= as_of
        },
        key=lambda change: (change.at, change.subscription_id, change.kind),
    )
    # Each subscription's last plan change: one the rebuild dates after the horizon but that leads to
    # where the stored history already is (its plan at the horizon) is already told.
    last = {change.subscription_id: change for change in stored.plan_changes}
    new_plan_changes: list[PlanChange] = []
    for plan_change in candidates:
        if not _already_told(plan_change, last.get(plan_change.subscription_id)):
            new_plan_changes.append(plan_change)
            last[plan_change.subscription_id] = plan_change
    history.new_movements = new_movements
    history.new_plan_changes = new_plan_changes
    history.movements = [*stored.movements, *new_movements]
    history.plan_changes = [*stored.plan_changes, *history.new_plan_changes]


def _sum(points: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for found in points:
        if found.value > 0 and found.currency:
            total[found.currency] = total.get(found.currency, 0) + found.value
    return dict(sorted(total.items()))


def _group_hint(
    before: dict[str, _Point],
    after: dict[str, _Point],
    invoices: list[StripeObject],
    config: HealthConfig,
    at: datetime,
) -> str | None:
    hints = [
        _churn_hint(now.state, invoices, config, at)
        for sub_id, now in after.items()
        if now.value == 0 and before.get(sub_id) is not None and before[sub_id].value > 0
    ]
    for kind in ("involuntary", "voluntary"):
        if kind in hints:
            return kind
    return "unknown" if hints else None


def _plan_changes(
    history: History,
    customer_id: str,
    before: dict[str, _Point],
    after: dict[str, _Point],
    at: datetime,
    config: HealthConfig,
    catalog: Catalog,
) -> None:
    """Plan changes of each subscription between two consecutive moments."""
    for sub_id, now in after.items():
        was = before.get(sub_id)
        if was is None:
            continue
        kind: str | None = None
        if was.trialing and now.counting:
            kind = "trial_conversion"
        elif (was.counting or was.trialing) and now.ended:
            kind = "cancellation"
        elif (
            was.counting and now.counting and was.plan and now.plan and was.plan.price_id != now.plan.price_id
        ):
            kind = direction(
                tier_of(was.plan, config.tier_rules, catalog), tier_of(now.plan, config.tier_rules, catalog)
            )
        if kind is None:
            continue
        new_plan = None if kind == "cancellation" else now.plan
        old_tier = tier_of(was.plan, config.tier_rules, catalog) if was.plan else None
        new_tier = tier_of(new_plan, config.tier_rules, catalog) if new_plan else None
        history.plan_changes.append(
            PlanChange(
                customer_id=customer_id,
                subscription_id=sub_id,
                at=at,
                kind=kind,
                from_plan=was.plan.price_id if was.plan else None,
                to_plan=new_plan.price_id if new_plan else None,
                from_tier=old_tier.name if old_tier else None,
                to_tier=new_tier.name if new_tier else None,
                cause=now.cause,
            )
        )


def _horizon(stored: StoredHistory) -> datetime | None:
    """Up to when the stored history is the truth: the evaluation that stored it, or its newest row."""
    times = [
        *([stored.until] if stored.until else []),
        *(movement.at for movement in stored.movements),
        *(change.at for change in stored.plan_changes),
    ]
    return max(times, default=None)


def _changes_after(
    changes: list[Change],
    horizon: datetime | None,
    level: dict[str, int],
    as_of: datetime,
    mrr_now: dict[str, int],
) -> list[Change]:
    """The rebuilt changes after the horizon that move MRR away from the stored `level`, then, when MRR
    now is still not reached, a change at `as_of` (seen only as a difference: dated at the end of the
    interval it happened in)."""
    if horizon is None:
        return changes
    if as_of <= horizon:
        return []
    found: list[Change] = []
    value = level
    for change in changes:
        if change.at > horizon and change.mrr != value:
            found.append(change)
            value = change.mrr
    if value != mrr_now:
        found.append(Change(as_of, dict(mrr_now), "as_of", None, ()))
    return found


def _already_told(change: PlanChange, last: PlanChange | None) -> bool:
    if last is None:
        return False
    if change.kind == "cancellation":
        return last.kind == "cancellation"
    return last.kind != "cancellation" and change.to_plan == last.to_plan


def _reactivation_changes(
    history: History, customer_id: str, movement: MrrMovement, final_points: dict[str, _Point]
) -> list[PlanChange]:
    found = []
    for change in history.changes:
        if change.at == movement.at:
            for sub_id in change.risers:
                plan = final_points[sub_id].plan if sub_id in final_points else None
                found.append(
                    PlanChange(
                        customer_id,
                        sub_id,
                        movement.at,
                        "reactivation",
                        None,
                        plan.price_id if plan else None,
                        None,
                        None,
                        movement.cause,
                    )
                )
    return found


def _merge_snapshots(
    rebuilt: list[Change], snapshots: list[MrrSnapshot], as_of: datetime, mrr_now: dict[str, int]
) -> list[Change]:
    observed = sorted((snap for snap in snapshots if snap.at <= as_of), key=lambda snap: snap.at)
    if not observed:
        return rebuilt
    first, last = observed[0].at, observed[-1].at
    merged = [change for change in rebuilt if change.at < first]
    value = merged[-1].mrr if merged else {}
    previous_at = merged[-1].at if merged else None
    for snap in observed:
        mrr = {currency: amount for currency, amount in sorted(snap.mrr_by_currency.items()) if amount > 0}
        if mrr != value:
            between = [
                change
                for change in rebuilt
                if (previous_at is None or change.at > previous_at) and change.at <= snap.at
            ]
            if between:
                dated = between[-1]
                merged.append(Change(dated.at, mrr, dated.cause, dated.churn_hint, dated.risers))
            else:
                merged.append(Change(snap.at, mrr, snap.cause, None, ()))
            value = mrr
        previous_at = snap.at
    for change in rebuilt:
        if change.at > last and change.mrr != value:
            merged.append(change)
            value = change.mrr
    now = dict(mrr_now)
    if value != now:
        # Changed since the last observation with nothing rebuilt to date it: date it now.
        merged.append(Change(as_of, now, "as_of", None, ()))
    return merged


def _movements(
    customer_id: str,
    changes: list[Change],
    config: HealthConfig,
    before: dict[str, int],
    paid_before: bool,
) -> list[MrrMovement]:
    """Group changes within the policy's window and classify each currency's net change, from the MRR
    `before` them (`paid_before`: the customer paid before them)."""
    window = timedelta(seconds=config.policy.movement_grouping_seconds)
    groups: list[list[Change]] = []
    for change in changes:
        if groups and change.at - groups[-1][0].at <= window:
            groups[-1].append(change)
        else:
            groups.append([change])
    movements: list[MrrMovement] = []
    for group in groups:
        after = group[-1].mrr
        hints = [change.churn_hint for change in group if change.churn_hint]
        churn_type = next((kind for kind in ("involuntary", "voluntary") if kind in hints), "unknown")
        for currency in sorted(set(before) | set(after)):
            old, new = before.get(currency, 0), after.get(currency, 0)
            if old == new:
                continue
            if old == 0:
                kind = "reactivation" if paid_before else "new"
            elif new == 0:
                kind = "churn"
            else:
                kind = "expansion" if new > old else "contraction"
            movements.append(
                MrrMovement(
                    customer_id=customer_id,
                    at=group[0].at,
                    kind=kind,
                    churn_type=churn_type if kind == "churn" else None,
                    currency=currency,
                    mrr_before=old,
                    mrr_after=new,
                    delta=new - old,
                    cause=group[-1].cause,
                )
            )
        paid_before = paid_before or any(amount > 0 for change in group for amount in change.mrr.values())
        before = after
    return movements
