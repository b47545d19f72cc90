"""Whole syncs of the source against an in-memory Stripe (requests-mock): backfill windows, state and
resume, events replay, deletions, the 30-day fallback, permissions and errors, GET-only."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from airbyte_cdk.models import (  # type: ignore[attr-defined]
    AirbyteStateMessage,
    AirbyteStreamStatus,
    EstimateType,
    FailureType,
    SyncMode,
    Type,
)
from airbyte_cdk.test.catalog_builder import CatalogBuilder, ConfiguredAirbyteStreamBuilder
from airbyte_cdk.test.entrypoint_wrapper import EntrypointOutput, read
from airbyte_cdk.test.state_builder import StateBuilder
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from source_perly_stripe import source as source_module
from source_perly_stripe.client import API_VERSION, StripeClient
from source_perly_stripe.reader import EARLY_CUTS, EVENTS_OVERLAP, ReadSettings
from source_perly_stripe.source import SourcePerlyStripe
from source_perly_stripe.windows import DAY

from .builders import DEFAULT_NOW, TEST_RESTRICTED_KEY, ConfigBuilder
from .fake_stripe import FakeStripe

NOW = DEFAULT_NOW


def make_client(fake: FakeStripe, config: Any, skew: int = 0) -> StripeClient:
    """`skew`: how far the machine's clock is ahead of Stripe's (negative: behind)."""
    return StripeClient(
        config["api_key"],
        max_requests_per_second=10_000,
        max_retries=2,
        clock=lambda: fake.now + skew,
        sleep=lambda _: None,
    )


def make_source(fake: FakeStripe, held_back: dict[str, threading.Event] | None = None) -> SourcePerlyStripe:
    """`held_back`: a request for one of these paths goes out only once its event is set."""

    def factory(config: Any) -> Any:
        client = make_client(fake, config)
        return HoldingBack(client, held_back) if held_back else client

    return SourcePerlyStripe(client_factory=factory)


class HoldingBack:
    """The client, holding requests for some paths back until their event is set (around the client:
    requests-mock serves one request at a time, so holding one inside it would hold them all)."""

    def __init__(self, inner: StripeClient, held_back: dict[str, threading.Event]) -> None:
        self.inner, self.held_back = inner, held_back

    def get(self, path: str, params: Any = ()) -> dict[str, Any]:
        if path in self.held_back:
            self.held_back[path].wait(timeout=10)
        return self.inner.get(path, params)

    def server_now(self) -> int:
        return self.inner.server_now()


def catalog(*names: str, mode: SyncMode = SyncMode.incremental) -> Any:
    builder = CatalogBuilder()
    for name in names:
        builder.with_stream(ConfiguredAirbyteStreamBuilder().with_name(name).with_sync_mode(mode))
    return builder.build()


def sync(
    fake: FakeStripe,
    *names: str,
    state: list[AirbyteStateMessage] | None = None,
    config: dict[str, Any] | None = None,
    expecting_exception: bool = False,
    mode: SyncMode = SyncMode.incremental,
) -> EntrypointOutput:
    with fake.serving():
        return read(
            make_source(fake),
            config or ConfigBuilder().build(),
            catalog(*names, mode=mode),
            state,
            expecting_exception=expecting_exception,
        )


def records(output: EntrypointOutput, stream: str) -> list[dict[str, Any]]:
    return [m.record.data for m in output.records if m.record.stream == stream]


def final_states(output: EntrypointOutput) -> list[AirbyteStateMessage]:
    """The last STATE of each stream, as the platform would hand them to the next sync."""
    last: dict[str, AirbyteStateMessage] = {}
    for message in output.state_messages:
        last[message.state.stream.stream_descriptor.name] = message.state
    return list(last.values())


def state_blob(output: EntrypointOutput, stream: str) -> dict[str, Any]:
    for state in reversed(final_states(output)):
        if state.stream.stream_descriptor.name == stream:
            return dict(state.stream.stream_state.__dict__)
    raise AssertionError(f"no state for {stream}")


def statuses(output: EntrypointOutput, stream: str) -> list[AirbyteStreamStatus]:
    return [
        m.trace.stream_status.status
        for m in output.trace_messages
        if m.trace.stream_status and m.trace.stream_status.stream_descriptor.name == stream
    ]


def query_of(request: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(request.url).query)


def seed_customers(fake: FakeStripe, count: int, start: int, step: int) -> list[dict[str, Any]]:
    return [fake.add("customers", start + i * step, email=f"c{i}@example.com") for i in range(count)]


# ------------------------------------------------------------------------------------------- backfill


def test_given_two_pages_when_read_then_emit_all_records() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 150, NOW - 10 * DAY, 60)

    output = sync(fake, "customers", config=ConfigBuilder().with_start_date("2026-10-01T00:00:00Z").build())

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in seeded)
    assert statuses(output, "customers") == [
        AirbyteStreamStatus.STARTED,
        AirbyteStreamStatus.RUNNING,
        AirbyteStreamStatus.COMPLETE,
    ]


def test_given_records_on_window_edges_when_read_then_each_record_emitted_exactly_once() -> None:
    fake = FakeStripe()
    # Many records share each second: any window edge falls on a second that holds records.
    seeded = [fake.add("customers", NOW - 5 * DAY + (i // 7) * 97) for i in range(2_000)]

    output = sync(fake, "customers")

    emitted = Counter(r["id"] for r in records(output, "customers"))
    assert set(emitted) == {c["id"] for c in seeded}
    assert max(emitted.values()) == 1
    windows = {
        (q["created[gte]"][0], q.get("created[lt]", ["(asked with the probe)"])[0])
        for q in map(query_of, fake.requests)
        if "created[gte]" in q
    }
    assert len(windows) > 8, "a dense range is cut into more windows than the first cut"


def test_given_the_end_of_a_read_when_few_windows_are_left_then_they_are_cut_into_smaller_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that the last windows finish together instead of one reading on alone (each record once)."""

    def windows_read(pages_per_end_cut: int) -> int:
        settings = ReadSettings(readers=2, pages_per_end_cut=pages_per_end_cut)
        monkeypatch.setattr(source_module, "settings_from", lambda config: settings)
        fake = FakeStripe()
        # The first window keeps 16 pages and hands on the far past, 2 pages: it then reads on alone.
        seeded = seed_customers(fake, 1_800, NOW - 1_800 * 60, 60)
        output = sync(fake, "customers")
        emitted = Counter(r["id"] for r in records(output, "customers"))
        assert set(emitted) == {c["id"] for c in seeded}
        assert max(emitted.values()) == 1
        queries = [q for q in map(query_of, fake.requests) if "created[gte]" in q]
        return len({(q["created[gte]"][0], q.get("created[lt]", [None])[0]) for q in queries})

    assert windows_read(pages_per_end_cut=1) > windows_read(pages_per_end_cut=10**6)


def test_given_dense_data_when_read_then_pages_are_mostly_full() -> None:
    fake = FakeStripe()
    seed_customers(fake, 3_000, NOW - 20 * DAY, 300)

    output = sync(fake, "customers")

    list_requests = [r for r in fake.requests if urlparse(r.url).path == "/v1/customers"]
    assert len(records(output, "customers")) == 3_000
    # 30 full pages are the minimum; the window cuts may add a partial page per window.
    assert len(list_requests) <= 30 + 24


def test_given_start_date_when_read_then_older_objects_are_not_read() -> None:
    fake = FakeStripe()
    fake.add("customers", NOW - 400 * DAY, object_id="cus_old")
    fake.add("customers", NOW - 10 * DAY, object_id="cus_new")

    output = sync(fake, "customers", config=ConfigBuilder().with_start_date("2026-01-01T00:00:00Z").build())

    assert [r["id"] for r in records(output, "customers")] == ["cus_new"]


