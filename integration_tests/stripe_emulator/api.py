"""Stripe's read API over the book: routing, parameters, permissions, pages and Stripe's errors.

Pure request -> (status, body bytes, extra headers); the HTTP layer lives in server.py.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .book import Book
from .model import ACCOUNT_ID, StripeObject
from .store import Store

DOCS = "https://stripe.com/docs/error-codes"


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> bytes:
        error: dict[str, Any] = {"message": self.message, "type": "invalid_request_error"}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"{DOCS}/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return orjson.dumps({"error": error})


@dataclass(frozen=True)
class ListSpec:
    permission: str
    singular: str  # for "No such customer: ..." messages
    params: frozenset[str]  # filters accepted besides paging, created and expand
    list_expand: dict[str, str]  # expand path on lists -> render variant
    retrieve_expand: dict[str, str]


# What a subscription's expandable paths reach, and the permission each needs beyond the
# subscription's own. Stripe asks, for every object an expansion returns, the permission that reads
# that object: a key without it gets the whole request refused with a 403 naming it (Stripe's
# permissions reference: "If you're expanding objects ... you must also request at least one
# corresponding permission for each API object you expand"). A price's `tiers` are taken to need
# the price's permission too (inferred: Stripe does not document it). Discounts are read with the
# subscription.
SUBSCRIPTION_EXPANSIONS: dict[str, str | None] = {
    "discounts": None,
    "discounts.source.coupon": "rak_coupon_read",
    "items.data.discounts": None,
    "items.data.discounts.source.coupon": "rak_coupon_read",
    "items.data.price.tiers": "rak_plan_read",
    "items.data.price.product": "rak_product_read",
}
# Stripe expands at most 4 levels deep (a list's `data` is not a level).
MAX_EXPAND_DEPTH = 4


COMMON = frozenset({"limit", "starting_after", "ending_before", "expand"})

SPECS: dict[str, ListSpec] = {
    "customers": ListSpec("rak_customer_read", "customer", frozenset({"email"}), {}, {}),
    "subscriptions": ListSpec(
        "rak_subscription_read",
        "subscription",
        frozenset({"customer", "status", "price", "collection_method"}),
        {f"data.{path}": path for path in SUBSCRIPTION_EXPANSIONS},
        {path: path for path in SUBSCRIPTION_EXPANSIONS},
    ),
    "invoices": ListSpec(
        "rak_invoice_read",
        "invoice",
        frozenset({"customer", "subscription", "status", "collection_method"}),
        {},
        {},
    ),
    "charges": ListSpec("rak_charge_read", "charge", frozenset({"customer"}), {}, {}),
    "coupons": ListSpec("rak_coupon_read", "coupon", frozenset(), {}, {}),
    "prices": ListSpec(
        "rak_plan_read",
        "price",
        frozenset({"active", "product", "currency", "type"}),
        {"data.tiers": "tiers"},
        {"tiers": "tiers"},
    ),
    "plans": ListSpec(
        "rak_plan_read", "plan", frozenset({"active", "product"}), {"data.tiers": "tiers"}, {"tiers": "tiers"}
    ),
    "products": ListSpec("rak_product_read", "product", frozenset({"active"}), {}, {}),
    "events": ListSpec("rak_event_read", "event", frozenset({"type", "types"}), {}, {}),
}

SUBSCRIPTION_STATUSES = {
    "active",
    "all",
    "canceled",
    "ended",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
}
INVOICE_STATUSES = {"draft", "open", "paid", "uncollectible", "void"}
CREATED_OPS = {"gt", "gte", "lt", "lte"}

Params = dict[str, list[str]]


def parse_params(pairs: list[tuple[str, str]]) -> Params:
    """Form-style params: `expand[]`/`expand[0]` -> "expand", `created[gte]` -> "created[gte]"."""
    params: Params = {}
    for key, value in pairs:
        base, bracket, rest = key.partition("[")
        if bracket and (rest == "]" or rest[:-1].isdigit()):
            key = base  # array forms
        params.setdefault(key, []).append(value)
    return params


def one(params: Params, name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    return values[-1]


def integer(value: str, param: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"Invalid integer: {value}", param=param) from None


def page_bytes(objs: list[bytes], has_more: bool, url: str) -> bytes:
    return b"".join(
        (
            b'{"object":"list","data":[',
            b",".join(objs),
            b'],"has_more":',
            b"true" if has_more else b"false",
            b',"url":',
            orjson.dumps(url),
            b"}",
        )
    )


def account_body(book: Book) -> bytes:
    return orjson.dumps(
        {
            "id": ACCOUNT_ID,
            "object": "account",
            "business_profile": {"name": "Perly Demo SaaS", "url": "https://demo.perly.example"},
            "business_type": "company",
            "capabilities": {"card_payments": "active", "transfers": "active"},
            "charges_enabled": True,
            "controller": {"type": "account"},
            "country": "US",
            "created": book.now - 3 * 365 * 86_400,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "billing@perly-demo.example",
            "metadata": {},
            "payouts_enabled": True,
            "settings": {"dashboard": {"display_name": "Perly Demo SaaS", "timezone": "Etc/UTC"}},
            "type": "standard",
        }
    )


class Api:
    def __init__(self, book: Book) -> None:
        self.book = book

    # ---- entry point --------------------------------------------------------------------------
    def get(self, path: str, params: Params, permissions: frozenset[str] | None, key_label: str) -> bytes:
        """Answer a GET on a Stripe path, or raise ApiError."""
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1":
            raise self.unknown_url(path)
        resource = parts[1]
        if resource == "account" and len(parts) == 2:
            self.require(permissions, "rak_connected_account_read", key_label)
            self.check_params(params, frozenset({"expand"}))
            self.check_expand(params, {}, "")
            return account_body(self.book)
        if resource == "subscription_items":
            self.require(permissions, "rak_subscription_read", key_label)
            if len(parts) == 2:
                return self.list_subscription_items(params)
            if len(parts) == 3:
                self.check_params(params, frozenset({"expand"}))
                self.check_expand(params, {}, "")
                item = self.book.stores["subscription_items"].get(parts[2])
                if item is None:
                    raise self.missing("subscription_item", parts[2], "id")
                return item.json_bytes(self.book)
            raise self.unknown_url(path)
        spec = SPECS.get(resource)
        if spec is None or len(parts) > 4:
            raise self.unknown_url(path)
        self.require(permissions, spec.permission, key_label)
        if resource == "subscriptions":
            self.require_expansions(params, permissions, key_label)
        if len(parts) == 2:
            return self.list(resource, spec, params)
        if len(parts) == 4:
            if resource == "invoices" and parts[3] == "lines":
                return self.list_lines(parts[2], params)
            raise self.unknown_url(path)
        return self.retrieve(resource, spec, parts[2], params)

    # ---- errors ---------------------------------------------------------------------------------
    @staticmethod
    def unknown_url(path: str, method: str = "GET") -> ApiError:
        return ApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    @staticmethod
    def missing(singular: str, obj_id: str, param: str) -> ApiError:
        return ApiError(404, f"No such {singular}: '{obj_id}'", code="resource_missing", param=param)

    @staticmethod
    def require(permissions: frozenset[str] | None, slug: str, key_label: str) -> None:
        if permissions is not None and slug not in permissions:
            raise ApiError(
                403,
                f"The provided key '{key_label}' does not have the required permissions for this endpoint "
                f"on account '{ACCOUNT_ID}'. Having the '{slug}' permission would allow this request to "
                "continue.",
            )

    @classmethod
    def require_expansions(cls, params: Params, permissions: frozenset[str] | None, key_label: str) -> None:
        """An expansion into an object the key cannot read refuses the whole request, as Stripe does."""
        for path in params.get("expand", []):
            levels = [part for part in path.split(".") if part != "data"]
            if len(levels) > MAX_EXPAND_DEPTH:
                raise ApiError(
                    400,
                    f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. Property: {path}",
                    param="expand",
                )
            needed = SUBSCRIPTION_EXPANSIONS.get(path.removeprefix("data."))
            if needed:
                cls.require(permissions, needed, key_label)

    @staticmethod
    def check_params(params: Params, allowed: frozenset[str]) -> None:
        for name in params:
            base = name.split("[", 1)[0]
            if base not in allowed:
                raise ApiError(400, f"Received unknown parameter: {name}", param=name)

    @staticmethod
    def check_expand(params: Params, allowed: dict[str, str], default: str) -> str:
        """The render variant for the expansions asked: their names, comma-separated and sorted."""
        variants = {default} if default else set()
        for path in params.get("expand", []):
            if path not in allowed:
                raise ApiError(400, f"This property cannot be expanded ({path}).", param="expand")
            variants.add(allowed[path])
        return ",".join(sorted(variants))

    # ---- lists ----------------------------------------------------------------------------------
    def paging(self, params: Params) -> tuple[int, str | None, str | None]:
        raw = one(params, "limit")
        limit = 10 if raw is None else integer(raw, "limit")
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid limit: must be between 1 and 100", param="limit")
        after, before = one(params, "starting_after"), one(params, "ending_before")
        if after and before:
            raise ApiError(
                400, "Received both starting_after and ending_before parameters. Please pass in only one."
            )
        return limit, after or None, before or None

    def created_range(self, params: Params) -> tuple[int | None, int | None]:
        low: int | None = None
        high: int | None = None
        for name, values in params.items():
            if name == "created":
                exact = integer(values[-1], "created")
                low, high = exact, exact
            elif name.startswith("created["):
                op = name[len("created[") : -1]
                if op not in CREATED_OPS:
                    raise ApiError(400, f"Received unknown parameter: {name}", param=name)
                value = integer(values[-1], name)
                if op == "gt":
                    low = value + 1 if low is None else max(low, value + 1)
                elif op == "gte":
                    low = value if low is None else max(low, value)
                elif op == "lt":
                    high = value - 1 if high is None else min(high, value - 1)
                else:
                    high = value if high is None else min(high, value)
        return low, high

    def matcher(self, resource: str, params: Params) -> Callable[[Any], bool] | None:
        tests: builtins.list[Callable[[Any], bool]] = []
        customer = one(params, "customer")
        if customer:
            tests.append(lambda o: o.customer_id == customer)
        collection = one(params, "collection_method")
        if collection:
            tests.append(lambda o: o.collection_method == collection)
        if resource == "subscriptions":
            status = one(params, "status")
            if status is not None and status not in SUBSCRIPTION_STATUSES:
                raise ApiError(
                    400,
                    "Invalid status: must be one of " + ", ".join(sorted(SUBSCRIPTION_STATUSES)),
                    param="status",
                )
            if status is None:
                tests.append(lambda o: o.status != "canceled")
            elif status == "ended":
                tests.append(lambda o: o.status in ("canceled", "incomplete_expired"))
            elif status != "all":
                tests.append(lambda o: o.status == status)
            price = one(params, "price")
            if price:
                tests.append(lambda o: any(item.price.id == price for item in o.items))
        if resource == "invoices":
            status = one(params, "status")
            if status is not None:
                if status not in INVOICE_STATUSES:
                    raise ApiError(
                        400,
                        "Invalid status: must be one of " + ", ".join(sorted(INVOICE_STATUSES)),
                        param="status",
                    )
                tests.append(lambda o: o.status == status)
            subscription = one(params, "subscription")
            if subscription:
                tests.append(lambda o: o.subscription == subscription)
        if resource in ("prices", "plans", "products"):
            active = one(params, "active")
            if active is not None:
                wanted = active == "true"
                tests.append(lambda o: self.is_active(o) == wanted)
            product = one(params, "product")
            if product:
                tests.append(lambda o: self.price_of(o).product == product)
            currency = one(params, "currency")
            if currency:
                tests.append(lambda o: self.price_of(o).currency == currency)
        if resource == "customers":
            email = one(params, "email")
            if email:
                tests.append(lambda o: o.email == email)
        if resource == "events":
            tests.extend(self.event_filters(params))
        if not tests:
            return None
        if len(tests) == 1:
            return tests[0]
        return lambda o: all(test(o) for test in tests)

    @staticmethod
    def price_of(obj: Any) -> Any:
        return obj.price if obj.object_name == "plan" else obj

    def is_active(self, obj: Any) -> bool:
        return bool(self.price_of(obj).active) if obj.object_name != "product" else bool(obj.active)

    @staticmethod
    def event_filters(params: Params) -> builtins.list[Callable[[Any], bool]]:
        single = one(params, "type")
        many = params.get("types")
        if single and many:
            raise ApiError(400, "You may only specify one of these parameters: type, types.", param="types")
        if many:
            if len(many) > 20:
                raise ApiError(400, "Invalid array: types must have at most 20 elements", param="types")
            wanted = set(many)
            return [lambda o: o.type in wanted]
        if single:
            if "*" in single:
                prefix, _, suffix = single.partition("*")
                return [lambda o: o.type.startswith(prefix) and o.type.endswith(suffix)]
            return [lambda o: o.type == single]
        return []

    def cursor(
        self, store: Store, spec: ListSpec, obj_id: str | None, param: str, match: Any
    ) -> StripeObject | None:
        if obj_id is None:
            return None
        obj = store.get(obj_id)
        # A deleted cursor, or one no longer matching the filter, is a 404 as on Stripe.
        if obj is None or obj.deleted or (match is not None and not match(obj)):
            raise self.missing(spec.singular, obj_id, param)
        return obj

    def list(self, resource: str, spec: ListSpec, params: Params) -> bytes:
        self.check_params(params, COMMON | spec.params | {"created"})
        limit, after, before = self.paging(params)
        low, high = self.created_range(params)
        variant = self.check_expand(params, spec.list_expand, "")
        match = self.matcher(resource, params)
        store = self.book.stores[resource]
        found, has_more = store.page(
            limit,
            starting_after=self.cursor(store, spec, after, "starting_after", match),
            ending_before=self.cursor(store, spec, before, "ending_before", match),
            created_min=low,
            created_max=high,
            match=match,
        )
        book = self.book
        return page_bytes([obj.json_bytes(book, variant) for obj in found], has_more, f"/v1/{resource}")

    def retrieve(self, resource: str, spec: ListSpec, obj_id: str, params: Params) -> bytes:
        self.check_params(params, frozenset({"expand"}))
        variant = self.check_expand(params, spec.retrieve_expand, "")
        obj = self.book.stores[resource].get(obj_id)
        if obj is None:
            raise self.missing(spec.singular, obj_id, "id")
        if obj.deleted:
            return orjson.dumps(obj.tombstone())
        return obj.json_bytes(self.book, variant)

    def ordered_page(
        self, rendered: builtins.list[tuple[str, Any]], params: Params, url: str, singular: str
    ) -> bytes:
        """Paging over a fixed-order sublist (invoice lines, subscription items)."""
        limit, after, before = self.paging(params)
        ids = [obj_id for obj_id, _ in rendered]
        if after is not None:
            if after not in ids:
                raise self.missing(singular, after, "starting_after")
            start = ids.index(after) + 1
            chunk = rendered[start : start + limit]
            has_more = start + limit < len(rendered)
        elif before is not None:
            if before not in ids:
                raise self.missing(singular, before, "ending_before")
            end = ids.index(before)
            chunk = rendered[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            chunk = rendered[:limit]
            has_more = limit < len(rendered)
        return page_bytes([orjson.dumps(render()) for _, render in chunk], has_more, url)

    def list_lines(self, invoice_id: str, params: Params) -> bytes:
        self.check_params(params, COMMON)
        self.check_expand(params, {}, "")
        invoice: Any = self.book.stores["invoices"].get(invoice_id)
        if invoice is None:
            raise self.missing("invoice", invoice_id, "id")
        rendered = [(line.id, lambda line=line: line.render(invoice)) for line in invoice.lines]
        return self.ordered_page(rendered, params, f"/v1/invoices/{invoice_id}/lines", "line_item")

    def list_subscription_items(self, params: Params) -> bytes:
        self.check_params(params, COMMON | {"subscription"})
        variant = self.check_expand(params, {"data.discounts": "discounts"}, "")
        sub_id = one(params, "subscription")
        if not sub_id:
            raise ApiError(400, "Missing required param: subscription.", param="subscription")
        sub: Any = self.book.stores["subscriptions"].get(sub_id)
        if sub is None:
            raise self.missing("subscription", sub_id, "subscription")
        rendered = [(item.id, lambda item=item: item.render(self.book, variant)) for item in sub.items]
        return self.ordered_page(rendered, params, "/v1/subscription_items", "subscription_item")
