"""The Anthropic Messages protocol, client side: parse requests, render replies."""

from __future__ import annotations

import uuid
from base64 import b64decode
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    Heartbeat,
    ImagePart,
    Message,
    Part,
    ReasoningDelta,
    ReasoningPart,
    Reply,
    Signature,
    Start,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
    arguments_object,
)
from lmgate.errors import GatewayError, encodable, invalid
from lmgate.frontends.base import (
    CHAT,
    Answer,
    ErrorShape,
    Route,
    Services,
    model_list,
)
from lmgate.frontends.validate import (
    optional_bool,
    optional_int,
    optional_list,
    optional_number,
    optional_object,
    optional_string,
    parse_json_object,
    string,
)
from lmgate.ids import unique_hex
from lmgate.observe import tokens
from lmgate.routing.catalog import Catalog

# Parsed into the canonical request. ``thinking``, ``output_config`` and ``output_format``
# are parsed too, but also kept in ``extra``: an Anthropic upstream gets them as they came.
_KNOWN_FIELDS = frozenset(
    {
        "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p",
        "top_k", "tools", "tool_choice", "metadata", "stream",
    }
)  # fmt: skip
_TOOL_FIELDS = frozenset({"type", "name", "description", "input_schema", "cache_control"})
# Anthropic's effort levels as OpenAI's reasoning_effort (which has no "max").
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "stop_sequence": "stop_sequence",
    "content_filter": "refusal",
}

# ---- request -------------------------------------------------------------------

PROTOCOL = "anthropic"  # as usage records name the client protocol


def parse_request(
    body: bytes, headers: Mapping[str, str] | None = None, *, for_counting: bool = False
) -> ChatRequest:
    data = parse_json_object(body)
    model = string(data.get("model"), "model", allow_empty=False)
    max_tokens = optional_int(data, "max_tokens", 1)
    if max_tokens is None and not for_counting:
        raise invalid("max_tokens: field required", "max_tokens")
    stop = optional_list(data, "stop_sequences")
    if stop is not None and not all(isinstance(item, str) for item in stop):
        raise invalid("stop_sequences: expected an array of strings", "stop_sequences")
    tool_choice, parallel = _parse_tool_choice(optional_object(data, "tool_choice"))
    thinking, budget = _parse_thinking(optional_object(data, "thinking"))
    response_format, effort = _parse_output_config(data)
    metadata = optional_object(data, "metadata") or {}
    betas = (headers or {}).get("anthropic-beta", "")
    tools, server_tools = _parse_tools(data.get("tools"))
    return ChatRequest(
        model=model,
        messages=_parse_messages(data.get("messages")),
        system=_parse_system(data.get("system")),
        stream=optional_bool(data, "stream") or False,
        include_usage=True,
        max_tokens=max_tokens,
        temperature=optional_number(data, "temperature", 0, 1),
        top_p=optional_number(data, "top_p", 0, 1),
        top_k=optional_int(data, "top_k", 0),
        stop=stop or None,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=response_format,
        thinking=thinking,
        thinking_budget=budget,
        reasoning_effort=effort,
        user=optional_string(metadata, "user_id", "metadata.user_id"),
        extra={key: value for key, value in data.items() if key not in _KNOWN_FIELDS},
        extra_dialect="anthropic",
        betas=[beta for beta in (item.strip() for item in betas.split(",")) if beta],
        server_tools=server_tools,
    )


def _parse_system(raw: Any, where: str = "system") -> list[TextPart]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [TextPart(raw)]
    if not isinstance(raw, list):
        raise invalid(f"{where}: expected a string or an array of text blocks", where)
    parts = []
    for index, block in enumerate(raw):
        at = f"{where}.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"{at}: expected a text block", at)
        parts.append(_text_block(block, at))
    return parts


def _text_block(block: dict[str, Any], where: str) -> TextPart:
    return TextPart(
        string(block.get("text"), f"{where}.text"),
        optional_object(block, "cache_control", f"{where}.cache_control"),
    )


