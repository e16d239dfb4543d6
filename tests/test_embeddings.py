"""Embeddings: OpenAI's ``/v1/embeddings`` and Gemini's ``embedContent`` /
``batchEmbedContents``, through the official SDKs, over every upstream that embeds
(OpenAI-compatible, Azure, Gemini, Vertex AI, Bedrock Titan and Cohere), each a fake
that checks the request's shape and credentials. Vectors come back in the inputs'
order (the fakes answer out of order, and in batches of their limit); a failing
deployment falls back; usage and cost are recorded; a model of the other kind is a
400 naming it."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from google import genai
from google.genai import types

from tests.support.accounts import accounts_config, admin, wait_for_records
from tests.support.fakes import azure, bedrock
from tests.support.fakes.bedrock import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.fakes.upstream import FakeUpstream, Recorded, Script
from tests.support.fakes.vertex import LOCATION, PROJECT, FakeVertex
from tests.support.gateway import API_KEY, RunningGateway, wait_until

UPSTREAM_KEY = "sk-embed-upstream"
PRICE = {"input": 0.02, "output": 0}  # USD per million tokens: text-embedding-3-small's


def vector_of(text: str) -> list[float]:
    """What every fake upstream answers for a text: says which text it was."""
    return [float(len(text)), float(sum(map(ord, text)) % 997), 0.5]


LIES = {
    "short": {"data": [{"index": 0, "embedding": [1.0]}]},  # one vector for two inputs
    "strings": {"data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [1.0]}]},
    "indexes": {"data": [{"index": "x", "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
    "shape": {"data": {"0": [1.0]}},
    "nested": {"data": [{"index": 0, "embedding": [[1.0]]}, {"index": 1, "embedding": [1.0]}]},
}


def answer(recorded: Recorded) -> Script:
    """Every embedding API's reply, by path; the request's shape checked as the real
    service would (a wrong shape is a 400)."""
    body, path = recorded.body, recorded.path
    if path.endswith("/embeddings"):  # OpenAI-compatible, and Azure
        if (
            path.startswith("/v1/")
            and recorded.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}"
        ):
            return Script(status=401, json={"error": {"message": "bad key"}})  # fmt: skip
        if body.get("model") == "down-embed":
            return Script(status=503, json={"error": {"message": "overloaded"}})
        if body.get("model") == "liar-embed":  # the input says how the upstream lies
            return Script(json=LIES[body["input"][0]])
        inputs = body["input"]
        if body.get("encoding_format") != "float" or not isinstance(inputs, list):
            return Script(status=400, json={"error": {"message": f"bad body {body}"}})
        data = [{"object": "embedding", "index": i, "embedding": vector_of(str(item))}
                for i, item in enumerate(inputs)]  # fmt: skip
        return Script(json={"object": "list", "data": data[::-1], "model": body["model"],
                            "usage": {"prompt_tokens": 7 * len(inputs), "total_tokens": 7 * len(inputs)}})  # fmt: skip
    if path.endswith(":batchEmbedContents"):
        if recorded.headers.get("x-goog-api-key") != UPSTREAM_KEY:
            return Script(status=403, json={"error": {"code": 403, "message": "API key not valid"}})  # fmt: skip
        requests = body["requests"]
        model = "models/" + path.rpartition("/models/")[2].partition(":")[0]
        if len(requests) > 100 or any(r["model"] != model for r in requests):
            return Script(status=400, json={"error": {"code": 400, "message": "at most 100 requests, each of this model"}})  # fmt: skip
        return Script(json={"embeddings": [{"values": vector_of(r["content"]["parts"][0]["text"])}
                                           for r in requests]})  # fmt: skip
    if path.endswith(":predict"):
        return Script(json={"predictions": [
            {"embeddings": {"values": vector_of(i["content"]), "statistics": {"token_count": 3}}}
            for i in body["instances"]]})  # fmt: skip
    if path.endswith("/invoke") and "titan-embed" in path:
        if set(body) - {"inputText", "dimensions", "normalize"}:
            return Script(status=400, json={"message": "Malformed input request"})
        return Script(json={"embedding": vector_of(body["inputText"]), "inputTextTokenCount": 4})
    if path.endswith("/invoke") and "cohere.embed" in path:
        if (
            not isinstance(body.get("texts"), list)
            or len(body["texts"]) > 96
            or "input_type" not in body
        ):
            return Script(status=400, json={"message": "Malformed input request"})  # fmt: skip
        return Script(json={"id": "e1", "embeddings": [vector_of(t) for t in body["texts"]],
                            "texts": body["texts"]})  # fmt: skip
    return Script(status=404, json={"error": {"message": f"no route {path}"}})


def config(upstream: FakeUpstream) -> dict[str, Any]:
    timeouts = {"connect": 2, "first_byte": 5, "idle": 5}
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "compat": {"type": "openai", "base_url": upstream.url + "/v1", "api_key": UPSTREAM_KEY,
                       "timeouts": timeouts},
            "google": {"type": "gemini", "base_url": upstream.url + "/v1beta",
                       "api_key": UPSTREAM_KEY, "timeouts": timeouts},
            "az": {"type": "azure", "base_url": upstream.url, "api_key": azure.API_KEY,
                   "timeouts": timeouts},
            "aws": {"type": "bedrock", "base_url": upstream.url, "region": REGION,
                    "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                    "timeouts": timeouts},
            "gcp": {"type": "vertex", "base_url": upstream.url, "project": PROJECT,
                    "location": LOCATION, "access_token": "ya29.given", "timeouts": timeouts},
        },
        "models": [
            {"id": "chat", "provider": "compat", "model": "up-model"},
            {"id": "small", "kind": "embedding", "dimensions": 1536, "max_input_tokens": 50,
             "price": PRICE, "provider": "compat", "model": "text-embedding-3-small"},
            {"id": "flaky", "kind": "embedding", "provider": "compat", "model": "down-embed"},
            {"id": "liar", "kind": "embedding", "provider": "compat", "model": "liar-embed"},
            {"id": "gem-embed", "kind": "embedding", "provider": "google", "model": "gem-embed"},
            {"id": "az-embed", "kind": "embedding", "provider": "az", "model": "embed-prod"},
            {"id": "titan", "kind": "embedding", "provider": "aws",
             "model": "amazon.titan-embed-text-v2:0"},
            {"id": "cohere", "kind": "embedding", "provider": "aws",
             "model": "cohere.embed-multilingual-v3"},
            {"id": "vertex-embed", "kind": "embedding", "provider": "gcp",
             "model": "text-embedding-005"},
        ],
        "routing": {"retries": 0, "fallbacks": {"flaky": ["chat", "small"]},
                    "cooldown": {"failures": 1_000_000}},
    }  # fmt: skip


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, tmp_path: Path) -> RunningGateway:
    # Bedrock's requests must be signed (SigV4, checked by botocore); Azure's, its key;
    # Vertex's, the token it was given.
    fake_azure = azure.FakeAzure({"embed-prod"}, answer)
    vertex = FakeVertex(upstream.url, answer)
    vertex.issued.append("ya29.given")

    def route(recorded: Recorded) -> Script:
        if recorded.path.startswith("/openai/"):
            return fake_azure(recorded)
        if recorded.path.startswith("/v1/projects/"):
            return vertex(recorded)
        return bedrock.checking(answer)(recorded)

    upstream.route = route
    return start_gateway(config(upstream))  # type: ignore[no-any-return]


def test_the_openai_sdk_gets_floats_base64_and_token_arrays_in_order(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    client = gw.client()
    texts = ["first text", "the second one", "3"]
    floats = client.embeddings.create(model="small", input=texts, encoding_format="float")
    assert [item.embedding for item in floats.data] == [vector_of(t) for t in texts]
    assert [item.index for item in floats.data] == [0, 1, 2]
    assert floats.model == "small" and floats.usage.prompt_tokens == 21
    # The SDK's default: base64 float32, decoded by the SDK.
    packed = client.embeddings.create(model="small", input="first text", dimensions=3)
    assert packed.data[0].embedding == vector_of("first text")
    sent = upstream.requests[-1].body
    assert sent == {"model": "text-embedding-3-small", "input": ["first text"],
                    "encoding_format": "float", "dimensions": 3}  # fmt: skip
    raw = gw.request("POST", "/v1/embeddings", {"model": "small", "input": "x",
                                                "encoding_format": "base64"}).json()  # fmt: skip
    decoded = struct.unpack("<3f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == vector_of("x")
    # Token arrays go to an OpenAI-compatible upstream as they are.
    client.embeddings.create(model="small", input=[[1, 2, 3], [4]])
    assert upstream.requests[-1].body["input"] == [[1, 2, 3], [4]]


def test_the_google_genai_sdk_through_a_gemini_upstream_in_batches_of_100(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    client = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gw.url))
    texts = [f"document number {n}" for n in range(250)]
    found = client.models.embed_content(
        model="gem-embed", contents=texts,
        config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=3),
    )  # fmt: skip
    assert [e.values for e in found.embeddings or []] == [vector_of(t) for t in texts]
    batches = [
        r.body["requests"] for r in upstream.requests if r.path.endswith(":batchEmbedContents")
    ]
    assert [len(b) for b in batches] == [100, 100, 50]
    assert batches[0][0]["taskType"] == "RETRIEVAL_DOCUMENT"
    assert batches[0][0]["outputDimensionality"] == 3
    # Gemini's clients may ask an OpenAI-compatible upstream's model, and back.
    one = client.models.embed_content(model="small", contents="one text")
    assert one.embeddings and one.embeddings[0].values == vector_of("one text")


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("az-embed", "/openai/deployments/embed-prod/embeddings"),
        ("titan", "/model/amazon.titan-embed-text-v2:0/invoke"),
        ("cohere", "/model/cohere.embed-multilingual-v3/invoke"),
        ("vertex-embed",
         f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/text-embedding-005:predict"),
    ],
)  # fmt: skip
def test_the_clouds_embed(
    gw: RunningGateway, upstream: FakeUpstream, model: str, path: str
) -> None:
    texts = ["alpha", "beta gamma", "delta"]
    found = gw.client().embeddings.create(model=model, input=texts, encoding_format="float")
    assert [item.embedding for item in found.data] == [vector_of(t) for t in texts]
    assert {r.path for r in upstream.requests} == {path}
    if model == "titan":  # one text a request: three, side by side
        assert sorted(r.body["inputText"] for r in upstream.requests) == texts
        assert found.usage.prompt_tokens == 12
    if model == "cohere":
        assert upstream.requests[0].body == {"texts": texts, "input_type": "search_document"}


def test_a_failing_deployment_falls_back_and_usage_and_cost_are_recorded(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.route = answer
    store_url = f"sqlite:///{tmp_path / 'lmgate.db'}"
    settings = accounts_config(upstream, store_url)
    embedding_config = config(upstream)
    settings.update(providers={"compat": embedding_config["providers"]["compat"]},
                    models=embedding_config["models"][:3], routing=embedding_config["routing"])  # fmt: skip
    gw = start_gateway(settings)
    status, made = admin(gw, "POST", "/admin/keys", {"name": "rag", "models": ["flaky", "small"]})
    assert status == 201
    found = gw.client(made["key"]).embeddings.create(model="flaky", input=["a", "b"])
    assert [item.embedding for item in found.data] == [vector_of("a"), vector_of("b")]
    # flaky's deployment 503s; its fallbacks: chat is not an embedding model (skipped),
    # small answers.
    tried = [r.body["model"] for r in upstream.requests]
    assert tried == ["down-embed", "text-embedding-3-small"]
    record = wait_for_records(store_url, 1)[-1]
    assert record["protocol"] == "embeddings" and record["status"] == 200
    assert record["requested_model"] == "flaky" and record["model"] == "small"
    assert record["deployment"] == "compat/text-embedding-3-small"
    assert record["input_tokens"] == 14 and record["output_tokens"] == 0
    assert record["cost"] == pytest.approx(14 * 0.02 / 1e6)
    by_model = admin(gw, "GET", "/admin/usage?by=model")[1]["data"]
    assert [(row["group"], row["requests"]) for row in by_model] == [("small", 1)]
    assert by_model[0]["cost"] == pytest.approx(14 * 0.02 / 1e6)
    served = ('lmgate_requests_total{deployment="compat/text-embedding-3-small",model="small",'
              'protocol="embeddings",provider="compat",status="2xx"} 1.0')  # fmt: skip
    wait_until(lambda: served in gw.request("GET", "/metrics").body.decode())
    page = gw.request("GET", "/metrics").body.decode()
    assert (
        'lmgate_upstream_errors_total{deployment="compat/down-embed",kind="overloaded"} 1.0' in page
    )
    # Budgets hold for embeddings: a key of 30 tokens spends 14 a request, no output.
    capped = admin(gw, "POST", "/admin/keys", {"name": "capped", "budget_tokens": 30})[1]
    statuses = [gw.request("POST", "/v1/embeddings", {"model": "small", "input": ["a", "b"]},
                           api_key=capped["key"]).status for _ in range(4)]  # fmt: skip
    assert statuses == [200, 200, 200, 429]
    # The key's model list holds: its key may not embed with another model.
    with pytest.raises(openai.APIStatusError) as refused:
        gw.client(made["key"]).embeddings.create(model="chat", input="x")
    assert refused.value.status_code in (400, 403)


def test_a_model_of_the_other_kind_and_bad_inputs_are_400s_naming_what(
    gw: RunningGateway,
) -> None:
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as chat_model:
        client.embeddings.create(model="chat", input="x")
    assert "chat model, not an embedding model" in chat_model.value.message
    with pytest.raises(openai.BadRequestError) as embedding_model:
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}])
    assert "is an embedding model" in embedding_model.value.message
    gemini = gw.request("POST", "/v1beta/models/chat:embedContent",
                        {"content": {"parts": [{"text": "x"}]}})  # fmt: skip
    assert gemini.status == 400 and gemini.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "chat model" in gemini.json()["error"]["message"]
    for body, param in [
        ({"model": "small", "input": []}, "input"),
        ({"model": "small", "input": ["ok", ""]}, "input"),
        ({"model": "small", "input": [["no"]]}, "input"),
        ({"model": "small", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "small", "input": "x", "dimensions": 4096}, "dimensions"),
        ({"model": "small", "input": "word " * 60}, "input"),  # max_input_tokens: 50
    ]:
        refused = gw.request("POST", "/v1/embeddings", body)
        assert refused.status == 400 and refused.json()["error"]["param"] == param, refused.body
    models = orjson.loads(gw.request("GET", "/v1/models").body)["data"]
    small = next(m for m in models if m["id"] == "small")
    assert small["kind"] == "embedding" and small["dimensions"] == 1536


@pytest.mark.parametrize("lie", list(LIES))
def test_an_upstream_that_lies_is_a_502_naming_it_never_a_500(gw: RunningGateway, lie: str) -> None:
    refused = gw.request("POST", "/v1/embeddings", {"model": "liar", "input": [lie, "two"]})
    assert refused.status == 502, refused.body
    assert refused.json()["error"]["message"].startswith("upstream compat")
