"""Gemini's embedding API, client side: ``models/{model}:embedContent`` (one content,
one vector) and ``:batchEmbedContents`` (several, in order), with ``taskType``,
``title`` and ``outputDimensionality``. ``gemini._model_action`` routes them here;
errors are in Google's shape (``gemini.error_body``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from lmgate.canonical import ChatRequest, EmbedInput, Reply, Start
from lmgate.errors import GatewayError, invalid
from lmgate.frontends.base import StreamEncoder
from lmgate.frontends.validate import optional_int, optional_string, parse_json_object

ACTIONS = ("embedContent", "batchEmbedContents")
_MAX_REQUESTS = 2048  # per batch (upstreams get them in batches of what each takes)


class EmbedCall:
    """One embedding request: the path named the model, and whether it is a batch."""

    PROTOCOL = "gemini"

    def __init__(self, model: str, batch: bool) -> None:
        self.model, self.batch = model, batch

    def parse_request(self, body: bytes, headers: Mapping[str, str]) -> ChatRequest:
        data = parse_json_object(body)
        if not self.batch:
            return self._request([data], "")
        requests = data.get("requests")
        if not isinstance(requests, list) or not requests:
            raise invalid("requests: expected a non-empty array of embedContent requests")
        if len(requests) > _MAX_REQUESTS:
            raise invalid(f"requests: at most {_MAX_REQUESTS} per batch", "requests")
        return self._request(requests, "requests")

    def _request(self, requests: list[Any], where: str) -> ChatRequest:
        texts, settings = [], set()
        for index, one in enumerate(requests):
            at = f"{where}[{index}]." if where else ""
            if not isinstance(one, dict):
                raise invalid(f"{where}[{index}]: expected an object", where)
            named = optional_string(one, "model", f"{at}model")
            if named and named.removeprefix("models/") != self.model:
                raise invalid(f"{at}model: {named} is not models/{self.model} of the path")
            texts.append(_text(one.get("content"), f"{at}content"))
            settings.add((
                optional_string(one, "taskType", f"{at}taskType"),
                optional_string(one, "title", f"{at}title"),
                optional_int(one, "outputDimensionality", 1),
            ))  # fmt: skip
        if len(settings) > 1:
            raise invalid(
                "requests: give every request of a batch the same taskType, title and "
                "outputDimensionality (or send them in separate batches)"
            )
        task_type, title, dimensions = settings.pop()
        embed = EmbedInput(list(texts), dimensions, task_type, title)
        return ChatRequest(model=self.model, messages=[], embed=embed)

    def reply_body(self, reply: Reply, request: ChatRequest) -> bytes:
        vectors = [{"values": vector} for vector in reply.vectors or []]
        if self.batch:
            return orjson.dumps({"embeddings": vectors})
        return orjson.dumps({"embedding": vectors[0] if vectors else {"values": []}})

    def error_status(self, error: GatewayError) -> int:
        return error.status

    def error_body(self, error: GatewayError) -> bytes:
        from lmgate.frontends.gemini import error_body

        return error_body(error)

    def reply_headers(self, request: ChatRequest) -> dict[str, str]:
        return {}

    def stream_encoder(self, start: Start, request: ChatRequest) -> StreamEncoder:
        raise GatewayError("invalid_request", "embeddings are not streamed")  # never asked


def _text(content: Any, where: str) -> str:
    """A content's text: its text parts, joined (an embedding is of text only)."""
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise invalid(f"{where}: expected a content with parts", where)
    texts = []
    for index, part in enumerate(content["parts"]):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise invalid(f"{where}.parts[{index}]: only text parts are embedded", where)
        texts.append(part["text"])
    text = " ".join(texts)
    if not text:
        raise invalid(f"{where}: nothing to embed (empty text)", where)
    return text
