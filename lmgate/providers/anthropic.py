"""Upstreams that speak the Anthropic Messages API (Claude models)."""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from pydantic import Field

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    FinishReason,
    Heartbeat,
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
    arguments_object,
)
from lmgate.errors import ErrorKind, GatewayError
from lmgate.providers.base import (
    Target,
    apply_overrides,
    count,
    fold_system_turns,
)
from lmgate.providers.http import HttpProvider, HttpProviderConfig, stream_event, unfinished

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_MIN_BUDGET = 1024  # Anthropic's smallest thinking budget
# System turns inside messages reach Anthropic as they stand when an Anthropic client put
# them there, or the provider's own betas include this one (…-2026-04-07); other clients'
# are folded into the neighbouring user turn.
_MID_SYSTEM_BETA = "mid-conversation-system"
_ERROR_KINDS: dict[str, ErrorKind] = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limit",
    "invalid_request_error": "invalid_request",
    "request_too_large": "request_too_large",
}


class AnthropicConfig(HttpProviderConfig):
    base_url: str = "https://api.anthropic.com"
    version: str = "2023-06-01"  # the anthropic-version header
    beta: list[str] = []  # anthropic-beta features
    # Anthropic requires max_tokens; OpenAI clients often leave it out.
    default_max_tokens: int = Field(4096, gt=0)


class AnthropicProvider(HttpProvider):
    config_class = AnthropicConfig
    config: AnthropicConfig

    def auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.config.version}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def runs_server_tools(self, request: ChatRequest) -> bool:
        return request.extra_dialect == "anthropic"  # they are Anthropic's tools

    def betas(self, request: ChatRequest) -> list[str]:
        """The provider's own beta features, then the client's (dict: ordered, no repeats)."""
        return list(dict.fromkeys((*self.config.beta, *request.betas)))

    def messages_url(self, request: ChatRequest, target: Target) -> str:
        return self.config.base_url.rstrip("/") + "/v1/messages"

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        url = self.messages_url(request, target)
        betas = self.betas(request)
        headers = {"anthropic-beta": ",".join(betas)} if betas else None
        response, deadline = await self.post(url, self.build_body(request, target), headers)
        try:  # the connection goes back to its pool, or is closed, on every path
            if not request.stream or response.content_type == "application/json":
                for event in self.parse_reply(await self.read_body(response, deadline), target):
                    yield event
                return
            yield Start(target.model)
            parser = MessagesStreamParser(self.name)
            async for event in self.stream_events(
                response, deadline, parser.feed, lambda: parser.stopped
            ):
                yield event
            for event in parser.end():
                yield event
        finally:
            response.discard()

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        # An Anthropic client's own fields (thinking, output_config, context_management…)
        # reach the upstream as they came, in ``extra``; others are translated here.
        own = request.extra_dialect == "anthropic"
        system = [_text(part) for part in request.system]
        conversation = request.messages
        if not own and not any(beta.startswith(_MID_SYSTEM_BETA) for beta in self.config.beta):
            conversation = fold_system_turns(conversation)
        messages: list[dict[str, Any]] = []
        for message in conversation:
            blocks = _blocks(message)
            if not blocks:
                continue
            role = "user" if message.role == "tool" else message.role
            if messages and messages[-1]["role"] == role != "system":  # turns must alternate
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
        max_tokens = request.max_tokens or self.config.default_max_tokens
        body: dict[str, Any] = {"model": target.model, "messages": messages}
        if system:
            body["system"] = system
        if request.stop:
            body["stop_sequences"] = request.stop
        effort = request.reasoning_effort
        if own:
            thinking, budget = bool(request.thinking), request.thinking_budget
        else:  # OpenAI's reasoning_effort is a thinking budget here
            thinking = bool(
                request.thinking or (request.thinking is None and effort in _EFFORT_BUDGET)
            )
            asked = request.thinking_budget or _EFFORT_BUDGET.get(effort or "", 4096)
            budget = max(_MIN_BUDGET, asked) if thinking else None
            if budget:
                body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            schema = (request.response_format or {}).get("json_schema") or {}
            if isinstance(schema.get("schema"), dict):
                body["output_config"] = {
                    "format": {"type": "json_schema", "schema": schema["schema"]}
                }
        if budget and max_tokens <= budget:
            # The budget is part of max_tokens; keep the client's room for the answer.
            max_tokens += budget
        if not thinking:  # sampling settings are refused together with thinking
            if request.temperature is not None:
                body["temperature"] = min(request.temperature, 1.0)
            if request.top_p is not None:
                body["top_p"] = request.top_p
            if request.top_k is not None:
                body["top_k"] = request.top_k
        body["max_tokens"] = max_tokens
        if request.server_tools and own:  # as the client sent them: the upstream runs them
            body["tools"] = list(request.server_tools)
        if request.tools:
            body["tools"] = body.get("tools", []) + [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": tool.parameters or {"type": "object", "properties": {}},
                    **({"cache_control": tool.cache_control} if tool.cache_control else {}),
                    **(tool.extra if tool.extra and own else {}),
                }
                for tool in request.tools
            ]
        choice = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False and request.tools:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            body["tool_choice"] = choice
        if request.user:
            body["metadata"] = {"user_id": request.user}
        body["stream"] = request.stream
        return apply_overrides(body, request, target, "anthropic")

    def parse_reply(self, raw: bytes, target: Target) -> list[Event]:
        try:
            return self._reply_events(orjson.loads(raw), target)
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError):
            raise GatewayError(
                "upstream", f"upstream {self.name} sent a reply that is not a message"
            ) from None

    def _reply_events(self, data: Any, target: Target) -> list[Event]:
        content = data["content"]
        events: list[Event] = [Start(data.get("model") or target.model)]
        tools = 0
        for block in content:
            kind = block.get("type")
            if kind == "text":
                events.append(TextDelta(block.get("text") or ""))
            elif kind == "thinking":
                signature = _signature(block.get("signature"))
                events.append(ReasoningDelta(block.get("thinking") or "", signature))
            elif kind == "tool_use":
                events.append(ToolCallStart(tools, block.get("id") or "", block.get("name") or ""))
                events.append(ToolCallDelta(tools, orjson.dumps(block.get("input") or {}).decode()))
                tools += 1
        events.append(_finish(data))
        events.append(_usage(data.get("usage") or {}))
        return events


