"""The SPEC message of an Airbyte connector without the Airbyte CDK, for Perly's source and destination,
and the reading of the config file a user writes by hand.

`spec` is the verb run most often (every connector form load) and importing the CDK takes most of a
second, so each connector prints its SPEC from a plain dict. The bytes are those the CDK's serializer
gives: ConnectorSpecification's fields in their declared order, unset ones left out, the two with a
default (supportsNormalization, supportsDBT) filled in. Its own package: the source must not import
the destination, and this is Airbyte's protocol, not Stripe's vocabulary."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

# (field, default) in the order of airbyte_cdk.models.ConnectorSpecification; None: left out when unset.
_SPEC_FIELDS: tuple[tuple[str, Any], ...] = (
    ("connectionSpecification", None),
    ("documentationUrl", None),
    ("changelogUrl", None),
    ("supportsIncremental", None),
    ("supportsNormalization", False),
    ("supportsDBT", False),
    ("supported_destination_sync_modes", None),
    ("authSpecification", None),
    ("advanced_auth", None),
    ("protocol_version", None),
)


def spec_message_line(spec: Mapping[str, Any]) -> str:
    """The SPEC message of `spec` (a ConnectorSpecification as JSON) as one line, as the CDK prints it."""
    unknown = set(spec) - {name for name, _ in _SPEC_FIELDS}
    if unknown:
        raise ValueError(f"The spec has fields the Airbyte protocol does not: {sorted(unknown)}")
    ordered = {
        name: spec.get(name, default) for name, default in _SPEC_FIELDS if spec.get(name, default) is not None
    }
    return json.dumps({"type": "SPEC", "spec": ordered}, ensure_ascii=False, separators=(",", ":"))


def print_spec_message(spec: Mapping[str, Any]) -> None:
    """Print the SPEC message of `spec` (`spec | head -c 80` ends quietly, as it would `cat`)."""
    print_line(spec_message_line(spec))


def print_line(text: str, stream: TextIO | None = None) -> None:
    """Print a line on stdout (or `stream`), at once. Once its reader has gone (`| head`), this and
    the rest are dropped and the command goes on, instead of failing with a traceback: a sync is not
    cut short, nor its state lost, because nobody reads its progress."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except BrokenPipeError:
        silence_closed_stdout(stream)


def silence_closed_stdout(stream: TextIO | None = None) -> None:
    """After a BrokenPipeError on stdout, or on `stream` (its reader stopped early, as `| head` does):
    what is printed there from now on is dropped. Python flushes stdout again at exit, which would
    otherwise fail the same way and end the command with a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), (stream or sys.stdout).fileno())


class ConfigFileError(ValueError):
    """A config file that cannot be read or is not one JSON object; the message says which and why."""


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A config file's JSON object. The error names the file and the position of a syntax error,
    never the file's text: it may hold a key or a password."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigFileError(f"{path} is not valid JSON{where}") from None
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"{path} must hold a JSON object")
    return loaded