def test_given_backfill_when_read_then_every_record_carries_server_time_and_state_ends_at_sync_start() -> (
    None
):
    fake = FakeStripe()
    seed_customers(fake, 30, NOW - 3 * DAY, 600)

    output = sync(fake, "customers")

    assert {r["updated"] for r in records(output, "customers")} == {NOW}
    assert state_blob(output, "customers")["updated"] == NOW


class ProbeAnswersLate:
    """The client, but the probe's answer is handed back only once a list page was asked (a window
    begun with the probe), and the pages asked before the probe took Stripe's clock go to Stripe only
    once it did, after `meanwhile()` ran (what happens in Stripe between the two). (requests-mock
    serves one request at a time, so the order is kept here, around the client.)"""

    def __init__(self, inner: StripeClient, meanwhile: Any = None) -> None:
        self.inner = inner
        self.meanwhile = meanwhile
        self.page_asked, self.clock_taken = threading.Event(), threading.Event()
        self.page_asked_before_the_probe_answered = False
        self.probe_answered = False  # the clock read before it is the machine's

    def get(self, path: str, params: Any = ()) -> dict[str, Any]:
        query = dict(params)
        if path == "/v1/events" and query.get("limit") == 1:
            answer = self.inner.get(path, params)
            self.page_asked_before_the_probe_answered = self.page_asked.wait(timeout=5)
            self.probe_answered = True
            return answer
        if "created[gte]" in query and not self.clock_taken.is_set():
            self.page_asked.set()
            self.clock_taken.wait(timeout=5)
            if self.meanwhile is not None:
                self.meanwhile()
                self.meanwhile = None
        return self.inner.get(path, params)

    def server_now(self) -> int:
        now = self.inner.server_now()
        if self.probe_answered:
            self.clock_taken.set()
        return now


def sync_with_a_late_probe(
    fake: FakeStripe,
    meanwhile: Any = None,
    names: tuple[str, ...] = ("customers",),
    state: list[AirbyteStateMessage] | None = None,
    skew: int = 0,
) -> tuple[EntrypointOutput, ProbeAnswersLate]:
    clients: list[ProbeAnswersLate] = []

    def factory(config: Any) -> ProbeAnswersLate:
        clients.append(ProbeAnswersLate(make_client(fake, config, skew), meanwhile))
        return clients[-1]

    with fake.serving():
        output = read(
            SourcePerlyStripe(client_factory=factory), ConfigBuilder().build(), catalog(*names), state
        )
    return output, clients[0]


def test_given_a_first_sync_then_the_first_list_page_is_asked_before_the_probe_answers() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 250, NOW - 30 * DAY, 600)

    output, client = sync_with_a_late_probe(fake)

    assert client.page_asked_before_the_probe_answered, "the first page waited a round trip for the probe"
    emitted = Counter(r["id"] for r in records(output, "customers"))
    assert set(emitted) == {c["id"] for c in seeded}
    assert max(emitted.values()) == 1
    assert state_blob(output, "customers")["updated"] == NOW, "the cursor is Stripe's clock at the probe"


def test_given_objects_created_between_the_probe_and_the_first_page_then_none_is_lost_or_skipped() -> None:
    """The first page, asked with the probe, may list objects created after the probe answered: they
    are left to the next sync, which replays events from before this one's cursor."""
    fake = FakeStripe()
    seeded = seed_customers(fake, 150, NOW - 30 * DAY, 600)
    created_meanwhile: list[dict[str, Any]] = []

    def stripe_moves_on() -> None:
        fake.now = NOW + 1
        for i in range(120):  # more than a page: the whole first page is newer than the probe
            new = fake.add("customers", NOW + 1, object_id=f"cus_meanwhile_{i:03d}")
            created_meanwhile.append(new)
            fake.add_event("customer.created", new, NOW + 1)

    first, _ = sync_with_a_late_probe(fake, stripe_moves_on)
    second = sync(fake, "customers", state=final_states(first))

    assert len(created_meanwhile) == 120, "the first page was asked before the probe answered"
    first_ids = Counter(r["id"] for r in records(first, "customers"))
    assert set(first_ids) == {c["id"] for c in seeded}, "the first sync reads up to the probe's clock"
    assert max(first_ids.values()) == 1
    assert state_blob(first, "customers")["updated"] == NOW
    second_ids = {r["id"] for r in records(second, "customers")}
    assert second_ids == {c["id"] for c in created_meanwhile}, "the next sync gives what was created since"


