"""Upstreams that speak Google's Gemini API (``generateContent``), with an API key.

Thinking comes back as ``thought`` parts (canonical reasoning). A ``thoughtSignature``
(on a function call or text part) must be sent back with that part on later turns
for multi-turn function calling with thinking; it travels as a reasoning signature
of the ``gemini`` dialect, which other upstreams never get. Tool schemas are
rewritten to what Gemini takes (``schemas.for_gemini``), and function calls go back
without their ``id``, which Gemini refuses.
"""

from __future__ import annotations

import base64
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
    arguments_object,
)
from lmgate.errors import GatewayError
from lmgate.ids import unique_hex
from lmgate.providers import embeddings, schemas
from lmgate.providers.base import (
    Target,
    apply_overrides,
    count,
    fold_system_turns,
)
from lmgate.providers.http import HttpProvider, HttpProviderConfig, stream_event, unfinished

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_EFFORT_BUDGET = {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576}


class GeminiConfig(HttpProviderConfig):
    base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    # Gemini fetches no image URL given inline: the gateway fetches them.
    inline_image_urls: bool = True


class GeminiProvider(HttpProvider):
    config_class = GeminiConfig
    config: GeminiConfig

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.config.api_key} if self.config.api_key else {}

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        base = f"{self.config.base_url.rstrip('/')}/models/{target.model}"
        url = base + (":streamGenerateContent?alt=sse" if request.stream else ":generateContent")
        response, deadline = await self.post(url, self.build_body(request, target))
        try:  # the connection goes back to its pool, or is closed, on every path
            if not request.stream or response.content_type == "application/json":
                raw = await self.read_body(response, deadline)
                try:
                    reply = _Reply(target.model)
                    events = [Start(target.model), *reply.feed(orjson.loads(raw)), *reply.end()]
                except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError):
                    raise GatewayError(
                        "upstream", f"upstream {self.name} sent a reply that is not a response"
                    ) from None
                for event in events:
                    yield event
                return
            yield Start(target.model)
            parser = _Reply(target.model)

            def feed(data: bytes) -> list[Event]:
                return stream_event(self.name, data, parser.feed)

            async for event in self.stream_events(
                response, deadline, feed, lambda: parser.finished
            ):
                yield event
            if not parser.finished:
                raise unfinished(self.name)
            for event in parser.end():
                yield event
        finally:
            response.discard()

    def embed_batch(self, target: Target) -> int:
        return 100  # batchEmbedContents' limit

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        model = f"models/{target.model}"
        url = f"{self.config.base_url.rstrip('/')}/{model}:batchEmbedContents"
        data = await self.post_json(url, embeddings.gemini_body(items, request, model, self.name))
        return embeddings.gemini_vectors(data, self.name)

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        names: dict[str, str] = {}  # tool call id -> function name
        contents: list[dict[str, Any]] = []
        for message in fold_system_turns(request.messages):
            parts = _parts(message, names)
            if not parts:
                continue
            role = "model" if message.role == "assistant" else "user"
            if contents and contents[-1]["role"] == role:  # turns alternate
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": role, "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": p.text} for p in request.system]}
        config: dict[str, Any] = {}
        for key, value in (
            ("temperature", request.temperature),
            ("topP", request.top_p),
            ("topK", request.top_k),
            ("maxOutputTokens", request.max_tokens),
            ("stopSequences", request.stop),
            ("seed", request.seed),
            ("presencePenalty", request.presence_penalty),
            ("frequencyPenalty", request.frequency_penalty),
        ):
            if value is not None:
                config[key] = value
        schema = (request.response_format or {}).get("json_schema") or {}
        if (request.response_format or {}).get("type") in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
            if isinstance(schema.get("schema"), dict):
                config["responseJsonSchema"] = schema["schema"]
        if target.thinking and (request.thinking or request.reasoning_effort):
            budget = request.thinking_budget or _EFFORT_BUDGET.get(request.reasoning_effort or "")
            config["thinkingConfig"] = {"includeThoughts": True, "thinkingBudget": budget or -1}
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": tool.name,
                            **({"description": tool.description} if tool.description else {}),
                            "parameters": schemas.for_gemini(tool.parameters),
                        }
                        for tool in request.tools
                    ]
                }
            ]
            choice = request.tool_choice
            if isinstance(choice, dict):
                calling = {"mode": "ANY", "allowedFunctionNames": [choice["name"]]}
                body["toolConfig"] = {"functionCallingConfig": calling}
            elif isinstance(choice, str) and choice in _MODES:
                body["toolConfig"] = {"functionCallingConfig": {"mode": _MODES[choice]}}
        return apply_overrides(body, request, target, "gemini")


