"""Upstreams that speak OpenAI Chat Completions: OpenAI, DeepSeek, vLLM, Ollama, Qwen, Doubao…"""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncGenerator
from typing import Any, Literal
from urllib.parse import urlsplit

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
from lmgate.providers import embeddings, lenient_json, schemas
from lmgate.providers.base import (
    Target,
    apply_overrides,
    count,
    fold_system_turns,
    session_cache_key,
)
from lmgate.providers.client import Response
from lmgate.providers.http import HttpProvider, HttpProviderConfig, stream_event, unfinished

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "insufficient_system_resource": "length",  # DeepSeek: cut short by the server
    "normal": "stop",  # LM v2
}

# Canonical request fields sent under the same name when set.
_PLAIN_FIELDS = (
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "response_format",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "user",
    "prompt_cache_key",
)


class OpenAICompatConfig(HttpProviderConfig):
    # Ask for usage in streams even when the client did not, so usage is always real.
    stream_usage: bool = True
    # Send earlier turns' reasoning back as reasoning_content, and switch thinking with
    # DeepSeek's ``thinking`` field. DeepSeek's thinking models refuse a conversation
    # whose tool-calling turns lost their reasoning. auto: when the base URL's host or
    # the upstream model name says deepseek.
    send_reasoning: Literal["auto", "always", "never"] = "auto"
    # A prompt_cache_key made from the request's session when the client sent none, so
    # that the upstream routes a session's turns to one cache. auto: for OpenAI's own
    # hosts (others may refuse a field they do not know).
    session_cache_key: Literal["auto", "always", "never"] = "auto"
    # System turns inside the conversation: where they stand, or folded into the
    # next user turn (for servers whose chat template takes one system message, first).
    system_turns: Literal["keep", "fold"] = "keep"
    # Tool parameter schemas as they came, or rewritten to the subset Gemini takes (for
    # OpenAI-compatible endpoints in front of Gemini models, which refuse the rest).
    tool_schema: Literal["as_is", "gemini"] = "as_is"


