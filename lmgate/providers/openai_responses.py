"""Upstreams that speak the OpenAI Responses API (``type: openai_responses``): OpenAI's
newest models are served there, some only there. Requests go statelessly
(``store: false``); a reasoning model's ``encrypted_content`` comes back as the
canonical reasoning's signature (dialect ``openai-responses``), so the next turn
can hand it back, whatever client protocol carried it in between."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ReasoningPart,
    Signature,
    Start,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
)
from lmgate.errors import GatewayError
from lmgate.providers import lenient_json
from lmgate.providers.base import (
    Target,
    apply_overrides,
    count,
    session_cache_key,
)
from lmgate.providers.http import HttpProvider, HttpProviderConfig, stream_event, unfinished
from lmgate.providers.openai_compat import effort_of, image_url

_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}


class OpenAIResponsesConfig(HttpProviderConfig):
    pass


class OpenAIResponsesProvider(HttpProvider):
    config_class = OpenAIResponsesConfig
    config: OpenAIResponsesConfig

    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/responses"

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        body = build_body(request, target)
        response, deadline = await self.post(self.url(), body)
        try:  # the connection goes back to its pool, or is closed, on every path
            if not request.stream or response.content_type == "application/json":
                raw = await self.read_body(response, deadline)
                try:
                    events = _reply_events(lenient_json.loads(raw), target)
                except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError):
                    raise GatewayError(
                        "upstream", f"upstream {self.name} sent a reply that is not a response"
                    ) from None
                for event in events:
                    yield event
                return
            yield Start(target.model)
            parser = _StreamParser(self.name)
            async for event in self.stream_events(
                response, deadline, parser.feed, lambda: parser.done
            ):
                yield event
            if not parser.done:
                raise unfinished(self.name)
        finally:
            response.discard()


def build_body(request: ChatRequest, target: Target) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "input": [item for message in request.messages for item in _items(message)],
        "stream": request.stream,
        "store": False,  # stateless: the conversation travels in each request
    }
    if request.system:
        body["instructions"] = "\n\n".join(part.text for part in request.system)
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "prompt_cache_key"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.prompt_cache_key is None and request.session:
        body["prompt_cache_key"] = session_cache_key(request.session)
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    if target.thinking and request.thinking is not False:
        effort = request.reasoning_effort or effort_of(request.thinking_budget)
        body["reasoning"] = {"summary": "auto", **({"effort": effort} if effort else {})}
        body["include"] = ["reasoning.encrypted_content"]
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "parameters": tool.parameters or {"type": "object", "properties": {}},
            }
            for tool in request.tools
        ]
    if isinstance(request.tool_choice, dict):
        body["tool_choice"] = {"type": "function", "name": request.tool_choice["name"]}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    form = request.response_format or {}
    if form.get("type") == "json_schema":
        spec = form.get("json_schema") or {}
        body["text"] = {"format": {"type": "json_schema", **spec}}
    elif form.get("type") == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    return apply_overrides(body, request, target, "responses")


def _items(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": part.call_id,
                "output": "\n".join(p.text for p in part.content if isinstance(p, TextPart)),
            }
            for part in message.parts
            if isinstance(part, ToolResultPart)
        ]
    if message.role == "system":
        text = "\n".join(part.text for part in message.parts if isinstance(part, TextPart))
        return [{"role": "developer", "content": text}]
    if message.role == "user":
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append({"type": "input_text", "text": part.text})
            elif isinstance(part, ImagePart):
                image = {"type": "input_image", "image_url": image_url(part)}
                content.append({**image, "detail": part.detail or "auto"})
        return [{"role": "user", "content": content}]
    items: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ReasoningPart):
            signature = part.signature
            if signature is not None and signature.dialect == "openai-responses":  # its own
                summary = [{"type": "summary_text", "text": part.text}] if part.text else []
                items.append(
                    {
                        "type": "reasoning",
                        "summary": summary,
                        "encrypted_content": signature.value,
                    }
                )
        elif isinstance(part, TextPart):
            items.append({"role": "assistant", "content": part.text})
        elif isinstance(part, ToolCallPart):
            items.append(
                {
                    "type": "function_call",
                    "call_id": part.id,
                    "name": part.name,
                    "arguments": part.arguments,
                }
            )
    return items


def _reply_events(data: Any, target: Target) -> list[Event]:
    events: list[Event] = [Start(data.get("model") or target.model)]
    calls = 0
    for item in data.get("output") or ():
        kind = item.get("type")
        if kind == "reasoning":
            text = "".join(_text(p.get("text")) for p in item.get("summary") or ())
            events.append(ReasoningDelta(text, _signature(item)))
        elif kind == "message":
            text = "".join(
                _text(p.get("text"))
                for p in item.get("content") or ()
                if p.get("type") == "output_text"
            )
            if text:
                events.append(TextDelta(text))
        elif kind == "function_call":
            events.append(ToolCallStart(calls, _text(item.get("call_id")), _text(item.get("name"))))
            events.append(ToolCallDelta(calls, _text(item.get("arguments") or "")))
            calls += 1
    events.append(_finish(data, calls > 0))
    if isinstance(data.get("usage"), dict):
        events.append(_usage(data["usage"]))
    return events


class _StreamParser:
    """Responses stream events in, canonical events out."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._calls: dict[str, int] = {}  # function_call item id -> canonical index
        self.done = False

    def feed(self, payload: bytes) -> list[Event]:
        return stream_event(self._provider, payload, self._events)

    def _events(self, data: dict[str, Any]) -> list[Event]:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            return [TextDelta(_text(data["delta"]))]
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return [ReasoningDelta(_text(data["delta"]))]
        if kind == "response.output_item.added":
            item = data["item"]
            if item.get("type") == "function_call":
                index = self._calls[item.get("id") or item["call_id"]] = len(self._calls)
                return [ToolCallStart(index, _text(item["call_id"]), _text(item["name"]))]
            return []
        if kind == "response.function_call_arguments.delta":
            known = self._calls.get(data.get("item_id") or "")
            return [] if known is None else [ToolCallDelta(known, _text(data["delta"]))]
        if kind == "response.output_item.done":
            item = data["item"]
            signature = _signature(item) if item.get("type") == "reasoning" else None
            return [ReasoningDelta("", signature)] if signature else []
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = data["response"]
            events: list[Event] = [_finish(response, bool(self._calls))]
            if isinstance(response.get("usage"), dict):
                events.append(_usage(response["usage"]))
            return events
        if kind in ("response.failed", "error"):
            error = (data.get("response") or {}).get("error") or data
            message = error.get("message") if isinstance(error, dict) else None
            raise GatewayError(
                "upstream", f"upstream {self._provider}: {message or 'the response failed'}"
            )
        return []


def _finish(response: dict[str, Any], called: bool) -> Finish:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return Finish(_INCOMPLETE.get(reason or "", "length"))
    return Finish("tool_calls" if called else "stop")


def _signature(item: dict[str, Any]) -> Signature | None:
    sealed = item.get("encrypted_content")
    return Signature("openai-responses", sealed) if isinstance(sealed, str) and sealed else None


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(
        count(data.get("input_tokens")) or 0,
        count(data.get("output_tokens")) or 0,
        count((data.get("input_tokens_details") or {}).get("cached_tokens")),
        None,
        count((data.get("output_tokens_details") or {}).get("reasoning_tokens")),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("text is not a string")
    return value
