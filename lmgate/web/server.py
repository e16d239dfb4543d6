"""What lmgate adds to uvicorn at the connection level: bounds on what one client
can hold (time to send a request, time it may read nothing, how many connections
are open) and a streamed reply that stops as soon as its client is gone.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lmgate.clock import Alarm
from lmgate.config import ServerConfig
from lmgate.errors import GatewayError
from lmgate.frontends import openai_chat
from lmgate.frontends.base import error_reply
from lmgate.frontends.responses_socket import deny
from lmgate.ids import unique_hex
from lmgate.web.guard import Guard

log = logging.getLogger("lmgate")

_GONE = "lmgate: the client left"
# Descriptors kept for what is not a client connection: upstream pools, the store, logs.
_RESERVED_FDS = 256


def raise_fd_limit() -> int:
    """Raise the open-file limit to the hard limit; returns the soft limit now in force.
    Every client and upstream connection is a descriptor, and the usual soft limit
    (1,024) is reached long before the machine's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d: %s", soft, error)
    return soft


def connection_cap(server: ServerConfig) -> int:
    """``server.max_connections``, within what the descriptor limit allows."""
    return max(1, min(server.max_connections, raise_fd_limit() - _RESERVED_FDS))


class EventStream:
    """A streamed (SSE) reply as a plain ASGI callable.

    A watcher task cancels the stream the moment the client disconnects, wherever
    it is (reading the upstream, or blocked on a client that stopped reading), so
    the upstream request is cut at once and the record says 499. Starlette's
    StreamingResponse cancels through an anyio scope, which does not cancel a task
    whose wait has already completed: behind an upstream faster than the gateway
    that is every wait, and 40 MB replies were read to the end for a client long gone.
    """

    __slots__ = ("_events", "_frames", "_headers", "_open")

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        events: AsyncGenerator[Any, None] | None = None,
    ) -> None:
        self._frames = frames
        self._events = events  # what ``frames`` reads, already started: closed here too
        given = {name.lower(): value for name, value in headers.items()}
        given.setdefault("content-type", "text/event-stream; charset=utf-8")
        self._headers = [(name.encode(), value.encode()) for name, value in given.items()]
        self._open = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch(receive, task))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            async for frame in self._frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            self._open = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError as cancel:
            if cancel.args != (_GONE,):
                raise
            task.uncancel()
        finally:
            self._open = False
            watcher.cancel()
            # Ends the frames where they wait (the usage record is made there), also
            # when the stream was cancelled while blocked on sending; and what they
            # read, which closing frames that never started would not reach.
            await self._frames.aclose()
            if self._events is not None:
                await self._events.aclose()

    async def _watch(self, receive: Any, task: asyncio.Task[Any]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self._open:
            task.cancel(_GONE)


class HotRoutes:
    """The POST routes nearly every request takes, found ahead of Starlette, whose
    router tries each of some forty route patterns in turn and whose middleware wraps
    every message sent; every other request goes on to ``app``. ``routes`` are exact
    paths; ``targets`` are path prefixes whose rest is a path parameter (Gemini's
    ``models/{model}:{action}``), with its name. The handlers turn their own errors
    into replies, as they do behind Starlette."""

    __slots__ = ("app", "guard", "routes", "state", "targets")

    def __init__(
        self,
        app: Any,
        routes: Mapping[str, Callable[[Request], Awaitable[Any]]],
        targets: Sequence[tuple[str, str, Callable[[Request], Awaitable[Any]]]],
        guard: Guard,
    ) -> None:
        self.app = app
        self.guard = guard  # first: what a web page may not do
        self.routes = routes
        self.targets = tuple(targets)
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (screened := self.guard.screen(scope)) is not None:
            await screened(scope, receive, send, self._route)
            return
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _one_line_failure(send, self.state))
            return
        if scope["type"] == "websocket":
            refused, _ = self.guard.refusal(scope)
            if refused is not None:  # a page elsewhere may not open a socket here either
                error = GatewayError("permission", refused, code="origin_not_allowed")
                answer = error_reply(openai_chat, error, unique_hex())
                await deny(WebSocket(scope, receive, send), answer)
                return
        await self._route(scope, receive, send)

    async def _route(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            handler = self.routes.get(path)
            if handler is None:
                for prefix, name, by_target in self.targets:
                    if path.startswith(prefix):
                        scope["path_params"] = {name: path[len(prefix) :]}
                        handler = by_target
                        break
            if handler is not None:
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _one_line_failure(send: Any, state: Any) -> Any:
    """A start-up failure told in one line (the error: what is wrong is in it, as the
    app's lifespan put it in ``state.failure``), not a traceback; the traceback goes to
    the DEBUG log."""

    async def told(message: Any) -> None:
        if message["type"] == "lifespan.startup.failed" and message.get("message"):
            log.debug("start-up failed:\n%s", message["message"])
            failure = getattr(state, "failure", None) or message["message"].strip()
            message = {**message, "message": f"lmgate cannot start: {failure}"}
        await send(message)

    return told


def _timeout_reply(message: str) -> bytes:
    # Both the OpenAI and the Anthropic SDKs read their message out of this shape.
    body = orjson.dumps(
        {"type": "error", "error": {"type": "timeout_error", "code": "timeout", "message": message}}
    )
    head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    return head + b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body


_BUSY_BODY = orjson.dumps(
    {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "code": "too_many_connections",
            "message": "the gateway has too many open connections (server.max_connections)",
        },
    }
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_BUSY_BODY) + _BUSY_BODY
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the bounds it lacks (``server.timeouts``):

    - ``head``: from a connection's first byte (or its opening) to the end of the
      request's headers; slowloris and connections that never send get a 408.
    - ``body``: from the end of the headers to the end of the body; a 408.
    - ``write``: a client that takes nothing from a full send buffer for this long is
      disconnected (its stream then ends as a 499, and its memory is given back).
    - ``keep_alive``: idle time between requests.
    - ``server.max_connections``: beyond it a new connection gets a 503 at once.

    And a lingering close, as nginx does: a connection closed after an early answer
    (a 413 for too large a body) while the client is still sending is half-closed,
    and what the client still sends is read and dropped for up to ``_LINGER`` seconds,
    so that it reads the answer rather than a reset.

    The settings come from the app's lifespan state (``client_limits``).
    """

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits: ClientLimits = app_state.get("client_limits") or ClientLimits(ServerConfig())
        self.limits = limits
        # The read deadline of the moment: a request's head or body, or the keep-alive.
        self._alarm = Alarm(self.loop, self._timed_out)
        self._phase = ""  # "head", "body" or "keep_alive": the deadline set
        self._writing: asyncio.TimerHandle | None = None
        self._body_open = False  # a request's body is still coming
        self._lingering: asyncio.TimerHandle | None = None
        self._drained = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = CorkedTransport(transport, self.loop, self._linger)
        super().connection_made(corked)  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self.limits.refused += 1
            if self.limits.refused in (1, 10, 100) or self.limits.refused % 1000 == 0:
                log.warning(
                    "refused a connection: %d open (server.max_connections %d); %d refused so far",
                    len(self.connections) - 1,
                    self.limits.max_connections,
                    self.limits.refused,
                )
            transport.write(_BUSY)
            transport.close()
            return
        self._arm("head")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "head" or not self._alarm.pending:  # not the connection's own
            self._arm("head")

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.parser.should_upgrade() and self._should_upgrade():
            self._alarm.close()
            super().on_headers_complete()  # a WebSocket: its own protocol takes over
            return
        self._body_open = True
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        self._disarm()
        self._body_open = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._lingering is None:
            super().data_received(data)
            return
        self._drained += len(data)  # after the answer: dropped
        if self._drained > _LINGER_BYTES:
            self._end_linger()

    def eof_received(self) -> None:
        if self._lingering is not None:
            self._end_linger()
            return
        super().eof_received()

    def _linger(self) -> bool:
        """The connection is being closed: linger (True) if the client is still
        sending a body the answer came before."""
        if self._lingering is not None:
            return True
        if not self._body_open or self.transport.is_closing():
            return False
        self._disarm()
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()  # the answer, then FIN: the client reads it whole
        self._lingering = self.loop.call_later(_LINGER, self._end_linger)
        return True

    def _end_linger(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        self._body_open = False
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writing is None:
            self._writing = self.loop.call_later(self.limits.write, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive: this connection's alarm, not a timer of its
        # own per response. A deadline still set (a body still coming, the head of a
        # pipelined request) stays.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._alarm.pending:
            self._arm("keep_alive")

    def connection_lost(self, exc: Exception | None) -> None:
        self._alarm.close()
        if self._lingering is not None:
            self._lingering.cancel()
        if self._writing is not None:
            self._writing.cancel()
            self._writing = None
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._phase = phase
        self._alarm.set(getattr(self.limits, phase))

    def _disarm(self) -> None:
        self._phase = ""
        self._alarm.clear()

    def _timed_out(self) -> None:
        part, self._phase = self._phase, ""
        if part == "keep_alive":
            self.timeout_keep_alive_handler()
            return
        if self.transport.is_closing():
            return
        seconds = getattr(self.limits, part)
        message = f"the request's {part} took over {seconds:g}s (server.timeouts.{part})"
        log.info("client %s: %s", _peer(self.client), message)
        cycle = self.cycle  # the request's, or (its head still coming) the one before
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(_timeout_reply(message))
        self._body_open = False  # too slow to linger for
        self.transport.close()

    def _write_timed_out(self) -> None:
        self._writing = None
        log.warning(
            "client %s read nothing for %gs (server.timeouts.write): disconnected",
            _peer(self.client),
            self.limits.write,
        )
        self.transport.abort()


_AT_ONCE = 65536  # bytes; as much as a transport buffers before it pauses its writer
# A lingering close reads and drops at most this long, and this much.
_LINGER = 2.0
_LINGER_BYTES = 64 * 2**20


class CorkedTransport:
    """A transport whose writes within one turn of the event loop leave as one.

    A stream's frames are sent one ASGI message at a time, and each was a ``send()``
    call: a third of the gateway's CPU in a stream whose upstream chunks arrive
    together (measured with py-spy). Here they are joined and written when the loop
    next turns, which is before it waits for anything, so no frame waits on another
    that is not ready. Past ``_AT_ONCE`` bytes they are written at once: a stream
    whose upstream data is all buffered runs a whole turn without waiting, and flow
    control (``pause_writing``, from the real transport's buffer) must see its output
    before the next send, or one slow client could hold a turn's worth of it.
    """

    __slots__ = ("_linger", "_loop", "_pending", "_size", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        linger: Callable[[], bool] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._linger = linger  # asked on close(): True if the protocol closes it later

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= _AT_ONCE:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        if self._linger is not None and self._linger():
            return
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, set_protocol…
        return getattr(self._transport, name)


class ClientLimits:
    """The bounds of ``GuardedProtocol``, from ``server``; shared by its connections."""

    __slots__ = ("body", "head", "keep_alive", "max_connections", "refused", "write")

    def __init__(self, server: ServerConfig, max_connections: int | None = None) -> None:
        timeouts = server.timeouts
        self.keep_alive, self.head = timeouts.keep_alive, timeouts.head
        self.body, self.write = timeouts.body, timeouts.write
        self.max_connections = max_connections or server.max_connections
        self.refused = 0


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
