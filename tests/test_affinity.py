"""Sticky sessions: an agent session's turns stay on the deployment that holds its
prompt cache; sessions spread; a failing deployment moves the session; processes
share what they learned through Redis; upstreams get a prompt_cache_key per session."""

from __future__ import annotations

import collections
from typing import Any

import anthropic
import pytest

from tests.support.fakes.upstream import FakeUpstream, Recorded, Script
from tests.support.gateway import API_KEY, RunningGateway, upstream_config

HI: Any = [{"role": "user", "content": "hi"}]


def two_deployments(upstream: FakeUpstream, **routing: Any) -> dict[str, Any]:
    config = upstream_config(upstream)
    config["models"] = [
        {
            "id": "shared",
            "deployments": [
                {"provider": "up", "model": "deployment-a"},
                {"provider": "up", "model": "deployment-b"},
            ],
        }
    ]
    config["routing"] = {"retries": 1, "backoff": 0, "auto": [], **routing}
    config["store"] = {"url": "none"}
    return config


def served(upstream: FakeUpstream) -> list[str]:
    return [r.body["model"] for r in upstream.requests if isinstance(r.body, dict)]


def chat(gw: RunningGateway, session: str | None, header: str = "session_id") -> None:
    headers = {header: session} if session else {}
    answer = gw.request(
        "POST", "/v1/chat/completions", {"model": "shared", "messages": HI}, headers=headers
    )
    assert answer.status == 200, answer.body


def test_twenty_turns_of_a_session_stay_on_one_deployment(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    gw = start_gateway(two_deployments(upstream))
    for _ in range(20):
        chat(gw, "codex-session-1")
    assert len(set(served(upstream))) == 1, collections.Counter(served(upstream))
    metrics = gw.request("GET", "/metrics").body.decode()
    assert 'lmgate_session_affinity_lookups_total{outcome="hit"} 19.0' in metrics
    upstream.requests.clear()
    for _ in range(20):  # no session: balanced over both
        chat(gw, None)
    assert set(served(upstream)) == {"deployment-a", "deployment-b"}


def test_sessions_spread_over_the_deployments(start_gateway: Any, upstream: FakeUpstream) -> None:
    gw = start_gateway(two_deployments(upstream))
    for number in range(30):
        chat(gw, f"session-{number}")
    first = served(upstream)
    assert set(first) == {"deployment-a", "deployment-b"}
    upstream.requests.clear()
    for number in range(30):  # each session's second turn: where its first went
        chat(gw, f"session-{number}")
    assert served(upstream) == first


def test_a_failing_deployment_moves_the_session_and_it_stays_moved(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    gw = start_gateway(two_deployments(upstream, cooldown={"failures": 100}))
    chat(gw, "claude-session", header="x-claude-code-session-id")
    home = served(upstream)[-1]
    other = {"deployment-a", "deployment-b"} - {home}

    def failing(recorded: Recorded) -> Script | None:
        if isinstance(recorded.body, dict) and recorded.body.get("model") == home:
            return Script(status=503, json={"error": {"message": "down"}})
        return None

    upstream.route = failing  # type: ignore[assignment]
    chat(gw, "claude-session", header="x-claude-code-session-id")
    assert served(upstream)[-2:] == [home, *other]  # tried home, answered elsewhere
    upstream.route = None
    upstream.requests.clear()
    for _ in range(5):  # home is well again: the session stays where its cache is now
        chat(gw, "claude-session", header="x-claude-code-session-id")
    assert set(served(upstream)) == other


def test_claude_code_s_session_header_and_metadata_user_id(
    start_gateway: Any, upstream: FakeUpstream
) -> None:
    gw = start_gateway(two_deployments(upstream))
    client = anthropic.Anthropic(base_url=gw.url, api_key=API_KEY, max_retries=0)
    for _ in range(10):
        client.messages.create(
            model="shared",
            max_tokens=10,
            messages=HI,
            metadata={"user_id": "user_abc_account_1_session_42"},
        )
    assert len(set(served(upstream))) == 1
    client.close()


def test_processes_share_sessions_through_redis(
    start_gateway: Any, upstream: FakeUpstream, redis_url: str
) -> None:
    config = two_deployments(upstream)
    config["redis"] = {"url": redis_url}
    first, second = start_gateway(config), start_gateway(config)
    chat(first, "fleet-session")
    home = served(upstream)[-1]
    for _ in range(10):  # the other process learns the session's deployment from Redis
        chat(second, "fleet-session")
    assert set(served(upstream)) == {home}


def test_affinity_none_balances_each_turn(start_gateway: Any, upstream: FakeUpstream) -> None:
    gw = start_gateway(two_deployments(upstream, affinity="none"))
    for _ in range(30):
        chat(gw, "one-session")
    assert set(served(upstream)) == {"deployment-a", "deployment-b"}


@pytest.mark.parametrize("base_url_host", ["api.openai.com", "127.0.0.1"])
def test_a_prompt_cache_key_per_session(
    start_gateway: Any, upstream: FakeUpstream, base_url_host: str
) -> None:
    config = two_deployments(upstream)
    if base_url_host == "api.openai.com":  # auto sends it to OpenAI only: say always here
        config["providers"]["up"]["session_cache_key"] = "always"
    gw = start_gateway(config)
    chat(gw, "codex-session-7")
    sent = upstream.requests[-1].body
    if base_url_host == "api.openai.com":
        assert sent["prompt_cache_key"].startswith("lmgate-")
        assert "codex-session-7" not in sent["prompt_cache_key"]  # the id stays here
    else:
        assert "prompt_cache_key" not in sent  # auto: not for an unknown server
    given = {"model": "shared", "messages": HI, "prompt_cache_key": "client-chosen"}
    assert gw.request("POST", "/v1/chat/completions", given).status == 200
    assert upstream.requests[-1].body["prompt_cache_key"] == "client-chosen"


def test_the_cache_hit_ratio_per_model(start_gateway: Any, upstream: FakeUpstream) -> None:
    from tests.support.fakes.upstream import completion

    gw = start_gateway(two_deployments(upstream))
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 10,
        "total_tokens": 1010,
        "prompt_tokens_details": {"cached_tokens": 900},
    }
    upstream.push(Script(json=completion("warm", usage)), Script(json=completion("cold")))
    chat(gw, "s")
    reply = gw.request("POST", "/v1/chat/completions", {"model": "shared", "messages": HI})
    metrics = gw.request("GET", "/metrics").body.decode()
    [line] = [
        m for m in metrics.splitlines() if m.startswith('lmgate_cache_hit_ratio{model="shared"}')
    ]
    given = 1000 + reply.json()["usage"]["prompt_tokens"]
    assert float(line.split()[-1]) == pytest.approx(900 / given)
