"""Keys, limits and usage records through the running gateway: the admin API,
managed keys with both SDKs, per-key limits in process and in a real Redis, the
circuit breaker shared through Redis, and a record for every request."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from lmgate.accounts.keys import config_key_id
from lmgate.accounts.store import Store
from tests.support.accounts import (
    ADMIN,
    HI,
    accounts_config,
    admin,
    new_key,
    records,
    stored_key,
    wait_for_records,
)
from tests.support.clock import FakeClock
from tests.support.fakes.upstream import FakeUpstream, Script, completion
from tests.support.gateway import API_KEY, RunningGateway, upstream_config, wait_until


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, sqlite_url: str) -> RunningGateway:
    return start_gateway(accounts_config(upstream, sqlite_url))  # type: ignore[no-any-return]


# ---- admin API -----------------------------------------------------------------------


def test_admin_key_lifecycle(gw: RunningGateway) -> None:
    status, created = admin(
        gw, "POST", "/admin/keys", {"name": "team", "models": ["chat-model"], "rpm": 5}
    )
    assert status == 201 and created["key"].startswith("lmg-")
    assert created["models"] == ["chat-model"] and created["rpm"] == 5
    status, listed = admin(gw, "GET", "/admin/keys")
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert created["key"] not in orjson.dumps(listed).decode()  # never shown again
    assert admin(gw, "GET", f"/admin/keys/{created['id']}")[1]["name"] == "team"
    assert admin(gw, "DELETE", f"/admin/keys/{created['id']}") == (
        200,
        {"id": created["id"], "revoked": True},
    )
    assert admin(gw, "DELETE", f"/admin/keys/{created['id']}")[0] == 404


def test_a_key_is_edited_and_rotated_and_its_models_are_checked(gw: RunningGateway) -> None:
    status, created = admin(gw, "POST", "/admin/keys", {"name": "team", "models": ["chat-mode"]})
    assert status == 400 and "did you mean 'chat-model'" in created["error"]["message"]
    status, created = admin(gw, "POST", "/admin/keys", {"name": "team", "models": ["echo"]})
    assert status == 201
    key_id, old_secret = created["id"], created["key"]
    with pytest.raises(openai.PermissionDeniedError):
        gw.client(old_secret).chat.completions.create(model="chat-model", messages=HI)
    edit = {"models": None, "rpm": 1, "budget_usd": 3, "name": "team-renamed"}
    status, edited = admin(gw, "PATCH", f"/admin/keys/{key_id}", edit)
    assert status == 200, edited
    assert (edited["models"], edited["rpm"], edited["budget_usd"], edited["name"]) == (
        None, 1, 3.0, "team-renamed",
    )  # fmt: skip
    client = gw.client(old_secret)
    assert client.chat.completions.create(model="chat-model", messages=HI).choices  # any model
    with pytest.raises(openai.RateLimitError):  # the new rpm holds at once
        client.chat.completions.create(model="chat-model", messages=HI)
    assert admin(gw, "PATCH", f"/admin/keys/{key_id}", {"rpm": None})[1]["rpm"] is None
    assert admin(gw, "PATCH", f"/admin/keys/{key_id}", {"rpm": 0})[0] == 400
    assert admin(gw, "PATCH", f"/admin/keys/{key_id}", {"colour": "red"})[0] == 400
    assert admin(gw, "PATCH", "/admin/keys/nope", {"rpm": 3})[0] == 404
    status, rotated = admin(gw, "POST", f"/admin/keys/{key_id}/rotate")
    assert status == 200 and rotated["id"] == key_id and rotated["key"] != old_secret
    with pytest.raises(openai.AuthenticationError):
        gw.client(old_secret).models.list()
    assert gw.client(rotated["key"]).chat.completions.create(model="echo", messages=HI).choices
    admin(gw, "DELETE", f"/admin/keys/{key_id}")
    assert admin(gw, "POST", f"/admin/keys/{key_id}/rotate")[0] == 404  # revoked: no rotation


def test_recent_requests_search_and_status_filter(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(status=429, json={"error": {"message": "slow down, Tokyo"}}))
    client = gw.client()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat-model", messages=HI)
    client.chat.completions.create(model="echo", messages=HI)
    wait_until(lambda: len(admin(gw, "GET", "/admin/requests")[1]["data"]) == 2)
    [limited] = admin(gw, "GET", "/admin/requests?status=429")[1]["data"]
    assert limited["model"] == "chat-model"
    [found] = admin(gw, "GET", "/admin/requests?q=TOKYO")[1]["data"]
    assert found["id"] == limited["id"]
    assert admin(gw, "GET", "/admin/requests?q=50%25_")[1]["data"] == []  # wildcards are text
    [echoed] = admin(gw, "GET", "/admin/requests?q=echo")[1]["data"]
    assert echoed["status"] == 200


def test_an_open_gateway_closes_when_its_first_key_is_created(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    """No ``server.api_keys`` and no managed key: anyone may call. The first managed
    key closes the gateway, and it stays closed once that key is revoked."""
    config = accounts_config(upstream, sqlite_url)
    config["server"]["api_keys"] = []
    gw = start_gateway(config)
    body = {"model": "chat-model", "messages": HI}

    def keyless() -> Any:
        return gw.request("POST", "/v1/chat/completions", body, api_key=None)

    assert keyless().status == 200
    new_key(gw)
    refused = keyless()
    assert refused.status == 401 and b"missing API key" in refused.body
    key_id = admin(gw, "GET", "/admin/keys")[1]["data"][0]["id"]
    admin(gw, "DELETE", f"/admin/keys/{key_id}")
    assert keyless().status == 401


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "JSON object"),
        ({}, "name: a non-empty string"),
        ({"name": "x", "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x", "rpm": 0}, "rpm: expected a positive integer"),
        ({"name": "x", "tpm": "many"}, "tpm: expected a positive integer"),
        ({"name": "x", "models": "chat-model"}, "models: expected a list"),
        ({"name": "x", "expires": "soon"}, "'soon' is not an ISO date"),
        ({"name": "x", "expires": "2001-01-01"}, "is in the past"),
    ],
)
def test_malformed_admin_requests(gw: RunningGateway, body: Any, words: str) -> None:
    status, error = admin(gw, "POST", "/admin/keys", body)
    assert status == 400 and words in error["error"]["message"]


def test_admin_api_is_for_the_admin_key_only(gw: RunningGateway, start_gateway: Any) -> None:
    client_key = new_key(gw)
    assert admin(gw, "GET", "/admin/keys", key=API_KEY)[0] == 403
    assert admin(gw, "GET", "/admin/keys", key=client_key)[0] == 403
    assert admin(gw, "GET", "/admin/keys", key="")[0] == 401
    status, error = admin(gw, "GET", "/admin/usage?by=colour")
    assert (
        status == 400
        and "by: expected model, key, provider, session, user or team" in error["error"]["message"]
    )
    assert admin(gw, "GET", "/admin/usage?since=yesterday")[0] == 400
    assert admin(gw, "GET", "/admin/keys/nope")[0] == 404


def test_admin_api_off_without_admin_key(start_gateway: Any, upstream: FakeUpstream) -> None:
    gw = start_gateway(upstream_config(upstream))
    status, error = admin(gw, "GET", "/admin/keys", key="anything")
    assert status == 404 and "server.admin_key" in error["error"]["message"]


# ---- managed keys ------------------------------------------------------------------


def test_managed_key_with_both_sdks(gw: RunningGateway, upstream: FakeUpstream) -> None:
    key = new_key(gw)
    reply = gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
    assert reply.choices[0].message.content == "Hello!"
    message = gw.anthropic(api_key=key).messages.create(
        model="chat-model", max_tokens=5, messages=HI
    )
    assert message.content
    assert upstream.last.headers["Authorization"] != f"Bearer {key}"  # never sent upstream


def test_revoked_and_expired_keys_are_refused(
    gw: RunningGateway, sqlite_url: str, upstream: FakeUpstream
) -> None:
    key = new_key(gw)
    key_id = admin(gw, "GET", "/admin/keys")[1]["data"][0]["id"]
    gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
    admin(gw, "DELETE", f"/admin/keys/{key_id}")
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
    assert "revoked" in caught.value.message

    async def expired_key() -> str:
        store = Store(sqlite_url)
        secret, _ = await store.create_key("old", expires_at=time.time() - 1)
        await store.close()
        return secret

    secret = asyncio.run(expired_key())
    with pytest.raises(anthropic.AuthenticationError) as refused:
        gw.anthropic(api_key=secret).messages.create(model="chat-model", max_tokens=5, messages=HI)
    assert "expired" in refused.value.message
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="lmg-not-a-key").chat.completions.create(model="chat-model", messages=HI)


def test_key_limited_to_some_models(gw: RunningGateway, upstream: FakeUpstream) -> None:
    key = new_key(gw, models=["chat-model"])
    gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(api_key=key).chat.completions.create(model="echo", messages=HI)
    assert "may not use model echo" in caught.value.message
    with pytest.raises(anthropic.PermissionDeniedError):
        gw.anthropic(api_key=key).messages.create(model="echo", max_tokens=5, messages=HI)
    # auto goes to the candidates the key may use.
    assert (
        gw.client(api_key=key).chat.completions.create(model="auto", messages=HI).model
        == "chat-model"
    )


def test_requests_per_minute(gw: RunningGateway) -> None:
    key = new_key(gw, rpm=3)
    client = gw.client(api_key=key)
    for _ in range(3):
        client.chat.completions.create(model="echo", messages=HI)
    raw = gw.request("POST", "/v1/chat/completions", {"model": "echo", "messages": HI}, api_key=key)
    assert raw.status == 429 and 55 <= int(raw.headers["retry-after"]) <= 60
    assert "limit of 3 requests per minute" in orjson.loads(raw.body)["error"]["message"]
    with pytest.raises(anthropic.RateLimitError):
        gw.anthropic(api_key=key).messages.create(model="echo", max_tokens=5, messages=HI)


def test_tokens_per_minute_and_budget(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    # tpm counts per clock minute: a clock at a minute's start, which stays there.
    clock = FakeClock(start=time.time() // 60 * 60 + 1)
    gw = start_gateway(accounts_config(upstream, sqlite_url), clock)
    usage = {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100}
    tpm_key = new_key(gw, tpm=150)
    budget_key = new_key(gw, budget_tokens=250)
    recorder = gw.app.state.gateway.accounts.recorder
    sent = 0  # every request leaves a record, the refused ones too
    for key, allowed in ((tpm_key, 2), (budget_key, 3)):
        for _ in range(allowed):
            upstream.push(Script(json=completion(usage=usage)))
            gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
            sent += 1
            # Tokens count once their record is written: wait for that, not a guess.
            wait_until(lambda: recorder.written >= sent)  # noqa: B023
        with pytest.raises(openai.RateLimitError) as caught:
            gw.client(api_key=key).chat.completions.create(model="chat-model", messages=HI)
        sent += 1
        words = "150 tokens per minute" if key == tpm_key else "budget of 250 tokens"
        assert words in caught.value.message


# ---- usage records -------------------------------------------------------------------


def test_every_request_leaves_a_record(
    gw: RunningGateway, upstream: FakeUpstream, sqlite_url: str
) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13,
             "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
    upstream.push(Script(json=completion(usage=usage)))
    gw.client().chat.completions.create(
        model="chat-model", messages=HI, extra_headers={"x-request-id": "one"}
    )
    with gw.anthropic().messages.stream(
        model="echo", max_tokens=20, messages=HI, extra_headers={"x-request-id": "two"}
    ) as stream:
        stream.get_final_message()
    upstream.push(Script(status=500, json={"error": {"message": "boom"}}))
    gw.request("POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI},
               headers={"x-request-id": "three"})  # fmt: skip
    gw.request("POST", "/v1/chat/completions", {"model": "nope", "messages": HI},
               headers={"x-request-id": "four"})  # fmt: skip
    gw.request("POST", "/v1/chat/completions", {"model": "echo", "messages": HI},
               headers={"x-request-id": "five"}, api_key="wrong")  # fmt: skip
    rows = {row["request_id"]: row for row in wait_for_records(sqlite_url, 5)}
    one = rows["one"]
    assert (one["protocol"], one["stream"], one["status"], one["error_type"]) == (
        "openai",
        False,
        200,
        None,
    )
    assert (one["requested_model"], one["model"], one["deployment"], one["provider"]) == (
        "chat-model",
        "chat-model",
        "up/up-model",
        "up",
    )
    assert (one["input_tokens"], one["output_tokens"], one["cached_tokens"]) == (11, 2, 4)
    assert one["key_id"] == config_key_id(API_KEY) and one["latency_ms"] > 0
    assert one["ttft_ms"] is None  # only a stream has a first token the client sees
    two = rows["two"]
    assert (two["protocol"], two["stream"], two["status"], two["model"]) == (
        "anthropic",
        True,
        200,
        "echo",
    )
    assert two["output_tokens"] > 0 and 0 < two["ttft_ms"] <= two["latency_ms"]
    assert (rows["three"]["status"], rows["three"]["error_type"]) == (502, "upstream")
    # A failed upstream is named: the model, deployment and provider it failed on.
    three = rows["three"]
    assert (three["model"], three["deployment"], three["provider"]) == (
        "chat-model",
        "up/up-model",
        "up",
    )
    assert (rows["four"]["status"], rows["four"]["error_type"]) == (404, "not_found")
    assert (rows["five"]["status"], rows["five"]["key_id"]) == (401, None)


def test_a_client_leaving_a_slow_non_stream_reply_cancels_it(
    gw: RunningGateway, upstream: FakeUpstream, sqlite_url: str
) -> None:
    upstream.push(Script(json=completion(), delay=8))
    with pytest.raises(openai.APITimeoutError):
        gw.client().with_options(timeout=1.5).chat.completions.create(
            model="chat-model", messages=HI, extra_headers={"x-request-id": "left"}
        )
    started = time.monotonic()
    (row,) = wait_for_records(sqlite_url, 1)
    assert time.monotonic() - started < 5  # the upstream's 8 s were not waited out
    assert (row["request_id"], row["status"], row["error_type"]) == (
        "left",
        499,
        "client_disconnected",
    )
    deployments = [d for entry in gw.app.state.gateway.catalog.entries for d in entry.deployments]
    assert all(d.health.in_flight == 0 for d in deployments)  # the upstream request was cut


def test_a_full_usage_queue_drops_and_counts_never_blocks(sqlite_url: str) -> None:
    from lmgate.accounts.store import UsageRecord, record_row
    from lmgate.accounts.usage import UsageRecorder

    recorder = UsageRecorder(Store(sqlite_url), queue_size=5)  # not started: nothing drains
    for number in range(8):
        recorder.submit(record_row(UsageRecord(time.time(), f"r{number}", "openai", False)))
    assert recorder.dropped == 3


def test_a_write_holds_at_most_batch_size_records_and_starts_when_that_many_wait(
    sqlite_url: str,
) -> None:
    from lmgate.accounts.store import UsageRecord, record_row
    from lmgate.accounts.usage import UsageRecorder

    async def run() -> list[int]:
        store = Store(sqlite_url)
        await store.migrate()
        writes: list[int] = []
        six_written = asyncio.Event()
        write = store.record_rows

        async def counted(rows: list[tuple[Any, ...]]) -> dict[str, tuple[int, int]]:
            writes.append(len(rows))
            spent = await write(rows)
            if sum(writes) >= 6:
                six_written.set()
            return spent

        store.record_rows = counted  # type: ignore[method-assign]
        # A flush interval far longer than the test: only a full batch starts a write.
        recorder = UsageRecorder(store, batch_size=3, flush_interval=60)
        await recorder.start()
        for number in range(7):
            recorder.submit(record_row(UsageRecord(time.time(), f"r{number}", "openai", False)))
        await asyncio.wait_for(six_written.wait(), 5)
        early = list(writes)
        await recorder.stop()  # the last record, short of a batch, is written at shutdown
        await store.close()
        return early

    assert asyncio.run(run()) == [3, 3]
    assert len(records(sqlite_url)) == 7


def test_records_are_written_within_the_flush_interval_on_default_settings(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    # The default batch is large (fewer writes cost less under load); a quiet gateway
    # still writes every store.flush_interval (0.5 s), not when a batch fills.
    config = upstream_config(upstream)
    config["store"] = {"url": sqlite_url}
    gw = start_gateway(config)
    gw.client().chat.completions.create(model="echo", messages=HI)
    deadline = time.monotonic() + 3
    while not (rows := records(sqlite_url)):
        assert time.monotonic() < deadline, "no record written while the gateway runs"
        time.sleep(0.05)
    assert [(row["requested_model"], row["status"]) for row in rows] == [("echo", 200)]


# ---- several processes: Redis ----------------------------------------------------------


def test_two_processes_share_one_rpm_limit(
    serve: Any, upstream: FakeUpstream, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = accounts_config(upstream, postgres_url, redis={"url": redis_url})
    path = tmp_path / "team.yaml"
    path.write_bytes(orjson.dumps(config))
    first, second = serve("--config", str(path)), serve("--config", str(path))
    status, body = first.request(
        "POST", "/admin/keys", {"name": "shared", "rpm": 10}, {"Authorization": f"Bearer {ADMIN}"}
    )
    assert status == 201
    headers = {"Authorization": f"Bearer {orjson.loads(body)['key']}"}
    ask = {"model": "echo", "messages": HI}
    statuses = [
        (first if n % 2 else second).request("POST", "/v1/chat/completions", ask, headers)[0]
        for n in range(30)
    ]
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses


def test_two_processes_share_one_token_budget(
    serve: Any, upstream: FakeUpstream, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A key's budget spent through one process is refused by the other at once, not
    after its cached copy of the key expires (a minute here)."""
    config = accounts_config(upstream, postgres_url, redis={"url": redis_url})
    config["store"]["key_cache_seconds"] = 60
    path = tmp_path / "team.yaml"
    path.write_bytes(orjson.dumps(config))
    first, second = serve("--config", str(path)), serve("--config", str(path))
    ask = {"model": "echo", "messages": HI}
    status, body = second.request(
        "POST", "/v1/chat/completions", ask, {"Authorization": f"Bearer {API_KEY}"}
    )
    per_request = orjson.loads(body)["usage"]["total_tokens"]  # the same for each below
    budget = per_request * 3 // 2  # the second request spends it
    status, body = first.request(
        "POST",
        "/admin/keys",
        {"name": "shared", "budget_tokens": budget},
        {"Authorization": f"Bearer {ADMIN}"},
    )
    created = orjson.loads(body)
    headers = {"Authorization": f"Bearer {created['key']}"}

    def total() -> int:
        return int(stored_key(postgres_url, created["id"]).used_tokens)

    assert second.request("POST", "/v1/chat/completions", ask, headers)[0] == 200
    wait_until(lambda: total() == per_request)  # written; the second process caches the key
    assert first.request("POST", "/v1/chat/completions", ask, headers)[0] == 200
    wait_until(lambda: total() == 2 * per_request)  # over the budget now
    status, body = second.request("POST", "/v1/chat/completions", ask, headers)
    assert status == 429 and b"budget_exhausted" in body, body
    assert first.request("POST", "/v1/chat/completions", ask, headers)[0] == 429
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{second.port}", api_key=created["key"], max_retries=0
    )
    with pytest.raises(anthropic.RateLimitError) as refused:  # in the client's own shape
        client.messages.create(model="echo", max_tokens=5, messages=HI)
    assert f"budget of {budget} tokens" in refused.value.message


