"""The emulator through the official `stripe` library: lists, filters, retrieve, expansions, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import stripe

from integration_tests.stripe_emulator import API_VERSION, Emulator

pytestmark = pytest.mark.emulator

TEST_KEY = "sk_test_perly_demo"
LIST_PARAMS: dict[str, dict[str, Any]] = {
    "customers": {},
    "subscriptions": {"status": "all"},
    "invoices": {},
    "charges": {},
    "coupons": {},
    "prices": {},
    "plans": {},
    "products": {},
    "events": {},
}


def client(emu: Emulator, key: str = TEST_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": emu.url})


def plain(obj: Any) -> Any:
    """A StripeObject as plain JSON (the library turns *_decimal strings into Decimal)."""
    return json.loads(json.dumps(obj.to_dict(), default=str))


def every(emu: Emulator, resource: str, key: str = TEST_KEY, **params: Any) -> list[dict[str, Any]]:
    service = getattr(client(emu, key).v1, resource)
    return [plain(o) for o in service.list({"limit": 100, **params}).auto_paging_iter()]


def fetch_all(emu: Emulator, resource: str, *, key: str = TEST_KEY, **params: Any) -> list[dict[str, Any]]:
    """Plain-HTTP pagination (faster than building StripeObjects) for the filter tests."""
    found: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while True:
        page = raw_get(emu, f"/v1/{resource}", key, limit=100, **params, **cursor).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        cursor = {"starting_after": page["data"][-1]["id"]}


def raw_get(emu: Emulator, path: str, key: str = TEST_KEY, **params: Any) -> requests.Response:
    return requests.get(emu.url + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.mark.parametrize("resource", sorted(LIST_PARAMS))
def test_given_seeded_book_when_auto_paginating_then_exactly_the_seeded_objects(
    emulator: Emulator, resource: str
) -> None:
    listed = every(emulator, resource, **LIST_PARAMS[resource])
    seeded = emulator.objects(resource)
    assert seeded, resource
    assert [o["id"] for o in listed] == [o["id"] for o in seeded]
    assert listed == seeded
    created = [o["created"] for o in listed]
    assert created == sorted(created, reverse=True)  # newest first


def test_given_a_page_cursor_when_paging_back_with_ending_before_then_the_previous_page(
    emulator: Emulator,
) -> None:
    stripe_client = client(emulator)
    first = stripe_client.v1.invoices.list({"limit": 25})
    second = stripe_client.v1.invoices.list({"limit": 25, "starting_after": first.data[-1].id})
    back = stripe_client.v1.invoices.list({"limit": 25, "ending_before": second.data[0].id})
    assert [o.id for o in back.data] == [o.id for o in first.data]
    assert first.has_more
    assert second.has_more
    assert not back.has_more


@pytest.mark.parametrize(
    ("op", "keep"),
    [
        ("gt", lambda c, t: c > t),
        ("gte", lambda c, t: c >= t),
        ("lt", lambda c, t: c < t),
        ("lte", lambda c, t: c <= t),
    ],
)
def test_given_created_filter_when_listing_then_only_matching_objects(
    emulator: Emulator, op: str, keep: Any
) -> None:
    charges = emulator.objects("charges")
    pivot = charges[len(charges) // 2]["created"]
    listed = fetch_all(emulator, "charges", **{f"created[{op}]": pivot})
    assert [o["id"] for o in listed] == [o["id"] for o in charges if keep(o["created"], pivot)]
    assert listed


def test_given_exact_created_when_listing_then_objects_of_that_second(emulator: Emulator) -> None:
    customers = emulator.objects("customers")
    pivot = customers[10]["created"]
    listed = fetch_all(emulator, "customers", created=pivot)
    assert [o["id"] for o in listed] == [o["id"] for o in customers if o["created"] == pivot]


def test_given_event_type_filters_when_listing_then_only_those_types(emulator: Emulator) -> None:
    events = emulator.objects("events")
    paid = fetch_all(emulator, "events", type="invoice.paid")
    assert paid
    assert [e["id"] for e in paid] == [e["id"] for e in events if e["type"] == "invoice.paid"]
    wanted = {"charge.failed", "customer.subscription.updated"}
    types: dict[str, Any] = {"types[]": sorted(wanted)}
    several = fetch_all(emulator, "events", **types)
    assert [e["id"] for e in several] == [e["id"] for e in events if e["type"] in wanted]
    wildcard = fetch_all(emulator, "events", type="customer.subscription.*")
    expected = [e["id"] for e in events if e["type"].startswith("customer.subscription.")]
    assert wildcard
    assert [e["id"] for e in wildcard] == expected


def test_given_events_when_listing_then_only_the_last_30_days_with_pinned_shape(emulator: Emulator) -> None:
    events = fetch_all(emulator, "events")
    assert min(e["created"] for e in events) >= emulator.now - 30 * 86_400
    assert {e["api_version"] for e in events} == {API_VERSION}
    updated = [e for e in events if e["type"] == "customer.subscription.updated"]
    assert updated
    assert all(e["data"].get("previous_attributes") for e in updated)
    assert all("previous_attributes" not in e["data"] for e in events if not e["type"].endswith(".updated"))
    assert all(set(e["request"]) == {"id", "idempotency_key"} for e in events)


def test_given_subscription_list_filters_when_listing_then_status_semantics_of_stripe(
    emulator: Emulator,
) -> None:
    everything = emulator.objects("subscriptions")
    default = fetch_all(emulator, "subscriptions")
    assert [s["id"] for s in default] == [s["id"] for s in everything if s["status"] != "canceled"]
    canceled = fetch_all(emulator, "subscriptions", status="canceled")
    assert canceled
    assert all(s["status"] == "canceled" for s in canceled)
    customer = everything[0]["customer"]
    mine = fetch_all(emulator, "subscriptions", status="all", customer=customer)
    assert [s["id"] for s in mine] == [s["id"] for s in everything if s["customer"] == customer]


@pytest.mark.parametrize(
    "resource", ["customers", "subscriptions", "invoices", "charges", "coupons", "prices"]
)
def test_given_an_id_when_retrieving_then_the_same_object_as_listed(
    emulator: Emulator, resource: str
) -> None:
    service = getattr(client(emulator).v1, resource)
    for listed in emulator.objects(resource)[:3]:
        assert plain(service.retrieve(listed["id"])) == listed


def test_given_deleted_objects_when_retrieving_then_tombstones_and_absent_from_lists(
    emulator: Emulator,
) -> None:
    deleted = [e["data"]["object"] for e in emulator.objects("events") if e["type"].endswith(".deleted")]
    kinds = {obj["object"] for obj in deleted if e_is_deletion(obj)}
    assert {"customer", "coupon", "price", "product"} <= kinds
    for obj in deleted:
        if not e_is_deletion(obj):
            continue
        resource = obj["object"] + "s"
        answer = raw_get(emulator, f"/v1/{resource}/{obj['id']}").json()
        assert answer == {"id": obj["id"], "object": obj["object"], "deleted": True}
        assert obj["id"] not in {o["id"] for o in emulator.objects(resource)}


def e_is_deletion(obj: dict[str, Any]) -> bool:
    return obj.get("deleted") is True and obj["object"] in ("customer", "coupon", "price", "product", "plan")


def test_given_expand_discounts_when_listing_subscriptions_then_discount_objects(emulator: Emulator) -> None:
    plain_list = {s["id"]: s for s in fetch_all(emulator, "subscriptions", status="all")}
    expanded = fetch_all(emulator, "subscriptions", status="all", **{"expand[]": "data.discounts"})
    with_discounts = [s for s in expanded if s["discounts"]]
    assert with_discounts
    for sub in with_discounts:
        discount = sub["discounts"][0]
        assert discount["object"] == "discount"
        assert discount["source"]["type"] == "coupon"
        assert plain_list[sub["id"]]["discounts"][0] == discount["id"]


def test_given_subscription_events_then_their_payloads_name_discounts_by_id(emulator: Emulator) -> None:
    """An event's object is never expanded: the subscription's discounts and its items' are ids (the
    webhook receiver resolves them from what the store holds)."""
    subs = [
        e["data"]["object"]
        for e in fetch_all(emulator, "events", type="customer.subscription.*")
        if e["data"]["object"]["object"] == "subscription"
    ]
    named = [d for sub in subs for d in sub["discounts"]]
    item_named = [d for sub in subs for i in sub["items"]["data"] for d in i["discounts"]]
    assert named, "some subscription events should carry discounts"
    assert item_named, "some subscription events should carry item discounts"
    assert all(isinstance(d, str) and d.startswith("di_") for d in named + item_named)


def test_given_expand_tiers_when_listing_prices_then_tiers_only_when_asked(emulator: Emulator) -> None:
    bare = fetch_all(emulator, "prices")
    assert all("tiers" not in p for p in bare)
    expanded = fetch_all(emulator, "prices", **{"expand[]": "data.tiers"})
    tiered = [p for p in expanded if p["billing_scheme"] == "tiered"]
    assert tiered
    assert all(p["tiers"] and p["tiers"][-1]["up_to"] is None for p in tiered)
    one = plain(client(emulator).v1.prices.retrieve(tiered[0]["id"], {"expand": ["tiers"]}))
    assert one["tiers"] == tiered[0]["tiers"]


def test_given_more_than_20_items_when_reading_a_subscription_then_items_are_paged(
    emulator: Emulator,
) -> None:
    big = [s for s in emulator.objects("subscriptions") if s["items"]["has_more"]]
    assert big
    sub = big[0]
    assert len(sub["items"]["data"]) == 20
    assert sub["items"]["url"] == f"/v1/subscription_items?subscription={sub['id']}"
    items = [
        plain(i)
        for i in client(emulator)
        .v1.subscription_items.list({"subscription": sub["id"], "limit": 7})
        .auto_paging_iter()
    ]
    assert len(items) > 20
    assert items[:20] == sub["items"]["data"]
    assert len({i["id"] for i in items}) == len(items)


def test_given_more_than_10_lines_when_reading_an_invoice_then_lines_are_paged(emulator: Emulator) -> None:
    long = [i for i in emulator.objects("invoices") if i["lines"]["has_more"]]
    assert long
    invoice = long[0]
    assert len(invoice["lines"]["data"]) == 10
    lines = [
        plain(line) for line in client(emulator).v1.invoices.line_items.list(invoice["id"]).auto_paging_iter()
    ]
    assert len(lines) > 10
    assert lines[:10] == invoice["lines"]["data"]
    assert sum(line["amount"] for line in lines) == invoice["subtotal"]


def test_given_a_live_key_when_listing_then_livemode_is_true(emulator: Emulator) -> None:
    live = fetch_all(emulator, "customers", key="sk_live_perly_demo")
    assert live
    assert all(c["livemode"] is True for c in live)
    assert all(c["livemode"] is False for c in emulator.objects("customers"))


def test_given_any_request_then_stripe_headers_and_simulated_date(emulator: Emulator) -> None:
    response = raw_get(emulator, "/v1/customers", limit=1)
    assert response.headers["Date"] == "Sun, 01 Nov 2026 00:00:00 GMT"
    assert response.headers["Stripe-Version"] == API_VERSION
    assert response.headers["Request-Id"].startswith("req_")
    basic = requests.get(emulator.url + "/v1/customers", params={"limit": 1}, auth=(TEST_KEY, ""), timeout=10)
    assert basic.json() == response.json()


def test_given_account_when_retrieved_then_account_object(emulator: Emulator) -> None:
    account = client(emulator).v1.accounts.retrieve_current()
    assert account.id.startswith("acct_")
    assert account.object == "account"


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 101}, "Invalid limit: must be between 1 and 100"),
        ({"limit": 0}, "Invalid limit: must be between 1 and 100"),
        ({"colour": "blue"}, "Received unknown parameter: colour"),
        ({"expand": ["data.items"]}, "This property cannot be expanded (data.items)."),
    ],
)
def test_given_bad_list_params_when_listing_then_invalid_request_error(
    emulator: Emulator, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client(emulator).v1.subscriptions.list(params)  # type: ignore[arg-type]
    assert caught.value.http_status == 400
    assert message in str(caught.value.user_message)


def test_given_both_cursors_when_listing_then_400(emulator: Emulator) -> None:
    ids = [c["id"] for c in emulator.objects("customers")[:2]]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client(emulator).v1.customers.list({"starting_after": ids[0], "ending_before": ids[1]})
    assert "Received both starting_after and ending_before" in str(caught.value.user_message)


def test_given_unknown_cursor_when_listing_then_404_not_a_restart(emulator: Emulator) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client(emulator).v1.charges.list({"starting_after": "ch_doesnotexist"})
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.param == "starting_after"
    assert caught.value.user_message == "No such charge: 'ch_doesnotexist'"


def test_given_cursor_not_matching_filter_when_listing_then_404(emulator: Emulator) -> None:
    canceled = next(s for s in emulator.objects("subscriptions") if s["status"] == "canceled")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client(emulator).v1.subscriptions.list({"starting_after": canceled["id"]})
    assert caught.value.http_status == 404


def test_given_unknown_id_when_retrieving_then_resource_missing(emulator: Emulator) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client(emulator).v1.subscriptions.retrieve("sub_nope")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.param == "id"


def test_given_unknown_or_missing_key_then_authentication_error(emulator: Emulator) -> None:
    with pytest.raises(stripe.AuthenticationError) as caught:
        client(emulator, "sk_test_not_a_known_key_1234").v1.customers.list()
    message = str(caught.value.user_message)
    assert message.startswith("Invalid API Key provided: sk_test_")
    assert "not_a_known_key" not in message  # masked
    anonymous = requests.get(emulator.url + "/v1/customers", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["message"].startswith("You did not provide an API key.")
    assert anonymous.headers["Www-Authenticate"] == 'Basic realm="Stripe"'


@pytest.mark.parametrize(
    ("resource", "slug"),
    [
        ("prices", "rak_plan_read"),
        ("products", "rak_product_read"),
        ("events", "rak_event_read"),
        ("coupons", "rak_coupon_read"),
        ("plans", "rak_plan_read"),
    ],
)
def test_given_billing_restricted_key_when_outside_its_permissions_then_permission_error(
    emulator: Emulator, resource: str, slug: str
) -> None:
    with pytest.raises(stripe.PermissionError) as caught:
        getattr(client(emulator, "rk_test_perly_billing").v1, resource).list()
    assert caught.value.http_status == 403
    assert caught.value.user_message == (
        "The provided key 'rk_test_***illing' does not have the required permissions for this endpoint on "
        "account 'acct_1PerlyEmu1atorX'. "
        f"Having the '{slug}' permission would allow this request to continue."
    )
    assert caught.value.error is not None
    assert caught.value.error.code is None


def test_given_billing_restricted_key_when_inside_its_permissions_then_data(emulator: Emulator) -> None:
    for resource in ("customers", "subscriptions", "invoices", "charges"):
        assert fetch_all(emulator, resource, key="rk_test_perly_billing", **LIST_PARAMS[resource])
    assert fetch_all(emulator, "events", key="rk_test_perly_full")


def test_given_a_read_only_emulator_when_posting_then_refused(emulator: Emulator) -> None:
    response = requests.post(
        emulator.url + "/v1/customers", headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10
    )
    assert response.status_code == 400


def test_given_unknown_url_then_404_unrecognized(emulator: Emulator) -> None:
    response = raw_get(emulator, "/v1/widgets")
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("Unrecognized request URL (GET: /v1/widgets)")


def test_given_rate_limit_when_exceeded_then_rate_limit_error_with_headers(emulator_factory: Any) -> None:
    emu = emulator_factory(customers=10, rate_limit=(1, 0.2))  # test mode: one request per 5 s
    stripe_client = client(emu)
    stripe_client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError) as caught:
        stripe_client.v1.customers.list()
    assert caught.value.http_status == 429
    assert caught.value.error is not None
    assert caught.value.error.code == "rate_limit"
    assert caught.value.headers is not None
    assert caught.value.headers["Stripe-Should-Retry"] == "true"
    assert caught.value.headers["Retry-After"] == "1"
    # The live mode has its own bucket.
    assert client(emu, "sk_live_perly_demo").v1.customers.list().data


@pytest.mark.parametrize(
    ("path", "slug"),
    [
        ("data.discounts.source.coupon", "rak_coupon_read"),
        ("data.items.data.discounts.source.coupon", "rak_coupon_read"),
        ("data.items.data.price.product", "rak_product_read"),
        ("data.items.data.price.tiers", "rak_plan_read"),
    ],
)
def test_given_billing_key_when_expanding_into_an_object_it_cannot_read_then_the_request_is_refused(
    emulator: Emulator, path: str, slug: str
) -> None:
    refused = raw_get(emulator, "/v1/subscriptions", "rk_test_perly_billing", limit=3, **{"expand[]": path})
    assert refused.status_code == 403
    assert (
        f"Having the '{slug}' permission would allow this request to continue."
        in (refused.json()["error"]["message"])
    )
    # The full key reads the same expansion.
    assert raw_get(emulator, "/v1/subscriptions", limit=3, **{"expand[]": path}).status_code == 200


def test_given_billing_key_when_expanding_discounts_then_objects_naming_their_coupon_by_id(
    emulator: Emulator,
) -> None:
    paths = ["data.discounts", "data.items.data.discounts"]
    subscriptions = fetch_all(
        emulator, "subscriptions", key="rk_test_perly_billing", status="all", **{"expand[]": paths}
    )
    item_discounts = [d for s in subscriptions for i in s["items"]["data"] for d in i["discounts"]]
    assert item_discounts, "the book has a forever coupon on a subscription item"
    for discount in item_discounts:
        assert discount["object"] == "discount"
        assert isinstance(discount["source"]["coupon"], str)  # an id: the coupon needs rak_coupon_read
        assert discount["subscription_item"]
    bare = fetch_all(emulator, "subscriptions", status="all")
    assert all(isinstance(d, str) for s in bare for i in s["items"]["data"] for d in i["discounts"])


def test_given_full_key_when_expanding_price_product_and_coupon_then_whole_objects(
    emulator: Emulator,
) -> None:
    paths = ["data.items.data.price.product", "data.discounts.source.coupon"]
    subscriptions = fetch_all(emulator, "subscriptions", status="all", **{"expand[]": paths})
    assert all(
        i["price"]["product"]["object"] == "product" for s in subscriptions for i in s["items"]["data"]
    )
    coupons = [d["source"]["coupon"] for s in subscriptions for d in s["discounts"]]
    assert coupons
    assert all(c["object"] == "coupon" and c["duration"] for c in coupons)


def test_given_an_expansion_deeper_than_four_levels_then_refused(emulator: Emulator) -> None:
    deep = "data.items.data.discounts.source.coupon.applies_to"
    response = raw_get(emulator, "/v1/subscriptions", **{"expand[]": deep})
    assert response.status_code == 400
    assert "more than 4 levels" in response.json()["error"]["message"]


def test_given_expand_discounts_when_listing_subscription_items_then_discount_objects(
    emulator: Emulator,
) -> None:
    subscriptions = fetch_all(emulator, "subscriptions", status="all")
    with_item_discount = next(s for s in subscriptions if any(i["discounts"] for i in s["items"]["data"]))
    page = raw_get(
        emulator,
        "/v1/subscription_items",
        subscription=with_item_discount["id"],
        **{"expand[]": "data.discounts"},
    ).json()
    assert [d["object"] for i in page["data"] for d in i["discounts"]] == ["discount"]
