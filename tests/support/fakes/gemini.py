"""A fake Gemini upstream's rules and replies. Its schema check follows Google's
documented Schema object (generativelanguage v1beta), written out here on its own
so that the gateway's normaliser is tested against it, not against itself; and it
refuses a functionCall ``id`` sent back, as the real API does."""

from __future__ import annotations

from typing import Any

from tests.support.fakes.upstream import Recorded, Script

SCHEMA_FIELDS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
}  # fmt: skip
TYPES = {"string", "number", "integer", "boolean", "array", "object"}


def refusal(body: Any) -> str | None:
    """Why the real API would answer 400, or None."""
    for tool in body.get("tools") or []:
        for declaration in tool.get("functionDeclarations") or []:
            problem = _schema(declaration.get("parameters") or {}, declaration["name"])
            if problem:
                return problem
    for content in body.get("contents") or []:
        for part in content.get("parts") or []:
            if "id" in (part.get("functionCall") or {}):
                return "Invalid JSON payload received. Unknown name \"id\" at 'contents.parts.function_call'"
    return None


def _schema(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where}: not a schema"
    for key in schema:
        if key not in SCHEMA_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() not in TYPES):
        return f"{where}.type: {kind!r} is not a type"
    if "enum" in schema and not all(isinstance(v, str) for v in schema["enum"]):
        return f"{where}.enum: only strings"
    subs = list((schema.get("properties") or {}).items())
    if "items" in schema:
        subs.append(("items", schema["items"]))
    subs += [(f"anyOf[{i}]", s) for i, s in enumerate(schema.get("anyOf") or [])]
    for name, sub in subs:
        problem = _schema(sub, f"{where}.{name}")
        if problem:
            return problem
    return None


def enforcing(answer: Any) -> Any:
    """A FakeUpstream route: 400 like Gemini for what it refuses, else ``answer()``."""

    def route(recorded: Recorded) -> Script:
        problem = refusal(recorded.body)
        if problem:
            error = {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}
            return Script(status=400, json={"error": error})
        return answer(recorded)  # type: ignore[no-any-return]

    return route


def response(
    parts: list[dict[str, Any]], finish: str | None = "STOP", usage: Any = None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-up"}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def stream(*chunks: dict[str, Any]) -> Script:
    return Script(chunks=list(chunks), done=False)
