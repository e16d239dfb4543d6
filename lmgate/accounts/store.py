"""Durable state: API keys (hashes only) and usage records, in SQLite or PostgreSQL
through one code path (SQLAlchemy Core, awaited: ``lmgate.accounts.aio``). The schema
is created and upgraded at start by append-only numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.pool import PoolResetState

from lmgate.accounts.aio import AsyncEngine, create_engine
from lmgate.accounts.periods import Budgeted, bounds
from lmgate.accounts.schema import keys, migrate, responses, teams, usage, users
from lmgate.clock import SYSTEM, Clock
from lmgate.errors import GatewayError
from lmgate.observe.dependencies import Dependency

KEY_PREFIX = "lmg-"


@dataclass(slots=True)
class UsageRecord:
    at: float
    request_id: str
    protocol: str
    stream: bool
    key_id: str | None = None
    requested_model: str | None = None
    model: str | None = None
    deployment: str | None = None
    provider: str | None = None
    status: int = 200
    error_type: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    upstream_ms: float | None = None
    overhead_ms: float | None = None
    error_message: str | None = None
    session: str | None = None  # the agent session (its header, prompt_cache_key, user)
    user_id: str | None = None  # whose key it came with
    team_id: str | None = None  # and their team


@dataclass(slots=True)
class KeyInfo(Budgeted):
    id: str
    name: str
    prefix: str
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_tokens: int | None = None
    used_tokens: int = 0
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    revoked_at: float | None = None
    budget_usd: float | None = None
    used_usd: float = 0.0
    budget_period: str = "total"  # total | daily | weekly | monthly (UTC calendar)
    budget_reset_day: int | None = None  # monthly: the day of the month it resets
    period_start: float = 0.0  # the period the running totals (used_*) belong to
    user_id: str | None = None  # whose key it is: their limits and budgets apply too
    team_id: str | None = None  # its team (else its user's): the team's apply too
    previous_until: float | None = None  # rotated: the old secret works until then

    @property
    def label(self) -> str:
        return f"API key {self.name!r}"

    def public(self) -> dict[str, Any]:
        return asdict(self)


def hash_key(key: str) -> str:
    # Keys are 256 random bits: a fast hash is enough, and keeps lookups cheap.
    return hashlib.sha256(key.encode()).hexdigest()


def engine_url(url: str) -> str:
    """``sqlite:///…`` / ``postgresql://…`` with the async driver lmgate uses."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for scheme in ("postgresql:", "postgres:"):
        if url.startswith(scheme):
            return "postgresql+asyncpg:" + url[len(scheme) :]
    return url


T = TypeVar("T")


def store_unavailable() -> GatewayError:
    return GatewayError(
        "unavailable",
        "the gateway's store is unreachable (API keys and stored responses cannot be "
        "read); try again shortly",
        code="store_unavailable",
        retry_after=5,
    )


