"""The "LM v2" chat API (``POST /lm/v2/chat/completions``).

Its replies are OpenAI-shaped, so parsing is the OpenAI-compatible provider's
(lenient about the broken chunks and the ``normal`` finish reason this API
sends). Requests differ: other parameter names and ranges, and a strict
conversation shape — only ``user`` / ``assistant`` / ``function`` turns,
alternating, starting and ending with ``user`` (so an odd count). ``normalise``
turns any valid conversation into that shape; README has the table.
"""

from __future__ import annotations

from typing import Any

from lmgate.canonical import (
    ChatRequest,
    ImagePart,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)
from lmgate.providers.base import Target, fold_system_turns
from lmgate.providers.openai_compat import (
    OpenAICompatConfig,
    OpenAICompatProvider,
    content_out,
    tool_call_out,
)

# A conversation must start with a user turn; one that opens with the assistant
# (and has no system text to stand in) gets this first.
OPENING = "(conversation continues)"
# ...and end with one: a trailing assistant turn (a prefill) is followed by this.
CONTINUE = "Continue."

_RANGES = {
    "temperature": (0.01, 1.0),  # (0, 1]: 0 is refused
    "top_p": (0.0, 1.0),
    "penalty_score": (1.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}


class LmV2Config(OpenAICompatConfig):
    inline_image_urls: bool = True  # the LM v2 API documents data URLs only


class LmV2Provider(OpenAICompatProvider):
    config_class = LmV2Config
    config: LmV2Config

    def chat_url(self) -> str:
        return self.config.base_url.rstrip("/") + "/lm/v2/chat/completions"

    def messages_out(self, request: ChatRequest, target: Target) -> list[dict[str, Any]]:
        return normalise(request)

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        body = super().build_body(request, target)
        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        if request.top_k is not None:
            body["top_k"] = request.top_k
        for name, (low, high) in _RANGES.items():
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                body[name] = min(max(value, low), high)
        return body


def normalise(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as LM v2 accepts it (see the module docstring)."""
    names: dict[str, str] = {}  # tool call id -> tool name, for function turns
    turns: list[_Turn] = []
    for message in fold_system_turns(request.messages):
        if message.role == "assistant":
            calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
            names.update((call.id, call.name) for call in calls)
            text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
            turns.append(_Turn("assistant", [TextPart(text)] if text else [], calls=calls))
        elif message.role == "tool":
            for result in message.parts:
                if isinstance(result, ToolResultPart):
                    name = names.get(result.call_id, result.call_id)
                    turns.append(_Turn("function", list(result.content), name=name))
        else:
            parts = [p for p in message.parts if isinstance(p, TextPart | ImagePart)]
            turns.append(_Turn("user", parts))

    merged: list[_Turn] = []
    for turn in turns:
        if merged and merged[-1].side == turn.side:
            merged[-1].absorb(turn)
        else:
            merged.append(turn)

    system = "\n\n".join(part.text for part in request.system)
    if not merged or merged[0].side == "assistant":
        merged.insert(0, _Turn("user", [TextPart(system or OPENING)]))
    else:
        if merged[0].role == "function":  # a result with no call before it: plain text
            merged[0] = _Turn("user", merged[0].as_text_parts())
        if system:
            merged[0].parts.insert(0, TextPart(system))
    if merged[-1].side == "assistant":
        merged.append(_Turn("user", [TextPart(CONTINUE)]))
    return [turn.out() for turn in merged]


class _Turn:
    __slots__ = ("calls", "name", "parts", "role")

    def __init__(
        self,
        role: str,
        parts: list[TextPart | ImagePart],
        name: str | None = None,
        calls: list[ToolCallPart] | None = None,
    ) -> None:
        self.role = role
        self.parts = parts
        self.name = name
        self.calls = calls or []

    @property
    def side(self) -> str:
        return "assistant" if self.role == "assistant" else "user"

    def as_text_parts(self) -> list[TextPart | ImagePart]:
        if self.role != "function":
            return self.parts
        return [TextPart(f"[result of {self.name}]"), *self.parts]

    def absorb(self, other: _Turn) -> None:
        """Merge the next turn of the same side into this one."""
        if self.role == other.role == "function":
            # Several results in a row (parallel tool calls): one function turn.
            self.parts = [*self.as_text_parts(), *other.as_text_parts()]
            self.name = f"{self.name},{other.name}"
            return
        if self.side == "user" and self.role != other.role:
            # Results beside user text: one user turn, the results written as text.
            self.parts = self.as_text_parts()
            self.role, self.name = "user", None
        self.parts = [*self.parts, *other.as_text_parts()]
        self.calls += other.calls

    def out(self) -> dict[str, Any]:
        texts = [p for p in self.parts if isinstance(p, TextPart) and p.text]
        images = [p for p in self.parts if isinstance(p, ImagePart)]
        content: Any = (
            "\n\n".join(p.text for p in texts) if not images else content_out([*texts, *images])
        )
        turn: dict[str, Any] = {"role": self.role, "content": content}
        if self.role == "function" and self.name:
            turn["name"] = self.name
        if self.calls:
            turn["tool_calls"] = [tool_call_out(call) for call in self.calls]
        return turn
