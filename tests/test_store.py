"""The store on both engines: the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lmgate.accounts.schema import MIGRATIONS, keys
from lmgate.accounts.store import Store, UsageRecord, hash_key


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lmgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def record(number: int, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "at": time.time(),
        "request_id": f"r{number}",
        "protocol": "openai",
        "stream": False,
        "model": "m",
        "provider": "up",
        "deployment": "up/x",
        "input_tokens": 10,
        "output_tokens": 5,
        "latency_ms": float(number),
        **fields,
    }
    return UsageRecord(**values)


def test_migrations_are_idempotent_and_concurrent(store_url: str) -> None:
    async def scenario() -> list[int]:
        stores = [Store(store_url) for _ in range(3)]
        try:
            versions = await asyncio.gather(*(s.migrate() for s in stores))
            versions.append(await stores[0].migrate())  # again: nothing to do
            return list(versions)
        finally:
            for s in stores:
                await s.close()

    assert run(scenario()) == [MIGRATIONS[-1][0]] * 4


def test_keys_are_stored_as_hashes(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        secret, key = await store.create_key("team", ["m"], rpm=5, tpm=100, budget_tokens=1000)
        assert secret.startswith("lmg-") and len(secret) > 40
        assert (await store.find_key(secret)) == key
        assert await store.find_key(secret + "x") is None
        async with store.engine.connect() as connection:
            rows = [dict(r._mapping) for r in await connection.execute(keys.select())]
        assert rows[0]["hash"] == hash_key(secret)
        assert all(secret not in str(value) for value in rows[0].values())
        assert [k.id for k in await store.list_keys()] == [key.id]
        assert await store.revoke_key(key.id)
        assert not await store.revoke_key(key.id)  # already revoked
        revoked = await store.get_key(key.id)
        assert revoked is not None and revoked.revoked_at is not None
        await store.close()

    run(scenario())


def test_usage_batches_and_summary(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        _, key = await store.create_key("team")
        batch = [record(n, key_id=key.id) for n in range(1, 101)]
        batch += [record(200, model="other", provider="p2", status=502, error_type="upstream")]
        await store.record(batch)
        await store.record([record(300, key_id="config:0", at=time.time() - 7200)])
        rows = await store.usage_rows(time.time() - 60)
        assert len(rows) == 101 and rows[0]["request_id"] == "r1"
        by_model = {
            row["group"]: row for row in await store.usage_summary(time.time() - 60, "model")
        }
        assert by_model["m"]["requests"] == 100 and by_model["m"]["errors"] == 0
        assert by_model["m"]["input_tokens"] == 1000 and by_model["m"]["output_tokens"] == 500
        assert by_model["m"]["p50_ms"] == 50.5 and by_model["m"]["p95_ms"] == 96
        assert by_model["other"]["errors"] == 1
        assert by_model["m"]["unpriced"] == 100  # served, no price
        await store.record(
            [record(9, model="refused", status=429, input_tokens=0, output_tokens=0)]
        )
        summary = await store.usage_summary(0, "model")
        [refused] = [row for row in summary if row["group"] == "refused"]
        assert (refused["requests"], refused["unpriced"]) == (1, 0)  # nothing spent to price
        assert by_model["other"]["p50_ms"] == by_model["other"]["p95_ms"] == 200
        # Refusals (no deployment) count as requests, not in the latency percentiles.
        await store.record(
            [record(n, model="mixed", cached_tokens=8) for n in (100, 300)]
            + [record(1, model="mixed", deployment=None, status=429) for _ in range(5)]
        )
        [mixed] = [r for r in await store.usage_summary(0, "model") if r["group"] == "mixed"]
        assert (mixed["requests"], mixed["p50_ms"], mixed["p95_ms"]) == (7, 200, 300)
        assert (mixed["input_tokens"], mixed["cached_tokens"]) == (70, 16)  # the cache-hit ratio
        await store.record([record(n, model="odd") for n in (5, 1, 3)])
        [odd] = [row for row in await store.usage_summary(0, "model") if row["group"] == "odd"]
        assert (odd["requests"], odd["p50_ms"], odd["p95_ms"]) == (3, 3, 5)
        by_key = {row["group"] for row in await store.usage_summary(time.time() - 3 * 3600, "key")}
        assert by_key == {key.id, "config:0", "-"}
        assert {r["group"] for r in await store.usage_summary(0, "provider")} == {"up", "p2"}
        stored = await store.get_key(key.id)
        assert stored is not None and stored.used_tokens == 1500  # running total for budgets
        from lmgate.accounts.store import record_row

        one_more = [record_row(record(400, key_id=key.id)), record_row(record(401))]
        assert await store.record_rows(one_more) == {
            key.id: (15, 1515, 0.0, 0.0, 0.0)
        }  # batch's, total
        await store.close()

    run(scenario())


def test_schema_version_is_recorded(store_url: str) -> None:
    async def scenario() -> list[int]:
        store = Store(store_url)
        await store.migrate()
        async with store.engine.connect() as connection:
            result = await connection.execute(sa.text("SELECT version FROM lmgate_schema"))
            versions = [row[0] for row in result]
        await store.close()
        return versions

    assert run(scenario()) == [number for number, _ in MIGRATIONS]


def test_a_meter_builds_the_row_in_the_record_field_order() -> None:
    """The request path builds its row as a bare tuple; it must be the row the
    store's INSERT expects, field for field."""
    from lmgate.accounts.store import record_row
    from lmgate.accounts.usage import Meter
    from lmgate.canonical import ChatRequest, Message, Reply, TextPart, Usage

    class Queue:
        rows: list[tuple[Any, ...]] = []

        def submit(self, row: tuple[Any, ...]) -> None:
            self.rows.append(row)

    queue = Queue()
    meter = Meter(queue, "req-1", "anthropic")  # type: ignore[arg-type]
    chat = ChatRequest(model="auto", messages=[Message("user", [TextPart("hi")])], stream=True)
    meter.request(chat, "key-1")
    meter.reply = Reply(model="m", deployment="prov/m", usage=Usage(3, 4, cache_read_tokens=2))
    meter.finish(502, "upstream_error")
    meter.finish(200)  # the first call wins
    [row] = queue.rows
    latency = row[_FIELDS.index("latency_ms")]
    expected = UsageRecord(
        at=row[0], request_id="req-1", protocol="anthropic", stream=True, key_id="key-1",
        requested_model="auto", model="m", deployment="prov/m", provider="prov", status=502,
        error_type="upstream_error", input_tokens=3, output_tokens=4, cached_tokens=2,
        latency_ms=latency, ttft_ms=None,
    )  # fmt: skip
    assert row == record_row(expected)
    assert abs(row[0] - time.time()) < 5 and 0 <= latency < 5000


