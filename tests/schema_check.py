"""A validator for the part of JSON Schema (Draft 2020-12) that docs/events.schema.json uses.

Written here rather than depending on ``jsonschema``: the schema needs a dozen keywords, the
test environment has no network to install more, and a keyword this does not know is an
error (so the schema cannot use one silently unchecked).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
KEYWORDS = ANNOTATIONS | {
    "$ref", "oneOf", "anyOf", "type", "const", "enum", "properties", "required",
    "additionalProperties", "items", "minimum",
}  # fmt: skip


class SchemaError(Exception):
    """The instance does not match the schema (the message says where)."""


def _is_type(value: Any, name: str) -> bool:
    match name:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
    raise ValueError(f"unknown type {name!r}")


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def validate(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None,
             where: str = "$") -> None:  # fmt: skip
    """Raise :class:`SchemaError` unless ``instance`` matches ``schema``."""
    root = schema if root is None else root
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"schema keywords not supported: {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references: {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        validate(instance, target, root, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, t) for t in types):
            raise SchemaError(f"{where}: {instance!r} is not of type {types}")
    if "const" in schema and not _same(instance, schema["const"]):
        raise SchemaError(f"{where}: {instance!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, e) for e in schema["enum"]):
        raise SchemaError(f"{where}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is_type(instance, "number") and instance < schema["minimum"]:
        raise SchemaError(f"{where}: {instance!r} is below {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", ()):
            if key not in instance:
                raise SchemaError(f"{where}: {key!r} is missing")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                validate(value, props[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties", True) is False:
                raise SchemaError(f"{where}: {key!r} is not allowed")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            validate(item, schema["items"], root, f"{where}[{i}]")
    for word, wanted in (("oneOf", (1,)), ("anyOf", None)):
        if word not in schema:
            continue
        errors = []
        for sub in schema[word]:
            try:
                validate(instance, sub, root, where)
            except SchemaError as exc:
                errors.append(str(exc))
        matched = len(schema[word]) - len(errors)
        if (wanted is None and matched == 0) or (wanted is not None and matched not in wanted):
            # the branch for this line's "event" says most
            relevant = [e for e in errors if ".event:" not in e] or errors
            closest = relevant[0] if relevant else ""
            raise SchemaError(f"{where}: {matched} of {word} match; {closest}")
