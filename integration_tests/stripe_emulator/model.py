"""Compact in-memory Stripe objects and their rendering at API version 2026-10-28.endive.

Each object keeps only the state the simulation changes; `render()` builds the full Stripe dict. Pages
are built from cached JSON bytes (`json_bytes`), so every mutation must call `touch()`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

# The version Perly pins is the one the emulator renders (and stamps on its events).
from stripe_vocabulary import API_VERSION

ACCOUNT_ID = "acct_1PerlyEmu1atorX"

Json = dict[str, Any]


# Rendered JSON is cached per object, but only for the most recently rendered CACHE_LIMIT objects, so a
# full pass over a 50,000-customer book does not keep gigabytes of bytes alive.
CACHE_LIMIT = 150_000
_cached: deque[StripeObject] = deque()


class StripeObject:
    """Base: every listable object has an id, a created time and a global insertion sequence."""

    __slots__ = ("id", "created", "seq", "deleted", "_cache")
    object_name = ""
    customer_id: str | None = None

    def __init__(self, id: str, created: int, seq: int) -> None:
        self.id = id
        self.created = created
        self.seq = seq
        self.deleted = False
        self._cache: dict[str, bytes] | None = None

    def touch(self) -> None:
        self._cache = None

    def render(self, book: Any, variant: str = "") -> Json:
        raise NotImplementedError

    def json_bytes(self, book: Any, variant: str = "") -> bytes:
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
            _cached.append(self)
            if len(_cached) > CACHE_LIMIT:
                _cached.popleft()._cache = None
        data = cache.get(variant)
        if data is None:
            data = cache[variant] = orjson.dumps(self.render(book, variant))
        return data

    def tombstone(self) -> Json:
        return {"id": self.id, "object": self.object_name, "deleted": True}


def sublist(url: str, data: list[Json], has_more: bool) -> Json:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


class Product(StripeObject):
    __slots__ = ("name", "description", "active", "default_price", "updated", "metadata")
    object_name = "product"

    def __init__(self, id: str, created: int, seq: int, name: str, description: str) -> None:
        super().__init__(id, created, seq)
        self.name = name
        self.description = description
        self.active = True
        self.default_price: str | None = None
        self.updated = created
        self.metadata: dict[str, str] = {}

    def render(self, book: Any, variant: str = "") -> Json:
        return {
            "id": self.id,
            "object": "product",
            "active": self.active,
            "created": self.created,
            "default_price": self.default_price,
            "description": self.description,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": self.metadata,
            "name": self.name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": self.updated,
            "url": None,
        }


class Price(StripeObject):
    """A recurring price; also served as a plan (Stripe exposes recurring prices on /v1/plans)."""

    __slots__ = (
        "product",
        "currency",
        "unit_amount",
        "interval",
        "interval_count",
        "usage_type",
        "tiers",
        "tiers_mode",
        "lookup_key",
        "nickname",
        "active",
        "meter",
        "metadata",
        "tax_behavior",
    )
    object_name = "price"

    def __init__(
        self,
        id: str,
        created: int,
        seq: int,
        product: str,
        currency: str,
        unit_amount: int | None,
        interval: str,
        *,
        usage_type: str = "licensed",
        tiers: list[tuple[int | None, int, int | None]] | None = None,
        lookup_key: str | None = None,
        nickname: str | None = None,
        meter: str | None = None,
        interval_count: int = 1,
        tax_behavior: str = "exclusive",
    ) -> None:
        super().__init__(id, created, seq)
        self.product = product
        self.currency = currency
        self.unit_amount = unit_amount
        self.interval = interval
        self.interval_count = interval_count
        self.usage_type = usage_type
        self.tiers = tiers  # (up_to, unit_amount, flat_amount) for graduated prices
        self.tiers_mode = "graduated" if tiers else None
        self.lookup_key = lookup_key
        self.nickname = nickname
        self.active = True
        self.meter = meter
        self.metadata: dict[str, str] = {}
        self.tax_behavior = tax_behavior

    def amount_for(self, quantity: int) -> int:
        """The period amount for `quantity` units (graduated tiers as Stripe computes them)."""
        if not self.tiers:
            return (self.unit_amount or 0) * quantity
        total, below = 0, 0
        for up_to, unit, flat in self.tiers:
            if quantity <= below:
                break
            top = quantity if up_to is None else min(quantity, up_to)
            total += (top - below) * unit + (flat or 0)
            below = top
        return total

    def render_tiers(self) -> list[Json]:
        return [
            {
                "flat_amount": flat,
                "flat_amount_decimal": None if flat is None else str(flat),
                "unit_amount": unit,
                "unit_amount_decimal": str(unit),
                "up_to": up_to,
            }
            for up_to, unit, flat in self.tiers or []
        ]

    def render(self, book: Any, variant: str = "") -> Json:
        data: Json = {
            "id": self.id,
            "object": "price",
            "active": self.active,
            "billing_scheme": "tiered" if self.tiers else "per_unit",
            "created": self.created,
            "currency": self.currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": self.lookup_key,
            "metadata": self.metadata,
            "nickname": self.nickname,
            "product": self.product,
            "recurring": {
                "interval": self.interval,
                "interval_count": self.interval_count,
                "meter": self.meter,
                "trial_period_days": None,
                "usage_type": self.usage_type,
            },
            "tax_behavior": self.tax_behavior,
            "tiers_mode": self.tiers_mode,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": self.unit_amount,
            "unit_amount_decimal": None if self.unit_amount is None else str(self.unit_amount),
        }
        if variant == "tiers":
            data["tiers"] = self.render_tiers()
        return data

    def render_plan(self, variant: str = "") -> Json:
        data: Json = {
            "id": self.id,
            "object": "plan",
            "active": self.active,
            "amount": self.unit_amount,
            "amount_decimal": None if self.unit_amount is None else str(self.unit_amount),
            "billing_scheme": "tiered" if self.tiers else "per_unit",
            "created": self.created,
            "currency": self.currency,
            "interval": self.interval,
            "interval_count": self.interval_count,
            "livemode": False,
            "metadata": self.metadata,
            "meter": self.meter,
            "nickname": self.nickname,
            "product": self.product,
            "tiers_mode": self.tiers_mode,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": self.usage_type,
        }
        if variant == "tiers":
            data["tiers"] = self.render_tiers()
        return data


class Plan(StripeObject):
    """The /v1/plans view of a Price (same id, same lifetime)."""

    __slots__ = ("price",)
    object_name = "plan"

    def __init__(self, price: Price) -> None:
        super().__init__(price.id, price.created, price.seq)
        self.price = price

    def render(self, book: Any, variant: str = "") -> Json:
        return self.price.render_plan(variant)


class Coupon(StripeObject):
    __slots__ = (
        "name",
        "percent_off",
        "amount_off",
        "currency",
        "duration",
        "duration_in_months",
        "times_redeemed",
    )
    object_name = "coupon"

    def __init__(
        self,
        id: str,
        created: int,
        seq: int,
        name: str,
        duration: str,
        *,
        percent_off: float | None = None,
        amount_off: int | None = None,
        currency: str | None = None,
        duration_in_months: int | None = None,
    ) -> None:
        super().__init__(id, created, seq)
        self.name = name
        self.percent_off = percent_off
        self.amount_off = amount_off
        self.currency = currency
        self.duration = duration
        self.duration_in_months = duration_in_months
        self.times_redeemed = 0

    def discount_on(self, subtotal: int) -> int:
        if self.percent_off is not None:
            # Half-up rounding on integer minor units, no floats on money.
            return (subtotal * round(self.percent_off * 100) + 5000) // 10000
        return min(self.amount_off or 0, max(subtotal, 0))  # a fixed amount comes off a charge only

    def render(self, book: Any, variant: str = "") -> Json:
        return {
            "id": self.id,
            "object": "coupon",
            "amount_off": self.amount_off,
            "created": self.created,
            "currency": self.currency,
            "duration": self.duration,
            "duration_in_months": self.duration_in_months,
            "livemode": False,
            "max_redemptions": None,
            "metadata": {},
            "name": self.name,
            "percent_off": self.percent_off,
            "redeem_by": None,
            "times_redeemed": self.times_redeemed,
            "valid": not self.deleted,
        }


class TaxRate:
    """A percentage tax rate, embedded whole where Stripe embeds it (never listed here)."""

    __slots__ = ("id", "created", "display_name", "percentage", "inclusive", "country")

    def __init__(
        self, id: str, created: int, display_name: str, percentage: int, inclusive: bool, country: str
    ) -> None:
        self.id = id
        self.created = created
        self.display_name = display_name
        self.percentage = percentage  # whole percent keeps the arithmetic exact
        self.inclusive = inclusive
        self.country = country

    def tax_in(self, amount: int) -> int:
        """The tax inside a tax-inclusive `amount`, half-up to a minor unit."""
        if not self.inclusive:
            return (amount * self.percentage + 50) // 100
        net = (amount * 100 * 2 + (100 + self.percentage)) // (2 * (100 + self.percentage))
        return amount - net

    def render(self) -> Json:
        return {
            "id": self.id,
            "object": "tax_rate",
            "active": True,
            "country": self.country,
            "created": self.created,
            "description": f"{self.display_name} {self.country}",
            "display_name": self.display_name,
            "effective_percentage": self.percentage,
            "flat_amount": None,
            "inclusive": self.inclusive,
            "jurisdiction": self.country,
            "jurisdiction_level": None,
            "livemode": False,
            "metadata": {},
            "percentage": self.percentage,
            "rate_type": "percentage",
            "state": None,
            "tax_type": "vat",
        }

    def tax_amount(self, amount: int) -> Json:
        tax = self.tax_in(amount)
        return {
            "amount": tax,
            "tax_behavior": "inclusive" if self.inclusive else "exclusive",
            "tax_rate_details": {"tax_rate": self.id},
            "taxability_reason": "standard_rated",
            "taxable_amount": amount - tax if self.inclusive else amount,
            "type": "tax_rate_details",
        }


class Discount:
    __slots__ = ("id", "coupon", "customer", "subscription", "start", "end", "subscription_item")

    def __init__(
        self,
        id: str,
        coupon: Coupon,
        customer: str,
        subscription: str | None,
        start: int,
        end: int | None,
        subscription_item: str | None = None,
    ) -> None:
        self.id = id
        self.coupon = coupon
        self.customer = customer
        self.subscription = subscription
        self.start = start
        self.end = end
        self.subscription_item = subscription_item  # set on a discount of one subscription item

    def render(self, expand_coupon: bool = False, book: Any = None) -> Json:
        return {
            "id": self.id,
            "object": "discount",
            "checkout_session": None,
            "customer": self.customer,
            "end": self.end,
            "invoice": None,
            "invoice_item": None,
            "promotion_code": None,
            # Since 2025-09-30.clover the coupon is an id here unless expanded (it needs Read on Coupons).
            "source": {
                "coupon": self.coupon.render(book) if expand_coupon else self.coupon.id,
                "type": "coupon",
            },
            "start": self.start,
            "subscription": self.subscription,
            "subscription_item": self.subscription_item,
        }


class Customer(StripeObject):
    __slots__ = (
        "email",
        "name",
        "currency",
        "payment_method",
        "invoice_prefix",
        "next_invoice_sequence",
        "delinquent",
        "metadata",
        "index",
        "discount",
        "balance",
    )
    object_name = "customer"

    def __init__(
        self, id: str, created: int, seq: int, index: int, name: str, email: str, currency: str
    ) -> None:
        super().__init__(id, created, seq)
        self.index = index
        self.name = name
        self.email = email
        self.currency = currency
        self.balance = 0  # negative: credit the next invoices use up (from downgrade prorations)
        self.payment_method: str | None = None
        self.invoice_prefix = ""
        self.next_invoice_sequence = 1
        self.delinquent = False
        self.metadata: dict[str, str] = {}
        self.discount: Discount | None = None  # a customer-level discount (all its invoices)

    @property
    def customer_id(self) -> str:  # type: ignore[override]
        return self.id

    def render(self, book: Any, variant: str = "") -> Json:
        return {
            "id": self.id,
            "object": "customer",
            "address": None,
            "balance": self.balance,
            "created": self.created,
            "currency": self.currency,
            "default_source": None,
            "delinquent": self.delinquent,
            "description": None,
            "discount": None if self.discount is None else self.discount.render(),
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": self.payment_method,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": self.metadata,
            "name": self.name,
            "next_invoice_sequence": self.next_invoice_sequence,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }


class SubscriptionItem(StripeObject):
    __slots__ = ("price", "quantity", "subscription", "period_start", "period_end", "discounts")
    object_name = "subscription_item"

    def __init__(
        self, id: str, created: int, seq: int, price: Price, quantity: int, subscription: Subscription
    ) -> None:
        super().__init__(id, created, seq)
        self.price = price
        self.quantity = quantity
        self.subscription = subscription
        self.period_start = created
        self.period_end = created
        self.discounts: list[Discount] = []  # item-level discounts (applied before the subscription's)

    def render(self, book: Any, variant: str = "") -> Json:
        """`variant` holds the expansions asked for, relative to the item: "discounts",
        "discounts.source.coupon", "price.tiers", "price.product" (comma-separated)."""
        wanted = set(variant.split(",")) if variant else set()
        price = self.price.render(book, "tiers" if "price.tiers" in wanted else "")
        if "price.product" in wanted:
            product = book.stores["products"].get(self.price.product)
            price["product"] = product.tombstone() if product.deleted else product.render(book)
        if any(path.startswith("discounts") for path in wanted):  # a deeper path expands its parents
            coupon = "discounts.source.coupon" in wanted
            discounts: list[Any] = [d.render(coupon, book) for d in self.discounts]
        else:
            discounts = [d.id for d in self.discounts]
        data: Json = {
            "id": self.id,
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": self.created,
            "current_period_end": self.period_end,
            "current_period_start": self.period_start,
            "discounts": discounts,
            "metadata": {},
            "plan": self.price.render_plan(),
            "price": price,
        }
        if self.price.usage_type == "licensed":
            data["quantity"] = self.quantity
        data["subscription"] = self.subscription.id
        data["tax_rates"] = []
        return data


ITEMS_EMBEDDED = 20
LINES_EMBEDDED = 10


class Subscription(StripeObject):
    __slots__ = (
        "customer",
        "status",
        "items",
        "discounts",
        "collection_method",
        "days_until_due",
        "trial_start",
        "trial_end",
        "cancel_at_period_end",
        "cancel_at",
        "canceled_at",
        "ended_at",
        "cancel_reason",
        "billing_cycle_anchor",
        "latest_invoice",
        "currency",
        "missing_pm_behavior",
        "metadata",
        "tax_rates",
        "pause_collection",
        "sim",
    )
    object_name = "subscription"

    def __init__(self, id: str, created: int, seq: int, customer: Customer, currency: str) -> None:
        super().__init__(id, created, seq)
        self.customer = customer
        self.currency = currency
        self.status = "active"
        self.items: list[SubscriptionItem] = []
        self.discounts: list[Discount] = []
        self.collection_method = "charge_automatically"
        self.days_until_due: int | None = None
        self.trial_start: int | None = None
        self.trial_end: int | None = None
        self.cancel_at_period_end = False
        self.cancel_at: int | None = None
        self.canceled_at: int | None = None
        self.ended_at: int | None = None
        self.cancel_reason: str | None = None
        self.billing_cycle_anchor = created
        self.latest_invoice: str | None = None
        self.missing_pm_behavior = "create_invoice"
        self.metadata: dict[str, str] = {}
        self.tax_rates: list[TaxRate] = []  # default_tax_rates
        self.pause_collection: str | None = None  # the behavior while collection is paused
        self.sim: Any = None  # simulation state, never rendered

    @property
    def customer_id(self) -> str:  # type: ignore[override]
        return self.customer.id

    def render(self, book: Any, variant: str = "") -> Json:
        """`variant` holds the expansions asked for (comma-separated paths without `data.`), e.g.
        "discounts,items.data.discounts"."""
        wanted = set(variant.split(",")) if variant else set()
        item_variant = ",".join(
            sorted(path[len("items.data.") :] for path in wanted if path.startswith("items.data."))
        )
        items = [item.render(book, item_variant) for item in self.items[:ITEMS_EMBEDDED]]
        if any(path.startswith("discounts") for path in wanted):  # a deeper path expands its parents
            coupon = "discounts.source.coupon" in wanted
            discounts: list[Any] = [d.render(coupon, book) for d in self.discounts]
        else:
            discounts = [d.id for d in self.discounts]
        return {
            "id": self.id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": self.billing_cycle_anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"flexible": None, "type": "classic"},
            "billing_thresholds": None,
            "cancel_at": self.cancel_at,
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": self.canceled_at,
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": self.cancel_reason,
            },
            "collection_method": self.collection_method,
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer.id,
            "days_until_due": self.days_until_due,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [rate.render() for rate in self.tax_rates],
            "description": None,
            "discounts": discounts,
            "ended_at": self.ended_at,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": sublist(
                f"/v1/subscription_items?subscription={self.id}", items, len(self.items) > ITEMS_EMBEDDED
            ),
            "latest_invoice": self.latest_invoice,
            "livemode": False,
            "metadata": self.metadata,
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None
            if self.pause_collection is None
            else {"behavior": self.pause_collection, "resumes_at": None},
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": self.created,
            "status": self.status,
            "test_clock": None,
            "transfer_data": None,
            "trial_end": self.trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": self.missing_pm_behavior}},
            "trial_start": self.trial_start,
        }


class InvoiceLine:
    __slots__ = (
        "id",
        "price",
        "quantity",
        "amount",
        "period_start",
        "period_end",
        "description",
        "item_id",
        "invoice_item",
        "discount_amounts",
    )

    def __init__(
        self,
        id: str,
        price: Price,
        quantity: int,
        amount: int,
        period_start: int,
        period_end: int,
        description: str,
        item_id: str,
        invoice_item: str | None = None,
    ) -> None:
        self.id = id
        self.price = price
        self.quantity = quantity
        self.amount = amount
        self.period_start = period_start
        self.period_end = period_end
        self.description = description
        self.item_id = item_id
        self.invoice_item = invoice_item  # a proration: billed through this pending invoice item
        self.discount_amounts: list[tuple[str, int]] = []  # (discount id, amount) of item discounts

    def render(self, invoice: Invoice) -> Json:
        return {
            "id": self.id,
            "object": "line_item",
            "amount": self.amount,
            "currency": invoice.currency,
            "description": self.description,
            "discount_amounts": [
                {"amount": amount, "discount": did} for did, amount in self.discount_amounts
            ],
            "discountable": True,
            "discounts": [did for did, _ in self.discount_amounts],
            "invoice": invoice.id,
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": self.invoice_item,
                    "proration": self.invoice_item is not None,
                    "proration_details": {"credited_items": None},
                    "subscription": invoice.subscription,
                    "subscription_item": self.item_id,
                },
                "type": "subscription_item_details",
            },
            "period": {"end": self.period_end, "start": self.period_start},
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {"price": self.price.id, "product": self.price.product},
                "type": "price_details",
                "unit_amount_decimal": None
                if self.price.unit_amount is None
                else str(self.price.unit_amount),
            },
            "quantity": self.quantity,
            "subtotal": self.amount,
            "taxes": [rate.tax_amount(self.amount) for rate in invoice.tax_rates],
        }


class Invoice(StripeObject):
    __slots__ = (
        "customer",
        "subscription",
        "currency",
        "status",
        "lines",
        "subtotal",
        "discount_amount",
        "discount_ids",
        "amount_paid",
        "collection_method",
        "due_date",
        "attempt_count",
        "next_payment_attempt",
        "billing_reason",
        "number",
        "finalized_at",
        "paid_at",
        "uncollectible_at",
        "voided_at",
        "period_start",
        "period_end",
        "tax_rates",
        "starting_balance",
    )
    object_name = "invoice"

    def __init__(
        self, id: str, created: int, seq: int, customer: Customer, subscription: str, currency: str
    ) -> None:
        super().__init__(id, created, seq)
        self.customer = customer
        self.subscription = subscription
        self.currency = currency
        self.status = "draft"
        self.lines: list[InvoiceLine] = []
        self.subtotal = 0
        self.discount_amount = 0
        self.discount_ids: list[str] = []
        self.amount_paid = 0
        self.collection_method = "charge_automatically"
        self.due_date: int | None = None
        self.attempt_count = 0
        self.next_payment_attempt: int | None = None
        self.billing_reason = "subscription_cycle"
        self.number: str | None = None
        self.finalized_at: int | None = None
        self.paid_at: int | None = None
        self.uncollectible_at: int | None = None
        self.voided_at: int | None = None
        self.period_start = created
        self.period_end = created
        self.tax_rates: list[TaxRate] = []  # inclusive rates only: the total already holds the tax
        self.starting_balance = 0  # the customer's balance when the invoice was finalized

    @property
    def customer_id(self) -> str:  # type: ignore[override]
        return self.customer.id

    @property
    def item_discount_amount(self) -> int:
        return sum(amount for line in self.lines for _, amount in line.discount_amounts)

    @property
    def total(self) -> int:
        return self.subtotal - self.discount_amount

    @property
    def amount_due(self) -> int:
        """The total less the customer's credit, never below zero (a credit total is kept as credit)."""
        return 0 if self.status == "void" else max(0, self.total + self.starting_balance)

    @property
    def ending_balance(self) -> int:
        """The customer's balance after this invoice: credit left over, or added by a credit total."""
        return min(0, self.total + self.starting_balance)

    def render(self, book: Any, variant: str = "") -> Json:
        total = self.total
        due = self.amount_due
        remaining = 0 if self.status in ("paid", "void", "draft") else due - self.amount_paid
        if self.status == "draft":
            remaining = due
        lines = [line.render(self) for line in self.lines[:LINES_EMBEDDED]]
        customer = self.customer
        taxes = [rate.tax_amount(total) for rate in self.tax_rates]
        tax = sum(t["amount"] for t in taxes)
        subtotal_tax = sum(rate.tax_in(self.subtotal) for rate in self.tax_rates)
        return {
            "id": self.id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Perly Demo SaaS",
            "account_tax_ids": None,
            "amount_due": due,
            "amount_overpaid": 0,
            "amount_paid": self.amount_paid,
            "amount_remaining": remaining,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": self.attempt_count,
            "attempted": self.attempt_count > 0,
            "auto_advance": self.status in ("draft", "open"),
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": self.billing_reason,
            "collection_method": self.collection_method,
            "created": self.created,
            "currency": self.currency,
            "custom_fields": None,
            "customer": customer.id,
            "customer_address": None,
            "customer_email": customer.email,
            "customer_name": customer.name,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": list(self.discount_ids),
            "due_date": self.due_date,
            "effective_at": self.finalized_at,
            "ending_balance": None if self.status == "draft" else self.ending_balance,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None
            if self.status == "draft"
            else f"https://invoice.stripe.com/i/{ACCOUNT_ID}/{self.id}",
            "invoice_pdf": None
            if self.status == "draft"
            else f"https://pay.stripe.com/invoice/{ACCOUNT_ID}/{self.id}/pdf",
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": sublist(f"/v1/invoices/{self.id}/lines", lines, len(self.lines) > LINES_EMBEDDED),
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": self.next_payment_attempt,
            "number": self.number,
            "on_behalf_of": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": self.subscription},
                "type": "subscription_details",
            },
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": self.period_end,
            "period_start": self.period_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": self.starting_balance,
            "statement_descriptor": None,
            "status": self.status,
            "status_transitions": {
                "finalized_at": self.finalized_at,
                "marked_uncollectible_at": self.uncollectible_at,
                "paid_at": self.paid_at,
                "voided_at": self.voided_at,
            },
            "subtotal": self.subtotal,
            "subtotal_excluding_tax": self.subtotal - subtotal_tax,
            "test_clock": None,
            "total": total,
            # Every discount's share: the lines' item discounts, then the invoice's own.
            "total_discount_amounts": [
                {"amount": amount, "discount": did}
                for line in self.lines
                for did, amount in line.discount_amounts
            ]
            + [
                {"amount": self.discount_amount - self.item_discount_amount if i == 0 else 0, "discount": did}
                for i, did in enumerate(self.discount_ids)
            ],
            "total_excluding_tax": total - tax,
            "total_pretax_credit_amounts": [],
            "total_taxes": taxes,
            "webhooks_delivered_at": self.finalized_at,
        }


