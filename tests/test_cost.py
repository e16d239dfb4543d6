"""Cost in money: each upstream protocol's token figures priced by hand and compared
with the reply's cost header, its usage record and the admin summary; where prices
come from (deployment, model, config table, shipped table); budgets in USD, in one
process and shared by two through Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from lmgate.observe.pricing import Price, lookup, table
from tests.support.accounts import (
    ADMIN,
    HI,
    accounts_config,
    admin,
    new_key,
    stored_key,
    wait_for_records,
)
from tests.support.fakes.upstream import FakeUpstream, Script, anthropic_message, completion
from tests.support.gateway import API_KEY, RunningGateway, wait_until

OPENAI_PRICE = {"input": 2.0, "output": 8.0, "cache_read": 0.5}
ANTHROPIC_PRICE = {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}
# OpenAI's prompt_tokens include the cached ones: 600 uncached + 400 read from cache.
OPENAI_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400},
}
OPENAI_COST = (600 * 2.0 + 400 * 0.5 + 200 * 8.0) / 1e6  # $0.003
# Anthropic's input_tokens exclude the cache: 600 uncached, 400 read, 100 written.
ANTHROPIC_USAGE = {
    "input_tokens": 600,
    "cache_read_input_tokens": 400,
    "cache_creation_input_tokens": 100,
    "output_tokens": 200,
}
ANTHROPIC_COST = (600 * 3.0 + 400 * 0.3 + 100 * 3.75 + 200 * 15.0) / 1e6  # $0.005295
# The Responses API counts like Chat Completions: input_tokens include cached_tokens.
RESPONSES_USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 400},
    "output_tokens": 200,
    "output_tokens_details": {"reasoning_tokens": 50},
    "total_tokens": 1200,
}


def priced_config(upstream: FakeUpstream, store_url: str) -> dict[str, Any]:
    config = accounts_config(upstream, store_url)
    config["providers"]["resp"] = {
        "type": "openai_responses",
        "base_url": upstream.url + "/v1",
        "api_key": "k",
    }
    models = {model["id"]: model for model in config["models"]}
    models["chat-model"]["price"] = OPENAI_PRICE
    models["claude-model"]["price"] = ANTHROPIC_PRICE
    config["models"] += [
        {"id": "resp-model", "provider": "resp", "model": "resp-up", "price": OPENAI_PRICE},
        # No price of its own: the shipped table's, by its dated upstream name.
        {"id": "table-model", "provider": "up", "model": "gpt-4o-2024-08-06"},
        # The deployment's price wins over the model's.
        {
            "id": "two-prices",
            "price": {"input": 100, "output": 100},
            "deployments": [{"provider": "up", "model": "x", "price": {"input": 1, "output": 1}}],
        },
        {"id": "unpriced", "provider": "up", "model": "nobody-knows-this-model"},
    ]
    return config


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, sqlite_url: str) -> RunningGateway:
    return start_gateway(priced_config(upstream, sqlite_url))  # type: ignore[no-any-return]


def chat(gw: RunningGateway, model: str, key: str = API_KEY) -> Any:
    return gw.request("POST", "/v1/chat/completions", {"model": model, "messages": HI}, api_key=key)


def test_each_upstream_protocols_tokens_are_priced_as_computed_by_hand(
    gw: RunningGateway, upstream: FakeUpstream, sqlite_url: str
) -> None:
    upstream.push(
        Script(json=completion(usage=OPENAI_USAGE)),
        Script(json=anthropic_message(usage=ANTHROPIC_USAGE)),
        Script(
            json={
                "id": "resp_up",
                "object": "response",
                "status": "completed",
                "model": "resp-up",
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hi"}],
                    }
                ],
                "usage": RESPONSES_USAGE,
            }
        ),
    )
    costs = {}
    for model in ("chat-model", "claude-model", "resp-model"):
        reply = chat(gw, model)
        assert reply.status == 200, reply.body
        costs[model] = float(reply.headers["x-lmgate-cost-usd"])
        assert float(reply.headers["x-lmgate-overhead-ms"]) >= 0
    assert costs == pytest.approx(
        {"chat-model": OPENAI_COST, "claude-model": ANTHROPIC_COST, "resp-model": OPENAI_COST}
    )
    rows = {row["model"]: row for row in wait_for_records(sqlite_url, 3)}
    assert rows["chat-model"]["cost"] == pytest.approx(OPENAI_COST)
    claude = rows["claude-model"]
    assert claude["cost"] == pytest.approx(ANTHROPIC_COST)
    assert (claude["input_tokens"], claude["cached_tokens"], claude["cache_write_tokens"]) == (
        1100,
        400,
        100,
    )
    assert rows["resp-model"]["reasoning_tokens"] == 50
    assert all(row["overhead_ms"] is not None and row["upstream_ms"] > 0 for row in rows.values())
    _, summary = admin(gw, "GET", "/admin/usage?by=model")
    by_model = {group["group"]: group for group in summary["data"]}
    assert by_model["claude-model"]["cost"] == pytest.approx(ANTHROPIC_COST)
    assert by_model["chat-model"]["unpriced"] == 0


def test_prices_come_from_the_deployment_the_model_or_the_shipped_table(
    gw: RunningGateway, upstream: FakeUpstream, sqlite_url: str
) -> None:
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2}
    upstream.push(*(Script(json=completion(usage=usage)) for _ in range(3)))
    gpt_4o = table()[1]["gpt-4o"]
    assert float(chat(gw, "table-model").headers["x-lmgate-cost-usd"]) == pytest.approx(
        gpt_4o.input + gpt_4o.output
    )
    assert float(chat(gw, "two-prices").headers["x-lmgate-cost-usd"]) == pytest.approx(2.0)
    unpriced = chat(gw, "unpriced")
    assert unpriced.status == 200 and "x-lmgate-cost-usd" not in unpriced.headers
    rows = {row["model"]: row for row in wait_for_records(sqlite_url, 3)}
    assert rows["unpriced"]["cost"] is None
    _, summary = admin(gw, "GET", "/admin/usage?by=model")
    assert {g["group"]: g["unpriced"] for g in summary["data"]}["unpriced"] == 1


def test_price_lookup() -> None:
    overrides = {"my-model": Price(1, 2)}
    assert lookup("my-model", overrides) == Price(1, 2)
    assert lookup("claude-sonnet-4-5-20250929", {}) == table()[1]["claude-sonnet-4-5"]
    assert lookup("openai/gpt-4o", {}) == table()[1]["gpt-4o"]
    assert lookup("no-such-model", {}) is None
    # A cache price left out is the input price.
    assert Price(2, 4).cost(100, 10, 50, 0) == pytest.approx((100 * 2 + 10 * 4) / 1e6)


def test_a_budget_in_usd_is_enforced(
    gw: RunningGateway, upstream: FakeUpstream, sqlite_url: str
) -> None:
    upstream.route = lambda recorded: Script(json=completion(usage=OPENAI_USAGE))
    key = new_key(gw, budget_usd=0.005)  # the second request of $0.003 spends it
    status, bad = admin(gw, "POST", "/admin/keys", {"name": "x", "budget_usd": "ten"})
    assert status == 400 and bad["error"]["param"] == "budget_usd"
    assert chat(gw, "chat-model", key).status == 200
    wait_for_records(sqlite_url, 1)
    assert chat(gw, "chat-model", key).status == 200
    wait_for_records(sqlite_url, 2)

    def refused() -> bool:
        reply = chat(gw, "chat-model", key)
        return reply.status == 429 and b"budget of $0.005" in reply.body

    wait_until(refused)
    status, keys = admin(gw, "GET", "/admin/keys")
    (shown,) = [k for k in keys["data"] if k["budget_usd"] == 0.005]
    assert shown["used_usd"] == pytest.approx(2 * OPENAI_COST)


def test_two_processes_share_one_budget_in_usd(
    serve: Any, upstream: FakeUpstream, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = accounts_config(upstream, postgres_url, redis={"url": redis_url})
    config["store"]["key_cache_seconds"] = 60  # only Redis can tell the other process
    config["models"][0]["price"] = OPENAI_PRICE
    path = tmp_path / "team.yaml"
    path.write_bytes(orjson.dumps(config))
    first, second = serve("--config", str(path)), serve("--config", str(path))
    upstream.route = lambda recorded: Script(json=completion(usage=OPENAI_USAGE))
    status, body = first.request(
        "POST",
        "/admin/keys",
        {"name": "shared", "budget_usd": 0.004},
        {"Authorization": f"Bearer {ADMIN}"},
    )
    created = orjson.loads(body)
    headers = {"Authorization": f"Bearer {created['key']}"}
    ask = {"model": "chat-model", "messages": HI}

    def used() -> float:
        return float(stored_key(postgres_url, created["id"]).used_usd)

    assert second.request("POST", "/v1/chat/completions", ask, headers)[0] == 200
    assert first.request("POST", "/v1/chat/completions", ask, headers)[0] == 200
    wait_until(lambda: used() == pytest.approx(2 * OPENAI_COST))
    for process in (first, second):  # each refuses at once, though it cached the key
        status, body = process.request("POST", "/v1/chat/completions", ask, headers)
        assert status == 429 and b"budget of $0.004" in body, body
