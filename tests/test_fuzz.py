"""Fuzzing every endpoint that reads a body or a path from a client: valid requests
mutated at a random place (wrong types, nulls, huge and negative numbers, NaN, deep
nesting, giant strings, odd parts and schemas, invalid UTF-8), cut short, sent
with the wrong content type or chunked. Whatever arrives: no 5xx, an error in the
endpoint's protocol shape, and nothing logged as an error or with a traceback.

Derandomised and bounded (``CASES`` per endpoint), so a failure is reproducible
and the run takes well under a minute.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import API_KEY, RunningGateway, wait_until
from tests.support.images import PNG_B64

CASES = 1_000  # per endpoint: 8,000 in all
ADMIN = "fuzz-admin-key"
RAW = "\x00raw\x00"  # a string replaced by a raw JSON fragment once the body is written

TOOL_SCHEMA: Any = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
CHAT: Any = {
    "model": "gpt",
    "messages": [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ],
    "max_tokens": 5,
    "temperature": 0.5,
    "stop": ["x"],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": TOOL_SCHEMA}}],
    "tool_choice": "auto",
    "stream": False,
    "stream_options": {"include_usage": True},
}
MESSAGES: Any = {
    "model": "claude",
    "max_tokens": 5,
    "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "1"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": TOOL_SCHEMA}],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "u"},
    "stream": False,
}
RESPONSES: Any = {
    "model": "gpt",
    "instructions": "be brief",
    "input": [
        {"role": "developer", "content": "be kind"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"},
            ],
        },
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ],
    "tools": [
        {"type": "function", "name": "f", "parameters": TOOL_SCHEMA},
        {"type": "custom", "name": "patch", "format": {"type": "grammar", "definition": "x"}},
        {"type": "web_search"},
    ],
    "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "s", "schema": TOOL_SCHEMA}},
    "reasoning": {"effort": "low", "summary": "auto"},
    "max_output_tokens": 5,
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "stream": False,
}
KEY: Any = {
    "name": "fuzzed",
    "models": ["gpt"],
    "rpm": 5,
    "tpm": 100,
    "budget_tokens": 1000,
    "expires_at": "2030-01-01",
}

# Values put in place of one part of a valid request.
NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64 - 1, 2**64, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "é", "\x00", "\ud7ff\ue000", "a" * 100_000, "data:image/png;base64,é"]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", '"\\ud800"']).map(
        lambda raw: (RAW, raw)
    ),
    st.integers(min_value=200, max_value=1_100).map(lambda n: (RAW, "[" * n + "]" * n)),
    st.integers(min_value=200, max_value=600).map(lambda n: (RAW, '{"a":' * n + "1" + "}" * n)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=3),
    st.sampled_from(
        [
            [{"type": "weird"}],
            [{"type": "text"}],
            [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
            {"type": "object", "properties": {"a": {"$ref": "#/x"}}},
            [{"role": "robot", "content": "x"}],
            [],
            {},
        ]
    ),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths(inner, (*prefix, index))


def mutate(seed: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    body = json.loads(json.dumps(seed))
    if not path:
        return value
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"x_{last}"] = value
    else:
        parent[last] = value
    return body


def encode(body: Any) -> bytes:
    raws: list[str] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, tuple) and value and value[0] == RAW:
            raws.append(value[1])
            return f"{RAW}{len(raws) - 1}"
        if isinstance(value, dict):
            return {key: placeholder(inner) for key, inner in value.items()}
        if isinstance(value, list):
            return [placeholder(inner) for inner in value]
        return value

    text = json.dumps(placeholder(body), ensure_ascii=False)
    for number, raw in enumerate(raws):
        text = text.replace(json.dumps(f"{RAW}{number}"), raw)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def requests(draw: st.DrawFn, seed: Any) -> tuple[bytes, dict[str, str], bool]:
    """(body, extra headers, chunked) of one mutated request."""
    all_paths = list(paths(seed))
    body = seed
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(all_paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete" and not path:
            action = "replace"
        body = mutate(body, path, action, draw(NASTY))
        all_paths = list(paths(body)) or [()]
    data = encode(body)
    headers = {"Content-Type": "application/json"}
    damage = draw(st.sampled_from(["none"] * 7 + ["truncate", "bad utf-8", "content type"]))
    if damage == "truncate":
        data = data[: draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    elif damage == "bad utf-8":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:at] + b"\xff\xfe\xc3" + data[at:]
    elif damage == "content type":
        headers["Content-Type"] = draw(st.sampled_from(["text/plain", "", "application/x-www"]))
    return data, headers, draw(st.booleans()) if len(data) < 200_000 else False


GEMINI: Any = {
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "contents": [
        {
            "role": "user",
            "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}],
        },
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": "x"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": 1}}}]},
    ],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "f",
                    "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
                }
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "generationConfig": {
        "temperature": 0.5,
        "maxOutputTokens": 5,
        "stopSequences": ["x"],
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 512},
    },
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
}


class Client:
    """One keep-alive connection to the gateway (opened again whenever it closes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.gateway: RunningGateway | None = None
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], chunked: bool
    ) -> tuple[int, str, bytes]:
        for attempt in range(2):
            try:
                if chunked and body is not None:
                    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
                    self.connection.request(
                        method, path, body=iter(pieces), headers=headers, encode_chunked=True
                    )
                else:
                    self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, response.getheader("content-type", ""), response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(self.format(record))


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, upstream_server: FakeUpstream
) -> Iterator[tuple[Client, ErrorLog]]:
    """The gateway in front of real upstreams of both protocols (the fake answers
    each request by its path), so that what is passed on is written out as well."""
    store = Path(tmp_path_factory.mktemp("fuzz")) / "lmgate.db"
    upstream_server.reset()
    gateway = RunningGateway(
        {
            "server": {"api_keys": [API_KEY], "admin_key": ADMIN},
            "store": {"url": f"sqlite:///{store}"},
            "providers": {
                "oa": {"type": "openai", "base_url": upstream_server.url + "/v1"},
                "an": {"type": "anthropic", "base_url": upstream_server.url},
            },
            "models": [
                {"id": "gpt", "provider": "oa", "support": "image"},
                {"id": "claude", "provider": "an", "support": "image"},
            ],
        }
    )
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    client = Client(gateway.port)
    client.gateway = gateway
    try:
        yield client, errors
    finally:
        logging.getLogger().removeHandler(errors)
        client.connection.close()
        gateway.stop()
        upstream_server.reset()


