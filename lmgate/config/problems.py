"""A config's problems found and told: each as ``dotted.path: message`` with the
nearest valid name, then placed at its line of the file (``file:line: …``)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def validation_problems(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """Each error as ``dotted.path: message``; an unknown key with the nearest valid
    name of its section (``model``: the class validated, for those names)."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        where = join(prefix, where) if where else prefix or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden" and model is not None:
            section = model_at(model, item["loc"][:-1])
            if section is not None:
                message = "unknown key" + did_you_mean(str(item["loc"][-1]), section.model_fields)
        lines.append(f"{where}: {message}")
    return lines


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class at ``loc`` (field names, list indexes, dict keys) of ``model``."""
    current: Any = model
    parts = list(loc)
    while parts:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        current = field.annotation
        while True:
            origin = get_origin(current)
            if origin in (Union, types.UnionType):
                inner = [arg for arg in get_args(current) if arg is not type(None)]
                current = inner[0] if len(inner) == 1 else None
            elif origin in (list, dict):
                current = get_args(current)[-1]
                if parts:
                    parts.pop(0)  # the index or key
            else:
                break
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def reference_problems(data: dict[str, Any]) -> list[str]:
    """Names that must exist elsewhere in the file: checked on the raw data, so that
    they are reported along with the schema's problems."""
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    assert isinstance(providers, dict)
    problems = []
    for name, provider in providers.items():
        if not isinstance(provider, dict) or "type" not in provider:
            problems.append(f"providers.{name}.type: a provider needs a type")
    models = data.get("models") if isinstance(data.get("models"), list) else []
    assert isinstance(models, list)
    seen: dict[str, int] = {}
    supports: dict[str, Any] = {}
    for index, model in enumerate(models):
        if not isinstance(model, dict):
            continue
        where = f"models.{index}"
        model_id = model.get("id")
        if isinstance(model_id, str):
            if model_id in seen:
                problems.append(
                    f"{where}.id: {model_id!r} is already the id of models.{seen[model_id]}"
                )
            seen.setdefault(model_id, index)
            supports.setdefault(model_id, model.get("support", "text"))
        deployments = model.get("deployments") if isinstance(model.get("deployments"), list) else []
        assert isinstance(deployments, list)
        named = [(f"{where}.provider", model["provider"])] if model.get("provider") else []
        named += [
            (f"{where}.deployments.{number}.provider", item["provider"])
            for number, item in enumerate(deployments)
            if isinstance(item, dict) and "provider" in item
        ]
        if not model.get("provider") and not deployments:
            problems.append(f"{where}.deployments: a model needs at least one deployment")
        for at, provider_name in named:
            if provider_name not in providers:
                problems.append(
                    f"{at}: unknown provider {provider_name!r}"
                    + did_you_mean(str(provider_name), providers)
                )
    for index, model in enumerate(models):
        fallback = model.get("vision_fallback") if isinstance(model, dict) else None
        if fallback is not None and supports.get(fallback) != "image":
            problems.append(
                f"models.{index}.vision_fallback: {fallback!r} is not a model with support 'image'"
            )
    routing = data.get("routing") if isinstance(data.get("routing"), dict) else {}
    assert isinstance(routing, dict)
    auto = routing.get("auto") if isinstance(routing.get("auto"), list) else []
    for index, model_id in enumerate(auto or []):
        if model_id not in seen:
            problems.append(
                f"routing.auto.{index}: unknown model {model_id!r}"
                + did_you_mean(str(model_id), seen)
            )
    fallbacks = routing.get("fallbacks") if isinstance(routing.get("fallbacks"), dict) else {}
    for model_id, chain in (fallbacks or {}).items():
        if model_id not in seen:
            problems.append(f"routing.fallbacks.{model_id}: unknown model {model_id!r}")
        for index, fallback in enumerate(chain if isinstance(chain, list) else []):
            if fallback not in seen or fallback == model_id:
                problems.append(
                    f"routing.fallbacks.{model_id}.{index}: {fallback!r} is not another model"
                )
    return problems


def located(problems: str, file: Path, lines: dict[str, int]) -> str:
    """Each ``dotted.path: message`` line prefixed with ``file:line:`` (the line of the
    path's key, or of the nearest section above it that the file has)."""
    out = []
    for problem in problems.splitlines():
        where = problem.partition(":")[0]
        parts = where.split(".")
        while parts and ".".join(parts) not in lines:
            parts.pop()
        line = lines.get(".".join(parts)) if parts else None
        out.append(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")
    return "\n".join(out)


def key_lines(node: Any, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            where = join(path, key.value)
            lines[where] = key.start_mark.line + 1
            key_lines(value, where, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            where = join(path, index)
            lines[where] = item.start_mark.line + 1
            key_lines(item, where, lines)
