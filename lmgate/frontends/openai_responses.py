"""The OpenAI Responses protocol, client side (``POST /v1/responses``): parse requests,
render replies and their event streams. Errors use the OpenAI shape of Chat
Completions. What Codex CLI sends is recorded in tests/data/codex_request.json.

Tools lmgate cannot run (the built-in ``web_search``, ``file_search``, …) and
Codex's ``namespace`` groups are dropped, and named in the ``x-lmgate-dropped-tools``
header, unless ``responses.unsupported_tools`` is ``refuse``. Freeform ``custom``
tools reach upstreams as functions taking one string, ``input``, and their calls
come back as ``custom_tool_call`` items.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
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
    arguments_object,
)
from lmgate.errors import GatewayError, encodable, from_exception, invalid
from lmgate.frontends import openai_chat
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
from lmgate.media import decode_data_url

PROTOCOL = "responses"
error_status = openai_chat.error_status
error_body = openai_chat.error_body

# A custom (freeform) tool, as the function every upstream understands.
_CUSTOM_INPUT = "input"


@dataclass(slots=True)
class ResponsesExtras:
    """What the reply needs from the request beyond the canonical fields; kept in
    ``ChatRequest.extra`` under ``_RESPONSES`` (no upstream dialect reads it)."""

    custom_tools: frozenset[str] = frozenset()
    dropped_tools: list[str] = field(default_factory=list)
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the reply repeats


_RESPONSES = "responses"


def extras(request: ChatRequest) -> ResponsesExtras:
    found = request.extra.get(_RESPONSES)
    return found if isinstance(found, ResponsesExtras) else ResponsesExtras()


# ---- request -------------------------------------------------------------------


def parse_request(
    body: bytes, headers: Mapping[str, str] | None = None, refuse_unsupported: bool = False
) -> ChatRequest:
    data = parse_json_object(body)
    model = string(data.get("model"), "model", allow_empty=False)
    if data.get("previous_response_id") is not None:
        raise invalid(
            "previous_response_id: stored conversations are not available on this gateway "
            "yet; send the whole conversation in input (with store: false)",
            "previous_response_id",
        )
    if data.get("background"):
        raise invalid("background: background responses are not supported", "background")
    system: list[TextPart] = []
    instructions = optional_string(data, "instructions")
    if instructions:
        system.append(TextPart(instructions))
    messages = _parse_input(data.get("input"), system)
    tools, custom, dropped = _parse_tools(data.get("tools"), refuse_unsupported)
    text = optional_object(data, "text") or {}
    reasoning = optional_object(data, "reasoning") or {}
    effort = optional_string(reasoning, "effort", "reasoning.effort")
    echo = {
        key: data[key]
        for key in ("instructions", "metadata", "parallel_tool_calls", "temperature", "top_p")
        if data.get(key) is not None
    }
    echo.update(
        tools=data.get("tools") or [],
        tool_choice=data.get("tool_choice", "auto"),
        store=data.get("store", True) is not False,
        text=text or {"format": {"type": "text"}},
        reasoning=reasoning or {"effort": None, "summary": None},
        max_output_tokens=data.get("max_output_tokens"),
    )
    # Written once, here (where what cannot be written is a 400), and embedded as is in
    # every response object: a stream repeats it in three events, and Codex's tools
    # alone are 40 KB.
    echo = {key: orjson.Fragment(encodable(value, key)) for key, value in echo.items()}
    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        stream=optional_bool(data, "stream") or False,
        include_usage=True,
        max_tokens=optional_int(data, "max_output_tokens", 1),
        temperature=optional_number(data, "temperature", 0, 2),
        top_p=optional_number(data, "top_p", 0, 1),
        response_format=_response_format(text),
        tools=tools,
        tool_choice=_parse_tool_choice(data.get("tool_choice")),
        parallel_tool_calls=optional_bool(data, "parallel_tool_calls"),
        thinking=False if effort == "none" else None,
        reasoning_effort=effort if effort not in (None, "none") else None,
        user=optional_string(data, "user"),
        extra={_RESPONSES: ResponsesExtras(custom, dropped, echo)},
        extra_dialect=PROTOCOL,
    )


def _parse_input(raw: Any, system: list[TextPart]) -> list[Message]:
    if isinstance(raw, str):
        return [Message("user", [TextPart(raw)])]
    if not isinstance(raw, list) or not raw:
        raise invalid("input: expected a string or a non-empty array of items", "input")
    messages: list[Message] = []

    def assistant() -> list[Part]:
        # Consecutive reasoning, message and call items are one assistant turn.
        if not messages or messages[-1].role != "assistant":
            messages.append(Message("assistant", []))
        return messages[-1].parts

    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise invalid(f"{where}: expected an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role in ("system", "developer"):
                text = TextPart(_text(content, f"{where}.content"))
                if messages:
                    messages.append(Message("system", [text]))
                else:
                    system.append(text)  # leading instructions
            elif role == "user":
                messages.append(Message("user", _user_content(content, f"{where}.content")))
            elif role == "assistant":
                assistant().append(TextPart(_text(content, f"{where}.content")))
            else:
                raise invalid(
                    f"{where}.role: expected one of user, assistant, system, developer;"
                    f" got {role!r}",
                    f"{where}.role",
                )
        elif kind in ("function_call", "custom_tool_call"):
            call_id = string(item.get("call_id"), f"{where}.call_id", allow_empty=False)
            name = string(item.get("name"), f"{where}.name", allow_empty=False)
            if kind == "function_call":
                arguments = string(item.get("arguments", ""), f"{where}.arguments")
            else:
                value = string(item.get("input", ""), f"{where}.input")
                arguments = orjson.dumps({_CUSTOM_INPUT: value}).decode()
            assistant().append(ToolCallPart(call_id, name, arguments))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = string(item.get("call_id"), f"{where}.call_id", allow_empty=False)
            output = _tool_output(item.get("output"), f"{where}.output")
            messages.append(Message("tool", [ToolResultPart(call_id, output)]))
        elif kind == "reasoning":
            part = _reasoning(item, where)
            if part is not None:
                assistant().append(part)
        elif kind == "item_reference":
            raise invalid(f"{where}: item_reference needs stored responses", f"{where}.type")
        else:
            raise invalid(f"{where}.type: unknown input item type {kind!r}", f"{where}.type")
    if not any(message.role != "system" for message in messages):
        raise invalid("input: no user or assistant item, only instructions", "input")
    return messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            at = f"{where}[{index}]"
            if not isinstance(part, dict) or part.get("type") not in (
                "input_text",
                "output_text",
                "refusal",
                "text",
            ):
                raise invalid(f"{at}: only text parts are allowed here", at)
            texts.append(string(part.get("text", part.get("refusal")), f"{at}.text"))
        return "".join(texts)
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
        if kind in ("input_text", "output_text", "text"):
            parts.append(TextPart(string(part.get("text"), f"{at}.text")))
        elif kind == "input_image":
            parts.append(_image(part, at))
        elif kind == "input_file":
            raise invalid(f"{at}: input_file parts are not supported", f"{at}.type")
        else:
            raise invalid(f"{at}.type: unknown content part type {kind!r}", f"{at}.type")
    return parts


def _image(part: dict[str, Any], at: str) -> ImagePart:
    if part.get("file_id") is not None:
        raise invalid(
            f"{at}.file_id: uploaded files are not available here; send image_url "
            "(an http(s) URL or a data: URL)",
            f"{at}.file_id",
        )
    url = string(part.get("image_url"), f"{at}.image_url", allow_empty=False)
    detail = optional_string(part, "detail", f"{at}.detail")
    if url.startswith("data:"):
        media_type, data = decode_data_url(url, f"{at}.image_url")
        return ImagePart(data=data, media_type=media_type, detail=detail, where=at)
    return ImagePart(url=url, detail=detail, where=at)


def _tool_output(output: Any, where: str) -> list[TextPart | ImagePart]:
    if isinstance(output, str):
        return [TextPart(output)]
    if isinstance(output, list):
        parts: list[TextPart | ImagePart] = []
        for index, part in enumerate(output):
            at = f"{where}[{index}]"
            if isinstance(part, dict) and part.get("type") == "input_image":
                parts.append(_image(part, at))
            elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
                parts.append(TextPart(string(part.get("text"), f"{at}.text")))
            else:
                raise invalid(f"{at}: expected an input_text or input_image part", at)
        return parts
    raise invalid(f"{where}: expected a string or an array of parts", where)


def _reasoning(item: dict[str, Any], where: str) -> ReasoningPart | None:
    texts: list[str] = []
    for key, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        for index, part in enumerate(optional_list(item, key, f"{where}.{key}") or []):
            at = f"{where}.{key}[{index}]"
            if not isinstance(part, dict) or part.get("type") != kind:
                raise invalid(f"{at}: expected a {kind} part", at)
            texts.append(string(part.get("text"), f"{at}.text"))
        if texts:
            break  # the reasoning itself when given, else its summary
    if not texts:
        return None
    return ReasoningPart("\n\n".join(texts))


def _parse_tools(
    raw: Any, refuse_unsupported: bool
) -> tuple[list[Tool] | None, frozenset[str], list[str]]:
    if raw is None:
        return None, frozenset(), []
    if not isinstance(raw, list):
        raise invalid("tools: expected an array", "tools")
    tools: list[Tool] = []
    custom: set[str] = set()
    dropped: list[str] = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        if not isinstance(item, dict):
            raise invalid(f"{where}: expected an object", where)
        kind = item.get("type")
        if kind == "function":
            tools.append(
                Tool(
                    string(item.get("name"), f"{where}.name", allow_empty=False),
                    optional_string(item, "description", f"{where}.description"),
                    optional_object(item, "parameters", f"{where}.parameters"),
                )
            )
        elif kind == "custom":
            name = string(item.get("name"), f"{where}.name", allow_empty=False)
            description = optional_string(item, "description", f"{where}.description") or ""
            grammar = (item.get("format") or {}).get("definition")
            if isinstance(grammar, str) and grammar:
                description += f"\n\nThe input must follow this grammar:\n{grammar}"
            schema = {
                "type": "object",
                "properties": {_CUSTOM_INPUT: {"type": "string", "description": "free text"}},
                "required": [_CUSTOM_INPUT],
            }
            tools.append(Tool(name, description.strip() or None, schema))
            custom.add(name)
        elif isinstance(kind, str):
            # Built-in tools (web_search, file_search, code_interpreter, mcp, …), which
            # lmgate would have to run itself, and Codex's namespace groups.
            label = f"namespace:{item.get('name')}" if kind == "namespace" else str(kind)
            if refuse_unsupported:
                raise invalid(
                    f"{where}: tools of type {label} cannot be served by this gateway "
                    "(responses.unsupported_tools is refuse)",
                    f"{where}.type",
                )
            dropped.append(label)
        else:
            raise invalid(f"{where}.type: expected a string", f"{where}.type")
    return tools or None, frozenset(custom), dropped


def _parse_tool_choice(raw: Any) -> str | dict[str, str] | None:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict):
        if raw.get("type") in ("function", "custom") and isinstance(raw.get("name"), str):
            return {"name": raw["name"]}
        if raw.get("type") == "allowed_tools":
            return "required" if raw.get("mode") == "required" else "auto"
        if isinstance(raw.get("type"), str):
            return "auto"  # a built-in tool, which was dropped
    raise invalid(
        'tool_choice: expected "auto", "none", "required" or {"type": "function", "name": ...}',
        "tool_choice",
    )


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise invalid("text.format: expected an object", "text.format")
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = optional_object(form, "schema", "text.format.schema")
        if schema is None:
            raise invalid("text.format.schema: expected an object", "text.format.schema")
        spec: dict[str, Any] = {"name": form.get("name") or "response", "schema": schema}
        if form.get("strict") is not None:
            spec["strict"] = bool(form["strict"])
        return {"type": "json_schema", "json_schema": spec}
    raise invalid(
        f"text.format.type: expected text, json_object or json_schema; got {kind!r}",
        "text.format.type",
    )


# ---- replies -------------------------------------------------------------------


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens or 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{unique_hex()}"


def _response(
    response_id: str, created: int, model: str, request: ChatRequest, status: str
) -> dict[str, Any]:
    echo = extras(request).echo
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "metadata": echo.get("metadata", {}),
        "model": model,
        "output": [],
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": echo.get("reasoning"),
        "store": echo.get("store", True),
        "temperature": echo.get("temperature", 1.0),
        "text": echo.get("text"),
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
    }


def _finished(body: dict[str, Any], finish: Finish | None, usage: Usage | None) -> None:
    if finish is not None and finish.reason == "length":
        body["status"] = "incomplete"
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish is not None and finish.reason == "content_filter":
        body["status"] = "incomplete"
        body["incomplete_details"] = {"reason": "content_filter"}
    else:
        body["status"] = "completed"
    body["usage"] = _usage(usage)


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": summary}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, custom: frozenset[str]
) -> dict[str, Any]:
    if name in custom:
        value = arguments_object(arguments).get(_CUSTOM_INPUT, arguments)
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "input": value if isinstance(value, str) else orjson.dumps(value).decode(),
        }
    return {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def reply_body(reply: Reply, request: ChatRequest) -> bytes:
    body = _response(_item_id("resp"), int(time.time()), reply.model, request, "completed")
    custom = extras(request).custom_tools
    output = body["output"]
    if reply.reasoning:
        output.append(_reasoning_item(_item_id("rs"), reply.reasoning))
    if reply.text or not reply.tool_calls:
        output.append(_message_item(_item_id("msg"), reply.text))
    for call in reply.tool_calls:
        output.append(_call_item(_item_id("fc"), call.id, call.name, call.arguments, custom))
    _finished(body, reply.finish, reply.usage)
    return orjson.dumps(body)


def reply_headers(request: ChatRequest) -> dict[str, str]:
    """Reply headers of this protocol: which of the client's tools were dropped."""
    dropped = extras(request).dropped_tools
    if not dropped:
        return {}
    # The names are the client's: printable ASCII only in a header (no line breaks).
    value = "".join(c if " " <= c <= "~" else "?" for c in ", ".join(dropped))
    return {"x-lmgate-dropped-tools": value[:1000]}


