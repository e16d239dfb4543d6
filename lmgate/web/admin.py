"""The admin HTTP API under ``/admin/``: keys, people, usage and the running config,
for ``server.admin_key`` (no client key reaches it) and for users signed in to the
dashboard (``oidc``), each route open to the roles it names:

- admin: everything;
- viewer: reads everything, changes nothing;
- member: their own keys (list, create within their team, revoke, rotate) and their
  own usage.

Errors use the OpenAI error shape."""

from __future__ import annotations

import hmac
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts import audit, reports
from lmgate.accounts.accounts import Accounts, parse_since
from lmgate.accounts.keys import presented_key
from lmgate.accounts.people import People
from lmgate.accounts.periods import PERIODS
from lmgate.accounts.sessions import ADMIN_KEY, Actor
from lmgate.accounts.store import Store, store_unavailable
from lmgate.config import ConfigError
from lmgate.config.problems import did_you_mean
from lmgate.errors import GatewayError, invalid
from lmgate.frontends import openai_chat
from lmgate.frontends.base import error_reply, request_id
from lmgate.frontends.validate import INT64, require_json
from lmgate.routing.catalog import Catalog
from lmgate.routing.router import Router
from lmgate.web.admin_people import PeopleAdmin, checked_name
from lmgate.web.guard import same_origin

if TYPE_CHECKING:
    from lmgate.web.signin import SignIn

LIMIT_FIELDS = {"models", "rpm", "tpm", "budget_tokens", "budget_usd", "budget_period",
                "budget_reset_day"}  # fmt: skip
log = logging.getLogger("lmgate")
_KEY_FIELDS = {"name", "expires", "user_id", "team_id", *LIMIT_FIELDS}
_MAX_BODY = 64 * 1024
_WEEK = 7 * 86400  # a key's settings are a few hundred bytes
# Who may use a route, by role.
ADMINS = frozenset({"admin"})
READERS = frozenset({"admin", "viewer"})
EVERYONE = frozenset({"admin", "viewer", "member"})  # a member's answer is their own
OWNERS = frozenset({"admin", "member"})  # a member's change is to their own keys
_READS = frozenset({"GET", "HEAD"})


class Control(Protocol):
    """What the admin API may do to the running gateway."""

    async def reload_everywhere(self) -> dict[str, Any]: ...

    async def config_shown(self) -> dict[str, Any]: ...


