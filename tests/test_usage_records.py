"""No usage record lost: 500 concurrent requests, some abandoned by their clients
mid-stream, some failed by the upstream; after a graceful stop the store holds
exactly one record per request, with the status the client got."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.accounts import HI, accounts_config, admin, records, wait_for_records
from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import API_KEY, RunningGateway, upstream_config

REQUESTS = 500
# case -> (stream, upstream answer, client leaves early, status recorded, error type recorded)
CASES: dict[str, tuple[bool, Script, bool, int, str | None]] = {
    "ok": (False, Script(json=completion()), False, 200, None),
    "ok-stream": (True, Script(chunks=text_stream(["a", "b"])), False, 200, None),
    "upstream-500": (False, Script(status=500, json={"error": {"message": "x"}}), False, 502, "upstream"),
    "upstream-429": (True, Script(status=429, json={"error": {"message": "x"}}), False, 429, "rate_limit"),
    "upstream-breaks": (True, Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2), False, 200, "upstream"),
    "client-leaves": (True, Script(chunks=text_stream(list("abcdefghij")), chunk_delay=0.05), True, 499, "client_disconnected"),
}  # fmt: skip


async def one(session: aiohttp.ClientSession, url: str, number: int, case: str) -> None:
    stream, _, leaves, _, _ = CASES[case]
    body = {
        "model": "chat-model",
        "stream": stream,
        "messages": [{"role": "user", "content": case}],
    }
    headers = {"Authorization": f"Bearer {API_KEY}", "x-request-id": f"req-{number}"}
    async with session.post(url, json=body, headers=headers) as response:
        if leaves:
            await response.content.readany()  # the first bytes, then hang up
            response.close()
            return
        await response.read()


async def run_all(gw: RunningGateway, plan: list[str]) -> None:
    connector = aiohttp.TCPConnector(limit=REQUESTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = gw.url + "/v1/chat/completions"
        await asyncio.gather(*(one(session, url, n, case) for n, case in enumerate(plan)))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_no_record_lost(
    start_gateway: Any,
    upstream: FakeUpstream,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    engine: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'u.db'}"
        if engine == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    config = upstream_config(upstream)
    # A long flush interval: most records are still queued when the gateway stops.
    config["store"] = {"url": url, "flush_interval": 30, "batch_size": 10_000}
    upstream.route = lambda request: CASES[request.body["messages"][0]["content"]][1]
    gw = start_gateway(config)
    plan = random.Random(5).choices(list(CASES), k=REQUESTS)
    asyncio.run(run_all(gw, plan))
    gw.stop()  # graceful: the recorder writes what is queued
    rows = {row["request_id"]: row for row in records(url)}
    assert len(rows) == REQUESTS
    for number, case in enumerate(plan):
        row = rows[f"req-{number}"]
        expected = CASES[case][3:]
        assert (row["status"], row["error_type"]) == expected, (case, row)


def test_usage_by_session_adds_up_to_the_total(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    """Each record carries its agent session (Claude Code's header, Codex's session_id,
    else the request's user); usage by session sums to the total."""
    gw = start_gateway(accounts_config(upstream, sqlite_url))
    ask = {"model": "echo", "messages": HI}
    for headers in ({"X-Claude-Code-Session-Id": "cc-1"}, {"X-Claude-Code-Session-Id": "cc-1"},
                    {"session_id": "codex-7"}, {}):  # fmt: skip
        assert gw.request("POST", "/v1/chat/completions", ask, headers).status == 200
    gw.request("POST", "/v1/chat/completions", {**ask, "user": "dev@example.com"})
    rows = wait_for_records(sqlite_url, 5)
    assert [row["session"] for row in rows] == ["cc-1", "cc-1", "codex-7", None, "dev@example.com"]
    status, by_session = admin(gw, "GET", "/admin/usage?by=session&since=1h")
    assert status == 200, by_session
    groups = {row["group"]: row["requests"] for row in by_session["data"]}
    assert groups == {"cc-1": 2, "codex-7": 1, "-": 1, "dev@example.com": 1}
    status, by_model = admin(gw, "GET", "/admin/usage?by=model&since=1h")
    total = sum(row["input_tokens"] for row in by_model["data"])
    assert sum(row["input_tokens"] for row in by_session["data"]) == total
