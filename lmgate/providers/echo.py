"""A provider that needs no network: it streams the conversation back, word by word.

It is a real provider behind the same interface as the others, used for the
offline default, demos, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
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

# A word with its trailing space, a single CJK character, or a run of spaces.
_WORDS = re.compile(
    r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]|[^\s\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]+\s*|\s+"
)


class EchoConfig(ProviderConfig):
    delay: float = Field(0.0, ge=0, le=10)  # seconds between words


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
