"""Small typed readers for JSON request bodies; each error names the offending field."""

from __future__ import annotations

from typing import Any

import orjson

from lmgate.errors import GatewayError, invalid

INT64 = 2**63


def require_json(content_type: str | None) -> None:
    """A JSON body only with a JSON ``Content-Type``: a web page on another site can
    POST ``text/plain`` (or a typeless blob) without the browser asking first."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        shown = f"{content_type!r}" if content_type else "none"
        raise GatewayError(
            "invalid_request",
            f"Content-Type: the body is JSON, so it must be application/json (got {shown})",
            status=415,
            code="unsupported_media_type",
        )


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise invalid(f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    return data


def string(value: Any, where: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise invalid(f"{where}: expected a {'' if allow_empty else 'non-empty '}string", where)
    return value


def optional_string(data: dict[str, Any], key: str, where: str = "") -> str | None:
    value = data.get(key)
    return None if value is None else string(value, where or key)


def optional_bool(data: dict[str, Any], key: str, where: str = "") -> bool | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(f"{where or key}: expected true or false", where or key)
    return value


def optional_int(
    data: dict[str, Any], key: str, low: int | None = None, high: int | None = None
) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{key}: expected an integer", key)
    _check_range(key, value, low, high)
    if not -INT64 <= value < INT64:  # no upstream, store or JSON encoder takes more
        raise invalid(f"{key}: {value} is out of range (64-bit integers only)", key)
    return value


def optional_number(
    data: dict[str, Any], key: str, low: float | None = None, high: float | None = None
) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{key}: expected a number", key)
    _check_range(key, value, low, high)
    return value


def optional_object(data: dict[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(f"{where or key}: expected an object", where or key)
    return value


def optional_list(data: dict[str, Any], key: str, where: str = "") -> list[Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid(f"{where or key}: expected an array", where or key)
    return value


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"between {low:g} and {high:g}"
            if low is not None and high is not None
            else (f"at least {low:g}" if low is not None else f"at most {high:g}")
        )
        raise invalid(f"{key}: {value!r} is out of range; it must be {bounds}", key)
