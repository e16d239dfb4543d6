"""Provider types by the name used in config (``type:``)."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from lmgate.clock import SYSTEM, Clock
from lmgate.config import ConfigError, format_validation_error
from lmgate.providers.base import Provider

# Each imported when a config first uses it: the echo model alone needs no HTTP client.
PROVIDER_TYPES: dict[str, str] = {
    "openai": "openai_compat:OpenAICompatProvider",
    "openai_responses": "openai_responses:OpenAIResponsesProvider",
    "anthropic": "anthropic:AnthropicProvider",
    "lmv2": "lmv2:LmV2Provider",
    "degpt": "degpt:DegptProvider",
    "echo": "echo:EchoProvider",
    "gemini": "gemini:GeminiProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module, name = PROVIDER_TYPES[kind].split(":")
    cls: type[Provider] = getattr(importlib.import_module(f"lmgate.providers.{module}"), name)
    return cls


def build_provider(name: str, raw: dict[str, Any], clock: Clock = SYSTEM) -> Provider:
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in PROVIDER_TYPES:
        known = ", ".join(sorted(PROVIDER_TYPES))
        raise ConfigError(f"providers.{name}.type: unknown provider type {kind!r} (known: {known})")
    cls = provider_class(kind)
    try:
        config = cls.config_class.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, f"providers.{name}")) from None
    provider = cls(name, config)
    provider.clock = clock
    return provider