class Store:
    def __init__(self, url: str, timeout: float = 3.0, clock: Clock = SYSTEM) -> None:
        self.url = url
        self.clock = clock  # where budget periods begin
        self.timeout = timeout  # for a call on a request's path, and to connect
        self.health = Dependency("store")
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            _private_file(url)
            options["connect_args"] = {"timeout": 30}
            options["pool_reset_on_return"] = None  # see _sqlite_transactions
        else:
            # A frozen server must not hold a connection for ever; a report over a
            # long range may take a while.
            options["connect_args"] = {"timeout": timeout, "command_timeout": 60}
            # After the server restarted, pooled connections are dead: a checkout
            # finds out (one round trip, once per batch or key lookup) and reconnects,
            # rather than failing the batch or request that drew it.
            options["pool_pre_ping"] = True
        self.engine = create_engine(engine_url(url), **options)
        if url.startswith("sqlite"):
            _sqlite_transactions(self.engine)
            _adapt_sqlite_parameters()

    async def close(self) -> None:
        await self.engine.dispose()

    async def bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call on a request's path: at most ``timeout`` seconds; a 503 when the store
        does not answer (or did not a moment ago), never a bare 500."""
        if not self.health.worth_trying():
            raise store_unavailable()
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except Exception as error:  # whatever the driver raises: the store failed
            self.health.failed(error, "on a request's path")
            raise store_unavailable() from None
        self.health.answered()
        return result

    async def migrate(self) -> int:
        """Bring the schema up to date; returns its version. Safe when several
        processes start at once (PostgreSQL: advisory lock; SQLite: write lock)."""
        attempt = 0
        while True:
            try:
                return await self._migrate_once()
            except sa.exc.OperationalError as error:
                # A new SQLite file turning to WAL while another process migrates it
                # fails at once with "locked" (SQLite does not wait there): retry.
                attempt += 1
                if "locked" not in str(error) or attempt > 50:
                    raise
                await asyncio.sleep(0.02 * attempt)

    async def _migrate_once(self) -> int:
        async with self.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                connection = await connection.execution_options(sqlite_immediate=True)
            async with connection.begin():
                if connection.dialect.name == "postgresql":
                    await connection.execute(sa.text("SELECT pg_advisory_xact_lock(7860)"))
                return await connection.run_sync(migrate)

    # ---- usage ----------------------------------------------------------------------

    async def record(self, records: list[UsageRecord]) -> None:
        await self.record_rows([record_row(record) for record in records])

    async def record_rows(self, rows: list[tuple[Any, ...]]) -> dict[str, Spent]:
        """Write a batch of ``record_row`` tuples, and add their tokens and cost to each
        managed key's running totals; returns what each key spent, with its new totals."""
        used = spent_by_key(rows)
        spent: dict[str, Spent] = {}
        if not rows:
            return spent
        async with self.engine.begin() as connection:
            # Plain tuples straight to the driver's executemany: one prepared one-row
            # INSERT stepped per row, one round trip to the driver's thread or server.
            # Measured on SQLite: half the CPU per row of multi-row INSERTs of 4096
            # parameters (equal in instructions; those cost in memory traffic).
            await connection.exec_driver_sql(_insert_usage(connection.dialect.paramstyle), rows)
            spending = [key_id for key_id, (tokens, cost) in used.items() if tokens or cost]
            periods = await self._periods(connection, spending)
            greatest = sa.func.max if connection.dialect.name == "sqlite" else sa.func.greatest
            for key_id in spending:
                if key_id not in periods:  # one this store does not know: no total
                    continue
                tokens, cost = used[key_id]
                start = periods[key_id]
                table = _table_of(key_id)
                # A total of an earlier period starts again from this batch's spend.
                fresh = table.c.period_start < start
                totals = (
                    await connection.execute(
                        table.update()
                        .where(table.c.id == key_id)
                        .values(
                            used_tokens=sa.case(
                                (fresh, tokens), else_=table.c.used_tokens + tokens
                            ),
                            used_usd=sa.case((fresh, cost), else_=table.c.used_usd + cost),
                            period_start=greatest(table.c.period_start, start),
                        )
                        .returning(table.c.used_tokens, table.c.used_usd, table.c.period_start)
                    )
                ).first()
                if totals is not None:
                    spent[key_id] = Spent(
                        tokens, totals[0], cost, float(totals[1]), float(totals[2])
                    )
        return spent

    async def _periods(self, connection: Any, holder_ids: list[str]) -> dict[str, float]:
        """Where each key's, user's or team's current budget period began (now, by the
        store's clock)."""
        now = self.clock.time()
        starts: dict[str, float] = {}
        for table in (keys, users, teams):
            ids = [holder for holder in holder_ids if _table_of(holder) is table]
            if not ids:
                continue
            query = sa.select(table.c.id, table.c.budget_period, table.c.budget_reset_day)
            for row in await connection.execute(query.where(table.c.id.in_(ids))):
                starts[row.id] = bounds(row.budget_period, row.budget_reset_day, now)[0]
        return starts

    async def reachable(self) -> bool:
        """Whether the database answers at all (a refused record is not an outage)."""
        try:
            async with asyncio.timeout(self.timeout), self.engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except Exception as error:
            self.health.failed(error)
            return False
        self.health.answered()
        return True

    async def usage_rows(self, since: float, request_id: str | None = None) -> list[dict[str, Any]]:
        query = usage.select().where(usage.c.at >= since).order_by(usage.c.id)
        if request_id is not None:
            query = query.where(usage.c.request_id == request_id)
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [dict(row._mapping) for row in result]

    async def usage_summary(
        self, since: float, by: str, user_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens, cost, errors and latency percentiles per model, key or
        provider, computed by the database (a time range may hold millions of records).
        ``unpriced``: served requests whose deployment had no price (not in ``cost``); a
        refused one spent nothing to price."""
        # By model: the one that answered, else (a request that failed first) the one asked for.
        model = sa.func.coalesce(usage.c.model, usage.c.requested_model)
        column = {"model": model, "key": usage.c.key_id, "provider": usage.c.provider,
                  "session": usage.c.session, "user": usage.c.user_id,
                  "team": usage.c.team_id}[by]  # fmt: skip
        group = sa.func.coalesce(column, "-")
        # Latency percentiles are of the requests an upstream served: a refusal (no
        # deployment) takes a millisecond and would only pull them down.
        served = sa.case((usage.c.deployment.is_not(None), 1), else_=0)
        ranked = (
            sa.select(
                group.label("group"),
                served.label("served"),
                usage.c.error_type,
                usage.c.input_tokens,
                usage.c.output_tokens,
                usage.c.cached_tokens,
                usage.c.cost,
                usage.c.latency_ms,
                sa.func.row_number()
                .over(partition_by=(group, served), order_by=usage.c.latency_ms)
                .label("rank"),
                sa.func.count().over(partition_by=(group, served)).label("n"),
            )
            .where(usage.c.at >= since, *([usage.c.user_id == user_id] if user_id else []))
            .subquery()
        )
        r = ranked.c
        # The median: the middle rank, or the mean of the two middle ones (2 * rank
        # in n..n+2). The 95th percentile: rank floor(0.95 n) + 1, in integers.
        is_served = r.served == 1
        median = sa.case((sa.and_(is_served, sa.between(2 * r.rank, r.n, r.n + 2)), r.latency_ms))
        p95 = sa.case(
            (
                sa.and_(is_served, 100 * r.rank - 100 <= 95 * r.n, 95 * r.n < 100 * r.rank),
                r.latency_ms,
            )
        )
        errors = sa.case((r.error_type.is_not(None), 1), else_=0)
        spent = r.input_tokens + r.output_tokens
        query = sa.select(
            r.group,
            sa.func.count().label("requests"),
            sa.func.sum(errors).label("errors"),
            sa.func.sum(r.input_tokens).label("input_tokens"),
            sa.func.sum(r.output_tokens).label("output_tokens"),
            sa.func.sum(r.cached_tokens).label("cached_tokens"),  # input read from a cache
            sa.func.sum(r.cost).label("cost"),  # of the priced requests
            sa.func.sum(sa.case((sa.and_(r.cost.is_(None), spent > 0), 1), else_=0)).label(
                "unpriced"
            ),
            sa.func.avg(median).label("p50_ms"),
            sa.func.max(p95).label("p95_ms"),
        ).group_by(r.group)
        async with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in await connection.execute(query)]
        return sorted(rows, key=itemgetter("group"))

    # ---- stored responses (the Responses API) ----------------------------------------

    async def save_responses(self, rows: list[dict[str, Any]]) -> None:
        """Write stored responses in one transaction: each a dict of the table's
        columns (``id``, ``key_id``, ``created_at``, ``expires_at``, ``input_items``,
        ``response``)."""
        async with self.engine.begin() as connection:
            await connection.execute(responses.insert(), rows)

    async def load_response(self, response_id: str, key_id: str | None) -> tuple[str, str] | None:
        """(input items, response) as JSON text, when ``key_id`` made it and it is live."""
        query = sa.select(responses.c.input_items, responses.c.response).where(
            responses.c.id == response_id,
            _owned_by(key_id),
            responses.c.expires_at > time.time(),
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return (row[0], row[1]) if row is not None else None

    async def stored_bytes(self, key_id: str | None) -> int:
        """What the live stored responses of ``key_id`` hold (characters of JSON)."""
        size = sa.func.length(responses.c.input_items) + sa.func.length(responses.c.response)
        query = sa.select(sa.func.coalesce(sa.func.sum(size), 0)).where(
            _owned_by(key_id), responses.c.expires_at > time.time()
        )
        async with self.engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())

    async def delete_response(self, response_id: str, key_id: str | None) -> bool:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                responses.delete().where(responses.c.id == response_id, _owned_by(key_id))
            )
            return bool(result.rowcount)

    async def purge_responses(self) -> int:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                responses.delete().where(responses.c.expires_at <= time.time())
            )
            return int(result.rowcount or 0)

    # ---- keys -----------------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_tokens: int | None = None,
        expires_at: float | None = None,
        budget_usd: float | None = None,
        budget_period: str = "total",
        budget_reset_day: int | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key: (the secret, shown once, and what is stored about it)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(
            id=uuid.uuid4().hex[:12],
            name=name,
            prefix=secret[:10],
            models=models,
            rpm=rpm,
            tpm=tpm,
            budget_tokens=budget_tokens,
            expires_at=expires_at,
            budget_usd=budget_usd,
            budget_period=budget_period,
            budget_reset_day=budget_reset_day,
            period_start=bounds(budget_period, budget_reset_day, self.clock.time())[0],
            user_id=user_id,
            team_id=team_id,
        )
        row = info.public()
        row["models"] = orjson.dumps(models).decode() if models is not None else None
        async with self.engine.begin() as connection:
            await connection.execute(keys.insert().values(hash=hash_key(secret), **row))
        return secret, info

    async def find_key(self, secret: str) -> KeyInfo | None:
        """The key with this secret, or whose previous secret it is (rotated, in its
        grace period)."""
        digest = hash_key(secret)
        previous = (keys.c.previous_hash == digest) & (keys.c.previous_until > self.clock.time())
        return await self._one((keys.c.hash == digest) | previous)

    async def get_key(self, key_id: str) -> KeyInfo | None:
        return await self._one(keys.c.id == key_id)

    async def list_keys(self) -> list[KeyInfo]:
        async with self.engine.connect() as connection:
            result = await connection.execute(keys.select().order_by(keys.c.created_at))
            return [_key(row._mapping) for row in result]

    async def any_key(self) -> bool:
        """Whether any key was ever created (revoked ones too)."""
        async with self.engine.connect() as connection:
            return (await connection.execute(sa.select(keys.c.id).limit(1))).first() is not None

    async def update_key(self, key_id: str, values: dict[str, Any]) -> KeyInfo | None:
        """Change a key's settings (``KeyInfo`` fields: name, models, limits, budgets,
        expires_at); None when there is no such key."""
        row = dict(values)
        if "models" in row:
            row["models"] = (
                orjson.dumps(row["models"]).decode() if row["models"] is not None else None
            )
        async with self.engine.begin() as connection:
            result = await connection.execute(
                keys.update().where(keys.c.id == key_id).values(**row)
            )
            if not result.rowcount:
                return None
        return await self.get_key(key_id)

    async def rotate_key(self, key_id: str, grace: float = 0) -> tuple[str, KeyInfo] | None:
        """A new secret for a key that is not revoked (its settings, totals and records
        stay); the old secret keeps working ``grace`` seconds more, then stops. None
        when there is no such key."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        old = {"previous_hash": keys.c.hash, "previous_until": self.clock.time() + grace}
        async with self.engine.begin() as connection:
            result = await connection.execute(
                keys.update()
                .where(keys.c.id == key_id, keys.c.revoked_at.is_(None))
                .values(
                    hash=hash_key(secret),
                    prefix=secret[:10],
                    **(old if grace > 0 else {"previous_hash": None, "previous_until": None}),
                )
            )
            if not result.rowcount:
                return None
        key = await self.get_key(key_id)
        return (secret, key) if key is not None else None

    async def revoke_key(self, key_id: str) -> bool:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                keys.update()
                .where(keys.c.id == key_id, keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return bool(result.rowcount)

    async def _one(self, condition: sa.ColumnElement[bool]) -> KeyInfo | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(keys.select().where(condition))).first()
        return _key(row._mapping) if row is not None else None


_USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))
# A record as a plain tuple: what the driver takes, and what the garbage collector
# stops tracking (records wait in a queue; thousands of tracked objects cost GC time).
record_row = attrgetter(*_USAGE_FIELDS)
KEY_ID, INPUT_TOKENS, OUTPUT_TOKENS, COST, USER_ID, TEAM_ID = map(
    _USAGE_FIELDS.index,
    ("key_id", "input_tokens", "output_tokens", "cost", "user_id", "team_id"),
)


class Spent(NamedTuple):
    """What one key spent in a batch, and its running totals after it (those of the
    period that began at ``period_start``)."""

    tokens: int
    total_tokens: int
    cost: float = 0.0
    total_cost: float = 0.0
    period_start: float = 0.0


def spent_by_key(rows: list[tuple[Any, ...]]) -> dict[str, tuple[int, float]]:
    """(tokens, cost) per managed key, and per user and team of theirs
    (``server.api_keys`` keys, ``config:…``, have no limits)."""
    used: dict[str, tuple[int, float]] = {}
    for row in rows:
        key_id = row[KEY_ID]
        if key_id is None or key_id.startswith("config:"):
            continue
        spent = row[INPUT_TOKENS] + row[OUTPUT_TOKENS]
        cost = row[COST] or 0.0
        for holder in (key_id, row[USER_ID], row[TEAM_ID]):
            if holder is not None:
                tokens, money = used.get(holder, (0, 0.0))
                used[holder] = (tokens + spent, money + cost)
    return used


