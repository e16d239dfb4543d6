"""Reasoning kept for clients that drop it. DeepSeek's thinking models (and others
with ``send_reasoning``) refuse a conversation whose tool-calling turns come back
without their reasoning, and some clients (Continue) drop it from the turns they send
back. lmgate remembers the reasoning of each reply that called tools, by the calls'
ids, and puts it back into a later turn that lost it: for the same API key only.

Bounded: ``max_bytes`` of reasoning text at most (least recently used out first), each
kept ``ttl`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict

from lmgate.canonical import (
    ChatRequest,
    Event,
    ReasoningDelta,
    ReasoningPart,
    Signature,
    ToolCallPart,
    ToolCallStart,
)
from lmgate.clock import SYSTEM, Clock

_LONGEST = 256 * 1024  # characters of one reply's reasoning worth keeping


class ReasoningMemory:
    def __init__(
        self, max_bytes: int = 64 * 2**20, ttl: float = 3600, clock: Clock = SYSTEM
    ) -> None:
        self.max_bytes, self.ttl, self._clock = max_bytes, ttl, clock
        # (key id, tool call id) -> (reasoning, monotonic expiry); one entry per reply,
        # under its first call's id.
        self._kept: OrderedDict[tuple[str, str], tuple[ReasoningPart, float]] = OrderedDict()
        self._size = 0
        self.restored = 0  # turns given their reasoning back

    def restore(self, request: ChatRequest) -> None:
        """Give back their reasoning to the request's assistant turns that called tools
        and came without it (the client dropped it)."""
        owner = request.key_id or ""
        now = self._clock.monotonic()
        for message in request.messages:
            if message.role != "assistant":
                continue
            parts = message.parts
            call = next((p for p in parts if isinstance(p, ToolCallPart)), None)
            if call is None or any(isinstance(p, ReasoningPart) for p in parts):
                continue
            found = self._kept.get((owner, call.id))
            if found is not None and found[1] > now:
                parts.insert(0, found[0])
                self.restored += 1

    def keeper(self, request: ChatRequest) -> Keeper:
        return Keeper(self, request.key_id or "")

    def _put(self, owner: str, call_id: str, part: ReasoningPart) -> None:
        name = (owner, call_id)
        before = self._kept.pop(name, None)
        if before is not None:
            self._size -= len(before[0].text)
        self._kept[name] = (part, self._clock.monotonic() + self.ttl)
        self._size += len(part.text)
        while self._size > self.max_bytes and self._kept:
            _, (dropped, _) = self._kept.popitem(last=False)
            self._size -= len(dropped.text)


class Keeper:
    """Watches one reply's events: its reasoning, and the ids of the tools it called."""

    __slots__ = ("_call", "_memory", "_owner", "_signature", "_text")

    def __init__(self, memory: ReasoningMemory, owner: str) -> None:
        self._memory, self._owner = memory, owner
        self._text: list[str] = []
        self._signature: Signature | None = None
        self._call: str | None = None

    def see(self, event: Event) -> None:
        if isinstance(event, ReasoningDelta):
            self._text.append(event.text)
            self._signature = event.signature or self._signature
        elif isinstance(event, ToolCallStart) and self._call is None and event.id:
            self._call = event.id

    def done(self) -> None:
        """The reply ended: keep its reasoning when it called a tool."""
        if self._call is None or not self._text:
            return
        text = "".join(self._text)
        if len(text) <= _LONGEST:
            self._memory._put(self._owner, self._call, ReasoningPart(text, self._signature))
