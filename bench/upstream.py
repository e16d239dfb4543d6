"""A deliberately minimal OpenAI-compatible upstream for benchmarks (not for tests).
It also answers as Bedrock's Converse (``/model/…``) and as Gemini on Vertex
(``:generateContent``), with the same twenty words, for bench/clouds.py; Azure's paths
get the OpenAI replies.

Raw asyncio on uvloop, canned replies: it must never be the bottleneck.
Usage: python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.fakes.bedrock import event  # the event-stream framing

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


def _reply(content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
    return head % (content_type, len(body)) + body


def _chunked(content_type: bytes, pieces: list[bytes]) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % content_type
        + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        + b"0\r\n\r\n"
    )


_CONVERSE_USAGE = {"inputTokens": 12, "outputTokens": CHUNKS, "totalTokens": 12 + CHUNKS}
CONVERSE_REPLY = _reply(b"application/json", orjson.dumps({
    "output": {"message": {"role": "assistant", "content": [{"text": "word " * CHUNKS}]}},
    "stopReason": "end_turn", "usage": _CONVERSE_USAGE, "metrics": {"latencyMs": 1},
}))  # fmt: skip
CONVERSE_STREAM_REPLY = _chunked(b"application/vnd.amazon.eventstream", [
    event("messageStart", {"role": "assistant"}),
    *[event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "word "}})
      for _ in range(CHUNKS)],
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("messageStop", {"stopReason": "end_turn"}),
    event("metadata", {"usage": _CONVERSE_USAGE, "metrics": {"latencyMs": 1}}),
])  # fmt: skip
_GEMINI_USAGE = {"promptTokenCount": 12, "candidatesTokenCount": CHUNKS,
                 "totalTokenCount": 12 + CHUNKS}  # fmt: skip


def _gemini(text: str, finish: bool) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": _GEMINI_USAGE}


GEMINI_REPLY = _reply(b"application/json", orjson.dumps(_gemini("word " * CHUNKS, True)))
GEMINI_STREAM_REPLY = _chunked(b"text/event-stream", [
    b"data: " + orjson.dumps(_gemini("word ", number == CHUNKS - 1)) + b"\r\n\r\n"
    for number in range(CHUNKS)
])  # fmt: skip


# Embeddings (bench/embeddings.py): EMBED_INPUTS vectors of EMBED_SIZE, what
# text-embedding-3-small returns, for a request of that many inputs.
EMBED_INPUTS, EMBED_SIZE = 8, 1536
EMBED_REPLY = _reply(b"application/json", orjson.dumps({
    "object": "list", "model": "bench-embed",
    "data": [{"object": "embedding", "index": i, "embedding": [0.0123456789] * EMBED_SIZE}
             for i in range(EMBED_INPUTS)],
    "usage": {"prompt_tokens": 8 * EMBED_INPUTS, "total_tokens": 8 * EMBED_INPUTS},
}))  # fmt: skip


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
            line = self.buffer[: self.buffer.find(b"\r\n")]
            body = self.buffer[end + 4 : end + 4 + size]
            self.buffer = self.buffer[end + 4 + size :]
            if b"/embeddings " in line:
                self.transport.write(EMBED_REPLY)
            elif b" /model/" in line:  # Bedrock's Converse
                stream = b"/converse-stream " in line
                self.transport.write(CONVERSE_STREAM_REPLY if stream else CONVERSE_REPLY)
            elif b"GenerateContent" in line or b"generateContent" in line:  # Vertex's Gemini
                stream = b":streamGenerateContent" in line
                self.transport.write(GEMINI_STREAM_REPLY if stream else GEMINI_REPLY)
            elif b'"bench-think"' in body:
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
