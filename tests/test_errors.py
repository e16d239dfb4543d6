"""Bad input and misbehaving upstreams: the right status, an OpenAI-shaped body, no hang."""

from __future__ import annotations

import http.client
import socket
import time
from typing import Any

import openai
import orjson
import pytest

from tests.support.fakes.upstream import FakeUpstream, Script, chunk, completion, text_stream
from tests.support.gateway import (
    API_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    refusing_url,
    upstream_config,
)

HI = [{"role": "user", "content": "hi"}]


def error_of(raw: Any) -> dict[str, Any]:
    body = raw.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"", None, "empty"),
        (b"[1, 2]", None, "JSON object"),
        ({"messages": HI}, "model", "model"),
        ({"model": 7, "messages": HI}, "model", "string"),
        ({"model": "chat-model"}, "messages", "non-empty array"),
        ({"model": "chat-model", "messages": []}, "messages", "non-empty array"),
        (
            {"model": "chat-model", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "wizard",
        ),
        ({"model": "chat-model", "messages": ["hi"]}, "messages[0]", "object"),
        (
            {"model": "chat-model", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "string",
        ),
        (
            {"model": "chat-model", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
            "video",
        ),
        (
            {"model": "chat-model", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "string",
        ),
        (
            {
                "model": "chat-model",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages[0].content[0].image_url",
            "url",
        ),
        (
            {"model": "chat-model", "messages": [{"role": "tool", "content": "3"}]},
            "messages[0].tool_call_id",
            "tool_call_id",
        ),
        (
            {"model": "chat-model", "messages": [{"role": "system", "content": "only rules"}]},
            "messages",
            "only instructions",
        ),
        ({"model": "chat-model", "messages": HI, "temperature": "hot"}, "temperature", "number"),
        ({"model": "chat-model", "messages": HI, "temperature": 3}, "temperature", "out of range"),
        ({"model": "chat-model", "messages": HI, "max_tokens": 0}, "max_tokens", "out of range"),
        ({"model": "chat-model", "messages": HI, "max_tokens": True}, "max_tokens", "integer"),
        ({"model": "chat-model", "messages": HI, "stream": "yes"}, "stream", "true or false"),
        ({"model": "chat-model", "messages": HI, "stop": [1]}, "stop", "strings"),
        ({"model": "chat-model", "messages": HI, "n": 2}, "n", "n=1"),
        (
            {"model": "chat-model", "messages": HI, "tools": [{"type": "function"}]},
            "tools[0].function",
            "object",
        ),
        (
            {"model": "chat-model", "messages": HI, "tool_choice": "sometimes"},
            "tool_choice",
            "auto",
        ),
        (
            {"model": "chat-model", "messages": HI, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "true",
        ),
    ],
)
def test_malformed_requests_get_400_naming_the_field(
    gateway: RunningGateway, upstream: FakeUpstream, body: Any, param: str | None, words: str
) -> None:
    raw = gateway.request("POST", "/v1/chat/completions", body)
    assert raw.status == 400, raw.body
    error = error_of(raw)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]
    assert upstream.requests == []


def test_sdk_raises_typed_errors(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat-model", messages=[])
    assert "messages" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-99", messages=HI)  # type: ignore[arg-type]
    assert "gpt-99" in missing.value.message
    assert missing.value.code == "model_not_found"


def test_unknown_model_is_404(gateway: RunningGateway) -> None:
    raw = gateway.request("POST", "/api/v1/chat/completions", {"model": "nope", "messages": HI})
    assert raw.status == 404
    assert error_of(raw)["code"] == "model_not_found"


def test_body_over_limit_is_413(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    big = {
        "model": "chat-model",
        "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}],
    }
    raw = gateway.request("POST", "/v1/chat/completions", big)
    assert raw.status == 413
    assert "max_body_mb" in error_of(raw)["message"]
    assert upstream.requests == []


def test_chunked_body_over_limit_is_413(gateway: RunningGateway) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    piece = b"x" * 65536

    def body() -> Any:
        for _ in range(20):  # 1.25 MiB, no Content-Length
            yield piece

    connection.request(
        "POST",
        "/v1/chat/completions",
        body=body(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    assert connection.getresponse().status == 413
    connection.close()


def test_auth(gateway: RunningGateway) -> None:
    for key in (None, "wrong-key"):
        raw = gateway.request("GET", "/v1/models", api_key=key)
        assert raw.status == 401
        assert error_of(raw)["type"] == "authentication_error"
    missing = gateway.request(
        "POST", "/v1/chat/completions", {"model": "echo", "messages": HI}, api_key=None
    )
    assert missing.status == 401
    by_header = gateway.request("GET", "/v1/models", api_key=None, headers={"x-api-key": API_KEY})
    assert by_header.status == 200
    assert gateway.request("GET", "/health", api_key=None).status == 200
    ready = gateway.request("GET", "/ready", api_key=None).json()
    assert ready == {"status": "ready", "dependencies": {"store": "up"}}
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="wrong").models.list()


def test_unknown_route_and_method_in_openai_shape(gateway: RunningGateway) -> None:
    raw = gateway.request("GET", "/v1/nothing-here")
    assert raw.status == 404 and "no route" in error_of(raw)["message"]
    raw = gateway.request("GET", "/v1/chat/completions")
    assert raw.status == 405 and error_of(raw)["type"] == "invalid_request_error"


def test_request_id_is_echoed_or_made(gateway: RunningGateway) -> None:
    raw = gateway.request(
        "POST",
        "/v1/chat/completions",
        {"model": "echo", "messages": HI},
        headers={"x-request-id": "abc-123"},
    )
    assert raw.headers["x-request-id"] == "abc-123"
    assert raw.json()["id"].startswith("chatcmpl-")
    made = gateway.request("POST", "/v1/chat/completions", {"model": "nope", "messages": HI})
    assert len(made.headers["x-request-id"]) == 32


# ---- upstream failures ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "kind"),
    [
        (400, 400, "invalid_request_error"),
        (401, 502, "upstream_error"),
        (403, 502, "upstream_error"),
        (404, 502, "upstream_error"),
        (422, 400, "invalid_request_error"),
        (429, 429, "rate_limit_error"),
        (500, 502, "upstream_error"),
        (502, 502, "upstream_error"),
        (503, 503, "server_overloaded"),
        (504, 504, "timeout_error"),
        (529, 503, "server_overloaded"),
    ],
)
def test_upstream_status_is_mapped_with_its_message_but_never_its_key(
    gateway: RunningGateway, upstream: FakeUpstream, status: int, expected: int, kind: str
) -> None:
    message = f"Incorrect API key provided: {UPSTREAM_KEY}. Something went wrong ({status})"
    upstream.push(
        Script(
            status=status,
            json={"error": {"message": message, "type": "x"}},
            headers={"Retry-After": "7"},
        )
    )
    for stream in (False, True):
        if stream:
            upstream.push(
                Script(
                    status=status,
                    json={"error": {"message": message}},
                    headers={"Retry-After": "7"},
                )
            )
        raw = gateway.request(
            "POST",
            "/v1/chat/completions",
            {"model": "chat-model", "messages": HI, "stream": stream},
        )
        assert raw.status == expected
        error = error_of(raw)
        assert error["type"] == kind
        assert f"({status})" in error["message"]
        assert UPSTREAM_KEY not in raw.body.decode()
        assert "sk-upstream" not in raw.body.decode()
        if status == 429:
            assert raw.headers["retry-after"] == "7"


def test_upstream_plain_text_error(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(status=500, raw=b"<html>Bad Gateway</html>", content_type="text/html"))
    raw = gateway.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI})
    assert raw.status == 502
    assert "Bad Gateway" in error_of(raw)["message"]


def test_upstream_invalid_json_reply(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=b"{oops", content_type="application/json"))
    raw = gateway.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI})
    assert raw.status == 502
    assert "not a chat completion" in error_of(raw)["message"]


