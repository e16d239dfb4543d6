"""Provider types by the name used in config (``type:``)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lmgate.config import ConfigError, format_validation_error
from lmgate.providers.anthropic import AnthropicProvider
from lmgate.providers.base import Provider
from lmgate.providers.degpt import DegptProvider
from lmgate.providers.echo import EchoProvider
from lmgate.providers.gemini import GeminiProvider
from lmgate.providers.lmv2 import LmV2Provider
from lmgate.providers.openai_compat import OpenAICompatProvider
from lmgate.providers.openai_responses import OpenAIResponsesProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {
    "openai": OpenAICompatProvider,
    "openai_responses": OpenAIResponsesProvider,
    "anthropic": AnthropicProvider,
    "lmv2": LmV2Provider,
    "degpt": DegptProvider,
    "echo": EchoProvider,
    "gemini": GeminiProvider,
}


def build_provider(name: str, raw: dict[str, Any]) -> Provider:
    kind = raw.get("type")
    cls = PROVIDER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ConfigError(f"providers.{name}.type: unknown provider type {kind!r} (known: {known})")
    try:
        config = cls.config_class.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, f"providers.{name}")) from None
    return cls(name, config)
