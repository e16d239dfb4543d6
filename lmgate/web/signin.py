"""Signing in with the company's OpenID provider (``oidc:``), under ``/auth/``:

- the dashboard: ``GET /auth/login`` leaves for the provider (authorization code with
  PKCE, a nonce, and a state bound to this browser by a cookie); ``GET
  /auth/callback`` comes back, checks the ID token and opens a session (an HttpOnly,
  SameSite cookie); ``POST /auth/logout`` ends it; ``GET /auth/me`` says who is in;
- ``lmgate login``: ``POST /auth/device`` starts the provider's device grant, and
  ``POST /auth/device/token`` (polled) mints a personal key once the user approved.
  The gateway talks to the provider, so the client secret stays here.

A user is found by email; a first sign-in creates one (``oidc.auto_create``), and the
role and team claims, when configured, update the user at every sign-in."""

from __future__ import annotations

import collections
import hmac
import html
import logging
import secrets
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts import audit
from lmgate.accounts.accounts import Accounts
from lmgate.accounts.oidc import (
    Identity,
    OidcError,
    OpenIdProvider,
    Pending,
    ProviderDown,
    pkce_pair,
)
from lmgate.accounts.people import Account, People
from lmgate.accounts.sessions import LOGIN_SECONDS, Actor, Sessions
from lmgate.accounts.store import Store, store_unavailable
from lmgate.clock import SYSTEM, Clock
from lmgate.config import OidcConfig
from lmgate.errors import GatewayError, invalid
from lmgate.frontends import openai_chat
from lmgate.frontends.base import error_reply, request_id
from lmgate.web.admin import json_object
from lmgate.web.admin_people import checked_name

SESSION_COOKIE = "lmgate_session"
LOGIN_COOKIE = "lmgate_login"
log = logging.getLogger("lmgate")
_PAGE_HEADERS = {"content-security-policy": "default-src 'none'", "cache-control": "no-store",
                 "referrer-policy": "no-referrer"}  # fmt: skip
_PENDING = {  # the device grant's waits and ends, as the provider names them (RFC 8628)
    "authorization_pending": ("invalid_request", "waiting for the user to approve"),
    "slow_down": ("invalid_request", "polling too fast: wait longer between polls"),
    "access_denied": ("permission", "the user refused the sign-in"),
    "expired_token": ("invalid_request", "the code expired: run the sign-in again"),
}


class Refused(Exception):
    """A sign-in that passed the provider but that lmgate does not let in."""


