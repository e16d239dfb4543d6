"""People and teams in the store: each holds limits and budgets as a key does (models,
rpm, tpm, budgets with their periods). A request must pass its key's, its user's and
its team's; the tightest refuses, and its 429 names which."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from lmgate.accounts.periods import Budgeted, bounds
from lmgate.accounts.schema import keys, teams, users
from lmgate.accounts.store import KeyInfo, Store

Kind = Literal["user", "team"]
ROLES = ("admin", "viewer", "member")


@dataclass(slots=True)
class Account(Budgeted):
    """A user or a team."""

    kind: Kind
    id: str
    name: str
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"
    budget_reset_day: int | None = None
    used_tokens: int = 0
    used_usd: float = 0.0
    period_start: float = 0.0
    created_at: float = field(default_factory=time.time)
    email: str | None = None  # users
    team_id: str | None = None  # users: their team
    role: str | None = None  # users: admin | viewer | member

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"


# What limits and budgets are checked on: a key, its user, their team.
Holder = KeyInfo | Account


def table_of(kind: Kind) -> sa.Table:
    return users if kind == "user" else teams


class People:
    """Users and teams, kept in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, kind: Kind, settings: dict[str, Any]) -> Account:
        values = _row(settings)
        values["id"] = ("u-" if kind == "user" else "t-") + uuid.uuid4().hex[:12]
        values["created_at"] = time.time()
        period, day = values.get("budget_period") or "total", values.get("budget_reset_day")
        values["period_start"] = bounds(period, day, self.store.clock.time())[0]
        async with self.store.engine.begin() as connection:
            await connection.execute(table_of(kind).insert().values(**values))
        account = await self.get(kind, values["id"])
        assert account is not None
        return account

    async def get(self, kind: Kind, account_id: str) -> Account | None:
        table = table_of(kind)
        async with self.store.engine.connect() as connection:
            row = (await connection.execute(table.select().where(table.c.id == account_id))).first()
        return _account(kind, row._mapping) if row is not None else None

    async def find(self, kind: Kind, column: str, value: str) -> Account | None:
        """The user with an email, or the team with a name (``column``)."""
        table = table_of(kind)
        async with self.store.engine.connect() as connection:
            row = (await connection.execute(table.select().where(table.c[column] == value))).first()
        return _account(kind, row._mapping) if row is not None else None

    async def list(self, kind: Kind) -> list[Account]:
        table = table_of(kind)
        async with self.store.engine.connect() as connection:
            result = await connection.execute(table.select().order_by(table.c.created_at))
            return [_account(kind, row._mapping) for row in result]

    async def update(self, kind: Kind, account_id: str, settings: dict[str, Any]) -> Account | None:
        table = table_of(kind)
        if settings:
            async with self.store.engine.begin() as connection:
                result = await connection.execute(
                    table.update().where(table.c.id == account_id).values(**_row(settings))
                )
                if not result.rowcount:
                    return None
        return await self.get(kind, account_id)

    async def delete(self, kind: Kind, account_id: str) -> str | None:
        """Remove a user (their keys are revoked) or an empty team; None when done,
        else why not."""
        table = table_of(kind)
        async with self.store.engine.begin() as connection:
            if kind == "team":
                members = await connection.execute(
                    sa.select(sa.func.count())
                    .select_from(users)
                    .where(users.c.team_id == account_id)
                )
                if members.scalar():
                    return "the team still has users: move or remove them first"
                await connection.execute(
                    keys.update().where(keys.c.team_id == account_id).values(team_id=None)
                )
            else:
                await connection.execute(
                    keys.update()
                    .where(keys.c.user_id == account_id, keys.c.revoked_at.is_(None))
                    .values(revoked_at=time.time())
                )
            result = await connection.execute(table.delete().where(table.c.id == account_id))
        return None if result.rowcount else "not found"


def _row(settings: dict[str, Any]) -> dict[str, Any]:
    row = dict(settings)
    if "models" in row:
        row["models"] = orjson.dumps(row["models"]).decode() if row["models"] is not None else None
    return row


def _account(kind: Kind, row: Any) -> Account:
    values = {name: row[name] for name in row if name in Account.__dataclass_fields__}
    values["models"] = orjson.loads(row["models"]) if row["models"] else None
    return Account(kind=kind, **values)