class MessagesStreamParser:
    """Anthropic stream events to canonical events; usage is folded and emitted last."""

    __slots__ = ("_finished", "_provider", "_tools", "_usage", "stopped")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # block index -> tool call index
        self._finished = False
        self.stopped = False

    def feed(self, payload: bytes) -> list[Event]:
        return stream_event(self._provider, payload, self._events)

    def _events(self, data: dict[str, Any]) -> list[Event]:
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                return [TextDelta(delta.get("text") or "")]
            if delta_kind == "thinking_delta":
                return [ReasoningDelta(delta.get("thinking") or "")]
            if delta_kind == "signature_delta":
                return [ReasoningDelta("", _signature(delta.get("signature")))]
            if delta_kind == "input_json_delta":
                index = self._tools.get(data.get("index", -1))
                if index is not None and delta.get("partial_json"):
                    return [ToolCallDelta(index, delta["partial_json"])]
            return []
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools[data.get("index", -1)] = len(self._tools)
                return [ToolCallStart(index, block.get("id") or "", block.get("name") or "")]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            return []
        if kind == "message_start":
            self._usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            # Counts here are running totals; absent or null ones keep the start's.
            usage = data.get("usage") or {}
            self._usage.update({key: value for key, value in usage.items() if value is not None})
            if not self._finished:
                self._finished = True
                return [_finish(data.get("delta") or {})]
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "ping":
            return [Heartbeat()]
        elif kind == "error":
            error = data.get("error") or {}
            message = f"upstream {self._provider}: {error.get('message') or 'stream error'}"
            raise GatewayError(_ERROR_KINDS.get(str(error.get("type")), "upstream"), message)
        return []

    def end(self) -> list[Event]:
        if not self._finished:
            raise unfinished(self._provider)
        return [_usage(self._usage)]


def _finish(data: dict[str, Any]) -> Finish:
    reason = _FINISH.get(data.get("stop_reason") or "end_turn", "stop")
    return Finish(reason, data.get("stop_sequence") if reason == "stop_sequence" else None)


def _usage(data: dict[str, Any]) -> Usage:
    read = count(data.get("cache_read_input_tokens")) or 0
    write = count(data.get("cache_creation_input_tokens")) or 0
    total = count((count(data.get("input_tokens")) or 0) + read + write) or 0
    return Usage(total, count(data.get("output_tokens")) or 0, read, write)


def _tool_choice(choice: str | dict[str, str] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        return {"type": "tool", "name": choice["name"]}
    return {"type": {"required": "any"}.get(choice, choice)}


def _text(part: TextPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache_control:
        block["cache_control"] = part.cache_control
    return block


def _image(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        data = base64.b64encode(part.data).decode()
        source = {"type": "base64", "media_type": part.media_type or "image/png", "data": data}
    elif part.url and part.url.startswith("data:") and ";base64," in part.url:
        header, data = part.url[5:].split(";base64,", 1)
        source = {"type": "base64", "media_type": header or "image/png", "data": data}
    else:
        source = {"type": "url", "url": part.url or ""}
    return {"type": "image", "source": source}


def _blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            if part.text:  # Anthropic refuses empty text blocks
                blocks.append(_text(part))
        elif isinstance(part, ImagePart):
            blocks.append(_image(part))
        elif isinstance(part, ToolCallPart):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": part.id,
                    "name": part.name,
                    "input": arguments_object(part.arguments),
                }
            )
        elif isinstance(part, ToolResultPart):
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": part.call_id,
                "content": [
                    _text(inner) if isinstance(inner, TextPart) else _image(inner)
                    for inner in part.content
                    if not isinstance(inner, TextPart) or inner.text
                ],
            }
            if part.is_error:
                result["is_error"] = True
            if part.cache_control:
                result["cache_control"] = part.cache_control
            blocks.append(result)
        elif isinstance(part, ReasoningPart):
            # Only Anthropic's own signed thinking may be handed back to it.
            if part.redacted:
                blocks.append({"type": "redacted_thinking", "data": part.redacted})
            elif part.signature is not None and part.signature.dialect == "anthropic":
                signature = part.signature.value
                blocks.append({"type": "thinking", "thinking": part.text, "signature": signature})
    return blocks


def _signature(value: Any) -> Signature | None:
    return Signature("anthropic", value) if isinstance(value, str) and value else None
