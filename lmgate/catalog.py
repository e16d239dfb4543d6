"""The model catalog: what clients can ask for, and which deployments serve it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lmgate.config import CatalogInfo, Config
from lmgate.errors import GatewayError
from lmgate.providers.base import Provider, Target


@dataclass(slots=True)
class Deployment:
    provider: Provider
    target: Target
    weight: float = 1.0
    think_tags: bool = False  # split <think>…</think> out of the reply text

    @property
    def inline_image_urls(self) -> bool:
        return self.provider.config.inline_image_urls


@dataclass(slots=True)
class ModelEntry:
    id: str
    name: str
    owned_by: str
    description: str
    support: str  # "text" | "image"
    tip: str
    created: int  # milliseconds, as in the reference catalog
    deployments: list[Deployment]
    context_window: int | None = None
    max_output_tokens: int | None = None
    vision_fallback: str | None = None
    aliases: list[str] = field(default_factory=list)


class Catalog:
    def __init__(self, entries: list[ModelEntry], auto: list[str], info: CatalogInfo) -> None:
        self.entries = entries
        self.info = info
        self.started = datetime.now(UTC)
        self._by_id = {entry.id: entry for entry in entries}
        # Display names and aliases never shadow an id.
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for name in (*entry.aliases, entry.name):
                self._by_name.setdefault(name.casefold(), entry)
        self._auto = [self._by_id[model_id] for model_id in auto if model_id in self._by_id]

    @classmethod
    def from_config(cls, config: Config, providers: dict[str, Provider]) -> Catalog:
        now_ms = int(time.time() * 1000)
        entries = []
        for model in config.models:
            deployments = [
                Deployment(
                    providers[item.provider],
                    Target(item.model or model.id, dict(item.params)),
                    item.weight,
                    item.reasoning == "think_tags",
                )
                for item in model.all_deployments()
            ]
            entries.append(
                ModelEntry(
                    id=model.id,
                    name=model.name or model.id,
                    owned_by=model.owned_by,
                    description=model.description,
                    support=model.support,
                    tip=model.tip or model.name or model.id,
                    created=model.created if model.created is not None else now_ms,
                    deployments=deployments,
                    context_window=model.context_window,
                    max_output_tokens=model.max_output_tokens,
                    vision_fallback=model.vision_fallback,
                    aliases=list(model.aliases),
                )
            )
        return cls(entries, config.routing.auto, config.catalog)

    def get(self, model_id: str) -> ModelEntry | None:
        return self._by_id.get(model_id)

    def resolve(self, requested: str, images: bool = False) -> ModelEntry:
        """A model by id, alias or display name; ``auto`` is the first auto candidate
        that can take the request. A request with images to a text-only model goes to
        its ``vision_fallback``, or is refused."""
        entry = self._find(requested, images)
        if images and entry.support != "image":
            if entry.vision_fallback:
                return self._by_id[entry.vision_fallback]
            raise GatewayError(
                "invalid_request",
                f"model {entry.id} does not accept images; send text only, "
                "or choose a model whose support is 'image'",
                param="messages",
            )
        return entry

    def _find(self, requested: str, images: bool) -> ModelEntry:
        entry = self._by_id.get(requested)
        if entry is not None:
            return entry
        if requested == "auto":
            for candidate in self._auto:
                if not images or candidate.support == "image" or candidate.vision_fallback:
                    return candidate
            if images and self._auto:
                raise GatewayError(
                    "invalid_request",
                    "model 'auto': no model in routing.auto accepts images",
                    param="model",
                )
            raise GatewayError(
                "not_found",
                "model 'auto' is not available: routing.auto lists no models",
                param="model",
                code="model_not_found",
            )
        entry = self._by_name.get(requested.casefold())
        if entry is None:
            raise GatewayError(
                "not_found",
                f"The model {requested!r} does not exist; GET /v1/models lists the models",
                param="model",
                code="model_not_found",
            )
        return entry