class OpenAICompatProvider(HttpProvider):
    config_class = OpenAICompatConfig
    config: OpenAICompatConfig

    def chat_url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        body = self.build_body(request, target)
        response, deadline = await self.send(body)
        try:  # the connection goes back to its pool, or is closed, on every path
            if not body["stream"] or response.content_type == "application/json":
                # Some servers answer a stream request with one JSON reply; take it as one.
                raw = await self.read_body(response, deadline)
                for event in self.parse_reply(raw, target):
                    yield event
                return
            if response.content_type not in ("text/event-stream", "text/plain"):
                raise GatewayError(
                    "upstream",
                    f"upstream {self.name} sent {response.content_type} instead of an event stream",
                    retryable=True,
                )
            yield Start(target.model)
            parser = _StreamParser(self.name)
            async for event in self.stream_events(
                response, deadline, parser.feed, lambda: parser.done
            ):
                yield event
            for event in parser.end():
                yield event
        finally:
            response.discard()

    async def send(self, body: dict[str, Any]) -> tuple[Response, float]:
        return await self.post(self.chat_url(), body)

    def embeddings_url(self, model: str) -> str:
        return self.config.base_url.rstrip("/") + "/embeddings"

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        body = embeddings.openai_body(items, request, target)
        data = await self.post_json(self.embeddings_url(target.model), body)
        return embeddings.openai_vectors(data, self.name)

    def takes_reasoning_back(self, target: Target) -> bool:
        return self.sends_reasoning(target)

    def sends_reasoning(self, target: Target) -> bool:
        if self.config.send_reasoning != "auto":
            return self.config.send_reasoning == "always"
        return self._deepseek_host or "deepseek" in target.model.lower()

    @functools.cached_property
    def _deepseek_host(self) -> bool:
        return "deepseek" in (urlsplit(self.config.base_url).hostname or "")

    def messages_out(self, request: ChatRequest, target: Target) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if request.system:
            # One system message: some chat templates accept no more than one.
            text = "\n\n".join(part.text for part in request.system)
            messages.append({"role": "system", "content": text})
        conversation = request.messages
        if self.config.system_turns == "fold":
            conversation = fold_system_turns(conversation)
        reasoning = self.sends_reasoning(target)
        for message in conversation:
            messages.extend(_message_out(message, reasoning))
        return messages

    @functools.cached_property
    def _session_cache_key(self) -> bool:
        setting = self.config.session_cache_key
        host = urlsplit(self.config.base_url).hostname or ""
        return setting == "always" or (
            setting == "auto" and (host == "api.openai.com" or host.endswith(".openai.azure.com"))
        )

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": self.messages_out(request, target),
        }
        for name in _PLAIN_FIELDS:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.prompt_cache_key is None and request.session and self._session_cache_key:
            body["prompt_cache_key"] = session_cache_key(request.session)
        if target.thinking:
            effort = request.reasoning_effort or effort_of(request.thinking_budget)
            if effort and request.thinking is not False:
                body["reasoning_effort"] = effort
            if request.thinking is not None and self.sends_reasoning(target):
                body["thinking"] = {"type": "enabled" if request.thinking else "disabled"}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": schemas.for_gemini(tool.parameters)
                        if self.config.tool_schema == "gemini"
                        else tool.parameters or {"type": "object", "properties": {}},
                    },
                }
                for tool in request.tools
            ]
        if isinstance(request.tool_choice, dict):
            body["tool_choice"] = {"type": "function", "function": request.tool_choice}
        elif request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        body["stream"] = request.stream
        if request.stream and (request.include_usage or self.config.stream_usage):
            body["stream_options"] = {"include_usage": True}
        return apply_overrides(body, request, target, "openai")

    def parse_reply(self, raw: bytes, target: Target) -> list[Event]:
        try:
            return self._reply_events(lenient_json.loads(raw), target)
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError):
            raise GatewayError(
                "upstream", f"upstream {self.name} sent a reply that is not a chat completion"
            ) from None

    def _reply_events(self, data: Any, target: Target) -> list[Event]:
        choice = data["choices"][0]
        message = choice["message"]
        events: list[Event] = [Start(data.get("model") or target.model)]
        if message.get("reasoning_content"):
            events.append(ReasoningDelta(_text(message["reasoning_content"])))
        logprobs = (choice.get("logprobs") or {}).get("content")
        if message.get("content") or logprobs:
            events.append(TextDelta(_text(message.get("content") or ""), logprobs))
        for index, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            name, call_id = _text(function.get("name") or ""), _text(call.get("id") or "")
            events.append(ToolCallStart(index, call_id, name))
            events.append(ToolCallDelta(index, _text(function.get("arguments") or "")))
        # A null finish_reason (the LM v2 reference does this) means a complete reply.
        reason = choice.get("finish_reason") or data.get("finish_reason") or "stop"
        events.append(Finish(_FINISH.get(reason, "stop")))
        if isinstance(data.get("usage"), dict):
            events.append(_usage(data["usage"]))
        return events