# failure_code -> (outcome.type, outcome.reason, network_decline_code, seller_message, message, hard)
DECLINES: dict[str, tuple[str, str, str, str, str, bool]] = {
    "insufficient_funds": (
        "issuer_declined",
        "insufficient_funds",
        "51",
        "The bank returned the decline code `insufficient_funds`.",
        "Your card has insufficient funds.",
        False,
    ),
    "do_not_honor": (
        "issuer_declined",
        "do_not_honor",
        "05",
        "The bank returned the decline code `do_not_honor`.",
        "Your card was declined.",
        False,
    ),
    "generic_decline": (
        "issuer_declined",
        "generic_decline",
        "05",
        "The bank did not return any further details with this decline.",
        "Your card was declined.",
        False,
    ),
    "expired_card": (
        "issuer_declined",
        "expired_card",
        "54",
        "The bank returned the decline code `expired_card`.",
        "Your card has expired.",
        True,
    ),
    "stolen_card": (
        "issuer_declined",
        "stolen_card",
        "43",
        "The bank returned the decline code `stolen_card`.",
        "Your card was declined.",
        True,
    ),
    "lost_card": (
        "issuer_declined",
        "lost_card",
        "41",
        "The bank returned the decline code `lost_card`.",
        "Your card was declined.",
        True,
    ),
}