def test_upstream_unreachable_is_502(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["providers"]["up"]["base_url"] = refusing_url()
    gateway = start_gateway(config)
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="chat-model", messages=HI)
    assert caught.value.status_code == 502
    assert "cannot reach upstream up" in caught.value.message


@pytest.fixture
def quick_gateway(start_gateway: Any, upstream: FakeUpstream) -> RunningGateway:
    config = upstream_config(upstream)
    config["providers"]["up"]["timeouts"] = {"connect": 1, "first_byte": 0.5, "idle": 0.5}
    return start_gateway(config)  # type: ignore[no-any-return]


def test_slow_first_byte_is_504(quick_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(delay=2, json={}))
    started = time.monotonic()
    raw = quick_gateway.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI}
    )
    assert raw.status == 504
    assert "did not answer within 0.5s" in error_of(raw)["message"]
    assert time.monotonic() - started < 1.5


def sse_payloads(body: bytes) -> list[Any]:
    out = []
    for frame in body.decode().split("\n\n"):
        if frame.startswith("data: "):
            data = frame[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def test_stall_mid_stream_ends_with_error(
    quick_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream(["a", "b", "c"]), stall_after=2))
    started = time.monotonic()
    raw = quick_gateway.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI, "stream": True}
    )
    assert raw.status == 200
    payloads = sse_payloads(raw.body)
    assert payloads[-1]["error"]["type"] == "timeout_error"
    assert "[DONE]" not in payloads
    assert time.monotonic() - started < 2
    with pytest.raises(openai.APIError):
        upstream.push(Script(chunks=text_stream(["a", "b", "c"]), stall_after=2))
        list(
            quick_gateway.client().chat.completions.create(
                model="chat-model", messages=HI, stream=True
            )
        )