class Admin:
    def __init__(
        self,
        admin_key: str | None,
        accounts: Accounts,
        catalog: Catalog,
        router: Router,
        control: Control | None = None,
        signin: SignIn | None = None,
    ) -> None:
        self._key = admin_key.encode() if admin_key else None
        self.signin = signin if signin is not None and signin.config is not None else None
        self.accounts = accounts
        self.catalog = catalog
        self.router = router
        self.control = control

    def routes(self) -> list[BaseRoute]:
        def route(
            path: str, method: str, action: Any, roles: frozenset[str], store: bool = True
        ) -> Route:
            return Route(path, self._handler(action, roles, store), methods=[method])

        key = "/admin/keys/{key_id}"
        return [
            route("/admin/usage/series", "GET", self.usage_series, READERS),
            route("/admin/requests", "GET", self.requests, READERS),
            route("/admin/requests/{request_id:path}", "GET", self.request, READERS),
            route("/admin/deployments", "GET", self.deployments, EVERYONE, store=False),
            route("/admin/keys", "GET", self.list_keys, EVERYONE),
            route("/admin/keys", "POST", self.create_key, OWNERS),
            route(key, "GET", self.get_key, EVERYONE),
            route(key, "DELETE", self.revoke_key, OWNERS),
            route(key, "PATCH", self.update_key, ADMINS),  # a member would lift their limits
            route(key + "/rotate", "POST", self.rotate_key, OWNERS),
            route("/admin/usage", "GET", self.usage, EVERYONE),
            route("/admin/reload", "POST", self.reload, ADMINS, store=False),
            route("/admin/config", "GET", self.config, READERS, store=False),
            route("/admin/audit", "GET", self.audit_log, READERS),
            *PeopleAdmin(self).routes(),
        ]

    # For the users' and teams' routes (admin_people).
    limit_fields = LIMIT_FIELDS

    def handler(self, action: Any, roles: frozenset[str]) -> Any:
        return self._handler(action, roles)

    async def json_object(self, request: Request) -> dict[str, Any]:
        return await json_object(request)

    def _handler(self, action: Any, roles: frozenset[str], store: bool = True) -> Any:
        async def handle(request: Request) -> Response:
            try:
                actor = await self._authenticate(request)
                if actor.role not in roles:
                    raise GatewayError(
                        "permission",
                        f"{request.method} {request.url.path} is not open to a {actor.role}",
                        code="role_not_allowed",
                    )
                request.scope["lmgate.actor"] = actor
                status, payload = await action(request, self._store() if store else None)
            except GatewayError as error:
                return error_reply(openai_chat, error, request_id(request))
            except Exception:
                here = self.accounts.store
                if not store or here is None or await here.reachable():
                    raise  # a bug: logged, a bare 500
                return error_reply(openai_chat, store_unavailable(), request_id(request))
            return Response(orjson.dumps(payload), status, media_type="application/json")

        return handle

    async def _authenticate(self, request: Request) -> Actor:
        """The admin key, or a signed-in user's session (whose changes must come from
        the dashboard's own page: a cookie rides along with any page's request)."""
        if self._key is None and self.signin is None:
            raise GatewayError("not_found", "the admin API is off: set server.admin_key or oidc")
        given = presented_key(request.headers.raw)
        if given:
            if self._key is None or not hmac.compare_digest(given.encode(), self._key):
                raise GatewayError("permission", "this key is not the admin key", code="not_admin")
            return ADMIN_KEY
        actor = await self.signin.actor(request) if self.signin is not None else None
        if actor is None:
            raise GatewayError(
                "authentication", "send the admin key, or sign in", code="missing_api_key"
            )
        if request.method not in _READS and not _from_own_page(request):
            raise GatewayError(
                "permission", "a signed-in change must come from the dashboard's own page",
                code="origin_not_allowed",
            )  # fmt: skip
        return actor

    def _store(self) -> Store:
        if self.accounts.store is None:
            raise GatewayError("not_found", "there is no store (store.url is none)")
        return self.accounts.store

    # ---- handlers ------------------------------------------------------------------

    async def reload(self, request: Request, store: None) -> tuple[int, Any]:
        assert self.control is not None
        try:
            result = await self.control.reload_everywhere()
        except ConfigError as error:
            raise GatewayError(
                "invalid_request",
                f"the config file was not loaded (the running config stays): {error}",
                code="invalid_config",
            ) from None
        if self.accounts.store is not None:
            try:
                await audit.record(self.accounts.store, actor_of(request).name,
                                   "config.reload", None, None, result)  # fmt: skip
            except Exception as error:  # the reload happened: its entry is what is lost
                log.warning("could not write the audit entry of a reload: %s", error)
        return 200, result

    async def audit(
        self,
        request: Request,
        store: Store,
        action: str,
        target: str | None,
        before: Any,
        after: Any,
    ) -> None:
        """An entry in the audit log: who made this change (the admin key, or the
        signed-in user), and what it was."""
        shown = [item.public() if hasattr(item, "public") else item for item in (before, after)]
        await audit.record(store, actor_of(request).name, action, target, *shown)

    async def audit_log(self, request: Request, store: Store) -> tuple[int, Any]:
        params = request.query_params
        limit = params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise invalid("limit: expected 1 to 500", "limit")
        before = params.get("before")
        if before is not None and not before.isdigit():
            raise invalid("before: expected an entry's id", "before")
        found = await audit.entries(store, int(limit), int(before) if before else None)
        return 200, {"data": found}

    async def config(self, request: Request, store: None) -> tuple[int, Any]:
        assert self.control is not None
        return 200, await self.control.config_shown()

    async def list_keys(self, request: Request, store: Store) -> tuple[int, Any]:
        now, own = store.clock.time(), _own_user(request)
        found = await store.list_keys()
        return 200, {"data": [k.shown(now) for k in found if own is None or k.user_id == own]}

    async def _visible_key(self, request: Request, store: Store) -> Any:
        """The key of the path, if the actor may see it (a member: their own only)."""
        key_id = request.path_params["key_id"]
        key = await store.get_key(key_id)
        own = _own_user(request)
        if own is not None and key is not None and key.user_id != own:
            key = None  # as if absent: a member learns nothing of others' keys
        return key

    async def get_key(self, request: Request, store: Store) -> tuple[int, Any]:
        key = await self._visible_key(request, store)
        if key is None:
            raise GatewayError("not_found", f"no key {request.path_params['key_id']!r}")
        return 200, key.shown(store.clock.time())

    async def revoke_key(self, request: Request, store: Store) -> tuple[int, Any]:
        key_id = request.path_params["key_id"]
        before = await self._visible_key(request, store)
        if before is None or not await store.revoke_key(key_id):
            raise GatewayError("not_found", f"no active key {key_id!r}")
        self.accounts.keys.changed()
        after = await store.get_key(key_id)
        await self.audit(request, store, "key.revoke", key_id, before, after)
        return 200, {"id": key_id, "revoked": True}

    async def create_key(self, request: Request, store: Store) -> tuple[int, Any]:
        settings = self._key_settings(await json_object(request), partial=False)
        user = actor_of(request).user
        if _own_user(request) is not None and user is not None:
            # A member's key is theirs, in their team: its limits come on top of theirs.
            for field, own in (("user_id", user.id), ("team_id", user.team_id)):
                if settings.get(field) not in (None, own):
                    raise GatewayError("permission", f"{field}: a member makes keys for "
                                       "themselves, in their own team", param=field)  # fmt: skip
                settings[field] = own
        await self._owners_exist(store, settings)
        secret, key = await store.create_key(
            settings.pop("name"),
            settings.get("models"),
            user_id=settings.get("user_id"),
            team_id=settings.get("team_id"),
            expires_at=settings.get("expires_at"),
            budget_usd=settings.get("budget_usd"),
            budget_period=settings.get("budget_period") or "total",
            budget_reset_day=settings.get("budget_reset_day"),
            **{field: settings.get(field) for field in ("rpm", "tpm", "budget_tokens")},
        )
        self.accounts.keys.changed()
        await self.audit(request, store, "key.create", key.id, None, key)
        return 201, {"key": secret, **key.shown(store.clock.time())}

    async def update_key(self, request: Request, store: Store) -> tuple[int, Any]:
        """Change a key's name, models, limits, budgets or expiry; a field set to null
        removes that limit (models: every model)."""
        settings = self._key_settings(await json_object(request), partial=True)
        await self._owners_exist(store, settings)
        key_id = request.path_params["key_id"]
        before = await store.get_key(key_id)
        key = await store.update_key(key_id, settings) if settings else before
        if key is None:
            raise GatewayError("not_found", f"no key {key_id!r}")
        self.accounts.keys.changed()
        if settings:
            await self.audit(request, store, "key.update", key_id, before, key)
        return 200, key.shown(store.clock.time())

    async def rotate_key(self, request: Request, store: Store) -> tuple[int, Any]:
        """A new secret for the key, shown once; the old one stops working after
        ``grace_seconds`` (default 0: here at once,
        in other processes within ``store.key_cache_seconds``)."""
        key_id = request.path_params["key_id"]
        sent = request.headers.get("content-length", "0") != "0"  # a body is optional
        body = await json_object(request) if sent else {}
        grace = body.get("grace_seconds", 0)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= _WEEK:
            raise invalid("grace_seconds: seconds the old secret keeps working, 0 to 604800")
        before = await self._visible_key(request, store)
        rotated = await store.rotate_key(key_id, float(grace)) if before is not None else None
        if rotated is None:
            raise GatewayError("not_found", f"no active key {key_id!r}")
        self.accounts.keys.changed()
        secret, key = rotated
        await self.audit(request, store, "key.rotate", key_id, before, key)
        return 200, {"key": secret, **key.shown(store.clock.time())}

    def _key_settings(self, body: dict[str, Any], partial: bool) -> dict[str, Any]:
        """A key's settings from a request body, checked: store column -> value."""
        unknown = sorted(set(body) - _KEY_FIELDS)
        if unknown:
            raise invalid(
                f"unknown field {unknown[0]!r}; expected {sorted(_KEY_FIELDS)}", unknown[0]
            )
        settings: dict[str, Any] = {}
        if "name" in body or not partial:
            settings["name"] = checked_name(body.get("name"))
        settings.update(self.limit_settings(body))
        for field in ("user_id", "team_id"):
            if body.get(field) is not None and not isinstance(body[field], str):
                raise invalid(f"{field}: expected the id of a {field[:-3]}", field)
            if field in body:
                settings[field] = body[field]
        if "expires" in body:
            expires = body["expires"]
            settings["expires_at"] = parse_expiry(expires) if expires is not None else None
        return settings

    async def _owners_exist(self, store: Store, settings: dict[str, Any]) -> None:
        people = People(store)
        for field, kind in (("user_id", "user"), ("team_id", "team")):
            wanted = settings.get(field)
            if wanted is not None and await people.get(kind, wanted) is None:  # type: ignore[arg-type]
                raise invalid(f"{field}: no {kind} {wanted!r}", field)

    def limit_settings(self, body: dict[str, Any]) -> dict[str, Any]:
        """The limits and budgets a key, a user or a team holds, checked."""
        settings: dict[str, Any] = {}
        if "models" in body:
            settings["models"] = self._models(body["models"])
        for field in ("rpm", "tpm", "budget_tokens"):
            if field in body:
                settings[field] = _positive(body, field)
        if "budget_usd" in body:
            budget_usd = body["budget_usd"]
            if budget_usd is not None and (
                isinstance(budget_usd, bool)
                or not isinstance(budget_usd, int | float)
                or not 0 < budget_usd < 1e12
            ):
                raise invalid("budget_usd: expected a positive amount in USD", "budget_usd")
            settings["budget_usd"] = None if budget_usd is None else float(budget_usd)
        if "budget_period" in body:
            period = body["budget_period"]
            if period not in PERIODS:
                raise invalid(f"budget_period: expected one of {list(PERIODS)}", "budget_period")
            settings["budget_period"] = period
        if "budget_reset_day" in body:
            day = body["budget_reset_day"]
            if day is not None and (isinstance(day, bool) or day not in range(1, 29)):
                raise invalid("budget_reset_day: a day of the month, 1 to 28", "budget_reset_day")
            settings["budget_reset_day"] = day
        return settings

    def _models(self, models: Any) -> list[str] | None:
        """Model ids a key may use: each one in the catalog (a typo would otherwise
        leave the key refused on every request)."""
        if models is None:
            return None
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise invalid("models: expected a list of model ids", "models")
        known = [entry.id for entry in self.catalog.entries]
        for model in models:
            if self.catalog.get(model) is None:
                raise invalid(
                    f"models: no model {model!r} in the catalog{did_you_mean(model, known)}",
                    "models",
                )
        return models

    async def usage(self, request: Request, store: Store) -> tuple[int, Any]:
        by = request.query_params.get("by", "model")
        if by not in ("model", "key", "provider", "session", "user", "team"):
            raise invalid("by: expected model, key, provider, session, user or team", "by")
        since, own = _since(request), _own_user(request)
        found = await store.usage_summary(since, by, user_id=own)
        return 200, {"by": by, "since": since, "data": found}

    async def usage_series(self, request: Request, store: Store) -> tuple[int, Any]:
        return 200, await reports.series(store, _since(request))

    async def requests(self, request: Request, store: Store) -> tuple[int, Any]:
        params = request.query_params
        limit = params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise invalid("limit: expected 1 to 500", "limit")
        status = params.get("status") or None
        if status is not None and status not in ("ok", "error") and not _is_status(status):
            raise invalid("status: expected ok, error or an HTTP status such as 429", "status")
        before = params.get("before") or None
        if before is not None and not (before.isdigit() and int(before) < INT64):
            raise invalid("before: expected a record id", "before")
        rows = await reports.recent_requests(
            store,
            int(limit),
            key=params.get("key") or None,
            model=params.get("model") or None,
            status=status,
            before=int(before) if before is not None else None,
            text=params.get("q", "").strip()[:200] or None,
        )
        return 200, {"data": rows}

    async def request(self, request: Request, store: Store) -> tuple[int, Any]:
        request_id = request.path_params["request_id"]
        found = await reports.request_detail(store, request_id)
        if found is None:
            raise GatewayError("not_found", f"no request {request_id!r} on record")
        return 200, found

    async def deployments(self, request: Request, store: None) -> tuple[int, Any]:
        now_monotonic, now = time.monotonic(), time.time()
        models = []
        for entry in self.catalog.entries:
            deployments = []
            for deployment in entry.deployments:
                health = deployment.health
                price = deployment.price
                errors = self.router.recent_errors.get(deployment.name, ())
                deployments.append(
                    {
                        "name": deployment.name,
                        "provider": deployment.provider.name,
                        "type": deployment.provider.config.type,
                        "upstream_model": deployment.target.model,
                        "weight": deployment.weight,
                        "in_flight": health.in_flight,
                        "max_in_flight": health.max_in_flight,
                        "failures_in_a_row": health.failures,
                        "circuit": "open" if health.open_until > now_monotonic else "closed",
                        "open_for_seconds": max(0.0, health.open_until - now_monotonic),
                        "price": None
                        if price is None
                        else {
                            "input": price.input,
                            "output": price.output,
                            "cache_read": price.cache_read,
                            "cache_write": price.cache_write,
                        },
                        "recent_errors": [
                            {"at": at, "seconds_ago": now - at, "kind": kind, "message": message}
                            for at, kind, message in reversed(errors)
                        ],
                    }
                )
            models.append({"id": entry.id, "name": entry.name, "deployments": deployments})
        return 200, {"data": models}


