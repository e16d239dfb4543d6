"""What the dashboard and the admin API read from the usage records: figures over
time and the recent requests, computed by the database (a range may hold millions
of records, and only the answer crosses over)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from lmgate.accounts.schema import request_log, usage
from lmgate.accounts.store import Store

BUCKETS = 60  # points in a series, whatever its range
_EMPTY = {  # the figures of a time with no request
    "requests": 0,
    "errors": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cost": 0,
    "p50_ms": None,
    "p95_ms": None,
    "ttft_p50_ms": None,
}


async def series(store: Store, since: float) -> dict[str, Any]:
    """Per time bucket from ``since`` to now: requests, errors, tokens, cost, p50 and
    p95 latency, median time to first token (of streams); and the same percentiles
    over the whole range."""
    now = time.time()
    step = max(1.0, (now - since) / BUCKETS)
    bucket = sa.cast(sa.func.floor((usage.c.at - since) / step), sa.Integer).label("bucket")
    async with store.engine.connect() as connection:
        found = {
            row.bucket: _plain(row) for row in await connection.execute(_figures(since, bucket))
        }
        whole = (await connection.execute(_figures(since, sa.literal(0)))).first()
    points = []
    for index in range(BUCKETS):
        point = found.get(index) or dict(_EMPTY)
        point.pop("bucket", None)
        points.append({"at": since + index * step, **point})
    overall = _plain(whole) if whole is not None else dict(_EMPTY)
    overall.pop("bucket", None)
    return {"since": since, "step": step, "points": points, "overall": overall}


def _figures(since: float, bucket: Any) -> Any:
    """The query of ``series``' figures, per ``bucket`` (a constant: one group).
    Latency is that of served requests: a refusal (no deployment tried: a bad request,
    a limit) takes a millisecond and would hide what the served ones took."""
    has_ttft = sa.case((usage.c.ttft_ms.is_(None), 0), else_=1)
    served = sa.case((usage.c.deployment.is_(None), 0), else_=1)
    ranked = (
        sa.select(
            bucket.label("bucket"),
            usage.c.status,
            usage.c.input_tokens,
            usage.c.output_tokens,
            usage.c.cost,
            usage.c.latency_ms,
            usage.c.ttft_ms,
            served.label("served"),
            sa.func.row_number()
            .over(partition_by=(bucket, served), order_by=usage.c.latency_ms)
            .label("rank"),
            sa.func.count().over(partition_by=(bucket, served)).label("n"),
            sa.func.row_number()
            .over(partition_by=(bucket, has_ttft), order_by=usage.c.ttft_ms)
            .label("ttft_rank"),
            sa.func.count().over(partition_by=(bucket, has_ttft)).label("ttft_n"),
        )
        .where(usage.c.at >= since)
        .subquery()
    )
    r = ranked.c
    return sa.select(
        r.bucket,
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((r.status >= 400, 1), else_=0)).label("errors"),
        sa.func.sum(r.input_tokens).label("input_tokens"),
        sa.func.sum(r.output_tokens).label("output_tokens"),
        sa.func.coalesce(sa.func.sum(r.cost), 0).label("cost"),
        sa.func.max(sa.case((r.served == 1, _percentile(r.rank, r.n, r.latency_ms, 50)))).label(
            "p50_ms"
        ),
        sa.func.max(sa.case((r.served == 1, _percentile(r.rank, r.n, r.latency_ms, 95)))).label(
            "p95_ms"
        ),
        sa.func.max(
            sa.case((r.ttft_ms.is_not(None), _percentile(r.ttft_rank, r.ttft_n, r.ttft_ms, 50)))
        ).label("ttft_p50_ms"),
    ).group_by(r.bucket)


def _percentile(rank: Any, n: Any, value: Any, percent: int) -> Any:
    """``value`` at the row whose rank is the nearest-rank percentile: ceil(p n / 100)."""
    return sa.case((sa.and_(100 * rank >= percent * n, 100 * (rank - 1) < percent * n), value))


async def recent_requests(
    store: Store,
    limit: int,
    key: str | None = None,
    model: str | None = None,
    status: str | None = None,
    before: int | None = None,
    text: str | None = None,
) -> list[dict[str, Any]]:
    """The latest records, newest first; ``status``: ``ok``, ``error`` or a status
    code; ``before``: a record id, for the next page; ``text``: found (any case) in the
    request id, a model, the deployment or the error. Each says if it was logged."""
    logged = sa.exists().where(
        request_log.c.request_id == usage.c.request_id, request_log.c.at == usage.c.at
    )
    query = sa.select(usage, logged.label("logged")).order_by(usage.c.id.desc()).limit(limit)
    if key:
        query = query.where(usage.c.key_id == key)
    if model:
        query = query.where(sa.or_(usage.c.model == model, usage.c.requested_model == model))
    if status == "ok":
        query = query.where(usage.c.status < 400)
    elif status == "error":
        query = query.where(usage.c.status >= 400)
    elif status:
        query = query.where(usage.c.status == int(status))
    if before is not None:
        query = query.where(usage.c.id < before)
    if text:
        pattern = (
            "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        columns = (
            usage.c.request_id,
            usage.c.model,
            usage.c.requested_model,
            usage.c.deployment,
            usage.c.error_message,
        )
        query = query.where(
            sa.or_(*(sa.func.lower(column).like(pattern, escape="\\") for column in columns))
        )
    async with store.engine.connect() as connection:
        return [_plain(row) for row in await connection.execute(query)]


async def request_detail(store: Store, request_id: str) -> dict[str, Any] | None:
    """The records of a request id (a client may send one id with several requests),
    each with its own logged bodies, if any (``log``: the last record's)."""
    async with store.engine.connect() as connection:
        records = [
            _plain(row)
            for row in await connection.execute(
                sa.select(usage).where(usage.c.request_id == request_id).order_by(usage.c.id)
            )
        ]
        logs = {
            row.at: {"request": row.request, "reply": row.reply}
            for row in await connection.execute(
                sa.select(request_log.c.at, request_log.c.request, request_log.c.reply).where(
                    request_log.c.request_id == request_id
                )
            )
        }
    if not records and not logs:
        return None
    for record in records:
        record["log"] = logs.get(record["at"])
    return {
        "request_id": request_id,
        "records": records,
        "log": records[-1]["log"] if records else next(iter(logs.values())),
    }


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (SQLAlchemy's names are a subclass,
    which orjson refuses)."""
    return {str(name): value for name, value in row._mapping.items()}
