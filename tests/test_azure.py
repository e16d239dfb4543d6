"""The ``azure`` and ``azure_responses`` providers against a fake Azure OpenAI resource
that checks the path, the ``api-version`` and the credentials: the deployments API
with an ``api-key``, the v1 API with Entra ID tokens from a managed identity (the App
Service endpoint azure-identity asks), the Responses API on v1, and the content
filter's refusals, through each client protocol's SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.support.fakes.azure import API_KEY as AZURE_KEY
from tests.support.fakes.azure import IDENTITY_HEADER, TOKEN_PATH, FakeAzure, content_filter_refusal
from tests.support.fakes.upstream import (
    FakeUpstream,
    Recorded,
    Script,
    chunk,
    completion,
    text_stream,
)
from tests.support.gateway import API_KEY, RunningGateway
from tests.test_responses_upstream import message, response

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def config(upstream: FakeUpstream) -> dict[str, Any]:
    resource = {"base_url": upstream.url, "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}}
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "keyed": {"type": "azure", "api_key": AZURE_KEY, **resource},
            "entra": {"type": "azure", "api": "v1", "entra": "managed_identity", **resource},
            "responses": {"type": "azure_responses", "entra": "managed_identity", **resource},
        },
        "models": [
            {"id": "gpt", "provider": "keyed", "model": "gpt-4o-prod"},
            {"id": "gpt-entra", "provider": "entra", "model": "gpt-4o-prod"},
            {"id": "gpt-responses", "provider": "responses", "model": "gpt-4o-prod"},
            {"id": "missing", "provider": "keyed", "model": "no-such-deployment"},
        ],
        "routing": {"retries": 0},
    }


def chat(recorded: Recorded) -> Script:
    if recorded.path.endswith("/responses"):
        return Script(json=response([message("Hello from Responses.")]))
    if (recorded.body or {}).get("stream"):
        return Script(chunks=text_stream(["Hello ", "from Azure."]))
    return Script(json=completion("Hello from Azure."))


@pytest.fixture
def azure(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeAzure:
    # Where azure-identity's managed identity asks for tokens on App Service.
    monkeypatch.setenv("IDENTITY_ENDPOINT", upstream.url + TOKEN_PATH)
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    fake = FakeAzure({"gpt-4o-prod"}, chat)
    upstream.route = fake
    return fake


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, azure: FakeAzure) -> RunningGateway:
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def test_the_deployments_api_with_a_key(gw: RunningGateway, upstream: FakeUpstream) -> None:
    client = gw.client()
    hello = [{"role": "user", "content": "Hi"}]
    answer = client.chat.completions.create(model="gpt", messages=hello, tools=[TOOL])  # type: ignore[list-item]
    assert answer.choices[0].message.content == "Hello from Azure."
    sent = upstream.last
    assert sent.target == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == AZURE_KEY and "Authorization" not in sent.headers
    assert sent.body["tools"][0]["function"]["name"] == "get_weather"
    stream = client.chat.completions.create(model="gpt", messages=hello, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Hello from Azure.")  # fmt: skip
    # Anthropic and Gemini clients reach it too.
    message = gw.anthropic().messages.create(model="gpt", max_tokens=50, messages=hello)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello from Azure."  # type: ignore[union-attr]
    raw = gw.request("POST", "/v1beta/models/gpt:generateContent",
                     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})  # fmt: skip
    assert raw.status == 200
    assert raw.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from Azure."


def test_entra_tokens_from_a_managed_identity_on_the_v1_api(
    gw: RunningGateway, upstream: FakeUpstream, azure: FakeAzure
) -> None:
    client = gw.client()
    for _ in range(3):
        answer = client.chat.completions.create(
            model="gpt-entra", messages=[{"role": "user", "content": "Hi"}]
        )
        assert answer.choices[0].message.content == "Hello from Azure."
    assert azure.issued == ["entra-token-0"]  # one token, kept until near its expiry
    chats = [r for r in upstream.requests if r.path.startswith("/openai/")]
    assert [r.target for r in chats] == ["/openai/v1/chat/completions"] * 3
    assert all(r.headers["Authorization"] == "Bearer entra-token-0" for r in chats)
    assert all("api-key" not in r.headers for r in chats)
    # The Responses API on v1, with the same token source.
    answer = client.chat.completions.create(
        model="gpt-responses", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "Hello from Responses."
    assert upstream.last.target == "/openai/v1/responses"
    assert upstream.last.headers["Authorization"].startswith("Bearer entra-token-")


def test_content_filter_refusals(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.route = lambda r: content_filter_refusal()
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "content_filter"
    assert "content filter refused the prompt" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as refused:
        gw.anthropic().messages.create(
            model="gpt", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert "content filter" in str(refused.value)
    # A reply cut by the filter mid-stream: its finish reason says so, in each protocol.
    filtered = [
        {**chunk(), "choices": [], "prompt_filter_results": [{"prompt_index": 0,
            "content_filter_results": {"violence": {"filtered": False, "severity": "safe"}}}]},
        chunk(delta={"role": "assistant", "content": "Once upon"}),
        chunk(delta={}, finish_reason="content_filter"),
    ]  # fmt: skip
    upstream.route = lambda r: Script(chunks=filtered)
    stream = gw.client().chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "x"}], stream=True
    )
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] == "content_filter"
    upstream.route = lambda r: Script(chunks=filtered)
    with gw.anthropic().messages.stream(
        model="gpt", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as events:
        assert events.get_final_message().stop_reason == "refusal"


def test_what_azure_refuses(start_gateway: Any, upstream: FakeUpstream, azure: FakeAzure) -> None:
    raw = config(upstream)
    raw["providers"]["keyed"]["api_key"] = "not-the-key"
    raw["providers"]["old"] = {**raw["providers"]["keyed"], "api_version": "2023-01-01"}
    raw["models"].append({"id": "old", "provider": "old", "model": "gpt-4o-prod"})
    gw = start_gateway(raw)
    hello = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model="gpt", messages=hello)
    assert caught.value.status_code == 502
    assert "refused the gateway's credentials" in caught.value.message
    assert "not-the-key" not in caught.value.message
    with pytest.raises(openai.APIStatusError):
        gw.client().chat.completions.create(model="old", messages=hello)


def test_config_needs_a_credential(upstream: FakeUpstream) -> None:
    from lmgate.config import ConfigError, parse_config
    from lmgate.providers import provider_problems

    raw = config(upstream)
    del raw["providers"]["keyed"]["api_key"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, checks=[provider_problems])
    assert "providers.keyed" in str(caught.value) and "api_key" in str(caught.value)
