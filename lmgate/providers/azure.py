"""Azure OpenAI: Chat Completions on a resource's deployments
(``/openai/deployments/{deployment}/chat/completions?api-version=…``) or on the v1 API
(``/openai/v1/chat/completions``), and the Responses API on v1 (``azure_responses``).

The translation is the OpenAI one; what is Azure's is the URL, the credentials (an
``api-key`` header, or a Microsoft Entra ID token from azure-identity: managed identity,
a client secret, or its default chain) and the content filter's refusals.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import orjson
from pydantic import model_validator

from lmgate.errors import GatewayError
from lmgate.providers.client import Response
from lmgate.providers.http import HttpProvider, HttpProviderConfig
from lmgate.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider
from lmgate.providers.openai_responses import OpenAIResponsesConfig, OpenAIResponsesProvider

_SCOPE = "https://cognitiveservices.azure.com/.default"
_RENEW_BEFORE = 300.0  # seconds before a token's expiry that it is renewed


class AzureAuthConfig(HttpProviderConfig):
    # base_url: the resource's endpoint, https://NAME.openai.azure.com
    # api_key: sent as the api-key header. Without one, an Entra ID token:
    entra: Literal["managed_identity", "client_secret", "default"] | None = None
    tenant_id: str | None = None
    client_id: str | None = None  # a user-assigned identity's, or the app's
    client_secret: str | None = None

    @model_validator(mode="after")
    def _credentials(self) -> AzureAuthConfig:
        if not self.api_key and self.entra is None:
            raise ValueError("give api_key, or entra (managed_identity, client_secret, default)")
        if self.entra is not None and importlib.util.find_spec("azure.identity") is None:
            raise ValueError("entra needs azure-identity: pip install 'lmgate[azure]'")
        if self.entra == "client_secret" and not (
            self.tenant_id and self.client_id and self.client_secret
        ):
            raise ValueError("entra client_secret needs tenant_id, client_id and client_secret")
        return self


class AzureAuth(HttpProvider):
    """The Azure credentials of a provider: a key, or Entra ID tokens."""

    config: AzureAuthConfig
    signs_requests: ClassVar[bool] = True

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self._credential: Any = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._renewing: asyncio.Lock | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.config.api_key} if self.config.api_key else {}

    def secrets(self) -> tuple[str, ...]:
        own = (value for value in (self.config.client_secret, self._token) if value)
        return (*super().secrets(), *own)

    async def sign(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        if self.config.api_key:
            return {}
        return {"Authorization": f"Bearer {await self._entra_token()}"}

    async def _entra_token(self) -> str:
        if self._token is not None and self.clock.time() < self._renew_at:
            return self._token
        if self._renewing is None:
            self._renewing = asyncio.Lock()
        async with self._renewing:  # one renewal for every request that needs it
            if self._token is None or self.clock.time() >= self._renew_at:
                try:
                    token = await self._entra().get_token(_SCOPE)
                except Exception as error:  # azure-identity's errors vary by source
                    raise GatewayError(
                        "upstream",
                        f"upstream {self.name}: no Entra ID token "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:300]})",
                        retryable=True,
                    ) from None
                self._token = token.token
                self._renew_at = min(token.expires_on - _RENEW_BEFORE, self.clock.time() + 3600)
        assert self._token is not None
        return self._token

    def _entra(self) -> Any:
        if self._credential is None:
            from azure.identity import aio  # only for a config that uses Entra ID

            config = self.config
            if config.entra == "client_secret":
                self._credential = aio.ClientSecretCredential(
                    str(config.tenant_id), str(config.client_id), str(config.client_secret)
                )
            elif config.entra == "managed_identity":
                self._credential = aio.ManagedIdentityCredential(client_id=config.client_id)
            else:
                self._credential = aio.DefaultAzureCredential()
        return self._credential

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()
            self._credential = None
        await super().close()

    def status_error(self, status: int, raw: bytes, retry_after: str | None) -> GatewayError:
        """Azure's content filter refuses a prompt with a 400 of its own code."""
        error = super().status_error(status, raw, retry_after)
        if status == 400 and _error_code(raw) == "content_filter":
            return GatewayError(
                "invalid_request",
                f"upstream {self.name}: Azure's content filter refused the prompt: "
                + error.message.partition(": ")[2],
                code="content_filter",
            )
        return error


class AzureConfig(AzureAuthConfig, OpenAICompatConfig):
    api: Literal["deployments", "v1"] = "deployments"
    api_version: str = "2024-10-21"  # for the deployments API


class AzureProvider(AzureAuth, OpenAICompatProvider):
    config_class = AzureConfig
    config: AzureConfig

    async def send(self, body: dict[str, Any]) -> tuple[Response, float]:
        base = self.config.base_url.rstrip("/")
        if self.config.api == "v1":
            return await self.post(f"{base}/openai/v1/chat/completions", body)
        deployment = quote(str(body["model"]), safe="")
        version = quote(self.config.api_version, safe="")
        url = f"{base}/openai/deployments/{deployment}/chat/completions?api-version={version}"
        return await self.post(url, body)

    def embeddings_url(self, model: str) -> str:
        base = self.config.base_url.rstrip("/")
        if self.config.api == "v1":
            return f"{base}/openai/v1/embeddings"
        deployment = quote(model, safe="")
        version = quote(self.config.api_version, safe="")
        return f"{base}/openai/deployments/{deployment}/embeddings?api-version={version}"


class AzureResponsesConfig(AzureAuthConfig, OpenAIResponsesConfig):
    pass


class AzureResponsesProvider(AzureAuth, OpenAIResponsesProvider):
    config_class = AzureResponsesConfig
    config: AzureResponsesConfig

    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/openai/v1/responses"


def _error_code(raw: bytes) -> str | None:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None