class _StreamParser:
    """Turns ``chat.completion.chunk`` payloads into events. Usage is held back and
    emitted once at the end: some servers repeat it on every chunk."""

    __slots__ = ("_calls", "_finished", "_provider", "_usage", "done")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._usage: Usage | None = None
        self._finished = False
        self._calls: dict[int, bool] = {}
        self.done = False  # saw ``[DONE]``: the stream is complete

    def feed(self, payload: bytes) -> list[Event]:
        if payload == b"[DONE]":
            self.done = True
            return []
        return stream_event(self._provider, payload, self._events)

    def _events(self, data: dict[str, Any]) -> list[Event]:
        if data.get("error"):
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise GatewayError("upstream", f"upstream {self._provider}: {message}")
        if isinstance(data.get("usage"), dict):
            self._usage = _usage(data["usage"])
        events: list[Event] = []
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events.append(ReasoningDelta(_text(delta["reasoning_content"])))
            content = delta.get("content")
            logprobs = (choice.get("logprobs") or {}).get("content")
            if content or logprobs:
                events.append(TextDelta(_text(content or ""), logprobs))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                index = call.get("index", position)
                function = call.get("function") or {}
                if index not in self._calls:
                    self._calls[index] = True
                    events.append(
                        ToolCallStart(
                            index, _text(call.get("id") or ""), _text(function.get("name") or "")
                        )
                    )
                if function.get("arguments"):
                    events.append(ToolCallDelta(index, _text(function["arguments"])))
            # Some servers put finish_reason beside "choices" instead of inside.
            reason = choice.get("finish_reason") or data.get("finish_reason")
            if reason and not self._finished:
                self._finished = True
                events.append(Finish(_FINISH.get(reason, "stop")))
        return events

    def end(self) -> list[Event]:
        """After the stream, which ended with ``[DONE]`` or a dropped connection."""
        events: list[Event] = []
        if not self._finished:
            if not self.done:
                raise unfinished(self._provider)
            events.append(Finish("stop"))  # [DONE] with no finish_reason: a complete reply
        if self._usage:
            events.append(self._usage)
        return events


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("text is not a string")  # a reply of the wrong shape
    return value


def _usage(data: dict[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details") or {}
    cached = data.get("prompt_cache_hit_tokens", details.get("cached_tokens"))
    reasoning = (data.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return Usage(
        count(data.get("prompt_tokens")) or 0,
        count(data.get("completion_tokens")) or 0,
        count(cached),
        None,
        count(reasoning),
    )


def effort_of(budget: int | None) -> str | None:
    """A thinking budget in tokens as a reasoning effort (the reverse of Anthropic's)."""
    if budget is None:
        return None
    return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"


def _message_out(message: Message, reasoning: bool = False) -> list[dict[str, Any]]:
    """One canonical message as OpenAI messages (tool results become one each);
    ``reasoning``: assistant turns carry their reasoning as ``reasoning_content``."""
    if message.role == "tool":
        return [
            {"role": "tool", "tool_call_id": part.call_id, "content": _text_of(part.content)}
            for part in message.parts
            if isinstance(part, ToolResultPart)
        ]
    out: dict[str, Any] = {"role": message.role}
    if message.name:
        out["name"] = message.name
    if message.role == "assistant":
        text = "".join(part.text for part in message.parts if isinstance(part, TextPart))
        calls = [tool_call_out(part) for part in message.parts if isinstance(part, ToolCallPart)]
        out["content"] = text if text or not calls else None
        if reasoning:
            thought = "".join(p.text for p in message.parts if isinstance(p, ReasoningPart))
            if thought:
                out["reasoning_content"] = thought
        if calls:
            out["tool_calls"] = calls
        return [out]
    out["content"] = content_out(
        [part for part in message.parts if isinstance(part, TextPart | ImagePart)]
    )
    return [out]


def tool_call_out(part: ToolCallPart) -> dict[str, Any]:
    return {
        "id": part.id,
        "type": "function",
        "function": {"name": part.name, "arguments": part.arguments},
    }


def content_out(parts: list[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    # Text-only content goes as a plain string: every OpenAI-compatible server takes it.
    if all(isinstance(part, TextPart) for part in parts):
        return "\n".join(part.text for part in parts if isinstance(part, TextPart))
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        else:
            image: dict[str, Any] = {"url": image_url(part)}
            if part.detail:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
    return out


def image_url(part: ImagePart) -> str:
    if part.data is not None:
        encoded = base64.b64encode(part.data).decode()
        return f"data:{part.media_type or 'image/png'};base64,{encoded}"
    return part.url or ""


def _text_of(parts: list[TextPart | ImagePart]) -> str:
    return "\n".join(part.text for part in parts if isinstance(part, TextPart))