class _Stream:
    """The state of one streamed response: its items, and the events' numbering."""

    def __init__(self, start: Start, request: ChatRequest) -> None:
        self.request = request
        self.custom = extras(request).custom_tools
        self.body = _response(_item_id("resp"), int(time.time()), start.model, request, "")
        self.sequence = 0
        self.open: dict[str, Any] | None = None  # the reasoning or message item being written
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # open function calls by canonical index

    def event(self, kind: str, **fields: Any) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self.sequence
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n"

    def begin(self) -> list[bytes]:
        self.body["status"] = "in_progress"
        return [
            self.event("response.created", response=self.body),
            self.event("response.in_progress", response=self.body),
        ]

    def _add(self, item: dict[str, Any]) -> tuple[bytes, int]:
        index = len(self.body["output"])
        self.body["output"].append(item)
        return self.event("response.output_item.added", output_index=index, item=item), index

    def reasoning(self, text: str) -> list[bytes]:
        frames = []
        if self.open is None or self.open["type"] != "reasoning":
            frames += self.close_all()
            item = {"id": _item_id("rs"), "type": "reasoning", "summary": []}
            frame, index = self._add(item)
            self.open = {"type": "reasoning", "item": item, "index": index}
            part = {"type": "summary_text", "text": ""}
            frames += [
                frame,
                self.event(
                    "response.reasoning_summary_part.added",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part=part,
                ),
            ]
        self.text.append(text)
        frames.append(
            self.event(
                "response.reasoning_summary_text.delta",
                item_id=self.open["item"]["id"],
                output_index=self.open["index"],
                summary_index=0,
                delta=text,
            )
        )
        return frames

    def message(self, text: str) -> list[bytes]:
        frames = []
        if self.open is None or self.open["type"] != "message":
            frames += self.close_all()
            item = _message_item(_item_id("msg"), "", "in_progress")
            item["content"] = []
            frame, index = self._add(item)
            self.open = {"type": "message", "item": item, "index": index}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            frames += [
                frame,
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        self.text.append(text)
        frames.append(
            self.event(
                "response.output_text.delta",
                item_id=self.open["item"]["id"],
                output_index=self.open["index"],
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return frames

    def call_start(self, event: ToolCallStart) -> list[bytes]:
        frames = self.close_open()
        custom = event.name in self.custom
        item = {
            "id": _item_id("ctc" if custom else "fc"),
            "type": "custom_tool_call" if custom else "function_call",
            "status": "in_progress",
            "call_id": event.id,
            "name": event.name,
            ("input" if custom else "arguments"): "",
        }
        frame, index = self._add(item)
        self.calls[event.index] = {"item": item, "index": index, "arguments": []}
        return [*frames, frame]

    def call_delta(self, event: ToolCallDelta) -> list[bytes]:
        call = self.calls.get(event.index)
        if call is None or not event.arguments:
            return []
        call["arguments"].append(event.arguments)
        if call["item"]["type"] == "custom_tool_call":
            return []  # its input is known once the JSON arguments are whole
        return [
            self.event(
                "response.function_call_arguments.delta",
                item_id=call["item"]["id"],
                output_index=call["index"],
                delta=event.arguments,
            )
        ]

    def close_open(self) -> list[bytes]:
        """End the reasoning or message item being written."""
        if self.open is None:
            return []
        item, index = self.open["item"], self.open["index"]
        text = "".join(self.text)
        self.open, self.text = None, []
        if item["type"] == "reasoning":
            summary = {"type": "summary_text", "text": text}
            item["summary"] = [summary]
            ids = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            return [
                self.event("response.reasoning_summary_text.done", text=text, **ids),
                self.event("response.reasoning_summary_part.done", part=summary, **ids),
                self.event("response.output_item.done", output_index=index, item=item),
            ]
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"], item["status"] = [part], "completed"
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self.event("response.output_text.done", text=text, logprobs=[], **ids),
            self.event("response.content_part.done", part=part, **ids),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def close_all(self) -> list[bytes]:
        frames = self.close_open()
        for call in self.calls.values():
            item, index = call["item"], call["index"]
            arguments = "".join(call["arguments"])
            done = _call_item(item["id"], item["call_id"], item["name"], arguments, self.custom)
            item.update(done)
            ids = {"item_id": item["id"], "output_index": index}
            if item["type"] == "custom_tool_call":
                frames.append(
                    self.event("response.custom_tool_call_input.delta", delta=item["input"], **ids)
                )
                frames.append(
                    self.event("response.custom_tool_call_input.done", input=item["input"], **ids)
                )
            else:
                frames.append(
                    self.event("response.function_call_arguments.done", arguments=arguments, **ids)
                )
            frames.append(self.event("response.output_item.done", output_index=index, item=item))
        self.calls.clear()
        return frames

    def end(self, finish: Finish | None, usage: Usage | None) -> list[bytes]:
        frames = self.close_all()
        _finished(self.body, finish, usage)
        kind = "response.completed" if self.body["status"] == "completed" else "response.incomplete"
        return [*frames, self.event(kind, response=self.body)]

    def fail(self, error: GatewayError) -> bytes:
        self.body["status"] = "failed"
        self.body["error"] = {"code": error.code or str(error.kind), "message": error.message}
        return self.event("response.failed", response=self.body)


async def stream_frames(
    start: Start,
    events: AsyncGenerator[Event, None],
    request: ChatRequest,
) -> AsyncGenerator[bytes, None]:
    """SSE events for a reply whose ``Start`` was already received."""
    state = _Stream(start, request)
    finish: Finish | None = None
    usage: Usage | None = None
    for frame in state.begin():
        yield frame
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    frames = state.message(event.text) if event.text else []
                elif isinstance(event, ReasoningDelta):
                    frames = state.reasoning(event.text) if event.text else []
                elif isinstance(event, ToolCallStart):
                    frames = state.call_start(event)
                elif isinstance(event, ToolCallDelta):
                    frames = state.call_delta(event)
                elif isinstance(event, Finish):
                    finish, frames = event, []
                elif isinstance(event, Usage):
                    usage, frames = event, []
                else:  # a heartbeat: a comment line keeps the connection alive
                    frames = [b": keep-alive\n\n"]
                for frame in frames:
                    yield frame
    except Exception as error:
        yield state.fail(from_exception(error))
        return
    for frame in state.end(finish, usage):
        yield frame
