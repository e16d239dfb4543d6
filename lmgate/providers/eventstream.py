"""AWS event-stream framing (``application/vnd.amazon.eventstream``), as Bedrock streams.

Each message: a 12-byte prelude (total length, headers length, the CRC32 of those
eight bytes), typed headers, the payload, and the CRC32 of all before it. botocore's
decoder spends about 23 µs a frame in Python; this one reads the same framing with
``struct`` and ``zlib.crc32`` (both CRCs checked, lengths bounded) at a fraction of that,
and is checked against botocore's in the tests.
"""

from __future__ import annotations

import struct
import zlib

from lmgate.errors import GatewayError

_PRELUDE = struct.Struct(">III")
_MAX_MESSAGE = 24 * 2**20  # the largest message the service sends (as botocore allows)
_MAX_HEADERS = 128 * 1024
# Header value types: fixed sizes, or None for a 2-byte length then the value.
_SIZES: dict[int, int | None] = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 6: None, 7: None,
                                 8: 8, 9: 16}  # fmt: skip


class EventStreamDecoder:
    """Frames as ``(kind, payload)``: the ``:event-type``, or ``!`` and the
    ``:exception-type`` (or ``:error-code``) of an exception frame. Same interface as
    ``SSEDecoder`` (``feed``, ``flush``)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        frames = []
        start = 0
        while len(buffer) - start >= 12:
            total, headers_length, prelude_crc = _PRELUDE.unpack_from(buffer, start)
            if zlib.crc32(buffer[start : start + 8]) != prelude_crc:
                raise _broken("the prelude's CRC does not match")
            if total > _MAX_MESSAGE or headers_length > _MAX_HEADERS or total < 16 + headers_length:
                raise _broken(f"a frame of {total} bytes with {headers_length} of headers")
            if len(buffer) - start < total:
                break
            end = start + total
            (crc,) = struct.unpack_from(">I", buffer, end - 4)
            if zlib.crc32(buffer[start : end - 4]) != crc:
                raise _broken("the message's CRC does not match")
            headers = _headers(buffer, start + 12, start + 12 + headers_length)
            payload = buffer[start + 12 + headers_length : end - 4]
            if headers.get(":message-type") in ("exception", "error"):
                kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
                frames.append(("!" + kind, payload))
            else:
                frames.append((headers.get(":event-type", ""), payload))
            start = end
        self._buffer = buffer[start:]
        return frames

    def flush(self) -> list[tuple[str, bytes]]:
        if self._buffer:
            raise _broken("the stream ended inside a frame")
        return []


def _headers(buffer: bytes, at: int, end: int) -> dict[str, str]:
    """The string-valued headers (the ones that name a frame); others are skipped."""
    found = {}
    try:
        while at < end:
            size = buffer[at]
            name = buffer[at + 1 : at + 1 + size].decode()
            kind = buffer[at + 1 + size]
            at += size + 2
            fixed = _SIZES[kind]
            if fixed is None:
                (length,) = struct.unpack_from(">H", buffer, at)
                if kind == 7:
                    found[name] = buffer[at + 2 : at + 2 + length].decode()
                at += 2 + length
            else:
                at += fixed
    except (IndexError, KeyError, struct.error, UnicodeDecodeError):
        raise _broken("a header that cannot be read") from None
    if at != end:
        raise _broken("headers that overrun their length")
    return found


def _broken(why: str) -> GatewayError:
    return GatewayError("upstream", f"a broken event-stream frame: {why}")
