"""JSON that upstreams broke: extra or missing closing brackets, brackets out of order.

Real streams (and the LM v2 reference) contain chunks like
``{"choices":[{"delta":{…}],"finish_reason":null}]``. ``loads`` parses strictly
first and, only when that fails, rebuilds the bracket structure: a closer that
does not match is preceded by the closers it implies, closers with nothing open
are dropped, and whatever is still open at the end is closed.
"""

from __future__ import annotations

from typing import Any

import orjson

_PAIRS = {ord("}"): ord("{"), ord("]"): ord("[")}
_CLOSER = {ord("{"): b"}", ord("["): b"]"}


def loads(payload: bytes) -> Any:
    """Parse ``payload``, repairing its brackets if needed; raises ``orjson.JSONDecodeError``."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return orjson.loads(repair(payload))


def repair(payload: bytes) -> bytes:
    out = bytearray()
    stack: list[int] = []
    in_string = escaped = False
    for byte in payload:
        if in_string:
            out.append(byte)
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
            continue
        if byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            stack.append(byte)
        elif byte in _PAIRS:
            opener = _PAIRS[byte]
            if opener not in stack:
                continue  # nothing to close: drop it
            while stack[-1] != opener:
                out += _CLOSER[stack.pop()]
            stack.pop()
        out.append(byte)
    if in_string:
        out.append(0x22)
    while stack:
        out += _CLOSER[stack.pop()]
    return bytes(out)
