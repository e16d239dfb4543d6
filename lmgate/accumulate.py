"""Fold a canonical event stream into one ``Reply`` — the single non-streaming path."""

from __future__ import annotations

from collections.abc import AsyncIterator

from lmgate.canonical import (
    Event,
    Finish,
    ReasoningDelta,
    Reply,
    Start,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)


async def accumulate(events: AsyncIterator[Event], reply: Reply | None = None) -> Reply:
    """Fold ``events`` into ``reply`` (a new one by default); a caller that passes its
    own still sees what arrived (the model, the deployment) when the events fail."""
    if reply is None:
        reply = Reply()
    text: list[str] = []
    reasoning: list[str] = []
    arguments: dict[int, list[str]] = {}
    calls: dict[int, ToolCall] = {}
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
            if event.logprobs:
                if reply.logprobs is None:
                    reply.logprobs = []
                reply.logprobs.extend(event.logprobs)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
            if event.signature:
                reply.reasoning_signature = event.signature
        elif isinstance(event, ToolCallStart):
            calls[event.index] = ToolCall(event.id, event.name, "")
            arguments[event.index] = []
        elif isinstance(event, ToolCallDelta):
            arguments.setdefault(event.index, []).append(event.arguments)
        elif isinstance(event, Finish):
            reply.finish = event
        elif isinstance(event, Usage):
            reply.usage = event
        elif isinstance(event, Start):
            reply.model, reply.deployment, reply.attempts = (
                event.model,
                event.deployment,
                event.attempts,
            )
    reply.text = "".join(text)
    reply.reasoning = "".join(reasoning)
    for index in sorted(calls):
        call = calls[index]
        call.arguments = "".join(arguments.get(index, ()))
        reply.tool_calls.append(call)
    return reply