def _parse_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise invalid("messages: expected a non-empty array of messages", "messages")
    messages: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages.{index}"
        if not isinstance(item, dict):
            raise invalid(f"{where}: expected an object", where)
        role = item.get("role")
        if role == "system":
            # Instructions mid-conversation (Claude Code sends them for model ids it
            # does not know): kept in place.
            messages.append(Message("system", [*_parse_system(item.get("content"), where)]))
            continue
        if role not in ("user", "assistant"):
            raise invalid(
                f"{where}.role: expected 'user', 'assistant' or 'system', got {role!r}", where
            )
        content = item.get("content")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = content
        else:
            raise invalid(f"{where}.content: expected a string or an array of blocks", where)
        if not blocks and (role == "user" or index < len(raw) - 1):
            raise invalid(f"{where}.content: must not be empty", where)
        parts = [_block(block, f"{where}.content.{n}", role) for n, block in enumerate(blocks)]
        # Tool results are their own turn in the canonical form, before the user's text.
        results: list[Part] = [p for p in parts if isinstance(p, ToolResultPart)]
        rest: list[Part] = [p for p in parts if not isinstance(p, ToolResultPart)]
        if results:
            messages.append(Message("tool", results))
        if rest or not results:
            messages.append(Message(role, rest))
    if all(message.role == "system" for message in messages):
        raise invalid("messages: no user or assistant message, only system turns", "messages")
    return messages


def _block(block: Any, where: str, role: str) -> Part:
    if not isinstance(block, dict):
        raise invalid(f"{where}: expected an object", where)
    kind = block.get("type")
    if kind == "text":
        return _text_block(block, where)
    if role == "user":
        if kind == "image":
            return _image(block, where)
        if kind == "tool_result":
            return _tool_result(block, where)
    else:
        if kind == "tool_use":
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise invalid(f"{where}.input: expected an object", where)
            return ToolCallPart(
                string(block.get("id"), f"{where}.id", allow_empty=False),
                string(block.get("name"), f"{where}.name", allow_empty=False),
                encodable(arguments, f"{where}.input").decode(),
            )
        if kind == "thinking":
            wire = optional_string(block, "signature", f"{where}.signature")
            signature = Signature.from_wire(wire) if wire else None
            return ReasoningPart(string(block.get("thinking"), f"{where}.thinking"), signature)
        if kind == "redacted_thinking":
            return ReasoningPart("", redacted=string(block.get("data"), f"{where}.data"))
    raise invalid(f"{where}.type: block type {kind!r} is not supported in a {role} message", where)


def _image(block: dict[str, Any], where: str) -> ImagePart:
    source = optional_object(block, "source", f"{where}.source")
    if source is None:
        raise invalid(f"{where}.source: field required", where)
    if source.get("type") == "base64":
        media_type = string(source.get("media_type"), f"{where}.source.media_type")
        try:
            data = b64decode(string(source.get("data"), f"{where}.source.data"), validate=True)
        except ValueError:  # binascii.Error, or characters beyond ASCII
            raise invalid(f"{where}.source.data: not valid base64", where) from None
        return ImagePart(data=data, media_type=media_type, where=where)
    if source.get("type") == "url":
        url = string(source.get("url"), f"{where}.source.url", allow_empty=False)
        return ImagePart(url=url, where=where)
    raise invalid(f"{where}.source.type: expected 'base64' or 'url'", where)


def _tool_result(block: dict[str, Any], where: str) -> ToolResultPart:
    call_id = string(block.get("tool_use_id"), f"{where}.tool_use_id", allow_empty=False)
    content = block.get("content", "")
    parts: list[TextPart | ImagePart] = []
    if isinstance(content, str):
        parts.append(TextPart(content))
    elif isinstance(content, list):
        for number, inner in enumerate(content):
            at = f"{where}.content.{number}"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                parts.append(_text_block(inner, at))
            elif kind == "image":
                parts.append(_image(inner, at))
            else:
                raise invalid(f"{at}.type: expected a text or image block", at)
    else:
        raise invalid(f"{where}.content: expected a string or an array of blocks", where)
    return ToolResultPart(
        call_id,
        parts,
        optional_bool(block, "is_error", f"{where}.is_error") or False,
        optional_object(block, "cache_control", f"{where}.cache_control"),
    )


