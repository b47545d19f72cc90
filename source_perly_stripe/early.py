"""`read` begins before the Airbyte CDK is imported: the import takes most of a second, during which
the sync's first requests (the probe and the first pages) can already be made.

`begin_read` reads the command line's config, catalog and state files as plain JSON, and when they
are a valid config, known streams and per-stream states, starts a reader with them (`SyncReader.begin`
builds no message, so it needs no CDK). The CDK's entrypoint then runs as always, and the source's
`read` takes that reader only if the CDK parsed the very same config, streams and states; otherwise
the reader is stopped and a new one starts. Anything unexpected here only means no early start."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .check import config_problem, parse_start_date
from .client import StripeClient, StripeError, client_from_config
from .reader import STRIPE_LAUNCH, ReadSettings, SyncReader
from .streams import STREAMS_BY_NAME

Selection = list[tuple[str, bool]]  # stream names and whether each is read incrementally


def make_client(config: Mapping[str, Any]) -> StripeClient:
    return client_from_config(config, pool_size=max(read_settings(config).workers, 4))


def read_settings(config: Mapping[str, Any]) -> ReadSettings:
    """ValueError when the start date is no real time (see `parse_start_date`)."""
    settings = ReadSettings()
    start = parse_start_date(config.get("start_date"))
    if start is not None:
        settings.start = max(STRIPE_LAUNCH, int(start.timestamp()))
    if config.get("concurrency"):
        settings.workers = max(1, min(32, int(config["concurrency"])))
    return settings


@dataclass
class EarlyRead:
    config: Mapping[str, Any]
    selection: Selection
    states: dict[str, dict[str, Any]]
    reader: SyncReader

    def take(
        self, config: Mapping[str, Any], selection: Selection, states: dict[str, dict[str, Any]]
    ) -> SyncReader | None:
        """The reader begun early when it reads what `read` was asked for; else None (it is stopped)."""
        if (dict(config), selection, states) == (dict(self.config), self.selection, self.states):
            return self.reader
        self.reader.stop()
        return None

    def stop(self) -> None:
        """Stops the reader (a no-op once its `read` has ended)."""
        self.reader.stop()


def begin_read(argv: list[str]) -> EarlyRead | None:
    """Starts the read `argv` asks for (`read --config ... --catalog ... [--state ...]`), or None."""
    if argv[:1] != ["read"]:
        return None  # any other verb, or none: the CDK's parser answers (and explains a mistake)
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("command")
    for option in ("--config", "--catalog", "--state"):
        parser.add_argument(option)
    parser.add_argument("--debug", action="store_true")
    try:
        args, unknown = parser.parse_known_args(argv)
        if args.command != "read" or unknown or not args.config or not args.catalog:
            return None
        config = json.loads(Path(args.config).read_text())
        selection = _selection(json.loads(Path(args.catalog).read_text()))
        states = _states(json.loads(Path(args.state).read_text()) if args.state else None)
        if not isinstance(config, dict) or config_problem(config) or selection is None or states is None:
            return None
        reader = SyncReader(
            make_client(config),
            [(STREAMS_BY_NAME[name], incremental) for name, incremental in selection],
            states,
            read_settings(config),
        )
    except (argparse.ArgumentError, SystemExit, OSError, ValueError, StripeError):
        return None
    try:
        reader.begin()
    except Exception:  # the CDK's run meets the same error and reports it properly
        reader.stop()
        return None
    return EarlyRead(config, selection, states, reader)


def _selection(catalog: object) -> Selection | None:
    """The catalog's streams, if each is one of ours with a sync mode."""
    streams = catalog.get("streams") if isinstance(catalog, dict) else None
    if not isinstance(streams, list):
        return None
    selection = []
    for configured in streams:
        stream = configured.get("stream") if isinstance(configured, dict) else None
        name = stream.get("name") if isinstance(stream, dict) else None
        mode = configured.get("sync_mode") if isinstance(configured, dict) else None
        if name not in STREAMS_BY_NAME or mode not in ("incremental", "full_refresh"):
            return None
        selection.append((str(name), mode == "incremental"))
    return selection


def _states(state: object) -> dict[str, dict[str, Any]] | None:
    """Per-stream states by stream name, if the state is a list of STREAM states (or empty)."""
    if not state:
        return {}
    if not isinstance(state, list):
        return None
    found: dict[str, dict[str, Any]] = {}
    for message in state:
        stream = message.get("stream") if isinstance(message, dict) else None
        if not isinstance(message, dict) or message.get("type") != "STREAM" or not isinstance(stream, dict):
            return None
        descriptor, blob = stream.get("stream_descriptor"), stream.get("stream_state")
        name = descriptor.get("name") if isinstance(descriptor, dict) else None
        if not isinstance(name, str) or not isinstance(blob, dict | None):
            return None
        found[name] = dict(blob or {})
    return found