def by_id(emitted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records by id, without the source's `updated` (Stripe's clock when each page came)."""
    return {r["id"]: {k: v for k, v in r.items() if k != "updated"} for r in emitted}


def invoices_and_charges_of_120_days() -> FakeStripe:
    fake = FakeStripe()
    for i in range(300):  # on both sides of every cut below
        fake.add("invoices", NOW - 120 * DAY + i * 34_000, customer="cus_1", lines={"data": []})
        fake.add("charges", NOW - 120 * DAY + i * 34_000 + 1, customer="cus_1")
    return fake


@pytest.mark.parametrize(
    "skew", [35 * DAY, 0, -35 * DAY], ids=["machine ahead", "agreeing", "machine behind"]
)
def test_given_windows_cut_by_the_machine_clock_then_the_first_sync_reads_what_a_plain_read_does(
    skew: int,
) -> None:
    """Invoices and charges begin as windows cut by the machine's clock (`EARLY_CUTS`), before the
    probe tells Stripe's. Whatever the skew, each object is read once, and what Stripe creates between
    the probe and the first pages is left to the next sync, as with one window. A cut after Stripe's
    now (the machine ahead) costs only the request of the empty window above it."""
    plain_fake = invoices_and_charges_of_120_days()
    plain = sync(plain_fake, "invoices", "charges")
    fake = invoices_and_charges_of_120_days()
    created_meanwhile: list[str] = []

    def stripe_moves_on() -> None:
        fake.now = NOW + 1
        for i in range(120):  # more than a page: the whole first page of the newest window
            new = fake.add("invoices", NOW + 1, object_id=f"in_meanwhile_{i:03d}", customer="cus_1")
            created_meanwhile.append(new["id"])
            fake.add_event("invoice.created", new, NOW + 1)

    first, client = sync_with_a_late_probe(fake, stripe_moves_on, ("invoices", "charges"), skew=skew)
    second = sync(fake, "invoices", "charges", state=final_states(first))

    assert client.page_asked_before_the_probe_answered
    for stream in ("invoices", "charges"):
        emitted = Counter(r["id"] for r in records(first, stream))
        assert max(emitted.values()) == 1, f"{stream}: an object read twice"
        assert by_id(records(first, stream)) == by_id(records(plain, stream)), stream
        final = state_blob(first, stream)
        assert final["updated"] == NOW, "the cursor is Stripe's clock at the probe"
        assert "backfill" not in final
    assert sorted(r["id"] for r in records(second, "invoices")) == created_meanwhile
    cuts_after_stripes_now = [
        age for ages in EARLY_CUTS.values() for age in ages if NOW + skew - age > NOW + 1
    ]
    windows_after_stripes_now = [
        q for q in map(query_of, fake.requests) if "created[gte]" in q and int(q["created[gte]"][0]) > NOW + 1
    ]
    assert len(windows_after_stripes_now) == len(cuts_after_stripes_now), "one request each, nothing more"


def test_given_a_stream_with_a_cursor_beside_a_new_one_then_only_the_new_one_begins_with_the_probe() -> None:
    """A stream with a state waits for the probe (its plan depends on what the probe tells); a stream
    added to the catalog since begins with it; both read what they should."""
    fake = FakeStripe()
    cursor = NOW - DAY
    changed = fake.add("customers", NOW - 90 * DAY, object_id="cus_changed", email="new@example.com")
    fake.add("customers", NOW - 80 * DAY, object_id="cus_untouched")
    fake.add_event("customer.updated", changed, cursor + 600)
    charges = [fake.add("charges", NOW - 40 * DAY + i * 3_600) for i in range(230)]

    output, client = sync_with_a_late_probe(
        fake, names=("customers", "charges"), state=events_mode_state("customers", cursor)
    )

    assert client.page_asked_before_the_probe_answered
    assert [r["id"] for r in records(output, "customers")] == ["cus_changed"]
    emitted = Counter(r["id"] for r in records(output, "charges"))
    assert set(emitted) == {c["id"] for c in charges}
    assert max(emitted.values()) == 1
    assert "/v1/customers" not in fake.paths(), "customers replays its events: no list read"
    assert state_blob(output, "customers")["updated"] == NOW
    assert state_blob(output, "charges")["updated"] == NOW


def test_given_backfill_when_read_then_no_state_precedes_the_records_it_covers() -> None:
    fake = FakeStripe()
    seed_customers(fake, 1_500, NOW - 300 * DAY, 17_000)

    output = sync(fake, "customers")

    seen: set[str] = set()
    for message in output.records_and_state_messages:
        if message.record is not None:
            seen.add(message.record.data["id"])
            continue
        blob = message.state.stream.stream_state.__dict__
        covered = blob["backfill"]["done"] if "backfill" in blob else [[0, blob["updated"] + 1]]
        for obj in fake.objects["customers"].values():
            if any(a <= obj["created"] < b for a, b in covered):
                assert obj["id"] in seen, "state claims a window whose records were not emitted yet"


def test_given_interrupted_backfill_when_read_then_completed_windows_are_not_read_again() -> None:
    fake = FakeStripe()
    old = seed_customers(fake, 50, NOW - 200 * DAY, 600)
    recent = seed_customers(fake, 50, NOW - 20 * DAY, 600)
    lower = NOW - 365 * DAY
    middle = NOW - 100 * DAY
    state = (
        StateBuilder()
        .with_stream_state(
            "customers",
            {"backfill": {"lower": lower, "upper": NOW + 1, "done": [[lower, middle]], "requests": 3}},
        )
        .build()
    )

    output = sync(fake, "customers", state=state)

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in recent)
    assert all(
        int(q["created[gte]"][0]) >= middle for q in map(query_of, fake.requests) if "created[gte]" in q
    )
    assert state_blob(output, "customers")["updated"] == NOW
    assert old  # the old ones exist in the account; the resumed sync rightly skipped their window


def test_given_backfill_interrupted_by_errors_when_resumed_then_all_records_and_done_windows_not_reread() -> (
    None
):
    fake = FakeStripe()
    seeded = seed_customers(fake, 3_000, NOW - 400 * DAY, 11_000)
    middle = NOW - 200 * DAY
    # Every window that ends before `middle` keeps failing: the first sync cannot finish them.
    fake.fail(
        r"^/v1/customers$",
        503,
        times=10_000,
        only_if=lambda q: int(q.get("created[lt]", [str(NOW + 1)])[0]) <= middle,
    )

    first = sync(fake, "customers", expecting_exception=True)
    fake.faults.clear()
    done = state_blob(first, "customers")["backfill"]["done"]
    fake.requests.clear()
    second = sync(fake, "customers", state=final_states(first))

    assert statuses(first, "customers")[-1] == AirbyteStreamStatus.INCOMPLETE
    assert done, "the windows finished before the failure are kept in the state"
    emitted = {r["id"] for r in records(first, "customers")} | {r["id"] for r in records(second, "customers")}
    assert emitted == {c["id"] for c in seeded}
    for query in map(query_of, fake.requests):
        if "created[gte]" in query:
            low, high = int(query["created[gte]"][0]), int(query.get("created[lt]", [str(NOW + 1)])[0])
            assert not any(a <= low and high <= b for a, b in done), "a finished window was read again"
    final = state_blob(second, "customers")
    assert final["updated"] == NOW
    assert "backfill" not in final, "the backfill is over: the next sync replays events"


def test_given_interrupted_backfill_older_than_event_retention_when_read_then_starts_over_with_warning() -> (
    None
):
    fake = FakeStripe()
    seeded = seed_customers(fake, 40, NOW - 300 * DAY, 5 * DAY)
    upper = NOW - 40 * DAY
    lower = NOW - 365 * DAY
    state = (
        StateBuilder()
        .with_stream_state(
            "customers", {"backfill": {"lower": lower, "upper": upper, "done": [[lower, upper]]}}
        )
        .build()
    )

    output = sync(fake, "customers", state=state)

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in seeded)
    assert any("starts again" in m.log.message for m in output.logs)
    assert state_blob(output, "customers")["updated"] == NOW


def test_given_cursor_deleted_while_paging_when_read_then_no_record_is_lost() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 250, NOW - 2 * DAY, 60)
    # The first page ends with seeded[150]; it disappears before the second page is asked for.
    fake.fail(r"^/v1/customers$", 404, times=0)
    original = fake._respond
    victim = seeded[150]["id"]

    def respond(request: Any, context: Any) -> Any:
        if query_of(request).get("starting_after") == [victim]:
            fake.objects["customers"].pop(victim, None)
        return original(request, context)

    fake._respond = respond  # type: ignore[method-assign]

    output = sync(fake, "customers")

    emitted = {r["id"] for r in records(output, "customers")}
    assert emitted >= {c["id"] for c in seeded} - {victim}


def test_given_subscription_with_30_items_and_invoice_with_25_lines_when_read_then_lists_are_complete() -> (
    None
):
    fake = FakeStripe()
    items = [{"id": f"si_{i:03d}", "object": "subscription_item", "created": NOW - DAY} for i in range(30)]
    fake.add(
        "subscriptions",
        NOW - DAY,
        object_id="sub_big",
        status="active",
        items={"object": "list", "data": items},
    )
    fake.add(
        "subscriptions",
        NOW - DAY,
        object_id="sub_old",
        status="canceled",
        items={"object": "list", "data": []},
    )
    lines = [{"id": f"il_{i:03d}", "object": "line_item"} for i in range(25)]
    fake.add("invoices", NOW - DAY, object_id="in_big", lines={"object": "list", "data": lines})

    output = sync(fake, "subscriptions", "invoices")

    subs = {r["id"]: r for r in records(output, "subscriptions")}
    assert set(subs) == {"sub_big", "sub_old"}, "canceled subscriptions are synced too (status=all)"
    assert sorted(i["id"] for i in subs["sub_big"]["items"]["data"]) == [i["id"] for i in items]
    assert subs["sub_big"]["items"]["has_more"] is False
    (invoice,) = records(output, "invoices")
    assert sorted(line["id"] for line in invoice["lines"]["data"]) == [line["id"] for line in lines]
    sub_lists = [query_of(r) for r in fake.requests if urlparse(r.url).path == "/v1/subscriptions"]
    expand = ["data.discounts", "data.items.data.discounts"]
    assert all(q.get("status") == ["all"] and q.get("expand[]") == expand for q in sub_lists)


def test_given_a_long_invoice_on_a_page_when_read_then_the_next_page_is_asked_while_its_lines_come() -> None:
    """A window does not wait a round trip for a page's sublists before it asks for its next page."""
    fake = FakeStripe()
    lines = [{"id": f"il_{i:03d}", "object": "line_item"} for i in range(25)]
    for i in range(150):
        fake.add("invoices", NOW - DAY - i, lines={"object": "list", "data": lines if i == 0 else []})
    next_page_asked = threading.Event()
    asked_before_lines_answered: list[bool] = []

    class Observing:  # sees each request before the fake Stripe (which answers one at a time)
        def __init__(self, inner: StripeClient) -> None:
            self.inner = inner

        def get(self, path: str, params: Any = ()) -> dict[str, Any]:
            if path == "/v1/invoices" and "starting_after" in dict(params):
                next_page_asked.set()
            if path.endswith("/lines"):
                asked_before_lines_answered.append(next_page_asked.wait(timeout=5))
            return self.inner.get(path, params)

        def server_now(self) -> int:
            return self.inner.server_now()

    plain = make_source(fake)._client_factory
    with fake.serving():
        output = read(
            SourcePerlyStripe(client_factory=lambda config: Observing(plain(config))),
            ConfigBuilder().build(),
            catalog("invoices"),
            None,
        )

    assert asked_before_lines_answered == [True]
    invoices = records(output, "invoices")
    assert len(invoices) == 150
    assert [len(r["lines"]["data"]) for r in invoices if r["lines"]["data"]] == [25]


