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

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request

from lmgate.accounts.conversations import Conversations
from lmgate.canonical import (
    ChatRequest,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    Signature,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
)
from lmgate.errors import GatewayError, encodable, invalid
from lmgate.frontends import openai_chat
from lmgate.frontends.base import Answer, Route, Services, json_answer
from lmgate.frontends.responses_output import (
    CUSTOM_INPUT,
    ResponsesExtras,
    extras,
    reply_body,
    reply_headers,
    stream_encoder,
)
from lmgate.frontends.sealing import PREFIX, Sealer, SealError
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
from lmgate.media.check import decode_data_url

PROTOCOL = "responses"
error_status = openai_chat.error_status
error_body = openai_chat.error_body
__all__ = ["extras", "parse_request", "reply_body", "reply_headers", "stream_encoder"]

# ---- request -------------------------------------------------------------------


def parse_request(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    refuse_unsupported: bool = False,
    sealer: Callable[[], Sealer] | None = None,
) -> ChatRequest:
    """``sealer`` opens the client's sealed reasoning, and seals the reply's when the
    client asks for it (``include: ["reasoning.encrypted_content"]``)."""
    return build_request(parse_json_object(body), refuse_unsupported, sealer)


def previous_id(data: dict[str, Any]) -> str | None:
    return optional_string(data, "previous_response_id") or None