def _parse_tools(raw: Any) -> tuple[list[Tool] | None, list[dict[str, Any]]]:
    """The client's tools, and its server tools (a ``type`` such as web_search_20250305:
    the upstream runs them), kept as sent."""
    if raw is None:
        return None, []
    if not isinstance(raw, list):
        raise invalid("tools: expected an array", "tools")
    tools, server_tools = [], []
    for index, item in enumerate(raw):
        where = f"tools.{index}"
        if not isinstance(item, dict):
            raise invalid(f"{where}: expected an object", where)
        if item.get("type") not in (None, "custom"):
            if not isinstance(item.get("type"), str):
                raise invalid(f"{where}.type: expected a string", where)
            string(item.get("name"), f"{where}.name", allow_empty=False)
            server_tools.append(item)
            continue
        schema = optional_object(item, "input_schema", f"{where}.input_schema")
        if schema is None:
            raise invalid(f"{where}.input_schema: field required", where)
        extra = {key: value for key, value in item.items() if key not in _TOOL_FIELDS}
        tools.append(
            Tool(
                string(item.get("name"), f"{where}.name", allow_empty=False),
                optional_string(item, "description", f"{where}.description"),
                schema,
                optional_object(item, "cache_control", f"{where}.cache_control"),
                extra or None,
            )
        )
    return tools or None, server_tools


def _parse_tool_choice(
    raw: dict[str, Any] | None,
) -> tuple[str | dict[str, str] | None, bool | None]:
    if raw is None:
        return None, None
    where = "tool_choice.disable_parallel_tool_use"
    disable = optional_bool(raw, "disable_parallel_tool_use", where)
    parallel = None if disable is None else not disable
    kind = raw.get("type")
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        return {"name": string(raw.get("name"), "tool_choice.name", allow_empty=False)}, parallel
    raise invalid("tool_choice.type: expected 'auto', 'any', 'tool' or 'none'", "tool_choice")


def _parse_thinking(raw: dict[str, Any] | None) -> tuple[bool | None, int | None]:
    if raw is None:
        return None, None
    kind = raw.get("type")
    if kind == "disabled":
        return False, None
    if kind == "adaptive":
        return True, None
    if kind == "enabled":
        budget = optional_int(raw, "budget_tokens", 1)
        if budget is None:
            raise invalid("thinking.budget_tokens: field required", "thinking")
        return True, budget
    raise invalid("thinking.type: expected 'enabled', 'disabled' or 'adaptive'", "thinking")