GONE = {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such invoice"}}


def test_given_an_invoice_deleted_before_its_lines_are_read_when_read_then_it_is_left_out() -> None:
    fake = FakeStripe()
    lines = [{"id": f"il_{i:03d}", "object": "line_item"} for i in range(25)]
    fake.add("invoices", NOW - DAY, object_id="in_gone", lines={"object": "list", "data": lines})
    fake.add("invoices", NOW - DAY, object_id="in_kept", lines={"object": "list", "data": lines})
    fake.fail(r"^/v1/invoices/in_gone/lines$", 404, body=GONE)

    output = sync(fake, "invoices")

    assert [r["id"] for r in records(output, "invoices")] == ["in_kept"]
    assert len(records(output, "invoices")[0]["lines"]["data"]) == 25
    assert statuses(output, "invoices")[-1] == AirbyteStreamStatus.COMPLETE


def test_given_an_item_removed_while_items_are_paged_when_read_then_the_list_is_read_again() -> None:
    fake = FakeStripe()
    # More than one page of items (100), so the list is paged with a cursor.
    items = [{"id": f"si_{i:03d}", "object": "subscription_item", "created": NOW - DAY} for i in range(250)]
    fake.add(
        "subscriptions",
        NOW - DAY,
        object_id="sub_1",
        status="active",
        items={"object": "list", "data": items},
    )
    fake.fail(r"^/v1/subscription_items$", 404, body=GONE, only_if=lambda query: "starting_after" in query)

    output = sync(fake, "subscriptions")

    (subscription,) = records(output, "subscriptions")
    assert sorted(i["id"] for i in subscription["items"]["data"]) == [i["id"] for i in items]
    assert statuses(output, "subscriptions")[-1] == AirbyteStreamStatus.COMPLETE


# ------------------------------------------------------------------------------------- events replay


def events_mode_state(stream: str, cursor: int) -> list[AirbyteStateMessage]:
    return StateBuilder().with_stream_state(stream, {"updated": cursor}).build()


def test_given_many_events_about_one_object_when_read_then_it_is_fetched_once_in_its_current_version() -> (
    None
):
    fake = FakeStripe()
    cursor = NOW - DAY
    sub = fake.add("subscriptions", NOW - 90 * DAY, object_id="sub_1", status="active", items={"data": []})
    for minutes, status in ((10, "active"), (20, "past_due"), (30, "past_due")):
        fake.add_event("customer.subscription.updated", {**sub, "status": status}, cursor + minutes * 60)
    sub["status"] = "past_due"
    fake.add("subscriptions", NOW - 90 * DAY, object_id="sub_untouched", status="active")

    output = sync(fake, "subscriptions", state=events_mode_state("subscriptions", cursor))

    (record,) = records(output, "subscriptions")
    assert record["id"] == "sub_1"
    assert record["status"] == "past_due"
    assert record["updated"] == NOW
    assert fake.paths().count("/v1/subscriptions/sub_1") == 1
    assert "/v1/subscriptions" not in fake.paths(), "no list read: changes come from events"
    assert state_blob(output, "subscriptions")["updated"] == NOW


def pinned_event(fake: FakeStripe, event_type: str, obj: dict[str, Any], created: int) -> None:
    """An event as Stripe renders it at the API version the source pins: data.object as it was then."""
    rendered = FakeStripe._render(obj)
    fake.add("events", created, type=event_type, data={"object": rendered}, api_version=API_VERSION)


def test_given_event_carrying_the_whole_object_when_read_then_it_is_emitted_without_a_fetch() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    sub = fake.add(
        "subscriptions", NOW - 90 * DAY, object_id="sub_1", status="active", discounts=[], items={"data": []}
    )
    pinned_event(fake, "customer.subscription.updated", {**sub, "status": "active"}, cursor + 60)
    pinned_event(fake, "customer.subscription.updated", {**sub, "status": "past_due"}, cursor + 120)

    output = sync(fake, "subscriptions", state=events_mode_state("subscriptions", cursor))

    (record,) = records(output, "subscriptions")
    assert (record["id"], record["status"], record["updated"]) == ("sub_1", "past_due", cursor + 120)
    assert "/v1/subscriptions/sub_1" not in fake.paths()


def test_given_events_stream_too_when_object_taken_from_its_event_then_the_event_record_is_unchanged() -> (
    None
):
    """In process, the source hands out its record dicts: the object taken from an event is a copy."""
    fake = FakeStripe()
    cursor = NOW - DAY
    sub = fake.add("subscriptions", NOW - 90 * DAY, object_id="sub_1", discounts=[], items={"data": []})
    pinned_event(fake, "customer.subscription.updated", sub, cursor + 60)
    state = StateBuilder().with_stream_state("subscriptions", {"updated": cursor})
    state = state.with_stream_state("events", {"created": cursor}).build()

    with fake.serving():
        messages = list(
            make_source(fake).read(
                logging.getLogger("test"), ConfigBuilder().build(), catalog("subscriptions", "events"), state
            )
        )

    emitted = [m.record for m in messages if m.record is not None]
    (event,) = [r.data for r in emitted if r.stream == "events"]
    (record,) = [r.data for r in emitted if r.stream == "subscriptions"]
    assert record["updated"] == cursor + 60
    assert "updated" not in event["data"]["object"]


@pytest.mark.parametrize(
    ("why", "event_fields", "second_event_fields"),
    [
        ("rendered at another API version", {"api_version": "2024-06-20"}, None),
        ("discounts not expanded", {"discounts": ["di_1"]}, None),
        (
            "an item's discounts not expanded",
            {"items": {"data": [{"id": "si_1", "discounts": ["di_2"]}]}},
            None,
        ),
        ("two different objects in one second", {}, {"status": "canceled"}),
    ],
)
def test_given_event_object_that_is_not_the_fetched_one_when_read_then_the_object_is_fetched(
    why: str, event_fields: dict[str, Any], second_event_fields: dict[str, Any] | None
) -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    sub = fake.add(
        "subscriptions", NOW - 90 * DAY, object_id="sub_1", status="unpaid", discounts=[], items={"data": []}
    )
    version = event_fields.pop("api_version", API_VERSION)
    event_object = {**sub, "status": "past_due", **event_fields}
    fake.add(
        "events",
        cursor + 60,
        type="customer.subscription.updated",
        data={"object": event_object},
        api_version=version,
    )
    if second_event_fields is not None:
        pinned_event(fake, "customer.subscription.updated", {**sub, **second_event_fields}, cursor + 60)

    output = sync(fake, "subscriptions", state=events_mode_state("subscriptions", cursor))

    (record,) = records(output, "subscriptions")
    assert record["status"] == "unpaid", why
    assert fake.paths().count("/v1/subscriptions/sub_1") == 1, why


def test_given_invoice_events_of_one_second_when_read_then_the_furthest_along_is_taken() -> None:
    """created, finalized and paid in one second: the paid invoice is the later, whatever the order."""
    fake = FakeStripe()
    cursor = NOW - DAY
    at = cursor + 60
    invoice = fake.add("invoices", at, object_id="in_1", customer="cus_1", status="paid")
    steps = (
        ("invoice.paid", "paid", {"finalized_at": at, "paid_at": at}),
        ("invoice.created", "draft", {"finalized_at": None, "paid_at": None}),
        ("invoice.finalized", "open", {"finalized_at": at, "paid_at": None}),
    )
    for event_type, status, transitions in steps:
        pinned_event(fake, event_type, {**invoice, "status": status, "status_transitions": transitions}, at)

    output = sync(fake, "invoices", state=events_mode_state("invoices", cursor))

    (record,) = records(output, "invoices")
    assert record["status"] == "paid"
    assert "/v1/invoices/in_1" not in fake.paths()


def test_given_event_invoice_with_more_than_ten_lines_when_read_then_only_its_lines_are_fetched() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    lines = [{"id": f"il_{i:03d}", "object": "line_item"} for i in range(25)]
    invoice = fake.add("invoices", NOW - 5 * DAY, object_id="in_1", customer="cus_1", lines={"data": lines})
    pinned_event(fake, "invoice.finalized", invoice, cursor + 60)

    output = sync(fake, "invoices", state=events_mode_state("invoices", cursor))

    (record,) = records(output, "invoices")
    assert sorted(line["id"] for line in record["lines"]["data"]) == [line["id"] for line in lines]
    assert record["lines"]["has_more"] is False
    assert "/v1/invoices/in_1" not in fake.paths()
    assert fake.paths().count("/v1/invoices/in_1/lines") == 1


def test_given_events_when_read_then_events_are_asked_from_just_before_the_cursor_with_billing_types() -> (
    None
):
    fake = FakeStripe()
    cursor = NOW - DAY

    sync(fake, "invoices", state=events_mode_state("invoices", cursor))

    event_queries = [query_of(r) for r in fake.requests if urlparse(r.url).path == "/v1/events"]
    listed = [q for q in event_queries if "types[]" in q]
    assert listed
    assert min(int(q["created[gte]"][0]) for q in listed) == cursor - EVENTS_OVERLAP
    assert all(len(q["types[]"]) <= 20 for q in listed)
    assert "invoice.paid" in listed[0]["types[]"]


def test_given_deleted_customer_event_when_read_then_tombstone_without_a_fetch() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    customer = fake.add("customers", NOW - 50 * DAY, object_id="cus_gone")
    fake.add_event("customer.deleted", customer, cursor + 100)
    fake.delete("customers", "cus_gone")

    output = sync(fake, "customers", state=events_mode_state("customers", cursor))

    assert records(output, "customers") == [
        {"id": "cus_gone", "object": "customer", "deleted": True, "updated": cursor + 100}
    ]
    assert "/v1/customers/cus_gone" not in fake.paths()


def account_with_a_deleted_customer() -> FakeStripe:
    """Stripe lists only live customers; the canceled subscription of a deleted one still names it."""
    fake = FakeStripe()
    fake.add("customers", NOW - 90 * DAY, object_id="cus_live")
    fake.add("customers", NOW - 80 * DAY, object_id="cus_gone")
    fake.delete("customers", "cus_gone")
    fake.add("subscriptions", NOW - 70 * DAY, object_id="sub_gone", customer="cus_gone", status="canceled")
    return fake


def test_given_customer_deleted_before_the_first_sync_when_read_without_events_then_tombstone() -> None:
    fake = account_with_a_deleted_customer()
    fake.add("invoices", NOW - 60 * DAY, object_id="in_live", customer="cus_live", status="paid")
    config = ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()

    output = sync(fake, "customers", "subscriptions", "invoices", config=config)

    assert records(output, "customers") == [
        {
            "id": "cus_live",
            "object": "customer",
            "created": NOW - 90 * DAY,
            "livemode": False,
            "updated": NOW,
        },
        {"id": "cus_gone", "object": "customer", "deleted": True, "updated": NOW},
    ]
    assert fake.paths().count("/v1/customers/cus_gone") == 1
    assert "/v1/customers/cus_live" not in fake.paths()
    assert output.is_in_logs(
        "customers: 1 customers named by subscriptions, invoices or charges were not listed"
    )
    # The customers state is acknowledged only after the tombstone.
    order = [
        "record" if m.record is not None else "state"
        for m in output.records_and_state_messages
        if (m.record.stream if m.record is not None else m.state.stream.stream_descriptor.name) == "customers"
    ]
    assert order[-2:] == ["record", "state"]
    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.COMPLETE


def test_given_customers_listed_when_a_charge_names_an_unlisted_customer_then_it_is_fetched_at_once() -> None:
    """Not after the owning streams end: the end of a first sync waits a round trip less."""
    fake = account_with_a_deleted_customer()
    fake.add("charges", NOW - 60, object_id="ch_gone", customer="cus_gone")
    for i in range(2_000):
        fake.add("charges", NOW - 120 - i * 60, customer="cus_live")
    config = ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()

    output = sync(fake, "customers", "charges", config=config)

    paths = fake.paths()
    last_charges_page = max(i for i, path in enumerate(paths) if path == "/v1/charges")
    assert paths.count("/v1/customers/cus_gone") == 1
    assert paths.index("/v1/customers/cus_gone") < last_charges_page
    assert {"id": "cus_gone", "object": "customer", "deleted": True, "updated": NOW} in records(
        output, "customers"
    )
    assert output.is_in_logs(
        "customers: 1 customers named by subscriptions, invoices or charges were not listed"
    )


def test_given_the_unlisted_customer_fetch_fails_when_synced_again_then_the_tombstone_comes() -> None:
    fake = account_with_a_deleted_customer()
    fake.fail(r"^/v1/customers/cus_gone$", 500, times=10)
    config = ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()

    failed = sync(fake, "customers", "subscriptions", config=config, expecting_exception=True)
    fake.faults.clear()
    retried = sync(fake, "customers", "subscriptions", state=final_states(failed), config=config)

    assert statuses(failed, "customers")[-1] == AirbyteStreamStatus.INCOMPLETE
    assert {"id": "cus_gone", "object": "customer", "deleted": True, "updated": NOW} in records(
        retried, "customers"
    )


def read_until_state(
    fake: FakeStripe,
    names: tuple[str, ...],
    stop: Any,
    state: list[Any] | None = None,
    held_back: dict[str, threading.Event] | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """A sync killed right after the first STATE for which `stop(stream, blob, emitted ids)` is true: the
    records it emitted and the last state of each stream acknowledged by then (the next sync's).
    `held_back`: see `make_source`."""
    config = ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()
    emitted: list[dict[str, Any]] = []
    last: dict[str, Any] = {s.stream.stream_descriptor.name: s for s in state or []}
    with fake.serving():
        messages = make_source(fake, held_back).read(
            logging.getLogger("test"), config, catalog(*names), state
        )
        try:
            for message in messages:
                if message.type == Type.RECORD:
                    emitted.append(message.record.data)
                elif message.type == Type.STATE:
                    stream = message.state.stream.stream_descriptor.name
                    last[stream] = message.state
                    blob = dict(message.state.stream.stream_state.__dict__)
                    if stop(stream, blob, {r["id"] for r in emitted}):
                        break
        finally:
            messages.close()  # type: ignore[attr-defined]
    return emitted, list(last.values())


OWNERS = ("subscriptions", "invoices", "charges")
GONE = {"id": "cus_gone", "object": "customer", "deleted": True, "updated": NOW}


def test_given_the_first_sync_killed_after_the_owning_streams_completed_when_resumed_then_the_tombstone_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(source_module, "settings_from", lambda config: ReadSettings(state_interval_seconds=0))
    fake = account_with_a_deleted_customer()
    fake.add("invoices", NOW - 60 * DAY, object_id="in_live", customer="cus_live", status="paid")
    fake.add("charges", NOW - 60 * DAY, object_id="ch_live", customer="cus_live")
    names = ("customers", *OWNERS)
    completed: set[str] = set()
    # The unlisted customer's fetch waits for the kill: the customers list may be read in full before
    # the owners complete, and the fetch then start at once (`_fetch_unlisted_early`).
    killed_now = threading.Event()

    def owners_completed(stream: str, blob: dict[str, Any], emitted: set[str]) -> bool:
        if stream in OWNERS and "backfill" not in blob:  # its final state: it will not be read again
            completed.add(stream)
        if completed == set(OWNERS):  # killed before customers fetched the unlisted one
            killed_now.set()
        return killed_now.is_set()

    held_back = {"/v1/customers/cus_gone": killed_now}
    killed, acknowledged = read_until_state(fake, names, owners_completed, held_back=held_back)
    resumed, _ = read_until_state(fake, names, lambda *_: False, acknowledged)

    assert GONE not in killed
    assert GONE in resumed
    assert "/v1/customers/cus_live" not in fake.paths()


def test_given_the_first_sync_killed_while_an_owning_stream_reads_when_resumed_then_the_tombstone_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(source_module, "settings_from", lambda config: ReadSettings(state_interval_seconds=0))
    fake = FakeStripe()
    live = seed_customers(fake, 300, NOW - 300 * DAY, DAY // 2)
    fake.add("customers", NOW - 299 * DAY, object_id="cus_gone")
    fake.delete("customers", "cus_gone")
    fake.add("subscriptions", NOW - 298 * DAY, object_id="sub_gone", customer="cus_gone", status="canceled")
    for customer in live:
        fake.add("subscriptions", customer["created"] + 60, customer=customer["id"], status="active")
    names = ("customers", "subscriptions")

    def sub_gone_acknowledged(stream: str, blob: dict[str, Any], emitted: set[str]) -> bool:
        # The page that named cus_gone is acknowledged (never read again), the stream not finished.
        return stream == "subscriptions" and "sub_gone" in emitted and "backfill" in blob

    killed, acknowledged = read_until_state(fake, names, sub_gone_acknowledged)
    output = sync(
        fake, *names, state=acknowledged, config=ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()
    )
    resumed = [m.record.data for m in output.records]

    assert "sub_gone" in {r["id"] for r in killed}
    assert "sub_gone" not in {r["id"] for r in resumed}
    assert GONE in resumed
    # The resumed sync lists every customer again rather than fetch the live ones one by one, and says so.
    assert {r["id"] for r in resumed if r["id"].startswith("cus_")} == {c["id"] for c in live} | {"cus_gone"}
    assert [p for p in fake.paths() if p.startswith("/v1/customers/")] == ["/v1/customers/cus_gone"]
    # It says so when the interrupted sync had acknowledged part of the customers list (whether it
    # had by the kill depends on how the streams' pages interleaved).
    customers_state = [
        dict(s.stream.stream_state.__dict__)
        for s in acknowledged
        if s.stream.stream_descriptor.name == "customers"
    ]
    listed_in_part = any(
        b > a for state in customers_state for a, b in state.get("backfill", {}).get("done", [])
    )
    said = any("customers list is read again from the start" in m.log.message for m in output.logs)
    assert said == listed_in_part
    assert all("backfill" not in dict(s.stream.stream_state.__dict__) for s in final_states(output))


def test_given_an_events_stream_when_first_sync_then_unlisted_customers_are_not_fetched() -> None:
    fake = account_with_a_deleted_customer()

    output = sync(fake, "customers", "subscriptions", "events")

    assert [r["id"] for r in records(output, "customers")] == ["cus_live"]
    assert "/v1/customers/cus_gone" not in fake.paths()


def test_given_every_named_customer_is_listed_when_first_sync_then_no_customer_is_fetched() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 30, NOW - 100 * DAY, DAY)
    for i, customer in enumerate(seeded):
        fake.add("subscriptions", customer["created"] + 60, customer=customer["id"], status="active")
        fake.add("charges", customer["created"] + 120, customer=customer["id"] if i % 2 else None)

    config = ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()

    output = sync(fake, "customers", "subscriptions", "charges", config=config)

    assert len(records(output, "customers")) == 30
    assert not [path for path in fake.paths() if path.startswith("/v1/customers/")]
    assert not output.is_in_logs("were not listed")


def test_given_changed_object_that_no_longer_exists_when_read_then_tombstone() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    invoice = fake.add("invoices", NOW - 5 * DAY, object_id="in_draft", customer="cus_9")
    fake.add_event("invoice.updated", invoice, cursor + 60)
    fake.delete("invoices", "in_draft")

    output = sync(fake, "invoices", state=events_mode_state("invoices", cursor))

    assert records(output, "invoices") == [
        {"id": "in_draft", "object": "invoice", "deleted": True, "customer": "cus_9", "updated": NOW}
    ]


def test_given_changed_invoice_whose_lines_are_gone_when_read_then_tombstone() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    lines = [{"id": f"il_{i:03d}", "object": "line_item"} for i in range(25)]
    invoice = fake.add(
        "invoices", NOW - 5 * DAY, object_id="in_draft", customer="cus_9", lines={"data": lines}
    )
    fake.add_event("invoice.updated", invoice, cursor + 60)
    fake.fail(r"^/v1/invoices/in_draft/lines$", 404, body=GONE)  # deleted between retrieve and lines

    output = sync(fake, "invoices", state=events_mode_state("invoices", cursor))

    assert records(output, "invoices") == [
        {"id": "in_draft", "object": "invoice", "deleted": True, "customer": "cus_9", "updated": NOW}
    ]


def test_given_start_date_when_events_are_replayed_then_objects_created_before_it_stay_out() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    start = "2026-01-01T00:00:00Z"
    old = fake.add("subscriptions", NOW - 400 * DAY, object_id="sub_old", status="active", items={"data": []})
    new = fake.add("subscriptions", NOW - 10 * DAY, object_id="sub_new", status="active", items={"data": []})
    gone = fake.add("subscriptions", NOW - 400 * DAY, object_id="sub_gone", status="canceled")
    for obj in (old, new):
        fake.add_event("customer.subscription.updated", obj, cursor + 60)
    fake.add_event("customer.subscription.deleted", gone, cursor + 120)
    old_charge = fake.add("charges", NOW - 400 * DAY, object_id="ch_old", status="succeeded")
    fake.add_event(
        "charge.dispute.created", {"id": "dp_1", "charge": "ch_old", "created": cursor}, cursor + 60
    )
    config = ConfigBuilder().with_start_date(start).build()
    state = StateBuilder().with_stream_state("subscriptions", {"updated": cursor})
    state = state.with_stream_state("charges", {"updated": cursor}).build()

    output = sync(fake, "subscriptions", "charges", state=state, config=config)

    assert [r["id"] for r in records(output, "subscriptions")] == ["sub_new"]
    assert records(output, "charges") == [], f"{old_charge['id']} was created before start_date"


def test_given_dispute_event_when_read_then_its_charge_is_refetched() -> None:
    fake = FakeStripe()
    cursor = NOW - DAY
    fake.add("charges", NOW - 9 * DAY, object_id="ch_1", disputed=True)
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "created": cursor + 5}
    fake.add_event("charge.dispute.created", dispute, cursor + 5)

    output = sync(fake, "charges", state=events_mode_state("charges", cursor))

    assert [(r["id"], r["disputed"]) for r in records(output, "charges")] == [("ch_1", True)]


def test_given_events_stream_when_read_then_billing_events_emitted_with_created_cursor() -> None:
    fake = FakeStripe()
    customer = fake.add("customers", NOW - 3 * DAY)
    created = fake.add_event("customer.created", customer, NOW - 3 * DAY)
    fake.add("events", NOW - DAY, type="account.updated", data={"object": {"id": "acct_1"}})

    output = sync(fake, "events")

    assert [r["id"] for r in records(output, "events")] == [created["id"]]
    assert state_blob(output, "events") == {"created": NOW}


def test_given_cursor_older_than_event_retention_when_read_then_full_reread_with_warning() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 40, NOW - 300 * DAY, 5 * DAY)

    output = sync(fake, "customers", state=events_mode_state("customers", NOW - 45 * DAY))

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in seeded)
    assert output.is_in_logs("30 days")
    warnings = [m.log.message for m in output.logs if m.log.level.value == "WARN"]
    assert any("customers" in w and "in full" in w for w in warnings)


