"""Reloading the config of a running gateway (SIGHUP, ``POST /admin/reload``): what a
reload may change in place, and the running config as ``GET /admin/config`` shows it.

Providers, models, deployments, prices, routing, the catalog's fields and
``server.api_keys`` change for new requests; requests in flight finish on the
objects they started with. The other sections (where it listens, its store, Redis,
metrics…) are read once at start: a change there is reported, and waits for a restart.
"""

from __future__ import annotations

import re
from typing import Any

from lmgate.config import Config
from lmgate.errors import Redactor

# Sections a reload applies; every other one keeps its running value.
RELOADED = ("catalog", "providers", "models", "routing", "prices")


def applicable(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` as a reload applies it (the sections read only at start kept as they
    run), and the dotted names of the changes that need a restart."""
    kept: dict[str, Any] = {}
    waiting = []
    for name in type(running).model_fields:
        if name in RELOADED or name == "path":
            continue
        before, after = getattr(running, name), getattr(new, name)
        if name == "server":
            after = after.model_copy(update={"api_keys": before.api_keys})
            kept[name] = before.model_copy(update={"api_keys": new.server.api_keys})
        else:
            kept[name] = before
        if before != after:
            waiting += [f"{name}.{field}" for field in _changed(before, after)] or [name]
    return new.model_copy(update=kept), waiting


def _changed(before: Any, after: Any) -> list[str]:
    old, new = before.model_dump(), after.model_dump()
    return [field for field in old if old[field] != new.get(field)]


# Fields whose value is a credential, whatever the provider type calls them.
_SECRET_NAME = re.compile(r"key|secret|password|token|credential", re.IGNORECASE)
# user:password@ in a URL (a database's, Redis's).
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]+@")
REDACTED = "[redacted]"


def redacted(config: Config, redactor: Redactor) -> dict[str, Any]:
    """The config as JSON-ready data with no secret in it: credential fields blanked,
    passwords cut out of URLs, and any of the gateway's secrets found elsewhere."""

    def clean(node: Any, name: str = "") -> Any:
        if isinstance(node, dict):
            return {key: clean(value, str(key)) for key, value in node.items()}
        if isinstance(node, list):
            if _SECRET_NAME.search(name) and node:
                return [REDACTED for _ in node]
            return [clean(value) for value in node]
        if isinstance(node, str):
            if _SECRET_NAME.search(name) and node and name not in _NOT_SECRET:
                return REDACTED
            return redactor(_URL_PASSWORD.sub(r"\1" + REDACTED + "@", node))
        return node

    shown: dict[str, Any] = clean(config.model_dump(mode="json"))
    return shown


# Named like a credential but not one.
_NOT_SECRET = frozenset({"max_tokens", "key_cache_seconds", "per_key_labels"})
