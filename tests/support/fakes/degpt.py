"""A fake degpt.ai on loopback: sign-in issuing short-lived JWTs, the chat proxy
(which checks them, and streams scripted chunks), and ``/config``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from tests.support.fakes.upstream import FakeUpstream, Recorded, Script, chunk

_KEY = b"fake-degpt-signing-key"


def make_jwt(claims: dict[str, Any]) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(orjson.dumps({"alg": "HS256", "typ": "JWT"})) + "." + part(orjson.dumps(claims))
    signature = hmac.new(_KEY, head.encode(), hashlib.sha256).digest()
    return head + "." + part(signature)


def thinking_stream(reasoning: list[str], answer: list[str]) -> list[Any]:
    """What degpt streams for a thinking model: reasoning_content, then content."""
    out: list[Any] = [chunk(delta={"role": "assistant", "content": ""})]
    out += [chunk(delta={"content": None, "reasoning_content": r}) for r in reasoning]
    out += [chunk(delta={"content": a}) for a in answer]
    out.append(chunk(delta={"content": ""}, finish_reason="stop"))
    return out


class FakeDegpt(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.lifetime = 3600.0  # seconds a new token lasts
        self.sign_ins: list[dict[str, Any]] = []  # bodies of the sign-in requests
        self.config: Any = {"default_models": "", "version": "0.1.125", "provider": "DeGPT"}
        self.config_status = 200
        self.revoked: set[str] = set()  # tokens refused although not expired
        self.refused = 0  # chat requests answered 401
        self.config_requests = 0
        self.sign_in_delay = 0.0
        self._issued = 0
        self._issue_lock = threading.Lock()

    def reset(self) -> None:
        super().reset()
        self.lifetime = 3600.0
        self.sign_ins.clear()
        self.revoked.clear()
        self.refused = 0
        self.sign_in_delay = 0.0
        self.config_status = 200

    def chats(self) -> list[Any]:
        return [r for r in self.requests if r.path.endswith("/completion/proxy")]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/api/v1/auths/printSignIn":
            body = orjson.loads(await request.read())
            await asyncio.sleep(self.sign_in_delay)
            with self._issue_lock:
                self.sign_ins.append(body)
                self._issued += 1
                serial = self._issued
            now = time.time()
            token = make_jwt(
                {"sub": body.get("id"), "iat": int(now), "exp": now + self.lifetime, "n": serial}
            )
            return web.json_response({"token": token})
        if request.path == "/api/config":
            self.config_requests += 1
            if self.config_status != 200:
                return web.json_response({"error": "down"}, status=self.config_status)
            return web.Response(body=orjson.dumps(self.config), content_type="application/json")
        if request.path == "/api/v1/chat/completion/proxy":
            refusal = self._refusal(request.headers.get("Authorization", ""))
            if refusal is not None:
                body = orjson.loads(await request.read())
                with self._lock:
                    self.requests.append(
                        Recorded(request.method, request.path, dict(request.headers), body, ("", 0))
                    )
                    self.refused += 1
                return web.json_response({"code": 401, "message": refusal}, status=401)
        return await super()._handle(request)

    def _refusal(self, header: str) -> str | None:
        token = header.removeprefix("Bearer ")
        parts = token.split(".")
        if len(parts) != 3:
            return "missing token"
        expected = hmac.new(_KEY, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        given = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        if not hmac.compare_digest(expected, given):
            return "bad signature"
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        if claims["exp"] <= time.time() or token in self.revoked:
            return "token expired"
        return None


__all__ = ["FakeDegpt", "Script", "make_jwt", "thinking_stream"]
