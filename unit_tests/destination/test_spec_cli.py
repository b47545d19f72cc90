"""`destination-perly spec` answers without the Airbyte CDK, with the bytes the CDK would print."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from airbyte_cdk.models import AirbyteMessage, AirbyteMessageSerializer, Type

import connector_spec
import destination_perly
from destination_perly.destination import DestinationPerly

ROOT = Path(destination_perly.__file__).parents[1]


def test_the_cli_prints_the_spec_message_the_cdk_would_without_importing_the_cdk() -> None:
    program = (
        "import sys; sys.argv = ['destination-perly', 'spec']\n"
        "from destination_perly.run import run; run()\n"
        "print('cdk imported' if 'airbyte_cdk' in sys.modules else 'no cdk')"
    )
    output = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.splitlines()
    spec = DestinationPerly().spec(logging.getLogger("test"))
    # How the CDK's Destination.run prints each message.
    expected = orjson.dumps(AirbyteMessageSerializer.dump(AirbyteMessage(type=Type.SPEC, spec=spec))).decode()
    assert output == [expected, "no cdk"]


def test_the_spec_names_the_stores_sync_modes_and_keeps_defaults_the_cdk_fills_in() -> None:
    line = orjson.loads(connector_spec.spec_message_line(_spec()))
    assert line["spec"]["supported_destination_sync_modes"] == ["append", "overwrite", "append_dedup"]
    assert (line["spec"]["supportsNormalization"], line["spec"]["supportsDBT"]) == (False, False)
    assert line["spec"]["connectionSpecification"]["required"] == ["store"]


def test_a_spec_field_the_protocol_lacks_is_refused_rather_than_printed() -> None:
    with pytest.raises(ValueError, match="supportsTeleport"):
        connector_spec.spec_message_line({**_spec(), "supportsTeleport": True})


def _spec() -> dict:
    from destination_perly.spec import destination_spec

    return destination_spec()


@pytest.mark.parametrize("connector", ["destination_perly", "source_perly_stripe"])
def test_spec_into_a_pipe_whose_reader_has_gone_ends_quietly(connector: str) -> None:
    """`spec | head -c 80` and the like: the reader closes the pipe before the message is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    program = f"import sys; sys.argv = ['{connector}', 'spec']\nfrom {connector}.run import run; run()"
    try:
        ended = subprocess.run(
            [sys.executable, "-c", program], stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
    finally:
        os.close(write_end)
    assert (ended.returncode, ended.stderr) == (0, "")
