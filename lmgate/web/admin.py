"""The admin HTTP API under ``/admin/``: API keys and usage, for ``server.admin_key``
only (no client key reaches it). Errors use the OpenAI error shape."""

from __future__ import annotations

import hmac
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from lmgate.accounts import audit, reports
from lmgate.accounts.accounts import Accounts, parse_since
from lmgate.accounts.keys import presented_key
from lmgate.accounts.people import People
from lmgate.accounts.periods import PERIODS
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

LIMIT_FIELDS = {"models", "rpm", "tpm", "budget_tokens", "budget_usd", "budget_period",
                "budget_reset_day"}  # fmt: skip
log = logging.getLogger("lmgate")
_KEY_FIELDS = {"name", "expires", "user_id", "team_id", *LIMIT_FIELDS}
_MAX_BODY = 64 * 1024
_WEEK = 7 * 86400  # a key's settings are a few hundred bytes


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
    ) -> None:
        self._key = admin_key.encode() if admin_key else None
        self.accounts = accounts
        self.catalog = catalog
        self.router = router
        self.control = control

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/usage/series", self._handler(self.usage_series), methods=["GET"]),
            Route("/admin/requests", self._handler(self.requests), methods=["GET"]),
            Route(
                "/admin/requests/{request_id:path}", self._handler(self.request), methods=["GET"]
            ),
            Route(
                "/admin/deployments", self._handler(self.deployments, store=False), methods=["GET"]
            ),
            Route("/admin/keys", self._handler(self.list_keys), methods=["GET"]),
            Route("/admin/keys", self._handler(self.create_key), methods=["POST"]),
            Route("/admin/keys/{key_id}", self._handler(self.get_key), methods=["GET"]),
            Route("/admin/keys/{key_id}", self._handler(self.revoke_key), methods=["DELETE"]),
            Route("/admin/keys/{key_id}", self._handler(self.update_key), methods=["PATCH"]),
            Route("/admin/keys/{key_id}/rotate", self._handler(self.rotate_key), methods=["POST"]),
            Route("/admin/usage", self._handler(self.usage), methods=["GET"]),
            Route("/admin/reload", self._handler(self.reload, store=False), methods=["POST"]),
            Route("/admin/config", self._handler(self.config, store=False), methods=["GET"]),
            Route("/admin/audit", self._handler(self.audit_log), methods=["GET"]),
            *PeopleAdmin(self).routes(),
        ]

    # For the users' and teams' routes (admin_people).
    limit_fields = LIMIT_FIELDS

    def handler(self, action: Any) -> Any:
        return self._handler(action)

    async def json_object(self, request: Request) -> dict[str, Any]:
        return await _json_object(request)

    def _handler(self, action: Any, store: bool = True) -> Any:
        async def handle(request: Request) -> Response:
            try:
                self._authenticate(request)
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

    def _authenticate(self, request: Request) -> None:
        if self._key is None:
            raise GatewayError("not_found", "the admin API is off: set server.admin_key")
        given = presented_key(request.headers)
        if not given:
            raise GatewayError("authentication", "missing admin key", code="missing_api_key")
        if not hmac.compare_digest(given.encode(), self._key):
            raise GatewayError("permission", "this key is not the admin key", code="not_admin")

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
                await audit.record(self.accounts.store, "admin key", "config.reload", None,
                                   None, result)  # fmt: skip
            except Exception as error:  # the reload happened: its entry is what is lost
                log.warning("could not write the audit entry of a reload: %s", error)
        return 200, result

    async def audit(
        self, store: Store, action: str, target: str | None, before: Any, after: Any
    ) -> None:
        """An entry in the audit log: the admin key made this change (the actor is the
        one credential that reaches the admin API)."""
        shown = [item.public() if hasattr(item, "public") else item for item in (before, after)]
        await audit.record(store, "admin key", action, target, *shown)

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
        now = store.clock.time()
        return 200, {"data": [key.shown(now) for key in await store.list_keys()]}

    async def get_key(self, request: Request, store: Store) -> tuple[int, Any]:
        key = await store.get_key(request.path_params["key_id"])
        if key is None:
            raise GatewayError("not_found", f"no key {request.path_params['key_id']!r}")
        return 200, key.shown(store.clock.time())

    async def revoke_key(self, request: Request, store: Store) -> tuple[int, Any]:
        key_id = request.path_params["key_id"]
        before = await store.get_key(key_id)
        if not await store.revoke_key(key_id):
            raise GatewayError("not_found", f"no active key {key_id!r}")
        self.accounts.keys.changed()
        after = await store.get_key(key_id)
        await self.audit(store, "key.revoke", key_id, before, after)
        return 200, {"id": key_id, "revoked": True}

    async def create_key(self, request: Request, store: Store) -> tuple[int, Any]:
        settings = self._key_settings(await _json_object(request), partial=False)
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
        await self.audit(store, "key.create", key.id, None, key)
        return 201, {"key": secret, **key.shown(store.clock.time())}

    async def update_key(self, request: Request, store: Store) -> tuple[int, Any]:
        """Change a key's name, models, limits, budgets or expiry; a field set to null
        removes that limit (models: every model)."""
        settings = self._key_settings(await _json_object(request), partial=True)
        await self._owners_exist(store, settings)
        key_id = request.path_params["key_id"]
        before = await store.get_key(key_id)
        key = await store.update_key(key_id, settings) if settings else before
        if key is None:
            raise GatewayError("not_found", f"no key {key_id!r}")
        self.accounts.keys.changed()
        if settings:
            await self.audit(store, "key.update", key_id, before, key)
        return 200, key.shown(store.clock.time())

    async def rotate_key(self, request: Request, store: Store) -> tuple[int, Any]:
        """A new secret for the key, shown once; the old one stops working after
        ``grace_seconds`` (default 0: here at once,
        in other processes within ``store.key_cache_seconds``)."""
        key_id = request.path_params["key_id"]
        sent = request.headers.get("content-length", "0") != "0"  # a body is optional
        body = await _json_object(request) if sent else {}
        grace = body.get("grace_seconds", 0)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= _WEEK:
            raise invalid("grace_seconds: seconds the old secret keeps working, 0 to 604800")
        before = await store.get_key(key_id)
        rotated = await store.rotate_key(key_id, float(grace))
        if rotated is None:
            raise GatewayError("not_found", f"no active key {key_id!r}")
        self.accounts.keys.changed()
        secret, key = rotated
        await self.audit(store, "key.rotate", key_id, before, key)
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
        since = _since(request)
        return 200, {"by": by, "since": since, "data": await store.usage_summary(since, by)}

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


async def _json_object(request: Request) -> dict[str, Any]:
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
