"""The ``vertex`` provider against a fake Vertex AI and a fake Google token endpoint
that verifies the service account's signed JWT: Gemini models (publisher google) and
Claude models (publisher anthropic) through each client protocol's SDK, stream and not,
with tools and thinking; a token of one's own; a key the endpoint refuses; and a
throttled Bedrock deployment failing over to Vertex."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from lmgate.config import parse_config
from tests.support.fakes import bedrock, gemini
from tests.support.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Script,
    anthropic_events,
    anthropic_message,
    anthropic_text_stream,
)
from tests.support.fakes.vertex import LOCATION, PROJECT, FakeVertex
from tests.support.gateway import API_KEY, RunningGateway

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
GOOGLE = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models"
ANTHROPIC = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models"


def answer(recorded: Recorded) -> Script:
    if "/publishers/anthropic/" in recorded.path:
        if recorded.path.endswith(":streamRawPredict"):
            return anthropic_text_stream(["Claude ", "on Vertex."])
        return Script(json=anthropic_message([{"type": "text", "text": "Claude on Vertex."}]))
    if "tools" in recorded.body and not any(
        "functionResponse" in part for c in recorded.body["contents"] for part in c["parts"]
    ):
        call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        return Script(json=gemini.response([call]))
    parts = [{"text": "Gemini on Vertex."}]
    if recorded.path.endswith(":streamGenerateContent"):
        return gemini.stream(gemini.response([{"text": "Gemini "}], finish=None),
                             gemini.response([{"text": "on Vertex."}]))  # fmt: skip
    return Script(json=gemini.response(parts))


def config(upstream: FakeUpstream, **google: Any) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "gcp": {"type": "vertex", "project": PROJECT, "location": LOCATION,
                    "base_url": upstream.url, **google},
            "aws": {"type": "bedrock", "region": REGION, "base_url": upstream.url,
                    "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        },
        "models": [
            {"id": "gem", "provider": "gcp", "model": "gemini-2.5-pro", "support": "image"},
            {"id": "claude", "provider": "gcp", "model": "claude-sonnet-4@20250514"},
            {"id": "claude-aws", "provider": "aws",
             "model": "us.anthropic.claude-sonnet-4-20250514-v1:0"},
        ],
        "routing": {"retries": 0, "fallbacks": {"claude-aws": ["claude"]},
                    "cooldown": {"failures": 1_000_000}},
    }  # fmt: skip


@pytest.fixture
def vertex(upstream: FakeUpstream) -> FakeVertex:
    fake = FakeVertex(upstream.url, answer)
    upstream.route = bedrock.checking(fake)
    return fake


@pytest.fixture
def gw(
    start_gateway: Any, upstream: FakeUpstream, vertex: FakeVertex, tmp_path: Path
) -> RunningGateway:
    key = vertex.key_file(tmp_path)
    return start_gateway(config(upstream, credentials_file=str(key)))  # type: ignore[no-any-return]


def test_gemini_on_vertex_with_a_service_account(
    gw: RunningGateway, upstream: FakeUpstream, vertex: FakeVertex
) -> None:
    client = gw.client()
    hello = [{"role": "user", "content": "Weather?"}]
    first = client.chat.completions.create(model="gem", messages=hello, tools=[TOOL])  # type: ignore[arg-type,list-item]
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert upstream.last.path == f"{GOOGLE}/gemini-2.5-pro:generateContent"
    stream = client.chat.completions.create(model="gem", messages=hello, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Gemini on Vertex.")  # fmt: skip
    assert upstream.last.target == f"{GOOGLE}/gemini-2.5-pro:streamGenerateContent?alt=sse"
    # One signed assertion, one token, for every request so far.
    assert vertex.assertions == 1
    assert {r.headers["Authorization"] for r in upstream.requests if "/publishers/" in r.path} == {
        "Bearer ya29.fake-0"}  # fmt: skip
    responses = client.responses.create(model="gem", input="Hi")
    assert responses.output_text == "Gemini on Vertex."
    from google import genai
    from google.genai import types

    google = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gw.url))
    assert google.models.generate_content(model="gem", contents="Hi").text == "Gemini on Vertex."


def test_claude_on_vertex(gw: RunningGateway, upstream: FakeUpstream) -> None:
    client = gw.anthropic()
    hello: Any = [{"role": "user", "content": "Hi"}]
    message = client.messages.create(model="claude", max_tokens=100, messages=hello)
    assert message.content[0].text == "Claude on Vertex."  # type: ignore[union-attr]
    sent = upstream.last
    assert sent.path == f"{ANTHROPIC}/claude-sonnet-4@20250514:rawPredict"
    assert sent.body["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent.body
    with client.messages.stream(model="claude", max_tokens=100, messages=hello) as stream:
        assert stream.get_final_message().content[0].text == "Claude on Vertex."  # type: ignore[union-attr]
    assert upstream.last.path.endswith(":streamRawPredict")
    answer = gw.client().chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Hi"}],
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content == "Claude on Vertex."
    assert upstream.last.body["tools"][0]["name"] == "get_weather"


def test_thinking_on_vertex_claude_round_trips(
    gw: RunningGateway, upstream: FakeUpstream, vertex: FakeVertex
) -> None:
    thinking = {"type": "thinking", "thinking": "Hmm.", "signature": "vertex-sig"}
    vertex.answer = lambda r: Script(
        chunks=anthropic_events(
            {"type": "message_start", "message": {**anthropic_message([]), "stop_reason": None}},
            {"type": "content_block_start", "index": 0, "content_block": {**thinking, "thinking": "", "signature": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "vertex-sig"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Yes."}},
            {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}},
            {"type": "message_stop"},
        ),
        done=False,
    )  # fmt: skip
    client = gw.anthropic()
    with client.messages.stream(
        model="claude", max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi"}],
    ) as stream:  # fmt: skip
        message = stream.get_final_message()
    assert message.content[0].type == "thinking"
    assert upstream.last.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    vertex.answer = answer
    client.messages.create(
        model="claude", max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": [c.model_dump() for c in message.content]},
                  {"role": "user", "content": "More"}],
    )  # fmt: skip
    assert upstream.last.body["messages"][1]["content"][0] == thinking


def test_a_token_of_ones_own_and_a_refused_key(
    start_gateway: Any, upstream: FakeUpstream, vertex: FakeVertex, tmp_path: Path
) -> None:
    vertex.issued.append("ya29.given")
    gw = start_gateway(config(upstream, access_token="ya29.given"))
    answer = gw.client().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "Gemini on Vertex."
    assert upstream.last.headers["Authorization"] == "Bearer ya29.given"
    assert vertex.assertions == 0
    gw.stop()
    # A key the token endpoint does not know (another account's private key).
    other = FakeVertex(upstream.url, answer)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    gw = start_gateway(config(upstream, credentials_file=str(other.key_file(other_dir))))
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(
            model="gem", messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.status_code == 502 and "no Google access token" in caught.value.message
    assert "invalid_grant" in caught.value.message


def test_throttled_bedrock_fails_over_to_vertex(
    gw: RunningGateway, upstream: FakeUpstream, vertex: FakeVertex
) -> None:
    fake = vertex
    upstream.route = bedrock.checking(
        lambda r: bedrock.error(429, "ThrottlingException", "Too many requests")
        if r.path.startswith("/model/") else fake(r)
    )  # fmt: skip
    message = gw.anthropic().messages.create(
        model="claude-aws", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].text == "Claude on Vertex."  # type: ignore[union-attr]
    paths = [r.path for r in upstream.requests if r.path != "/token"]
    assert paths[0].startswith("/model/us.anthropic.") and paths[-1].endswith(":rawPredict")


def test_the_global_location_and_the_default_host() -> None:
    config = parse_config({
        "providers": {"gcp": {"type": "vertex", "project": "p", "location": "global",
                              "access_token": "t"}},
        "models": [{"id": "m", "provider": "gcp"}],
    })  # fmt: skip
    from lmgate.providers import build_provider

    provider = build_provider("gcp", config.providers["gcp"])
    assert provider.config.base_url == (  # type: ignore[attr-defined]
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers")  # fmt: skip
