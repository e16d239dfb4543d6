"""The model catalog: what clients can ask for, and which deployments serve it."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lmgate.clock import SYSTEM, Clock
from lmgate.config import CatalogInfo, Config, CooldownConfig
from lmgate.errors import GatewayError
from lmgate.observe.pricing import Price, lookup
from lmgate.providers.base import Discovery, Provider, Target
from lmgate.routing.health import Health


@dataclass(slots=True, eq=False)  # compared by identity: two may look alike
class Deployment:
    provider: Provider
    target: Target
    weight: float = 1.0
    think_tags: bool = False  # split <think>…</think> out of the reply text
    health: Health = field(default_factory=Health)
    key: str = ""  # "model-id#index": the same in every process with this config
    price: Price | None = None  # None: not known, its requests' cost is not counted

    @property
    def name(self) -> str:
        return f"{self.provider.name}/{self.target.model}"

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
    tools: bool = True
    balance: str = "weighted"  # | "least_in_flight"
    publish_aliases: bool = False
    listed_for: str | None = None  # a published alias's entry: the id it stands for
    kind: str = "chat"  # | "embedding"
    dimensions: int | None = None  # an embedding model's vector length
    max_input_tokens: int | None = None


class Catalog:
    def __init__(
        self,
        entries: list[ModelEntry],
        auto: list[str],
        info: CatalogInfo,
        fallbacks: dict[str, list[str]] | None = None,
        cooldown: CooldownConfig | None = None,
        clock: Clock = SYSTEM,
        unknown_model: str = "error",
    ) -> None:
        self._configured = entries
        self._unknown_to_auto = unknown_model == "auto"
        self._clock = clock
        self._fallbacks = fallbacks or {}
        self.info = info
        self._info_given = set(info.model_fields_set)  # written in the config: kept
        self._cooldown = cooldown or CooldownConfig()
        self.started = datetime.now(UTC)
        self._discovered: dict[str, list[ModelEntry]] = {}  # provider name -> its models
        self.prices: dict[str, Price] = {}  # the config's, by upstream model name
        self._index()
        self._auto = [self._by_id[model_id] for model_id in auto if model_id in self._by_id]

    def _index(self) -> None:
        by_id: dict[str, ModelEntry] = {}
        for entry in self._configured:
            by_id[entry.id] = entry
        for found in self._discovered.values():  # the config's entry wins, then the first
            for entry in found:
                by_id.setdefault(entry.id, entry)
        # Display names and aliases never shadow an id.
        by_name: dict[str, ModelEntry] = {}
        for entry in by_id.values():
            for name in (*entry.aliases, entry.name):
                by_name.setdefault(name.casefold(), entry)
        self.entries, self._by_id, self._by_name = list(by_id.values()), by_id, by_name
        # What GET /v1/models lists: every model, then each published alias as a copy
        # under its own id (an alias that is some model's id is not listed twice).
        self.listed = [
            *self.entries,
            *(
                dataclasses.replace(entry, id=alias, listed_for=entry.id)
                for entry in self.entries
                if entry.publish_aliases
                for alias in entry.aliases
                if alias not in by_id
            ),
        ]

    def add_discovered(self, provider: Provider, found: Discovery) -> None:
        """Replace what ``provider`` listed before by ``found``. Models written in the
        config win over discovered ones, and so do its ``catalog`` fields."""
        before = {entry.id: entry for entry in self._discovered.get(provider.name, ())}
        now_ms = int(time.time() * 1000)
        entries = []
        for model in found.models:
            known = before.get(model.id)
            entry = ModelEntry(
                id=model.id,
                name=model.name or model.id,
                owned_by=model.owned_by or owner_of(model.id),
                description=model.description,
                support=model.support,
                tip=model.tip or model.name or model.id,
                created=known.created if known else now_ms,
                # The same deployment across refreshes keeps its health.
                deployments=known.deployments if known else [self._deployment(provider, model.id)],
            )
            entries.append(entry)
        self._discovered[provider.name] = entries
        update = {
            name: value
            for name, value in (("version", found.version), ("provider", found.provider))
            if value and name not in self._info_given
        }
        if update:
            self.info = self.info.model_copy(update=update)
        self._index()

    def _deployment(self, provider: Provider, model_id: str) -> Deployment:
        cooldown = self._cooldown
        health = Health(None, 100, cooldown.failures, cooldown.seconds, self._clock)
        price = lookup(model_id, self.prices)
        return Deployment(
            provider, Target(model_id), health=health, key=f"{model_id}#0", price=price
        )

    def for_key(self, allowed: list[str] | None) -> Catalog:
        """The catalog as a key that may use only ``allowed`` sees it (None: all)."""
        if allowed is None:
            return self
        view = copy.copy(self)
        view.entries = [entry for entry in self.entries if entry.id in allowed]
        view.listed = [entry for entry in self.listed if (entry.listed_for or entry.id) in allowed]
        view._by_id = {entry.id: entry for entry in view.entries}
        return view

    def deployment(self, key: str) -> Deployment | None:
        """The deployment with this ``Deployment.key``."""
        entry = self._by_id.get(key.rpartition("#")[0])
        for deployment in entry.deployments if entry else ():
            if deployment.key == key:
                return deployment
        return None

    @classmethod
    def from_config(
        cls, config: Config, providers: dict[str, Provider], clock: Clock = SYSTEM
    ) -> Catalog:
        now_ms = int(time.time() * 1000)
        cooldown = config.routing.cooldown
        prices = {name: Price.of(price) for name, price in config.prices.items()}
        entries = []
        for model in config.models:
            deployments = [
                Deployment(
                    providers[item.provider],
                    Target(item.model or model.id, dict(item.params), bool(item.thinking)),
                    item.weight,
                    item.reasoning == "think_tags",
                    Health(
                        item.max_in_flight,
                        item.max_queued,
                        cooldown.failures,
                        cooldown.seconds,
                        clock,
                    ),
                    f"{model.id}#{index}",
                    Price.of(item.price) if item.price else lookup(item.model or model.id, prices),
                )
                for index, item in enumerate(model.all_deployments())
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
                    publish_aliases=model.publish_aliases,
                    tools=model.tools,
                    balance=model.balance,
                    kind=model.kind,
                    dimensions=model.dimensions,
                    max_input_tokens=model.max_input_tokens,
                )
            )
        routing = config.routing
        catalog = cls(
            entries,
            routing.auto,
            config.catalog,
            routing.fallbacks,
            routing.cooldown,
            clock,
            routing.unknown_model,
        )
        catalog.prices = prices
        return catalog

    def unpriced(self) -> list[str]:
        """Deployments whose requests' cost is not counted (no price known)."""
        return sorted(
            {d.name for entry in self.entries for d in entry.deployments if d.price is None}
        )

    def get(self, model_id: str) -> ModelEntry | None:
        return self._by_id.get(model_id)

    def listed_entry(self, model_id: str) -> ModelEntry | None:
        """The entry GET /v1/models/{id} shows: a model, or a published alias."""
        return next((entry for entry in self.listed if entry.id == model_id), None)

    def resolve(self, requested: str, images: bool = False) -> ModelEntry:
        return self.candidates(requested, images)[0]

    def candidates(
        self, requested: str, images: bool = False, tools: bool = False, kind: str = "chat"
    ) -> list[ModelEntry]:
        """The models to try, in order, for a request naming ``requested`` (an id, alias
        or display name, or ``auto``): the model itself, then its
        ``routing.fallbacks``; for ``auto``, every ``routing.auto`` model that can take
        the request. A model that cannot take the request's images is replaced by its
        ``vision_fallback``, and one without tools is passed over; asked for by name,
        such a model is an error. ``kind``: what the request asks (chat, or embedding);
        a model of the other kind is an error, and is never a fallback."""
        if kind != "chat":
            return self._of_kind(requested, kind)
        if (requested == "auto" and requested not in self._by_id) or (
            self._unknown_to_auto and self._lookup(requested) is None
        ):
            return self._auto_candidates(images, tools)
        entry = self._find(requested)
        if entry.kind != "chat":
            raise GatewayError(
                "invalid_request",
                f"model {entry.id} is an {entry.kind} model: it serves /v1/embeddings, not "
                "chat; choose a chat model",
                param="model",
                code="wrong_model_kind",
            )
        primary = self._capable(entry, images, tools)
        if primary is None:
            what = "tools" if tools and not entry.tools else "images"
            advice = (
                "send no tools, or choose a model with tools: true"
                if what == "tools"
                else "send text only, or choose a model whose support is 'image'"
            )
            raise GatewayError(
                "invalid_request",
                f"model {entry.id} does not accept {what}; {advice}",
                param="tools" if what == "tools" else "messages",
            )
        chain = [primary]
        for model_id in (*self._fallbacks.get(entry.id, ()), *self._fallbacks.get(primary.id, ())):
            fallback = self._capable(self._by_id[model_id], images, tools)
            if fallback is not None and fallback not in chain:
                chain.append(fallback)
        return chain

    def _of_kind(self, requested: str, kind: str) -> list[ModelEntry]:
        """An embedding request's models: the one named and its fallbacks of that kind
        (``auto``, or an unknown name under ``routing.unknown_model: auto``: every
        model of that kind, in the config's order)."""
        of_kind = [entry for entry in self.entries if entry.kind == kind]
        if (requested == "auto" and requested not in self._by_id) or (
            self._unknown_to_auto and self._lookup(requested) is None
        ):
            if not of_kind:
                raise GatewayError("not_found", f"there is no {kind} model in the catalog",
                                   param="model", code="model_not_found")  # fmt: skip
            return of_kind
        entry = self._find(requested)
        if entry.kind != kind:
            raise GatewayError(
                "invalid_request",
                f"model {entry.id} is a {entry.kind} model, not an {kind} model (a model "
                f"serves embeddings with kind: {kind})",
                param="model",
                code="wrong_model_kind",
            )
        fallbacks = (self._by_id[m] for m in self._fallbacks.get(entry.id, ()))
        return [entry, *(f for f in fallbacks if f.kind == kind and f is not entry)]

    def _auto_candidates(self, images: bool, tools: bool) -> list[ModelEntry]:
        chain: list[ModelEntry] = []
        for candidate in self._auto:
            capable = self._capable(candidate, images, tools)
            if capable is not None and capable not in chain:
                chain.append(capable)
        if chain:
            return chain
        if self._auto and (images or tools):
            what = " and ".join(w for w, asked in (("images", images), ("tools", tools)) if asked)
            raise GatewayError(
                "invalid_request",
                f"model 'auto': no model in routing.auto accepts {what}",
                param="model",
            )
        raise GatewayError(
            "not_found",
            "model 'auto' is not available: routing.auto lists no models",
            param="model",
            code="model_not_found",
        )

    def _capable(self, entry: ModelEntry, images: bool, tools: bool) -> ModelEntry | None:
        if entry.kind != "chat":
            return None
        if images and entry.support != "image":
            if not entry.vision_fallback:
                return None
            entry = self._by_id[entry.vision_fallback]
        if tools and not entry.tools:
            return None
        return entry

    def _lookup(self, requested: str) -> ModelEntry | None:
        return self._by_id.get(requested) or self._by_name.get(requested.casefold())

    def _find(self, requested: str) -> ModelEntry:
        entry = self._lookup(requested)
        if entry is None:
            raise GatewayError(
                "not_found",
                f"The model {requested!r} does not exist; GET /v1/models lists the models",
                param="model",
                code="model_not_found",
            )
        return entry


def owner_of(model_id: str) -> str:
    """``owned_by`` as the reference catalog derives it: the id's first word."""
    head, dash, _ = model_id.partition("-")
    return head if dash and head else "unknown"
