"""The hub: protocol-neutral request, message and event types.

Frontends parse client protocols into these and render events back; providers
turn them into upstream calls and upstream replies into events. Nothing here
knows a wire protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "stop_sequence", "content_filter"]


# ---- message parts -------------------------------------------------------------


@dataclass(slots=True)
class TextPart:
    text: str
    # Anthropic prompt-caching marker; kept for Anthropic upstreams, dropped elsewhere.
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ImagePart:
    """An image given inline (``data`` + ``media_type``) or by ``url``."""

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: str | None = None
    where: str = ""  # the client's path to it, for error messages


@dataclass(slots=True)
class ToolCallPart:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


def arguments_object(arguments: str) -> dict[str, Any]:
    """Tool-call arguments as the JSON object that protocols with structured input need.

    Models sometimes write broken JSON; it is kept under ``_raw_arguments`` rather than lost.
    """
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


@dataclass(slots=True)
class ToolResultPart:
    call_id: str
    content: list[TextPart | ImagePart]
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


# Who issued a reasoning signature: only an upstream of the same dialect takes it back
# (Anthropic's signed thinking, Gemini's thoughtSignature, an OpenAI Responses upstream's
# encrypted_content).
Dialect = Literal["anthropic", "gemini", "openai-responses", "bedrock"]
_MARKED: dict[str, Dialect] = {
    "gemini": "gemini",
    "openai-responses": "openai-responses",
    "bedrock": "bedrock",
}


@dataclass(frozen=True, slots=True)
class Signature:
    dialect: Dialect
    value: str

    def wire(self) -> str:
        """As a client carries it, opaque, to send it back: Anthropic's as it is (its
        clients may check it), any other marked with its dialect."""
        return self.value if self.dialect == "anthropic" else f"{self.dialect}:{self.value}"

    @classmethod
    def from_wire(cls, text: str) -> Signature:
        marker, colon, value = text.partition(":")
        dialect = _MARKED.get(marker) if colon else None
        return cls(dialect, value) if dialect else cls("anthropic", text)


@dataclass(slots=True)
class ReasoningPart:
    text: str
    signature: Signature | None = None
    redacted: str | None = None  # Anthropic's encrypted redacted_thinking data


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart | ReasoningPart


@dataclass(slots=True)
class Message:
    """One turn. ``system`` appears here only for instructions placed mid-conversation;
    leading instructions live in ``ChatRequest.system``. Tool results are ``tool`` turns."""

    role: Role
    parts: list[Part]
    name: str | None = None


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema
    cache_control: dict[str, Any] | None = None
    # Fields of the client's dialect beyond these (Anthropic's defer_loading, …): only an
    # upstream of that dialect gets them, like ``ChatRequest.extra``.
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class EmbedInput:
    """An embeddings request's inputs: texts, or token arrays (OpenAI's), one vector
    back for each, in order."""

    items: list[str | list[int]]
    dimensions: int | None = None  # a shorter vector, where the model can give one
    task_type: str | None = None  # Gemini's taskType (RETRIEVAL_QUERY, …)
    title: str | None = None  # Gemini's title, for RETRIEVAL_DOCUMENT


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    system: list[TextPart] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    # "auto" | "none" | "required" | {"name": tool}
    tool_choice: str | dict[str, str] | None = None
    parallel_tool_calls: bool | None = None
    thinking: bool | None = None  # None: the client did not say
    thinking_budget: int | None = None  # None with thinking on: the model decides
    reasoning_effort: str | None = None  # "minimal" | "low" | "medium" | "high"
    user: str | None = None
    prompt_cache_key: str | None = None  # OpenAI's: requests that share a prompt prefix
    # The agent session the request belongs to (Claude Code's session id, Codex's, a
    # prompt_cache_key…): its turns go to the deployment that holds its prompt cache.
    session: str | None = None
    key_id: str | None = None  # the API key it came with (what is kept for it is its own)
    # Fields the frontend did not recognise, and the API dialect they belong to
    # ("openai" | "anthropic"): only an upstream of the same dialect gets them.
    extra: dict[str, Any] = field(default_factory=dict)
    extra_dialect: str = "openai"
    # Anthropic beta features the client asked for (its anthropic-beta header); they
    # make the Anthropic fields in ``extra`` valid, so Anthropic upstreams get them too.
    betas: list[str] = field(default_factory=list)
    # What the client's frontend needs again to write the reply (no provider reads it).
    reply_state: Any = None
    # Tools an upstream runs itself (Anthropic's web_search, code_execution…), as the
    # client sent them: only an upstream of ``extra_dialect`` that runs them gets them.
    # Elsewhere they are dropped (named to the client), or refused ("refuse").
    server_tools: list[dict[str, Any]] = field(default_factory=list)
    server_tools_policy: str = "drop"
    # Set for an embeddings request (then ``messages`` is empty): the same way through
    # auth, limits, routing, retries and usage as a chat, its reply ``Embeddings``.
    embed: EmbedInput | None = None


# ---- events --------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    """The upstream accepted the request. Providers set ``model`` to the upstream's
    model name; the router replaces it with the catalog id that serves the reply."""

    model: str
    deployment: str = ""  # set by the router: "provider/upstream-model"
    attempts: int = 1  # set by the router: upstream requests the reply took
    dropped_tools: tuple[str, ...] = ()  # set by the router: server tools it could not run


@dataclass(slots=True)
class TextDelta:
    text: str
    logprobs: list[dict[str, Any]] | None = None  # OpenAI token-logprob objects


@dataclass(slots=True)
class ReasoningDelta:
    text: str
    signature: Signature | None = None


@dataclass(slots=True)
class ToolCallStart:
    index: int  # position among this reply's tool calls
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class Usage:
    """Token counts. ``input_tokens`` includes cached tokens (OpenAI's convention)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    estimated: bool = False  # counted by lmgate, not reported by the upstream


@dataclass(slots=True)
class Heartbeat:
    """The upstream is alive but silent; frontends send a keep-alive."""


@dataclass(slots=True, frozen=True)
class Batch:
    """The stream events between ``BATCH_BEGINS`` and ``BATCH_ENDS`` (or the stream's
    end) came in one read from the upstream: a frontend may send their frames as one
    write. Events outside a batch are sent each at once."""

    begins: bool


BATCH_BEGINS, BATCH_ENDS = Batch(True), Batch(False)


@dataclass(slots=True)
class Embeddings:
    """An embeddings reply: one vector per input, in the inputs' order."""

    vectors: list[list[float]]


Event = (
    Start
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | Finish
    | Usage
    | Heartbeat
    | Batch
    | Embeddings
)


# ---- the folded reply ----------------------------------------------------------


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Reply:
    """A whole reply, folded from events by ``accumulate``."""

    model: str = ""
    deployment: str = ""
    attempts: int = 1
    dropped_tools: tuple[str, ...] = ()
    text: str = ""
    reasoning: str = ""
    reasoning_signature: Signature | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None
    usage: Usage | None = None
    logprobs: list[dict[str, Any]] | None = None
    vectors: list[list[float]] | None = None  # an embeddings reply's


# ---- folding a stream into one reply: the single non-streaming path ----------------


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
        elif isinstance(event, Embeddings):
            reply.vectors = event.vectors
        elif isinstance(event, Start):
            reply.model, reply.deployment, reply.attempts = (
                event.model,
                event.deployment,
                event.attempts,
            )
            reply.dropped_tools = event.dropped_tools
    reply.text = "".join(text)
    reply.reasoning = "".join(reasoning)
    for index in sorted(calls):
        call = calls[index]
        call.arguments = "".join(arguments.get(index, ()))
        reply.tool_calls.append(call)
    return reply
