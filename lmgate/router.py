"""Picks a deployment for a catalog entry, fails over before the first byte, meters usage."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace

from lmgate import tokens
from lmgate.canonical import (
    ChatRequest,
    Event,
    ReasoningDelta,
    Start,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from lmgate.catalog import Deployment, ModelEntry
from lmgate.errors import GatewayError
from lmgate.fetch import ImageFetcher
from lmgate.reasoning import split_think_tags


class Router:
    def __init__(
        self, fetcher: ImageFetcher | None = None, rng: random.Random | None = None
    ) -> None:
        self._fetcher = fetcher
        self._rng = rng or random.Random()

    def order(self, deployments: list[Deployment]) -> list[Deployment]:
        """Deployments in the order to try them: weighted random first, the rest after."""
        if len(deployments) < 2:
            return deployments
        remaining = list(deployments)
        ordered = []
        while remaining:
            pick = self._rng.choices(remaining, weights=[d.weight for d in remaining])[0]
            remaining.remove(pick)
            ordered.append(pick)
        return ordered

    async def stream(self, request: ChatRequest, entry: ModelEntry) -> AsyncGenerator[Event, None]:
        """The reply's events, starting with ``Start(entry.id)`` and always ending with
        ``Usage`` (counted offline when the upstream reported none)."""
        cap = entry.max_output_tokens
        if cap is not None and request.max_tokens is not None and request.max_tokens > cap:
            request = replace(request, max_tokens=cap)
        failure: GatewayError | None = None
        inlined: ChatRequest | None = None  # fetched once, whichever deployments need it
        for deployment in self.order(entry.deployments):
            sent = request
            if deployment.inline_image_urls and self._fetcher is not None:
                inlined = inlined or await self._fetcher.inline(request)
                sent = inlined
            events = deployment.provider.stream(sent, deployment.target)
            if deployment.think_tags:
                events = split_think_tags(events)
            async with aclosing(events):
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    failure = GatewayError(
                        "upstream", "upstream sent an empty reply", retryable=True
                    )
                    continue
                except GatewayError as error:
                    if not error.retryable:
                        raise
                    failure = error
                    continue
                yield Start(entry.id)
                async for event in _metered(request, first, events):
                    yield event
                return
        assert failure is not None
        raise failure


async def _metered(
    request: ChatRequest, first: Event, events: AsyncGenerator[Event, None]
) -> AsyncGenerator[Event, None]:
    output: list[str] = []
    usage_seen = False

    def note(event: Event) -> None:
        nonlocal usage_seen
        if isinstance(event, TextDelta | ReasoningDelta):
            output.append(event.text)
        elif isinstance(event, ToolCallDelta):
            output.append(event.arguments)
        elif isinstance(event, ToolCallStart):
            output.append(event.name)
        elif isinstance(event, Usage):
            usage_seen = True

    if not isinstance(first, Start):
        note(first)
        yield first
    async for event in events:
        note(event)
        yield event
    if not usage_seen:
        prompt = await tokens.count_request_async(request)
        yield Usage(prompt, await tokens.count_text_async("".join(output)), estimated=True)
