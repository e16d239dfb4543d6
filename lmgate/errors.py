"""One gateway error type, mapped to each client protocol's error shape at the edge."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal
from urllib.parse import unquote_plus

import orjson

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "request_too_large",
    "rate_limit",
    "upstream",
    "timeout",
    "overloaded",
    "unavailable",  # a service the gateway needs (its store, Redis) does not answer
    "internal",
]

_DEFAULT_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "upstream": 502,
    "timeout": 504,
    "overloaded": 503,
    "unavailable": 503,
    "internal": 500,
}


class GatewayError(Exception):
    """A failure with the status a client should see.

    ``retryable`` says whether the router may try another deployment (only ever
    before the first byte reached the client).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status or _DEFAULT_STATUS[kind]
        self.param = param
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 0  # upstream requests made before giving up (set by the router)


def from_exception(error: Exception) -> GatewayError:
    """What a client is told about a failure: a bug becomes a logged, bare internal error."""
    if isinstance(error, GatewayError):
        logging.getLogger("lmgate").warning("stream ended with %s: %s", error.kind, error.message)
        return error
    logging.getLogger("lmgate").error("stream failed", exc_info=error)
    return GatewayError("internal", "internal error")


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)


# orjson writes at most this many levels of nesting (it reads more): deeper JSON in a
# request could be parsed but never sent on.
MAX_DEPTH = 254


def encodable(value: Any, where: str) -> bytes:
    """``value`` as JSON, or a 400 naming ``where`` when it cannot be written (nested
    deeper than ``MAX_DEPTH`` levels, or an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        raise invalid(
            f"{where}: cannot be sent on ({error}); at most {MAX_DEPTH} levels of nesting "
            "and 64-bit integers",
            where,
        ) from None


# Credentials that upstreams like to echo back ("Incorrect API key provided: sk-…"), and
# lmgate's own managed keys.
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|lmg-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-~+/=*]+"
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-.]+)"
)
# A key a client put in a URL's query string (?key=…, as Google's API takes it), its
# name percent-encoded or not (``?%6Bey=`` is ``?key=`` to the server that reads it).
_QUERY_PARAMETER = re.compile(r"([?&])([^=&\s\"'?]+)=([^&\s\"']+)")
_KEY_NAMES = frozenset({"key", "api_key", "api-key", "apikey", "token", "access_token"})


def _query_key(match: re.Match[str]) -> str:
    name = match[2]
    if unquote_plus(name).lower() not in _KEY_NAMES:
        return match[0]
    return f"{match[1]}{name}=[redacted]"


_MIN_SECRET = 4  # shorter configured values would redact ordinary words


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove known secrets and anything shaped like an API key or bearer token."""
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside another: longest first
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "[redacted]")
    return _QUERY_PARAMETER.sub(_query_key, _SECRET_PATTERNS.sub("[redacted]", text))


class Redactor:
    """One redaction that knows every secret of a running gateway: what ``secrets()``
    returns when asked (client and admin keys, every provider's key, header values and
    tokens, which may change), plus the generic patterns. Every path that carries text
    from an upstream to a client or a log goes through it."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        self._secrets = secrets

    def __call__(self, text: str) -> str:
        return redact(text, self._secrets())

    def error(self, error: GatewayError) -> GatewayError:
        """The same error with its message redacted (in place: it is about to be raised)."""
        error.message = self(error.message)
        error.args = (error.message,)
        return error

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logging filter: the record's text redacted, arguments and traceback
        included. Arguments stay arguments (each redacted): formatters such as
        uvicorn's access log read them one by one."""
        if record.exc_info:
            text = record.getMessage()
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = self(text), ()
            return True
        if isinstance(record.msg, str):
            record.msg = self(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(self._arg(arg) for arg in args)
        elif isinstance(args, dict):
            record.args = {name: self._arg(arg) for name, arg in args.items()}
        return True

    def _arg(self, arg: Any) -> Any:
        # A number holds no secret (and %d wants one); anything else may (an exception,
        # a URL object): its text, redacted.
        return arg if isinstance(arg, int | float) else self(str(arg))
