"""A provider that needs no network: it streams the conversation back, word by word.

It is a real provider behind the same interface as the others, used for the
offline default, demos, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncGenerator

from pydantic import Field

from lmgate.canonical import (
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    Start,
    TextDelta,
    TextPart,
    ToolResultPart,
    Usage,
)
from lmgate.observe import tokens
from lmgate.providers.base import Provider, ProviderConfig, Target

_TERMS = re.compile(r"\w+")
# A word with its trailing space, a single CJK character, or a run of spaces.
_WORDS = re.compile(
    r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]|[^\s\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]+\s*|\s+"
)


class EchoConfig(ProviderConfig):
    delay: float = Field(0.0, ge=0, le=10)  # seconds between words
    dimensions: int = Field(256, gt=0, le=8192)  # of its embeddings, unless asked fewer


class EchoProvider(Provider):
    config_class = EchoConfig
    config: EchoConfig
    counts_tokens = True

    async def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        reply = reply_text(request)
        finish = Finish("stop")
        if request.stop:
            for stop in request.stop:
                cut = reply.find(stop)
                if cut >= 0:
                    reply, finish = reply[:cut], Finish("stop_sequence", stop)
        if request.max_tokens is not None:
            encoded = tokens.encoding().encode(reply, disallowed_special=())
            if len(encoded) > request.max_tokens:
                reply = tokens.encoding().decode(encoded[: request.max_tokens])
                finish = Finish("length")
        yield Start(target.model)
        for word in _WORDS.findall(reply):
            if self.config.delay:
                await asyncio.sleep(self.config.delay)
            yield TextDelta(word)
        yield finish
        yield Usage(await tokens.count_request_async(request), tokens.count_text(reply))

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        assert request.embed is not None
        size = min(request.embed.dimensions or self.config.dimensions, self.config.dimensions)
        vectors = [hashed_vector(item, size) for item in items]
        texts = [item for item in items if isinstance(item, str)]
        listed = sum(len(item) for item in items if isinstance(item, list))
        return vectors, tokens.count_text("\n".join(texts)) + listed


def hashed_vector(item: str | list[int], size: int) -> list[float]:
    """A text's embedding, offline: its words hashed into ``size`` signed buckets (the
    hashing trick), normalised. The same text gives the same vector, and texts that
    share words are near each other, so retrieval over it finds something."""
    words = _TERMS.findall(item.lower()) if isinstance(item, str) else [str(t) for t in item]
    vector = [0.0] * size
    for word in words or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % size
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def reply_text(request: ChatRequest) -> str:
    """What the echo model says: the last user turn, described part by part."""
    for message in reversed(request.messages):
        if message.role not in ("user", "tool"):
            continue
        pieces = []
        for part in message.parts:
            if isinstance(part, TextPart):
                pieces.append(part.text)
            elif isinstance(part, ImagePart):
                pieces.append("[image]")
            elif isinstance(part, ToolResultPart):
                pieces.extend(
                    p.text if isinstance(p, TextPart) else "[image]" for p in part.content
                )
        return "Echo: " + " ".join(pieces)
    return "Echo: (nothing to echo)"
