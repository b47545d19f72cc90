# mypy: disable-error-code="attr-defined"
"""The Airbyte CDK's message models and helpers the reader builds its messages with, imported on
first use: importing the CDK takes most of a second, and `read` plans and starts its requests before
that (see early.py). Use them as attributes (`protocol.AirbyteMessage`), never imported by name."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers; `as` marks them re-exported
    from airbyte_cdk.models import (
        AirbyteEstimateTraceMessage as AirbyteEstimateTraceMessage,
    )
    from airbyte_cdk.models import (
        AirbyteLogMessage as AirbyteLogMessage,
    )
    from airbyte_cdk.models import (
        AirbyteMessage as AirbyteMessage,
    )
    from airbyte_cdk.models import (
        AirbyteRecordMessage as AirbyteRecordMessage,
    )
    from airbyte_cdk.models import (
        AirbyteStateBlob as AirbyteStateBlob,
    )
    from airbyte_cdk.models import (
        AirbyteStateMessage as AirbyteStateMessage,
    )
    from airbyte_cdk.models import (
        AirbyteStateType as AirbyteStateType,
    )
    from airbyte_cdk.models import (
        AirbyteStreamState as AirbyteStreamState,
    )
    from airbyte_cdk.models import (
        AirbyteStreamStatus as AirbyteStreamStatus,
    )
    from airbyte_cdk.models import (
        AirbyteTraceMessage as AirbyteTraceMessage,
    )
    from airbyte_cdk.models import (
        EstimateType as EstimateType,
    )
    from airbyte_cdk.models import (
        FailureType as FailureType,
    )
    from airbyte_cdk.models import (
        Level as Level,
    )
    from airbyte_cdk.models import (
        StreamDescriptor as StreamDescriptor,
    )
    from airbyte_cdk.models import (
        TraceType as TraceType,
    )
    from airbyte_cdk.models import (
        Type as Type,
    )
    from airbyte_cdk.utils.traced_exception import AirbyteTracedException as AirbyteTracedException

_ELSEWHERE = {
    "status_message": ("airbyte_cdk.utils.stream_status_utils", "as_airbyte_message"),
    "AirbyteTracedException": ("airbyte_cdk.utils.traced_exception", "AirbyteTracedException"),
}


def __getattr__(name: str) -> Any:
    module, attribute = _ELSEWHERE.get(name, ("airbyte_cdk.models", name))
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # found once: later uses are plain module attributes
    return value
