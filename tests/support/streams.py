"""Streams on the wire: a streamed chat request as bytes, a large upstream stream."""

from __future__ import annotations

import orjson

from tests.support.fakes.upstream import Script, chunk


def request_bytes(model: str, key: str = "") -> bytes:
    """A streamed chat request, as bytes on the wire."""
    messages = [{"role": "user", "content": "hi"}]
    body = orjson.dumps({"model": model, "stream": True, "messages": messages})
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


KB_CHUNK = b"data: " + orjson.dumps(chunk(delta={"content": "x" * 1000})) + b"\n\n"


def big_stream(chunks: int = 40_000) -> Script:
    """About ``chunks`` KB of SSE, sent as fast as the upstream can."""
    first = chunk(delta={"role": "assistant", "content": ""})
    return Script(chunks=[first, *[KB_CHUNK] * chunks, chunk(delta={}, finish_reason="stop")])
