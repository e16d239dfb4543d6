"""What tokens cost: a price per million tokens for each deployment, from the config
(a deployment's ``price``, else its model's, else the top-level ``prices`` by upstream
model name) or the shipped table (``lmgate/data/prices.json``, dated).

Token counts follow the canonical ``Usage``: input includes the tokens read from and
written to the prompt cache (OpenAI's convention; the Anthropic provider adds them
up), so the uncached input is what is left.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

_DATED = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; a cache price of None is the input price."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, read: int, written: int) -> float:
        uncached = max(input_tokens - read - written, 0)
        cache_read = self.input if self.cache_read is None else self.cache_read
        cache_write = self.input if self.cache_write is None else self.cache_write
        total = (
            uncached * self.input
            + read * cache_read
            + written * cache_write
            + output_tokens * self.output
        )
        return total / 1_000_000

    @classmethod
    def of(cls, fields: Any) -> Price:
        """From a mapping or a config object with the same fields."""
        get: Any = fields.get if isinstance(fields, dict) else functools.partial(getattr, fields)
        return cls(
            float(get("input")),
            float(get("output")),
            None if get("cache_read") is None else float(get("cache_read")),
            None if get("cache_write") is None else float(get("cache_write")),
        )


@functools.cache
def table() -> tuple[str, dict[str, Price]]:
    """(the date of the shipped table, its prices by upstream model name)."""
    raw = orjson.loads(resources.files("lmgate").joinpath("data/prices.json").read_bytes())
    return raw["updated"], {name: Price.of(fields) for name, fields in raw["models"].items()}


def lookup(model: str, overrides: dict[str, Price]) -> Price | None:
    """The price of an upstream model name: the config's, else the table's; a dated
    or ``-latest`` name (``claude-sonnet-4-5-20250929``) as its undated one."""
    prices = table()[1]
    cloud = _cloud_name(model)
    for name in (model, _DATED.sub("", model), model.rpartition("/")[2], cloud,
                 _DATED.sub("", cloud)):  # fmt: skip
        found = overrides.get(name) or prices.get(name)
        if found is not None:
            return found
    return None


# Bedrock's ``us.anthropic.claude-sonnet-4-20250514-v1:0`` (a cross-region profile, the
# vendor, a version) and Vertex's ``claude-sonnet-4@20250514`` name the same models.
_CLOUD_PARTS = re.compile(
    r"^(?:(?:us|eu|apac|ap|jp|au|ca|global|us-gov)\.)?(?:anthropic\.)?|-v\d+(?::\d+)?$|@.*$"
)


def _cloud_name(model: str) -> str:
    return _CLOUD_PARTS.sub("", model)
