"""Files a user writes or edits by hand for `docker run` (config, catalog, state): one that cannot be
used is a config error naming the file and the fault, never its text, and never a system error."""

from __future__ import annotations

from pathlib import Path

import pytest
from airbyte_cdk.models import FailureType  # type: ignore[attr-defined,unused-ignore]
from airbyte_cdk.utils.traced_exception import AirbyteTracedException

from source_perly_stripe.source import SourcePerlyStripe

KEY = "sk_test_CANARYx7Q0123456789"


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (None, "cannot read"),
        ('{"api_key": "' + KEY + '",\n "base_url": }', "is not valid JSON (line 2, column 14)"),
        (f'["{KEY}"]', "must hold a JSON object"),
    ],
    ids=["missing", "broken", "not-an-object"],
)
def test_an_unusable_config_file_is_a_config_error_naming_it_without_its_text(
    tmp_path: Path, content: str | None, fault: str
) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(AirbyteTracedException) as raised:
        SourcePerlyStripe.read_config(str(path))

    assert raised.value.failure_type == FailureType.config_error
    assert str(path) in raised.value.message
    assert fault in raised.value.message
    assert KEY not in f"{raised.value.message} {raised.value.internal_message}"


@pytest.mark.parametrize(
    ("reader", "content", "fault"),
    [
        ("state", '[{"type": "STREAM", ', "Expecting property name"),
        ("state", '[{"type": "STREAM"}]', "should contain either a stream, global, or state field"),
        ("catalog", '{"streams": [{"sync_mode": "incremental"}]}', "is a required property"),
    ],
    ids=["state-broken", "state-without-a-stream", "catalog-without-its-stream"],
)
def test_an_unusable_catalog_or_state_file_is_a_config_error_naming_it(
    tmp_path: Path, reader: str, content: str, fault: str
) -> None:
    path = tmp_path / f"{reader}.json"
    path.write_text(content)

    with pytest.raises(AirbyteTracedException) as raised:
        getattr(SourcePerlyStripe, f"read_{reader}")(str(path))

    assert raised.value.failure_type == FailureType.config_error
    assert raised.value.message.startswith(f"The {reader} file {path} cannot be used: ")
    assert fault in raised.value.message
