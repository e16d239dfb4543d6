"""OpenAI's embeddings API, client side: ``POST /v1/embeddings``. ``input`` is a
string, a list of strings, a token array or a list of token arrays; the reply's
vectors come as floats or, with ``encoding_format: base64``, as little-endian
float32 bytes in base64 (what the OpenAI SDKs ask for by default, and decode).

It takes the chat's way through the gateway (auth, limits, routing, usage): the
request is a ``ChatRequest`` with ``embed`` set, and the reply an ``Embeddings``."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from lmgate.canonical import ChatRequest, EmbedInput, Reply, Start
from lmgate.errors import GatewayError, invalid
from lmgate.frontends import openai_chat
from lmgate.frontends.base import CHAT, Route, StreamEncoder
from lmgate.frontends.validate import optional_int, optional_string, parse_json_object, string

PROTOCOL = "embeddings"  # as usage records name the client protocol
MAX_INPUTS = 8192  # per request (upstreams get them in batches of what each takes)
_KNOWN_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


def parse_request(body: bytes, headers: Mapping[str, str] | None = None) -> ChatRequest:
    data = parse_json_object(body)
    model = string(data.get("model"), "model", allow_empty=False)
    encoding = optional_string(data, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format: expected 'float' or 'base64'", "encoding_format")
    return ChatRequest(
        model=model,
        messages=[],
        user=optional_string(data, "user"),
        embed=EmbedInput(parse_input(data.get("input")), optional_int(data, "dimensions", 1)),
        reply_state=encoding,
        extra={key: value for key, value in data.items() if key not in _KNOWN_FIELDS},
    )


def parse_input(raw: Any) -> list[str | list[int]]:
    """The inputs, one vector each: a string, strings, a token array, token arrays."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        items = [raw]  # one token array
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise invalid("input: expected a string, an array of strings, or token arrays", "input")
    if len(items) > MAX_INPUTS:
        raise invalid(f"input: at most {MAX_INPUTS} inputs per request", "input")
    for index, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise invalid(f"input[{index}]: an input must not be empty", "input")
        elif not (isinstance(item, list) and item and all(_is_token(t) for t in item)):
            raise invalid(f"input[{index}]: expected a non-empty string or token array", "input")
    return items


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def reply_body(reply: Reply, request: ChatRequest) -> bytes:
    vectors = reply.vectors or []
    as_base64 = request.reply_state == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _packed(vector) if as_base64 else vector,
        }
        for index, vector in enumerate(vectors)
    ]
    used = reply.usage.input_tokens if reply.usage is not None else 0
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": reply.model,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
    )


def _packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def stream_encoder(start: Start, request: ChatRequest) -> StreamEncoder:
    raise GatewayError("invalid_request", "embeddings are not streamed")  # stream is never set


def reply_headers(request: ChatRequest) -> dict[str, str]:
    return {}


error_status = openai_chat.error_status
error_body = openai_chat.error_body

ROUTES = (Route("POST", "/v1/embeddings", CHAT),)