# ----------------------------------------------------------------------------- permissions and errors


def test_given_restricted_key_without_events_when_read_then_streams_reread_in_full_and_log_the_cost() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 20, NOW - 100 * DAY, DAY)
    state = (
        StateBuilder()
        .with_stream_state("customers", {"updated": NOW - DAY, "full_read_requests": 42})
        .build()
    )

    output = sync(
        fake, "customers", state=state, config=ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()
    )

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in seeded)
    assert output.is_in_logs("rak_event_read")
    assert output.is_in_logs("42 requests")
    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.COMPLETE


def test_given_restricted_key_lacking_a_permission_when_read_then_stream_named_once_and_others_complete() -> (
    None
):
    fake = FakeStripe()
    seed_customers(fake, 5, NOW - 10 * DAY, DAY)
    fake.add("prices", NOW - 10 * DAY)

    output = sync(
        fake, "customers", "prices", config=ConfigBuilder().with_api_key(TEST_RESTRICTED_KEY).build()
    )

    assert len(records(output, "customers")) == 5
    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.COMPLETE
    assert statuses(output, "prices")[-1] == AirbyteStreamStatus.INCOMPLETE
    named = [m.log.message for m in output.logs if "rak_plan_read" in m.log.message]
    assert len(named) == 1
    assert "prices" in named[0]
    assert not output.errors, "a stream the key cannot read does not fail the sync"


