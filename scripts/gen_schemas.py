#!/usr/bin/env python3
"""gen_schemas: writes source_perly_stripe/schemas/*.json from the typed resource classes of the
pinned `stripe` package (stripe.Subscription, stripe.Invoice, ...), so every property has a type and
is nullable exactly where Stripe's types say `Optional`.

    python scripts/gen_schemas.py           # rewrite the schemas
    python scripts/gen_schemas.py --check   # exit 1 if a schema differs from what stripe's types give

Each property gets one JSON type besides "null" (Airbyte destinations and PyAirbyte map a property to
one column type). A reference to another object (`Union[str, Customer]`) is rendered as its id unless
the stream expands it, so it is a string, or an object where the stream asks for `expand[]`. Nested
objects stay open (`additionalProperties`); the destination keeps the raw object anyway.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tomllib
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import stripe
from stripe._list_object import ListObject
from stripe._object_classes import OBJECT_CLASSES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere: the streams and the API version come from the source

from source_perly_stripe.client import API_VERSION  # noqa: E402
from source_perly_stripe.streams import ALL_STREAMS, StreamDef  # noqa: E402

SCHEMAS = ROOT / "source_perly_stripe" / "schemas"
# Fields every record carries besides Stripe's own (source_perly_stripe/reader.py adds them).
OUR_FIELDS: dict[str, dict[str, Any]] = {
    "updated": {
        "type": ["null", "integer"],
        "description": "Unix seconds (server time) when this version was observed; the cursor.",
    },
    "deleted": {
        "type": ["null", "boolean"],
        "description": "True on a tombstone: the object was deleted in Stripe.",
    },
}
SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", Decimal: "string"}


class UnknownType(TypeError):
    """An annotation this generator has no JSON type for: teach `json_type` about it."""


def pinned_stripe_version() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    pins = [m.group(1) for d in dependencies if (m := re.fullmatch(r"stripe==(\S+)", d))]
    if len(pins) != 1:
        raise SystemExit("pyproject.toml must pin stripe exactly (stripe==X.Y.Z)")
    return pins[0]


def is_object_class(annotation: Any) -> bool:
    return isinstance(annotation, typing.ForwardRef) or (
        isinstance(annotation, type) and issubclass(annotation, stripe.StripeObject)
    )


def json_type(annotation: Any, expanded: bool) -> tuple[dict[str, Any], bool]:
    """(the schema of one value, whether None is allowed) for a stripe type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        nullable = type(None) in args
        options = [a for a in args if a is not type(None)]
        if str in options and any(is_object_class(a) for a in options):  # an expandable reference
            schema, _ = json_type(stripe.StripeObject if expanded else str, expanded)
            return schema, nullable
        if all(is_object_class(a) for a in options):  # one of several kinds of object
            return {"type": "object", "additionalProperties": True}, nullable
        if all(typing.get_origin(a) is typing.Literal or a is str for a in options):  # an open enum
            return {"type": "string"}, nullable
        if len(options) != 1:
            raise UnknownType(f"a union of several types: {annotation}")
        schema, inner_nullable = json_type(options[0], expanded)
        return schema, nullable or inner_nullable
    if origin is typing.Literal:
        kinds = {SCALARS.get(type(value)) for value in args}
        if len(kinds) != 1 or None in kinds:
            raise UnknownType(f"a literal of several types: {annotation}")
        return {"type": kinds.pop()}, False
    if origin is list:
        items, _ = json_type(args[0], expanded)
        return {"type": "array", "items": items}, False
    if origin is not None and isinstance(origin, type) and issubclass(origin, stripe.StripeObject):
        return {"type": "object", "additionalProperties": True}, False  # a list object or a map
    if annotation in SCALARS:
        return {"type": SCALARS[annotation]}, False
    if is_object_class(annotation) or annotation is ListObject:
        return {"type": "object", "additionalProperties": True}, False
    raise UnknownType(str(annotation))


def property_schema(annotation: Any, expanded: bool) -> dict[str, Any]:
    schema, nullable = json_type(annotation, expanded)
    if nullable:
        schema["type"] = ["null", schema["type"]]
    return schema


def expansions(stream: StreamDef) -> set[str]:
    """Top-level fields the stream asks Stripe to expand (its retrieve parameters name them)."""
    return {str(value) for key, value in stream.retrieve_params if key == "expand[]"}


def stream_schema(stream: StreamDef) -> dict[str, Any]:
    module, class_name = OBJECT_CLASSES[stream.object_type]  # stripe's own map: `object` -> class
    resource = getattr(importlib.import_module(module), class_name)
    expanded = expansions(stream)
    properties: dict[str, Any] = {}
    for name, annotation in sorted(resource.__annotations__.items()):
        if typing.get_origin(annotation) is typing.ClassVar or name in OUR_FIELDS:
            continue
        properties[name] = property_schema(annotation, name in expanded)
    properties["id"] = {"type": "string"}  # the primary key: always there, tombstones included
    properties.update(OUR_FIELDS)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": stream.name,
        "description": (
            f"Stripe {stream.object_type} objects as API version {API_VERSION} renders them; property "
            f"types from stripe-python's stripe.{resource.__name__} (scripts/gen_schemas.py)."
        ),
        "type": ["null", "object"],
        "additionalProperties": True,
        "required": ["id"],
        "properties": properties,
    }


def rendered(stream: StreamDef) -> str:
    return json.dumps(stream_schema(stream), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if stripe.VERSION != pinned_stripe_version():
        raise SystemExit(
            f"stripe {stripe.VERSION} is installed; the schemas come from {pinned_stripe_version()}"
        )
    stale = []
    for stream in ALL_STREAMS:
        path, text = SCHEMAS / f"{stream.name}.json", rendered(stream)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"schemas differ from stripe's types: {', '.join(stale)}; run scripts/gen_schemas.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
