"""The Airbyte source: spec, check, discover and read for a company's Stripe billing data.

`read` is implemented here rather than through the CDK's stream framework: records go out as Stripe
sent them (plus `updated`), without per-record schema normalisation, and the reads run on one
shared thread pool (see reader.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any

from airbyte_cdk.models import (  # type: ignore[attr-defined,unused-ignore]
    AirbyteCatalog,
    AirbyteConnectionStatus,
    AirbyteMessage,
    AirbyteStateMessage,
    AirbyteStateType,
    AirbyteStream,
    ConfiguredAirbyteCatalog,
    ConnectorSpecification,
    ConnectorSpecificationSerializer,
    FailureType,
    Status,
    SyncMode,
)
from airbyte_cdk.sources import Source
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

import connector_spec

from .check import check_connection
from .client import StripeError
from .early import EarlyRead, make_client, read_settings
from .reader import Client, ReadSettings, SyncReader
from .spec_message import spec_json
from .streams import ALL_STREAMS, STREAMS_BY_NAME

ClientFactory = Callable[[Mapping[str, Any]], Client]


@cache
def load_schema(stream_name: str) -> dict[str, Any]:
    text = resources.files("source_perly_stripe").joinpath("schemas", f"{stream_name}.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def settings_from(config: Mapping[str, Any]) -> ReadSettings:
    try:
        return read_settings(config)
    except ValueError as bad_date:  # only when `read` is called without the entrypoint's validation
        raise AirbyteTracedException(
            message=str(bad_date), internal_message=str(bad_date), failure_type=FailureType.config_error
        ) from None


@contextmanager
def _unusable_file_as_config_error(kind: str, path: str) -> Iterator[None]:
    """A catalog or state file the CDK cannot take (hand-edited, for `docker run`) is a config error
    naming the file and the fault, not "something went wrong in the connector"."""
    try:
        yield
    except Exception as unusable:  # the CDK's reader raises ValueError, its serializers their own
        fault = " ".join(str(unusable).split())
        message = f"The {kind} file {path} cannot be used: {fault}"
        raise AirbyteTracedException(
            message=message, internal_message=message, failure_type=FailureType.config_error
        ) from None


class SourcePerlyStripe(Source):
    def __init__(self, client_factory: ClientFactory | None = None, early: EarlyRead | None = None) -> None:
        """`early`: a read begun before the CDK was imported (see early.py), taken if `read` is asked
        for the same one."""
        self._client_factory: ClientFactory = client_factory or make_client
        self._early = early

    @staticmethod
    def read_config(config_path: str) -> dict[str, Any]:
        """The CDK's, but a config file that is missing or not a JSON object (a hand-written one, for
        `docker run`) is a config error saying which and where, not "something went wrong"."""
        try:
            return connector_spec.read_json_object(config_path)
        except connector_spec.ConfigFileError as exc:
            raise AirbyteTracedException(
                message=str(exc), internal_message=str(exc), failure_type=FailureType.config_error
            ) from None

    @classmethod
    def read_catalog(cls, catalog_path: str) -> ConfiguredAirbyteCatalog:
        with _unusable_file_as_config_error("catalog", catalog_path):
            return super().read_catalog(catalog_path)

    @classmethod
    def read_state(cls, state_path: str) -> list[AirbyteStateMessage]:
        with _unusable_file_as_config_error("state", state_path):
            return super().read_state(state_path)

    def spec(self, logger: logging.Logger) -> ConnectorSpecification:
        return ConnectorSpecificationSerializer.load(spec_json())

    def check(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteConnectionStatus:
        ok, message = check_connection(config, [s.name for s in ALL_STREAMS])
        return AirbyteConnectionStatus(status=Status.SUCCEEDED if ok else Status.FAILED, message=message)

    def discover(self, logger: logging.Logger, config: Mapping[str, Any]) -> AirbyteCatalog:
        return AirbyteCatalog(streams=[self.airbyte_stream(s.name) for s in ALL_STREAMS])

    @staticmethod
    def airbyte_stream(name: str) -> AirbyteStream:
        stream = STREAMS_BY_NAME[name]
        return AirbyteStream(
            name=name,
            json_schema=load_schema(name),
            supported_sync_modes=[SyncMode.full_refresh, SyncMode.incremental],
            source_defined_cursor=True,
            default_cursor_field=[stream.cursor_field],
            source_defined_primary_key=[["id"]],
            is_resumable=True,
        )

    def read(
        self,
        logger: logging.Logger,
        config: Mapping[str, Any],
        catalog: ConfiguredAirbyteCatalog,
        state: list[AirbyteStateMessage] | None = None,
    ) -> Iterator[AirbyteMessage]:
        selected = []
        for configured in catalog.streams:
            stream = STREAMS_BY_NAME.get(configured.stream.name)
            if stream is None:
                raise AirbyteTracedException(
                    message=f"The catalog names a stream this source does not have: {configured.stream.name}",
                    failure_type=FailureType.config_error,
                )
            selected.append((stream, configured.sync_mode == SyncMode.incremental))
        states = states_by_stream(state or [])
        early, self._early = self._early, None
        reader = early.take(config, [(s.name, i) for s, i in selected], states) if early else None
        if reader is None:
            try:
                client = self._client_factory(config)
            except StripeError as error:  # e.g. a key of the wrong format
                raise AirbyteTracedException(
                    message=str(error), internal_message=str(error), failure_type=FailureType.config_error
                ) from error
            reader = SyncReader(client, selected, states, settings_from(config))
        yield from reader.read()


def states_by_stream(state: Iterable[AirbyteStateMessage]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for message in state:
        if message.type == AirbyteStateType.STREAM and message.stream is not None:
            blob = message.stream.stream_state
            found[message.stream.stream_descriptor.name] = dict(blob.__dict__) if blob is not None else {}
    return found
