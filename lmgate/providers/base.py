"""The provider interface: a canonical request in, canonical events out."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from lmgate.canonical import ChatRequest, Event, Message, Part
from lmgate.clock import SYSTEM, Clock
from lmgate.errors import GatewayError


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0)
    first_byte: float = Field(120.0, gt=0)  # until the upstream's response headers
    idle: float = Field(120.0, gt=0)  # longest silence between two chunks of a reply
    total: float | None = Field(None, gt=0)


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    # Fetch http(s) image URLs and send the bytes, for upstreams that cannot fetch.
    inline_image_urls: bool = False


@dataclass(slots=True)
class Target:
    """What a deployment asks of its provider: the upstream model and fixed params."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    # The model thinks on request (the catalog's ``thinking``): only then do reasoning
    # controls (reasoning_effort, DeepSeek's thinking switch) reach an upstream that
    # would otherwise refuse them.
    thinking: bool = False


def apply_overrides(
    body: dict[str, Any], request: ChatRequest, target: Target, dialect: str
) -> dict[str, Any]:
    """Finish an upstream body: the client's unknown fields when they are of this
    upstream's dialect, then the deployment's fixed params, which win."""
    if request.extra and request.extra_dialect == dialect:
        body.update(request.extra)
    if target.params:
        body.update(target.params)
    return body


_MAX_COUNT = 2**63 - 1


def count(value: Any) -> int | None:
    """A token count an upstream reported, as a sane integer: numeric strings are read,
    anything else is None, and absurd figures are clamped (they must fit the store)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(min(max(value, 0), _MAX_COUNT))


def fold_system_turns(messages: list[Message]) -> list[Message]:
    """For upstreams that take instructions only up front: each system turn inside the
    conversation goes, in its place, to the start of the next user turn (at the end,
    into a user turn of its own)."""
    if not any(message.role == "system" for message in messages):
        return messages
    folded: list[Message] = []
    pending: list[Part] = []
    for message in messages:
        if message.role == "system":
            pending += message.parts
        elif message.role == "user" and pending:
            folded.append(Message("user", [*pending, *message.parts], message.name))
            pending = []
        else:
            folded.append(message)
    if pending:
        folded.append(Message("user", pending))
    return folded


@dataclass(slots=True)
class DiscoveredModel:
    """A model an upstream lists itself, with what ``GET /v1/models`` shows of it."""

    id: str
    name: str | None = None
    description: str = ""
    support: str = "text"  # "text" | "image"
    tip: str | None = None
    owned_by: str | None = None


@dataclass(slots=True)
class Discovery:
    models: list[DiscoveredModel]
    version: str | None = None  # for the top-level fields of GET /v1/models
    provider: str | None = None


class Provider(ABC):
    config_class: ClassVar[type[ProviderConfig]] = ProviderConfig
    # Whether every reply's usage is counted by lmgate's tokenizer (which then loads
    # at start); upstreams that report usage need it only now and then.
    counts_tokens: ClassVar[bool] = False

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        # Seconds between model discoveries, for a provider that lists its models.
        self.discovery_interval: float | None = None
        self.clock: Clock = SYSTEM  # for what expires (tokens); build_provider sets it

    def takes_reasoning_back(self, target: Target) -> bool:
        """Whether the upstream wants earlier turns' reasoning sent back (and refuses a
        tool-calling turn without it)."""
        return False

    def runs_server_tools(self, request: ChatRequest) -> bool:
        """Whether this upstream runs the request's ``server_tools`` itself."""
        return False

    async def start(self) -> None:
        """Open pooled resources; called once inside the running event loop."""

    async def close(self) -> None:
        """Release pooled resources."""

    def secrets(self) -> tuple[str, ...]:
        """Values no client or log may see: keys, header values, tokens held now."""
        return ()

    async def discover(self) -> Discovery:
        """The upstream's own model list (when ``discovery_interval`` is set)."""
        raise NotImplementedError

    def embed_batch(self, target: Target) -> int:
        """Inputs one embeddings request upstream may carry; more go in batches."""
        return 2048  # OpenAI's limit

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        """The vectors of ``items`` (at most ``embed_batch``; ``request.embed`` says
        the rest), in order, and the input tokens the upstream counted (None: it did
        not say). Raise ``GatewayError`` on failure, as ``stream`` does."""
        raise GatewayError(
            "invalid_request",
            f"provider {self.name} ({self.config.type}) does not serve embeddings",
            code="embeddings_not_supported",
        )

    @abstractmethod
    def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        """Yield ``Start`` once the upstream accepted the request, then the reply's
        events, ``Finish`` and, when known, ``Usage``. Raise ``GatewayError`` on failure."""


def session_cache_key(session: str) -> str:
    """A prompt_cache_key for a session: stable, and saying nothing of the session's
    id (Claude Code's carries an account id) to the upstream."""
    return "lmgate-" + hashlib.sha256(b"lmgate session\0" + session.encode()).hexdigest()[:32]