def input_items(data: dict[str, Any]) -> list[Any]:
    """The request's input as a list of items (a string is one user message)."""
    raw = data.get("input")
    if isinstance(raw, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    return raw if isinstance(raw, list) else []


def build_request(
    data: dict[str, Any],
    refuse_unsupported: bool = False,
    sealer: Callable[[], Sealer] | None = None,
    history: list[Any] | None = None,
) -> ChatRequest:
    """The canonical request; ``history``: the stored items it continues from (the
    ``previous_response_id`` conversation's input and output)."""
    model = string(data.get("model"), "model", allow_empty=False)
    if data.get("background"):
        raise invalid("background: background responses are not supported", "background")
    system: list[TextPart] = []
    instructions = optional_string(data, "instructions")
    if instructions:
        system.append(TextPart(instructions))
    messages = _parse_input(history, system, sealer, "previous_response") if history else []
    messages = _parse_input(data.get("input"), system, sealer, "input", messages)
    include = optional_list(data, "include") or []
    sealing = sealer if "reasoning.encrypted_content" in include else None
    tools, custom, dropped = _parse_tools(data.get("tools"), refuse_unsupported)
    text = optional_object(data, "text") or {}
    reasoning = optional_object(data, "reasoning") or {}
    effort = optional_string(reasoning, "effort", "reasoning.effort")
    echo = {
        key: data[key]
        for key in ("instructions", "parallel_tool_calls", "temperature", "top_p")
        if data.get(key) is not None
    }
    if (metadata := _metadata(data)) is not None:
        echo["metadata"] = metadata
    echo.update(
        previous_response_id=previous_id(data),
        # What was used: the tools given to the model (a dropped one is named in a header).
        tools=[tool for tool in data.get("tools") or () if tool.get("type") in _SERVED],
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
        prompt_cache_key=optional_string(data, "prompt_cache_key"),
        reply_state=ResponsesExtras(custom, dropped, echo, sealing),
        extra_dialect=PROTOCOL,
    )


def _parse_input(
    raw: Any,
    system: list[TextPart],
    sealer: Callable[[], Sealer] | None,
    name: str,
    messages: list[Message] | None = None,
) -> list[Message]:
    """``messages`` with the items of ``raw`` (named ``name`` in errors) added."""
    messages = messages if messages is not None else []
    if isinstance(raw, str):
        return [*messages, Message("user", [TextPart(raw)])]
    if not isinstance(raw, list) or not raw:
        raise invalid(f"{name}: expected a string or a non-empty array of items", name)

    def assistant() -> list[Part]:
        # Consecutive reasoning, message and call items are one assistant turn.
        if not messages or messages[-1].role != "assistant":
            messages.append(Message("assistant", []))
        return messages[-1].parts

    for index, item in enumerate(raw):
        where = f"{name}[{index}]"
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
                arguments = orjson.dumps({CUSTOM_INPUT: value}).decode()
            assistant().append(ToolCallPart(call_id, name, arguments))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = string(item.get("call_id"), f"{where}.call_id", allow_empty=False)
            output = _tool_output(item.get("output"), f"{where}.output")
            messages.append(Message("tool", [ToolResultPart(call_id, output)]))
        elif kind == "reasoning":
            part = _reasoning(item, where, sealer)
            if part is not None:
                assistant().append(part)
        elif kind in ("compaction", "compaction_summary"):  # from /v1/responses/compact
            messages.append(Message("user", [TextPart(_compacted(item, where, sealer))]))
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


# How a compacted conversation's summary is put before the model (Codex's own words).
SUMMARY_INTRO = "Another language model started this task and wrote this summary of it:\n\n"


def _compacted(item: dict[str, Any], where: str, sealer: Callable[[], Sealer] | None) -> str:
    """The summary a compaction item carries, sealed by lmgate's /v1/responses/compact."""
    at = f"{where}.encrypted_content"
    sealed = item.get("encrypted_content")
    if not isinstance(sealed, str) or sealer is None:
        raise invalid(f"{at}: a compaction item needs the encrypted_content lmgate made", at)
    try:
        kept = sealer().open(sealed)
    except SealError as error:
        raise invalid(f"{at}: cannot be opened: {error}", at) from None
    if not isinstance(kept, dict) or not isinstance(kept.get("summary"), str):
        raise invalid(f"{at}: not a compaction lmgate made", at)
    return SUMMARY_INTRO + kept["summary"]


def _reasoning(
    item: dict[str, Any], where: str, sealer: Callable[[], Sealer] | None
) -> ReasoningPart | None:
    sealed = item.get("encrypted_content")
    if isinstance(sealed, str) and sealed.startswith(PREFIX) and sealer is not None:
        try:
            kept = sealer().open(sealed)
        except SealError as error:
            at = f"{where}.encrypted_content"
            raise invalid(f"{at}: cannot be opened: {error}", at) from None
        if isinstance(kept, dict) and isinstance(kept.get("text"), str):
            wire = kept.get("signature")
            signature = Signature.from_wire(wire) if isinstance(wire, str) and wire else None
            return ReasoningPart(kept["text"], signature)
    # Without lmgate's own blob (another API's is of no use here): the text itself.
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
            form = item.get("format")
            grammar = form.get("definition") if isinstance(form, dict) else None
            if isinstance(grammar, str) and grammar:
                description += f"\n\nThe input must follow this grammar:\n{grammar}"
            schema = {
                "type": "object",
                "properties": {CUSTOM_INPUT: {"type": "string", "description": "free text"}},
                "required": [CUSTOM_INPUT],
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


_SERVED = frozenset({"function", "custom"})  # tool types that reach the model
# OpenAI's own bounds on metadata: it is stored with the response and echoed back.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512


def _metadata(data: dict[str, Any]) -> dict[str, str] | None:
    metadata = optional_object(data, "metadata")
    if metadata is None:
        return None
    if len(metadata) > _METADATA_PAIRS:
        raise invalid(f"metadata: at most {_METADATA_PAIRS} pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise invalid(f"metadata: keys of at most {_METADATA_KEY} characters", "metadata")
        if not isinstance(value, str) or len(value) > _METADATA_VALUE:
            where = f"metadata.{key}"
            raise invalid(f"{where}: a string of at most {_METADATA_VALUE} characters", where)
    return metadata


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


class ResponsesFrontend:
    """The frontend as the gateway runs it: with the config's options, and the stored
    conversations that ``previous_response_id`` continues and ``store`` adds to."""

    PROTOCOL = PROTOCOL

    def __init__(
        self,
        conversations: Conversations,
        refuse_unsupported: bool = False,
        sealer: Callable[[], Sealer] | None = None,
    ) -> None:
        self.conversations = conversations
        self.refuse_unsupported = refuse_unsupported
        self.sealer = sealer

    def parse_request(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest:
        return parse_request(body, headers, self.refuse_unsupported, self.sealer)

    async def parse_async(
        self, body: bytes, headers: Mapping[str, str], key_id: str | None
    ) -> ChatRequest:
        data = parse_json_object(body)
        previous = previous_id(data)
        history = await self.conversations.history(previous, key_id) if previous else []
        chat = build_request(data, self.refuse_unsupported, self.sealer, history)
        if data.get("store", True) is not False:
            await self.conversations.check_room(key_id)
            found = extras(chat)
            items = [*history, *input_items(data)]
            found.save = self.conversations.saver(found.response_id, key_id, items)
        return chat

    async def finish(self, chat: ChatRequest, body: bytes) -> None:
        """A non-stream reply is whole: store it (a stream stores itself at its end)."""
        save = extras(chat).save
        if save is not None:
            await save(body)

    reply_body = staticmethod(reply_body)
    reply_headers = staticmethod(reply_headers)
    stream_encoder = staticmethod(stream_encoder)
    error_status = staticmethod(error_status)
    error_body = staticmethod(error_body)


# ---- routes --------------------------------------------------------------------


async def _stored(services: Services, request: Request) -> Answer:
    """GET / DELETE /v1/responses/{id}, GET …/{id}/input_items: the key's own only."""
    response_id = request.path_params["response_id"]
    conversations = services.conversations

    async def body() -> bytes:
        caller = await services.authenticate(request)
        if request.url.path.endswith("/input_items"):
            query = request.query_params
            limit = query.get("limit", "20")
            if not limit.isdigit() or not 1 <= int(limit) <= 100:
                raise GatewayError("invalid_request", "limit: expected 1 to 100", param="limit")
            order = query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise GatewayError("invalid_request", "order: asc or desc", param="order")
            page = await conversations.input_items(
                response_id, caller.key_id, int(limit), order, query.get("after")
            )
            return orjson.dumps(page)
        if request.method == "DELETE":
            await conversations.delete(response_id, caller.key_id)
            return orjson.dumps({"id": response_id, "object": "response", "deleted": True})
        return await conversations.get(response_id, caller.key_id)

    return await json_answer(request, openai_chat.ERRORS, body)


ROUTES = (
    Route("GET", "/v1/responses/{response_id}", _stored),
    Route("DELETE", "/v1/responses/{response_id}", _stored),
    Route("GET", "/v1/responses/{response_id}/input_items", _stored),
)
