"""spec / check / write for the Perly destination."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from airbyte_cdk.destinations import Destination
from airbyte_cdk.models import (  # type: ignore[attr-defined,unused-ignore]
    AirbyteConnectionStatus,
    AirbyteMessage,
    ConfiguredAirbyteCatalog,
    ConnectorSpecification,
    ConnectorSpecificationSerializer,
    FailureType,
    Status,
)
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

import connector_spec
from destination_perly.config import (
    ConfigError,
    DestinationConfig,
    SqliteSettings,
    config_problem,
    open_store,
    parse_config,
)
from destination_perly.ingest import HELPER_MIN_CUSTOMERS, Evaluate, Ingestor
from destination_perly.input_reader import can_read_in_helper, read_in_helper
from destination_perly.spec import connection_specification, destination_spec
from destination_perly.store.base import Store, StoreError, StoreUnreachable
from destination_perly.writer import InputMessage, Writer, WriterLimits, parse_input_lines, plans_from_catalog


class InputLines:
    """stdin's lines, parsed lazily when iterated; `write` may instead hand them to a reader process."""

    def __init__(self, lines: Iterable[str | bytes]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[InputMessage]:
        return parse_input_lines(self.lines)


def _config_error(message: str) -> AirbyteTracedException:
    return AirbyteTracedException(
        message=message, internal_message=message, failure_type=FailureType.config_error
    )


def _transient_error(message: str) -> AirbyteTracedException:
    """The store is down or restarting: the platform retries the sync, nothing to fix in the config."""
    return AirbyteTracedException(
        message=message, internal_message=message, failure_type=FailureType.transient_error
    )


def _connection_lost(error: Exception, config: DestinationConfig) -> AirbyteTracedException | None:
    """The transient error for a PostgreSQL connection refused or lost during the write, else None."""
    if isinstance(config.store, SqliteSettings):
        return None
    from destination_perly.store.postgres import is_unreachable, scrub

    if not is_unreachable(error):
        return None
    detail = scrub(str(error).strip(), config.store.password)
    return _transient_error(f"lost the connection to PostgreSQL during the write: {detail}")


class DestinationPerly(Destination):
    def __init__(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        evaluate: Evaluate | None = None,
        limits: WriterLimits | None = None,
        store_factory: Callable[[DestinationConfig], Store] | None = None,
        input_reader: bool | None = None,
    ) -> None:
        """`input_reader`: parse stdin in a helper process (None: when there is a second core)."""
        self.clock = clock
        self.input_reader = can_read_in_helper() if input_reader is None else input_reader
        self.evaluate = evaluate
        self.limits = limits
        self.store_factory = store_factory
        self.last_writer: Writer | None = None

    def spec(self, logger: logging.Logger) -> ConnectorSpecification:
        return ConnectorSpecificationSerializer.load(destination_spec())

    def run(self, args: list[str]) -> None:
        """The CDK's `run`, with stdout flushed at each line. The destination prints states, logs and
        traces, never records, so this costs nothing; a piped stdout would otherwise hold acknowledged
        states until it fills, and a kill meanwhile loses every checkpoint since the start."""
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(line_buffering=True)
        super().run(args)

    def run_cmd(self, parsed_args: argparse.Namespace) -> Iterable[AirbyteMessage]:
        """The CDK's, but the config is validated here first, by `config_problem`: the CDK's schema
        check would quote a bad value, and its secret filter misses a password's escaped form."""
        if parsed_args.command in ("check", "write"):
            problem: str | None
            try:
                config = connector_spec.read_json_object(parsed_args.config)
            except connector_spec.ConfigFileError as unreadable:  # (a hand-written one, for `docker run`)
                problem = str(unreadable)
            else:
                problem = config_problem(config, connection_specification())
            if problem:
                error = _config_error(f"Invalid configuration: {problem}")
                status = error.as_connection_status_message()
                if parsed_args.command == "check" and status is not None:
                    yield status
                    return
                raise error
        yield from super().run_cmd(parsed_args)

    def _open(self, config: DestinationConfig) -> Store:
        if self.store_factory is not None:
            return self.store_factory(config)
        from destination_perly.ingest import customer_ids_of

        return open_store(config.store, customer_ids_of=customer_ids_of)

    def check(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteConnectionStatus:
        try:
            parsed = parse_config(config)
        except ConfigError as exc:
            return AirbyteConnectionStatus(status=Status.FAILED, message=f"Invalid configuration: {exc}")
        try:
            store = self._open(parsed)
            try:
                store.probe_writable()
            finally:
                store.close()
        except StoreError as exc:
            return AirbyteConnectionStatus(status=Status.FAILED, message=str(exc))
        except Exception as exc:  # e.g. a read-only file or a permission the user lacks
            where = parsed.store.path if isinstance(parsed.store, SqliteSettings) else "the PostgreSQL schema"
            detail = str(exc)
            password = getattr(parsed.store, "password", None)
            if password:
                detail = detail.replace(password, "***")
            return AirbyteConnectionStatus(status=Status.FAILED, message=f"Cannot write to {where}: {detail}")
        return AirbyteConnectionStatus(status=Status.SUCCEEDED)

    def _parse_input_stream(self, input_stream: Iterable[str | bytes]) -> InputLines:  # type: ignore[override]
        """stdin lines through the writer's orjson path: RECORDs skip the CDK's per-message model, and a
        line that is not JSON is skipped without being echoed (the CDK's would log it whole). Read as
        bytes, under the CDK's UTF-8 text wrapper: a byte that is not UTF-8 then spoils its own line
        only, not the whole read-ahead chunk (and the states in it) with a UnicodeDecodeError."""
        return InputLines(getattr(input_stream, "buffer", input_stream))

    def write(
        self,
        config: Mapping[str, Any],
        configured_catalog: ConfiguredAirbyteCatalog,
        input_messages: Iterable[InputMessage],
    ) -> Iterator[AirbyteMessage]:
        try:
            parsed = parse_config(config)
        except ConfigError as exc:
            raise _config_error(f"Invalid configuration: {exc}") from None
        try:
            plans = plans_from_catalog(configured_catalog)
        except ValueError as exc:
            raise _config_error(f"Invalid catalog: {exc}") from None
        try:
            store = self._open(parsed)
        except StoreUnreachable as exc:
            raise _transient_error(str(exc)) from None
        except StoreError as exc:
            raise _config_error(str(exc)) from None
        fixed = parsed.as_of
        # The writer runs in one thread, so a big refresh may fork a helper for the second core.
        ingestor = Ingestor(
            store, parsed.health, evaluate=self.evaluate, helper_min_customers=HELPER_MIN_CUSTOMERS
        )
        writer = Writer(
            ingestor,
            plans,
            as_of=(lambda: fixed) if fixed else self.clock,
            limits=self.limits,
        )
        self.last_writer = writer  # for benchmarks and diagnostics
        messages: Iterable[InputMessage] = input_messages
        if isinstance(input_messages, InputLines) and self.input_reader:
            messages = read_in_helper(input_messages.lines, writer.preparer)
        try:
            yield from writer.write(messages)
        except Exception as exc:
            lost = _connection_lost(exc, parsed)
            if lost is None:
                raise
            raise lost from exc
        finally:
            store.close()
