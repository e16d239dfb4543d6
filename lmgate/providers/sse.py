"""Server-sent events: a tolerant decoder for upstream streams."""

from __future__ import annotations


class EventTooLarge(ValueError):
    """One event (or one line) is longer than the decoder's limit."""


class SSEDecoder:
    """Feed raw bytes, get complete ``data`` payloads.

    Tolerates what real upstreams send: ``\\r\\n`` line ends, ``data:`` with or
    without a space, comment and blank keep-alive lines, payloads split across
    reads, multi-line data, and a last event with no blank line after it
    (``flush``). Event names are returned with their data.

    Its work is linear in what it is fed: a line that has not ended is held as pieces
    and joined once, when it ends. One event (or line) longer than ``limit`` bytes
    raises ``EventTooLarge``.
    """

    __slots__ = ("_buffer", "_data", "_data_size", "_event", "_held", "_held_size", "limit")

    def __init__(self, limit: int = 64 * 2**20) -> None:
        self.limit = limit
        self._buffer = b""
        self._held: list[bytes] = []  # pieces of a line that has not ended yet
        self._held_size = 0
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: bytes | None = None

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:
        if b"\n" not in chunk:  # no line ends here: hold it, scan nothing again
            if self._buffer:
                self._held.append(self._buffer)
                self._held_size += len(self._buffer)
                self._buffer = b""
            self._held.append(chunk)
            self._held_size += len(chunk)
            if self._held_size + self._data_size > self.limit:
                raise EventTooLarge(f"a stream event is larger than {self.limit} bytes")
            return []
        if self._held:
            self._held.append(chunk)
            chunk = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
        buffer = self._buffer + chunk if self._buffer else chunk
        if self._data or self._event is not None or b"\r" in buffer:
            return self._feed_lines(buffer)
        # What nearly every upstream sends: whole events, each one "data: " line and a
        # blank line. Those are split out at once; any other event goes line by line.
        blocks = buffer.split(b"\n\n")
        rest = blocks.pop()  # what follows the last complete event
        out: list[tuple[bytes | None, bytes]] = []
        for block in blocks:
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                out.append((None, block[6:]))
            elif block:
                for line in block.split(b"\n"):
                    self._line(line, out)
                self._line(b"", out)
        if b"\n" in rest:  # an event's lines have begun: they go on one by one
            self._buffer = b""
            out += self._feed_lines(rest)
        else:
            self._buffer = self._rest(rest)
        return out

    def _feed_lines(self, buffer: bytes) -> list[tuple[bytes | None, bytes]]:
        out: list[tuple[bytes | None, bytes]] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, out)
        self._buffer = self._rest(buffer[start:])
        return out

    def _rest(self, rest: bytes) -> bytes:
        if len(rest) + self._data_size > self.limit:
            raise EventTooLarge(f"a stream event is larger than {self.limit} bytes")
        return rest

    def flush(self) -> list[tuple[bytes | None, bytes]]:
        out: list[tuple[bytes | None, bytes]] = []
        if self._held:
            self._buffer += b"".join(self._held)
            self._held.clear()
            self._held_size = 0
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), out)
            self._buffer = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[tuple[bytes | None, bytes]]) -> None:
        if not line:
            if self._data:
                out.append((self._event, b"\n".join(self._data)))
            self._data = []
            self._data_size = 0
            self._event = None
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            self._data_size += len(value)
            if self._data_size > self.limit:
                raise EventTooLarge(f"a stream event is larger than {self.limit} bytes")
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        elif line.strip() == b"[DONE]":  # some servers send it without "data:"
            self._data.append(b"[DONE]")
        # ":" comments, "id:", "retry:" and anything else are ignored.
