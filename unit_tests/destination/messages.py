"""Builders for the Airbyte messages and catalogs the writer reads."""

from __future__ import annotations

from typing import Any

from airbyte_cdk.models import (
    AirbyteMessage,
    AirbyteRecordMessage,
    AirbyteStateBlob,
    AirbyteStateMessage,
    AirbyteStateType,
    AirbyteStream,
    AirbyteStreamState,
    AirbyteStreamStatus,
    AirbyteStreamStatusTraceMessage,
    AirbyteTraceMessage,
    ConfiguredAirbyteCatalog,
    ConfiguredAirbyteStream,
    DestinationSyncMode,
    StreamDescriptor,
    SyncMode,
    TraceType,
    Type,
)


def record(stream: str, data: Any) -> AirbyteMessage:
    return AirbyteMessage(
        type=Type.RECORD, record=AirbyteRecordMessage(stream=stream, data=data, emitted_at=0)
    )


def stream_state(stream: str, cursor: int) -> AirbyteMessage:
    state = AirbyteStateMessage(
        type=AirbyteStateType.STREAM,
        stream=AirbyteStreamState(
            stream_descriptor=StreamDescriptor(name=stream), stream_state=AirbyteStateBlob(updated=cursor)
        ),
    )
    return AirbyteMessage(type=Type.STATE, state=state)


def global_state(cursor: int) -> AirbyteMessage:
    state = AirbyteStateMessage(type=AirbyteStateType.LEGACY, data={"cursor": cursor})
    return AirbyteMessage(type=Type.STATE, state=state)


def status(stream: str, value: AirbyteStreamStatus) -> AirbyteMessage:
    trace = AirbyteTraceMessage(
        type=TraceType.STREAM_STATUS,
        emitted_at=0,
        stream_status=AirbyteStreamStatusTraceMessage(
            stream_descriptor=StreamDescriptor(name=stream), status=value
        ),
    )
    return AirbyteMessage(type=Type.TRACE, trace=trace)


def configured(
    name: str,
    mode: DestinationSyncMode = DestinationSyncMode.append_dedup,
    generation_id: int | None = None,
    minimum_generation_id: int | None = None,
) -> ConfiguredAirbyteStream:
    """A stream as PyAirbyte and the platform configure it (primary key id, cursor `updated`)."""
    return ConfiguredAirbyteStream(
        stream=AirbyteStream(
            name=name,
            json_schema={"type": "object"},
            supported_sync_modes=[SyncMode.full_refresh, SyncMode.incremental],
            source_defined_cursor=True,
            default_cursor_field=["updated"],
            source_defined_primary_key=[["id"]],
        ),
        sync_mode=SyncMode.incremental,
        destination_sync_mode=mode,
        cursor_field=["updated"],
        primary_key=[["id"]],
        generation_id=generation_id,
        minimum_generation_id=minimum_generation_id,
        sync_id=1 if generation_id is not None else None,
    )


def catalog(*streams: ConfiguredAirbyteStream) -> ConfiguredAirbyteCatalog:
    return ConfiguredAirbyteCatalog(streams=list(streams))
