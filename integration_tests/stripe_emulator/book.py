"""The seeded book of business and the simulation that moves it through time.

One simulation serves both the seeded history and `advance()`: each subscription has an agenda of
timed actions (renewals, retries, trial ends, plan changes...). Building the book runs every agenda
up to "now"; advancing runs them further and signs up new customers. Events are kept only when
they fall inside Stripe's 30-day retention window, rendered at the moment they happen.

Scenario truth (`scenarios()`) is tracked beside the objects, never inside them.
"""

from __future__ import annotations

import base64
import gc
import heapq
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from .model import (
    Charge,
    Coupon,
    Customer,
    Discount,
    Event,
    Invoice,
    InvoiceLine,
    Json,
    Plan,
    Price,
    Product,
    StripeObject,
    Subscription,
    SubscriptionItem,
    TaxRate,
)
from .store import Store

DAY = 86_400
HOUR = 3_600
DEFAULT_NOW = 1_793_491_200  # 2026-11-01T00:00:00Z
EVENT_RETENTION = 30 * DAY
HISTORY = 730 * DAY

RESOURCES = (
    "customers",
    "subscriptions",
    "subscription_items",
    "invoices",
    "charges",
    "coupons",
    "prices",
    "plans",
    "products",
    "events",
)

ALPHANUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_SYMBOLS = bytes.maketrans(b"+/", b"xQ")

# tier name -> (product name, {currency: (monthly unit amount, yearly unit amount)}, seats range)
LADDER: list[tuple[str, dict[str, tuple[int, int]], tuple[int, int]]] = [
    ("Starter", {"usd": (2900, 29000), "eur": (2700, 27000), "jpy": (3000, 30000)}, (1, 1)),
    ("Pro", {"usd": (1500, 15000), "eur": (1400, 14000), "jpy": (1500, 15000)}, (2, 25)),
    ("Business", {"usd": (3500, 35000), "eur": (3200, 32000), "jpy": (4000, 40000)}, (5, 80)),
]
TIERED_TIERS = [(10, 4000, None), (50, 3000, None), (None, 2000, 5000)]
METERED_UNIT = {"usd": 2, "eur": 2}  # per 10 API calls
ADD_ON_COUNT = 22

SOFT_DECLINES = ["insufficient_funds", "do_not_honor", "generic_decline"]
HARD_DECLINES = ["expired_card", "stolen_card", "lost_card"]
RETRY_DAYS = (3, 7, 12)  # retries after the first failed attempt
DUNNING_DAYS = 15  # when the last retry has failed: cancel or mark unpaid

# The churn model of the random customers (README, "How churn happens"). Hidden per subscription: how
# fragile its card is (the chance a renewal charge fails) and how unhappy the customer is (the chance
# of leaving at a monthly renewal). Unhappiness moves with what happens: payment trouble, downgrades
# and seat cuts raise it, upgrades and added seats lower it; unhappy customers also shrink before
# they leave. A card that failed before is less likely to recover the next time.
CARD_RISKS = ((0.01, 85), (0.08, 11), (0.3, 4))  # (chance a renewal charge fails, weight)
BASE_UNHAPPINESS = 0.004  # median; spread x lognormal(0, 0.7): leaving with no warning sign
EARLY_LIFE_FACTOR = 2.0  # in the first 90 days, leaving is this much likelier
PAYMENT_TROUBLE_UNHAPPINESS = 0.03  # added at each failed renewal
DOWNGRADE_UNHAPPINESS = 0.08
SEAT_CUT_UNHAPPINESS = 0.05
UPGRADE_RELIEF = 0.6  # unhappiness multiplied by this after an upgrade or added seats
SHRINK_BEFORE_LEAVING = 3.0  # chance of a downgrade or seat cut at a renewal: this x unhappiness
LEAVE_AT_PERIOD_END = 0.7  # share of leavers who schedule it (the rest cancel at once, no warning)
REVOKE_SCHEDULED = 0.15  # share of scheduled cancellations taken back before the period ends
# Soft-decline dunning outcomes (recovered, canceled, unpaid): a first one, and after earlier trouble.
FIRST_DUNNING = (75, 15, 10)
REPEATED_DUNNING = (35, 40, 25)

FORCED_FATES = (
    "trial_converting",
    "trial_no_payment_method",
    "trial_no_pm_canceled",
    "dunning_recovered",
    "dunning_unpaid",
    "dunning_canceled",
    "dunning_active",
    "hard_decline",
    "send_invoice_past_due",
    "uncollectible",
    "void",
    "upgraded",
    "downgraded",
    "seat_change",
    "interval_switch",
    "cancel_at_period_end",
    "canceled_immediately",
    "coupon_forever",
    "coupon_once",
    "coupon_repeating",
    "jpy",
    "eur",
    "tiered",
    "metered",
    "many_items",
    "deleted_customer",
    "customer_discount",
    "pause_collection",
    "paused",
    "tax_inclusive",
    "weekly",
    "quarterly",
    "item_coupon_forever",
)

WORDS_A = ["Acme", "Blue", "Cedar", "Delta", "Ember", "Fable", "Granite", "Harbor", "Indigo", "Juniper"]
WORDS_B = ["Analytics", "Labs", "Robotics", "Health", "Logistics", "Studio", "Cloud", "Foods", "Systems"]


def add_months(ts: int, months: int, day: int) -> int:
    """`ts` moved by whole calendar months, on `day` of the month (clamped), same time of day."""
    moment = datetime.fromtimestamp(ts, UTC)
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    month += 1
    next_first = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    last_day = (next_first - datetime(year, month, 1, tzinfo=UTC)).days
    target = moment.replace(year=year, month=month, day=min(day, last_day))
    return int(target.timestamp())


def day_of(ts: int) -> int:
    return datetime.fromtimestamp(ts, UTC).day


# Forced scenarios that happen at a renewal: the billing day follows the target renewal.
RENEWAL_FATES = (
    "dunning_recovered",
    "dunning_unpaid",
    "dunning_canceled",
    "dunning_active",
    "hard_decline",
    "void",
    "cancel_at_period_end",
    "send_invoice_past_due",
    "uncollectible",
)


class Dunning:
    __slots__ = ("invoice", "outcome", "hard", "recover_at_retry", "started")

    def __init__(
        self, invoice: Invoice, outcome: str, hard: bool, recover_at_retry: int, started: int
    ) -> None:
        self.invoice = invoice
        self.outcome = outcome  # recovered | unpaid | canceled | active (never resolves by itself)
        self.hard = hard
        self.recover_at_retry = recover_at_retry
        self.started = started


class SimState:
    """What the simulation needs about one subscription beyond the Stripe fields."""

    __slots__ = (
        "agenda",
        "step",
        "anchor_day",
        "fate",
        "fate_at",
        "dunning",
        "random",
        "stuck",
        "last_bill",
        "invoices",
        "step_days",
        "card_risk",
        "unhappiness",
        "troubles",
    )

    def __init__(self, step: int, anchor_day: int, fate: str | None, fate_at: int) -> None:
        self.agenda: list[tuple[int, int, str, Any]] = []
        self.step = step  # months per period
        self.step_days = 0  # days per period instead, when set (weekly prices)
        self.anchor_day = anchor_day
        self.fate = fate
        self.fate_at = fate_at
        self.dunning: Dunning | None = None
        self.random = fate is None  # forced scenarios follow their script only
        self.stuck = False  # send_invoice: invoices stay unpaid from now on
        self.last_bill: int | None = None  # metered usage is billed in arrears from here
        self.invoices: list[Invoice] = []
        self.card_risk = 0.03  # random customers draw theirs at sign-up (CARD_RISKS)
        self.unhappiness = 0.0  # random customers draw theirs at sign-up (BASE_UNHAPPINESS)
        self.troubles = 0  # failed renewals so far


