"""Google Vertex AI: Gemini models (publisher ``google``, ``:generateContent`` /
``:streamGenerateContent``) through the Gemini translation, and Claude models
(publisher ``anthropic``, ``:rawPredict`` / ``:streamRawPredict``) through the Anthropic
one, picked by the model's id (``claude…`` is Anthropic's).

Requests carry an OAuth access token from google-auth: a service account's key file (a
signed JWT exchanged at its token URI), Application Default Credentials, or a token
given in the config. Tokens are renewed, in a thread (google-auth's transport
blocks), five minutes before they expire.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from pydantic import model_validator

from lmgate.canonical import ChatRequest, Event
from lmgate.errors import GatewayError
from lmgate.providers import embeddings
from lmgate.providers.anthropic import AnthropicConfig, AnthropicProvider
from lmgate.providers.base import Provider, Target
from lmgate.providers.gemini import GeminiConfig, GeminiProvider
from lmgate.providers.http import HttpProvider

_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_RENEW_BEFORE = datetime.timedelta(minutes=5)
_ANTHROPIC_VERSION = "vertex-2023-10-16"


class VertexConfig(GeminiConfig, AnthropicConfig):
    base_url: str = ""  # default: the location's endpoint (aiplatform.googleapis.com for global)
    project: str
    location: str = "us-central1"
    credentials_file: str | None = None  # a service account's JSON key; else ADC
    access_token: str | None = None  # a token of your own (it is not renewed)

    @model_validator(mode="after")
    def _endpoint(self) -> VertexConfig:
        if self.access_token is None and importlib.util.find_spec("google.auth") is None:
            raise ValueError("Vertex needs google-auth: pip install 'lmgate[vertex]'")
        host = (
            "aiplatform.googleapis.com"
            if self.location == "global"
            else f"{self.location}-aiplatform.googleapis.com"
        )
        root = (self.base_url or f"https://{host}").rstrip("/")
        self.base_url = f"{root}/v1/projects/{self.project}/locations/{self.location}/publishers"
        return self


class _Token:
    """An access token for Google Cloud, shared by a provider's two publishers."""

    def __init__(self, config: VertexConfig, clock: Any) -> None:
        self._config = config
        self._clock = clock
        self._credentials: Any = None
        self._renewing = asyncio.Lock()
        self.value: str | None = config.access_token

    async def get(self, provider: str) -> str:
        if self._config.access_token:
            return self._config.access_token
        if self.value is not None and not self._expiring():
            return self.value
        async with self._renewing:  # one renewal for every request that waits on it
            if self.value is None or self._expiring():
                try:
                    self.value = await asyncio.to_thread(self._refresh)
                except Exception as error:  # google-auth's errors vary by source
                    first = str(error).splitlines()[0][:300] if str(error) else ""
                    raise GatewayError(
                        "upstream",
                        f"upstream {provider}: no Google access token "
                        f"({type(error).__name__}: {first})",
                        retryable=True,
                    ) from None
        assert self.value is not None
        return self.value

    def _expiring(self) -> bool:
        expiry = getattr(self._credentials, "expiry", None)
        if expiry is None:
            return False
        now = datetime.datetime.fromtimestamp(self._clock.time(), datetime.UTC)
        return bool(now >= expiry.replace(tzinfo=datetime.UTC) - _RENEW_BEFORE)

    def _refresh(self) -> str:
        import google.auth
        import google.auth.transport.requests
        from google.oauth2 import service_account

        if self._credentials is None:
            if self._config.credentials_file:
                self._credentials = service_account.Credentials.from_service_account_file(
                    self._config.credentials_file, scopes=_SCOPES
                )
            else:
                self._credentials, _ = google.auth.default(scopes=_SCOPES)
        self._credentials.refresh(google.auth.transport.requests.Request())
        return str(self._credentials.token)


class _Bearer(HttpProvider):
    signs_requests: ClassVar[bool] = True
    token: _Token

    def auth_headers(self) -> dict[str, str]:
        return {}  # no API key: the token, per request

    async def sign(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token.get(self.name)}"}


class _VertexGemini(_Bearer, GeminiProvider):
    def embed_batch(self, target: Target) -> int:
        # predict takes 250 instances of text-embedding models, one of gemini-embedding.
        return 1 if target.model.startswith("gemini-embedding") else 250

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        url = f"{self.config.base_url}/models/{target.model}:predict"
        data = await self.post_json(url, embeddings.vertex_body(items, request, self.name))
        return embeddings.vertex_vectors(data, self.name)


class _VertexClaude(_Bearer, AnthropicProvider):
    def auth_headers(self) -> dict[str, str]:
        return {}  # anthropic_version goes in the body on Vertex

    def betas(self, request: ChatRequest) -> list[str]:
        # The provider's own only: Vertex refuses betas it does not offer, and clients
        # (Claude Code) send Anthropic's.
        return list(self.config.beta)

    def messages_url(self, request: ChatRequest, target: Target) -> str:
        method = "streamRawPredict" if request.stream else "rawPredict"
        return f"{self.config.base_url}/anthropic/models/{target.model}:{method}"

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        body = super().build_body(request, target)
        body.pop("model", None)  # the URL names it
        body["anthropic_version"] = _ANTHROPIC_VERSION
        return body


class VertexProvider(Provider):
    config_class = VertexConfig
    config: VertexConfig

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        gemini = config.model_copy(update={"base_url": config.base_url + "/google"})
        self._gemini = _VertexGemini(name, gemini)
        self._claude = _VertexClaude(name, config)
        self._token: _Token | None = None

    def _publisher(self, target: Target) -> HttpProvider:
        return self._claude if target.model.startswith("claude") else self._gemini

    def takes_reasoning_back(self, target: Target) -> bool:
        return self._publisher(target).takes_reasoning_back(target)

    def runs_server_tools(self, request: ChatRequest) -> bool:
        return self._claude.runs_server_tools(request) and request.model.startswith("claude")

    async def start(self) -> None:
        self._token = _Token(self.config, self.clock)
        for publisher in (self._gemini, self._claude):
            publisher.token = self._token
            publisher.clock = self.clock
            await publisher.start()

    async def close(self) -> None:
        await self._gemini.close()
        await self._claude.close()

    def secrets(self) -> tuple[str, ...]:
        held = self._token.value if self._token is not None else None
        own = (value for value in (self.config.access_token, held) if value)
        return (*self._gemini.secrets(), *own)

    def stream(self, request: ChatRequest, target: Target) -> AsyncGenerator[Event, None]:
        return self._publisher(target).stream(request, target)

    def embed_batch(self, target: Target) -> int:
        return self._publisher(target).embed_batch(target)

    async def embed(
        self, items: list[str | list[int]], request: ChatRequest, target: Target
    ) -> tuple[list[list[float]], int | None]:
        return await self._publisher(target).embed(items, request, target)
