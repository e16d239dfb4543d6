"""Google's Gemini API (``generateContent``), client side: what Gemini CLI and the
google-genai SDKs speak. The model and whether to stream come from the path
(``models/{model}:generateContent`` / ``:streamGenerateContent``), so each request
gets a small ``GeminiCall`` bound to them; a stream is SSE with ``?alt=sse``, else
one JSON array written as it grows, as the API does."""

from __future__ import annotations

import base64
import binascii
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
from lmgate.errors import MAX_DEPTH, GatewayError, encodable, invalid
from lmgate.frontends import gemini_embed
from lmgate.frontends.base import (
    Answer,
    ErrorShape,
    Route,
    Services,
    error_reply,
    from_google,
    json_answer,
    request_id,
    visible_catalog,
)
from lmgate.frontends.validate import (
    optional_int,
    optional_list,
    optional_number,
    optional_object,
    parse_json_object,
)
from lmgate.ids import unique_hex
from lmgate.routing.catalog import Catalog, ModelEntry

PROTOCOL = "gemini"
ACTIONS = ("generateContent", "streamGenerateContent", "countTokens", *gemini_embed.ACTIONS)
_FINISH = {
    "stop": "STOP",
    "stop_sequence": "STOP",
    "tool_calls": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def split_target(target: str) -> tuple[str, str]:
    """``gemini-2.5-flash:generateContent`` → (model, action); 404 for another action."""
    model, _, action = target.rpartition(":")
    if not model or action not in ACTIONS:
        raise GatewayError(
            "not_found",
            f"no method {action or target!r}: expected models/MODEL:generateContent, "
            ":streamGenerateContent, :countTokens, :embedContent or :batchEmbedContents",
        )
    return model.removeprefix("models/"), action


# ---- request -------------------------------------------------------------------


def parse_request(body: bytes, model: str, stream: bool) -> ChatRequest:
    data = parse_json_object(body)
    if "generateContentRequest" in data:  # countTokens' other form
        data = optional_object(data, "generateContentRequest") or {}
    contents = optional_list(data, "contents")
    if not contents:
        raise invalid("contents: expected a non-empty array of {role, parts}", "contents")
    config = optional_object(data, "generationConfig") or {}
    candidates = optional_int(config, "candidateCount", 1)
    if candidates not in (None, 1):
        raise invalid("generationConfig.candidateCount: only 1 is supported", "candidateCount")
    stop = optional_list(config, "stopSequences")
    if stop is not None and not all(isinstance(item, str) for item in stop):
        raise invalid("generationConfig.stopSequences: expected strings", "stopSequences")
    thinking, budget, show = _thinking(optional_object(config, "thinkingConfig"))
    return ChatRequest(
        model=model,
        messages=_contents(contents),
        system=_system(data.get("systemInstruction")),
        stream=stream,
        include_usage=True,
        max_tokens=optional_int(config, "maxOutputTokens", 1),
        temperature=optional_number(config, "temperature", 0, 2),
        top_p=optional_number(config, "topP", 0, 1),
        top_k=optional_int(config, "topK", 1),
        stop=stop or None,
        presence_penalty=optional_number(config, "presencePenalty", -2, 2),
        frequency_penalty=optional_number(config, "frequencyPenalty", -2, 2),
        seed=optional_int(config, "seed"),
        response_format=_response_format(config),
        tools=_tools(optional_list(data, "tools")),
        tool_choice=_tool_choice(optional_object(data, "toolConfig")),
        thinking=thinking,
        thinking_budget=budget,
        reasoning_effort=_effort(optional_object(config, "thinkingConfig")),
        extra_dialect="gemini",
        reply_state=show,  # whether the client asked to see the thoughts
    )


def _system(raw: Any) -> list[TextPart]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [TextPart(raw)]
    if not isinstance(raw, dict):
        raise invalid("systemInstruction: expected {parts: [{text}]}", "systemInstruction")
    parts = optional_list(raw, "parts", "systemInstruction.parts") or []
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            where = f"systemInstruction.parts[{index}]"
            raise invalid(f"{where}: expected a text part", where)
        texts.append(TextPart(part["text"]))
    return texts


def _contents(contents: list[Any]) -> list[Message]:
    messages: list[Message] = []
    pending: dict[str, list[str]] = {}  # function name -> call ids not answered yet
    for number, content in enumerate(contents):
        where = f"contents[{number}]"
        if not isinstance(content, dict):
            raise invalid(f"{where}: expected {{role, parts}}", where)
        role = content.get("role", "user")
        if role not in ("user", "model", "function"):
            raise invalid(f"{where}.role: expected user or model, not {role!r}", f"{where}.role")
        raw_parts = content.get("parts")
        if not isinstance(raw_parts, list):
            raise invalid(f"{where}.parts: expected an array", f"{where}.parts")
        parts: list[Part] = []
        results: list[Part] = []
        for index, part in enumerate(raw_parts):
            spot = f"{where}.parts[{index}]"
            if not isinstance(part, dict):
                raise invalid(f"{spot}: expected an object", spot)
            signature = part.get("thoughtSignature")
            if role == "model" and isinstance(signature, str) and signature:
                # Kept for the part it came on (a Gemini upstream needs it back there).
                parts.append(ReasoningPart("", Signature("gemini", signature)))
            if "functionResponse" in part:
                results.append(_function_response(part["functionResponse"], spot, pending))
            elif "functionCall" in part:
                call = _function_call(part["functionCall"], spot)
                pending.setdefault(call.name, []).append(call.id)
                parts.append(call)
            else:
                parts.append(_part(part, spot, role == "model"))
        if results:
            messages.append(Message("tool", results))
        if parts:
            messages.append(Message("assistant" if role == "model" else "user", parts))
    return messages


def _part(part: dict[str, Any], where: str, from_model: bool) -> Part:
    if isinstance(part.get("text"), str):
        if part.get("thought") is True and from_model:
            return ReasoningPart(part["text"])
        return TextPart(part["text"])
    if isinstance(part.get("inlineData"), dict):
        blob = part["inlineData"]
        kind = _either(blob, "mimeType", "mime_type")
        if not isinstance(kind, str) or not kind.startswith("image/"):
            raise invalid(f"{where}.inlineData: only images are supported, not {kind!r}", where)
        try:
            data = base64.b64decode(str(blob.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{where}.inlineData.data: not valid base64", where) from None
        return ImagePart(data=data, media_type=kind, where=where)
    if isinstance(part.get("fileData"), dict):
        uri = _either(part["fileData"], "fileUri", "file_uri")
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise invalid(
                f"{where}.fileData.fileUri: only http(s) image URLs are fetched (not uploaded "
                "files); send the image as inlineData",
                where,
            )
        return ImagePart(url=uri, where=where)
    raise invalid(
        f"{where}: expected text, inlineData, fileData, functionCall or functionResponse", where
    )


def _either(data: dict[str, Any], camel: str, snake: str) -> Any:
    """A field by either name: the API takes both, and google-genai 3.6 sends an
    image's ``mime_type`` in snake case inside ``inlineData``."""
    value = data.get(camel)
    return data.get(snake) if value is None else value


def _function_call(raw: Any, where: str) -> ToolCallPart:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise invalid(f"{where}.functionCall: expected {{name, args}}", where)
    args = raw.get("args") or {}
    call_id = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else None
    arguments = encodable(args, f"{where}.functionCall.args").decode()
    return ToolCallPart(call_id or f"call_{unique_hex()}", raw["name"], arguments)


def _function_response(raw: Any, where: str, pending: dict[str, list[str]]) -> Part:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise invalid(f"{where}.functionResponse: expected {{name, response}}", where)
    name = raw["name"]
    call_id = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else None
    waiting = pending.get(name) or []
    if call_id is None or call_id not in waiting:
        # Gemini matches results to calls by name, in order; ids are optional.
        call_id = waiting[0] if waiting else call_id or f"call_{unique_hex()}"
    if call_id in waiting:
        waiting.remove(call_id)
    response = raw.get("response")
    text = encodable(response if response is not None else {}, f"{where}.response").decode()
    return ToolResultPart(call_id, [TextPart(text)])


def _tools(raw: list[Any] | None) -> list[Tool] | None:
    if not raw:
        return None
    tools = []
    for number, entry in enumerate(raw):
        where = f"tools[{number}]"
        if not isinstance(entry, dict):
            raise invalid(f"{where}: expected an object", where)
        declarations = entry.get("functionDeclarations")
        if declarations is None:
            kinds = ", ".join(sorted(entry)) or "none"
            raise invalid(f"{where}: only functionDeclarations are supported (got {kinds})", where)
        if not isinstance(declarations, list):
            raise invalid(f"{where}.functionDeclarations: expected an array", where)
        for index, declaration in enumerate(declarations):
            spot = f"{where}.functionDeclarations[{index}]"
            if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                raise invalid(f"{spot}: expected {{name, description, parameters}}", spot)
            schema = declaration.get("parametersJsonSchema")
            if schema is None and declaration.get("parameters") is not None:
                schema = _json_schema(declaration["parameters"])
            if schema is not None and not isinstance(schema, dict):
                raise invalid(f"{spot}.parameters: expected a schema object", spot)
            description = declaration.get("description")
            tools.append(
                Tool(
                    declaration["name"],
                    description if isinstance(description, str) else None,
                    schema or {"type": "object", "properties": {}},
                )
            )
    return tools or None


def _json_schema(schema: Any, depth: int = 0) -> Any:
    """Gemini's OpenAPI-style schema (``type: OBJECT``, ``nullable``) as JSON schema."""
    if depth > MAX_DEPTH:
        raise invalid(f"a schema is nested deeper than {MAX_DEPTH} levels", "parameters")
    if isinstance(schema, list):
        return [_json_schema(item, depth + 1) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: _json_schema(value, depth + 1) for key, value in schema.items() if key != "nullable"
    }
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
        if schema.get("nullable") is True:
            out["type"] = [kind.lower(), "null"]
    return out


def _tool_choice(config: dict[str, Any] | None) -> str | dict[str, str] | None:
    calling = optional_object(config or {}, "functionCallingConfig") or {}
    mode = calling.get("mode")
    if mode is None:
        return None
    if not isinstance(mode, str) or mode not in _MODES:
        where = "toolConfig.functionCallingConfig.mode"
        raise invalid(f"{where}: expected AUTO, ANY or NONE, not {mode!r}", where)
    names = calling.get("allowedFunctionNames")
    if mode == "ANY" and isinstance(names, list) and len(names) == 1:
        return {"name": str(names[0])}
    return _MODES[mode]


def _response_format(config: dict[str, Any]) -> dict[str, Any] | None:
    if config.get("responseMimeType") != "application/json":
        return None
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = _json_schema(config["responseSchema"])
    if not isinstance(schema, dict):
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def _thinking(config: dict[str, Any] | None) -> tuple[bool | None, int | None, bool]:
    """(thinking on, its budget, whether the client wants to see the thoughts)."""
    if config is None:
        return None, None, False
    budget = optional_int(config, "thinkingBudget", -1)
    show = config.get("includeThoughts") is True
    if budget == 0:
        return False, None, show
    return True, budget if budget and budget > 0 else None, show


def _effort(config: dict[str, Any] | None) -> str | None:
    level = (config or {}).get("thinkingLevel")
    return level.lower() if isinstance(level, str) and level.lower() in ("low", "high") else None


# ---- reply ---------------------------------------------------------------------


def _usage(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}
    thoughts = usage.reasoning_tokens or 0
    body = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": max(usage.output_tokens - thoughts, 0),
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.cache_read_tokens:
        body["cachedContentTokenCount"] = usage.cache_read_tokens
    if thoughts:
        body["thoughtsTokenCount"] = thoughts
    return body


def _call_part(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"functionCall": {"id": call_id, "name": name, "args": arguments_object(arguments)}}


def _response(
    parts: list[dict[str, Any]], model: str, response_id: str, finish: Finish | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:  # fmt: skip
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = _FINISH[finish.reason]
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
    if usage is not None:
        body["usageMetadata"] = _usage(usage)
    body["responseId"] = response_id
    return body


def _sign(parts: list[dict[str, Any]], signature: Signature | None) -> None:
    """Put a Gemini thoughtSignature back on the part it belongs with: the first
    function call, else the last text part."""
    if signature is None or signature.dialect != "gemini" or not parts:
        return
    calls = [part for part in parts if "functionCall" in part]
    (calls[0] if calls else parts[-1])["thoughtSignature"] = signature.value


def reply_body(reply: Reply, request: ChatRequest) -> bytes:
    parts: list[dict[str, Any]] = []
    if reply.reasoning and request.reply_state:
        parts.append({"text": reply.reasoning, "thought": True})
    if reply.text:
        parts.append({"text": reply.text})
    for call in reply.tool_calls:
        parts.append(_call_part(call.id, call.name, call.arguments))
    _sign(parts, reply.reasoning_signature)
    finish = reply.finish or Finish("stop")
    return orjson.dumps(_response(parts, reply.model, unique_hex(), finish, reply.usage))


class GeminiCall:
    """The frontend of one request: the path said which model, and how to stream."""

    PROTOCOL = PROTOCOL

    def __init__(self, model: str, stream: bool, sse: bool) -> None:
        self.model, self.stream, self.sse = model, stream, sse

    def parse_request(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest:
        return parse_request(body, self.model, self.stream)

    reply_body = staticmethod(reply_body)

    def error_status(self, error: GatewayError) -> int:
        return error.status

    def error_body(self, error: GatewayError) -> bytes:
        return error_body(error)

    def reply_headers(self, request: ChatRequest) -> dict[str, str]:
        return {} if self.sse or not request.stream else {"content-type": "application/json"}

    def stream_encoder(self, start: Start, request: ChatRequest) -> StreamEncoder:
        return StreamEncoder(start, request, self.sse)


class StreamEncoder:
    """Each event's part as one response chunk (SSE, or the items of one JSON array);
    a tool call once it is whole."""

    __slots__ = (
        "_calls", "_finish", "_first", "_id", "_model", "_show", "_signature", "_sse", "_usage"
    )  # fmt: skip

    def __init__(self, start: Start, request: ChatRequest, sse: bool) -> None:
        self._model = start.model
        self._sse = sse
        self._id = unique_hex()
        self._first = True
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self._finish = Finish("stop")
        self._usage: Usage | None = None
        self._signature: Signature | None = None  # Gemini's, for the next part (or the calls)
        self._show = bool(request.reply_state)

    def _frame(self, payload: dict[str, Any]) -> bytes:
        data = orjson.dumps(payload)
        if self._sse:
            return b"data: " + data + b"\r\n\r\n"
        head, self._first = (b"[" if self._first else b",\r\n"), False
        return head + data

    async def begin(self) -> bytes:
        return b""

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            if event.text:
                return self._frame(_response([{"text": event.text}], self._model, self._id))
        elif isinstance(event, ReasoningDelta):
            if event.signature:
                self._signature = event.signature
            if self._show and event.text:
                part = {"text": event.text, "thought": True}
                return self._frame(_response([part], self._model, self._id))
        elif isinstance(event, ToolCallStart):
            self._calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, ToolCallDelta):
            if event.index in self._calls:
                self._calls[event.index][2] += event.arguments
        elif isinstance(event, Finish):
            self._finish = event
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Heartbeat) and self._sse:
            return b": keep-alive\r\n\r\n"
        return b""

    async def end(self) -> bytes:
        parts = [_call_part(*self._calls[index]) for index in sorted(self._calls)]
        if self._signature and not parts:
            parts = [{"text": ""}]  # the signature of a text reply rides on a last part
        _sign(parts, self._signature)
        last = _response(parts, self._model, self._id, self._finish, self._usage)
        return self._frame(last) + (b"" if self._sse else b"]")

    def fail(self, error: GatewayError) -> bytes:
        return self._frame(orjson.loads(error_body(error))) + (b"" if self._sse else b"]")


# ---- errors, counting and models -----------------------------------------------


def error_body(error: GatewayError) -> bytes:
    status = _STATUS.get(error.status, "UNKNOWN")
    return orjson.dumps(
        {"error": {"code": error.status, "message": error.message, "status": status}}
    )


def model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": f"models/{entry.id}",
        "baseModelId": entry.id,
        "version": "lmgate",
        "displayName": entry.name,
        "description": entry.description,
        "inputTokenLimit": entry.context_window or 128_000,
        "outputTokenLimit": entry.max_output_tokens or 8192,
        "supportedGenerationMethods": list(ACTIONS),
    }


def models_body(catalog: Catalog) -> bytes:
    return orjson.dumps({"models": [model_object(entry) for entry in catalog.listed]})


# ---- routes --------------------------------------------------------------------

ERRORS = ErrorShape(lambda error: error.status, error_body)


async def _model_action(services: Services, request: Request) -> Answer:
    """POST models/{model}:generateContent, :streamGenerateContent, :countTokens,
    :embedContent, :batchEmbedContents."""
    try:
        model, action = split_target(request.path_params["target"])
    except GatewayError as error:
        return error_reply(ERRORS, error, request_id(request))
    if action in gemini_embed.ACTIONS:
        embed = gemini_embed.EmbedCall(model, action == "batchEmbedContents")
        return await services.chat(request, embed)
    sse = request.query_params.get("alt") == "sse"
    call = GeminiCall(model, action == "streamGenerateContent", sse)
    if action == "countTokens":
        return await services.count_tokens(request, call, call.parse_request, "totalTokens")
    return await services.chat(request, call)


async def _models(services: Services, request: Request) -> Answer:
    """GET models and models/{model}, in Google's shape."""

    async def body() -> bytes:
        catalog = await visible_catalog(services, request)
        model_id = request.path_params.get("model_id")
        if model_id is None:
            return models_body(catalog)
        entry = catalog.listed_entry(model_id.removeprefix("models/"))
        if entry is None:
            raise GatewayError("not_found", f"models/{model_id} is not found")
        return orjson.dumps(model_object(entry))

    return await json_answer(request, ERRORS, body)


ROUTES = (
    # Google's SDKs use v1beta, and v1 for some calls (and list models there too).
    Route("POST", "/v1beta/models/{target:path}", _model_action),
    Route("POST", "/v1/models/{target:path}", _model_action),
    Route("GET", "/v1beta/models", _models),
    Route("GET", "/v1beta/models/{model_id:path}", _models),
    Route("GET", "/v1/models", _models, claims=from_google),
    Route("GET", "/v1/models/{model_id:path}", _models, claims=from_google),
)
