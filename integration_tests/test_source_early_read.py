"""`source-perly-stripe read` makes its first requests before the Airbyte CDK is imported (the import
takes most of a second), and the sync it gives is the one the CDK's path gives."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from airbyte_cdk.models import ConfiguredAirbyteCatalogSerializer, Type

from integration_tests.stripe_emulator import Emulator
from source_perly_stripe import reader as reader_module
from source_perly_stripe.client import StripeClient, client_from_config
from source_perly_stripe.early import begin_read
from source_perly_stripe.source import SourcePerlyStripe
from source_perly_stripe.windows import DAY

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parent.parent
CORE = ("customers", "subscriptions", "invoices", "charges")


def catalog_json(names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "streams": [
            {
                "stream": {"name": n, "json_schema": {}, "supported_sync_modes": ["incremental"]},
                "sync_mode": "incremental",
                "destination_sync_mode": "append",
            }
            for n in names
        ]
    }


def write_inputs(folder: Path, emulator: Emulator, names: tuple[str, ...] = CORE) -> list[str]:
    config = {"api_key": "sk_test_perly_demo", "base_url": emulator.url}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "catalog.json").write_text(json.dumps(catalog_json(names)))
    return ["read", "--config", str(folder / "config.json"), "--catalog", str(folder / "catalog.json")]


def test_read_requests_stripe_before_the_cdk_is_imported(emulator: Emulator, tmp_path: Path) -> None:
    program = (
        "import sys, time\n"
        "from source_perly_stripe.early import begin_read\n"
        "early = begin_read(sys.argv[1:])\n"
        "client = early.reader._client\n"
        "deadline = time.monotonic() + 30\n"
        "while client.stats.snapshot()['requests'] < 5 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print(client.stats.snapshot()['requests'] >= 5, 'airbyte_cdk' in sys.modules)\n"
        "early.stop()\n"
    )
    argv = write_inputs(tmp_path, emulator)
    output = subprocess.run(
        [sys.executable, "-c", program, *argv], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert output.split() == ["True", "False"]  # the probe and first pages made, no CDK imported


def test_no_garbage_collection_runs_while_the_cdk_is_imported_and_it_runs_again_for_the_read(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Its full passes would walk the import's objects and the pages read meanwhile, again and again."""
    program = (
        "import gc, sys\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'airbyte_cdk':\n"
        "            seen.append(gc.isenabled())\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from source_perly_stripe.run import run\n"
        "sys.argv = ['source-perly-stripe', *sys.argv[1:]]\n"
        "run()\n"
        "print(seen, gc.isenabled(), file=sys.stderr)\n"
    )
    argv = write_inputs(tmp_path, emulator, ("customers",))
    done = subprocess.run(
        [sys.executable, "-c", program, *argv], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert done.stderr.splitlines()[-1] == "[False] True"
    assert '"type":"RECORD"' in done.stdout


def test_the_cli_read_begun_early_emits_the_sync_the_cdk_path_emits(
    emulator: Emulator, tmp_path: Path
) -> None:
    argv = write_inputs(tmp_path, emulator)
    cli = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *argv], check=True, capture_output=True, cwd=ROOT
    ).stdout
    messages = [json.loads(line) for line in cli.splitlines() if line.startswith(b"{")]
    cli_records = Counter(
        (m["record"]["stream"], m["record"]["data"]["id"]) for m in messages if m["type"] == "RECORD"
    )
    cli_states = {
        m["state"]["stream"]["stream_descriptor"]["name"]: m["state"]["stream"]["stream_state"]
        for m in messages
        if m["type"] == "STATE"
    }

    config = json.loads((tmp_path / "config.json").read_text())
    catalog = ConfiguredAirbyteCatalogSerializer.load(json.loads((tmp_path / "catalog.json").read_text()))
    records: Counter[tuple[str, str]] = Counter()
    states: dict[str, Any] = {}
    for message in SourcePerlyStripe().read(logging.getLogger("test"), config, catalog, []):
        if message.type == Type.RECORD:
            records[(message.record.stream, message.record.data["id"])] += 1
        elif message.type == Type.STATE:
            states[message.state.stream.stream_descriptor.name] = dict(
                message.state.stream.stream_state.__dict__
            )

    assert cli_records == records
    assert set(cli_states) == set(CORE)
    # How many requests a read took depends on timing (windows are cut for free readers).
    for state in (*cli_states.values(), *states.values()):
        state.pop("full_read_requests")
    assert cli_states == states


