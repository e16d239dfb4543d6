"""degpt.ai, the web service the reference gateway fronts. Unofficial: it may change.

- Sign-in: ``POST {base}/v1/auths/printSignIn`` with ``{"id": DEVICE_ID, "channel": ""}``
  answers ``{"token": JWT}``; the JWT's ``exp`` claim says how long it lasts (about
  seven days). One sign-in serves every request until shortly before then, or until
  the service answers 401 (then one new sign-in, and the request is sent again once).
- Chat: ``POST {base}/v1/chat/completion/proxy`` with the JWT as a bearer token and an
  OpenAI body plus ``project`` and ``enable_thinking``. The reply is always an SSE
  stream of ``chat.completion.chunk`` (``reasoning_content`` apart), without usage:
  lmgate counts tokens itself, and folds the stream for non-stream clients.
- Catalog: ``GET {base}/config`` gives ``default_models`` (comma-separated ids),
  ``version`` and ``provider``, and may carry the site's catalog entries (name, model,
  description, support, tip).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import secrets
from typing import Any

import orjson
from pydantic import Field, field_validator

from lmgate import __version__
from lmgate.canonical import ChatRequest
from lmgate.config import data_dir
from lmgate.errors import GatewayError, redact
from lmgate.providers.base import DiscoveredModel, Discovery, ProviderConfig, Target
from lmgate.providers.client import ClientError, Response
from lmgate.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider

log = logging.getLogger("lmgate")

DEVICE_ID_FILE = "degpt-device-id"
# A token whose exp cannot be read is trusted this long (a 401 still renews it).
_UNKNOWN_LIFETIME = 3600.0


class DegptConfig(OpenAICompatConfig):
    base_url: str = "https://www.degpt.ai/api"
    # Who lmgate signs in as. When absent: generated once per installation and kept
    # in the data directory ($LMGATE_DATA_DIR or ~/.local/share/lmgate).
    device_id: str | None = Field(None, min_length=1)
    user_agent: str = f"lmgate/{__version__}"
    project: str = "DecentralGPT"
    renew_before: float = Field(300, ge=0)  # seconds before the token's exp
    sign_in_timeout: float = Field(15, gt=0)
    discover_models: bool = False  # add /config's models to the catalog
    discovery_interval: float = Field(1800, gt=0)
    discovery_timeout: float = Field(15, gt=0)
    stream_usage: bool = False  # the service reports no usage either way

    @field_validator("device_id", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return value or None  # "${DEGPT_DEVICE_ID:-}" with the variable unset


class TokenRejected(GatewayError):
    """The service answered 401: the token expired or was revoked."""


class DegptProvider(OpenAICompatProvider):
    config_class = DegptConfig
    config: DegptConfig

    bearer_per_request = True  # the sign-in token

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.config.headers = {"User-Agent": self.config.user_agent, **self.config.headers}
        if self.config.discover_models:
            self.discovery_interval = self.config.discovery_interval
        self._device_id = self.config.device_id
        self._token: str | None = None
        self._renew_at = 0.0
        self._renewal: asyncio.Future[str] | None = None  # the sign-in under way

    async def start(self) -> None:
        await super().start()
        if self._device_id is None:
            self._device_id = await asyncio.to_thread(stored_device_id)

    def secrets(self) -> tuple[str, ...]:
        own = (value for value in (self._device_id, self._token) if value)
        return (*super().secrets(), *own)

    def chat_url(self) -> str:
        return self.config.base_url.rstrip("/") + "/v1/chat/completion/proxy"

    def build_body(self, request: ChatRequest, target: Target) -> dict[str, Any]:
        body = super().build_body(request, target)
        body["stream"] = True  # the only kind of reply the service sends
        body.pop("stream_options", None)
        body.setdefault("project", self.config.project)
        body.setdefault("enable_thinking", False)  # deployment params turn it on
        return body

    async def send(self, body: dict[str, Any]) -> tuple[Response, float]:
        token = await self.token()
        try:
            return await self.post(self.chat_url(), body, {"Authorization": f"Bearer {token}"})
        except TokenRejected:
            if self._token == token:
                self._token = None  # the first request to see the 401 renews it
            token = await self.token()
            return await self.post(self.chat_url(), body, {"Authorization": f"Bearer {token}"})

    def status_error(self, status: int, raw: bytes, retry_after: str | None) -> GatewayError:
        error = super().status_error(status, raw, retry_after)
        if status == 401:  # send() renews the token once; a second 401 is final
            return TokenRejected(error.kind, error.message)
        return error

    # ---- the token ----------------------------------------------------------------

    async def token(self) -> str:
        """A token good for now. Requests that arrive meanwhile share one sign-in, and
        its failure: none waits out another's timeout after it."""
        if self._token is not None and self.clock.time() < self._renew_at:
            return self._token
        if self._renewal is None:
            self._renewal = asyncio.ensure_future(self._renew())
            self._renewal.add_done_callback(self._renewed)
        # Shielded: a client that leaves does not cancel the others' sign-in.
        return await asyncio.shield(self._renewal)

    def _renewed(self, renewal: asyncio.Future[str]) -> None:
        self._renewal = None
        if not renewal.cancelled():
            renewal.exception()  # retrieved, even when every waiter has gone

    async def _renew(self) -> str:
        token = await self._sign_in()
        now = self.clock.time()
        expires = jwt_expiry(token)
        lifetime = expires - now if expires is not None else _UNKNOWN_LIFETIME
        # Renewed renew_before ahead, or a tenth of the lifetime when that is shorter.
        self._renew_at = now + lifetime - min(self.config.renew_before, lifetime / 10)
        self._token = token
        return token

    async def _sign_in(self) -> str:
        url = self.config.base_url.rstrip("/") + "/v1/auths/printSignIn"
        try:
            async with asyncio.timeout(self.config.sign_in_timeout):
                body = orjson.dumps({"id": self._device_id, "channel": ""})
                headers = {"Content-Type": "application/json", **self.config.headers}
                response = await self.pool().request("POST", url, headers, body)
                raw = await response.read()
                status = response.status
        except TimeoutError:
            detail = f"no answer within {self.config.sign_in_timeout:g}s"
            raise self._sign_in_error(detail) from None
        except ClientError as error:
            raise self._sign_in_error(redact(str(error), self.secrets())) from None
        if status >= 300:
            refused = super().status_error(status, raw, None)  # never a TokenRejected here
            raise self._sign_in_error(refused.message.removeprefix(f"upstream {self.name}: "))
        try:
            token = orjson.loads(raw)["token"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._sign_in_error("the answer holds no token")
        return token

    def _sign_in_error(self, detail: str) -> GatewayError:
        return GatewayError(
            "upstream", f"upstream {self.name}: sign-in failed: {detail}", retryable=True
        )

    # ---- the catalog --------------------------------------------------------------

    async def discover(self) -> Discovery:
        url = self.config.base_url.rstrip("/") + "/config"
        async with asyncio.timeout(self.config.discovery_timeout):
            response = await self.pool().request("GET", url, self.config.headers)
            raw = await response.read()
            if response.status != 200:
                raise ValueError(f"/config answered HTTP {response.status}")
            data = orjson.loads(raw)
        return parse_config(data)


def parse_config(data: Any) -> Discovery:
    """The models, version and provider of a ``/config`` answer."""
    if (
        isinstance(data, dict)
        and "default_models" not in data
        and isinstance(data.get("data"), dict)
    ):
        data = data["data"]  # some deployments of the site wrap the answer
    if not isinstance(data, dict):
        raise ValueError("/config is not a JSON object")
    models: dict[str, DiscoveredModel] = {}
    for item in data.get("models") or ():
        if isinstance(item, dict):
            model_id = item.get("model") or item.get("id")
            if isinstance(model_id, str) and model_id and model_id not in models:
                models[model_id] = DiscoveredModel(
                    model_id,
                    name=_text(item.get("name")),
                    description=_text(item.get("description") or item.get("desc")) or "",
                    support="image" if item.get("support") == "image" else "text",
                    tip=_text(item.get("tip")),
                    owned_by=_text(item.get("owned_by")),
                )
    listed = data.get("default_models") or ""
    ids = listed.split(",") if isinstance(listed, str) else listed
    for model_id in ids if isinstance(ids, list) else ():
        if isinstance(model_id, str) and model_id.strip():
            models.setdefault(model_id.strip(), DiscoveredModel(model_id.strip()))
    if not models:
        raise ValueError("/config lists no models")
    return Discovery(list(models.values()), _text(data.get("version")), _text(data.get("provider")))


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and value != "" else None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unverified: only the service can check it)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"]
    except (IndexError, binascii.Error, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def stored_device_id() -> str:
    """This installation's device id: made once, then read back. Safe when several
    workers start together (the first file written wins)."""
    directory = data_dir()
    path = directory / DEVICE_ID_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    draft = directory / f".{DEVICE_ID_FILE}.{os.getpid()}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(16) + "\n")
    try:
        os.link(draft, path)  # fails when another worker was first
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()