def test_given_invalid_key_when_read_then_config_error() -> None:
    fake = FakeStripe()

    output = sync(
        fake,
        "customers",
        config=ConfigBuilder().with_api_key("sk_test_notKnownToStripe123").build(),
        expecting_exception=True,
    )

    assert output.errors[-1].trace.error.failure_type == FailureType.config_error
    assert "sk_test_notKnownToStripe123" not in output.errors[-1].trace.error.message


def test_given_rate_limited_then_ok_when_read_then_all_records_after_retry() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 10, NOW - DAY, 60)
    fake.fail(r"^/v1/customers$", 429, times=2, headers={"Retry-After": "0"})

    output = sync(fake, "customers")

    assert len(records(output, "customers")) == len(seeded)
    assert not output.errors


def test_given_server_errors_beyond_retries_when_read_then_stream_incomplete_and_transient_error() -> None:
    fake = FakeStripe()
    seed_customers(fake, 10, NOW - DAY, 60)
    fake.add("products", NOW - DAY)
    fake.fail(r"^/v1/customers$", 503, times=1_000)

    output = sync(fake, "customers", "products", expecting_exception=True)

    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.INCOMPLETE
    assert statuses(output, "products")[-1] == AirbyteStreamStatus.COMPLETE
    assert output.errors[-1].trace.error.failure_type == FailureType.transient_error
    assert "customers" in output.errors[-1].trace.error.message