def test_a_cooldown_is_shared_through_redis(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str, redis_url: str
) -> None:
    config = accounts_config(upstream, sqlite_url, redis={"url": redis_url})
    config["routing"]["cooldown"] = {"failures": 1, "seconds": 30}
    one, two = start_gateway(config), start_gateway(config)
    ask = {"model": "chat-model", "messages": HI}
    upstream.push(Script(status=500, json={"error": {"message": "boom"}}))
    assert one.request("POST", "/v1/chat/completions", ask).status == 502
    # The other gateway hears of it on the Redis channel.
    health = two.app.state.gateway.catalog.get("chat-model").deployments[0].health
    wait_until(lambda: health.open_until > time.monotonic())
    raw = two.request("POST", "/v1/chat/completions", ask)
    assert raw.status == 503 and b"cooling down" in raw.body
    three = start_gateway(config)  # started later: learns it from the expiring key
    assert three.request("POST", "/v1/chat/completions", ask).status == 503
    assert len(upstream.requests) == 1


# ---- command line ------------------------------------------------------------------------


def test_keys_and_usage_commands(tmp_path: Path, serve: Any) -> None:
    from tests.support.cli import run_cli

    path = tmp_path / "lmgate.yaml"
    path.write_text("providers: {e: {type: echo}}\nmodels: [{id: echo, provider: e}]\n")
    made = run_cli("keys", "create", "--config", str(path), "--name", "ci", "--models", "echo",
                   "--rpm", "100", "--budget-tokens", "5000", "--budget-usd", "2.5",
                   "--expires", "2099-01-01")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.split()[-1]
    assert secret.startswith("lmg-") and (tmp_path / "lmgate.db").exists()  # next to the config
    listed = run_cli("keys", "list", "--config", str(path))
    assert "ci" in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    assert "2.5" in listed.stdout.splitlines()[1].split()  # the budget in USD
    key_id = made.stdout.split()[2]

    served = serve("--config", str(path))  # a managed key now exists: the gateway is closed
    ask = {"model": "echo", "messages": HI}
    assert served.request("POST", "/v1/chat/completions", ask)[0] == 401
    auth = {"Authorization": f"Bearer {secret}"}
    assert served.request("POST", "/v1/chat/completions", ask, auth)[0] == 200
    served.process.terminate()
    served.process.wait(10)  # records are written at shutdown

    usage = run_cli("usage", "--config", str(path), "--by", "key")
    assert usage.returncode == 0
    assert f"config {path}" in usage.stderr and "lmgate.db" in usage.stderr  # which store
    lines = usage.stdout.splitlines()
    assert lines[0].split() == [
        "KEY",
        "NAME",
        "REQUESTS",
        "ERRORS",
        "INPUT",
        "OUTPUT",
        "COST",
        "USD",
        "P50",
        "MS",
        "P95",
        "MS",
    ]
    by_key = {line.split()[0]: line.split() for line in lines[1:]}
    assert by_key[key_id][1:4] == ["ci", "1", "0"] and by_key["-"][1:4] == ["-", "1", "1"]
    assert by_key[key_id][6] == "0.0000"  # echo costs nothing
    as_json = orjson.loads(run_cli("usage", "--config", str(path), "--by", "key", "--json").stdout)
    [mine] = [row for row in as_json if row["group"] == key_id]
    assert (mine["name"], mine["requests"], mine["errors"]) == ("ci", 1, 0)
    [listed_key] = orjson.loads(run_cli("keys", "list", "--config", str(path), "--json").stdout)
    assert listed_key["name"] == "ci" and listed_key["state"] == "active"
    assert "hash" not in listed_key and secret not in orjson.dumps(listed_key).decode()

    assert run_cli("keys", "revoke", "--config", str(path), key_id).returncode == 0
    assert run_cli("keys", "revoke", "--config", str(path), key_id).returncode == 1
    assert "revoked" in run_cli("keys", "list", "--config", str(path)).stdout
    bad = run_cli("usage", "--config", str(path), "--since", "yesterday")
    assert bad.returncode == 2 and "expected a duration" in bad.stderr
    assert (
        run_cli("keys", "create", "--config", str(path), "--name", "x", "--rpm", "0").returncode
        == 2
    )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_record_the_store_would_refuse_does_not_stop_the_budget(
    start_gateway: Any, upstream: FakeUpstream, request: pytest.FixtureRequest, engine: str
) -> None:
    """A model name longer than its column or with a NUL (PostgreSQL refuses both), and
    an upstream reporting more tokens than a column holds: before, one such record made
    every later batch fail, so nothing was recorded and budgets were never spent."""
    url = request.getfixturevalue("sqlite_url" if engine == "sqlite" else "postgres_url")
    gw = start_gateway(accounts_config(upstream, url))
    recorder = gw.app.state.gateway.accounts.recorder
    key = new_key(gw, budget_tokens=250)
    client = gw.client(api_key=key)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="m" * 300 + "\0", messages=HI)
    huge = {"prompt_tokens": 2**63, "completion_tokens": 1, "total_tokens": 2**63}
    upstream.push(Script(json=completion(usage=huge)))
    client.chat.completions.create(model="chat-model", messages=HI)  # spends the budget
    wait_until(lambda: recorder.written == 2)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat-model", messages=HI)
    wait_until(lambda: recorder.written == 3)
    rows = records(url)
    assert rows[0]["requested_model"] == "m" * 200 and rows[0]["status"] == 404
    assert rows[1]["input_tokens"] == 2**31 - 1
    assert recorder.bad == 0


