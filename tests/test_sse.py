from __future__ import annotations

from lmgate.sse import SSEDecoder

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


def test_whole_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(STREAM) + decoder.flush() == EXPECTED


def test_split_at_every_byte() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = SSEDecoder()
        out = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) + decoder.flush()
        assert out == EXPECTED, cut


def test_byte_by_byte() -> None:
    decoder = SSEDecoder()
    out = []
    for index in range(len(STREAM)):
        out += decoder.feed(STREAM[index : index + 1])
    assert out + decoder.flush() == EXPECTED
