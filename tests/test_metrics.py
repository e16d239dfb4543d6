"""GET /metrics: what the requests just made through the SDKs show, in the Prometheus
text format, with bounded labels and no secret."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import API_KEY, UPSTREAM_KEY, RunningGateway, upstream_config, wait_until

ADMIN = "metrics-admin-key"
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def samples(gw: RunningGateway, **headers: str) -> dict[tuple[str, frozenset[Any]], float]:
    raw = gw.request("GET", "/metrics", headers=headers)
    assert raw.status == 200, raw.body
    assert raw.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = raw.body.decode()
    assert API_KEY not in text and UPSTREAM_KEY not in text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_requests_tokens_latency_and_state(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Any
) -> None:
    config = upstream_config(upstream)
    config["store"] = {"url": f"sqlite:///{tmp_path}/lmgate.db", "flush_interval": 0.05}
    gw = start_gateway(config)
    client = gw.client()
    upstream.push(
        Script(json=completion("hi", USAGE)),
        Script(chunks=text_stream(["a", "b"], usage=USAGE)),
        Script(status=500, json={"error": {"message": "boom"}}),
    )
    client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "x"}])
    list(
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    with pytest.raises(openai.InternalServerError):
        client.with_options(max_retries=0).chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):  # a name no catalog has: never a label
        client.chat.completions.create(
            model="secret-sounding-model-name", messages=[{"role": "user", "content": "x"}]
        )
    found = samples(gw)
    ok = frozenset(
        {
            ("protocol", "openai"),
            ("model", "chat-model"),
            ("deployment", "up/up-model"),
            ("provider", "up"),
            ("status", "2xx"),
        }
    )
    assert found[("lmgate_requests_total", ok)] == 2
    # An upstream that failed: named, with its deployment (the last one tried).
    failed = ok - {("status", "2xx")} | {("status", "5xx")}
    assert found[("lmgate_requests_total", failed)] == 1
    # Refused before any deployment was tried: no model, deployment or provider to name.
    unanswered = {("protocol", "openai"), ("model", "-"), ("deployment", "-"), ("provider", "-")}
    assert found[("lmgate_requests_total", frozenset(unanswered | {("status", "4xx")}))] == 1
    tokens = {("model", "chat-model"), ("provider", "up")}
    assert found[("lmgate_tokens_total", frozenset(tokens | {("kind", "input")}))] == 24
    assert found[("lmgate_tokens_total", frozenset(tokens | {("kind", "output")}))] == 10
    by_model = frozenset({("protocol", "openai"), ("model", "chat-model")})
    assert found[("lmgate_request_duration_seconds_count", by_model)] == 3  # the 5xx too
    assert found[("lmgate_time_to_first_token_seconds_count", by_model)] == 1  # the stream
    deployment = frozenset({("deployment", "up/up-model")})
    assert found[("lmgate_deployment_in_flight", deployment)] == 0
    assert found[("lmgate_deployment_circuit_open", deployment)] == 0
    assert not any("secret-sounding" in str(labels) for _, labels in found)
    assert ("lmgate_usage_queue_depth", frozenset()) in found


def test_metrics_behind_the_admin_key_or_off(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["metrics"] = {"require_admin_key": True}
    gw = start_gateway(config)
    for key in ("", API_KEY):
        raw = gw.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
        assert raw.status == 401 and b"admin key" in raw.body
    samples(gw, Authorization=f"Bearer {ADMIN}")
    config["metrics"] = {"enabled": False}
    assert start_gateway(config).request("GET", "/metrics").status == 404


def test_retries_fallbacks_cooldowns_refusals_cost_and_keys(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Any
) -> None:
    config = upstream_config(upstream)
    config["server"]["admin_key"] = ADMIN
    config["store"] = {"url": f"sqlite:///{tmp_path}/lmgate.db", "flush_interval": 0.05}
    config["metrics"] = {"per_key_labels": True}
    config["providers"]["claude"]["inline_image_urls"] = True
    config["models"][0]["price"] = {"input": 2, "output": 8, "cache_read": 0.5}
    config["routing"] = {
        "retries": 1,
        "backoff": 0,
        "cooldown": {"failures": 2, "seconds": 60},
        "fallbacks": {"chat-model": ["echo"]},
    }
    gw = start_gateway(config)
    created = gw.request("POST", "/admin/keys", {"name": "team", "rpm": 2}, api_key=ADMIN).json()
    client = gw.client(api_key=created["key"])
    ask: Any = [{"role": "user", "content": "x"}]
    # Two failures at chat-model's one deployment: a retry, its circuit opens, and the
    # request falls back to echo.
    upstream.push(*(Script(status=500, json={"error": {"message": "boom"}}) for _ in range(2)))
    assert client.chat.completions.create(model="chat-model", messages=ask).model == "echo"
    image: Any = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError, match="not a public address"):
        client.chat.completions.create(model="claude-model", messages=image)
    with pytest.raises(openai.RateLimitError):  # the key's rpm is 2
        client.chat.completions.create(model="echo", messages=ask)
    cached = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
    upstream.push(Script(json=completion("hi", cached)))
    gw.client().chat.completions.create(model="reasoner", messages=ask)  # no price: no cost
    found = samples(gw)
    assert found[("lmgate_retries_total", frozenset({("deployment", "up/up-model")}))] == 1
    assert found[("lmgate_cooldowns_total", frozenset({("deployment", "up/up-model")}))] == 1
    failed = frozenset({("deployment", "up/up-model"), ("kind", "upstream")})
    assert found[("lmgate_upstream_errors_total", failed)] == 2  # both attempts, by kind
    assert found[("lmgate_fallbacks_total", frozenset({("model", "chat-model")}))] == 1
    assert found[("lmgate_deployment_circuit_open", frozenset({("deployment", "up/up-model")}))]
    assert found[("lmgate_limit_refusals_total", frozenset({("limit", "rpm")}))] == 1
    assert found[("lmgate_image_fetch_refusals_total", frozenset())] == 1
    reasoner = {("model", "reasoner"), ("provider", "up")}
    assert found[("lmgate_tokens_total", frozenset(reasoner | {("kind", "cache_read")}))] == 4
    assert ("lmgate_cost_usd_total", frozenset(reasoner)) not in found or not found[
        ("lmgate_cost_usd_total", frozenset(reasoner))
    ]
    echo = frozenset({("model", "echo"), ("provider", "echo")})
    assert found[("lmgate_cost_usd_total", echo)] == 0  # priced, at nothing
    key = created["id"]
    assert found[("lmgate_key_requests_total", frozenset({("key", key), ("status", "2xx")}))] == 1
    assert found[("lmgate_key_requests_total", frozenset({("key", key), ("status", "4xx")}))] == 2
    assert created["key"] not in str(found)
    openai_protocol = frozenset({("protocol", "openai")})
    assert found[("lmgate_overhead_seconds_count", openai_protocol)] >= 3
    upstream_ttfb = frozenset({("deployment", "echo/echo")})
    assert found[("lmgate_upstream_time_to_first_byte_seconds_count", upstream_ttfb)] == 1


def test_workers_report_one_set(serve: Any, tmp_path: Any) -> None:
    """With --workers 2 every scrape, whichever worker answers it, counts the requests
    both workers answered (within the second each takes to hand them over)."""
    served = serve("--workers", "2")
    ask = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(40):  # a new connection each: the workers share them
        assert served.request("POST", "/v1/chat/completions", ask)[0] == 200

    def total() -> float:
        status, body = served.request("GET", "/metrics")
        assert status == 200
        return sum(
            sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "lmgate_requests_total"
        )

    wait_until(lambda: total() == 40)  # each worker hands its figures over every second
    assert [total() for _ in range(6)] == [40] * 6  # and no scrape counts one twice


def test_the_grafana_dashboard_uses_only_metrics_that_exist(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Any
) -> None:
    import json
    import re
    from pathlib import Path

    config = upstream_config(upstream)
    config["store"] = {"url": f"sqlite:///{tmp_path}/lmgate.db"}
    gw = start_gateway(config)
    text = gw.request("GET", "/metrics").body.decode()
    families = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.MULTILINE))
    names = set()
    for name, kind in families:
        names.add(name)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(kind, [])
        names.update(name + suffix for suffix in suffixes)
    path = Path(__file__).parent.parent / "contrib/grafana/lmgate-dashboard.json"
    dashboard = json.loads(path.read_text())
    used = {
        metric
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in re.findall(r"\blmgate_\w+", target["expr"])
    }
    assert len(used) >= 14
    assert used <= names, used - names