# ---- budgets under concurrency -----------------------------------------------------------


def spend_at_once(
    targets: list[RunningGateway], key: str, upstream: FakeUpstream, count: int = 50
) -> list[int]:
    """``count`` requests at once (spread over ``targets``); their statuses."""
    usage = {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}
    upstream.route = lambda recorded: Script(json=completion(usage=usage), delay=0.3)
    ask = {"model": "chat-model", "messages": HI, "max_tokens": 50}
    with ThreadPoolExecutor(count) as pool:
        return list(
            pool.map(
                lambda n: (
                    targets[n % len(targets)]
                    .request("POST", "/v1/chat/completions", ask, api_key=key)
                    .status
                ),
                range(count),
            )
        )


def test_a_budget_holds_under_concurrency(
    start_gateway: Any, upstream: FakeUpstream, sqlite_url: str
) -> None:
    """50 requests at once against a budget of about six: each holds its estimate
    (prompt + max_tokens) while in flight, so the key spends at most one request's
    estimate past its budget. Before, every one of them was admitted (26x the budget)."""
    gw = start_gateway(accounts_config(upstream, sqlite_url))
    budget = 300
    key = new_key(gw, budget_tokens=budget)
    statuses = spend_at_once([gw], key, upstream)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}, statuses
    wait_for_records(sqlite_url, 50)  # every request leaves a record, a refused one too
    spent = sum(
        row["input_tokens"] + row["output_tokens"] for row in records(sqlite_url)
        if row["status"] == 200 and row["key_id"] not in (None, config_key_id(API_KEY))
    )  # fmt: skip
    estimate = 8 + 50  # its prompt counted offline (about 8 tokens), and max_tokens
    assert spent <= budget + estimate, (spent, statuses.count(200))


