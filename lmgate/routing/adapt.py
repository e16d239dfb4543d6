"""What a deployment needs done to a request and its reply, in one place: image URLs
fetched for upstreams that take none, output capped at the model's maximum, and
reasoning that models write inline as ``<think>…</think>`` split out of the text.

``ThinkSplitter`` is a streaming state machine: feed it text in chunks split
anywhere (even inside a tag) and it returns reasoning and answer pieces; the
same machine serves whole replies, so streamed and non-streamed splits agree.
``split_think_tags`` applies it to a canonical event stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING

from lmgate.canonical import (
    ChatRequest,
    Embeddings,
    Event,
    Finish,
    ReasoningDelta,
    Start,
    TextDelta,
    Usage,
)
from lmgate.errors import GatewayError
from lmgate.observe import tokens

if TYPE_CHECKING:
    from lmgate.media.fetch import ImageFetcher
    from lmgate.routing.catalog import Deployment, ModelEntry

_OPEN, _CLOSE = "<think>", "</think>"


class Adapter:
    """One request as each deployment it is tried on needs it; images are fetched
    once, whichever deployment needs them first."""

    __slots__ = ("_fetcher", "_inlined", "_request")

    def __init__(self, request: ChatRequest, fetcher: ImageFetcher | None) -> None:
        self._request = request
        self._fetcher = fetcher
        self._inlined: ChatRequest | None = None

    async def request_for(self, entry: ModelEntry, deployment: Deployment) -> ChatRequest:
        sent = self._request
        if deployment.inline_image_urls and self._fetcher is not None:
            if self._inlined is None:
                self._inlined = await self._fetcher.inline(sent)
            sent = self._inlined
        cap = entry.max_output_tokens
        if cap is not None and sent.max_tokens is not None and sent.max_tokens > cap:
            return replace(sent, max_tokens=cap)
        return sent

    @staticmethod
    def reply(deployment: Deployment, sent: ChatRequest) -> AsyncGenerator[Event, None]:
        if sent.embed is not None:
            return embeddings(deployment, sent)
        events = deployment.provider.stream(sent, deployment.target)
        return split_think_tags(events) if deployment.think_tags else events


async def embeddings(deployment: Deployment, request: ChatRequest) -> AsyncGenerator[Event, None]:
    """An embeddings request as events: the provider's vectors, in batches of what
    its upstream takes at once, put back in order; then the input tokens (the
    upstream's count, else lmgate's)."""
    assert request.embed is not None
    provider, target, items = deployment.provider, deployment.target, request.embed.items
    vectors: list[list[float]] = []
    counted: int | None = 0
    size = provider.embed_batch(target)
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        found, tokens_used = await provider.embed(batch, request, target)
        if len(found) != len(batch):
            raise GatewayError(
                "upstream",
                f"upstream {deployment.name} sent {len(found)} vectors for {len(batch)} inputs",
                retryable=True,
            )
        vectors += found
        counted = None if counted is None or tokens_used is None else counted + tokens_used
    yield Start(target.model)
    yield Embeddings(vectors)
    yield Finish("stop")
    if counted is None:
        yield Usage(await tokens.count_request_async(request), 0, estimated=True)
    else:
        yield Usage(counted, 0)


class ThinkSplitter:
    """``feed(text)`` → ``[(is_reasoning, text), …]``; ``end()`` flushes what is held.

    Only a ``<think>`` at the very start (after whitespace) opens reasoning.
    Leading whitespace inside the reasoning and before the answer is dropped.
    """

    __slots__ = ("_held", "_state")

    def __init__(self) -> None:
        self._state = "start"  # start | lead | think | after | text
        self._held = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        if self._state == "text":
            return [(False, text)] if text else []
        out: list[tuple[bool, str]] = []
        held = self._held + text
        self._held = ""
        while held:
            if self._state == "start":
                stripped = held.lstrip()
                if stripped.startswith(_OPEN):
                    held, self._state = stripped[len(_OPEN) :], "lead"
                elif _OPEN.startswith(stripped):  # maybe a tag still arriving
                    self._held = held
                    return out
                else:
                    self._state = "text"
                    out.append((False, held))
                    return out
            elif self._state in ("lead", "after"):
                held = held.lstrip()
                if held:
                    self._state = "think" if self._state == "lead" else "text"
            elif self._state == "think":
                cut = held.find(_CLOSE)
                if cut >= 0:
                    if cut:
                        out.append((True, held[:cut]))
                    held, self._state = held[cut + len(_CLOSE) :], "after"
                    continue
                keep = _partial_suffix(held, _CLOSE)
                if len(held) > keep:
                    out.append((True, held[: len(held) - keep]))
                self._held = held[len(held) - keep :] if keep else ""
                return out
            else:  # text
                out.append((False, held))
                return out
        return out

    def end(self) -> list[tuple[bool, str]]:
        held, self._held = self._held, ""
        if not held:
            return []
        # An unfinished opening tag was text after all; an unfinished closing tag
        # inside reasoning is reasoning.
        return [(self._state == "think", held)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def split_text(text: str) -> list[tuple[bool, str]]:
    splitter = ThinkSplitter()
    return splitter.feed(text) + splitter.end()


async def split_think_tags(events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """Move ``<think>`` text out of ``TextDelta``s into ``ReasoningDelta``s."""
    splitter = ThinkSplitter()
    async for event in events:
        if isinstance(event, TextDelta):
            for is_reasoning, piece in splitter.feed(event.text):
                yield ReasoningDelta(piece) if is_reasoning else TextDelta(piece, event.logprobs)
            continue
        if isinstance(event, Finish):
            for is_reasoning, piece in splitter.end():
                yield ReasoningDelta(piece) if is_reasoning else TextDelta(piece)
        yield event
