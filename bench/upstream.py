"""A deliberately minimal OpenAI-compatible upstream for benchmarks (not for tests).

Raw asyncio on uvloop, canned replies: it must never be the bottleneck.
Usage: python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import re
import sys

import orjson
import uvloop

CHUNKS = 20


def _chunk(
    delta: dict[str, object], finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    body: dict[str, object] = {
        "id": "bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
COMPLETION = orjson.dumps(
    {
        "id": "bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "word " * CHUNKS},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)
JSON_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(COMPLETION)).encode()
    + b"\r\n\r\n"
    + COMPLETION
)


def _sse_reply(contents: list[str]) -> bytes:
    """A whole chunked HTTP response: one SSE chunk per content piece, then finish and [DONE]."""
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": content}) for content in contents]
    events += [_chunk({}, "stop", USAGE), b"data: [DONE]\n\n"]
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
        + b"0\r\n\r\n"
    )


STREAM_REPLY = _sse_reply(["word "] * CHUNKS)
# A thinking model that writes its reasoning inline: 200 content chunks in all.
THINK_WORDS = 99
THINK_REPLY = _sse_reply(
    ["<think>", *["thought "] * (200 - THINK_WORDS - 2), "</think>", *["word "] * THINK_WORDS]
)
# A paced stream, like a real model's: the first chunk after PACED_FIRST seconds, then
# one every PACED_EVERY (the same 20 content chunks as STREAM_REPLY).
PACED_FIRST, PACED_EVERY = 0.020, 0.005
_PACED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_PACED_EVENTS = [
    _chunk({"role": "assistant", "content": ""}),
    *[_chunk({"content": "word "}) for _ in range(CHUNKS)],
    _chunk({}, "stop", USAGE) + b"data: [DONE]\n\n",
]
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _LENGTH.search(self.buffer, 0, end + 2)
            size = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + size:
                return
            body = self.buffer[end + 4 : end + 4 + size]
            self.buffer = self.buffer[end + 4 + size :]
            if b'"bench-think"' in body:
                self.transport.write(THINK_REPLY)
            elif b'"bench-paced"' in body:
                self.transport.write(_PACED_HEAD)
                loop = asyncio.get_running_loop()
                for number, event in enumerate(_PACED_EVENTS):
                    frame = b"%x\r\n%s\r\n" % (len(event), event)
                    if number == len(_PACED_EVENTS) - 1:
                        frame += b"0\r\n\r\n"
                    loop.call_later(PACED_FIRST + number * PACED_EVERY, self._send, frame)
            else:
                self.transport.write(STREAM_REPLY if b'"stream":true' in body else JSON_REPLY)

    def _send(self, frame: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Upstream, "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
