from __future__ import annotations

import pytest

from lmgate.providers.sse import SSEDecoder

STREAM = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b'data:{"b": 2}\n\n'
    b"event: custom\ndata: line one\ndata: line two\n\n"
    b"\n\n"
    b"id: 7\nretry: 100\n"
    b'data: {"c": "\xe4\xbd\xa0"}\n\n'
    b"data: [DONE]"  # no blank line at the very end
)
EXPECTED = [
    (None, b'{"a": 1}'),
    (None, b'{"b": 2}'),
    (b"custom", b"line one\nline two"),
    (None, b'{"c": "\xe4\xbd\xa0"}'),
    (None, b"[DONE]"),
]


# With "\n" line ends only (what nearly every upstream sends) the decoder takes whole
# events at once; with a "\r" anywhere, line by line: both must agree everywhere.
STREAMS = pytest.mark.parametrize("stream", [STREAM, STREAM.replace(b"\r\n", b"\n")])


@STREAMS
def test_whole_stream(stream: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(stream) + decoder.flush() == EXPECTED


@STREAMS
def test_split_at_every_byte(stream: bytes) -> None:
    for cut in range(len(stream) + 1):
        decoder = SSEDecoder()
        out = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) + decoder.flush()
        assert out == EXPECTED, cut


@STREAMS
def test_byte_by_byte(stream: bytes) -> None:
    decoder = SSEDecoder()
    out = []
    for index in range(len(stream)):
        out += decoder.feed(stream[index : index + 1])
    assert out + decoder.flush() == EXPECTED


def test_split_in_three_everywhere() -> None:
    stream = STREAM.replace(b"\r\n", b"\n")
    for first in range(0, len(stream) + 1, 3):
        for second in range(first, len(stream) + 1, 5):
            decoder = SSEDecoder()
            parts = (stream[:first], stream[first:second], stream[second:])
            out = [event for part in parts for event in decoder.feed(part)] + decoder.flush()
            assert out == EXPECTED, (first, second)