def _since(request: Request) -> float:
    try:
        return parse_since(request.query_params.get("since", "24h"))
    except ValueError as error:
        raise invalid(f"since: {error}", "since") from None


def _is_status(text: str) -> bool:
    return text.isdigit() and 100 <= int(text) <= 599


def actor_of(request: Request) -> Actor:
    actor: Actor = request.scope["lmgate.actor"]
    return actor


def _own_user(request: Request) -> str | None:
    """A member's user id (what they may see is theirs); None for admins and viewers."""
    actor = actor_of(request)
    if actor.role != "member":
        return None
    return actor.user.id if actor.user is not None else "-"


def _from_own_page(request: Request) -> bool:
    """The request comes from the gateway's own page: browsers send ``Origin`` with
    every change, naming the page's origin (Guard already refused foreign ones not
    allowed by CORS; a signed-in change takes the gateway's own only)."""
    origin, host = request.headers.get("origin"), request.headers.get("host")
    return origin is not None and host is not None and same_origin(origin.encode(), host.encode())


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await _body(request))
    except orjson.JSONDecodeError:
        raise invalid("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


async def _body(request: Request) -> bytes:
    require_json(request.headers.get("content-type"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise GatewayError("request_too_large", f"the body is larger than {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _positive(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < INT64:
        raise invalid(f"{field}: expected a positive integer (64-bit)", field)
    return value


def parse_expiry(value: Any) -> float:
    """An ISO date or datetime (``2027-01-31``, ``2027-01-31T12:00:00+00:00``), in
    the future; a date without a zone is UTC."""
    if not isinstance(value, str):
        raise invalid("expires: expected an ISO date such as 2027-01-31", "expires")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(
            f"expires: {value!r} is not an ISO date such as 2027-01-31", "expires"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.timestamp()
    if stamp <= time.time():
        raise invalid(f"expires: {value} is in the past", "expires")
    return stamp
