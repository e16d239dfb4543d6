"""One request's way through the gateway, whichever its protocol: who calls, its body
within bounds, the frontend's parse, admission (key models, limits, budgets), the
router, and the reply, streamed or whole, with its usage metered and logged.

The frontends' route handlers reach it as ``frontends.base.Services``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from lmgate.accounts.accounts import Accounts
from lmgate.accounts.conversations import Conversations
from lmgate.accounts.keys import ANONYMOUS, Caller, presented_key
from lmgate.accounts.request_log import RequestLog
from lmgate.accounts.usage import CLIENT_LEFT
from lmgate.canonical import ChatRequest, Reply, Start, accumulate
from lmgate.clock import TIMER_SLACK
from lmgate.config import Config
from lmgate.errors import GatewayError
from lmgate.frontends.base import (
    Answer,
    ErrorShape,
    Frontend,
    JsonReply,
    error_reply,
    ids,
    json_reply,
    request_id,
    stream,
)
from lmgate.frontends.sealing import Sealer
from lmgate.frontends.validate import require_json
from lmgate.media import check
from lmgate.observe import tokens
from lmgate.routing.catalog import Catalog, ModelEntry
from lmgate.routing.router import Router
from lmgate.web.server import EventStream

if TYPE_CHECKING:
    from lmgate.observe.tracing import Tracing

log = logging.getLogger("lmgate")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Pipeline:
    """What request handlers use, and nothing of the gateway's lifecycle."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        router: Router,
        accounts: Accounts,
        conversations: Conversations,
        sealer: Callable[[], Sealer],
        request_log: RequestLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.router = router
        self.accounts = accounts
        self.conversations = conversations
        self.sealer = sealer
        self.request_log = request_log
        self.tracing = tracing
        self.max_body = int(config.server.max_body_mb * 1024 * 1024)
        self.sockets_opened = 0  # Responses API WebSocket connections (for the metrics)
        self._departures = _Departures()

    async def authenticate(self, request: Request) -> Caller:
        # Google's clients may send the key as ?key= (logs redact it).
        key = presented_key(request.headers.raw)
        if not key and request.scope.get("query_string"):  # parsed only when there is one
            key = request.query_params.get("key", "")
        return await self.accounts.identify(key)

    async def read_body(self, request: Request) -> bytes:
        headers = request.headers
        require_json(headers.get("content-type"))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        # The ASGI messages themselves, not Starlette's ``request.stream()``: an async
        # generator per request (and its registration with the loop) for what is
        # nearly always one message.
        chunks, size, receive = [], 0, request.receive
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> GatewayError:
        limit = self.config.server.max_body_mb
        return GatewayError(
            "request_too_large",
            f"the request body is larger than server.max_body_mb ({limit:g} MB)",
            code="request_too_large",
        )

    def _check_media(self, chat: ChatRequest) -> bool:
        """Validate the request's images against ``media``; whether it has any."""
        limits = self.config.media
        return check.check(chat, limits.max_images, int(limits.max_image_mb * 2**20))

    async def chat(self, request: Request, frontend: Frontend, body: bytes | None = None) -> Answer:
        """One handler for every client protocol; ``frontend`` does the wire format.
        ``body``: the request's, when the route read it already."""
        rid = request_id(request)
        meter = self.accounts.meter(rid, frontend.PROTOCOL)
        if self.tracing is not None and meter is not None:
            meter.span = self.tracing.start(request.headers, frontend.PROTOCOL)
        logged = self.request_log
        arrived = meter.at if meter is not None else time.time()  # its record's, and log's
        caller = ANONYMOUS
        given, body = body, b""  # as read; logged with the reply when request_log is on
        try:
            caller = await self.authenticate(request)
            body = given if given is not None else await self.read_body(request)
            parse_async = getattr(frontend, "parse_async", None)  # one with stored state
            if parse_async is not None:
                chat = await parse_async(body, request.headers, caller.key_id)
            else:
                chat = frontend.parse_request(body, request.headers)
            chat.session, chat.key_id = session_of(request.headers, chat), caller.key_id
            if meter is not None:
                meter.request(chat, caller.key_id, caller.key.name if caller.key else None)
            if chat.server_tools:
                chat.server_tools_policy = self.config.messages.unsupported_tools
            if chat.embed is None:
                chain = self.catalog.candidates(
                    chat.model, self._check_media(chat), bool(chat.tools)
                )
            else:
                chain = self.catalog.candidates(chat.model, kind="embedding")
                await _check_inputs(chat, chain[0])
            chain = await self.accounts.admit(caller, chain, chat, meter)
            events = self.router.stream(chat, chain, meter)
            if not chat.stream:
                reply = Reply()
                if meter is not None:
                    meter.reply = reply  # read when the meter finishes: no per-event work
                await self._departures.unless_client_leaves(request, accumulate(events, reply))
                answer = frontend.reply_body(reply, chat)
                if (finish := getattr(frontend, "finish", None)) is not None:
                    await finish(chat, answer)
                headers = ids(rid, reply.deployment, reply.attempts, reply.dropped_tools)
                headers.update(frontend.reply_headers(chat))
                if meter is not None:
                    headers.update(meter.reply_headers(reply.usage))
                    meter.finish(200)
                if logged is not None:
                    logged.add(rid, arrived, caller.key_id, body, answer)
                return JsonReply(answer, headers)
            if meter is not None:
                events = meter.watch(events)
            # Wait for the upstream to accept before sending 200, so that an early
            # failure still gets its real status.
            try:
                start = await anext(events)
                assert isinstance(start, Start)
                frames = stream(frontend.stream_encoder(start, chat), events)
                if logged is not None:
                    frames = logged.tee(frames, rid, arrived, caller.key_id, body)
                headers = {
                    **_SSE_HEADERS,
                    **ids(rid, start.deployment, start.attempts, start.dropped_tools),
                }
                headers.update(frontend.reply_headers(chat))
                if meter is not None:
                    headers.update(meter.reply_headers(None))
            except BaseException:
                await events.aclose()
                raise
            return EventStream(frames, headers, events)
        except GatewayError as error:
            response, kind = error_reply(frontend, error, rid), str(error.kind)
            message: str | None = error.message
        except ClientDisconnect:  # the client left while sending its body, or waiting
            response, kind = Response(status_code=CLIENT_LEFT), "client_disconnected"
            message = "the client closed the connection"
        except Exception:
            log.exception("request %s failed", rid)
            internal = GatewayError("internal", "internal error")
            response, kind = error_reply(frontend, internal, rid), "internal"
            message = internal.message
        if meter is not None:
            meter.finish(response.status_code, kind, message)
        if logged is not None and body:
            logged.add(rid, arrived, caller.key_id, body, bytes(response.body))
        return response

    async def count_tokens(
        self,
        request: Request,
        errors: Frontend | ErrorShape,
        parse: Callable[[bytes, Mapping[str, str]], ChatRequest],
        field: str,
    ) -> Answer:
        """A request's prompt tokens, counted offline, as ``{field: n}``."""
        rid = request_id(request)
        try:
            await self.authenticate(request)
            chat = parse(await self.read_body(request), request.headers)
            self.catalog.resolve(chat.model)
            counted = await tokens.count_request_async(chat)
        except GatewayError as error:
            return error_reply(errors, error, rid)
        except ClientDisconnect:
            return Response(status_code=CLIENT_LEFT)
        return json_reply(orjson.dumps({field: counted}), rid)


