"""The Responses API over a WebSocket: the transport Codex opens first
(``GET /v1/responses`` with ``Upgrade: websocket``).

The client sends ``{"type": "response.create", …a Responses request…}`` text frames
and gets each response's stream events back as text frames, the same events the
HTTP API streams as SSE, one response after another on one connection. Each is served
by the HTTP path itself (keys, limits, routing, usage records, metrics, the request
log): only the framing differs. Errors before a response starts are
``{"type": "error", "status": …, "error": {…}}`` frames.

On the socket, a ``response.create`` whose ``previous_response_id`` names one of the
connection's own last responses continues it without the store (Codex sends only the
new items, with ``store: false``): the connection keeps what those responses were given
and said. ``generate: false`` (Codex's warm-up) answers at once, without the model, and
is remembered the same way. ``response.processed`` acknowledgements are taken and
ignored. ``responses.websocket: false`` answers the upgrade with a 426, so that clients
fall back to HTTP at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from lmgate.errors import GatewayError
from lmgate.frontends import openai_chat
from lmgate.frontends.base import Services, error_reply, json_request, request_id
from lmgate.frontends.openai_responses import ResponsesFrontend
from lmgate.frontends.responses_create import compaction_events, triggered
from lmgate.ids import unique_hex

_KEPT = 4  # responses per connection a create may continue from
_IDLE = 3600.0  # seconds a connection may stay without a message


async def serve(services: Services, websocket: WebSocket) -> None:
    """One client connection, for as long as it stays."""
    rid = request_id(cast(Request, websocket))
    if not services.config.responses.websocket:
        off = GatewayError(
            "invalid_request",
            "the Responses API over WebSocket is off here (responses.websocket): use HTTP",
            status=426,
            code="websocket_disabled",
        )
        await deny(websocket, error_reply(openai_chat, off, rid))
        return
    try:
        await services.authenticate(cast(Request, websocket))
    except GatewayError as error:  # told as the upgrade's answer, as HTTP would
        await deny(websocket, error_reply(openai_chat, error, rid))
        return
    await websocket.accept()
    services.sockets_opened += 1
    connection = _Connection(services, websocket)
    await connection.run()


async def deny(websocket: WebSocket, response: Response) -> None:
    """Refuse an upgrade with an HTTP answer; a bare close where the server cannot."""
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # no denial-response extension: the client sees a 403
        await websocket.close(code=1008)


class _Connection:
    def __init__(self, services: Services, websocket: WebSocket) -> None:
        self.services, self.websocket = services, websocket
        config = services.config.responses
        self.frontend = ResponsesFrontend(
            services.conversations, config.unsupported_tools == "refuse", services.sealer
        )
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        self.closed = asyncio.Event()
        # response id -> the items a follow-up continues from (its input, then output)
        self.kept: OrderedDict[str, list[Any]] = OrderedDict()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        try:
            while (message := await self.inbox.get()) is not None:
                await self._one(message)
        except WebSocketDisconnect:
            pass
        finally:
            self.closed.set()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        """Messages in, as they come: a client that leaves mid-response is noticed at
        once (its response is cut, as an HTTP stream's would be)."""
        try:
            while True:
                async with asyncio.timeout(_IDLE):
                    message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:  # a binary frame: JSON all the same, or an error event
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                await self.inbox.put(text)
        except (WebSocketDisconnect, TimeoutError, RuntimeError):
            pass
        self.closed.set()
        with contextlib.suppress(asyncio.QueueFull):
            self.inbox.put_nowait(None)

    async def _one(self, message: str) -> None:
        try:
            data = orjson.loads(message)
        except orjson.JSONDecodeError:
            await self._error(400, "invalid_request_error", "the message is not JSON")
            return
        kind = data.pop("type", None) if isinstance(data, dict) else None
        if kind == "response.processed":
            return
        if kind != "response.create":
            await self._error(
                400, "invalid_request_error", "expected a message of type response.create"
            )
            return
        self._continue(data)
        if data.pop("generate", None) is False:
            await self._warm_up(data)
            return
        data["stream"] = True
        if triggered(data):
            await self._compact(data)
            return
        await self._respond(data)

    async def _compact(self, data: dict[str, Any]) -> None:
        """A compaction asked for on the socket (the input ends with its trigger)."""
        events = await compaction_events(self.services, self._request(orjson.dumps(data)), data)
        if not isinstance(events, list):
            await self._refused(cast(Response, events))
            return
        for event in events:
            await self.websocket.send_text(orjson.dumps(event).decode())
        done = events[-1]["response"]
        self._keep(done["id"], [], done["output"])  # the compaction is the whole context now

    def _continue(self, data: dict[str, Any]) -> None:
        """A create that continues one of this connection's responses gets that
        conversation in full (and no previous_response_id: nothing to load)."""
        previous = data.get("previous_response_id")
        history = self.kept.get(previous) if isinstance(previous, str) else None
        if history is not None:
            del data["previous_response_id"]
            data["input"] = [*history, *_items(data.get("input"))]

    async def _warm_up(self, data: dict[str, Any]) -> None:
        response_id = "resp_" + unique_hex()
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": data.get("model"),
            "output": [],
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        }
        for kind in ("response.created", "response.completed"):
            event = {"type": kind, "response": response}
            await self.websocket.send_text(orjson.dumps(event).decode())
        self._keep(response_id, _items(data.get("input")), [])

    async def _respond(self, data: dict[str, Any]) -> None:
        given = _items(data.get("input"))
        body = orjson.dumps(data)
        answer = await self.services.chat(self._request(body), self.frontend)
        if getattr(answer, "status_code", 200) != 200 or not callable(answer):
            await self._refused(cast(Response, answer))
            return
        completed: dict[str, Any] = {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                for payload in _sse_data(message["body"]):
                    await self.websocket.send_text(payload.decode())
                    if b'"type":"response.completed"' in payload:
                        completed.update(orjson.loads(payload).get("response") or {})

        await answer({"type": "http"}, self._closed, send)
        if completed.get("id"):
            self._keep(completed["id"], given, completed.get("output") or [])

    async def _refused(self, response: Response) -> None:
        """A create the HTTP path refused: its error, as an error event."""
        try:
            error = orjson.loads(response.body).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            error = {"message": "the request failed"}
        headers = {
            name: value
            for name, value in response.headers.items()
            if name in ("retry-after", "x-should-retry", "x-request-id")
        }
        event = {"type": "error", "status": response.status_code, "error": error}
        if headers:
            event["headers"] = headers
        await self.websocket.send_text(orjson.dumps(event).decode())

    async def _error(self, status: int, kind: str, message: str) -> None:
        event = {"type": "error", "status": status, "error": {"type": kind, "message": message}}
        await self.websocket.send_text(orjson.dumps(event).decode())

    def _request(self, body: bytes) -> Request:
        """The create as the HTTP path takes it: the upgrade request's headers (its key,
        its session), with the message as a JSON body."""
        return json_request(self.websocket.scope, body, self._closed)

    async def _closed(self) -> dict[str, Any]:
        """What a response's watcher waits for: the socket closing (a disconnect)."""
        await self.closed.wait()
        return {"type": "http.disconnect"}

    def _keep(self, response_id: str, given: list[Any], output: list[Any]) -> None:
        self.kept[response_id] = [*given, *output]
        while len(self.kept) > _KEPT:
            self.kept.popitem(last=False)


def _items(given: Any) -> list[Any]:
    """A Responses ``input`` as a list of items (a string is one user message)."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def _sse_data(chunk: bytes) -> list[bytes]:
    """The ``data:`` payloads of whole SSE events (the encoder writes whole events)."""
    found = []
    for block in chunk.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                found.append(line[6:])
            elif line.startswith(b"data:"):
                found.append(line[5:])
    return found


ROUTES = ()  # no HTTP routes of its own
SOCKETS = (("/v1/responses", serve),)
