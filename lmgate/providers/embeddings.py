"""The embedding APIs' bodies, one pair of functions per upstream protocol: the
request for a batch of inputs, and the vectors (in the inputs' order) and input tokens
of its reply. Each provider posts them with its own URL and credentials.

- OpenAI's ``/embeddings`` (OpenAI, vLLM, Ollama, Azure OpenAI…);
- Gemini's ``batchEmbedContents``;
- Vertex AI's ``predict`` for text-embedding models;
- Bedrock's ``InvokeModel`` bodies: Amazon Titan (one text a request) and Cohere.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from lmgate.canonical import ChatRequest
from lmgate.errors import GatewayError
from lmgate.providers.base import Target, apply_overrides, count

Items = list[str | list[int]]
Vectors = tuple[list[list[float]], int | None]


def bad_reply(provider: str, what: str) -> GatewayError:
    return GatewayError(
        "upstream", f"upstream {provider} sent an unusable embeddings reply: {what}",
        retryable=True,
    )  # fmt: skip


def texts_only(items: Items, provider: str) -> list[str]:
    """Inputs for an upstream that takes text only (token arrays are OpenAI's)."""
    if not all(isinstance(item, str) for item in items):
        raise GatewayError(
            "invalid_request",
            f"input: upstream {provider} embeds text, not token arrays",
            param="input",
        )
    return [item for item in items if isinstance(item, str)]


def _vector(value: Any, provider: str) -> list[float]:
    if isinstance(value, str):  # base64 float32, from an upstream that ignored the format
        try:
            raw = base64.b64decode(value, validate=True)
            return list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))
        except ValueError:
            raise bad_reply(provider, "an embedding is neither numbers nor base64") from None
    if not isinstance(value, list):
        raise bad_reply(provider, "an embedding is not a list of numbers")
    try:  # numbers only, checked in C (a Python loop over 1536 of them costs 20 times more)
        sum(value)
    except TypeError:
        raise bad_reply(provider, "an embedding is not a list of numbers") from None
    return value


# ---- OpenAI's /embeddings ------------------------------------------------------------


def openai_body(items: Items, request: ChatRequest, target: Target) -> dict[str, Any]:
    assert request.embed is not None
    body: dict[str, Any] = {"model": target.model, "input": items, "encoding_format": "float"}
    if request.embed.dimensions is not None:
        body["dimensions"] = request.embed.dimensions
    if request.user:
        body["user"] = request.user
    return apply_overrides(body, request, target, "openai")


def openai_vectors(data: Any, provider: str) -> Vectors:
    listed = data.get("data") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
        raise bad_reply(provider, "no data list")
    indexes = [item.get("index") for item in listed]
    ordered = listed  # in order already, or without indexes (some servers send none)
    if indexes != list(range(len(listed))) and any(i is not None for i in indexes):
        if sorted(i for i in indexes if type(i) is int) != list(range(len(listed))):
            raise bad_reply(provider, "the indexes are not 0 to n-1")
        ordered = sorted(listed, key=lambda item: item["index"])
    usage = data.get("usage")
    used = count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    return [_vector(item.get("embedding"), provider) for item in ordered], used


# ---- Gemini's batchEmbedContents -----------------------------------------------------


def gemini_body(items: Items, request: ChatRequest, model: str, provider: str) -> dict[str, Any]:
    """``model``: ``models/NAME``, as each request in the batch names it."""
    assert request.embed is not None
    embed = request.embed
    one: dict[str, Any] = {"model": model}
    if embed.task_type:
        one["taskType"] = embed.task_type
    if embed.title:
        one["title"] = embed.title
    if embed.dimensions is not None:
        one["outputDimensionality"] = embed.dimensions
    texts = texts_only(items, provider)
    return {"requests": [{**one, "content": {"parts": [{"text": text}]}} for text in texts]}


def gemini_vectors(data: Any, provider: str) -> Vectors:
    listed = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not all(isinstance(item, dict) for item in listed):
        raise bad_reply(provider, "no embeddings list")
    return [_vector(item.get("values"), provider) for item in listed], None  # no token count


# ---- Vertex AI's predict (text-embedding models) --------------------------------------


def vertex_body(items: Items, request: ChatRequest, provider: str) -> dict[str, Any]:
    assert request.embed is not None
    embed = request.embed
    instances = []
    for text in texts_only(items, provider):
        instance: dict[str, Any] = {"content": text}
        if embed.task_type:
            instance["task_type"] = embed.task_type
        if embed.title:
            instance["title"] = embed.title
        instances.append(instance)
    body: dict[str, Any] = {"instances": instances}
    if embed.dimensions is not None:
        body["parameters"] = {"outputDimensionality": embed.dimensions}
    return body


def vertex_vectors(data: Any, provider: str) -> Vectors:
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list):
        raise bad_reply(provider, "no predictions list")
    vectors, used = [], 0
    for prediction in predictions:
        found = prediction.get("embeddings") if isinstance(prediction, dict) else None
        if not isinstance(found, dict):
            raise bad_reply(provider, "a prediction has no embeddings")
        vectors.append(_vector(found.get("values"), provider))
        statistics = found.get("statistics")
        used += (count(statistics.get("token_count")) or 0) if isinstance(statistics, dict) else 0
    return vectors, used


# ---- Bedrock: Amazon Titan and Cohere bodies ------------------------------------------


def bedrock_family(model: str) -> str:
    """Which body an embedding model on Bedrock takes: ``titan`` or ``cohere``."""
    name = model.rpartition("/")[2].lower()
    if "cohere." in name:
        return "cohere"
    if "titan-embed" in name:
        return "titan"
    raise GatewayError(
        "invalid_request",
        f"Bedrock model {model}: lmgate embeds with Amazon Titan and Cohere models only",
        param="model",
    )


def titan_body(text: str, request: ChatRequest) -> dict[str, Any]:
    assert request.embed is not None
    body: dict[str, Any] = {"inputText": text}
    if request.embed.dimensions is not None:
        body["dimensions"] = request.embed.dimensions
    return body


def titan_vector(data: Any, provider: str) -> Vectors:
    if not isinstance(data, dict):
        raise bad_reply(provider, "not an object")
    return [_vector(data.get("embedding"), provider)], count(data.get("inputTextTokenCount"))


_COHERE_TASKS = {"RETRIEVAL_QUERY": "search_query", "RETRIEVAL_DOCUMENT": "search_document",
                 "CLASSIFICATION": "classification", "CLUSTERING": "clustering"}  # fmt: skip


def cohere_body(items: Items, request: ChatRequest, provider: str) -> dict[str, Any]:
    assert request.embed is not None
    task = _COHERE_TASKS.get(request.embed.task_type or "", "search_document")
    return {"texts": texts_only(items, provider), "input_type": task}


def cohere_vectors(data: Any, provider: str) -> Vectors:
    found = data.get("embeddings") if isinstance(data, dict) else None
    if isinstance(found, dict):  # embedding_types asked: {"float": [...]}
        found = found.get("float")
    if not isinstance(found, list):
        raise bad_reply(provider, "no embeddings list")
    return [_vector(vector, provider) for vector in found], None