def _parse_output_config(data: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``output_config`` (``format``: a JSON schema the reply must follow; ``effort``), or
    the older ``output_format``, as the canonical response_format and reasoning effort."""
    config = optional_object(data, "output_config") or {}
    output_format = optional_object(config, "format", "output_config.format")
    where = "output_config.format"
    if output_format is None:
        output_format, where = optional_object(data, "output_format"), "output_format"
    response_format = None
    if output_format is not None:
        if output_format.get("type") != "json_schema":
            raise invalid(f"{where}.type: expected 'json_schema'", f"{where}.type")
        schema = optional_object(output_format, "schema", f"{where}.schema")
        if schema is None:
            raise invalid(f"{where}.schema: field required", f"{where}.schema")
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    effort = optional_string(config, "effort", "output_config.effort")
    if effort is not None and effort not in _EFFORTS:
        raise invalid(
            "output_config.effort: expected 'low', 'medium', 'high' or 'max'",
            "output_config.effort",
        )
    return response_format, _EFFORTS.get(effort or "")


# ---- replies -------------------------------------------------------------------


def usage_body(usage: Usage) -> dict[str, int]:
    read, write = usage.cache_read_tokens or 0, usage.cache_write_tokens or 0
    return {
        # Anthropic counts cached prompt tokens apart from input_tokens.
        "input_tokens": max(0, usage.input_tokens - read - write),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


def _tool_id(call_id: str) -> str:
    return call_id or f"toolu_{uuid.uuid4().hex[:24]}"


def reply_body(reply: Reply, request: ChatRequest) -> bytes:
    content: list[dict[str, Any]] = []
    if reply.reasoning and request.thinking:
        signature = reply.reasoning_signature.wire() if reply.reasoning_signature else ""
        content.append({"type": "thinking", "thinking": reply.reasoning, "signature": signature})
    if reply.text or not (content or reply.tool_calls):
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": arguments_object(call.arguments),
            }
        )
    finish = reply.finish or Finish("stop")
    usage = reply.usage or Usage(0, 0)
    return orjson.dumps(
        {
            "id": f"msg_{unique_hex()}",
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": reply.model,
            "stop_reason": _STOP_REASONS[finish.reason],
            "stop_sequence": finish.stop_sequence,
            "usage": usage_body(usage),
        }
    )


def _frame(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


class StreamEncoder:
    """The SSE frames of a reply whose ``Start`` was already received: content blocks
    in order, at most one open, indexed from 0."""

    __slots__ = ("_finish", "_index", "_kind", "_model", "_request", "_usage")

    def __init__(self, start: Start, request: ChatRequest) -> None:
        self._model = start.model
        self._request = request
        self._index = -1
        self._kind: str | None = None  # of the open block
        self._finish = Finish("stop")
        self._usage = Usage(0, 0)

    async def begin(self) -> bytes:
        estimate = await tokens.estimate_request(self._request)
        self._usage = Usage(estimate, 0)
        return _frame(
            b"message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{unique_hex()}",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": self._model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": estimate, "output_tokens": 0},
                },
            },
        )

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            opened = self._open("text", {"type": "text", "text": ""})
            return opened + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            if not self._request.thinking:
                return b""  # like Anthropic: no thinking blocks unless asked for
            frames = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            if event.text:
                frames += self._delta({"type": "thinking_delta", "thinking": event.text})
            if event.signature:
                signed = {"type": "signature_delta", "signature": event.signature.wire()}
                frames += self._delta(signed)
            return frames
        if isinstance(event, ToolCallStart):
            block = {"type": "tool_use", "id": _tool_id(event.id), "name": event.name}
            return self._open(f"tool{event.index}", {**block, "input": {}})
        if isinstance(event, ToolCallDelta):
            # OpenAI-style upstreams stream one call after another, so the current
            # block is this call's.
            if event.arguments and self._kind == f"tool{event.index}":
                return self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        elif isinstance(event, Finish):
            self._finish = event
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Heartbeat):
            return _PING
        return b""

    async def end(self) -> bytes:
        delta = _frame(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _STOP_REASONS[self._finish.reason],
                    "stop_sequence": self._finish.stop_sequence,
                },
                "usage": usage_body(self._usage),
            },
        )
        return self._close() + delta + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

    def fail(self, error: GatewayError) -> bytes:
        return _frame(b"error", orjson.loads(error_body(error)))

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        if self._kind == kind:
            return b""
        closed = self._close()
        self._index += 1
        self._kind = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": block}
        return closed + _frame(b"content_block_start", payload)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return _frame(b"content_block_delta", payload)

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return _frame(b"content_block_stop", {"type": "content_block_stop", "index": self._index})


stream_encoder = StreamEncoder


# ---- errors, counting and models -----------------------------------------------

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "upstream": "api_error",
    "timeout": "timeout_error",
    "overloaded": "overloaded_error",
    "unavailable": "overloaded_error",  # but 503: the gateway, not the model, is away
    "internal": "api_error",
}


def error_status(error: GatewayError) -> int:
    return 529 if error.kind == "overloaded" else error.status


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": _ERROR_TYPES[error.kind], "message": error.message}}
    )


def models_body(catalog: Catalog) -> bytes:
    """``GET /v1/models`` as the Anthropic SDK expects it (asked with ``anthropic-version``)."""
    data = [
        {
            "type": "model",
            "id": entry.id,
            "display_name": entry.name,
            "created_at": _iso(entry.created),
        }
        for entry in catalog.listed
    ]
    return orjson.dumps(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def _iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reply_headers(request: ChatRequest) -> dict[str, str]:
    return {}


# ---- routes --------------------------------------------------------------------

ERRORS = ErrorShape(error_status, error_body)


def _for_counting(body: bytes, headers: Mapping[str, str]) -> ChatRequest:
    return parse_request(body, headers, for_counting=True)


async def _count_tokens(services: Services, request: Request) -> Answer:
    return await services.count_tokens(request, ERRORS, _for_counting, "input_tokens")


def _from_anthropic_sdk(request: Request) -> bool:
    return "anthropic-version" in request.headers  # OpenAI's SDK does not send it


ROUTES = (
    Route("POST", "/v1/messages", CHAT),
    Route("POST", "/v1/messages/count_tokens", _count_tokens),
    Route("GET", "/v1/models", model_list(models_body, ERRORS), claims=_from_anthropic_sdk),
)
