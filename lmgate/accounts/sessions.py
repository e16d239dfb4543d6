"""Dashboard sessions and sign-ins under way, kept in the store so that any instance
behind a load balancer knows them, and sign-out or a removed user ends them at once.

The browser holds a random secret (256 bits) in an HttpOnly, SameSite cookie; the
store holds its SHA-256, so a copy of the database opens no session. Expiry is decided
by the store's clock (a test moves it on instead of waiting)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from lmgate.accounts.people import Account
from lmgate.accounts.schema import sessions
from lmgate.accounts.store import Store
from lmgate.errors import GatewayError

LOGIN_SECONDS = 600  # from leaving for the provider to coming back
# Sign-ins under way at once: each is a row until it returns or expires, and anyone
# may start one (a flood must not grow the table without bound).
MAX_LOGINS = 10_000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes an admin request: the admin key (automation), or a signed-in user
    with their role. ``name`` is the audit log's actor."""

    name: str
    role: str  # admin | viewer | member
    user: Account | None = None


ADMIN_KEY = Actor("admin key", "admin")


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    expires_at: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def open(self, user_id: str, seconds: float) -> tuple[str, Session]:
        """A new session: its secret (the cookie's value) and what it holds."""
        now = self.store.clock.time()
        secret = secrets.token_urlsafe(32)
        row = {"id_hash": _hash(secret), "kind": "session", "user_id": user_id,
               "created_at": now, "expires_at": now + seconds}  # fmt: skip
        async with self.store.engine.begin() as connection:
            await connection.execute(sessions.insert().values(**row))
        return secret, Session(user_id, now + seconds)

    async def find(self, secret: str) -> Session | None:
        """The live session of a cookie's secret, or None (unknown, ended, expired)."""
        query = sa.select(sessions.c.user_id, sessions.c.expires_at).where(
            sessions.c.id_hash == _hash(secret), sessions.c.kind == "session"
        )
        async with self.store.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None or row.expires_at <= self.store.clock.time():
            return None
        return Session(row.user_id, row.expires_at)

    async def close(self, secret: str) -> None:
        async with self.store.engine.begin() as connection:
            await connection.execute(sessions.delete().where(sessions.c.id_hash == _hash(secret)))

    async def begin_login(self, state: str, data: dict[str, Any]) -> None:
        """A sign-in leaving for the provider, found again by its ``state``. Expired rows
        of every kind are removed here: sign-ins are rare, and this keeps the table small."""
        now = self.store.clock.time()
        row = {"id_hash": _hash(state), "kind": "login", "data": orjson.dumps(data).decode(),
               "created_at": now, "expires_at": now + LOGIN_SECONDS}  # fmt: skip
        async with self.store.engine.begin() as connection:
            await connection.execute(sessions.delete().where(sessions.c.expires_at <= now))
            under_way = sa.select(sa.func.count()).where(sessions.c.kind == "login")
            if (await connection.execute(under_way)).scalar_one() >= MAX_LOGINS:
                raise GatewayError("overloaded", "too many sign-ins under way: try again in a "
                                   "minute", retry_after=60)  # fmt: skip
            await connection.execute(sessions.insert().values(**row))

    async def finish_login(self, state: str) -> dict[str, Any] | None:
        """What ``begin_login`` kept for ``state``, once: a second use finds nothing."""
        where = (sessions.c.id_hash == _hash(state), sessions.c.kind == "login")
        async with self.store.engine.begin() as connection:
            row = (await connection.execute(sa.select(sessions).where(*where))).first()
            if row is None:
                return None
            gone = await connection.execute(sessions.delete().where(*where))
        if not gone.rowcount or row.expires_at <= self.store.clock.time():
            return None  # another request used it first, or it is too late
        loaded: dict[str, Any] = orjson.loads(row.data)
        return loaded

    async def close_all(self, user_id: str) -> None:
        """End every session of a user (removed, or demoted)."""
        async with self.store.engine.begin() as connection:
            await connection.execute(sessions.delete().where(sessions.c.user_id == user_id))