async def _check_inputs(chat: ChatRequest, entry: ModelEntry) -> None:
    """An embeddings request within what its model takes: each input's tokens, and the
    vector's length."""
    assert chat.embed is not None
    wanted, most = chat.embed.dimensions, entry.dimensions
    if wanted is not None and most is not None and wanted > most:
        raise GatewayError("invalid_request", f"dimensions: model {entry.id} gives at most "
                           f"{most}", param="dimensions")  # fmt: skip
    limit = entry.max_input_tokens
    if limit is None:
        return
    for index, item in enumerate(chat.embed.items):
        size = len(item) if isinstance(item, list) else await tokens.count_text_async(item)
        if size > limit:
            raise GatewayError(
                "invalid_request",
                f"input[{index}] has {size} tokens; model {entry.id} takes at most {limit}",
                param="input",
            )


T = TypeVar("T")
_LEFT = "lmgate: the client left"
# A non-stream reply that takes longer than this gets a watcher, which cancels it
# (and so the upstream request) when the client leaves; quicker replies finish
# before a watcher would be worth its task.
_WATCH_AFTER = 0.5


class _Departures:
    """Non-stream requests whose clients may leave unnoticed (no byte is sent until the
    reply is whole): one that waits over ``_WATCH_AFTER`` gets a watcher, which cancels
    it (and so its upstream request) when its client leaves. One timer serves every
    request; a timer each cost a few percent of the CPU."""

    def __init__(self) -> None:
        # By arrival, so by when each is due a watcher: (that time, its request).
        self._waiting: dict[asyncio.Task[Any], tuple[float, Request]] = {}
        self._watchers: dict[asyncio.Task[Any], asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def unless_client_leaves(self, request: Request, work: Awaitable[T]) -> T:
        """``await work``, or ``ClientDisconnect`` once the client has gone."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._waiting[task] = (loop.time() + _WATCH_AFTER, request)
        if self._timer is None:
            self._timer = loop.call_later(_WATCH_AFTER, self._watch, loop)
        try:
            return await work
        except asyncio.CancelledError as cancel:
            if cancel.args != (_LEFT,):
                raise
            task.uncancel()
            raise ClientDisconnect() from None
        finally:
            if self._waiting.pop(task, None) is None:
                self._watchers.pop(task).cancel()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watchers for the requests due one; the timer again for the next."""
        self._timer = None
        now, waiting = loop.time(), self._waiting
        while waiting:
            task = next(iter(waiting))
            due, request = waiting[task]
            if due > now + TIMER_SLACK:
                self._timer = loop.call_at(due, self._watch, loop)
                return
            del waiting[task]
            self._watchers[task] = loop.create_task(_on_disconnect(request, task))


async def _on_disconnect(request: Request, task: asyncio.Task[Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    task.cancel(_LEFT)


# Headers agent clients send with every request of one session, by precedence: Claude
# Code's, then Codex's (and other clients' common names).
_SESSION_HEADERS = {
    b"x-claude-code-session-id": 0,
    b"session_id": 1,
    b"x-session-id": 2,
    b"conversation_id": 3,
}


def session_of(headers: Headers, chat: ChatRequest) -> str | None:
    """The agent session a request belongs to: a session header, else the client's
    prompt_cache_key, else its user (Anthropic's metadata.user_id, OpenAI's user)."""
    found: tuple[int, bytes] | None = None
    for name, value in headers.raw:  # one pass over the headers, not one per name
        rank = _SESSION_HEADERS.get(name)
        if rank is not None and value and (found is None or rank < found[0]):
            found = (rank, value)
    if found is not None:
        return found[1][:256].decode("latin-1")
    given = chat.prompt_cache_key or chat.user
    return given[:256] if given else None