def test_a_read_begun_early_for_other_streams_is_stopped_and_the_asked_read_done(
    emulator: Emulator, tmp_path: Path
) -> None:
    early = begin_read(write_inputs(tmp_path, emulator, ("customers", "charges")))
    assert early is not None
    config = json.loads((tmp_path / "config.json").read_text())
    catalog = ConfiguredAirbyteCatalogSerializer.load(catalog_json(("customers",)))

    messages = list(SourcePerlyStripe(early=early).read(logging.getLogger("test"), config, catalog, []))

    streams = {m.record.stream for m in messages if m.type == Type.RECORD}
    assert streams == {"customers"}
    assert not [t for t in threading.enumerate() if t.name.startswith(("stripe", "sublists"))]


@pytest.mark.parametrize(
    "state",
    [
        {"customers": {"created": 1}},  # the legacy form: the CDK's path decides what it means
        [{"type": "GLOBAL", "global": {"stream_states": []}}],
    ],
)
def test_no_read_begins_early_from_a_state_that_is_not_per_stream(
    emulator: Emulator, tmp_path: Path, state: object
) -> None:
    argv = write_inputs(tmp_path, emulator)
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert begin_read([*argv, "--state", str(tmp_path / "state.json")]) is None


def test_no_read_begins_early_for_another_verb_or_a_config_the_source_refuses(
    emulator: Emulator, tmp_path: Path
) -> None:
    argv = write_inputs(tmp_path, emulator)
    assert begin_read(["check", *argv[1:]]) is None
    assert begin_read([]) is None
    (tmp_path / "config.json").write_text(json.dumps({"api_key": "pk_test_123", "base_url": emulator.url}))
    assert begin_read(argv) is None  # the CDK's run reports it, in words


class RecordingClient:
    """The client, keeping the query of every request."""

    def __init__(self, inner: StripeClient) -> None:
        self.inner = inner
        self.queries: list[dict[str, Any]] = []

    def get(self, path: str, params: Any = ()) -> dict[str, Any]:
        self.queries.append(dict(params))
        return self.inner.get(path, params)

    def server_now(self) -> int:
        return self.inner.server_now()


def first_sync(
    emulator: Emulator, skew: int
) -> tuple[dict[tuple[str, str], Any], dict[str, Any], RecordingClient]:
    """The 4 core streams read in process by a machine whose clock is `skew` seconds ahead of the
    emulator's (behind: negative): records by stream and id, the last states, the client."""
    shift = emulator.now + skew - time.time()
    clients: list[RecordingClient] = []

    def factory(config: Any) -> RecordingClient:
        clients.append(
            RecordingClient(client_from_config(config, pool_size=24, clock=lambda: time.time() + shift))
        )
        return clients[0]

    config = {"api_key": "sk_test_perly_demo", "base_url": emulator.url, "max_requests_per_second": 1000}
    catalog = ConfiguredAirbyteCatalogSerializer.load(catalog_json(CORE))
    records: dict[tuple[str, str], Any] = {}
    states: dict[str, Any] = {}
    for message in SourcePerlyStripe(client_factory=factory).read(
        logging.getLogger("test"), config, catalog, []
    ):
        if message.type == Type.RECORD:
            key = (message.record.stream, message.record.data["id"])
            assert key not in records, f"{key} read twice"
            records[key] = message.record.data
        elif message.type == Type.STATE:
            state = dict(message.state.stream.stream_state.__dict__)
            state.pop("full_read_requests", None)  # how many requests depends on timing
            states[message.state.stream.stream_descriptor.name] = state
    return records, states, clients[0]


@pytest.mark.parametrize("skew_days", [70, 35, 0, -35])
def test_a_first_sync_cut_by_the_machine_clock_reads_what_a_plain_read_does_whatever_the_skew(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, skew_days: int
) -> None:
    """Invoices and charges begin as windows cut by the machine's clock before the probe tells
    Stripe's (`EARLY_CUTS`). Ahead of Stripe's clock by more than a cut's age, the window above that
    cut is empty (its one request is all it costs) and the one below ends at Stripe's clock; behind
    it or agreeing, the windows split the list. The records and states are a plain read's."""
    with monkeypatch.context() as plain_read:
        plain_read.setattr(reader_module, "EARLY_CUTS", {})
        plain_records, plain_states, _ = first_sync(emulator, 0)

    records, states, client = first_sync(emulator, skew_days * DAY)

    assert records == plain_records
    assert states == plain_states
    assert {state["updated"] for state in states.values()} == {emulator.now}
    windows = [q for q in client.queries if "created[gte]" in q]
    ages = [age for ages in reader_module.EARLY_CUTS.values() for age in ages]
    cuts_after_now = sum(1 for age in ages if skew_days * DAY - age > 1)
    # A window above Stripe's now costs its one request; a window below a cut after it asked only its
    # first page up to the cut, the next ones up to Stripe's now.
    assert len([q for q in windows if q["created[gte]"] > emulator.now]) == cuts_after_now
    assert len([q for q in windows if q.get("created[lt]", 0) > emulator.now + 1]) == cuts_after_now
