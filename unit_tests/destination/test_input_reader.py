"""The input reader process: what the writer sees when it works, fails, dies, or the writer fails."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from airbyte_cdk.models import AirbyteMessage, AirbyteMessageSerializer, Type

from destination_perly import destination as destination_module
from destination_perly.destination import DestinationPerly
from destination_perly.input_reader import BATCH_ITEMS, InputReaderError, read_in_helper
from destination_perly.store.sqlite import SqliteStore
from unit_tests.destination.builders import AS_OF, customer
from unit_tests.destination.messages import catalog, configured, record, stream_state
from unit_tests.destination.test_writer import ids, make_writer, states_of


def line(message: AirbyteMessage) -> bytes:
    return orjson.dumps(AirbyteMessageSerializer.dump(message))


def customers_then(failure: Any, before_failure: int = 3) -> Iterator[bytes]:
    """Customer records with a state after each pair, then `failure()` in the reader process."""
    for n in range(1, before_failure + 1):
        yield line(record("customers", customer(f"cus_{n}")))
        if n % 2 == 0:
            yield line(stream_state("customers", n))
    failure()
    yield line(stream_state("customers", 99))


def no_reader_left() -> bool:
    return not [child for child in multiprocessing.active_children() if child.is_alive()]


def test_given_many_records_then_batches_arrive_whole_and_in_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "perly.db")
    count = 3 * BATCH_ITEMS + 7
    lines = [line(record("customers", customer(f"cus_{n:05}"))) for n in range(count)]
    lines.append(line(stream_state("customers", count)))
    writer = make_writer(store)

    output = list(writer.write(read_in_helper(lines, writer.preparer)))

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [count]  # type: ignore[union-attr]
    assert ids(store, "customers") == [f"cus_{n:05}" for n in range(count)]
    assert no_reader_left()


def test_given_stdin_itself_then_the_reader_process_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    piped = tmp_path / "stdin.jsonl"
    piped.write_bytes(
        b"\n".join([line(record("customers", customer("cus_1"))), line(stream_state("customers", 1))])
    )
    store = SqliteStore(tmp_path / "perly.db")
    writer = make_writer(store)

    with piped.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        output = list(writer.write(read_in_helper(sys.stdin.buffer, writer.preparer)))

    assert len(states_of(output)) == 1
    assert ids(store, "customers") == ["cus_1"]


def test_given_the_input_fails_mid_way_then_the_error_names_it_and_only_committed_states_are_acknowledged(
    tmp_path: Path,
) -> None:
    def fail() -> None:
        raise OSError("stdin was closed")

    store = SqliteStore(tmp_path / "perly.db")
    writer = make_writer(store)
    output: list[AirbyteMessage] = []

    with pytest.raises(InputReaderError, match="stdin was closed"):
        output.extend(writer.write(read_in_helper(customers_then(fail), writer.preparer)))

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [2]  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1", "cus_2"]  # cus_3 came after the last state: not committed
    assert no_reader_left()


def test_given_the_reader_process_dies_then_the_writer_raises_and_acknowledges_nothing_after(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "perly.db")
    writer = make_writer(store)
    output: list[AirbyteMessage] = []

    with pytest.raises(InputReaderError, match=r"stopped unexpectedly \(exit code 3\)"):
        output.extend(writer.write(read_in_helper(customers_then(lambda: os._exit(3)), writer.preparer)))

    assert [m.state.stream.stream_state.updated for m in states_of(output)] == [2]  # type: ignore[union-attr]
    assert ids(store, "customers") == ["cus_1", "cus_2"]


class FailsOnThirdCommit(SqliteStore):
    """Creating the schema and the first flush commit; the second flush meets a full disk."""

    commits = 0

    def _commit(self) -> None:
        self.commits += 1
        if self.commits == 3:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()


def test_given_the_writer_fails_then_the_endless_reader_process_is_stopped(tmp_path: Path) -> None:
    store = FailsOnThirdCommit(tmp_path / "perly.db")
    writer = make_writer(store)
    endless = (
        item
        for n in range(10**9)
        for item in (line(record("customers", customer(f"cus_{n}"))), line(stream_state("customers", n)))
    )
    output: list[AirbyteMessage] = []

    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        output.extend(writer.write(read_in_helper(endless, writer.preparer)))

    # The first flush's states (how many it covers depends on how far the reader had read ahead).
    acknowledged = [m.state.stream.stream_state.updated for m in states_of(output)]  # type: ignore[union-attr]
    assert acknowledged
    assert acknowledged == list(range(len(acknowledged)))
    assert len(ids(store, "customers")) > acknowledged[-1]  # state n follows cus_0 ... cus_n
    assert no_reader_left()


def test_given_stdin_then_the_destination_reads_it_in_the_reader_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[bool] = []

    def spy(*args: Any) -> Iterator[Any]:
        used.append(True)
        return read_in_helper(*args)

    monkeypatch.setattr(destination_module, "read_in_helper", spy)
    config = {
        "store": {"store_type": "sqlite", "path": str(tmp_path / "perly.db")},
        "as_of": AS_OF.isoformat(),
    }
    stdin = [
        line(record("customers", customer("cus_1"))),
        b"not a message",
        line(stream_state("customers", 1)),
    ]
    destination = DestinationPerly(input_reader=True)

    output = list(
        destination.write(config, catalog(configured("customers")), destination._parse_input_stream(stdin))
    )

    assert used == [True]
    assert [m.type for m in output if m.type == Type.STATE] == [Type.STATE]
    assert any(m.type == Type.LOG and "not an Airbyte message" in m.log.message for m in output)  # type: ignore[union-attr]
    opened = SqliteStore(tmp_path / "perly.db")
    assert ids(opened, "customers") == ["cus_1"]
    assert opened.query("SELECT customer_id FROM perly_customer_health") == [{"customer_id": "cus_1"}]
    opened.close()
