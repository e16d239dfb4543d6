from __future__ import annotations

import orjson
import pytest

from lmgate.providers.lenient_json import loads


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the reference's chunk shapes
        (
            b'{"choices":[{"index":0,"delta":{"content":"x"}],"finish_reason":"stop"}]',
            {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]},
        ),
        (
            b'{"choices":[{"index":0,"delta":{"content":""}}],"finish_reason":null}]}',
            {"choices": [{"index": 0, "delta": {"content": ""}}], "finish_reason": None},
        ),
        (
            b'{"choices":[{"message":{"content":"a"}],"finish_reason":null,"index":0}],"usage":{"total_tokens":3}}',
            {
                "choices": [{"message": {"content": "a"}, "finish_reason": None, "index": 0}],
                "usage": {"total_tokens": 3},
            },
        ),
        (b'{"a":"}]\\"{["}]', {"a": '}]"{['}),  # brackets and quotes inside strings are text
        (b'{"a":[1,2', {"a": [1, 2]}),  # cut short
        (b'{"a":"unterminated', {"a": "unterminated"}),
    ],
)
def test_repairs(raw: bytes, expected: object) -> None:
    assert loads(raw) == expected


def test_valid_json_is_parsed_as_is() -> None:
    assert loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("raw", [b"{broken", b"not json", b""])
def test_beyond_repair_raises(raw: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads(raw)
