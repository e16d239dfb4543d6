"""Creating a response: ``POST /v1/responses``, and compaction, Codex's summary of a
long session that the session then continues from, on any upstream. Codex asks for
it in one of two ways: ``POST /v1/responses/compact``, or an ordinary create whose
input ends with a ``{"type": "compaction_trigger"}`` item (also over the WebSocket).

The model itself writes the summary: one ordinary request through the chat pipeline
(keys, limits, routing, a usage record). The answer holds a ``compaction`` item with
the summary sealed as lmgate seals reasoning (only this gateway opens it; a later
request that carries it gives the model the summary in place of the turns). The
compact endpoint answers with the history to continue from (the user's own latest
messages, then that item); a triggered create, with a response whose one output
item it is.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from lmgate.errors import GatewayError, invalid
from lmgate.frontends.base import Answer, Route, Services, error_reply, json_request, request_id
from lmgate.frontends.openai_responses import ResponsesFrontend, input_items
from lmgate.frontends.responses_output import sse_frame
from lmgate.frontends.validate import parse_json_object
from lmgate.ids import unique_hex

PROMPT = (
    "Stop here: the conversation is about to be cut short to save room, and another "
    "model will carry on from your notes alone. Write those notes now, for it: what the "
    "task is, what has been done and decided so far and why, the files, commands, names "
    "and values it needs, the user's wishes and constraints, what failed, and the next "
    "steps. Be complete but brief, and write nothing but the notes."
)
_KEPT_USER_TEXT = 80_000  # characters of the user's own latest messages kept verbatim


def frontend_of(services: Services) -> ResponsesFrontend:
    refuse = services.config.responses.unsupported_tools == "refuse"
    return ResponsesFrontend(services.conversations, refuse, services.sealer)


async def _create(services: Services, request: Request) -> Answer:
    frontend = frontend_of(services)
    try:
        body = await services.read_body(request)
    except GatewayError as error:
        return error_reply(frontend, error, request_id(request))
    if b'"compaction_trigger"' in body:  # cheap: only a likely one is parsed here
        try:
            data = parse_json_object(body)
        except GatewayError as error:
            return error_reply(frontend, error, request_id(request))
        if triggered(data):
            events = await compaction_events(services, request, data)
            if not isinstance(events, list):
                return events  # its error
            return _events_answer(events, data, request_id(request))
    return await services.chat(request, frontend, body)


def triggered(data: dict[str, Any]) -> bool:
    """A create that asks for a compaction (its input ends with the trigger item)."""
    given = data.get("input")
    return isinstance(given, list) and bool(given) and _is_trigger(given[-1])


def _is_trigger(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "compaction_trigger"


async def compaction_events(
    services: Services, request: Request, data: dict[str, Any]
) -> list[dict[str, Any]] | Answer:
    """A triggered create's answer: a response whose one output item is the
    compaction, as its stream's events (or the summarising request's error)."""
    done = await _summarise(services, request, data)
    if not isinstance(done, tuple):
        return done
    sealed, reply = done
    item = {"id": "cmp_" + unique_hex(), "type": "compaction", "encrypted_content": sealed}
    response = {
        "id": reply.get("id"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": reply.get("model"),
        "output": [item],
        "usage": reply.get("usage"),
    }
    started = {**response, "status": "in_progress", "output": []}
    return [
        {"type": "response.created", "sequence_number": 0, "response": started},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
         "item": item},
        {"type": "response.output_item.done", "sequence_number": 2, "output_index": 0,
         "item": item},
        {"type": "response.completed", "sequence_number": 3, "response": response},
    ]  # fmt: skip


def _events_answer(events: list[dict[str, Any]], data: dict[str, Any], rid: str) -> Answer:
    headers = {"x-request-id": rid}
    if data.get("stream"):
        body = b"".join(sse_frame(event) for event in events)
        return Response(body, media_type="text/event-stream", headers=headers)
    return Response(orjson.dumps(events[-1]["response"]), media_type="application/json",
                    headers=headers)  # fmt: skip


async def _compact(services: Services, request: Request) -> Answer:
    frontend = frontend_of(services)
    try:
        data = parse_json_object(await services.read_body(request))
    except GatewayError as error:
        return error_reply(frontend, error, request_id(request))
    done = await _summarise(services, request, data)
    if not isinstance(done, tuple):
        return done
    sealed, reply = done
    compacted = {
        "id": reply.get("id"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [
            *_latest_user_messages(input_items(data)),
            {"type": "compaction", "encrypted_content": sealed},
        ],
        "usage": reply.get("usage"),
    }
    return Response(
        orjson.dumps(compacted),
        media_type="application/json",
        headers={"x-request-id": request_id(request)},
    )


async def _summarise(
    services: Services, request: Request, data: dict[str, Any]
) -> tuple[str, dict[str, Any]] | Answer:
    """The model's notes on the conversation, sealed, and the reply they came in; or
    the error of the request that asked for them."""
    frontend = frontend_of(services)
    items = [item for item in input_items(data) if not _is_trigger(item)]
    if not items:
        error = invalid("input: there is no conversation to compact", "input")
        return error_reply(frontend, error, request_id(request))
    ask: dict[str, Any] = {
        "model": data.get("model"),
        "input": [*items, _user(PROMPT)],
        "store": False,
        "stream": False,
    }
    for name in ("instructions", "reasoning", "prompt_cache_key", "tools"):
        if data.get(name) is not None:
            ask[name] = data[name]
    if "tools" in ask:  # the turns may call them (some upstreams want them defined)
        ask["tool_choice"] = "none"
    body = orjson.dumps(ask)
    made = json_request(request.scope, body, request.receive)
    answer = await services.chat(made, frontend)
    if not isinstance(answer, Response) or answer.status_code != 200:
        return answer  # its error, in the Responses shape
    reply = orjson.loads(answer.body)
    summary = "".join(
        part.get("text", "")
        for item in reply.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
    return services.sealer().seal({"summary": summary}), reply


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _latest_user_messages(items: list[Any]) -> list[Any]:
    """The user's own messages, the latest first in priority, within a bound."""
    kept: list[Any] = []
    size = 0
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        if item.get("type", "message") != "message":
            continue
        size += len(orjson.dumps(item.get("content")))
        if size > _KEPT_USER_TEXT:
            break
        kept.append(item)
    return kept[::-1]


ROUTES = (
    Route("POST", "/v1/responses", _create),
    Route("POST", "/v1/responses/compact", _compact),
)
