"""The destination's write under faults: the store refusing or dropping the connection, a catalog whose
streams collide, stdin bytes that are not UTF-8. What fails says why and which kind of failure it is;
what came before it stays committed and acknowledged."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from airbyte_cdk.models import AirbyteMessage, AirbyteMessageSerializer, FailureType, Type
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from destination_perly.config import HealthConfig
from destination_perly.destination import DestinationPerly
from destination_perly.ingest import Ingestor
from destination_perly.input_reader import read_in_helper
from destination_perly.store.base import Store
from destination_perly.store.sqlite import SqliteStore
from destination_perly.writer import Writer, parse_input_lines, plans_from_catalog
from integration_tests.postgres_server import PostgresServer, free_port, postgres_server
from unit_tests.destination.builders import AS_OF, customer
from unit_tests.destination.messages import catalog, configured, record, stream_state
from unit_tests.destination.test_writer import ids, states_of
from unit_tests.webhooks.builders import customer as webhook_customer
from unit_tests.webhooks.builders import price as webhook_price
from unit_tests.webhooks.builders import subscription as webhook_subscription

SECRET = "pg-Secret-42"


def postgres_config(port: int, database: str = "postgres", password: str | None = SECRET) -> dict[str, Any]:
    store = {
        "store_type": "postgres",
        "host": "127.0.0.1",
        "port": port,
        "database": database,
        "username": "perly",
        "schema": "perly_faults",
        "ssl_mode": "disable",
    }
    if password:
        store["password"] = password
    return {"store": store, "as_of": AS_OF.isoformat()}


def write_error(config: dict[str, Any], messages: Any = ()) -> AirbyteTracedException:
    with pytest.raises(AirbyteTracedException) as caught:
        list(DestinationPerly(input_reader=False).write(config, catalog(configured("customers")), messages))
    return caught.value


def test_given_postgres_refuses_the_connection_then_the_write_is_a_transient_error() -> None:
    port = free_port()  # nothing listens there

    error = write_error(postgres_config(port))

    assert error.failure_type == FailureType.transient_error
    assert "Connection refused" in str(error.message)
    assert SECRET not in str(error.message) + str(error.internal_message)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as started:
        yield started


@pytest.mark.slow
def test_given_a_database_that_does_not_exist_then_the_write_is_a_config_error(
    server: PostgresServer,
) -> None:
    error = write_error(postgres_config(server.port, database="no_such_db", password=None))

    assert error.failure_type == FailureType.config_error
    assert 'database "no_such_db" does not exist' in str(error.message)


@pytest.mark.slow
def test_given_postgres_restarts_mid_write_then_a_transient_error_follows_the_acknowledged_states(
    server: PostgresServer,
) -> None:
    acknowledged: list[AirbyteMessage] = []

    def messages() -> Iterator[AirbyteMessage]:
        yield record("customers", customer("cus_1"))
        yield stream_state("customers", 1)
        server.restart()  # the destination's connection is terminated
        yield record("customers", customer("cus_2"))
        yield stream_state("customers", 2)

    config = postgres_config(server.port, password=None)
    with pytest.raises(AirbyteTracedException) as caught:
        acknowledged.extend(
            DestinationPerly(input_reader=False).write(config, catalog(configured("customers")), messages())
        )

    assert caught.value.failure_type == FailureType.transient_error
    assert "lost the connection to PostgreSQL" in str(caught.value.message)
    assert [m.state.stream.stream_state.updated for m in states_of(acknowledged)] == [1]  # type: ignore[union-attr]


def test_given_a_catalog_with_a_stream_named_like_a_stage_table_then_the_write_is_a_config_error(
    tmp_path: Path,
) -> None:
    config = {"store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")}}
    with pytest.raises(AirbyteTracedException) as caught:
        list(
            DestinationPerly().write(
                config, catalog(configured("customers"), configured("customers_stage")), []
            )
        )
    assert caught.value.failure_type == FailureType.config_error
    assert "would share the table stripe_customers_stage" in str(caught.value.message)


def line(message: AirbyteMessage) -> bytes:
    return orjson.dumps(AirbyteMessageSerializer.dump(message))


@pytest.mark.parametrize("input_reader", [False, True], ids=["in process", "reader process"])
def test_given_stdin_with_a_byte_that_is_not_utf8_then_only_its_record_is_skipped(
    tmp_path: Path, input_reader: bool
) -> None:
    """The CDK hands `write` stdin wrapped as UTF-8 text, which decodes ahead in chunks: one bad byte
    used to fail the whole chunk, and the states in it were never acknowledged."""
    bad = line(record("customers", customer("cus_2", name="Jos"))).replace(b"Jos", b"Jos\xe9")
    stdin = b"\n".join(
        [
            line(record("customers", customer("cus_1"))),
            line(stream_state("customers", 1)),
            bad,
            line(record("customers", customer("cus_3"))),
            line(stream_state("customers", 2)),
        ]
    )
    wrapped = io.TextIOWrapper(io.BytesIO(stdin + b"\n"), encoding="utf-8")  # as the CDK's `run_cmd` does
    config = {
        "store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")},
        "as_of": AS_OF.isoformat(),
    }
    destination = DestinationPerly(input_reader=input_reader)

    output = list(
        destination.write(config, catalog(configured("customers")), destination._parse_input_stream(wrapped))
    )

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [1, 2]  # type: ignore[union-attr]
    errors = [m.log.message for m in output if m.type == Type.LOG and m.log.level.value == "ERROR"]  # type: ignore[union-attr]
    assert errors == [
        "skipped record 'cus_2' of stream 'customers' at line 3 of the input: bytes that are not valid UTF-8"
    ]
    stored = SqliteStore(tmp_path / "perly.db")
    assert ids(stored, "customers") == ["cus_1", "cus_3"]
    stored.close()


@pytest.mark.parametrize("input_reader", [False, True], ids=["in process", "reader process"])
def test_given_nul_characters_in_a_record_then_it_is_stored_with_u_fffd_and_its_health_computed(
    store: Store, input_reader: bool
) -> None:
    """PostgreSQL's text cannot hold NUL (U+0000): a customer named with one failed the flush and then
    the customer's health at every sync. Both stores now keep U+FFFD in its place."""
    named = customer("cus_\x00nul", name="Acme\x00 Ltd", email="a\x00@x.io", metadata={"k\x00": "v\x00"})
    lines = [
        line(record("customers", customer("cus_1"))),
        line(record("customers", named)),
        line(stream_state("customers", 1)),
    ]
    assert b"\\u0000" in lines[1]  # as JSON writes it
    writer = Writer(
        Ingestor(store, HealthConfig()),
        plans_from_catalog(catalog(configured("customers"))),
        as_of=lambda: AS_OF,
    )
    parsed = read_in_helper(lines, writer.preparer) if input_reader else parse_input_lines(lines)

    output = list(writer.write(parsed))

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [1]  # type: ignore[union-attr]
    assert not [m for m in output if m.type == Type.LOG and m.log.level.value in ("ERROR", "FATAL")]  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1", "cus_\ufffdnul"]
    stored = orjson.loads(
        store.query("SELECT data FROM stripe_customers WHERE id = 'cus_\ufffdnul'")[0]["data"]
    )
    assert (stored["name"], stored["metadata"]) == ("Acme\ufffd Ltd", {"k\ufffd": "v\ufffd"})
    health = store.query("SELECT customer_id, name, email FROM perly_customer_health ORDER BY customer_id")
    assert health[1] == {"customer_id": "cus_\ufffdnul", "name": "Acme\ufffd Ltd", "email": "a\ufffd@x.io"}