class Charge(StripeObject):
    __slots__ = (
        "customer",
        "amount",
        "currency",
        "decline",
        "payment_method",
        "description",
        "payment_intent",
    )
    object_name = "charge"

    def __init__(
        self,
        id: str,
        created: int,
        seq: int,
        customer: Customer,
        amount: int,
        currency: str,
        decline: str | None,
        payment_method: str,
        description: str,
        payment_intent: str,
    ) -> None:
        super().__init__(id, created, seq)
        self.customer = customer
        self.amount = amount
        self.currency = currency
        self.decline = decline
        self.payment_method = payment_method
        self.description = description
        self.payment_intent = payment_intent

    @property
    def customer_id(self) -> str:  # type: ignore[override]
        return self.customer.id

    def render(self, book: Any, variant: str = "") -> Json:
        ok = self.decline is None
        if ok:
            outcome: Json = {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": 20,
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
            failure_code = failure_message = None
        else:
            kind, reason, net_code, seller, message, hard = DECLINES[self.decline]  # type: ignore[index]
            outcome = {
                "advice_code": "do_not_try_again" if hard else "try_again_later",
                "network_advice_code": None,
                "network_decline_code": net_code,
                "network_status": "declined_by_network",
                "reason": reason,
                "risk_level": "normal",
                "risk_score": 35,
                "seller_message": seller,
                "type": kind,
            }
            failure_code = "expired_card" if self.decline == "expired_card" else "card_declined"
            failure_message = message
        customer = self.customer
        return {
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount if ok else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": ("txn_" + self.id[3:]) if ok else None,
            "billing_details": {
                "address": None,
                "email": customer.email,
                "name": customer.name,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "PERLY DEMO SAAS",
            "captured": ok,
            "created": self.created,
            "currency": self.currency,
            "customer": customer.id,
            "description": self.description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "fraud_details": {},
            "livemode": False,
            "metadata": {},
            "on_behalf_of": None,
            "outcome": outcome,
            "paid": ok,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "payment_method_details": {
                "card": {
                    "brand": "visa",
                    "country": "US",
                    "exp_month": 12,
                    "exp_year": 2024 if self.decline == "expired_card" else 2029,
                    "funding": "credit",
                    "last4": "4242",
                    "network": "visa",
                },
                "type": "card",
            },
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "failed",
            "transfer_data": None,
            "transfer_group": None,
        }


class Event(StripeObject):
    """Immutable once built: the JSON bytes are made at creation, as Stripe never re-renders events."""

    __slots__ = ("type", "customer", "data_id", "body")
    object_name = "event"

    def __init__(
        self,
        id: str,
        created: int,
        seq: int,
        type: str,
        obj: Json,
        previous: Json | None,
        request_id: str | None,
        idempotency_key: str | None,
        customer: str | None,
    ) -> None:
        super().__init__(id, created, seq)
        self.type = type
        self.customer = customer
        self.data_id = obj.get("id")
        data: Json = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        self.body = orjson.dumps(
            {
                "id": id,
                "object": "event",
                "api_version": API_VERSION,
                "created": created,
                "data": data,
                "livemode": False,
                "pending_webhooks": 0,
                "request": {"id": request_id, "idempotency_key": idempotency_key},
                "type": type,
            }
        )

    @property
    def customer_id(self) -> str | None:  # type: ignore[override]
        return self.customer

    def json_bytes(self, book: Any, variant: str = "") -> bytes:
        return self.body

    def render(self, book: Any, variant: str = "") -> Json:
        result: Json = orjson.loads(self.body)
        return result
