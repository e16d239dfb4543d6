"""The Gemini API frontend through the google-genai SDK: generate_content and its
stream in front of OpenAI-compatible and Anthropic upstreams, a function-calling
loop, images, countTokens, JSON-schema output, errors as the SDK's exceptions, and
the raw wire forms (SSE and the streamed JSON array)."""

from __future__ import annotations

import base64
import logging

import orjson
import pytest
from google import genai
from google.genai import errors, types

from tests.support.fakes.upstream import (
    FakeUpstream,
    Script,
    anthropic_message,
    chunk,
    completion,
    text_stream,
)
from tests.support.gateway import API_KEY, RunningGateway

USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 7,
    "total_tokens": 27,
    "prompt_tokens_details": {"cached_tokens": 5},
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def sdk(gw: RunningGateway, key: str = API_KEY) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=gw.url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


def test_generate_content_and_its_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(
        Script(json=completion("Hello from upstream", USAGE)),
        Script(chunks=text_stream(["Hel", "lo", "!"], usage=USAGE)),
    )
    client = sdk(gateway)
    config = types.GenerateContentConfig(
        system_instruction="Be brief.",
        temperature=0.2,
        max_output_tokens=64,
        stop_sequences=["END"],
        safety_settings=[
            types.SafetySetting(
                category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                threshold=types.HarmBlockThreshold.BLOCK_NONE,
            )
        ],  # accepted, and ignored
    )
    reply = client.models.generate_content(model="chat-model", contents="Hi there", config=config)
    assert reply.text == "Hello from upstream"
    assert reply.candidates[0].finish_reason == types.FinishReason.STOP
    usage = reply.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (20, 7)
    assert (usage.cached_content_token_count, usage.total_token_count) == (5, 27)
    assert reply.model_version == "chat-model" and reply.response_id
    sent = upstream.last.body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][1]["content"] == "Hi there"
    assert (sent["temperature"], sent["max_tokens"], sent["stop"]) == (0.2, 64, ["END"])

    pieces = list(client.models.generate_content_stream(model="chat-model", contents="Hi"))
    assert "".join(piece.text or "" for piece in pieces) == "Hello!"
    assert pieces[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert pieces[-1].usage_metadata.candidates_token_count == 7
    assert upstream.last.body["stream"] is True
    metrics = gateway.request("GET", "/metrics").body.decode()  # counted like any protocol
    assert (
        'lmgate_requests_total{deployment="up/up-model",model="chat-model",protocol="gemini"'
        in metrics
    )


def test_a_function_calling_loop(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    upstream.push(
        Script(json=completion(None, USAGE, "tool_calls", tool_calls=[call])),
        Script(json=completion("It is sunny in Paris.", USAGE)),
    )
    weather = types.FunctionDeclaration(
        name="weather",
        description="The weather in a city",
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={"city": types.Schema(type=types.Type.STRING)},
            required=["city"],
        ),
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode.ANY
            )
        ),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    client = sdk(gateway)
    asked = types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])
    first = client.models.generate_content(model="chat-model", contents=[asked], config=config)
    (function_call,) = first.function_calls
    assert (function_call.name, function_call.args) == ("weather", {"city": "Paris"})
    tools = upstream.last.body["tools"]
    assert tools[0]["function"]["parameters"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    assert upstream.last.body["tool_choice"] == "required"
    answer = types.Part.from_function_response(name="weather", response={"sky": "sunny"})
    second = client.models.generate_content(
        model="chat-model",
        contents=[asked, first.candidates[0].content, types.Content(role="user", parts=[answer])],
        config=config,
    )
    assert second.text == "It is sunny in Paris."
    messages = upstream.last.body["messages"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "weather"
    result = messages[2]
    assert result["role"] == "tool" and result["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
    assert orjson.loads(result["content"]) == {"sky": "sunny"}


def test_images_json_output_and_counting(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Script(json=anthropic_message(usage={"input_tokens": 30, "output_tokens": 2})))
    client = sdk(gateway)
    image = types.Part.from_bytes(data=PNG, mime_type="image/png")
    reply = client.models.generate_content(model="claude-model", contents=[image, "What is it?"])
    assert reply.text == "Hello!"
    block = upstream.last.body["messages"][0]["content"][0]
    assert block["type"] == "image" and base64.b64decode(block["source"]["data"]) == PNG

    upstream.push(Script(json=completion('{"answer": 42}', USAGE)))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=schema
    )
    reply = client.models.generate_content(model="chat-model", contents="?", config=config)
    assert reply.text == '{"answer": 42}'
    assert upstream.last.body["response_format"]["json_schema"]["schema"] == schema

    counted = client.models.count_tokens(model="echo", contents="one two three four")
    assert counted.total_tokens and counted.total_tokens > 0
    listed = [model.name for model in client.models.list()]
    assert "models/chat-model" in listed
    assert client.models.get(model="echo").display_name == "Echo"


def test_errors_reach_the_sdk_in_googles_shape(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    client, stranger = sdk(gateway), sdk(gateway, key="wrong-key")  # kept: a dropped one closes
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(model="no-such-model", contents="hi")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as refused:
        stranger.models.generate_content(model="echo", contents="hi")
    assert refused.value.code == 401 and refused.value.status == "UNAUTHENTICATED"
    upstream.push(Script(status=500, json={"error": {"message": "boom"}}))
    with pytest.raises(errors.ServerError) as failed:
        client.models.generate_content(model="chat-model", contents="hi")
    assert failed.value.code == 502 and failed.value.status == "UNAVAILABLE"
    bad = gateway.request(
        "POST",
        "/v1beta/models/echo:generateContent",
        {"contents": [{"role": "robot", "parts": []}]},
    )
    assert bad.status == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "contents[0].role" in bad.json()["error"]["message"]
    unknown = gateway.request("POST", "/v1beta/models/echo:generateAnswer", {"contents": []})
    assert unknown.status == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    wrong = gateway.request("POST", "/v1beta/models/echo:embedContent", {"contents": []})
    assert wrong.status == 400 and wrong.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_the_wire_forms_and_a_key_in_the_query(
    gateway: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    ask = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    upstream.push(Script(chunks=text_stream(["a", "b"], usage=USAGE)))
    arrayed = gateway.request("POST", "/v1beta/models/chat-model:streamGenerateContent", ask)
    assert arrayed.status == 200 and arrayed.headers["content-type"] == "application/json"
    chunks = orjson.loads(arrayed.body)  # one JSON array, written as it grew
    assert [c["candidates"][0]["content"]["parts"] for c in chunks[:2]] == [
        [{"text": "a"}],
        [{"text": "b"}],
    ]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    upstream.push(
        Script(
            chunks=[chunk(delta={"content": "x"}), chunk(delta={"content": "y"})],
            disconnect_after=1,
        )
    )
    broken = gateway.request("POST", "/v1beta/models/chat-model:streamGenerateContent?alt=sse", ask)
    frames = [
        orjson.loads(line[6:])
        for line in broken.body.split(b"\r\n\r\n")
        if line.startswith(b"data: ")
    ]
    assert frames[0]["candidates"][0]["content"]["parts"] == [{"text": "x"}]
    assert frames[-1]["error"]["status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # ended, not hung
    with caplog.at_level(logging.INFO):
        keyed = gateway.request(
            "POST", f"/v1beta/models/echo:generateContent?key={API_KEY}", ask, api_key=None
        )
    assert keyed.status == 200, keyed.body
    assert API_KEY not in caplog.text
    records = [r for r in caplog.records if "generateContent" in r.getMessage()]
    assert all(API_KEY not in r.getMessage() for r in records)


def test_file_data_urls_pass_on_and_other_uris_are_refused(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(json=anthropic_message([{"type": "text", "text": "A cat."}])))
    client = sdk(gateway)
    picture = types.Part.from_uri(file_uri="https://example.com/cat.png", mime_type="image/png")
    reply = client.models.generate_content(model="claude-model", contents=[picture, "What is it?"])
    assert reply.text == "A cat."
    assert "https://example.com/cat.png" in orjson.dumps(upstream.last.body).decode()
    stored = types.Part.from_uri(file_uri="gs://bucket/cat.png", mime_type="image/png")
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="claude-model", contents=[stored, "?"])
    assert refused.value.code == 400 and "fileData" in refused.value.message


def test_the_route_prefix_serves_gemini_too(gateway: RunningGateway) -> None:
    # /api (server.route_prefixes) before Google's paths; other methods get a 405.
    client = genai.Client(
        api_key=API_KEY,
        http_options=types.HttpOptions(
            base_url=gateway.url + "/api", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    reply = client.models.generate_content(model="echo", contents="hello there")
    assert reply.text and "hello there" in reply.text
    assert gateway.request("PUT", "/api/v1beta/models/echo:generateContent").status == 405