def _parts(message: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    signature: str | None = None  # Gemini's, waiting for the part it belongs to
    for part in message.parts:
        if isinstance(part, ReasoningPart):
            if part.signature is not None and part.signature.dialect == "gemini":
                signature = part.signature.value
            if part.text and message.role == "assistant":
                parts.append({"text": part.text, "thought": True})
            continue
        if isinstance(part, TextPart):
            item: dict[str, Any] = {"text": part.text}
        elif isinstance(part, ImagePart):
            if part.data is None:
                raise GatewayError(
                    "invalid_request", "Gemini takes images as bytes; this one is a URL"
                )
            data = base64.b64encode(part.data).decode()
            item = {"inlineData": {"mimeType": part.media_type or "image/png", "data": data}}
        elif isinstance(part, ToolCallPart):
            names[part.id] = part.name
            item = {"functionCall": {"name": part.name, "args": arguments_object(part.arguments)}}
        elif isinstance(part, ToolResultPart):
            text = "".join(p.text for p in part.content if isinstance(p, TextPart))
            try:
                value = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                value = text
            if not isinstance(value, dict):
                value = {"error" if part.is_error else "result": value}
            name = names.get(part.call_id, part.call_id)
            item = {"functionResponse": {"name": name, "response": value}}
        else:
            continue
        if signature is not None and "functionResponse" not in item:
            item["thoughtSignature"], signature = signature, None
        parts.append(item)
    return parts


class _Reply:
    """Gemini responses (a whole one, or a stream's chunks) to canonical events."""

    __slots__ = ("_calls", "_finish", "_model", "_usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._calls = 0
        self._finish: Finish | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, data: dict[str, Any]) -> list[Event]:
        if "error" in data:
            error = data["error"] or {}
            raise GatewayError("upstream", f"upstream: {error.get('message') or 'stream error'}")
        events: list[Event] = []
        self._usage = data.get("usageMetadata") or self._usage
        for candidate in (data.get("candidates") or [])[:1]:
            for part in (candidate.get("content") or {}).get("parts") or []:
                signature = part.get("thoughtSignature")
                if isinstance(signature, str) and signature:
                    events.append(ReasoningDelta("", Signature("gemini", signature)))
                if "functionCall" in part:
                    call = part["functionCall"] or {}
                    index, self._calls = self._calls, self._calls + 1
                    call_id = call.get("id") or f"call_{unique_hex()}"
                    events.append(ToolCallStart(index, call_id, call.get("name") or ""))
                    events.append(
                        ToolCallDelta(index, orjson.dumps(call.get("args") or {}).decode())
                    )
                elif isinstance(part.get("text"), str) and part["text"]:
                    kind = ReasoningDelta if part.get("thought") else TextDelta
                    events.append(kind(part["text"]))
            reason = candidate.get("finishReason")
            if reason and reason != "FINISH_REASON_UNSPECIFIED":
                finish = _FINISH.get(reason, "stop")
                self._finish = Finish("tool_calls" if self._calls and finish == "stop" else finish)
        return events

    @property
    def finished(self) -> bool:
        return self._finish is not None

    def end(self) -> list[Event]:
        usage = self._usage
        prompt = count(usage.get("promptTokenCount")) or 0
        thoughts = count(usage.get("thoughtsTokenCount")) or 0
        output = (count(usage.get("candidatesTokenCount")) or 0) + thoughts
        cached = count(usage.get("cachedContentTokenCount"))
        events: list[Event] = [self._finish or Finish("stop")]
        if usage:
            events.append(Usage(prompt, output, cached, None, thoughts or None))
        return events
