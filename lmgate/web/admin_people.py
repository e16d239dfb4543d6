"""The admin API's users and teams: ``/admin/teams`` and ``/admin/users``, each with
the limits and budgets a key holds (a request must pass its key's, its user's and its
team's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from lmgate.accounts.people import ROLES, Kind, People
from lmgate.accounts.sessions import Sessions
from lmgate.accounts.store import Store
from lmgate.errors import GatewayError, invalid

if TYPE_CHECKING:
    from lmgate.web.admin import Admin

_MAX_NAME = 200
_MAX_EMAIL = 320


class PeopleAdmin:
    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def routes(self) -> list[Route]:
        from lmgate.web.admin import ADMINS, READERS

        handler = self.admin.handler
        routes = []
        for kind in ("team", "user"):
            base = f"/admin/{kind}s"
            routes += [
                Route(base, handler(self._lister(kind), READERS), methods=["GET"]),
                Route(base, handler(self._creator(kind), ADMINS), methods=["POST"]),
                Route(base + "/{id}", handler(self._getter(kind), READERS), methods=["GET"]),
                Route(base + "/{id}", handler(self._updater(kind), ADMINS), methods=["PATCH"]),
                Route(base + "/{id}", handler(self._deleter(kind), ADMINS), methods=["DELETE"]),
            ]
        return routes

    def _lister(self, kind: Kind) -> Any:
        async def action(request: Request, store: Store) -> tuple[int, Any]:
            now = store.clock.time()
            return 200, {"data": [a.shown(now) for a in await People(store).list(kind)]}

        return action

    def _getter(self, kind: Kind) -> Any:
        async def action(request: Request, store: Store) -> tuple[int, Any]:
            account = await People(store).get(kind, request.path_params["id"])
            if account is None:
                raise GatewayError("not_found", f"no {kind} {request.path_params['id']!r}")
            return 200, account.shown(store.clock.time())

        return action

    def _creator(self, kind: Kind) -> Any:
        async def action(request: Request, store: Store) -> tuple[int, Any]:
            body = await self.admin.json_object(request)
            settings = await self._settings(kind, body, store, partial=False)
            people = People(store)
            if kind == "user" and await _email_taken(people, settings["email"]):
                raise invalid(f"email: a user with {settings['email']!r} exists", "email")
            if kind == "team" and await people.find("team", "name", settings["name"]):
                raise invalid(f"name: a team named {settings['name']!r} exists", "name")
            account = await people.create(kind, settings)
            await self.admin.audit(request, store, f"{kind}.create", account.id, None, account)
            return 201, account.shown(store.clock.time())

        return action

    def _updater(self, kind: Kind) -> Any:
        async def action(request: Request, store: Store) -> tuple[int, Any]:
            body = await self.admin.json_object(request)
            settings = await self._settings(kind, body, store, partial=True)
            account_id = request.path_params["id"]
            before = await People(store).get(kind, account_id)
            account = await People(store).update(kind, account_id, settings)
            if account is None:
                raise GatewayError("not_found", f"no {kind} {account_id!r}")
            self.admin.accounts.keys.changed()  # its limits apply at once
            if settings:
                action = f"{kind}.update"
                await self.admin.audit(request, store, action, account_id, before, account)
            if kind == "user" and settings.get("role") not in (None, before and before.role):
                await Sessions(store).close_all(account_id)  # sign in again, in the new role
            return 200, account.shown(store.clock.time())

        return action

    def _deleter(self, kind: Kind) -> Any:
        async def action(request: Request, store: Store) -> tuple[int, Any]:
            account_id = request.path_params["id"]
            before = await People(store).get(kind, account_id)
            problem = await People(store).delete(kind, account_id)
            if problem == "not found":
                raise GatewayError("not_found", f"no {kind} {account_id!r}")
            if problem is not None:
                raise GatewayError("invalid_request", problem, status=409, code="team_not_empty")
            self.admin.accounts.keys.changed()  # a removed user's keys stop at once
            if kind == "user":
                await Sessions(store).close_all(account_id)
            await self.admin.audit(request, store, f"{kind}.delete", account_id, before, None)
            return 200, {"id": account_id, "deleted": True}

        return action

    async def _settings(
        self, kind: Kind, body: dict[str, Any], store: Store, partial: bool
    ) -> dict[str, Any]:
        own = {"name"} | ({"email", "team_id", "role"} if kind == "user" else set())
        known = own | self.admin.limit_fields
        unknown = sorted(set(body) - known)
        if unknown:
            raise invalid(f"unknown field {unknown[0]!r}; expected {sorted(known)}", unknown[0])
        settings = self.admin.limit_settings(body)
        if kind == "user":
            if "email" in body or not partial:
                email = body.get("email")
                if not isinstance(email, str) or "@" not in email or len(email) > _MAX_EMAIL:
                    raise invalid("email: an email address", "email")
                settings["email"] = email.strip().lower()
            if "role" in body:
                if body["role"] not in ROLES:
                    raise invalid(f"role: one of {list(ROLES)}", "role")
                settings["role"] = body["role"]
            if "team_id" in body:
                team_id = body["team_id"]
                if team_id is not None and (
                    not isinstance(team_id, str) or await People(store).get("team", team_id) is None
                ):
                    raise invalid(f"team_id: no team {team_id!r}", "team_id")
                settings["team_id"] = team_id
        if "name" in body or (not partial and kind == "team"):
            settings["name"] = checked_name(body.get("name"))
        elif not partial:  # a user's name defaults to their email
            settings["name"] = settings["email"]
        return settings


def checked_name(name: Any) -> str:
    """A key's, user's or team's name: non-empty, of a sane length."""
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
        raise invalid(f"name: a non-empty string of at most {_MAX_NAME} characters", "name")
    return name.strip()


async def _email_taken(people: People, email: str) -> bool:
    return await people.find("user", "email", email) is not None
