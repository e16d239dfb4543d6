"""AWS Bedrock: the Converse API, which serves every model family on Bedrock (Claude,
Llama, Mistral, Nova, DeepSeek…) in one shape, streamed as AWS event-stream frames.

Requests are signed with SigV4 by botocore, with credentials from the standard AWS
chain (environment, shared config and credentials files and their profiles, web
identity, container and instance metadata) or given in the config; or they carry a
Bedrock API key as a bearer token. botocore is imported only when a config has a
Bedrock provider.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.session import Session
from pydantic import model_validator

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
from lmgate.errors import ErrorKind, GatewayError
from lmgate.media.check import decode_data_url
from lmgate.providers import embeddings
from lmgate.providers.anthropic import AnthropicConfig, AnthropicProvider, MessagesStreamParser
from lmgate.providers.base import Target, apply_overrides, count, fold_system_turns
from lmgate.providers.eventstream import EventStreamDecoder
from lmgate.providers.http import HttpProvider, HttpProviderConfig, stream_event, unfinished

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "stop_sequence": "stop_sequence",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Errors inside a stream, by the frame's :exception-type.
_STREAM_ERRORS: dict[str, tuple[ErrorKind, bool]] = {
    "throttlingException": ("rate_limit", True),
    "serviceUnavailableException": ("overloaded", True),
    "internalServerException": ("upstream", True),
    "modelStreamErrorException": ("upstream", False),
    "validationException": ("invalid_request", False),
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_CACHE_POINT = {"cachePoint": {"type": "default"}}
_INVOKE_VERSION = "bedrock-2023-05-31"  # InvokeModel's anthropic_version
_EMPTY = "(no output)"
# Credentials are refreshed (in a thread: it may call a metadata service) this long
# before they expire.
_REFRESH_MARGIN = 300.0


class BedrockConfig(HttpProviderConfig):
    base_url: str = ""  # default: https://bedrock-runtime.{region}.amazonaws.com
    region: str | None = None  # default: AWS_REGION, AWS_DEFAULT_REGION, the profile's
    profile: str | None = None  # a profile of the shared AWS config files
    access_key_id: str | None = None  # else the AWS credential chain
    secret_access_key: str | None = None
    session_token: str | None = None
    # api_key: a Bedrock API key, sent as a bearer token instead of signing
    # (default: AWS_BEARER_TOKEN_BEDROCK).
    inline_image_urls: bool = True  # Converse takes image bytes, not URLs
    default_max_tokens: int | None = None  # sent when a request gives none
    # anthropic_beta for Claude models. Clients' own betas are not passed on: Bedrock
    # refuses the ones it does not know (Claude Code sends several).
    beta: list[str] = []
    # Claude models by Converse, or by InvokeModel with Anthropic's own body (for what
    # Converse does not carry: an Anthropic client's own fields reach the model as sent).
    anthropic_api: Literal["converse", "invoke"] = "converse"

    @model_validator(mode="after")
    def _locate(self) -> BedrockConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        if self.region is None:
            self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if self.region is None and not self.base_url:
            self.region = Session(profile=self.profile).get_config_variable("region")
        if not self.region:
            raise ValueError("region: set it here, or in AWS_REGION or the AWS profile")
        if self.api_key is None:
            self.api_key = os.environ.get("AWS_BEARER_TOKEN_BEDROCK") or None
        if not self.base_url:
            self.base_url = f"https://bedrock-runtime.{self.region}.amazonaws.com"
        return self


class BedrockProvider(HttpProvider):
    config_class = BedrockConfig
    config: BedrockConfig
    signs_requests: ClassVar[bool] = True

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._credentials: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._resolving: asyncio.Lock | None = None
        self._hosts: dict[str, str] = {}  # by URL
        self._messages: AnthropicProvider | None = None  # Anthropic's body, for invoke
        if self.config.anthropic_api == "invoke":
            own = AnthropicConfig(
                type="anthropic",
                base_url=self.config.base_url,
                default_max_tokens=self.config.default_max_tokens or 4096,
            )
            self._messages = AnthropicProvider(name, own)
        if self.config.access_key_id and self.config.secret_access_key:
            self._credentials = Credentials(
                self.config.access_key_id,
                self.config.secret_access_key,
                self.config.session_token,
            )

    def secrets(self) -> tuple[str, ...]:
        held = self._frozen
        extra = (held.secret_key, held.token) if held is not None else ()
        own = (self.config.secret_access_key, self.config.session_token)
        return (*self._secrets, *(value for value in (*own, *extra) if value))

    async def sign(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        """The headers that authenticate this request: a bearer key, or SigV4 over the
        URL, the body and the Content-Type."""
        if self.config.api_key:
            return {"Authorization": f"Bearer {self.config.api_key}"}
        credentials = await self._current_credentials()
        # The Host the pool sends, given: botocore would parse the URL for it twice.
        host = self._hosts.get(url)
        if host is None:
            parts = urlsplit(url)
            default = parts.port is None or parts.port == (443 if parts.scheme == "https" else 80)
            name = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
            host = self._hosts[url] = f"{name}" if default else f"{name}:{parts.port}"
        fields = {"Content-Type": "application/json", "Host": host}
        request = AWSRequest("POST", url, data=data, headers=fields)
        SigV4Auth(credentials, "bedrock", self.config.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}

    async def _current_credentials(self) -> ReadOnlyCredentials:
        if self._credentials is None:
            if self._resolving is None:
                self._resolving = asyncio.Lock()
            async with self._resolving:
                if self._credentials is None:
                    session = Session(profile=self.config.profile)
                    self._credentials = await asyncio.to_thread(session.get_credentials)
            if self._credentials is None:
                raise GatewayError(
                    "upstream",
                    f"upstream {self.name}: no AWS credentials found (environment, shared "
                    "files, profile, web identity, container or instance metadata)",
                )
        credentials = self._credentials
        refresh = getattr(credentials, "refresh_needed", None)
        if self._frozen is None or (refresh is not None and refresh(_REFRESH_MARGIN)):
            # Refreshing may ask a metadata service or STS: never on the event loop.
            self._frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        return self._frozen

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        if self._messages is not None and _is_claude(target.model):
            async for event in self._invoke(self._messages, request, target):
                yield event
            return
        action = "converse-stream" if request.stream else "converse"
        url = f"{self.config.base_url.rstrip('/')}/model/{quote(target.model, safe='')}/{action}"
        response, deadline = await self.post(url, self.build_body(request, target))
        try:
            if not request.stream or response.content_type == "application/json":
                for event in self.parse_reply(await self.read_body(response, deadline), target):
                    yield event
                return
            yield Start(target.model)
            parser = _StreamParser(self.name)
            decoder = EventStreamDecoder()
            async for event in self.stream_events(
                response, deadline, parser.feed, lambda: parser.stopped, decoder
            ):
                yield event
            for event in parser.end():
                yield event
        finally:
            response.discard()

    def embed_batch(self, target: Target) -> int:
        # Cohere takes 96 texts a request; Titan one (sent side by side, 16 at a time).
        return 96 if embeddings.bedrock_family(target.model) == "cohere" else 16

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        url = f"{self.config.base_url.rstrip('/')}/model/{quote(target.model, safe='')}/invoke"
        if embeddings.bedrock_family(target.model) == "cohere":
            body = embeddings.cohere_body(items, request, self.name)
            return embeddings.cohere_vectors(await self.post_json(url, body), self.name)
        texts = embeddings.texts_only(items, self.name)
        replies = await asyncio.gather(
            *(self.post_json(url, embeddings.titan_body(text, request)) for text in texts)
        )
        vectors: list[list[float]] = []
        used: int | None = 0
        for reply in replies:
            found, tokens_used = embeddings.titan_vector(reply, self.name)
            vectors += found
            used = None if used is None or tokens_used is None else used + tokens_used
        return vectors, used

    async def _invoke(
        self, messages: AnthropicProvider, request: ChatRequest, target: Target
    ) -> AsyncGenerator[Event, None]:
        """InvokeModel with Anthropic's own body; streams carry Anthropic's events, each
        base64 in a ``chunk`` frame."""
        action = "invoke-with-response-stream" if request.stream else "invoke"
        url = f"{self.config.base_url.rstrip('/')}/model/{quote(target.model, safe='')}/{action}"
        body = messages.build_body(request, target)
        del body["model"], body["stream"]  # the URL says both
        body["anthropic_version"] = _INVOKE_VERSION
        if self.config.beta:
            body["anthropic_beta"] = list(self.config.beta)
        response, deadline = await self.post(url, body)
        try:
            if not request.stream or response.content_type == "application/json":
                for event in messages.parse_reply(await self.read_body(response, deadline), target):
                    yield event
                return
            yield Start(target.model)
            parser = MessagesStreamParser(self.name)

            def feed(frame: tuple[str, bytes]) -> list[Event]:
                kind, payload = frame
                if kind.startswith("!"):
                    return _StreamParser(self.name).feed(frame)  # raises its error
                try:
                    inner = base64.b64decode(orjson.loads(payload)["bytes"])
                except (orjson.JSONDecodeError, LookupError, TypeError, ValueError):
                    raise GatewayError(
                        "upstream", f"upstream {self.name} sent a chunk that is not an event"
                    ) from None
                return parser.feed(inner)

            async for event in self.stream_events(
                response, deadline, feed, lambda: parser.stopped, EventStreamDecoder()
            ):
                yield event
            for event in parser.end():
                yield event
        finally:
            response.discard()

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        claude = _is_claude(target.model)
        messages: list[dict[str, Any]] = []
        for message in fold_system_turns(request.messages):
            blocks = _blocks(message, bool(request.tools))
            if not blocks:
                continue
            role = "assistant" if message.role == "assistant" else "user"
            if messages and messages[-1]["role"] == role:  # turns must alternate
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
        body: dict[str, Any] = {"messages": messages}
        if request.system:
            body["system"] = _texts(request.system)
        inference: dict[str, Any] = {}
        additional: dict[str, Any] = {}
        max_tokens = request.max_tokens or self.config.default_max_tokens
        effort = request.reasoning_effort
        thinking = bool(request.thinking or (request.thinking is None and effort))
        if thinking and claude:
            budget = max(1024, request.thinking_budget or _EFFORT_BUDGET.get(effort or "", 4096))
            additional["thinking"] = {"type": "enabled", "budget_tokens": budget}
            max_tokens = max(max_tokens or 0, budget + (max_tokens or 4096))
        else:  # sampling settings are refused together with thinking
            if request.temperature is not None:
                inference["temperature"] = request.temperature
            if request.top_p is not None:
                inference["topP"] = request.top_p
            if request.top_k is not None and claude:
                additional["top_k"] = request.top_k
        if max_tokens:
            inference["maxTokens"] = max_tokens
        if request.stop:
            inference["stopSequences"] = request.stop[:4]
        if inference:
            body["inferenceConfig"] = inference
        if self.config.beta and claude:
            additional["anthropic_beta"] = list(self.config.beta)
        if additional:
            body["additionalModelRequestFields"] = additional
        if request.tools:
            tools: list[dict[str, Any]] = []
            for tool in request.tools:
                spec: dict[str, Any] = {"name": tool.name}
                if tool.description:
                    spec["description"] = tool.description
                spec["inputSchema"] = {"json": tool.parameters or {"type": "object"}}
                tools.append({"toolSpec": spec})
                if tool.cache_control:
                    tools.append(_CACHE_POINT)
            config: dict[str, Any] = {"tools": tools}
            choice = request.tool_choice
            if isinstance(choice, dict):
                config["toolChoice"] = {"tool": {"name": choice["name"]}}
            elif choice == "required":
                config["toolChoice"] = {"any": {}}
            elif choice == "auto":
                config["toolChoice"] = {"auto": {}}
            # "none" has no Converse form: the tools stay (turns may hold their calls).
            body["toolConfig"] = config
        schema = (request.response_format or {}).get("json_schema") or {}
        if isinstance(schema.get("schema"), dict):
            definition = {"schema": orjson.dumps(schema["schema"]).decode()}
            definition["name"] = str(schema.get("name") or "response")
            body["outputConfig"] = {
                "textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}
            }
        return apply_overrides(body, request, target, "bedrock")

    def parse_reply(self, raw: bytes, target: Target) -> list[Event]:
        try:
            data = orjson.loads(raw)
            return _reply_events(data, target)
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, ValueError):
            raise GatewayError(
                "upstream", f"upstream {self.name} sent a reply that is not a Converse reply"
            ) from None


def _reply_events(data: dict[str, Any], target: Target) -> list[Event]:
    events: list[Event] = [Start(target.model)]
    tools = 0
    for block in data["output"]["message"]["content"]:
        if "text" in block:
            events.append(TextDelta(block["text"]))
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"].get("reasoningText") or {}
            events.append(ReasoningDelta(reasoning.get("text") or "", _signature(reasoning)))
        elif "toolUse" in block:
            use = block["toolUse"]
            events.append(ToolCallStart(tools, use.get("toolUseId") or "", use.get("name") or ""))
            events.append(ToolCallDelta(tools, orjson.dumps(use.get("input") or {}).decode()))
            tools += 1
    events.append(Finish(_FINISH.get(data.get("stopReason") or "end_turn", "stop")))
    events.append(_usage(data.get("usage") or {}))
    return events


class _StreamParser:
    """ConverseStream events to canonical events; usage comes last (``metadata``)."""

    __slots__ = ("_finished", "_provider", "_tools", "_usage", "stopped")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}
        self._finished = False
        self.stopped = False

    def feed(self, frame: tuple[str, bytes]) -> list[Event]:
        kind, payload = frame
        if kind.startswith("!"):
            message = _message(payload) or kind[1:]
            error_kind, retryable = _STREAM_ERRORS.get(kind[1:], ("upstream", False))
            raise GatewayError(
                error_kind, f"upstream {self._provider}: {message}", retryable=retryable
            )
        return stream_event(self._provider, payload, lambda data: self._events(kind, data))

    def _events(self, kind: str, data: dict[str, Any]) -> list[Event]:
        if kind == "contentBlockDelta":
            delta = data["delta"]
            if "text" in delta:
                return [TextDelta(delta["text"])]
            if "toolUse" in delta:
                index = self._tools.get(data.get("contentBlockIndex", -1))
                arguments = delta["toolUse"].get("input")
                return [ToolCallDelta(index, arguments)] if index is not None and arguments else []
            if "reasoningContent" in delta:
                reasoning = delta["reasoningContent"]
                if "text" in reasoning or "signature" in reasoning:
                    return [ReasoningDelta(reasoning.get("text") or "", _signature(reasoning))]
            return []
        if kind == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if use is None:
                return []
            index = self._tools[data.get("contentBlockIndex", -1)] = len(self._tools)
            return [ToolCallStart(index, use.get("toolUseId") or "", use.get("name") or "")]
        if kind == "messageStop":
            self._finished = True
            return [Finish(_FINISH.get(data.get("stopReason") or "end_turn", "stop"))]
        if kind == "metadata":
            self._usage = data.get("usage") or {}
            self.stopped = True
        return []

    def end(self) -> list[Event]:
        if not self._finished:
            raise unfinished(self._provider)
        return [_usage(self._usage)]


def _is_claude(model: str) -> bool:
    return "anthropic." in model or "claude" in model


def _usage(data: dict[str, Any]) -> Usage:
    read = count(data.get("cacheReadInputTokens")) or 0
    write = count(data.get("cacheWriteInputTokens")) or 0
    total = count((count(data.get("inputTokens")) or 0) + read + write) or 0
    return Usage(total, count(data.get("outputTokens")) or 0, read, write)


def _signature(reasoning: dict[str, Any]) -> Signature | None:
    value = reasoning.get("signature")
    return Signature("bedrock", value) if isinstance(value, str) and value else None


def _message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or "")
    return ""


def _texts(parts: list[TextPart]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if part.text:  # Converse refuses blank text
            blocks.append({"text": part.text})
        if part.cache_control:
            blocks.append(_CACHE_POINT)
    return blocks


def _image(part: ImagePart) -> dict[str, Any]:
    data, media_type = part.data, part.media_type
    if data is None and part.url and part.url.startswith("data:"):
        media_type, data = decode_data_url(part.url, part.where or "image")
    if data is None:
        raise GatewayError(
            "invalid_request", f"{part.where or 'image'}: Bedrock takes image bytes, not a URL"
        )
    image_format = _IMAGE_FORMATS.get(media_type or "image/png")
    if image_format is None:
        raise GatewayError(
            "invalid_request", f"{part.where or 'image'}: Bedrock takes png, jpeg, gif or webp"
        )
    source = {"bytes": base64.b64encode(data).decode()}
    return {"image": {"format": image_format, "source": source}}


def _blocks(message: Message, tools: bool) -> list[dict[str, Any]]:
    """A turn's Converse blocks. Without tools in the request, Converse refuses tool
    blocks (``toolConfig`` must be defined): earlier calls and results become text."""
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            blocks += _texts([part])
        elif isinstance(part, ImagePart):
            blocks.append(_image(part))
        elif not tools and isinstance(part, ToolCallPart | ToolResultPart):
            blocks.append({"text": _as_text(part)})
        elif isinstance(part, ToolCallPart):
            use = {
                "toolUseId": part.id,
                "name": part.name,
                "input": arguments_object(part.arguments),
            }
            blocks.append({"toolUse": use})
        elif isinstance(part, ToolResultPart):
            content = [
                {"text": inner.text} if isinstance(inner, TextPart) else _image(inner)
                for inner in part.content
                if not isinstance(inner, TextPart) or inner.text
            ]
            result: dict[str, Any] = {
                "toolUseId": part.call_id,
                "content": content or [{"text": _EMPTY}],  # Converse refuses blank text
            }
            if part.is_error:
                result["status"] = "error"
            blocks.append({"toolResult": result})
            if part.cache_control:
                blocks.append(_CACHE_POINT)
        elif (
            isinstance(part, ReasoningPart)
            and part.signature is not None
            and part.signature.dialect == "bedrock"  # only Bedrock's own goes back to it
        ):
            text = {"text": part.text, "signature": part.signature.value}
            blocks.append({"reasoningContent": {"reasoningText": text}})
    return blocks


def _as_text(part: ToolCallPart | ToolResultPart) -> str:
    if isinstance(part, ToolCallPart):
        return f"[called tool {part.name} ({part.id}) with {part.arguments}]"
    text = "".join(inner.text for inner in part.content if isinstance(inner, TextPart))
    return f"[result of tool call {part.call_id}: {text or _EMPTY}]"
