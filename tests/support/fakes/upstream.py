"""A real HTTP server speaking the OpenAI-compatible chat protocol, scripted per test.

It runs on a loopback port in its own thread and event loop, records every
request it receives, and answers each one with the next scripted behaviour
(canned JSON, canned SSE stream, error, delay, mid-stream disconnect) — or,
with nothing scripted, with a small deterministic completion.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: tuple[str, int]  # the client's address: one port for many requests = keep-alive
    raw: bytes = b""  # the body as it came (what a signature covers)
    target: str = ""  # the request line's path and query, still percent-encoded


@dataclass
class Script:
    """One scripted answer. ``chunks`` makes it an SSE stream."""

    status: int = 200
    json: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[Any] | None = None  # dicts become `data: {json}`, bytes are sent as they are
    done: bool = True  # send `data: [DONE]` after the chunks
    delay: float = 0.0  # before the response headers
    chunk_delay: float = 0.0
    end_delay: float = 0.0  # between the last event and the end of the body
    stall_after: int | None = None  # stop sending (but keep the connection) after N chunks
    disconnect_after: int | None = None  # drop the connection after N chunks


def chunk(
    model: str = "up-model", usage: dict[str, Any] | None = None, **choice: Any
) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice (``delta=…``, ``finish_reason=…``)."""
    body: dict[str, Any] = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None, **choice}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def text_stream(
    pieces: list[str], finish: str = "stop", usage: dict[str, Any] | None = None
) -> list[Any]:
    out: list[Any] = [chunk(delta={"role": "assistant", "content": ""})]
    out += [chunk(delta={"content": piece}) for piece in pieces]
    out.append(chunk(delta={"content": ""}, finish_reason=finish, usage=usage))
    return out


def completion(
    content: str | None = "Hello!",
    usage: dict[str, Any] | None = None,
    finish_reason: str = "stop",
    **message: Any,
) -> dict[str, Any]:
    return {
        "id": "up-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Recorded] = []
        self.scripts: collections.deque[Script] = collections.deque()
        self.cancelled = 0  # streams the client abandoned before their end
        # Picks the answer from the request, for concurrent tests where the queue's
        # order cannot follow the requests', and for scripted agents (None: use the queue).
        self.route: Callable[[Recorded], Script] | None = None
        self.completed = 0  # responses fully written
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._socket = socket.socket()
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._tls = tls
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None

    # ---- test-facing -----------------------------------------------------------

    def push(self, *scripts: Script) -> None:
        with self._lock:
            self.scripts.extend(scripts)

    def reset(self) -> None:
        with self._lock:
            self.scripts.clear()
            self.requests.clear()
            self.cancelled = 0
            self.completed = 0
            self.route = None

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def start(self) -> FakeUpstream:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # ---- server ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handlers are cancelled when their client goes away, as a real server's work would be.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1,
        )
        self._loop.run_until_complete(self._runner.setup())
        site = web.SockSite(self._runner, self._socket, ssl_context=self._tls)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        recorded = Recorded(
            request.method, request.path, dict(request.headers), body, peer, raw, request.raw_path
        )
        with self._lock:
            self.requests.append(recorded)
            script = self.scripts.popleft() if self.scripts else None
        if script is None and self.route is not None:
            script = self.route(recorded)
        if script is None:
            script = _default_script(body, request.path)
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.chunks is None:
            data = script.raw if script.raw is not None else orjson.dumps(script.json)
            response = web.Response(
                body=data,
                status=script.status,
                content_type=None,
                headers={"Content-Type": script.content_type, **script.headers},
            )
            self.completed += 1
            return response
        response = web.StreamResponse(
            status=script.status,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **script.headers,
            },
        )
        try:
            await response.prepare(request)
            for index, item in enumerate(script.chunks):
                if script.disconnect_after is not None and index >= script.disconnect_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if script.stall_after is not None and index >= script.stall_after:
                    await asyncio.sleep(3600)
                if script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
                data = item if isinstance(item, bytes) else b"data: " + orjson.dumps(item) + b"\n\n"
                await response.write(data)
            if script.done:
                await response.write(b"data: [DONE]\n\n")
            if script.end_delay:
                await asyncio.sleep(script.end_delay)
            await response.write_eof()
            self.completed += 1
        except ConnectionResetError:
            self.cancelled += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return response


def anthropic_message(
    content: list[dict[str, Any]] | None = None,
    stop_reason: str = "end_turn",
    usage: dict[str, Any] | None = None,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    return {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": content if content is not None else [{"type": "text", "text": "Hello!"}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage or {"input_tokens": 11, "output_tokens": 2},
    }


def anthropic_events(*events: dict[str, Any]) -> list[Any]:
    """Anthropic SSE frames (``event: type`` + ``data``) for a Script's chunks."""
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    ]


def anthropic_text_stream(
    pieces: list[str], stop_reason: str = "end_turn", usage: dict[str, Any] | None = None
) -> Script:
    start = anthropic_message([], usage={"input_tokens": 11, "output_tokens": 1})
    start["stop_reason"] = None
    events = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage or {"output_tokens": len(pieces)},
        },
        {"type": "message_stop"},
    ]
    return Script(chunks=anthropic_events(*events), done=False)


def _default_script(body: Any, path: str = "") -> Script:
    if path.endswith("/messages"):
        if isinstance(body, dict) and body.get("stream"):
            return anthropic_text_stream(["Hello", "!"])
        return Script(json=anthropic_message())
    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    if isinstance(body, dict) and body.get("stream"):
        with_usage = (body.get("stream_options") or {}).get("include_usage")
        chunks = text_stream(["Hello", "!"])
        if with_usage:
            chunks.append({**chunk(), "choices": [], "usage": usage})
        return Script(chunks=chunks)
    return Script(json=completion("Hello!", usage))
