"""The OpenAI Responses protocol's output: the response object, its items, and the
event stream (``lmgate/frontends/openai_responses.py`` parses the requests)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    Heartbeat,
    ReasoningDelta,
    Reply,
    Signature,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    arguments_object,
)
from lmgate.errors import GatewayError, from_exception
from lmgate.frontends.base import dropped_tools_header
from lmgate.frontends.sealing import Sealer
from lmgate.ids import unique_hex

# A custom (freeform) tool, as the function every upstream understands.
CUSTOM_INPUT = "input"


@dataclass(slots=True)
class ResponsesExtras:
    """What the reply needs from the request beyond the canonical fields (kept in
    ``ChatRequest.reply_state``)."""

    custom_tools: frozenset[str] = frozenset()
    dropped_tools: list[str] = field(default_factory=list)
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the reply repeats
    # Set when the client asked for reasoning.encrypted_content: seals it into the items.
    sealer: Callable[[], Sealer] | None = None
    # Random (128 bits), not a counter: a stored response's id must not be guessable.
    response_id: str = field(default_factory=lambda: f"resp_{secrets.token_hex(16)}")
    # Set when the response is to be stored: called with the finished response object.
    save: Callable[[bytes], Awaitable[None]] | None = None

    def sealed(self, text: str, signature: Signature | None) -> dict[str, str]:
        if self.sealer is None or not (text or signature):
            return {}
        wire = signature.wire() if signature else None
        return {"encrypted_content": self.sealer().seal({"text": text, "signature": wire})}


def extras(request: ChatRequest) -> ResponsesExtras:
    found = request.reply_state
    return found if isinstance(found, ResponsesExtras) else ResponsesExtras()


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
        "previous_response_id": echo.get("previous_response_id"),
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


def _reasoning_item(
    item_id: str, text: str, signature: Signature | None, request: ChatRequest
) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    item = {"id": item_id, "type": "reasoning", "summary": summary}
    item.update(extras(request).sealed(text, signature))
    return item


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
        value = arguments_object(arguments).get(CUSTOM_INPUT, arguments)
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
    body = _response(extras(request).response_id, int(time.time()), reply.model, request, "")
    custom = extras(request).custom_tools
    output = body["output"]
    if reply.reasoning or reply.reasoning_signature:
        item = _reasoning_item(_item_id("rs"), reply.reasoning, reply.reasoning_signature, request)
        output.append(item)
    if reply.text or not reply.tool_calls:
        output.append(_message_item(_item_id("msg"), reply.text))
    for call in reply.tool_calls:
        output.append(_call_item(_item_id("fc"), call.id, call.name, call.arguments, custom))
    _finished(body, reply.finish, reply.usage)
    return orjson.dumps(body)


def reply_headers(request: ChatRequest) -> dict[str, str]:
    """Reply headers of this protocol: which of the client's tools were dropped."""
    return dropped_tools_header(extras(request).dropped_tools)


class StreamEncoder:
    """The SSE events of one streamed response: its items, and the events' numbering."""

    def __init__(self, start: Start, request: ChatRequest) -> None:
        self.request = request
        self.custom = extras(request).custom_tools
        self.body = _response(
            extras(request).response_id, int(time.time()), start.model, request, ""
        )
        self.sequence = 0
        self.open: dict[str, Any] | None = None  # the reasoning or message item being written
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # open function calls by canonical index
        self.signature: Signature | None = None  # of the reasoning being written
        self.finish: Finish | None = None
        self.usage: Usage | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self.sequence
        self.sequence += 1
        return sse_frame(fields)

    def _begin(self) -> list[bytes]:
        self.body["status"] = "in_progress"
        return [
            self._event("response.created", response=self.body),
            self._event("response.in_progress", response=self.body),
        ]

    def _add(self, item: dict[str, Any]) -> tuple[bytes, int]:
        index = len(self.body["output"])
        self.body["output"].append(item)
        return self._event("response.output_item.added", output_index=index, item=item), index

    def reasoning(self, text: str, signature: Signature | None) -> list[bytes]:
        frames: list[bytes] = []
        if signature:
            self.signature = signature
        if not text:
            return frames
        if self.open is None or self.open["type"] != "reasoning":
            frames += self.close_all()
            item = {"id": _item_id("rs"), "type": "reasoning", "summary": []}
            frame, index = self._add(item)
            self.open = {"type": "reasoning", "item": item, "index": index}
            part = {"type": "summary_text", "text": ""}
            frames += [
                frame,
                self._event(
                    "response.reasoning_summary_part.added",
                    item_id=item["id"],
                    output_index=index,
                    summary_index=0,
                    part=part,
                ),
            ]
        self.text.append(text)
        frames.append(
            self._event(
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
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        self.text.append(text)
        frames.append(
            self._event(
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
            self._event(
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
            item.update(extras(self.request).sealed(text, self.signature))
            self.signature = None
            ids = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            return [
                self._event("response.reasoning_summary_text.done", text=text, **ids),
                self._event("response.reasoning_summary_part.done", part=summary, **ids),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"], item["status"] = [part], "completed"
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", text=text, logprobs=[], **ids),
            self._event("response.content_part.done", part=part, **ids),
            self._event("response.output_item.done", output_index=index, item=item),
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
                    self._event("response.custom_tool_call_input.delta", delta=item["input"], **ids)
                )
                frames.append(
                    self._event("response.custom_tool_call_input.done", input=item["input"], **ids)
                )
            else:
                frames.append(
                    self._event("response.function_call_arguments.done", arguments=arguments, **ids)
                )
            frames.append(self._event("response.output_item.done", output_index=index, item=item))
        self.calls.clear()
        return frames

    def _end(self, finish: Finish | None, usage: Usage | None) -> list[bytes]:
        frames = self.close_all()
        _finished(self.body, finish, usage)
        kind = "response.completed" if self.body["status"] == "completed" else "response.incomplete"
        return [*frames, self._event(kind, response=self.body)]

    def fail(self, error: GatewayError) -> bytes:
        self.body["status"] = "failed"
        self.body["error"] = {"code": error.code or str(error.kind), "message": error.message}
        return self._event("response.failed", response=self.body)

    # ---- the encoder's contract (lmgate.frontends.base.StreamEncoder) ----

    async def begin(self) -> bytes:
        return b"".join(self._begin())

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return b"".join(self.message(event.text)) if event.text else b""
        if isinstance(event, ReasoningDelta):
            return b"".join(self.reasoning(event.text, event.signature))
        if isinstance(event, ToolCallStart):
            return b"".join(self.call_start(event))
        if isinstance(event, ToolCallDelta):
            return b"".join(self.call_delta(event))
        if isinstance(event, Finish):
            self.finish = event
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Heartbeat):  # a comment line keeps the connection alive
            return b": keep-alive\n\n"
        return b""

    async def end(self) -> bytes:
        frames = self._end(self.finish, self.usage)
        save = extras(self.request).save
        if save is not None:  # stored before the client hears it is complete
            try:
                await save(orjson.dumps(self.body))
            except Exception as error:
                return self.fail(from_exception(error))
        return b"".join(frames)


stream_encoder = StreamEncoder


def sse_frame(event: dict[str, Any]) -> bytes:
    """A Responses stream event as an SSE frame (named by its type)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