def check(status: int, content_type: str, data: bytes, shape: str) -> None:
    assert status < 500, (status, data[:500])
    assert b"Traceback" not in data
    if status < 400:
        if shape == "gemini" and content_type.startswith("text/event-stream"):
            frames = [f for f in data.split(b"\r\n\r\n") if f.startswith(b"data: ")]
            last = orjson.loads(frames[-1][6:])  # a whole last frame: finished, or an error
            assert "error" in last or last["candidates"][0].get("finishReason"), data[-300:]
            return
        if content_type.startswith("text/event-stream"):
            tail = data.rstrip()
            # The last: [DONE], message_stop, or a Responses event (they end numbered).
            ended = tail.endswith((b"data: [DONE]", b'"message_stop"}'))
            assert ended or re.search(rb'"sequence_number":\d+\}$', tail), data[-300:]
            if b"event: response." in data:
                assert b"event: response.completed" in data, data[-300:]
        return
    body = orjson.loads(data)  # every error is JSON
    if shape == "gemini":
        error = body["error"]
        assert isinstance(error["message"], str) and isinstance(error["status"], str), body
        assert error["code"] == status, body
    elif shape == "anthropic":
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        assert isinstance(body["error"]["type"], str), body
    else:
        assert isinstance(body["error"]["message"], str), body
        assert isinstance(body["error"]["type"], str), body


FUZZ = settings(
    max_examples=CASES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize(
    ("path", "seed", "shape", "key"),
    [
        ("/v1/chat/completions", CHAT, "openai", API_KEY),
        ("/v1/messages", MESSAGES, "anthropic", API_KEY),
        ("/v1/messages/count_tokens", MESSAGES, "anthropic", API_KEY),
        ("/v1/responses", RESPONSES, "openai", API_KEY),
        ("/v1beta/models/gpt:generateContent", GEMINI, "gemini", API_KEY),
        ("/v1beta/models/claude:streamGenerateContent?alt=sse", GEMINI, "gemini", API_KEY),
        ("/admin/keys", KEY, "openai", ADMIN),
    ],
)
def test_fuzzed_bodies(
    fuzzed: tuple[Client, ErrorLog], path: str, seed: Any, shape: str, key: str
) -> None:
    client, errors = fuzzed
    errors.bad.clear()  # each endpoint's failures are its own
    sent = 0

    @FUZZ
    @given(requests(seed))
    def one(case: tuple[bytes, dict[str, str], bool]) -> None:
        nonlocal sent
        body, headers, chunked = case
        headers = {**headers, "Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
        check(*client.send("POST", path, body, headers, chunked), shape)
        assert not errors.bad, errors.bad
        sent += 1

    one()
    assert sent >= CASES * 0.9  # hypothesis ran the cases it was asked for


def test_fuzzed_model_paths(fuzzed: tuple[Client, ErrorLog]) -> None:
    client, errors = fuzzed
    errors.bad.clear()
    rng = random.Random(3)

    @FUZZ
    @given(st.text(min_size=1, max_size=300) | st.binary(min_size=1, max_size=50).map(repr))
    def one(model: str) -> None:
        path = "/v1/models/" + quote(model, safe=rng.choice(["", "/", "/%"]))
        check(*client.send("GET", path, None, AUTH, False), "openai")
        assert not errors.bad, errors.bad

    one()


def test_every_upstream_connection_is_back_after_the_fuzzing(
    fuzzed: tuple[Client, ErrorLog],
) -> None:
    """Last in this module: whatever the fuzzed requests did, no upstream connection is
    still held (a leak would starve every later request to that provider)."""
    client, _ = fuzzed
    assert client.gateway is not None
    gateway = client.gateway.app.state.gateway
    pools = [gateway.providers[name].pool() for name in ("oa", "an")]
    wait_until(lambda: all(pool.in_use == 0 for pool in pools))
