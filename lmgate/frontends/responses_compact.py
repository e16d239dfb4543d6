"""``POST /v1/responses/compact``: Codex's remote compaction of a long session, on any
upstream.

The model itself writes a summary of the conversation: one ordinary request through
the chat pipeline (keys, limits, routing, a usage record). The reply is the history a
client continues from: the user's own latest messages, then a ``compaction`` item that
holds the summary, sealed as lmgate seals reasoning (only this gateway opens it; a
later request that carries it gives the model the summary in place of the turns).
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
from lmgate.frontends.validate import parse_json_object

PROMPT = (
    "Stop here: the conversation is about to be cut short to save room, and another "
    "model will carry on from your notes alone. Write those notes now, for it: what the "
    "task is, what has been done and decided so far and why, the files, commands, names "
    "and values it needs, the user's wishes and constraints, what failed, and the next "
    "steps. Be complete but brief, and write nothing but the notes."
)
_KEPT_USER_TEXT = 80_000  # characters of the user's own latest messages kept verbatim


async def _compact(services: Services, request: Request) -> Answer:
    refuse = services.config.responses.unsupported_tools == "refuse"
    frontend = ResponsesFrontend(services.conversations, refuse, services.sealer)
    try:
        data = parse_json_object(await services.read_body(request))
        items = input_items(data)
        if not items:
            raise invalid("input: there is no conversation to compact", "input")
    except GatewayError as error:
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
    made = json_request(request.scope, body, _once(body, request.receive))
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
    sealed = services.sealer().seal({"summary": summary})
    compacted = {
        "id": reply.get("id"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [
            *_latest_user_messages(items),
            {"type": "compaction", "encrypted_content": sealed},
        ],
        "usage": reply.get("usage"),
    }
    headers = {"x-request-id": answer.headers.get("x-request-id", request_id(request))}
    return Response(orjson.dumps(compacted), media_type="application/json", headers=headers)


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


def _once(body: bytes, then: Any) -> Any:
    """``body``, then what the client's own connection says (its disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


ROUTES = (Route("POST", "/v1/responses/compact", _compact),)
