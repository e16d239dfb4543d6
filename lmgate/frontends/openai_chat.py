"""The OpenAI Chat Completions protocol, client side: parse requests, render replies."""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    Start,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
)
from lmgate.errors import GatewayError, invalid
from lmgate.frontends.base import (
    CHAT,
    Answer,
    ErrorShape,
    Route,
    Services,
    json_answer,
    model_list,
    visible_catalog,
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
from lmgate.media.check import decode_data_url
from lmgate.routing.catalog import Catalog, ModelEntry

_KNOWN_FIELDS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "n", "stop", "frequency_penalty", "presence_penalty", "seed",
        "response_format", "logprobs", "top_logprobs", "tools", "tool_choice",
        "parallel_tool_calls", "user", "reasoning_effort", "prompt_cache_key",
    }
)  # fmt: skip

PROTOCOL = "openai"  # as usage records name the client protocol


_FINISH_OUT = {"stop_sequence": "stop"}

# ---- request -------------------------------------------------------------------


def parse_request(body: bytes, headers: Mapping[str, str] | None = None) -> ChatRequest:
    data = parse_json_object(body)
    model = string(data.get("model"), "model", allow_empty=False)
    system, messages = _parse_messages(data.get("messages"))
    stream = optional_bool(data, "stream") or False
    stream_options = optional_object(data, "stream_options") or {}
    include_usage = optional_bool(stream_options, "include_usage", "stream_options.include_usage")
    n = optional_int(data, "n", 1)
    if n is not None and n != 1:
        raise invalid("n: only n=1 is supported", "n")
    max_tokens = optional_int(data, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = optional_int(data, "max_tokens", 1)
    stop = data.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        raise invalid("stop: expected a string or an array of strings", "stop")
    response_format = optional_object(data, "response_format")
    if response_format is not None and not isinstance(response_format.get("type"), str):
        raise invalid("response_format.type: expected a string", "response_format.type")
    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        stream=stream,
        include_usage=bool(include_usage),
        max_tokens=max_tokens,
        temperature=optional_number(data, "temperature", 0, 2),
        top_p=optional_number(data, "top_p", 0, 1),
        stop=stop or None,
        frequency_penalty=optional_number(data, "frequency_penalty", -2, 2),
        presence_penalty=optional_number(data, "presence_penalty", -2, 2),
        seed=optional_int(data, "seed"),
        response_format=response_format,
        logprobs=optional_bool(data, "logprobs"),
        top_logprobs=optional_int(data, "top_logprobs", 0, 20),
        tools=_parse_tools(data.get("tools")),
        tool_choice=_parse_tool_choice(data.get("tool_choice")),
        parallel_tool_calls=optional_bool(data, "parallel_tool_calls"),
        user=optional_string(data, "user"),
        prompt_cache_key=optional_string(data, "prompt_cache_key"),
        reasoning_effort=optional_string(data, "reasoning_effort"),
        extra={key: value for key, value in data.items() if key not in _KNOWN_FIELDS},
    )