class AdvanceSummary:
    def __init__(self) -> None:
        self.changes: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.touched: dict[str, set[str]] = {
            "customers": set(),
            "subscriptions": set(),
            "invoices": set(),
            "charges": set(),
        }
        self.new_events: list[Event] = []


class Book:
    def __init__(self, customers: int = 2000, seed: int = 42, now: int = DEFAULT_NOW) -> None:
        self.seed = seed
        self.now = now
        self.rng = random.Random(seed)
        self._id_rng = random.Random(seed * 7919 + 1)
        self._seq = 0
        self.stores: dict[str, Store] = {name: Store(name) for name in RESOURCES}
        self.labels: dict[str, set[str]] = {}
        self.customers: list[Customer] = []
        self.subscriptions_of: dict[str, list[Subscription]] = {}
        self.summary: AdvanceSummary | None = None
        self._fate_counts: Counter[str] = Counter()
        self.event_cutoff = now - EVENT_RETENTION
        self.history_end = 0  # during advance(): the old now, before which nothing may change
        # The cyclic GC would rescan millions of young objects while the book grows (quadratic time);
        # nothing here forms garbage cycles worth collecting, so pause it and freeze the result.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._build_catalog(now - HISTORY - 30 * DAY)
            self._seed_customers(customers)
            self._catalog_deletions()
            for store in self.stores.values():
                store.sorted()
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()

    # ---- ids and bookkeeping -------------------------------------------------------------
    def new_id(self, prefix: str, length: int = 24) -> str:
        # Base64 of seeded random bytes with its two symbols mapped to letters: Stripe-like and fast.
        raw = base64.b64encode(self._id_rng.randbytes(length * 3 // 4 + 3)).translate(ID_SYMBOLS)
        return prefix + raw[:length].decode()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def label(self, customer: Customer, name: str) -> None:
        self.labels.setdefault(customer.id, set()).add(name)

    def unlabel(self, customer: Customer, name: str) -> None:
        self.labels.get(customer.id, set()).discard(name)

    def change(self, kind: str, obj: StripeObject) -> None:
        if self.summary is not None:
            self.summary.changes[kind] += 1
            store = obj.object_name + "s"
            if store in self.summary.touched:
                self.summary.touched[store].add(obj.id)
            customer_id = obj.customer_id
            if customer_id:
                self.summary.touched["customers"].add(customer_id)

    def emit(
        self,
        type: str,
        at: int,
        obj: Json,
        previous: Json | None = None,
        requested: bool = False,
        customer: str | None = None,
    ) -> None:
        if at < self.event_cutoff:
            return
        request_id = idem = None
        if requested:
            request_id = self.new_id("req_", 14)
            idem = self.new_id("", 32).lower()
        event = Event(
            self.new_id("evt_"), at, self.next_seq(), type, obj, previous, request_id, idem, customer
        )
        self.stores["events"].add(event)
        if self.summary is not None:
            self.summary.events[type] += 1
            self.summary.new_events.append(event)

    def in_window(self, at: int) -> bool:
        return at >= self.event_cutoff

    def update_subscription(self, sub: Subscription, at: int, mutate: Any, requested: bool = False) -> None:
        """Apply `mutate()` and emit customer.subscription.updated with previous_attributes."""
        before = sub.render(self) if self.in_window(at) else None
        mutate()
        sub.touch()
        for item in sub.items:
            item.touch()
        if before is not None:
            after = sub.render(self)
            previous = {key: value for key, value in before.items() if after.get(key) != value}
            if previous:
                self.emit("customer.subscription.updated", at, after, previous, requested, sub.customer.id)

    def emit_obj(self, type: str, at: int, obj: StripeObject, requested: bool = False) -> None:
        if self.in_window(at):
            self.emit(type, at, obj.render(self), None, requested, obj.customer_id)

    # ---- catalog -----------------------------------------------------------------------------
    def _product(self, at: int, name: str, description: str) -> Product:
        product = Product(self.new_id("prod_", 14), at, self.next_seq(), name, description)
        self.stores["products"].add(product)
        return product

    def _price(
        self, product: Product, at: int, currency: str, amount: int | None, interval: str, **kw: Any
    ) -> Price:
        price = Price(
            self.new_id("price_"), at, self.next_seq(), product.id, currency, amount, interval, **kw
        )
        self.stores["prices"].add(price)
        self.stores["plans"].add(Plan(price))
        if product.default_price is None:
            product.default_price = price.id
        return price

    def _coupon(self, at: int, code: str, name: str, duration: str, **kw: Any) -> Coupon:
        coupon = Coupon(code, at, self.next_seq(), name, duration, **kw)
        self.stores["coupons"].add(coupon)
        return coupon

    def _build_catalog(self, at: int) -> None:
        # ladder[tier][currency][interval] -> Price
        self.ladder: list[dict[str, dict[str, Price]]] = []
        ladder_products: list[Product] = []
        for rank, (name, amounts, _seats) in enumerate(LADDER):
            product = self._product(at + rank, name, f"The {name} plan")
            product.metadata = {"tier": name.lower()}
            ladder_products.append(product)
            by_currency: dict[str, dict[str, Price]] = {}
            for currency, (monthly, yearly) in amounts.items():
                by_currency[currency] = {
                    "month": self._price(
                        product,
                        at + rank,
                        currency,
                        monthly,
                        "month",
                        lookup_key=f"{name.lower()}_monthly_{currency}",
                        nickname=f"{name} monthly",
                    ),
                    "year": self._price(
                        product,
                        at + rank,
                        currency,
                        yearly,
                        "year",
                        lookup_key=f"{name.lower()}_yearly_{currency}",
                        nickname=f"{name} yearly",
                    ),
                }
            self.ladder.append(by_currency)
        enterprise = self._product(at + 10, "Enterprise", "Volume seats, graduated pricing")
        self.tiered = self._price(
            enterprise,
            at + 10,
            "usd",
            None,
            "month",
            tiers=TIERED_TIERS,
            lookup_key="enterprise_seats_usd",
            nickname="Enterprise seats",
        )
        usage = self._product(at + 11, "API usage", "Metered API calls, billed in arrears")
        self.metered = {
            currency: self._price(
                usage,
                at + 11,
                currency,
                unit,
                "month",
                usage_type="metered",
                meter="mtr_" + "".join(self._id_rng.choices(ALPHANUM, k=20)),
                lookup_key=f"api_calls_{currency}",
            )
            for currency, unit in METERED_UNIT.items()
        }
        modules = self._product(at + 12, "Add-on modules", "Optional modules, one price each")
        self.add_ons = [
            self._price(modules, at + 12, "usd", 500 + 100 * (n % 8), "month", nickname=f"Module {n + 1}")
            for n in range(ADD_ON_COUNT)
        ]
        # Less common billing shapes, each held by its own scripted scenario.
        starter, pro = ladder_products[0], ladder_products[1]
        self.weekly = self._price(
            starter, at + 13, "usd", 900, "week", lookup_key="starter_weekly_usd", nickname="Starter weekly"
        )
        self.quarterly = self._price(
            pro,
            at + 13,
            "usd",
            4200,
            "month",
            interval_count=3,
            lookup_key="pro_quarterly_usd",
            nickname="Pro quarterly",
        )
        self.tax_inclusive = self._price(
            pro,
            at + 13,
            "eur",
            1680,
            "month",
            tax_behavior="inclusive",
            lookup_key="pro_monthly_eur_incl_vat",
            nickname="Pro monthly (VAT included)",
        )
        self.vat = TaxRate(self.new_id("txr_"), at + 13, "VAT", 20, True, "DE")
        self.coupons = {
            "forever": [
                self._coupon(at + 20, "LOYAL20", "20% off forever", "forever", percent_off=20.0),
                self._coupon(
                    at + 21, "PARTNER10USD", "$10 off forever", "forever", amount_off=1000, currency="usd"
                ),
            ],
            "once": [
                self._coupon(at + 22, "WELCOME50", "50% off the first invoice", "once", percent_off=50.0),
                self._coupon(at + 23, "FIRST5EUR", "5 EUR off once", "once", amount_off=500, currency="eur"),
            ],
            "repeating": [
                self._coupon(
                    at + 24,
                    "LAUNCH25",
                    "25% off 3 months",
                    "repeating",
                    percent_off=25.0,
                    duration_in_months=3,
                ),
                self._coupon(
                    at + 25,
                    "SPRING12",
                    "12.5% off 6 months",
                    "repeating",
                    percent_off=12.5,
                    duration_in_months=6,
                ),
            ],
        }
        # Retired catalog entries, deleted shortly before "now" so their *.deleted events are visible.
        legacy = self._product(at + 30, "Legacy Basic", "Retired plan")
        self.legacy = (legacy, self._price(legacy, at + 30, "usd", 900, "month", nickname="Legacy basic"))
        self.old_coupon = self._coupon(at + 31, "BLACKFRIDAY", "Black Friday 30%", "once", percent_off=30.0)

    def _catalog_deletions(self) -> None:
        at = self.now - 9 * DAY
        product, price = self.legacy
        for obj, kind in ((self.old_coupon, "coupon"), (price, "price"), (product, "product")):
            self.delete_object(obj, kind, at)
        self.stores["plans"].by_id[price.id].deleted = True
        self.emit("plan.deleted", at, price.render_plan() | {"deleted": True})

    def delete_object(self, obj: StripeObject, kind: str, at: int) -> None:
        snapshot = obj.render(self)
        obj.deleted = True
        obj.touch()
        self.emit(f"{kind}.deleted", at, snapshot | {"deleted": True}, customer=obj.customer_id)

    # ---- customers ---------------------------------------------------------------------------
    def _seed_customers(self, count: int) -> None:
        rng = self.rng
        start = self.now - HISTORY
        forced_every = max(1, count // (2 * len(FORCED_FATES))) if count >= len(FORCED_FATES) else 1
        plans: list[tuple[int, str | None]] = []
        fate_cursor = 0
        for index in range(count):
            fate = None
            if index % forced_every == 0 and fate_cursor < 2 * len(FORCED_FATES):
                fate = FORCED_FATES[fate_cursor % len(FORCED_FATES)]
                fate_cursor += 1
            # More recent sign-ups are more common (a growing company).
            at = start + int((HISTORY - DAY) * (rng.random() ** 0.7))
            plans.append((at, fate))
        plans.sort(key=lambda plan: plan[0])
        for index, (at, fate) in enumerate(plans):
            sub = self.sign_up(at, index, fate)
            self.run(sub, self.now)

    def _customer(self, at: int, index: int, currency: str) -> Customer:
        rng = self.rng
        company = f"{rng.choice(WORDS_A)} {rng.choice(WORDS_B)}"
        slug = company.lower().replace(" ", "")
        customer = Customer(
            self.new_id("cus_", 14),
            at,
            self.next_seq(),
            index,
            f"{company} {index}",
            f"billing@{slug}{index}.example.com",
            currency,
        )
        customer.invoice_prefix = "".join(self._id_rng.choices(ALPHANUM[:36], k=8))
        customer.metadata = {"account_id": f"acct-{index:06d}"}
        self.stores["customers"].add(customer)
        self.customers.append(customer)
        self.subscriptions_of[customer.id] = []
        return customer

    def _fate_time(self, fate: str, at: int) -> tuple[int, int]:
        """Forced scenarios happen at a set time before now: returns (sign-up time, fate time)."""
        now, rng = self.now, self.rng
        self._fate_counts[fate] += 1
        if fate in ("trial_converting",):
            signup = now - rng.randint(15, 26) * DAY
            return signup, signup
        if fate == "trial_no_payment_method":
            signup = now - rng.randint(6, 11) * DAY
            return signup, signup
        if fate in ("trial_no_pm_canceled", "paused"):
            signup = now - rng.randint(16, 28) * DAY
            return signup, signup
        if fate == "pause_collection":
            # Paused over a month ago, so at least one renewal has met the paused collection.
            signup = now - rng.randint(90, 400) * DAY
            return signup, now - rng.randint(32, 50) * DAY - rng.randint(0, 23) * HOUR
        offsets = {
            "dunning_recovered": (16, 26),
            "dunning_unpaid": (20, 28),
            "dunning_canceled": (20, 28),
            "dunning_active": (2, 9),
            "hard_decline": (2, 9),
            "void": (8, 20),
            "cancel_at_period_end": (22, 27),
        }
        if fate in offsets:
            low, high = offsets[fate]
            target = now - rng.randint(low, high) * DAY - rng.randint(0, 20) * HOUR
            return add_months(target, -rng.randint(2, 14), day_of(target)), target
        if fate == "send_invoice_past_due":
            # Each occurrence a different age: under 30 days, 31-60 and over 60 days past due.
            age = (12, 40, 75)[self._fate_counts[fate] % 3]
            target = now - (age + 30) * DAY - rng.randint(1, 20) * HOUR
            return add_months(target, -rng.randint(1, 10), day_of(target)), target
        if fate == "uncollectible":
            target = now - 70 * DAY - rng.randint(1, 20) * HOUR
            return add_months(target, -rng.randint(1, 10), day_of(target)), target
        if fate == "deleted_customer":
            signup = now - rng.randint(200, 600) * DAY
            return signup, now - rng.randint(8, 20) * DAY
        if fate in ("upgraded", "downgraded", "seat_change", "interval_switch", "canceled_immediately"):
            signup = now - rng.randint(60, 500) * DAY
            return signup, now - rng.randint(2, 27) * DAY - rng.randint(0, 23) * HOUR
        if fate in ("coupon_forever", "coupon_once", "coupon_repeating"):
            signup = now - rng.randint(20, 50) * DAY
            return signup, signup
        if fate == "item_coupon_forever":
            signup = now - rng.randint(40, 80) * DAY  # renewed at least once: the coupon shows it lasts
            return signup, signup
        return at, at

    def sign_up(self, at: int, index: int, fate: str | None = None) -> Subscription:
        rng = self.rng
        fate_at = at
        if fate is not None:
            at, fate_at = self._fate_time(fate, at)
        currency = "usd"
        roll = rng.random()
        if fate == "jpy" or (fate is None and roll < 0.06):
            currency = "jpy"
        elif fate in ("eur", "tax_inclusive") or (fate is None and roll < 0.2):
            currency = "eur"
        customer = self._customer(at, index, currency)
        self.label(customer, currency)

        trial = fate in ("trial_converting", "trial_no_payment_method", "trial_no_pm_canceled", "paused") or (
            fate is None and rng.random() < 0.22
        )
        has_pm = fate not in ("trial_no_payment_method", "trial_no_pm_canceled", "paused") and not (
            fate is None and trial and rng.random() < 0.3
        )
        if has_pm:
            customer.payment_method = self.new_id("pm_")
        self.emit_obj("customer.created", at, customer, requested=True)

        send_invoice = fate in ("send_invoice_past_due", "uncollectible", "void") or (
            fate is None and rng.random() < 0.07
        )
        if fate in ("upgraded", "many_items"):
            tier = rng.choice((0, 1))
        elif fate in ("downgraded", "seat_change"):
            tier = rng.choice((1, 2)) if fate == "downgraded" else 1
        else:
            tier = rng.choices((0, 1, 2), (40, 42, 18))[0]
        monthly_fates = (
            "dunning_recovered",
            "dunning_unpaid",
            "dunning_canceled",
            "dunning_active",
            "hard_decline",
            "send_invoice_past_due",
            "uncollectible",
            "void",
            "cancel_at_period_end",
            "interval_switch",
            "upgraded",
            "downgraded",
            "seat_change",
            "metered",
            "tiered",
            "many_items",
            "pause_collection",
            "tax_inclusive",
            "weekly",
            "quarterly",
            "item_coupon_forever",
        )
        yearly = fate not in monthly_fates and rng.random() < 0.18
        interval = "year" if yearly else "month"
        use_tiered = (
            currency == "usd"
            and interval == "month"
            and (fate == "tiered" or (fate is None and rng.random() < 0.04))
        )

        sub = Subscription(self.new_id("sub_"), at, self.next_seq(), customer, currency)
        anchor_day = day_of(fate_at if fate in RENEWAL_FATES else at)
        sub.sim = SimState(12 if yearly else 1, anchor_day, fate, fate_at)
        if fate is None:
            sub.sim.card_risk = rng.choices([r for r, _ in CARD_RISKS], [w for _, w in CARD_RISKS])[0]
            sub.sim.unhappiness = BASE_UNHAPPINESS * rng.lognormvariate(0, 0.7)
        if send_invoice:
            sub.collection_method = "send_invoice"
            sub.days_until_due = 30
        special = {"weekly": self.weekly, "quarterly": self.quarterly, "tax_inclusive": self.tax_inclusive}
        if fate in special:
            self.add_item(sub, special[fate], 1 if fate == "weekly" else rng.randint(2, 25), at)
            self.label(customer, fate)
            if fate == "weekly":
                sub.sim.step_days = 7
            elif fate == "quarterly":
                sub.sim.step = 3
            else:
                sub.tax_rates = [self.vat]
        elif use_tiered:
            self.add_item(sub, self.tiered, rng.randint(8, 120), at)
            self.label(customer, "tiered")
        else:
            low, high = LADDER[tier][2]
            self.add_item(sub, self.ladder[tier][currency][interval], rng.randint(low, high), at)
        if (
            currency in self.metered
            and interval == "month"
            and (fate == "metered" or (fate is None and rng.random() < 0.12))
        ):
            self.add_item(sub, self.metered[currency], 0, at)
            self.label(customer, "metered")
        if fate == "many_items" or (
            fate is None and currency == "usd" and interval == "month" and rng.random() < 0.003
        ):
            for add_on in self.add_ons:
                self.add_item(sub, add_on, 1, at)
            self.label(customer, "many_items")

        coupon_kind = None
        if fate in ("coupon_forever", "coupon_once", "coupon_repeating"):
            coupon_kind = fate.removeprefix("coupon_")
        elif fate is None and rng.random() < 0.2:
            coupon_kind = rng.choice(("forever", "once", "repeating"))
        if coupon_kind:
            choices = [c for c in self.coupons[coupon_kind] if c.currency in (None, currency)]
            coupon = rng.choice(choices)
            end = None
            if coupon.duration_in_months:
                end = add_months(at, coupon.duration_in_months, datetime.fromtimestamp(at, UTC).day)
            sub.discounts.append(Discount(self.new_id("di_"), coupon, customer.id, sub.id, at, end))
            coupon.times_redeemed += 1
            coupon.touch()
            self.label(customer, f"coupon_{coupon_kind}")
        if fate == "item_coupon_forever":
            # A forever coupon on the main item, and another on the whole subscription after it.
            main = sub.items[0]
            item_coupon = next(c for c in self.coupons["forever"] if c.currency == currency)
            main.discounts.append(
                Discount(self.new_id("di_"), item_coupon, customer.id, sub.id, at, None, main.id)
            )
            sub_coupon = next(c for c in self.coupons["forever"] if c.percent_off is not None)
            sub.discounts.append(Discount(self.new_id("di_"), sub_coupon, customer.id, sub.id, at, None))
            for coupon in (item_coupon, sub_coupon):
                coupon.times_redeemed += 1
                coupon.touch()
            self.label(customer, "item_coupon_forever")
        if fate == "customer_discount":
            # On the customer, not the subscription: it applies to every invoice of theirs.
            coupon = next(c for c in self.coupons["forever"] if c.currency in (None, currency))
            customer.discount = Discount(self.new_id("di_"), coupon, customer.id, None, at, None)
            coupon.times_redeemed += 1
            coupon.touch()
            customer.touch()
            if self.in_window(at):
                self.emit("customer.discount.created", at, customer.discount.render(), customer=customer.id)
            self.label(customer, "customer_discount")

        self.stores["subscriptions"].add(sub)
        self.subscriptions_of[customer.id].append(sub)
        self.change("signup", sub)
        if trial:
            sub.status = "trialing"
            sub.trial_start = at
            sub.trial_end = at + 14 * DAY
            sub.missing_pm_behavior = "cancel" if not has_pm else "create_invoice"
            if fate == "paused":
                sub.missing_pm_behavior = "pause"
            self.set_period(sub, at, sub.trial_end)
            self.label(customer, "trial")
            if not has_pm and fate != "paused":
                self.label(customer, "trial_no_payment_method")
            self.emit_obj("customer.subscription.created", at, sub, requested=True)
            invoice = self.make_invoice(sub, at, "subscription_create", zero=True)
            self.pay_invoice(sub, invoice, at, None)
            self.schedule(sub, sub.trial_end - 3 * DAY, "trial_will_end")
            self.schedule(sub, sub.trial_end, "trial_end")
        else:
            end = self.period_end(sub, at)
            self.set_period(sub, at, end)
            self.emit_obj("customer.subscription.created", at, sub, requested=True)
            self.bill(sub, at, "subscription_create")
            self.schedule(sub, end, "renew")
        if fate in ("upgraded", "downgraded", "seat_change", "interval_switch", "canceled_immediately"):
            self.schedule(sub, fate_at, fate)
        elif fate == "deleted_customer":
            self.schedule(sub, fate_at - rng.randint(20, 90) * DAY, "canceled_immediately")
            self.schedule(sub, fate_at, "delete_customer")
        elif fate == "cancel_at_period_end":
            self.schedule(sub, fate_at + rng.randint(2, 12) * DAY, "cancel_at_period_end")
        elif fate == "pause_collection":
            behavior = ("void", "keep_as_draft")[self._fate_counts[fate] % 2]
            self.schedule(sub, fate_at, "pause_collection", behavior)
        return sub

    def add_item(self, sub: Subscription, price: Price, quantity: int, at: int) -> SubscriptionItem:
        item = SubscriptionItem(self.new_id("si_", 14), at, self.next_seq(), price, quantity, sub)
        sub.items.append(item)
        self.stores["subscription_items"].by_id[item.id] = item
        return item

    def set_period(self, sub: Subscription, start: int, end: int) -> None:
        for item in sub.items:
            item.period_start = start
            item.period_end = end
            item.touch()

    def period_end(self, sub: Subscription, start: int) -> int:
        step_days: int = sub.sim.step_days
        if step_days:
            return start + step_days * DAY
        return add_months(start, sub.sim.step, sub.sim.anchor_day)

    def schedule(self, sub: Subscription, at: int, kind: str, data: Any = None) -> None:
        heapq.heappush(sub.sim.agenda, (at, self.next_seq(), kind, data))

    def drop_from_agenda(self, sub: Subscription, drop: Callable[[str], bool]) -> None:
        """Remove the entries whose kind `drop(kind)` is true. The list is changed in place, never
        replaced: run() holds it, and entries left in a stale copy would fire later at past times."""
        agenda = sub.sim.agenda
        agenda[:] = [entry for entry in agenda if not drop(entry[2])]
        heapq.heapify(agenda)

    # ---- running time ------------------------------------------------------------------------
    def run(self, sub: Subscription, until: int) -> None:
        agenda = sub.sim.agenda
        while agenda and agenda[0][0] <= until:
            at, _seq, kind, data = heapq.heappop(agenda)
            if at <= self.history_end:  # a bug, not bad luck: say so rather than rewrite the past
                raise RuntimeError(f"{kind} for {sub.id} at {at}: before the advance began")
            if sub.status in ("canceled", "incomplete_expired") and kind != "delete_customer":
                continue
            getattr(self, "do_" + kind)(sub, at, data)

    def advance(self, days: float) -> AdvanceSummary:
        if not days > 0:
            raise ValueError("days must be more than 0")
        start, end = self.now, self.now + int(days * DAY)
        summary = self.summary = AdvanceSummary()
        self.event_cutoff = max(start, end - EVENT_RETENTION)
        self.history_end = start
        try:
            self.now = end
            for customer in list(self.customers):
                for sub in self.subscriptions_of[customer.id]:
                    if sub.sim.agenda and sub.sim.agenda[0][0] <= end:
                        self.run(sub, end)
            # New sign-ups: about the book's recent growth rate.
            rate = max(1.0, len(self.customers) / 500)
            signups = int(rate * days + self.rng.random())
            for _ in range(signups):
                at = start + 1 + int(self.rng.random() * (end - start - 1))  # inside (start, end]
                sub = self.sign_up(at, len(self.customers))
                self.run(sub, end)
            self.event_cutoff = end - EVENT_RETENTION
            summary.changes["events_expired"] = self.stores["events"].drop_before(self.event_cutoff)
            for store in self.stores.values():
                store.sorted()
        finally:
            self.summary = None
            self.history_end = 0
        return summary

    def roll(self) -> float:
        return self.rng.random()

    # ---- billing -----------------------------------------------------------------------------
    def make_invoice(
        self,
        sub: Subscription,
        at: int,
        reason: str,
        zero: bool = False,
        finalize: bool = True,
        prorations: list[InvoiceLine] | None = None,
    ) -> Invoice:
        """A subscription invoice: created, then (unless `finalize` is false) finalized at once. With
        `prorations`, it bills those lines only (a mid-period change invoiced at once)."""
        customer = sub.customer
        invoice = Invoice(self.new_id("in_"), at, self.next_seq(), customer, sub.id, sub.currency)
        invoice.billing_reason = reason
        invoice.collection_method = sub.collection_method
        invoice.tax_rates = list(sub.tax_rates)
        invoice.lines.extend(prorations or [])
        last_bill = sub.sim.last_bill
        for item in [] if prorations else sub.items:
            price = item.price
            start, end = item.period_start, item.period_end
            if price.usage_type == "metered":
                if zero or last_bill is None:
                    continue
                usage = self.rng.randint(50, 2000)
                amount, quantity, start, end = price.amount_for(usage), usage, last_bill, at
                description = f"{usage * 10} API calls"
            elif zero:
                quantity, amount = item.quantity, 0
                description = f"Trial period for {self.product_name(price)}"
            else:
                quantity = item.quantity
                amount = price.amount_for(quantity)
                every = (
                    price.interval
                    if price.interval_count == 1
                    else f"{price.interval_count} {price.interval}s"
                )
                description = f"{quantity} × {self.product_name(price)} (per {every})"
            line = InvoiceLine(self.new_id("il_"), price, quantity, amount, start, end, description, item.id)
            # An item's own discounts come off its line first (PERLY_CONTRACT section 3).
            line.discount_amounts = [
                (found.id, found.coupon.discount_on(amount))
                for found in item.discounts
                if amount > 0 and (found.end is None or found.end > at)
            ]
            invoice.lines.append(line)
        invoice.subtotal = sum(line.amount for line in invoice.lines)
        invoice.discount_amount = invoice.item_discount_amount
        # A customer's own discount applies only where the subscription has none (as on Stripe).
        discount = sub.discounts[0] if sub.discounts else customer.discount
        if discount is not None and invoice.subtotal:
            if discount.end is None or discount.end > at:
                invoice.discount_amount += discount.coupon.discount_on(
                    invoice.subtotal - invoice.discount_amount
                )
                invoice.discount_ids = [discount.id]
                if discount.coupon.duration == "once":
                    self.consume(sub, discount, at)
        invoice.period_start = invoice.period_end = at
        if not zero and not prorations:
            sub.sim.last_bill = at
        sub.sim.invoices.append(invoice)
        self.stores["invoices"].add(invoice)
        sub.latest_invoice = invoice.id
        sub.touch()
        self.emit_obj("invoice.created", at, invoice)
        if not finalize:
            self.change("invoice", invoice)
            return invoice
        invoice.status = "open"
        # Finalizing applies the customer's credit balance (and keeps a credit total as credit).
        invoice.starting_balance = customer.balance
        # Numbers are given at finalization: a draft kept back does not use one up.
        invoice.number = f"{customer.invoice_prefix}-{customer.next_invoice_sequence:04d}"
        customer.next_invoice_sequence += 1
        customer.touch()
        invoice.finalized_at = at
        if invoice.collection_method == "send_invoice":
            invoice.due_date = at + (sub.days_until_due or 30) * DAY
        self.emit_obj("invoice.finalized", at, invoice)
        self.set_balance(customer, invoice.ending_balance, at)
        if invoice.collection_method == "send_invoice":
            self.emit_obj("invoice.sent", at, invoice)
        self.change("invoice", invoice)
        return invoice

    def consume(self, sub: Subscription, discount: Discount, at: int) -> None:
        """A `once` discount is gone as soon as an invoice has used it (as on Stripe: a subscription
        created with one shows no discount once its first invoice is made)."""
        if discount in sub.discounts:
            self.update_subscription(sub, at, lambda: sub.discounts.remove(discount))
            return
        customer = sub.customer
        customer.discount = None
        customer.touch()
        if self.in_window(at):
            self.emit("customer.discount.deleted", at, discount.render(), customer=customer.id)

    def set_balance(self, customer: Customer, balance: int, at: int) -> None:
        """The customer's credit balance moves (an invoice used or added credit): `customer.updated`."""
        if balance == customer.balance:
            return
        previous = customer.balance
        customer.balance = balance
        customer.touch()
        if self.in_window(at):
            rendered = customer.render(self)
            self.emit("customer.updated", at, rendered, {"balance": previous}, False, customer.id)

    def product_name(self, price: Price) -> str:
        product = self.stores["products"].by_id[price.product]
        return product.name  # type: ignore[attr-defined, no-any-return]

    def charge(self, sub: Subscription, invoice: Invoice, at: int, decline: str | None) -> Charge:
        customer = sub.customer
        charge = Charge(
            self.new_id("ch_"),
            at,
            self.next_seq(),
            customer,
            invoice.amount_due,
            invoice.currency,
            decline,
            customer.payment_method or self.new_id("pm_"),
            "Subscription creation"
            if invoice.billing_reason == "subscription_create"
            else "Subscription update",
            self.new_id("pi_"),
        )
        self.stores["charges"].add(charge)
        self.emit_obj("charge.succeeded" if decline is None else "charge.failed", at, charge)
        self.change("charge", charge)
        return charge

    def pay_invoice(self, sub: Subscription, invoice: Invoice, at: int, decline: str | None) -> bool:
        """One payment attempt on an open invoice (a charge when there is something to pay)."""
        if invoice.amount_due > 0:
            invoice.attempt_count += 1
            self.charge(sub, invoice, at, decline)
        if decline is not None and invoice.amount_due > 0:
            invoice.touch()
            self.emit_obj("invoice.payment_failed", at, invoice)
            return False
        invoice.status = "paid"
        invoice.amount_paid = invoice.amount_due
        invoice.paid_at = at
        invoice.next_payment_attempt = None
        invoice.touch()
        self.emit_obj("invoice.paid", at, invoice)
        self.emit_obj("invoice.payment_succeeded", at, invoice)
        self.change("invoice_paid", invoice)
        return True

    def bill(self, sub: Subscription, at: int, reason: str) -> None:
        """Invoice the current period and collect it (or send it)."""
        paused = sub.pause_collection
        invoice = self.make_invoice(sub, at, reason, finalize=paused != "keep_as_draft")
        if paused is not None:  # collection paused: the invoice stays a draft or is voided at once
            if paused == "void":
                self.void_invoice(invoice, at)
            return
        pay_at = at  # created, finalized and charged in the same second: nothing lands after now
        if sub.collection_method == "send_invoice":
            self.plan_send_invoice(sub, invoice, at)
            return
        decline = self.decide_failure(sub, invoice, at, reason)
        if decline is None:
            self.pay_invoice(sub, invoice, pay_at, None)
            self.maybe_random_change(sub, at)
        else:
            self.pay_invoice(sub, invoice, pay_at, decline)
            self.start_dunning(sub, invoice, pay_at, decline)

    def decide_failure(self, sub: Subscription, invoice: Invoice, at: int, reason: str) -> str | None:
        sim = sub.sim
        if invoice.amount_due == 0 or not sub.customer.payment_method:
            return None
        fate = sim.fate
        if fate in (
            "dunning_recovered",
            "dunning_unpaid",
            "dunning_canceled",
            "dunning_active",
            "hard_decline",
        ):
            if abs(at - sim.fate_at) < 2 * DAY:
                return self.rng.choice(HARD_DECLINES if fate == "hard_decline" else SOFT_DECLINES)
            return None
        if sim.random and reason != "subscription_create" and self.roll() < sim.card_risk:
            return self.rng.choice(HARD_DECLINES) if self.roll() < 0.2 else self.rng.choice(SOFT_DECLINES)
        return None

    def start_dunning(self, sub: Subscription, invoice: Invoice, at: int, decline: str) -> None:
        sim = sub.sim
        hard = decline in HARD_DECLINES
        fate = sim.fate
        if fate in ("dunning_recovered", "dunning_unpaid", "dunning_canceled"):
            outcome = fate.removeprefix("dunning_")
        elif fate in ("dunning_active", "hard_decline"):
            outcome = "active"
        elif hard:
            outcome = self.rng.choice(("unpaid", "canceled"))
        else:
            weights = REPEATED_DUNNING if sim.troubles else FIRST_DUNNING
            outcome = self.rng.choices(("recovered", "canceled", "unpaid"), weights)[0]
        sim.troubles += 1
        sim.unhappiness += PAYMENT_TROUBLE_UNHAPPINESS if sim.random else 0.0
        recover_at = self.rng.randint(0, len(RETRY_DAYS) - 1)
        sim.dunning = Dunning(invoice, outcome, hard, recover_at, at)
        self.label(sub.customer, "dunning")
        self.label(sub.customer, "dunning_active")
        if hard:
            self.label(sub.customer, "hard_decline")
        invoice.next_payment_attempt = at + RETRY_DAYS[0] * DAY
        invoice.touch()
        if sub.status == "active":
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "past_due"))
        sub.customer.delinquent = True
        sub.customer.touch()
        self.emit_obj("customer.updated", at, sub.customer)
        for retry, days in enumerate(RETRY_DAYS):
            self.schedule(sub, at + days * DAY, "retry", retry)
        self.schedule(sub, at + DUNNING_DAYS * DAY, "dunning_end")
        self.change("payment_failed", invoice)

    def do_retry(self, sub: Subscription, at: int, retry: int) -> None:
        dunning = sub.sim.dunning
        if dunning is None or dunning.invoice.status != "open":
            return
        invoice = dunning.invoice
        succeed = dunning.outcome == "recovered" and retry == dunning.recover_at_retry
        decline = None if succeed else self.rng.choice(HARD_DECLINES if dunning.hard else SOFT_DECLINES)
        is_last = retry == len(RETRY_DAYS) - 1
        invoice.next_payment_attempt = None if is_last else dunning.started + RETRY_DAYS[retry + 1] * DAY
        if self.pay_invoice(sub, invoice, at, decline):
            self.end_dunning(sub, at, recovered=True)
        else:
            self.change("payment_failed", invoice)

    def end_dunning(self, sub: Subscription, at: int, recovered: bool) -> None:
        customer = sub.customer
        sub.sim.dunning = None
        self.unlabel(customer, "dunning_active")
        customer.delinquent = False
        customer.touch()
        self.emit_obj("customer.updated", at, customer)
        if recovered:
            self.label(customer, "dunning_recovered")
            self.change("recovered", sub)
            if sub.status == "past_due":
                self.update_subscription(sub, at, lambda: setattr(sub, "status", "active"))

    def do_dunning_end(self, sub: Subscription, at: int, data: Any) -> None:
        dunning = sub.sim.dunning
        if dunning is None or dunning.outcome in ("recovered", "active"):
            return
        invoice, customer = dunning.invoice, sub.customer
        sub.sim.dunning = None
        self.unlabel(customer, "dunning_active")
        if dunning.outcome == "unpaid":
            self.label(customer, "dunning_unpaid")
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "unpaid"))
            self.change("unpaid", sub)
            return
        self.label(customer, "dunning_canceled")
        if self.roll() < 0.5 and invoice.status == "open":
            self.mark_uncollectible(invoice, at)
        self.cancel(sub, at, "payment_failed", requested=False)

    def mark_uncollectible(self, invoice: Invoice, at: int) -> None:
        invoice.status = "uncollectible"
        invoice.uncollectible_at = at
        invoice.next_payment_attempt = None
        invoice.touch()
        self.label(invoice.customer, "uncollectible")
        self.emit_obj("invoice.marked_uncollectible", at, invoice)
        self.change("uncollectible", invoice)

    def cancel(self, sub: Subscription, at: int, reason: str | None, requested: bool) -> None:
        sub.status = "canceled"
        sub.canceled_at = sub.canceled_at or at
        sub.ended_at = at
        sub.cancel_reason = reason
        # Nothing more happens to a canceled subscription, except its customer being deleted later.
        # In place: run() may be walking this very list.
        self.drop_from_agenda(sub, lambda kind: kind != "delete_customer")
        sub.touch()
        self.emit_obj("customer.subscription.deleted", at, sub, requested=requested)
        self.change("canceled", sub)
        if sub.sim.dunning is None and sub.customer.delinquent:
            sub.customer.delinquent = False
            sub.customer.touch()

    # ---- send_invoice collection -----------------------------------------------------------
    def plan_send_invoice(self, sub: Subscription, invoice: Invoice, at: int) -> None:
        sim = sub.sim
        due = invoice.due_date or at
        fate = sim.fate
        if fate in ("send_invoice_past_due", "uncollectible") and abs(at - sim.fate_at) < 2 * DAY:
            sim.stuck = True
            self.label(sub.customer, "send_invoice_past_due")
        if sim.stuck:
            self.schedule(sub, due + HOUR, "invoice_overdue", invoice)
            if fate == "uncollectible" and abs(at - sim.fate_at) < 2 * DAY:
                self.schedule(sub, due + 40 * DAY, "invoice_uncollectible", invoice)
            return
        if fate == "void" and abs(at - sim.fate_at) < 2 * DAY:
            self.schedule(sub, at + self.rng.randint(2, 6) * DAY, "invoice_void", invoice)
            return
        roll = self.roll() if sim.random else 1.0
        if roll < 0.02:
            self.schedule(sub, at + self.rng.randint(2, 10) * DAY, "invoice_void", invoice)
        elif roll < 0.12:
            self.schedule(sub, due + HOUR, "invoice_overdue", invoice)
            self.schedule(sub, due + self.rng.randint(3, 20) * DAY, "invoice_paid_late", invoice)
        else:
            self.schedule(sub, at + self.rng.randint(1, 25) * DAY, "invoice_paid_late", invoice)
            self.maybe_random_change(sub, at)

    def do_invoice_paid_late(self, sub: Subscription, at: int, invoice: Invoice) -> None:
        if invoice.status != "open":
            return
        self.pay_invoice(sub, invoice, at, None)
        if sub.status == "past_due" and not self.open_overdue(sub, at):
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "active"))

    def open_overdue(self, sub: Subscription, at: int) -> bool:
        return any(
            inv.status == "open" and inv.due_date is not None and inv.due_date < at
            for inv in sub.sim.invoices
        )

    def do_invoice_overdue(self, sub: Subscription, at: int, invoice: Invoice) -> None:
        if invoice.status != "open":
            return
        self.emit_obj("invoice.overdue", at, invoice)
        self.change("overdue", invoice)
        if sub.status == "active":
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "past_due"))

    def do_invoice_uncollectible(self, sub: Subscription, at: int, invoice: Invoice) -> None:
        if invoice.status == "open":
            self.mark_uncollectible(invoice, at)
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "unpaid"))

    def do_invoice_void(self, sub: Subscription, at: int, invoice: Invoice) -> None:
        if invoice.status != "open":
            return
        self.label(sub.customer, "void")
        self.void_invoice(invoice, at)

    def void_invoice(self, invoice: Invoice, at: int) -> None:
        # The credit it used (or added) goes back to what it was without it.
        customer = invoice.customer
        self.set_balance(customer, customer.balance - (invoice.ending_balance - invoice.starting_balance), at)
        invoice.status = "void"
        invoice.voided_at = at
        invoice.next_payment_attempt = None
        invoice.touch()
        self.emit_obj("invoice.voided", at, invoice)
        self.change("voided", invoice)

    # ---- lifecycle actions -------------------------------------------------------------------
    def do_trial_will_end(self, sub: Subscription, at: int, data: Any) -> None:
        if sub.status == "trialing":
            self.emit_obj("customer.subscription.trial_will_end", at, sub)

    def do_trial_end(self, sub: Subscription, at: int, data: Any) -> None:
        if sub.status != "trialing":
            return
        customer = sub.customer
        if customer.payment_method is None and sub.missing_pm_behavior == "pause":
            self.update_subscription(sub, at, lambda: setattr(sub, "status", "paused"))
            self.emit_obj("customer.subscription.paused", at, sub)
            self.label(customer, "paused")
            self.change("paused", sub)
            return
        if customer.payment_method is None and sub.missing_pm_behavior == "cancel":
            self.label(customer, "trial_canceled")
            # Stripe gives no reason here; the event carries the subscription as it is left.
            self.cancel(sub, at, None, requested=False)
            return
        end = self.period_end(sub, at)

        def convert() -> None:
            sub.status = "active"
            sub.billing_cycle_anchor = at
            self.set_period(sub, at, end)

        sub.sim.anchor_day = datetime.fromtimestamp(at, UTC).day
        self.update_subscription(sub, at, convert)
        self.label(customer, "trial_converting")
        self.change("trial_converted", sub)
        self.bill(sub, at, "subscription_cycle")
        self.schedule(sub, end, "renew")

    def do_renew(self, sub: Subscription, at: int, data: Any) -> None:
        if sub.status not in ("active", "past_due"):
            return
        if sub.cancel_at_period_end:
            self.cancel(sub, at, "cancellation_requested", requested=False)
            return
        end = self.period_end(sub, at)

        def roll_period() -> None:
            self.set_period(sub, at, end)
            # A `repeating` coupon ends when its months are up (a `once` one went with its invoice).
            sub.discounts = [d for d in sub.discounts if d.end is None or d.end > at]

        self.update_subscription(sub, at, roll_period)
        self.change("renewal", sub)
        self.bill(sub, at, "subscription_cycle")
        self.schedule(sub, end, "renew")

    def maybe_random_change(self, sub: Subscription, at: int) -> None:
        """After a paid renewal, sometimes plan a change before the next one: leaving (likelier the
        unhappier the customer, and early in its life), shrinking first, or an everyday change."""
        sim = sub.sim
        if not sim.random:
            return
        roll = self.roll()
        span = max(1, (sub.items[0].period_end - at) // DAY - 2)
        when = at + self.rng.randint(1, span) * DAY + self.rng.randint(0, 23) * HOUR
        months = sim.step_days / 30 if sim.step_days else sim.step
        early = EARLY_LIFE_FACTOR if at - sub.created < 90 * DAY else 1.0
        leave = min(0.5, 1 - (1 - sim.unhappiness * early) ** months)  # per period, from per month
        shrink = min(0.3, SHRINK_BEFORE_LEAVING * sim.unhappiness)
        if roll < leave:
            leaving = "cancel_at_period_end" if self.roll() < LEAVE_AT_PERIOD_END else "canceled_immediately"
            self.schedule(sub, when, leaving)
            return
        roll -= leave
        if roll < shrink:
            self.schedule(sub, when, "downgraded" if self.roll() < 0.4 else "seat_change", "fewer")
            return
        roll -= shrink
        for kind, threshold in (
            ("upgraded", 0.02),
            ("downgraded", 0.026),
            ("seat_change", 0.063),
            ("interval_switch", 0.068),
        ):
            if roll < threshold:
                self.schedule(sub, when, kind)
                return

    def do_pause_collection(self, sub: Subscription, at: int, behavior: str) -> None:
        if sub.status != "active" or sub.pause_collection is not None:
            return

        def pause() -> None:
            sub.pause_collection = behavior

        self.update_subscription(sub, at, pause, requested=True)
        self.label(sub.customer, "pause_collection")
        self.label(sub.customer, f"pause_collection_{behavior}")
        self.change("collection_paused", sub)

    def do_cancel_at_period_end(self, sub: Subscription, at: int, data: Any) -> None:
        if sub.cancel_at_period_end or not sub.items:
            return
        end = sub.items[0].period_end

        def request() -> None:
            sub.cancel_at_period_end = True
            sub.cancel_at = end
            sub.canceled_at = at
            sub.cancel_reason = "cancellation_requested"

        self.update_subscription(sub, at, request, requested=True)
        self.label(sub.customer, "cancel_at_period_end")
        self.change("cancel_requested", sub)
        if sub.sim.random and end - at > 2 * DAY and self.roll() < REVOKE_SCHEDULED:
            self.schedule(sub, at + self.rng.randint(1, (end - at) // DAY - 1) * DAY, "revoke_cancellation")

    def do_revoke_cancellation(self, sub: Subscription, at: int, data: Any) -> None:
        """The customer changed its mind: the scheduled cancellation is taken back."""
        if not sub.cancel_at_period_end or sub.status not in ("active", "past_due"):
            return

        def revoke() -> None:
            sub.cancel_at_period_end = False
            sub.cancel_at = None
            sub.canceled_at = None
            sub.cancel_reason = None

        self.update_subscription(sub, at, revoke, requested=True)
        self.unlabel(sub.customer, "cancel_at_period_end")
        self.label(sub.customer, "cancellation_revoked")
        self.change("cancel_revoked", sub)

    def do_canceled_immediately(self, sub: Subscription, at: int, data: Any) -> None:
        self.label(sub.customer, "canceled_immediately")
        self.cancel(sub, at, "cancellation_requested", requested=True)

    def _main_item(self, sub: Subscription) -> SubscriptionItem | None:
        for item in sub.items:
            if item.price.usage_type == "licensed" and item.price in self._ladder_prices():
                return item
        return None

    def _ladder_prices(self) -> set[Price]:
        cached = getattr(self, "_ladder_set", None)
        if cached is None:
            cached = {p for tier in self.ladder for cur in tier.values() for p in cur.values()}
            self._ladder_set = cached
        return cached

    def _tier_of(self, price: Price) -> int:
        for rank, tier in enumerate(self.ladder):
            if price in tier[price.currency].values():
                return rank
        return -1

    def do_upgraded(self, sub: Subscription, at: int, data: Any) -> None:
        self._move_tier(sub, at, +1)

    def do_downgraded(self, sub: Subscription, at: int, data: Any) -> None:
        self._move_tier(sub, at, -1)

    def _move_tier(self, sub: Subscription, at: int, step: int) -> None:
        item = self._main_item(sub)
        if item is None or sub.status != "active":
            return
        rank = self._tier_of(item.price) + step
        if not 0 <= rank < len(self.ladder):
            return
        new_price = self.ladder[rank][sub.currency][item.price.interval]
        low, high = LADDER[rank][2]
        quantity = min(max(item.quantity, low), high)

        def switch() -> None:
            item.price = new_price
            item.quantity = quantity

        old_price, old_quantity = item.price, item.quantity
        self.update_subscription(sub, at, switch, requested=True)
        self._feel(sub, DOWNGRADE_UNHAPPINESS if step < 0 else None)
        self.label(sub.customer, "upgraded" if step > 0 else "downgraded")
        self.change("upgraded" if step > 0 else "downgraded", sub)
        self.invoice_proration(sub, item, at, old_price, old_quantity)

    def do_seat_change(self, sub: Subscription, at: int, data: Any) -> None:
        item = self._main_item(sub)
        if item is None or sub.status != "active":
            return
        rank = self._tier_of(item.price)
        low, high = LADDER[rank][2]
        if low == high:
            return
        delta = self.rng.choice((-3, -2, -1) if data == "fewer" else (-3, -2, -1, 1, 2, 3, 5))
        quantity = min(max(item.quantity + delta, low), high)
        if quantity == item.quantity:
            quantity = item.quantity + 1 if item.quantity < high else item.quantity - 1
        self._feel(sub, SEAT_CUT_UNHAPPINESS if quantity < item.quantity else None)

        def seats() -> None:
            item.quantity = quantity

        old_quantity = item.quantity
        self.update_subscription(sub, at, seats, requested=True)
        self.label(sub.customer, "seat_change")
        self.change("seat_change", sub)
        self.invoice_proration(sub, item, at, item.price, old_quantity)

    def _feel(self, sub: Subscription, worse: float | None) -> None:
        """A random customer's unhappiness after a change: up by `worse`, else relieved (it grew)."""
        if sub.sim.random:
            sub.sim.unhappiness = (
                sub.sim.unhappiness + worse if worse else sub.sim.unhappiness * UPGRADE_RELIEF
            )

    def invoice_proration(
        self, sub: Subscription, item: SubscriptionItem, at: int, old_price: Price, old_quantity: int
    ) -> None:
        """A mid-period change invoiced at once for the rest of the period (Stripe's
        `proration_behavior=always_invoice`): a credit line for the old price's unused time and a line
        for the new one's. An upgrade is charged; a downgrade's credit total becomes customer credit
        that the next invoices use up. Subscriptions paid by sent invoice are not prorated (`none`)."""
        start, end = item.period_start, item.period_end
        old_amount = old_price.amount_for(old_quantity)
        new_amount = item.price.amount_for(item.quantity)
        if (
            new_amount == old_amount
            or not start < at < end
            or sub.collection_method != "charge_automatically"
            or sub.pause_collection is not None
        ):
            return
        left = Fraction(end - at, end - start)
        after = datetime.fromtimestamp(at, UTC).strftime("%d %b %Y")
        lines = [
            InvoiceLine(
                self.new_id("il_"),
                price,
                quantity,
                sign * round(amount * left),
                at,
                end,
                f"{what} time on {quantity} × {self.product_name(price)} after {after}",
                item.id,
                invoice_item=self.new_id("ii_"),
            )
            for price, quantity, amount, sign, what in (
                (old_price, old_quantity, old_amount, -1, "Unused"),
                (item.price, item.quantity, new_amount, 1, "Remaining"),
            )
        ]
        invoice = self.make_invoice(sub, at, "subscription_update", prorations=lines)
        self.pay_invoice(sub, invoice, at, None)

    def do_interval_switch(self, sub: Subscription, at: int, data: Any) -> None:
        item = self._main_item(sub)
        if item is None or sub.status != "active" or item.price.interval != "month":
            return
        rank = self._tier_of(item.price)
        yearly = self.ladder[rank][sub.currency]["year"]
        self.drop_from_agenda(sub, lambda kind: kind == "renew")
        sub.sim.step = 12
        sub.sim.anchor_day = datetime.fromtimestamp(at, UTC).day
        end = self.period_end(sub, at)
        metered = [i for i in sub.items if i.price.usage_type == "metered"]

        def switch() -> None:
            item.price = yearly
            sub.billing_cycle_anchor = at
            for gone in metered:  # metered prices are monthly; they cannot stay on a yearly cycle
                sub.items.remove(gone)
                self.stores["subscription_items"].by_id.pop(gone.id, None)
            self.set_period(sub, at, end)

        self.update_subscription(sub, at, switch, requested=True)
        self.label(sub.customer, "interval_switch")
        self.change("interval_switch", sub)
        self.bill(sub, at, "subscription_update")
        self.schedule(sub, end, "renew")

    def do_delete_customer(self, sub: Subscription, at: int, data: Any) -> None:
        customer = sub.customer
        if customer.deleted:
            return
        for other in self.subscriptions_of[customer.id]:
            if other.status != "canceled":
                self.cancel(other, at, "cancellation_requested", requested=False)
        self.label(customer, "deleted_customer")
        self.delete_object(customer, "customer", at)
        self.change("customer_deleted", customer)

    # ---- queries ------------------------------------------------------------------------------
    def scenarios(self) -> dict[str, set[str]]:
        result = {cid: set(labels) for cid, labels in self.labels.items()}
        now = self.now
        for customer in self.customers:
            labels = result.setdefault(customer.id, set())
            subs = self.subscriptions_of[customer.id]
            if any(s.status == "trialing" for s in subs):
                labels.add("trialing")
            if any(s.status == "past_due" for s in subs):
                labels.add("past_due")
            if any(s.status == "unpaid" for s in subs):
                labels.add("unpaid")
            if any(s.sim.step == 12 for s in subs):
                labels.add("annual")
        for obj in self.stores["invoices"].objects:
            invoice: Invoice = obj  # type: ignore[assignment]
            if (
                invoice.status == "open"
                and invoice.due_date is not None
                and now - invoice.due_date > 30 * DAY
            ):
                result[invoice.customer.id].add("past_due_aging")
        return result