_FIELDS = list(UsageRecord.__slots__)


def test_new_sqlite_files_migrated_by_several_stores_at_once(tmp_path: Path) -> None:
    """The race on a new file's switch to WAL (SQLite answers "locked" at once there):
    without the retry, about one round in ten failed."""

    async def scenario(url: str) -> list[int]:
        stores = [Store(url) for _ in range(3)]
        try:
            return list(await asyncio.gather(*(s.migrate() for s in stores)))
        finally:
            for s in stores:
                await s.close()

    latest = MIGRATIONS[-1][0]
    for round_number in range(30):
        url = f"sqlite:///{tmp_path / f'round-{round_number}.db'}"
        assert run(scenario(url)) == [latest] * 3


def test_a_failed_batch_writes_none_of_its_records(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        broken = [record(1), record(2, request_id=None), record(3)]  # NOT NULL violated
        with pytest.raises(sa.exc.IntegrityError):
            await store.record(broken)
        assert await store.usage_rows(0) == []
        await store.record([record(4)])  # the connection is clean for the next batch
        assert [row["request_id"] for row in await store.usage_rows(0)] == ["r4"]
        if store_url.startswith("sqlite"):
            assert _write_lock_is_free(store_url)
        await store.close()

    run(scenario())


def test_a_sqlite_connection_returned_mid_transaction_is_rolled_back(tmp_path: Path) -> None:
    """The pool skips its rollback after a commit (a round trip to the driver's
    thread per usage batch), so it must still roll back a transaction left open."""
    url = f"sqlite:///{tmp_path / 'lmgate.db'}"

    async def scenario() -> bool:
        store = Store(url)
        await store.migrate()
        async with store.engine.connect() as connection:
            raw = connection.sync_connection.connection  # checked out already
            # Behind SQLAlchemy's back, so that its own rollback does not run.
            await raw.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
        free = _write_lock_is_free(url)
        await store.close()
        return free

    assert run(scenario())


def _write_lock_is_free(url: str) -> bool:
    other = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.1, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # database is locked
        return False
    finally:
        other.close()


def test_the_writer_drops_only_the_records_the_store_refuses(store_url: str) -> None:
    """A batch that fails is split until the refused records are found; those are
    dropped, counted and logged, the others are written, and writing goes on."""
    from lmgate.accounts.store import record_row
    from lmgate.accounts.usage import UsageRecorder

    async def scenario() -> tuple[list[str], UsageRecorder]:
        store = Store(store_url)
        await store.migrate()
        recorder = UsageRecorder(store, batch_size=100, flush_interval=0.01)
        await recorder.start()
        for number in range(20):
            if number in (5, 13):  # both engines refuse a count beyond 64 bits
                recorder.submit(record_row(record(number, input_tokens=2**64)))
            else:
                recorder.submit(record_row(record(number)))
        while recorder.written + recorder.bad < 20:  # noqa: ASYNC110 (polls counters)
            await asyncio.sleep(0.01)
        recorder.submit(record_row(record(20)))  # the writer goes on
        await recorder.stop()
        written = sorted(row["request_id"] for row in await store.usage_rows(0))
        await store.close()
        return written, recorder

    written, recorder = run(scenario())
    assert written == sorted(f"r{n}" for n in range(21) if n not in (5, 13))
    assert (recorder.bad, recorder.written) == (2, 19)


def test_a_new_sqlite_store_is_for_its_owner_only(tmp_path: Path) -> None:
    """It holds stored conversations and the request log: 0600, in a 0700 directory
    when lmgate makes it, its WAL and shared-memory files alike."""
    directory = tmp_path / "made-by-lmgate"
    url = f"sqlite:///{directory / 'lmgate.db'}"

    async def scenario() -> None:
        store = Store(url)
        try:
            await store.migrate()
            await store.purge_responses()  # a write: the WAL and shared-memory files exist
        finally:
            await store.close()

    run(scenario())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert {f.name for f in files} >= {"lmgate.db"}
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name


def test_a_v4_request_log_moves_to_one_entry_per_request(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 5 keeps what the keyed-by-id log held."""
    import lmgate.accounts.schema as schema_module

    async def scenario() -> list[tuple[Any, ...]]:
        monkeypatch.setattr(schema_module, "MIGRATIONS", MIGRATIONS[:4])
        store = Store(store_url)
        try:
            assert await store.migrate() == 4
            async with store.engine.begin() as connection:
                await connection.execute(
                    sa.text(
                        "INSERT INTO lmgate_request_log (request_id, at, key_id, request, reply)"
                        " VALUES ('r1', 1.5, 'k', :body, '{}')"
                    ),
                    {"body": '{"a":1}'},
                )
            monkeypatch.setattr(schema_module, "MIGRATIONS", MIGRATIONS)
            assert await store.migrate() == MIGRATIONS[-1][0]
            async with store.engine.connect() as connection:
                rows = await connection.execute(
                    sa.text("SELECT request_id, at, key_id, request FROM lmgate_requests")
                )
                return [tuple(row) for row in rows]
        finally:
            await store.close()

    assert run(scenario()) == [("r1", 1.5, "k", '{"a":1}')]


def test_latency_figures_are_those_of_served_requests(store_url: str) -> None:
    """Refusals (no deployment tried) take a millisecond: they count as requests and
    errors, never in the latency percentiles."""
    from lmgate.accounts import reports

    async def scenario() -> dict[str, Any]:
        store = Store(store_url)
        try:
            await store.migrate()
            served = [record(n, latency_ms=200.0 + n) for n in range(3)]
            refused = [
                record(100 + n, deployment=None, status=429, latency_ms=0.5) for n in range(10)
            ]
            await store.record(served + refused)
            return dict((await reports.series(store, time.time() - 60))["overall"])
        finally:
            await store.close()

    overall = run(scenario())
    assert overall["requests"] == 13 and overall["errors"] == 10
    assert overall["p50_ms"] == 201 and overall["p95_ms"] == 202