def _table_of(holder_id: str) -> sa.Table:
    """Users' ids start ``u-``, teams' ``t-``; keys' are plain hex."""
    return {"u-": users, "t-": teams}.get(holder_id[:2], keys)


@functools.cache
def _insert_usage(paramstyle: str) -> str:
    marks = {
        "qmark": ["?"] * len(_USAGE_FIELDS),
        "numeric_dollar": [f"${n}" for n in range(1, len(_USAGE_FIELDS) + 1)],
        "format": ["%s"] * len(_USAGE_FIELDS),
    }[paramstyle]
    return f"INSERT INTO lmgate_usage ({', '.join(_USAGE_FIELDS)}) VALUES ({', '.join(marks)})"


def _private_file(url: str) -> None:
    """Make a new SQLite database readable by its owner only: it holds stored
    conversations and the request log. (SQLite gives its WAL and shared-memory files
    the database file's mode.)"""
    path = url.partition(":///")[2].partition("?")[0]
    if not path or path == ":memory:" or os.path.exists(path):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):  # another process made it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _adapt_sqlite_parameters() -> None:
    """Let the sqlite3 driver bind None and bool straight away. For any value not of
    an exact int/float/str type it looks for an adapter, and failing that tries two
    attributes whose absence raises (and formats) an AttributeError: four times per
    usage row, a third of the driver's work for it. Registered adapters are found at
    once; both are C functions, so no Python frame runs per value. Binding is
    unchanged: NULL, and 0 or 1 as before."""
    sqlite3.register_adapter(type(None), _EMPTY.get)  # None for None, in C
    sqlite3.register_adapter(bool, int)


