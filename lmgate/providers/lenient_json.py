"""JSON that upstreams broke: extra or missing closing brackets, brackets out of order.

Real streams (and the LM v2 reference) contain chunks like
``{"choices":[{"delta":{…}],"finish_reason":null}]``. ``loads`` parses strictly
first and, only when that fails, repairs the brackets: a closer that does not
match the innermost open bracket is a stray and is dropped, and whatever is
still open at the end is closed. For the reference's chunks this recovers the
intended structure (``finish_reason`` back inside its choice).
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
            if not stack or stack[-1] != _PAIRS[byte]:
                continue  # a closer that closes nothing open is a stray: drop it
            stack.pop()
        out.append(byte)
    if in_string:
        out.append(0x22)
    while stack:
        out += _CLOSER[stack.pop()]
    return bytes(out)
