"""Tool parameter schemas made acceptable to upstreams that take only a subset of
JSON Schema. Gemini's ``parameters`` (an OpenAPI 3.0 subset) refuses ``$schema``,
``additionalProperties``, ``propertyNames``, ``exclusiveMinimum``, ``const``,
``$ref`` and more with a 400; Claude Code sends most of them on every request.
``for_gemini`` keeps the meaning where it can (``const`` as a one-value ``enum``,
a null alternative as ``nullable``, ``$ref`` inlined, an exclusive bound as an
inclusive one for integers) and drops the rest. OpenAI-compatible upstreams that
need the same get it with the provider's ``tool_schema: gemini``.
"""

from __future__ import annotations

from typing import Any

# What Gemini's Schema object takes (generativelanguage v1beta, Schema).
_KEPT = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }
)  # fmt: skip
_FORMATS = {
    "string": {"enum", "date-time"},
    "number": {"float", "double"},
    "integer": {"int32", "int64"},
}
_NUMBER = (int, float)
_VALUE_TYPES: dict[str, Any] = {
    **dict.fromkeys(("title", "description", "pattern", "format"), str),
    **dict.fromkeys(
        (
            "maxItems",
            "minItems",
            "minProperties",
            "maxProperties",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
        ),
        _NUMBER,
    ),
    "nullable": bool,
    "enum": list,
    "required": list,
    "propertyOrdering": list,
}
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_DEPTH = 32  # $ref chains and nesting beyond this are cut (recursive schemas)


def for_gemini(schema: Any) -> dict[str, Any]:
    """A tool's parameters as Gemini takes them (always an object schema)."""
    if not isinstance(schema, dict):
        return {"type": "object", "properties": {}}
    definitions = {
        **_mapping(schema.get("definitions")),
        **_mapping(schema.get("$defs")),
    }
    out = _convert(schema, definitions, 0)
    if out.get("type") != "object":
        return {"type": "object", "properties": {"value": out}, "required": ["value"]}
    return out


def _convert(schema: Any, definitions: dict[str, Any], depth: int) -> dict[str, Any]:
    if not isinstance(schema, dict) or depth > _DEPTH:
        return {}
    schema = _resolved(schema, definitions, depth)
    if "allOf" in schema and isinstance(schema["allOf"], list):
        merged = {key: value for key, value in schema.items() if key != "allOf"}
        for part in schema["allOf"]:
            part = _resolved(part, definitions, depth) if isinstance(part, dict) else {}
            for key, value in part.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**_mapping(merged.get("properties")), **value}
                elif key == "required" and isinstance(value, list):
                    before = merged.get("required")
                    merged["required"] = [*(before if isinstance(before, list) else ()), *value]
                else:
                    merged.setdefault(key, value)
        schema = merged
    out: dict[str, Any] = {}
    nullable = False
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kinds = [k for k in kind if isinstance(k, str) and k.lower() in _TYPES]
        nullable = "null" in kind
        if len(kinds) == 1:
            kind = kinds[0]
        else:
            schema = {**schema, "anyOf": [{"type": k} for k in kinds]}
            kind = None
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if not isinstance(options, list):
            continue
        real = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        nullable = nullable or len(real) < len(options)
        if len(real) == 1:  # X or null: X, nullable
            return {**_convert(real[0], definitions, depth + 1), **_note(schema), **_null(nullable)}
        out["anyOf"] = [_convert(o, definitions, depth + 1) for o in real]
    if isinstance(kind, str) and kind.lower() in _TYPES:
        out["type"] = kind.lower()
    if "const" in schema:
        out["enum"] = [schema["const"]]
    for key, value in schema.items():
        if key not in _KEPT or key in ("type", "anyOf"):
            continue
        if key == "properties":
            if isinstance(value, dict):
                out[key] = {
                    str(name): _convert(sub, definitions, depth + 1) for name, sub in value.items()
                }
        elif key == "items":
            out[key] = _convert(value, definitions, depth + 1) if isinstance(value, dict) else {}
        elif isinstance(value, _VALUE_TYPES.get(key, object)) and not (
            isinstance(value, bool) and _VALUE_TYPES.get(key) is _NUMBER
        ):
            out[key] = value  # of the type Gemini expects there; else dropped
    if "enum" in out:
        values = out["enum"]
        if (
            isinstance(values, list)
            and values
            and all(isinstance(v, str | int | float) for v in values)
        ):
            out["enum"] = [str(v) for v in values]  # Gemini's enums are strings
            if out.get("type") in (None, "integer", "number", "boolean"):
                out["type"], out["format"] = "string", "enum"
        else:
            del out["enum"]
    if out.get("format") not in _FORMATS.get(str(out.get("type")), ()):
        out.pop("format", None)
    for bound, inclusive, step in (
        ("exclusiveMinimum", "minimum", 1),
        ("exclusiveMaximum", "maximum", -1),
    ):
        value = schema.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool) and inclusive not in out:
            # An integer's exclusive bound is the next integer; a number's stays as it is.
            out[inclusive] = value + step if out.get("type") == "integer" else value
    if "required" in out:
        names = set(_mapping(out.get("properties")))
        listed = out["required"] if isinstance(out["required"], list) else []
        required = [n for n in listed if isinstance(n, str) and n in names]
        if required:
            out["required"] = list(dict.fromkeys(required))
        else:
            del out["required"]
    if out.get("type") == "object" and "properties" not in out and "anyOf" not in out:
        out["properties"] = {}
    if out.get("type") == "array" and "items" not in out:
        out["items"] = {"type": "string"}
    return {**out, **_null(nullable)}


def _resolved(schema: dict[str, Any], definitions: dict[str, Any], depth: int) -> dict[str, Any]:
    """``schema`` with its local ``$ref`` followed (its own keys win)."""
    seen = 0
    while isinstance(schema.get("$ref"), str) and seen <= _DEPTH - depth:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = definitions.get(name)
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        schema = {**target, **rest} if isinstance(target, dict) else rest
        seen += 1
    return schema


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _note(schema: dict[str, Any]) -> dict[str, Any]:
    return (
        {"description": schema["description"]} if isinstance(schema.get("description"), str) else {}
    )


def _null(nullable: bool) -> dict[str, Any]:
    return {"nullable": True} if nullable else {}
