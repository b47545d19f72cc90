"""A small in-memory Stripe behind requests-mock, for the stream tests: lists with `created` filters,
cursors and `has_more`, retrieves, embedded sublists cut at 10 like Stripe, events with `types[]`,
restricted-key permissions, scripted faults, and a `Date` header carrying its clock.

It lets a test state the account ("these 250 customers, these events") and check what a whole sync
emitted, instead of scripting every request the windows happen to make."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests_mock

from .builders import DEFAULT_BASE_URL, DEFAULT_NOW, TEST_RESTRICTED_KEY, TEST_SECRET_KEY, http_date

RESOURCES = ("customers", "subscriptions", "invoices", "charges", "coupons", "prices", "products", "events")
PERMISSIONS = {
    "customers": "rak_customer_read",
    "subscriptions": "rak_subscription_read",
    "subscription_items": "rak_subscription_read",
    "invoices": "rak_invoice_read",
    "charges": "rak_charge_read",
    "coupons": "rak_coupon_read",
    "prices": "rak_plan_read",
    "products": "rak_product_read",
    "events": "rak_event_read",
    "account": "rak_connected_account_read",
}
BILLING_FOUR = {"rak_customer_read", "rak_subscription_read", "rak_invoice_read", "rak_charge_read"}


@dataclass
class Fault:
    path_pattern: str
    status: int
    times: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    only_if: Callable[[dict[str, list[str]]], bool] | None = None  # on the request's query


class FakeStripe:
    def __init__(self, now: int = DEFAULT_NOW) -> None:
        self.now = now
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.deleted: dict[str, set[str]] = {r: set() for r in RESOURCES}
        self.keys: dict[str, set[str] | None] = {
            TEST_SECRET_KEY: None,
            TEST_RESTRICTED_KEY: set(BILLING_FOUR),
        }
        self.faults: list[Fault] = []
        self.requests: list[Any] = []
        self._sequence = 0

    # ---- building the account ----------------------------------------------------------------

    def add(self, resource: str, created: int, object_id: str | None = None, **fields: Any) -> dict[str, Any]:
        self._sequence += 1
        object_type = resource[:-1]
        obj = {
            "id": object_id or f"{object_type[:3]}_{self._sequence:06d}",
            "object": object_type,
            "created": created,
            "livemode": False,
            **fields,
        }
        self.objects[resource][obj["id"]] = obj
        return obj

    def add_event(self, event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        return self.add("events", created, type=event_type, data={"object": copy.deepcopy(obj)})

    def delete(self, resource: str, object_id: str) -> None:
        self.objects[resource].pop(object_id, None)
        self.deleted[resource].add(object_id)

    def fail(self, path_pattern: str, status: int, times: int = 1, **kwargs: Any) -> None:
        self.faults.append(Fault(path_pattern, status, times, **kwargs))

    # ---- serving ----------------------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[requests_mock.Mocker]:
        with requests_mock.Mocker() as mocker:
            matcher = re.compile(re.escape(DEFAULT_BASE_URL) + r"/.*")
            mocker.register_uri(requests_mock.ANY, matcher, json=self._respond)
            yield mocker

    def paths(self) -> list[str]:
        return [urlparse(r.url).path for r in self.requests]

    def _respond(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        context.headers["Date"] = http_date(self.now)
        context.headers["Request-Id"] = f"req_{len(self.requests)}"
        url = urlparse(request.url)
        path = url.path
        query = parse_qs(url.query, keep_blank_values=True)
        key = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        if key not in self.keys:
            context.status_code = 401
            return {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_***"}}
        for fault in self.faults:
            if fault.only_if is not None and not fault.only_if(query):
                continue
            if fault.times > 0 and re.search(fault.path_pattern, path):
                fault.times -= 1
                context.status_code = fault.status
                context.headers.update(fault.headers)
                return fault.body or {"error": {"type": "api_error", "message": "Injected failure."}}
        parts = path.strip("/").split("/")[1:]  # drop "v1"
        allowed = self.keys[key]
        needed = PERMISSIONS.get(parts[0]) if parts else None
        if allowed is not None and needed not in allowed:
            context.status_code = 403
            return {
                "error": {
                    "type": "invalid_request_error",
                    "message": "The provided key 'rk_test_***rstu' does not have the required "
                    "permissions for this endpoint on account 'acct_1'. "
                    f"Having the '{needed}' permission would allow this request to continue.",
                }
            }
        if parts == ["subscription_items"]:
            sub = self.objects["subscriptions"][query["subscription"][0]]
            return self._page(list(sub["items"]["data"]), query, path, context)
        if len(parts) == 3 and parts[0] == "invoices" and parts[2] == "lines":
            return self._page(list(self.objects["invoices"][parts[1]]["lines"]["data"]), query, path, context)
        if len(parts) == 1 and parts[0] in self.objects:
            return self._list(parts[0], query, path, context)
        if len(parts) == 2 and parts[0] in self.objects:
            found = self.objects[parts[0]].get(parts[1])
            if found is None:
                if parts[1] in self.deleted[parts[0]] and parts[0] == "customers":
                    return {"id": parts[1], "object": "customer", "deleted": True}
                context.status_code = 404
                return {"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "id"}}
            return self._render(found)
        context.status_code = 404
        return {
            "error": {"type": "invalid_request_error", "message": f"Unrecognized request URL (GET: {path})"}
        }

    def _list(self, resource: str, query: dict[str, list[str]], path: str, context: Any) -> Any:
        items = list(self.objects[resource].values())
        bounds = {
            "created[gte]": lambda c, v: c >= v,
            "created[gt]": lambda c, v: c > v,
            "created[lte]": lambda c, v: c <= v,
            "created[lt]": lambda c, v: c < v,
        }
        for name, test in bounds.items():
            if name in query:
                value = int(query[name][0])
                items = [o for o in items if test(o["created"], value)]
        status = query.get("status", [None])[0]
        if resource == "subscriptions" and status is None:  # Stripe's default leaves canceled ones out
            items = [o for o in items if o.get("status") != "canceled"]
        elif resource in ("subscriptions", "invoices") and status not in (None, "all"):
            items = [o for o in items if o.get("status") == status]
        if "types[]" in query:
            items = [o for o in items if o["type"] in query["types[]"]]
        return self._page([self._render(o) for o in items], query, path, context)

    def _page(self, items: list[dict[str, Any]], query: dict[str, list[str]], path: str, context: Any) -> Any:
        items.sort(key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
        if "starting_after" in query:
            ids = [o["id"] for o in items]
            if query["starting_after"][0] not in ids:
                context.status_code = 404
                return {"error": {"type": "invalid_request_error", "code": "resource_missing"}}
            items = items[ids.index(query["starting_after"][0]) + 1 :]
        limit = int(query.get("limit", ["10"])[0])
        return {"object": "list", "url": path, "has_more": len(items) > limit, "data": items[:limit]}

    @staticmethod
    def _render(obj: dict[str, Any]) -> dict[str, Any]:
        rendered = copy.deepcopy(obj)
        for holder in ("items", "lines"):
            embedded = rendered.get(holder)
            if isinstance(embedded, dict) and "data" in embedded:
                embedded["has_more"] = len(embedded["data"]) > 10
                embedded["data"] = embedded["data"][:10]
        return rendered