def test_given_a_record_nested_deeper_than_json_is_written_then_only_it_is_skipped(store: Store) -> None:
    """orjson parses 1,024 levels but writes 254: such a record failed the whole sync as a system error."""
    deep: dict[str, Any] = {"end": True}
    for _ in range(600):
        deep = {"a": deep}
    lines = [
        json.dumps(
            {"type": "RECORD", "record": {"stream": "customers", "data": customer("cus_deep", metadata=deep)}}
        ).encode(),
        line(record("customers", customer("cus_1"))),
        line(stream_state("customers", 1)),
    ]
    writer = Writer(
        Ingestor(store, HealthConfig()),
        plans_from_catalog(catalog(configured("customers"))),
        as_of=lambda: AS_OF,
    )

    output = list(writer.write(parse_input_lines(lines)))

    errors = [m.log.message for m in output if m.type == Type.LOG and m.log.level.value == "ERROR"]  # type: ignore[union-attr]
    assert errors == [
        "skipped record 'cus_deep' of stream 'customers' at line 1 of the input: "
        "it cannot be stored as JSON (Recursion limit reached)"
    ]
    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [1]  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1"]


def test_given_amounts_whose_mrr_is_beyond_64_bits_then_only_that_customer_fails_and_stays_pending(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A price of 2**62 minor units times 4 seats: saving its MRR failed the whole chunk's save, so
    the sync, at every run."""
    absurd = webhook_subscription("sub_big", "cus_big", quantity=4)
    absurd["items"]["data"][0]["price"] = webhook_price(unit_amount=2**62)
    lines = [
        line(record("customers", webhook_customer("cus_big"))),
        line(record("customers", webhook_customer("cus_ok"))),
        line(record("subscriptions", absurd)),
        line(record("subscriptions", webhook_subscription("sub_ok", "cus_ok"))),
        line(stream_state("subscriptions", 1)),
    ]
    plans = plans_from_catalog(catalog(configured("customers"), configured("subscriptions")))
    writer = Writer(Ingestor(store, HealthConfig()), plans, as_of=lambda: AS_OF)

    output = list(writer.write(parse_input_lines(lines)))

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [1]  # type: ignore[union-attr]
    assert store.query("SELECT customer_id, mrr FROM perly_customer_health") == [
        {"customer_id": "cus_ok", "mrr": 5000}
    ]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "health evaluation failed for customer cus_big; it stays pending\n"
        "its CustomerHealth `mrr` is beyond a 64-bit integer"
    ]
    assert writer.stats.refresh_failures == 1