@pytest.mark.parametrize(
    "script",
    [
        Script(chunks=text_stream(["a", "b", "c", "d"]), disconnect_after=3),
        Script(chunks=[chunk(delta={"content": "a"})], done=False),  # ends without a finish
        Script(chunks=[chunk(delta={"content": "a"}), b"data: {broken\n\n"]),
        Script(
            chunks=[chunk(delta={"content": "a"}), {"error": {"message": "overloaded mid-way"}}]
        ),
    ],
    ids=["disconnect", "no-finish", "invalid-json", "error-chunk"],
)
def test_broken_streams_end_with_a_protocol_error(
    gateway: RunningGateway, upstream: FakeUpstream, script: Script
) -> None:
    upstream.push(script)
    raw = gateway.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI, "stream": True}
    )
    payloads = sse_payloads(raw.body)
    assert payloads[-1]["error"]["type"] == "upstream_error"
    assert "[DONE]" not in payloads
    upstream.push(script)
    with pytest.raises(openai.APIError):
        for _ in gateway.client().chat.completions.create(
            model="chat-model", messages=HI, stream=True
        ):
            pass


def test_wrong_content_type_is_a_502_before_the_stream_starts(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(raw=b"<html>maintenance</html>", content_type="text/html"))
    raw = gateway.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI, "stream": True}
    )
    assert raw.status == 502
    assert "text/html instead of an event stream" in error_of(raw)["message"]


def test_json_reply_to_a_stream_request_is_streamed(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Script(json=completion("whole reply")))
    chunks = list(client.chat.completions.create(model="chat-model", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "whole reply"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_client_disconnect_cancels_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream([f"w{i} " for i in range(50)]), chunk_delay=0.05))
    stream = gateway.client().chat.completions.create(model="chat-model", messages=HI, stream=True)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while upstream.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.cancelled == 1
    assert upstream.completed == 0
    # The gateway keeps serving.
    assert (
        gateway.client()
        .chat.completions.create(model="echo", messages=HI)
        .choices[0]
        .message.content
    )


def test_an_upstream_reply_past_max_reply_mb_is_a_502_naming_it(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    gw = start_gateway(upstream_config(upstream, max_reply_mb=1))
    upstream.push(Script(json=completion("x" * (2 * 2**20))))
    raw = gw.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI})
    assert raw.status == 502 and "providers.up.max_reply_mb, 1 MB" in raw.json()["error"]["message"]
    # One stream event past it: the stream ends with the protocol's error, naming it.
    big = chunk(delta={"content": "y" * (2 * 2**20)})
    upstream.push(Script(chunks=[chunk(delta={"role": "assistant", "content": ""}), big]))
    streamed = gw.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI, "stream": True}
    )
    assert streamed.status == 200 and b"max_reply_mb" in streamed.body
    assert b"data: [DONE]" not in streamed.body
    upstream.push(Script(json=completion("small")))  # and the next request is served
    again = gw.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI})
    assert again.status == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(
    ("path", "key"), [("/v1/chat/completions", API_KEY), ("/admin/keys", "adm")]
)
def test_a_body_too_large_gets_its_413_not_a_reset(
    start_gateway: Any, upstream: FakeUpstream, framing: str, path: str, key: str
) -> None:
    """The client is still sending when the answer comes, and asked to close after it:
    the gateway half-closes and reads on (a lingering close) instead of resetting."""
    config = upstream_config(upstream)
    config["server"].update(max_body_mb=1, admin_key="adm")
    gw = start_gateway(config)
    body = b"x" * (24 * 2**20)
    framed = (
        b"Transfer-Encoding: chunked\r\n\r\n"
        if framing == "chunked"
        else b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n".encode()
            + framed
        )
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, data = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"max_body_mb" in data or b"larger than" in data