def _parse_messages(raw: Any) -> tuple[list[TextPart], list[Message]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("messages: expected a non-empty array of messages", "messages")
    system: list[TextPart] = []
    messages: list[Message] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise invalid(f"{where}: expected an object", where)
        role = item.get("role")
        content = item.get("content")
        if role in ("system", "developer"):
            text = _text_content(content, f"{where}.content")
            if not messages:
                system.append(TextPart(text))  # leading instructions
            else:
                messages.append(Message("system", [TextPart(text)]))
        elif role == "user":
            messages.append(
                Message("user", _user_content(content, f"{where}.content"), _name(item, where))
            )
        elif role == "assistant":
            messages.append(_assistant(item, where))
        elif role == "tool":
            call_id = string(item.get("tool_call_id"), f"{where}.tool_call_id", allow_empty=False)
            text = _text_content(content, f"{where}.content")
            messages.append(Message("tool", [ToolResultPart(call_id, [TextPart(text)])]))
        else:
            raise invalid(
                f"{where}.role: expected one of system, developer, user, assistant, tool;"
                f" got {role!r}",
                f"{where}.role",
            )
    if not messages:
        raise invalid("messages: no user or assistant message, only instructions", "messages")
    return system, messages


def _name(item: dict[str, Any], where: str) -> str | None:
    return optional_string(item, "name", f"{where}.name")


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(f"{where}[{index}]: only text parts are allowed here", where)
            texts.append(string(part.get("text"), f"{where}[{index}].text"))
        return "\n".join(texts)
    raise invalid(f"{where}: expected a string or an array of text parts", where)


def _user_content(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise invalid(f"{where}: expected a string or an array of content parts", where)
    parts: list[Part] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise invalid(f"{at}: expected an object", at)
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(string(part.get("text"), f"{at}.text")))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            if not isinstance(image, dict):
                raise invalid(f"{at}.image_url: expected an object with a url", f"{at}.image_url")
            url = string(image.get("url"), f"{at}.image_url.url", allow_empty=False)
            detail = optional_string(image, "detail", f"{at}.image_url.detail")
            if url.startswith("data:"):
                media_type, data = decode_data_url(url, f"{at}.image_url.url")
                parts.append(ImagePart(data=data, media_type=media_type, detail=detail, where=at))
            else:
                parts.append(ImagePart(url=url, detail=detail, where=at))
        else:
            raise invalid(f"{at}.type: unknown content part type {kind!r}", f"{at}.type")
    return parts


def _assistant(item: dict[str, Any], where: str) -> Message:
    parts: list[Part] = []
    reasoning = item.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        parts.append(ReasoningPart(reasoning))
    content = item.get("content")
    if content is not None:
        if isinstance(content, list):  # text and refusal parts
            texts = [
                p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)
            ]
            content = "".join(t for t in texts if isinstance(t, str))
        parts.append(TextPart(string(content, f"{where}.content")))
    calls = optional_list(item, "tool_calls", f"{where}.tool_calls") or []
    for number, call in enumerate(calls):
        at = f"{where}.tool_calls[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise invalid(f"{at}.function: expected an object", f"{at}.function")
        arguments = function.get("arguments", "")
        parts.append(
            ToolCallPart(
                string(call.get("id"), f"{at}.id", allow_empty=False),
                string(function.get("name"), f"{at}.function.name", allow_empty=False),
                string(arguments, f"{at}.function.arguments"),
            )
        )
    if not parts:
        raise invalid(f"{where}: an assistant message needs content or tool_calls", where)
    return Message("assistant", parts, _name(item, where))


def _parse_tools(raw: Any) -> list[Tool] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise invalid("tools: expected an array", "tools")
    tools = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise invalid(f"{where}: expected a function tool", where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise invalid(f"{where}.function: expected an object", f"{where}.function")
        tools.append(
            Tool(
                string(function.get("name"), f"{where}.function.name", allow_empty=False),
                optional_string(function, "description", f"{where}.function.description"),
                optional_object(function, "parameters", f"{where}.function.parameters"),
            )
        )
    return tools


def _parse_tool_choice(raw: Any) -> str | dict[str, str] | None:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict):
        function = raw.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"name": function["name"]}
    raise invalid(
        'tool_choice: expected "auto", "none", "required" or '
        '{"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


# ---- replies -------------------------------------------------------------------


def usage_body(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_read_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
        # DeepSeek's own names, which its clients read.
        body["prompt_cache_hit_tokens"] = usage.cache_read_tokens
        body["prompt_cache_miss_tokens"] = usage.input_tokens - usage.cache_read_tokens
    if usage.reasoning_tokens is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def _completion_id() -> str:
    return f"chatcmpl-{unique_hex()}"


def reply_body(reply: Reply, request: ChatRequest) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text or not reply.tool_calls else None,
    }
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    reason = reply.finish.reason if reply.finish else "stop"
    body: dict[str, Any] = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": reply.logprobs} if reply.logprobs is not None else None,
                "finish_reason": _FINISH_OUT.get(reason, reason),
            }
        ],
    }
    if reply.usage is not None:
        body["usage"] = usage_body(reply.usage)
    return orjson.dumps(body)


