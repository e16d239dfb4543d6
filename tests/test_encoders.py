"""Each protocol's stream encoder, fed canonical events through the one stream loop
(``frontends.base.stream``), with no server: what a client reads, frame by frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from lmgate.canonical import (
    BATCH_BEGINS,
    BATCH_ENDS,
    ChatRequest,
    Event,
    Finish,
    Heartbeat,
    Message,
    ReasoningDelta,
    Signature,
    Start,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from lmgate.errors import GatewayError
from lmgate.frontends import anthropic_messages, openai_chat, responses_output
from lmgate.frontends.base import StreamEncoder, stream
from lmgate.frontends.gemini import GeminiCall
from lmgate.providers.sse import SSEDecoder

START = Start("m", "up/m", 1)
GEMINI_SIGNED = Signature("gemini", "c2ln")
REPLY: list[Event] = [
    ReasoningDelta("hmm", None),
    ReasoningDelta("", GEMINI_SIGNED),
    TextDelta("Hel"),
    Heartbeat(),
    TextDelta("lo"),
    ToolCallStart(0, "call_1", "look"),
    ToolCallDelta(0, '{"q":'),
    ToolCallDelta(0, '"x"}'),
    Finish("tool_calls"),
    Usage(7, 3),
]


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])], **fields)


async def events(items: list[Event], fail: GatewayError | None = None) -> AsyncGenerator[Event]:
    for item in items:
        yield item
    if fail is not None:
        raise fail


def run(encoder: StreamEncoder, items: list[Event], fail: GatewayError | None = None) -> bytes:
    async def collect() -> bytes:
        return b"".join([frame async for frame in stream(encoder, events(items, fail))])

    return asyncio.run(collect())


def sse(raw: bytes) -> list[tuple[str | None, Any]]:
    decoder = SSEDecoder()
    found = [*decoder.feed(raw), *decoder.flush()]
    return [
        (
            name.decode() if name else None,
            data.decode() if data == b"[DONE]" else orjson.loads(data),
        )
        for name, data in found
    ]


def test_openai_chunks() -> None:
    raw = run(openai_chat.stream_encoder(START, request(include_usage=True)), REPLY)
    assert b": keep-alive\n\n" in raw  # the heartbeat, as an SSE comment
    frames = [data for _, data in sse(raw)]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [f["choices"][0]["delta"] for f in frames[1:-1] if f["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "Hello"
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == ["hmm"]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"] == "call_1" and calls[0]["function"]["name"] == "look"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"q":"x"}'
    assert frames[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert frames[-2]["choices"] == [] and frames[-2]["usage"]["total_tokens"] == 10
    assert frames[-1] == "[DONE]"
    # Without include_usage, no usage chunk.
    plain = [d for _, d in sse(run(openai_chat.stream_encoder(START, request()), REPLY))]
    assert all("usage" not in f for f in plain if isinstance(f, dict))


def test_openai_failure_mid_stream_is_an_error_payload_and_no_done() -> None:
    boom = GatewayError("upstream", "upstream went away")
    frames = [d for _, d in sse(run(openai_chat.stream_encoder(START, request()), REPLY[:3], boom))]
    assert frames[-1]["error"]["message"] == "upstream went away"
    assert "[DONE]" not in frames


def frames_of(items: list[Event], fail: GatewayError | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        encoder = openai_chat.stream_encoder(START, request())
        return [frame async for frame in stream(encoder, events(items, fail))]

    return asyncio.run(collect())


def test_a_batch_of_events_leaves_as_one_frame_and_others_each_at_once() -> None:
    """Events that came in one upstream read go as one ASGI message; events outside a
    batch (a paced stream's) are not held for the next."""

    def contents(frame: bytes) -> list[str]:
        return [d["choices"][0]["delta"].get("content", "") for _, d in sse(frame) if d != "[DONE]"]

    text = [TextDelta("a"), TextDelta("b"), TextDelta("c")]
    assert len(frames_of(text)) == 1 + 3 + 1  # the role chunk, one per delta, the end
    batched = frames_of([BATCH_BEGINS, *text, BATCH_ENDS, TextDelta("d")])
    assert [contents(frame) for frame in batched[1:3]] == [["a", "b", "c"], ["d"]]
    assert len(batched) == 4
    # A batch the stream ends in (the reply's last read) goes with the end.
    ending = frames_of([BATCH_BEGINS, *text])
    assert len(ending) == 2 and contents(ending[1]) == ["a", "b", "c"]
    assert ending[1].endswith(b"data: [DONE]\n\n")
    # A failure within a batch: its frames first, then the error.
    boom = GatewayError("upstream", "upstream went away")
    failed = frames_of([BATCH_BEGINS, *text], boom)
    assert len(failed) == 2 and [d.get("error", {}).get("message") for _, d in sse(failed[1])] == [
        None,
        None,
        None,
        "upstream went away",
    ]


def test_anthropic_blocks_in_order() -> None:
    encoder = anthropic_messages.stream_encoder(START, request(thinking=True))
    frames = sse(run(encoder, REPLY))
    names = [name for name, _ in frames]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names
    starts = [d["content_block"]["type"] for n, d in frames if n == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    stops = [d["index"] for n, d in frames if n == "content_block_stop"]
    assert stops == [0, 1, 2]
    signature = [
        d["delta"]["signature"]
        for n, d in frames
        if n == "content_block_delta" and d["delta"]["type"] == "signature_delta"
    ]
    assert signature == ["gemini:c2ln"]  # marked with its dialect, to come back whole
    assert Signature.from_wire(signature[0]) == GEMINI_SIGNED
    final = frames[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use" and final["usage"]["output_tokens"] == 3


def test_anthropic_hides_thinking_unless_asked() -> None:
    frames = sse(run(anthropic_messages.stream_encoder(START, request()), REPLY))
    starts = [d["content_block"]["type"] for n, d in frames if n == "content_block_start"]
    assert starts == ["text", "tool_use"]


@pytest.mark.parametrize("sse_mode", [True, False], ids=["sse", "json-array"])
def test_gemini_chunks(sse_mode: bool) -> None:
    encoder = GeminiCall("m", True, sse_mode).stream_encoder(START, request())
    raw = run(encoder, REPLY)
    chunks = [d for _, d in sse(raw)] if sse_mode else orjson.loads(raw)
    texts = [
        p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if "text" in p
    ]
    assert "".join(texts) == "Hello"
    last = chunks[-1]["candidates"][0]
    call = last["content"]["parts"][0]
    assert call["functionCall"] == {"id": "call_1", "name": "look", "args": {"q": "x"}}
    assert call["thoughtSignature"] == "c2ln"  # Gemini's own, on the call it came with
    assert last["finishReason"] == "STOP"


def test_gemini_never_gets_another_dialect_s_signature() -> None:
    anthropic_signed = [ReasoningDelta("", Signature("anthropic", "abc")), TextDelta("x")]
    raw = run(GeminiCall("m", True, True).stream_encoder(START, request()), anthropic_signed)
    assert b"thoughtSignature" not in raw


def test_gemini_json_array_stays_whole_on_failure() -> None:
    boom = GatewayError("timeout", "too slow")
    raw = run(GeminiCall("m", True, False).stream_encoder(START, request()), REPLY[:3], boom)
    assert orjson.loads(raw)[-1]["error"]["message"] == "too slow"


def test_responses_events_are_numbered_and_complete() -> None:
    frames = sse(run(responses_output.stream_encoder(START, request()), REPLY))
    names = [name for name, _ in frames]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert [d["sequence_number"] for _, d in frames] == list(range(len(frames)))
    done = frames[-1][1]["response"]
    kinds = [item["type"] for item in done["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    assert done["output"][2]["arguments"] == '{"q":"x"}'


def test_responses_failure_is_response_failed() -> None:
    boom = GatewayError("upstream", "gone")
    frames = sse(run(responses_output.stream_encoder(START, request()), REPLY[:3], boom))
    assert frames[-1][0] == "response.failed"
    assert frames[-1][1]["response"]["error"]["message"] == "gone"


@pytest.mark.parametrize(
    "signature",
    [Signature("anthropic", "EqQBCkgIAR"), GEMINI_SIGNED, Signature("openai-responses", "gAAA")],
)
def test_signatures_survive_a_client_round_trip(signature: Signature) -> None:
    wire = signature.wire()
    assert Signature.from_wire(wire) == signature
    assert (wire == signature.value) == (signature.dialect == "anthropic")
