"""A developer's personal key, on their machine: ``lmgate login --gateway URL`` signs
in through the gateway (the OpenID provider's device grant: open a page, approve) and
keeps the key the gateway mints; ``lmgate key --gateway URL`` prints it, for agents
that ask a command for their key (Claude Code's ``apiKeyHelper``).

Keys are kept in ``$LMGATE_CREDENTIALS``, else ``$XDG_CONFIG_HOME/lmgate/credentials.json``
(``~/.config/…``), readable by the user only, one per gateway."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

_TIMEOUT = 30


class LoginError(Exception):
    """Why the sign-in or the key lookup failed, said for the user."""


def credentials_path() -> Path:
    if given := os.environ.get("LMGATE_CREDENTIALS"):
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "lmgate" / "credentials.json"


def _gateway(url: str) -> str:
    return url.rstrip("/")


def login(gateway: str, name: str | None = None, *, say: Any = None) -> dict[str, Any]:
    """Sign in through ``gateway`` and keep the personal key it mints (returned too)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    gateway = _gateway(gateway)
    started = _post(gateway, "/auth/device", {})
    page = started.get("verification_uri_complete") or started.get("verification_uri")
    say(f"To sign in, open {page}")
    say(f"and check that it shows the code {started.get('user_code')}.")
    interval = float(started.get("interval") or 5)
    deadline = time.monotonic() + float(started.get("expires_in") or 600)
    body = {"device_code": started["device_code"], "name": name or socket.gethostname()}
    while time.monotonic() < deadline:
        time.sleep(interval)
        try:
            minted = _post(gateway, "/auth/device/token", body)
        except _Waiting as waiting:
            if waiting.code == "slow_down":
                interval += 5  # RFC 8628 3.5
            continue
        _keep(gateway, minted)
        say(f"Signed in as {minted.get('user')}; key {minted.get('name')!r} kept in "
            f"{credentials_path()}")  # fmt: skip
        return minted
    raise LoginError("the code expired before the sign-in was approved: run lmgate login again")


def personal_key(gateway: str) -> str:
    """The key ``login`` kept for ``gateway``."""
    gateway = _gateway(gateway)
    kept = _read().get(gateway)
    if not kept:
        raise LoginError(f"no personal key for {gateway}: run lmgate login --gateway {gateway}")
    expires = kept.get("expires_at")
    if expires is not None and expires <= time.time():
        raise LoginError(f"the key for {gateway} expired: run lmgate login --gateway {gateway}")
    key: str = kept["key"]
    return key


def _read() -> dict[str, Any]:
    path = credentials_path()
    try:
        loaded = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as error:
        raise LoginError(f"cannot read {path}: {error}") from None
    gateways = loaded.get("gateways") if isinstance(loaded, dict) else None
    return gateways if isinstance(gateways, dict) else {}


def _keep(gateway: str, minted: dict[str, Any]) -> None:
    """Write the key, replacing the file whole (never half-written), owner-only."""
    gateways = _read()
    gateways[gateway] = {field: minted.get(field) for field in
                         ("key", "id", "name", "user", "expires_at")}  # fmt: skip
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
    try:
        with os.fdopen(handle, "wb") as file:  # mkstemp: mode 0600
            file.write(orjson.dumps({"gateways": gateways}, option=orjson.OPT_INDENT_2))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class _Waiting(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _post(gateway: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        gateway + path,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as answer:
            found: dict[str, Any] = orjson.loads(answer.read())
            return found
    except urllib.error.HTTPError as error:
        detail = _error_of(error.read())
        if detail.get("code") in ("authorization_pending", "slow_down"):
            raise _Waiting(detail["code"]) from None
        if error.code == 404:
            raise LoginError(f"{gateway} has no sign-in (is oidc set in its config?)") from None
        message = detail.get("message") or f"HTTP {error.code}"
        raise LoginError(f"{gateway} refused the sign-in: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise LoginError(f"cannot reach {gateway}: {error}") from None


def _error_of(raw: bytes) -> dict[str, Any]:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}