class StreamEncoder:
    """The SSE frames of a reply whose ``Start`` was already received."""

    __slots__ = ("_head", "_include_usage", "_text_head")

    # The frame nearly every event is, around its text: one dumps of a str per delta.
    _TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, start: Start, request: ChatRequest) -> None:
        self._include_usage = request.include_usage
        self._head = (
            b'data: {"id":' + orjson.dumps(_completion_id()) + b',"object":"chat.completion.chunk",'
            b'"created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + orjson.dumps(start.model)
        )
        self._text_head = self._head + b',"choices":[{"index":0,"delta":{"content":'

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs is not None else None,
            "finish_reason": finish,
        }
        return self._head + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

    async def begin(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            if event.logprobs is None:
                return self._text_head + orjson.dumps(event.text) + self._TEXT_TAIL
            return self._chunk({"content": event.text}, logprobs=event.logprobs)
        if isinstance(event, ReasoningDelta):
            # A bare signature means nothing to OpenAI clients.
            return self._chunk({"reasoning_content": event.text}) if event.text else b""
        if isinstance(event, ToolCallStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ToolCallDelta):
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, Finish):
            return self._chunk({}, _FINISH_OUT.get(event.reason, event.reason))
        if isinstance(event, Heartbeat):
            return b": keep-alive\n\n"
        if isinstance(event, Usage) and self._include_usage:
            return (
                self._head + b',"choices":[],"usage":' + orjson.dumps(usage_body(event)) + b"}\n\n"
            )
        return b""

    async def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def fail(self, error: GatewayError) -> bytes:
        # Headers are gone; the protocol's way to fail now is an error payload.
        return b"data: " + error_body(error) + b"\n\n"


stream_encoder = StreamEncoder


# ---- errors and models ---------------------------------------------------------

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "not_found": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "rate_limit": "rate_limit_error",
    "upstream": "upstream_error",
    "timeout": "timeout_error",
    "overloaded": "server_overloaded",
    "unavailable": "service_unavailable",
    "internal": "server_error",
}


def error_status(error: GatewayError) -> int:
    return error.status


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": _ERROR_TYPES[error.kind],
                "param": error.param,
                "code": error.code,
            }
        }
    )


def model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "model",
        "model": entry.id,
        "created": entry.created,
        "owned_by": entry.owned_by,
        "name": entry.name,
        "description": entry.description,
        "support": entry.support,
        "tip": entry.tip,
        # The reference catalog's shape for chat models; an embedding model says so.
        **({"kind": entry.kind, "dimensions": entry.dimensions} if entry.kind != "chat" else {}),
    }


def models_body(catalog: Catalog) -> bytes:
    info = catalog.info
    return orjson.dumps(
        {
            "object": "list",
            "data": [model_object(entry) for entry in catalog.listed],
            "version": info.version,
            "provider": info.provider,
            "name": info.name,
            "default_locale": info.default_locale,
            "status": True,
            "time": int(catalog.started.strftime("%Y%m%d")),
        }
    )


def reply_headers(request: ChatRequest) -> dict[str, str]:
    return {}


# ---- routes --------------------------------------------------------------------

ERRORS = ErrorShape(error_status, error_body)


async def _model(services: Services, request: Request) -> Answer:
    async def body() -> bytes:
        model_id = request.path_params["model_id"]
        entry = (await visible_catalog(services, request)).listed_entry(model_id)
        if entry is None:
            raise GatewayError(
                "not_found",
                f"The model {model_id!r} does not exist",
                param="model",
                code="model_not_found",
            )
        return orjson.dumps(model_object(entry))

    return await json_answer(request, ERRORS, body)


ROUTES = (
    Route("POST", "/v1/chat/completions", CHAT),
    # Anthropic's and Google's SDKs ask for these paths too: their frontends claim theirs.
    Route("GET", "/v1/models", model_list(models_body, ERRORS)),
    Route("GET", "/v1/models/{model_id:path}", _model),
)
