"""Sealed blobs: data a stateless client keeps for lmgate and hands back later, that
it can neither read nor alter. The Responses API's ``encrypted_content`` of reasoning
items is one: it carries the reasoning text and its signature (Anthropic thinking
signatures, DeepSeek's echoed reasoning) across turns through a client that stores
nothing (Codex sends ``store: false`` and ``include: ["reasoning.encrypted_content"]``).

AES-256-GCM under a key from ``responses.secret``, else from a key file in the data
directory (made once, shared by every worker). A blob that fails to open is the
client's error, never a crash.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

PREFIX = "lmg1."  # marks lmgate's blobs (and their format's version)
_CONTEXT = b"lmgate reasoning v1"  # bound into every blob: not valid for another use
_NONCE = 12


class SealError(Exception):
    """A blob that is not lmgate's, or was altered, or sealed under another key."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        # Imported here: only a config that serves the Responses API pays for it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    @classmethod
    def from_config(cls, secret: str | None, directory: Path) -> Sealer:
        if secret:
            return cls(hashlib.sha256(secret.encode()).digest())
        return cls(_key_file(directory / "responses.key"))

    def seal(self, value: Any) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, orjson.dumps(value), _CONTEXT)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, blob: str) -> Any:
        from cryptography.exceptions import InvalidTag

        if not blob.startswith(PREFIX):
            raise SealError("not sealed by lmgate")
        try:
            raw = base64.urlsafe_b64decode(blob[len(PREFIX) :].encode())
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _CONTEXT)
            return orjson.loads(plain)
        except (ValueError, InvalidTag, orjson.JSONDecodeError):
            raise SealError("altered, or sealed under another key") from None


def _key_file(path: Path) -> bytes:
    """The key in ``path``, made (32 random bytes, owner-only) if there is none; of two
    processes making it at once, one writes it and both read the same."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "wb") as file:
            file.write(os.urandom(32))
    for _ in range(100):  # another process may be between creating and writing it
        key = path.read_bytes()
        if len(key) == 32:
            return key
        time.sleep(0.01)
    raise OSError(f"{path}: not a 32-byte key; delete it to make a new one")
