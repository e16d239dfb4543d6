"""The store's tables, and the numbered migrations that create and upgrade them:
append only, each building its own snapshot of the tables it changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def _tables_v1(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    key_table = sa.Table(
        "lmgate_keys",
        metadata,
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("models", sa.Text),  # JSON list of allowed model ids; null: every model
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_tokens", sa.BigInteger),
        sa.Column("used_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
    )
    usage_table = sa.Table(
        "lmgate_usage",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),  # unix time the request arrived
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("protocol", sa.String(16), nullable=False),  # openai | anthropic
        sa.Column("requested_model", sa.String(200)),
        sa.Column("model", sa.String(200)),  # the model that answered
        sa.Column("deployment", sa.String(400)),
        sa.Column("provider", sa.String(200)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(64)),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Index("lmgate_usage_at", "at"),
        sa.Index("lmgate_usage_key_at", "key_id", "at"),
    )
    return key_table, usage_table


def _migration_1(connection: Connection) -> None:
    # Each migration builds its own snapshot of the tables, so that later changes to
    # the live definitions below never change what an old migration does.
    snapshot = sa.MetaData()
    _tables_v1(snapshot)
    snapshot.create_all(connection)


def _migration_2(connection: Connection) -> None:
    # Measured: on SQLite the (key_id, at) index doubled the cost of writing a usage
    # record, and no query needs it (usage queries select a time range, budgets read
    # the keys table).
    connection.execute(sa.text("DROP INDEX IF EXISTS lmgate_usage_key_at"))


def _responses_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "lmgate_responses",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64)),  # the key that made it; only it may read it
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        # JSON: the conversation's input items (earlier turns included), and the response
        # object (its output: what a follow-up continues from).
        sa.Column("input_items", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Index("lmgate_responses_expires", "expires_at"),
    )


def _migration_3(connection: Connection) -> None:
    snapshot = sa.MetaData()
    _responses_table(snapshot).create(connection)


# Added by migration 4: cost and timing per record, money budgets per key.
def _usage_columns_v4() -> list[sa.Column[Any]]:
    return [
        sa.Column("cache_write_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost", sa.Float),  # USD; null: the deployment has no price
        sa.Column("upstream_ms", sa.Float),  # the answering upstream's time to first byte
        sa.Column("overhead_ms", sa.Float),  # the request's time minus the upstream's
        sa.Column("error_message", sa.String(500)),
    ]


def _key_columns_v4() -> list[sa.Column[Any]]:
    return [
        sa.Column("budget_usd", sa.Float),
        sa.Column("used_usd", sa.Float, nullable=False, server_default="0"),
    ]


def _request_log_table_v4(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "lmgate_request_log",
        metadata,
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("request", sa.Text, nullable=False),  # the body as sent, redacted
        sa.Column("reply", sa.Text, nullable=False),  # the reply, or its folded stream
        sa.Index("lmgate_request_log_at", "at"),
    )


def _add_columns(connection: Connection, table: str, columns: list[sa.Column[Any]]) -> None:
    for column in columns:
        kind = column.type.compile(connection.dialect)
        default = f" DEFAULT {column.server_default.arg}" if column.server_default else ""  # type: ignore[attr-defined]
        null = "" if column.nullable else " NOT NULL"
        connection.exec_driver_sql(
            f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}{null}{default}"
        )


def _migration_4(connection: Connection) -> None:
    _add_columns(connection, "lmgate_usage", _usage_columns_v4())
    _add_columns(connection, "lmgate_keys", _key_columns_v4())
    _request_log_table_v4(sa.MetaData()).create(connection)


def _request_log_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "lmgate_requests",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        # The client may choose it, and send it twice: an entry per request all the same.
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False),  # when it arrived: its usage record's
        sa.Column("key_id", sa.String(64)),
        sa.Column("request", sa.Text, nullable=False),  # the body as sent, redacted
        sa.Column("reply", sa.Text, nullable=False),  # the reply, or its folded stream
        sa.Index("lmgate_requests_request_id", "request_id"),
        sa.Index("lmgate_requests_at", "at"),
    )


def _migration_5(connection: Connection) -> None:
    # The log was keyed by request id, and a client reusing one kept its own body out.
    _request_log_table(sa.MetaData()).create(connection)
    connection.exec_driver_sql(
        "INSERT INTO lmgate_requests (request_id, at, key_id, request, reply) "
        "SELECT request_id, at, key_id, request, reply FROM lmgate_request_log"
    )
    connection.exec_driver_sql("DROP TABLE lmgate_request_log")


# Added by migration 6: budgets that reset (total, daily, weekly, monthly). The running
# totals (used_tokens, used_usd) are those of the period that began at period_start.
def _key_columns_v6() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "budget_period", sa.String(16), nullable=False, server_default=sa.text("'total'")
        ),
        sa.Column("budget_reset_day", sa.Integer),
        sa.Column("period_start", sa.Float, nullable=False, server_default="0"),
    ]


def _migration_6(connection: Connection) -> None:
    _add_columns(connection, "lmgate_keys", _key_columns_v6())


# Added by migration 7: the agent session of each record, for usage by session.
def _usage_columns_v7() -> list[sa.Column[Any]]:
    return [sa.Column("session", sa.String(256))]


def _migration_7(connection: Connection) -> None:
    _add_columns(connection, "lmgate_usage", _usage_columns_v7())


# Added by migration 8: people and teams, with limits and budgets as keys have them;
# keys and records name theirs.
def _account_table(metadata: sa.MetaData, name: str, *columns: Any) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        *columns,
        sa.Column("models", sa.Text),  # JSON list of allowed model ids; null: every model
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_tokens", sa.BigInteger),
        sa.Column("budget_usd", sa.Float),
        sa.Column(
            "budget_period", sa.String(16), nullable=False, server_default=sa.text("'total'")
        ),
        sa.Column("budget_reset_day", sa.Integer),
        sa.Column("used_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("period_start", sa.Float, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def _teams_table(metadata: sa.MetaData) -> sa.Table:
    return _account_table(metadata, "lmgate_teams", sa.UniqueConstraint("name"))


def _users_table(metadata: sa.MetaData) -> sa.Table:
    return _account_table(
        metadata,
        "lmgate_users",
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("team_id", sa.String(16)),
        sa.Column("role", sa.String(16), nullable=False, server_default=sa.text("'member'")),
    )


def _owner_columns_v8() -> list[sa.Column[Any]]:
    return [sa.Column("user_id", sa.String(16)), sa.Column("team_id", sa.String(16))]


def _migration_8(connection: Connection) -> None:
    snapshot = sa.MetaData()
    _teams_table(snapshot).create(connection)
    _users_table(snapshot).create(connection)
    _add_columns(connection, "lmgate_keys", _owner_columns_v8())
    _add_columns(connection, "lmgate_usage", _owner_columns_v8())


# Added by migration 9: who changed what through the admin API, and when.
def _audit_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "lmgate_audit",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),  # "admin key", or a user's email
        sa.Column("action", sa.String(64), nullable=False),  # key.create, team.update, …
        sa.Column("target", sa.String(64)),  # the id changed
        sa.Column("before", sa.Text),  # JSON, never a secret
        sa.Column("after", sa.Text),
        sa.Index("lmgate_audit_at", "at"),
    )


def _migration_9(connection: Connection) -> None:
    _audit_table(sa.MetaData()).create(connection)


# Added by migration 10: a rotated key's old secret, working until its grace ends.
def _key_columns_v10() -> list[sa.Column[Any]]:
    return [sa.Column("previous_hash", sa.String(64)), sa.Column("previous_until", sa.Float)]


def _migration_10(connection: Connection) -> None:
    _add_columns(connection, "lmgate_keys", _key_columns_v10())
    connection.exec_driver_sql(
        "CREATE INDEX lmgate_keys_previous_hash ON lmgate_keys (previous_hash)"
    )


# Added by migration 11: dashboard sessions (signed in with OpenID Connect) and sign-ins
# under way; each by the SHA-256 of its secret (a stolen database opens none).
def _sessions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "lmgate_sessions",
        metadata,
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),  # session | login
        sa.Column("user_id", sa.String(16)),  # a session's user
        sa.Column("data", sa.Text),  # JSON: a login's nonce, PKCE verifier, page to return to
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Index("lmgate_sessions_expires_at", "expires_at"),
    )


def _migration_11(connection: Connection) -> None:
    _sessions_table(sa.MetaData()).create(connection)


# The live schema, used by queries: the result of every migration.
metadata = sa.MetaData()
schema_version = sa.Table(
    "lmgate_schema", metadata, sa.Column("version", sa.Integer, primary_key=True)
)
keys, usage = _tables_v1(metadata)
usage.indexes = {index for index in usage.indexes if index.name != "lmgate_usage_key_at"}
for _column in [*_usage_columns_v4(), *_usage_columns_v7(), *_owner_columns_v8()]:
    usage.append_column(_column)
for _column in [*_key_columns_v4(), *_key_columns_v6(), *_owner_columns_v8(), *_key_columns_v10()]:
    keys.append_column(_column)
teams = _teams_table(metadata)
users = _users_table(metadata)
audit = _audit_table(metadata)
sessions = _sessions_table(metadata)
responses = _responses_table(metadata)
request_log = _request_log_table(metadata)

# Append only: a released migration never changes; a new one gets the next number.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
    (6, _migration_6),
    (7, _migration_7),
    (8, _migration_8),
    (9, _migration_9),
    (10, _migration_10),
    (11, _migration_11),
]


def migrate(connection: Connection) -> int:
    """Run the migrations not run yet; returns the schema's version."""
    schema_version.create(connection, checkfirst=True)
    current = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
    for number, migration in MIGRATIONS:
        if number > current:
            migration(connection)
            connection.execute(schema_version.insert().values(version=number))
            current = number
    return current