_EMPTY: dict[None, None] = {}


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Let a migration take the write lock up front (``BEGIN IMMEDIATE``), so that
    processes starting together queue up, and keep every other transaction to the
    driver: it begins one before the first write, in the same call to its thread.

    Each call into aiosqlite is a round trip to its thread: this leaves four per
    usage batch (cursor, executemany, cursor close, commit), where a ``BEGIN`` of
    our own and the pool's rollback after the commit made eight."""

    @sa.event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        # WAL's usual setting: a commit does not wait for the disk (a power cut may lose
        # the last batches, a crash of lmgate does not). FULL cost ~80us per request.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def begin(connection: Connection) -> None:
        if connection.get_execution_options().get("sqlite_immediate"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # DDL and all, in one transaction

    @sa.event.listens_for(engine.sync_engine, "reset")
    def reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        # Instead of the pool's own reset (``pool_reset_on_return=None``), which rolls
        # back even after a commit: only a transaction still open.
        if state.asyncio_safe and dbapi_connection.driver_connection.in_transaction:
            dbapi_connection.rollback()


def _owned_by(key_id: str | None) -> sa.ColumnElement[bool]:
    column = responses.c.key_id
    return column.is_(None) if key_id is None else column == key_id


def _key(row: Any) -> KeyInfo:
    values = {name: row[name] for name in KeyInfo.__slots__}
    values["models"] = orjson.loads(row["models"]) if row["models"] else None
    return KeyInfo(**values)