def test_a_budget_holds_under_concurrency_across_processes(
    serve: Any, upstream: FakeUpstream, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The same 50 requests spread over two processes sharing PostgreSQL and Redis: the
    holds of both count against the one budget."""
    config = accounts_config(upstream, postgres_url, redis={"url": redis_url})
    path = tmp_path / "team.yaml"
    path.write_bytes(orjson.dumps(config))
    first, second = serve("--config", str(path)), serve("--config", str(path))
    budget = 300
    status, body = first.request(
        "POST", "/admin/keys", {"name": "fleet", "budget_tokens": budget},
        {"Authorization": f"Bearer {ADMIN}"},
    )  # fmt: skip
    assert status == 201
    created = orjson.loads(body)
    usage = {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}
    upstream.route = lambda recorded: Script(json=completion(usage=usage), delay=0.3)
    ask = {"model": "chat-model", "messages": HI, "max_tokens": 50}
    headers = {"Authorization": f"Bearer {created['key']}"}
    with ThreadPoolExecutor(50) as pool:
        statuses = list(
            pool.map(
                lambda n: (first, second)[n % 2].request(
                    "POST", "/v1/chat/completions", ask, headers
                )[0],
                range(50),
            )
        )
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}, statuses
    wait_until(
        lambda: stored_key(postgres_url, created["id"]).used_tokens == 45 * statuses.count(200)
    )
    spent = stored_key(postgres_url, created["id"]).used_tokens
    assert spent <= budget + 8 + 50, (spent, statuses.count(200))


def test_a_spent_budget_tells_clients_not_to_retry(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gw, budget_tokens=1)
    upstream.push(Script(json=completion()))
    assert (
        gw.request(
            "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI}, api_key=key
        ).status
        == 200
    )
    recorder = gw.app.state.gateway.accounts.recorder
    wait_until(lambda: recorder.written >= 1)
    refused = gw.request(
        "POST", "/v1/chat/completions", {"model": "chat-model", "messages": HI}, api_key=key
    )
    assert refused.status == 429 and refused.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers
    limited = new_key(gw, rpm=1)  # a wait helps here: Retry-After, and no such header
    gw.request("POST", "/v1/chat/completions", {"model": "echo", "messages": HI}, api_key=limited)
    again = gw.request(
        "POST", "/v1/chat/completions", {"model": "echo", "messages": HI}, api_key=limited
    )
    assert again.status == 429 and "retry-after" in again.headers
    assert "x-should-retry" not in again.headers


def test_model_lists_show_only_what_the_key_may_use(gw: RunningGateway) -> None:
    key = new_key(gw, models=["chat-model"])
    openai_list = gw.request("GET", "/v1/models", api_key=key).json()
    assert [m["id"] for m in openai_list["data"]] == ["chat-model"]
    anthropic_list = gw.request(
        "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"}, api_key=key
    ).json()
    assert [m["id"] for m in anthropic_list["data"]] == ["chat-model"]
    google = gw.request(
        "GET", "/v1beta/models", headers={"x-goog-api-key": key}, api_key=None
    ).json()
    assert [m["name"] for m in google["models"]] == ["models/chat-model"]
    assert gw.request("GET", "/v1/models/echo", api_key=key).status == 404
    assert gw.request("GET", "/v1/models/chat-model", api_key=key).status == 200
    everything = gw.request("GET", "/v1/models", api_key=API_KEY).json()["data"]
    assert len(everything) > 1  # a key without a model list sees all
