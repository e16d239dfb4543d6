"""lmgate's event-stream decoder against botocore's (the AWS SDKs' own): the same
frames from any bytes split anyhow, every header type skipped right, and whatever
botocore refuses (a CRC that does not match, a length that lies) refused too."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer, ParserError
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgate.errors import GatewayError
from lmgate.providers.eventstream import EventStreamDecoder

# (type byte, value) for each header type botocore reads.
VALUES = st.one_of(
    st.tuples(st.just(0), st.just(b"")), st.tuples(st.just(1), st.just(b"")),
    st.tuples(st.just(2), st.binary(min_size=1, max_size=1)),
    st.tuples(st.just(3), st.binary(min_size=2, max_size=2)),
    st.tuples(st.just(4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just(5), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(6), st.binary(max_size=40).map(lambda b: struct.pack(">H", len(b)) + b)),
    st.tuples(st.just(7), st.text(max_size=30).map(
        lambda t: struct.pack(">H", len(t.encode())) + t.encode())),
    st.tuples(st.just(8), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(9), st.binary(min_size=16, max_size=16)),
)  # fmt: skip
STRINGS = st.sampled_from(["chunk", "messageStop", "exception", "event", "error", "x"]).map(
    lambda t: (7, struct.pack(">H", len(t)) + t.encode())
)
# The headers that name a frame are strings (as AWS sends them); any other may be any type.
HEADER = st.one_of(
    st.tuples(st.sampled_from([":event-type", ":message-type", ":exception-type"]), STRINGS),
    st.tuples(st.sampled_from([":content-type", "x-other", "x-more"]), VALUES),
)


def encode(headers: list[tuple[str, tuple[int, bytes]]], payload: bytes) -> bytes:
    head = b"".join(
        bytes([len(name)]) + name.encode() + bytes([kind]) + value
        for name, (kind, value) in headers
    )
    prelude = struct.pack(">II", 16 + len(head) + len(payload), len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def botocore_frames(data: bytes) -> list[tuple[str, bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    out = []
    for message in buffer:
        headers: dict[str, Any] = message.headers
        if headers.get(":message-type") in ("exception", "error"):
            kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
            out.append(("!" + str(kind), message.payload))
        else:
            out.append((str(headers.get(":event-type", "")), message.payload))
    return out


def ours(data: bytes, cuts: list[int]) -> list[tuple[str, bytes]]:
    decoder = EventStreamDecoder()
    out: list[tuple[str, bytes]] = []
    points = [*sorted({min(cut, len(data)) for cut in cuts}), len(data)]
    start = 0
    for point in points:
        out += decoder.feed(data[start:point])
        start = point
    out += decoder.flush()
    return out


FRAME = st.tuples(st.lists(HEADER, max_size=5), st.binary(max_size=200))


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAME, min_size=1, max_size=5), st.lists(st.integers(0, 2000), max_size=6))
def test_the_same_frames_as_botocore(frames: list[Any], cuts: list[int]) -> None:
    # botocore keeps the last of a repeated header; so do we: one of each name.
    data = b"".join(encode(list(dict(headers).items()), payload) for headers, payload in frames)
    assert ours(data, cuts) == botocore_frames(data)


@settings(max_examples=200, deadline=None)
@given(FRAME, st.integers(0, 10_000), st.integers(1, 255))
def test_a_corrupted_frame_is_refused_as_botocore_refuses_it(
    frame: Any, where: int, flip: int
) -> None:
    headers, payload = frame
    data = bytearray(encode(list(dict(headers).items()), payload))
    data[where % len(data)] ^= flip
    try:
        expected = botocore_frames(bytes(data))
    except ParserError:
        with pytest.raises(GatewayError, match="broken event-stream frame"):
            ours(bytes(data), [])
        return
    assert ours(bytes(data), []) == expected  # a flip botocore takes (it cannot tell)


def test_a_stream_that_ends_inside_a_frame() -> None:
    data = encode([(":event-type", (7, struct.pack(">H", 4) + b"ping"))], b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(data[:-3]) == []
    with pytest.raises(GatewayError, match="ended inside a frame"):
        decoder.flush()