class SignIn:
    def __init__(
        self, config: OidcConfig | None, accounts: Accounts, clock: Clock = SYSTEM
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.provider = OpenIdProvider(config, clock) if config is not None else None
        self.outcomes: collections.Counter[str] = collections.Counter()  # for the metrics

    async def close(self) -> None:
        if self.provider is not None:
            await self.provider.close()

    def routes(self) -> list[BaseRoute]:
        guarded = self._guarded
        routes: list[BaseRoute] = [Route("/auth/me", guarded(self.me), methods=["GET"])]
        if self.config is not None:
            routes += [
                Route("/auth/login", guarded(self.login, page=True), methods=["GET"]),
                Route("/auth/callback", guarded(self.callback, page=True), methods=["GET"]),
                Route("/auth/logout", guarded(self.logout), methods=["POST"]),
                Route("/auth/device", guarded(self.device), methods=["POST"]),
                Route("/auth/device/token", guarded(self.device_token), methods=["POST"]),
            ]
        return routes

    def _guarded(self, handler: Any, page: bool = False) -> Any:
        """``handler``, with the store's outage answered 503 (a page for a browser's
        sign-in); any other failure is a bug, raised."""

        async def handle(request: Request) -> Response:
            try:
                answer: Response = await handler(request)
            except Exception:
                store = self.accounts.store
                if store is None or await store.reachable():
                    raise
                error = store_unavailable()
                if not page:
                    return error_reply(openai_chat, error, request_id(request))
                log.warning("request %s: sign-in unavailable: %s", request_id(request),
                            error.message)  # fmt: skip
                return _page(503, "Sign-in is unavailable", error.message, error.retry_after)
            return answer

        return handle

    async def actor(self, request: Request) -> Actor | None:
        """The signed-in user of a request's session cookie, if it has a live one."""
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret or self.config is None:
            return None
        store = self._store()
        session = await Sessions(store).find(secret)
        if session is None:
            return None
        user = await People(store).get("user", session.user_id)
        if user is None:  # removed since
            return None
        return Actor(user.email or user.name, user.role or "member", user)

    # ---- the dashboard's sign-in ---------------------------------------------------

    async def login(self, request: Request) -> Response:
        assert self.provider is not None
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        callback = self._callback_url(request)
        try:
            url = await self.provider.authorization_url(callback, state, nonce, challenge)
            await Sessions(self._store()).begin_login(
                state,
                {"nonce": nonce, "verifier": verifier, "redirect_uri": callback,
                 "next": _local_path(request.query_params.get("next"))},
            )  # fmt: skip
        except OidcError as error:  # discovery failed: down, or a wrong issuer
            log.warning("request %s: sign-in cannot start: %s", request_id(request), error)
            self.outcomes["provider_down"] += 1
            return _page(503, "The identity provider cannot be reached", str(error))
        except GatewayError as error:
            return _page(error.status, "Sign-in is unavailable", error.message, error.retry_after)
        answer = RedirectResponse(url, 302)
        answer.set_cookie(LOGIN_COOKIE, state, max_age=LOGIN_SECONDS, path="/auth",
                          httponly=True, samesite="lax", secure=self._https(request))  # fmt: skip
        return answer

    async def callback(self, request: Request) -> Response:
        assert self.provider is not None
        params = request.query_params
        state, bound = params.get("state", ""), request.cookies.get(LOGIN_COOKIE, "")
        try:
            sessions = Sessions(self._store())
            if not state or not hmac.compare_digest(state.encode(), bound.encode()):
                raise Refused("this sign-in was not started in this browser: sign in again")
            kept = await sessions.finish_login(state)
            if kept is None:
                raise Refused("this sign-in expired or was used already: sign in again")
            if params.get("error"):
                reason = params.get("error_description") or params["error"]
                raise Refused(f"the identity provider refused: {reason[:200]}")
            code = params.get("code")
            if not code:
                raise Refused("the identity provider sent no code")
            tokens = await self.provider.redeem_code(code, kept["redirect_uri"], kept["verifier"])
            identity = await self.provider.identity(tokens, kept["nonce"])
            user = await self._user(identity)
            seconds = self._config().session_hours * 3600
            secret, session = await sessions.open(user.id, seconds)
            opened = {"role": user.role, "expires_at": session.expires_at}
            await self._audit(user.email or user.id, "session.sign_in", user.id, after=opened)
        except (Refused, OidcError) as error:
            log.warning("request %s: sign-in refused: %s", request_id(request), error)
            down = isinstance(error, ProviderDown)
            self.outcomes["provider_down" if down else "refused"] += 1
            return _page(503 if down else 403, "Sign-in failed", str(error))
        except GatewayError as error:
            return _page(error.status, "Sign-in is unavailable", error.message, error.retry_after)
        log.info("%s signed in (%s)", user.email, user.role)
        self.outcomes["ok"] += 1
        answer = RedirectResponse(kept["next"], 303)
        answer.set_cookie(SESSION_COOKIE, secret, max_age=int(seconds), path="/",
                          httponly=True, samesite="lax", secure=self._https(request))  # fmt: skip
        answer.delete_cookie(LOGIN_COOKIE, path="/auth")
        return answer

    async def logout(self, request: Request) -> Response:
        secret = request.cookies.get(SESSION_COOKIE)
        if secret:
            try:
                actor = await self.actor(request)
                await Sessions(self._store()).close(secret)
                if actor is not None and actor.user is not None:
                    await self._audit(actor.name, "session.sign_out", actor.user.id)
            except GatewayError as error:
                return error_reply(openai_chat, error, request_id(request))
        answer = Response(b'{"signed_out":true}', media_type="application/json")
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    async def me(self, request: Request) -> Response:
        """Who is signed in; 200 either way (the dashboard asks before it shows anything)."""
        try:
            actor = await self.actor(request)
        except GatewayError as error:
            return error_reply(openai_chat, error, request_id(request))
        shown: dict[str, Any] = {"signed_in": actor is not None, "oidc": self.config is not None}
        if actor is not None and actor.user is not None:
            user = actor.user
            shown.update(email=user.email, name=user.name, role=actor.role, user_id=user.id,
                         team_id=user.team_id)  # fmt: skip
        return Response(orjson.dumps(shown), media_type="application/json")

    # ---- lmgate login: the device grant ----------------------------------------------

    async def device(self, request: Request) -> Response:
        assert self.provider is not None
        try:
            started = await self.provider.start_device()
        except OidcError as error:
            return self._api_error(request, _provider_error(error))
        fields = ("device_code", "user_code", "verification_uri", "verification_uri_complete",
                  "expires_in", "interval")  # fmt: skip
        shown = {field: started[field] for field in fields if field in started}
        return Response(orjson.dumps(shown), media_type="application/json")

    async def device_token(self, request: Request) -> Response:
        """Once the user approved: a personal key for them, named after their machine
        (the same name again replaces that machine's earlier key)."""
        assert self.provider is not None
        try:
            body = await json_object(request)
            device_code = body.get("device_code")
            if not isinstance(device_code, str) or not device_code:
                raise invalid("device_code: the code POST /auth/device returned", "device_code")
            name = checked_name(body.get("name", "personal key"))
            try:
                tokens = await self.provider.poll_device(device_code)
            except Pending as waiting:
                kind, message = _PENDING[str(waiting)]
                raise GatewayError(kind, message, code=str(waiting)) from None  # type: ignore[arg-type]
            identity = await self.provider.identity(tokens)
            user = await self._user(identity)
            secret, key = await self._personal_key(user, name)
        except (OidcError, Refused) as error:
            down = isinstance(error, ProviderDown)
            self.outcomes["provider_down" if down else "refused"] += 1
            return self._api_error(request, _provider_error(error))
        except GatewayError as error:
            return self._api_error(request, error)
        self.outcomes["ok"] += 1
        store = self._store()
        log.info("%s signed in with lmgate login: key %s (%s)", user.email, key.id, name)
        shown = {"key": secret, "user": user.email, **key.shown(store.clock.time())}
        return Response(orjson.dumps(shown), 201, media_type="application/json")

    async def _personal_key(self, user: Account, name: str) -> tuple[str, Any]:
        store, config = self._store(), self._config()
        now = store.clock.time()
        for earlier in await store.list_keys():
            if earlier.user_id == user.id and earlier.name == name and earlier.revoked_at is None:
                await store.revoke_key(earlier.id)
                await self._audit(user.email or user.id, "key.revoke", earlier.id,
                                  before=earlier.public())  # fmt: skip
        expires = now + config.key_days * 86400 if config.key_days else None
        secret, key = await store.create_key(
            name, user_id=user.id, team_id=user.team_id, expires_at=expires
        )
        self.accounts.keys.changed()
        await self._audit(user.email or user.id, "key.create", key.id, after=key.public())
        return secret, key

    # ---- the user of an identity ---------------------------------------------------

    async def _user(self, identity: Identity) -> Account:
        """The user the provider vouched for: found by email, created on a first
        sign-in when allowed; their role and team follow the provider's claims."""
        config, people = self._config(), People(self._store())
        team_id = None
        if identity.team:
            team = await people.find("team", "name", identity.team) or await people.get(
                "team", identity.team
            )
            if team is None:
                log.warning("%s: the provider's team %r is not a team here", identity.email,
                            identity.team)  # fmt: skip
            team_id = team.id if team is not None else None
        user = await people.find("user", "email", identity.email)
        if user is None:
            if not config.auto_create:
                raise Refused(f"{identity.email} has no account here: ask an admin to add it")
            settings = {
                "email": identity.email,
                "name": identity.name or identity.email,
                "role": identity.role or config.default_role,
                "team_id": team_id,
            }
            user = await people.create("user", settings)
            await self._audit("sign-in", "user.create", user.id, after=user)
            return user
        changes: dict[str, Any] = {}
        if identity.role is not None and identity.role != user.role:
            changes["role"] = identity.role
        if team_id is not None and team_id != user.team_id:
            changes["team_id"] = team_id
        if changes:
            before = user
            user = await people.update("user", user.id, changes) or user
            self.accounts.keys.changed()  # their keys' team may have changed
            await self._audit("sign-in", "user.update", user.id, before, user)
        return user

    # ---- helpers -----------------------------------------------------------------------

    async def _audit(
        self, actor: str, action: str, target: str, before: Any = None, after: Any = None
    ) -> None:
        shown = [item.public() if hasattr(item, "public") else item for item in (before, after)]
        await audit.record(self._store(), actor, action, target, *shown)

    def _config(self) -> OidcConfig:
        assert self.config is not None
        return self.config

    def _store(self) -> Store:
        store = self.accounts.store
        if store is None:  # refused at start: oidc needs a store
            raise store_unavailable()
        return store

    def _callback_url(self, request: Request) -> str:
        base = self._config().public_url
        if base is None:
            base = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        return base.rstrip("/") + "/auth/callback"

    def _https(self, request: Request) -> bool:
        """Whether cookies get ``Secure``: the browser reaches the gateway over TLS
        (directly, or through a proxy named by ``oidc.public_url``)."""
        public = self._config().public_url or ""
        return request.url.scheme == "https" or public.startswith("https://")

    def _api_error(self, request: Request, error: GatewayError) -> Response:
        return error_reply(openai_chat, error, request_id(request))


def _provider_error(error: Exception) -> GatewayError:
    if isinstance(error, ProviderDown):
        return GatewayError("unavailable", str(error), code="oidc_unavailable", retry_after=5)
    return GatewayError("permission", str(error), code="sign_in_refused")


def _local_path(page: str | None) -> str:
    """Where to go after signing in: a path on this gateway only (never another site)."""
    if not page or not page.startswith("/") or page.startswith("//") or "\\" in page:
        return "/ui/"
    return page


def _page(status: int, title: str, detail: str, retry_after: float | None = None) -> Response:
    body = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>"
        '<p><a href="/ui/">Back to the dashboard</a></p>'
    )
    headers = dict(_PAGE_HEADERS)
    if status == 503:
        headers["retry-after"] = str(round(retry_after or 5))
    return Response(body.encode(), status, headers, "text/html; charset=utf-8")