def test_given_unknown_stream_in_catalog_when_read_then_config_error() -> None:
    fake = FakeStripe()

    output = sync(fake, "refunds", expecting_exception=True)

    assert output.errors[-1].trace.error.failure_type == FailureType.config_error


@pytest.mark.parametrize("mode", [SyncMode.incremental, SyncMode.full_refresh], ids=["incremental", "full"])
def test_given_whole_sync_of_every_stream_then_every_request_is_a_get_with_the_pinned_version(
    mode: SyncMode,
) -> None:
    fake = FakeStripe()
    customer = fake.add("customers", NOW - 40 * DAY)
    fake.add("subscriptions", NOW - 40 * DAY, status="active", items={"data": []})
    fake.add("invoices", NOW - 40 * DAY, lines={"data": []})
    for resource in ("charges", "coupons", "prices", "products"):
        fake.add(resource, NOW - 40 * DAY)
    fake.add_event("customer.updated", customer, NOW - DAY)
    names = ("customers", "subscriptions", "invoices", "charges", "coupons", "prices", "products", "events")

    first = sync(fake, *names, mode=mode)
    second = sync(fake, *names, state=final_states(first), mode=mode)

    assert not first.errors
    assert not second.errors
    assert fake.requests
    assert {r.method for r in fake.requests} == {"GET"}
    assert {r.headers.get("Stripe-Version") for r in fake.requests} == {API_VERSION}
    for name in names:
        assert statuses(first, name)[-1] == AirbyteStreamStatus.COMPLETE


def test_given_events_cursor_older_than_retention_when_read_then_warns_and_reads_what_stripe_still_has() -> (
    None
):
    fake = FakeStripe()
    customer = fake.add("customers", NOW - 20 * DAY)
    kept = fake.add_event("customer.updated", customer, NOW - 5 * DAY)
    state = StateBuilder().with_stream_state("events", {"created": NOW - 40 * DAY}).build()

    output = sync(fake, "events", state=state)

    assert [r["id"] for r in records(output, "events")] == [kept["id"]]
    assert any("events" in m.log.message and "30-day" in m.log.message for m in output.logs)


