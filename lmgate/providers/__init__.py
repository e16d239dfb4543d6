"""Provider types by the name used in config (``type:``)."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from lmgate.clock import SYSTEM, Clock
from lmgate.config import ConfigError
from lmgate.config.problems import did_you_mean, validation_problems
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
    "bedrock": "bedrock:BedrockProvider",
    "azure": "azure:AzureProvider",
    "azure_responses": "azure:AzureResponsesProvider",
    "vertex": "vertex:VertexProvider",
}
# What each provider type needs installed beyond lmgate's own dependencies.
_EXTRAS = {"bedrock": "bedrock"}


def provider_class(kind: str) -> type[Provider]:
    module, name = PROVIDER_TYPES[kind].split(":")
    try:
        imported = importlib.import_module(f"lmgate.providers.{module}")
    except ModuleNotFoundError as error:
        if kind not in _EXTRAS or error.name is None or error.name.startswith("lmgate"):
            raise
        raise ConfigError(
            f"provider type {kind} needs {error.name}: pip install 'lmgate[{_EXTRAS[kind]}]'"
        ) from None
    cls: type[Provider] = getattr(imported, name)
    return cls


def build_provider(name: str, raw: dict[str, Any], clock: Clock = SYSTEM) -> Provider:
    problems = _problems(name, raw)
    if problems:
        raise ConfigError("\n".join(problems))
    cls = provider_class(raw["type"])
    provider = cls(name, cls.config_class.model_validate(raw))
    provider.clock = clock
    return provider


def provider_problems(data: dict[str, Any]) -> list[str]:
    """The problems of every provider's options in a config's data (a ``config.Check``)."""
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return []
    return [
        problem
        for name, raw in providers.items()
        if isinstance(raw, dict) and "type" in raw  # no type: the config says so
        for problem in _problems(name, raw)
    ]


def _problems(name: str, raw: dict[str, Any]) -> list[str]:
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in PROVIDER_TYPES:
        known = ", ".join(sorted(PROVIDER_TYPES))
        return [
            f"providers.{name}.type: unknown provider type {kind!r}"
            f"{did_you_mean(str(kind), PROVIDER_TYPES)} (known: {known})"
        ]
    try:
        cls = provider_class(kind)
    except ConfigError as error:  # its library is not installed
        return [f"providers.{name}.type: {error}"]
    try:
        cls.config_class.model_validate(raw)
    except ValidationError as error:
        return validation_problems(error, f"providers.{name}", cls.config_class)
    except ConfigError as error:  # a check of the provider's own (a URL, say)
        return [str(error)]
    return []