def test_given_full_refresh_when_read_then_everything_read_and_no_state_kept() -> None:
    fake = FakeStripe()
    seeded = seed_customers(fake, 30, NOW - 30 * DAY, DAY // 2)

    output = sync(
        fake, "customers", mode=SyncMode.full_refresh, state=events_mode_state("customers", NOW - DAY)
    )

    assert sorted(r["id"] for r in records(output, "customers")) == sorted(c["id"] for c in seeded)
    assert not output.state_messages


def test_given_key_revoked_during_sync_when_read_then_config_error_without_the_key() -> None:
    fake = FakeStripe()
    seed_customers(fake, 3_000, NOW - 300 * DAY, 8_000)
    original = fake._respond

    def respond(request: Any, context: Any) -> Any:
        if len(fake.requests) == 5:
            fake.keys.clear()  # revoked in the Dashboard while we read
        return original(request, context)

    fake._respond = respond  # type: ignore[method-assign]

    output = sync(fake, "customers", expecting_exception=True)

    error = output.errors[-1].trace.error
    assert error.failure_type == FailureType.config_error
    assert ConfigBuilder().build()["api_key"] not in error.message
    assert len(fake.requests) < 40, "the sync stops instead of failing request after request"


# ------------------------------------------------------------------------- broken or hostile answers


def test_given_server_ignoring_starting_after_when_read_then_error_names_the_endpoint_without_looping() -> (
    None
):
    fake = FakeStripe()
    seeded = [fake.add("customers", NOW - 20) for _ in range(150)]
    first_page = sorted(seeded, key=lambda c: c["id"], reverse=True)[:100]
    # Every "next page" is the first page again, still with has_more.
    fake.fail(
        r"^/v1/customers$",
        200,
        times=10_000,
        body={"object": "list", "has_more": True, "data": first_page},
        only_if=lambda query: "starting_after" in query,
    )

    output = sync(fake, "customers", expecting_exception=True)

    assert len(fake.requests) < 40, "the read stops at the first page that does not move on"
    assert len(records(output, "customers")) <= 150
    messages = [m.trace.error.message for m in output.errors]
    assert any("/v1/customers" in m and "starting_after" in m for m in messages), messages
    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.INCOMPLETE


def test_given_server_ignoring_the_created_filter_when_read_then_error_instead_of_endless_windows() -> None:
    fake = FakeStripe()
    page = {
        "object": "list",
        "has_more": True,
        "data": [{"id": "cus_a", "object": "customer", "created": NOW - 20}],
    }
    fake.fail(r"^/v1/customers$", 200, times=10_000, body=page)

    output = sync(fake, "customers", expecting_exception=True)

    assert len(fake.requests) < 60
    messages = [m.trace.error.message for m in output.errors]
    assert any("/v1/customers" in m and "created" in m for m in messages), messages


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ("not a list", "`data`"),
        ([{"object": "customer", "created": NOW - 20}], "`id`"),
        ([{"id": "cus_a", "object": "customer"}], "`created`"),
        (["cus_a"], "not a JSON object"),
    ],
    ids=["data-string", "no-id", "no-created", "not-an-object"],
)
def test_given_page_of_unexpected_shape_when_read_then_error_names_endpoint_and_field_and_no_bad_record(
    data: Any, named: str
) -> None:
    fake = FakeStripe()
    fake.fail(r"^/v1/customers$", 200, times=10_000, body={"object": "list", "has_more": False, "data": data})

    output = sync(fake, "customers", expecting_exception=True)

    assert records(output, "customers") == []
    messages = [m.trace.error.message for m in output.errors]
    assert any("/v1/customers" in m and named in m for m in messages), messages
    assert not any("TypeError" in m or "KeyError" in m for m in messages)
    assert output.errors[-1].trace.error.failure_type == FailureType.system_error


def test_given_cursor_ahead_of_stripes_clock_when_read_then_warns_and_reads_changes_from_stripes_now() -> (
    None
):
    fake = FakeStripe()
    customer = fake.add("customers", NOW - 20 * DAY)
    fake.add_event("customer.updated", customer | {"email": "late@example.com"}, NOW - 60)
    customer["email"] = "late@example.com"

    output = sync(fake, "customers", state=events_mode_state("customers", NOW + 5 * DAY))

    assert [r["email"] for r in records(output, "customers")] == ["late@example.com"]
    assert any("clock" in m.log.message for m in output.logs if m.log.level.value == "WARN")
    assert state_blob(output, "customers")["updated"] == NOW


# ------------------------------------------------------------------------ checkpoints and progress


def read_until(
    fake: FakeStripe, stop_after: int, state: list[Any] | None = None
) -> tuple[list[str], list[Any]]:
    """A sync killed after `stop_after` records: the ids it emitted and the last state it sent."""
    emitted: list[str] = []
    last_state: list[Any] = list(state or [])
    with fake.serving():
        messages = make_source(fake).read(
            logging.getLogger("test"), ConfigBuilder().build(), catalog("customers"), state
        )
        try:
            for message in messages:
                if message.type == Type.RECORD:
                    emitted.append(message.record.data["id"])
                    if len(emitted) == stop_after:
                        break
                elif message.type == Type.STATE:
                    last_state = [message.state]
        finally:
            messages.close()  # type: ignore[attr-defined]
    return emitted, last_state


def test_given_backfill_killed_inside_a_window_when_resumed_then_nothing_lost_and_at_most_a_page_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One dense range: its windows are read page by page, and the kill falls inside one of them.
    monkeypatch.setattr(source_module, "settings_from", lambda config: ReadSettings(state_interval_seconds=0))
    fake = FakeStripe()
    seeded = seed_customers(fake, 1_000, NOW - 1_000, 1)

    before_kill, acknowledged = read_until(fake, stop_after=550)
    after_resume, _ = read_until(fake, stop_after=10_000, state=acknowledged)

    assert set(before_kill) | set(after_resume) == {c["id"] for c in seeded}
    read_twice = len(before_kill) + len(after_resume) - len(seeded)
    assert read_twice <= 100, f"{read_twice} records read again after the resume"


def test_given_backfill_when_read_then_estimates_per_stream_and_totals_logged() -> None:
    fake = FakeStripe()
    seed_customers(fake, 1_500, NOW - 300 * DAY, 17_000)
    fake.add("products", NOW - DAY)

    output = sync(fake, "customers", "products")

    estimates = [m.trace.estimate for m in output.trace_messages if m.trace.estimate is not None]
    assert {e.name for e in estimates} == {"customers", "products"}
    assert all(e.type == EstimateType.STREAM and e.row_estimate >= 0 for e in estimates)
    assert output.is_in_logs("customers: done: 1500 records in")
    assert output.is_in_logs("products: done: 1 records in")


def test_given_key_without_the_core_billing_streams_when_read_then_config_error_naming_permissions() -> None:
    fake = FakeStripe()
    seed_customers(fake, 5, NOW - 10 * DAY, DAY)
    fake.keys["rk_test_customersOnly0123456789"] = {"rak_customer_read"}
    key_config = ConfigBuilder().with_api_key("rk_test_customersOnly0123456789").build()

    output = sync(
        fake,
        "customers",
        "subscriptions",
        "invoices",
        "charges",
        config=key_config,
        expecting_exception=True,
    )

    error = output.errors[-1].trace.error
    assert error.failure_type == FailureType.config_error
    for permission in ("rak_subscription_read", "rak_invoice_read", "rak_charge_read"):
        assert permission in error.message
    assert "rak_customer_read" not in error.message
    # What the key could read is still delivered and checkpointed: the next sync does not redo it.
    assert len(records(output, "customers")) == 5
    assert statuses(output, "customers")[-1] == AirbyteStreamStatus.COMPLETE
    assert any(m.state.stream.stream_descriptor.name == "customers" for m in output.state_messages)


def test_given_an_impossible_start_date_when_read_is_called_directly_then_config_error() -> None:
    config = ConfigBuilder().with_start_date("2024-13-45T00:00:00Z").build()
    messages = make_source(FakeStripe()).read(logging.getLogger("test"), config, catalog("customers"), None)

    with pytest.raises(AirbyteTracedException) as raised:
        next(iter(messages))

    assert raised.value.failure_type == FailureType.config_error
    assert raised.value.message is not None
    assert "start date" in raised.value.message
