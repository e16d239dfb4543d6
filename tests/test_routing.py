"""Routing under faults: retries with backoff and Retry-After, failover between
deployments, fallback models, circuit breakers, balancing and concurrency caps.

Two real fake upstreams (``a`` and ``b``) and a port nothing listens on (``dead``)
stand in for deployments; each records what it received, so every test checks the
attempts the upstreams saw as well as what the client got.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.clock import FakeClock
from tests.support.fakes.upstream import FakeUpstream, Script, completion, text_stream
from tests.support.gateway import API_KEY, RunningGateway, refusing_url, wait_until

HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream().start(), FakeUpstream().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def a(servers: tuple[FakeUpstream, FakeUpstream]) -> Iterator[FakeUpstream]:
    servers[0].reset()
    yield servers[0]
    servers[0].reset()


@pytest.fixture
def b(servers: tuple[FakeUpstream, FakeUpstream]) -> Iterator[FakeUpstream]:
    servers[1].reset()
    yield servers[1]
    servers[1].reset()


def provider(url: str) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": url,
        "timeouts": {"connect": 1, "first_byte": 1, "idle": 0.5},
    }


def config(a: FakeUpstream, b: FakeUpstream, **routing: Any) -> dict[str, Any]:
    return {
        "server": {"api_keys": [API_KEY]},
        "providers": {
            "a": provider(a.url + "/v1"),
            "b": provider(b.url + "/v1"),
            "dead": provider(refusing_url()),
        },
        "models": [
            {"id": "one", "provider": "a", "model": "m"},
            {
                "id": "pair",
                "deployments": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}],
            },
            {
                "id": "dead-first",
                "deployments": [
                    {"provider": "dead", "model": "m", "weight": 1_000_000},
                    {"provider": "b", "model": "m", "weight": 0.000001},
                ],
            },
            {"id": "down", "provider": "dead", "model": "m"},
            {"id": "primary", "provider": "a", "model": "p"},
            {"id": "secondary", "provider": "b", "model": "s"},
        ],
        "routing": {
            "auto": ["one"],
            "fallbacks": {"primary": ["secondary"]},
            "backoff": 0.01,
            "max_backoff": 0.05,
            "cooldown": {"failures": 100},  # the circuit-breaker tests set their own
            **routing,
        },
    }


@pytest.fixture
def start(start_gateway: Any, a: FakeUpstream, b: FakeUpstream, clock: FakeClock) -> Any:
    def started(**routing: Any) -> RunningGateway:
        return start_gateway(config(a, b, **routing), clock)  # type: ignore[no-any-return]

    return started


def health(gw: RunningGateway, model: str = "one") -> Any:
    entry = gw.app.state.gateway.catalog.get(model)
    return entry.deployments[0].health


def fail(status: int, **headers: str) -> Script:
    return Script(status=status, json={"error": {"message": f"boom {status}"}}, headers=headers)


def ask(gw: RunningGateway, model: str = "one", stream: bool = False, **extra: Any) -> Any:
    return gw.request("POST", CHAT, {"model": model, "messages": HI, "stream": stream, **extra})


# ---- retries ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
def test_retryable_statuses_are_retried(start: Any, a: FakeUpstream, status: int) -> None:
    gw = start(retries=2)
    a.push(fail(status), fail(status))
    raw = ask(gw)
    assert raw.status == 200 and orjson.loads(raw.body)["choices"][0]["message"]["content"]
    assert len(a.requests) == 3
    assert raw.headers["x-lmgate-attempts"] == "3"
    assert raw.headers["x-lmgate-deployment"] == "a/m"


@pytest.mark.parametrize(
    ("status", "client_status"), [(400, 400), (401, 502), (403, 502), (404, 502), (422, 400)]
)
def test_client_and_credential_errors_are_not_retried(
    start: Any, a: FakeUpstream, b: FakeUpstream, status: int, client_status: int
) -> None:
    gw = start(retries=3)
    a.push(fail(status))
    b.push(fail(status))
    raw = ask(gw, "pair")
    assert raw.status == client_status
    assert f"boom {status}" in orjson.loads(raw.body)["error"]["message"]
    assert len(a.requests) + len(b.requests) == 1
    assert raw.headers["x-lmgate-attempts"] == "1"


def test_retries_run_out_with_the_last_error(start: Any, a: FakeUpstream) -> None:
    gw = start(retries=2)
    a.push(fail(500), fail(502), fail(503))
    raw = ask(gw)
    assert raw.status == 503 and "boom 503" in raw.body.decode()
    assert raw.headers["x-lmgate-attempts"] == "3" and len(a.requests) == 3


def test_backoff_grows_between_retries(start: Any, a: FakeUpstream) -> None:
    gw = start(retries=3, backoff=0.2, max_backoff=10)
    a.push(fail(500), fail(500), fail(500))
    started = time.monotonic()
    assert ask(gw).status == 200
    # Jittered waits of 0.1-0.2, 0.2-0.4 and 0.4-0.8 seconds.
    assert 0.7 <= time.monotonic() - started < 3
    assert len(a.requests) == 4


def test_retry_after_is_waited_out(start: Any, a: FakeUpstream) -> None:
    gw = start(retries=1)
    a.push(fail(429, **{"Retry-After": "1"}))
    started = time.monotonic()
    assert ask(gw).status == 200
    assert time.monotonic() - started >= 1
    assert len(a.requests) == 2


@pytest.mark.parametrize(
    ("given", "shown"),
    [("inf", "86400"), ("1e400", "86400"), ("nan", None), ("soon", None),
     ("Wed, 21 Oct 2099 07:28:00 GMT", "86400"), ("Wed, 21 Oct 2015 07:28:00 GMT", "1")],
)  # fmt: skip
def test_a_retry_after_of_any_shape_is_read_defensively(
    start: Any, a: FakeUpstream, given: str, shown: str | None
) -> None:
    gw = start(retries=0)
    a.push(fail(429, **{"Retry-After": given}))
    raw = ask(gw)
    assert raw.status == 429 and raw.headers.get("retry-after") == shown
    assert b"boom 429" in raw.body


def test_a_retry_after_too_long_is_passed_to_the_client(start: Any, a: FakeUpstream) -> None:
    gw = start(retries=3, max_retry_wait=5)
    a.push(fail(429, **{"Retry-After": "120"}))
    started = time.monotonic()
    raw = ask(gw)
    assert time.monotonic() - started < 1
    assert raw.status == 429 and raw.headers["retry-after"] == "120"
    assert len(a.requests) == 1


# ---- failover and fallbacks ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_failover_to_another_deployment(start: Any, b: FakeUpstream, stream: bool) -> None:
    gw = start(retries=1)
    raw = ask(gw, "dead-first", stream=stream)
    assert raw.status == 200
    assert raw.headers["x-lmgate-deployment"] == "b/m"
    assert raw.headers["x-lmgate-attempts"] == "2"
    assert len(b.requests) == 1


def test_retries_move_to_another_deployment_before_repeating_one(
    start: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    gw = start(retries=1)
    a.push(fail(500))
    b.push(fail(500))
    raw = ask(gw, "pair")
    assert raw.status == 502
    assert len(a.requests) == 1 and len(b.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_model_answers_and_says_so(
    start: Any, a: FakeUpstream, b: FakeUpstream, stream: bool
) -> None:
    gw = start(retries=1)
    a.push(fail(500), fail(503))
    if stream:
        with gw.anthropic().messages.stream(model="primary", max_tokens=5, messages=HI) as s:
            assert s.get_final_message().model == "secondary"
    else:
        reply = gw.client().chat.completions.create(model="primary", messages=HI)  # type: ignore[arg-type]
        assert reply.model == "secondary"
    assert [r.body["model"] for r in a.requests] == ["p", "p"]
    assert [r.body["model"] for r in b.requests] == ["s"]


def test_no_fallback_for_a_request_the_upstream_rejected(
    start: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    gw = start()
    a.push(fail(400))
    assert ask(gw, "primary").status == 400
    assert b.requests == []


@pytest.mark.parametrize(
    "script",
    [
        Script(chunks=text_stream(["a", "b", "c"]), disconnect_after=2),
        Script(chunks=text_stream(["a", "b", "c"]), stall_after=2),
    ],
    ids=["disconnect", "stall"],
)
def test_never_retried_after_the_first_byte(
    start: Any, a: FakeUpstream, b: FakeUpstream, script: Script
) -> None:
    gw = start(retries=3)
    a.push(script)
    raw = ask(gw, "primary", stream=True)
    assert raw.status == 200
    last = [line for line in raw.body.split(b"\n") if line.startswith(b"data: ")][-1]
    assert orjson.loads(last[6:])["error"]["type"] in ("upstream_error", "timeout_error")
    assert len(a.requests) == 1 and b.requests == []


# ---- fault matrix: what the client sees, how many attempts the upstream saw -----------


FAULTS = [
    # (script, stream, client status, words in the error, attempts the upstream saw)
    (fail(500), False, 502, "boom 500", 2),
    (fail(529), False, 503, "boom 529", 2),
    (fail(429, **{"Retry-After": "0"}), False, 429, "boom 429", 2),
    (Script(json=completion(), delay=1.5), False, 504, "did not answer within 1s", 2),
    (Script(raw=b"{nope", content_type="application/json"), False, 502, "not a chat completion", 1),
    (Script(raw=b"<html>", content_type="text/html"), True, 502, "instead of an event stream", 2),
]


@pytest.mark.parametrize(("script", "stream", "status", "words", "attempts"), FAULTS)
def test_fault_matrix(
    start: Any,
    a: FakeUpstream,
    script: Script,
    stream: bool,
    status: int,
    words: str,
    attempts: int,
) -> None:
    gw = start(retries=1)
    a.push(script, script)
    raw = ask(gw, stream=stream)
    assert raw.status == status
    error = orjson.loads(raw.body)["error"]
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert raw.headers["x-lmgate-attempts"] == str(attempts)
    assert len(a.requests) == attempts


def test_upstream_down_is_a_502_after_every_attempt(start: Any) -> None:
    gw = start(retries=2)
    raw = ask(gw, "down")
    assert raw.status == 502 and "cannot reach upstream dead" in raw.body.decode()
    assert raw.headers["x-lmgate-attempts"] == "3"


def test_overloaded_upstream_in_anthropic_shape(start: Any, a: FakeUpstream) -> None:
    gw = start(retries=1)
    a.push(fail(529), fail(529))
    with pytest.raises(anthropic.InternalServerError) as caught:
        gw.anthropic().messages.create(model="one", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 529
    assert len(a.requests) == 2


# ---- circuit breaker ---------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_cooldown_skips_a_failing_deployment_then_probes_it(
    start: Any, a: FakeUpstream, clock: FakeClock
) -> None:
    gw = start(retries=0, cooldown={"failures": 2, "seconds": 1})
    a.push(fail(500), fail(500))
    assert ask(gw).status == 502
    assert ask(gw).status == 502
    assert len(a.requests) == 2
    # Open: refused without reaching the upstream.
    raw = ask(gw)
    assert raw.status == 503 and "cooling down" in raw.body.decode()
    assert int(raw.headers["retry-after"]) >= 1
    assert len(a.requests) == 2
    clock.advance(1.1)
    # Half-open: one probe; it fails, so the circuit opens again at once.
    a.push(fail(500))
    assert ask(gw).status == 502
    assert ask(gw).status == 503
    assert len(a.requests) == 3
    clock.advance(1.1)
    # The next probe succeeds: closed again, every request goes through.
    assert ask(gw).status == 200
    assert ask(gw).status == 200
    assert len(a.requests) == 5


def test_cooling_deployment_gets_no_traffic_while_the_other_serves(
    start: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    gw = start(retries=1, cooldown={"failures": 1, "seconds": 30})
    a.push(fail(500))
    b.push(fail(500))
    ask(gw, "pair")  # both fail once: both open
    assert ask(gw, "pair").status == 503
    assert len(a.requests) == 1 and len(b.requests) == 1


def test_auto_skips_cooling_candidates(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    cfg = config(a, b, retries=0, cooldown={"failures": 1, "seconds": 30})
    cfg["routing"]["auto"] = ["one", "secondary"]
    gw = start_gateway(cfg)
    a.push(fail(500))
    reply = gw.client().chat.completions.create(model="auto", messages=HI)  # type: ignore[arg-type]
    assert reply.model == "secondary"  # the failure moved on to the next candidate
    reply = gw.client().chat.completions.create(model="auto", messages=HI)  # type: ignore[arg-type]
    assert reply.model == "secondary" and len(a.requests) == 1


def test_auto_filters_by_tools(start_gateway: Any, a: FakeUpstream, b: FakeUpstream) -> None:
    cfg = config(a, b)
    cfg["models"][0]["tools"] = False
    cfg["routing"]["auto"] = ["one", "secondary"]
    gw = start_gateway(cfg)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    reply = gw.client().chat.completions.create(model="auto", messages=HI, tools=[tool])  # type: ignore[arg-type, list-item]
    assert reply.model == "secondary"
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model="one", messages=HI, tools=[tool])  # type: ignore[arg-type, list-item]
    assert "model one does not accept tools" in caught.value.message


# ---- balancing -----------------------------------------------------------------------


def test_weights_share_the_traffic(start_gateway: Any, a: FakeUpstream, b: FakeUpstream) -> None:
    cfg = config(a, b)
    cfg["models"][1]["deployments"][0]["weight"] = 3
    gw = start_gateway(cfg)
    for _ in range(200):
        assert ask(gw, "pair").status == 200
    share = len(a.requests) / 200
    assert 0.62 < share < 0.88, share  # 0.75 expected; this band is > 4 sigma wide


def test_least_in_flight_sends_to_the_idle_deployment(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    cfg = config(a, b)
    cfg["models"][1]["balance"] = "least_in_flight"
    gw = start_gateway(cfg)
    for server in (a, b):
        server.push(Script(json=completion(), delay=0.6))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, gw, "pair")
        wait_until(lambda: len(a.requests) + len(b.requests) == 1)
        second = pool.submit(ask, gw, "pair")
        assert first.result().status == 200 and second.result().status == 200
    assert len(a.requests) == 1 and len(b.requests) == 1


# ---- concurrency caps ----------------------------------------------------------------


def capped(a: FakeUpstream, b: FakeUpstream, **limits: Any) -> dict[str, Any]:
    cfg = config(a, b, retries=0, **limits.pop("routing", {}))
    cfg["models"][0] = {
        "id": "one",
        "deployments": [{"provider": "a", "model": "m", **limits}],
    }
    return cfg


def test_concurrency_cap_queues_then_overflows(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    gw = start_gateway(capped(a, b, max_in_flight=1, max_queued=1))
    a.push(*[Script(json=completion(), delay=0.8)] * 2)
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(ask, gw)
        wait_until(lambda: len(a.requests) == 1)
        queued = pool.submit(ask, gw)
        wait_until(lambda: len(health(gw)._waiters) == 1)
        overflow = ask(gw)
        assert overflow.status == 429
        assert "max_in_flight" in orjson.loads(overflow.body)["error"]["message"]
        with pytest.raises(anthropic.InternalServerError) as caught:
            gw.anthropic().messages.create(model="one", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        assert caught.value.status_code == 529
        assert running.result().status == 200 and queued.result().status == 200
    assert len(a.requests) == 2
    assert ask(gw).status == 200  # the slot is free again


def test_queue_wait_is_bounded(start_gateway: Any, a: FakeUpstream, b: FakeUpstream) -> None:
    gw = start_gateway(capped(a, b, max_in_flight=1, routing={"queue_timeout": 0.3}))
    a.push(Script(json=completion(), delay=0.8))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(ask, gw)
        wait_until(lambda: len(a.requests) == 1)
        started = time.monotonic()
        waited = ask(gw)
        assert waited.status == 429 and "within 0.3s" in waited.body.decode()
        assert 0.25 < time.monotonic() - started < 0.9
        assert running.result().status == 200


def test_stream_holds_its_slot_until_it_ends(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    gw = start_gateway(capped(a, b, max_in_flight=1, max_queued=0))
    a.push(Script(chunks=text_stream(["a", "b", "c"]), chunk_delay=0.2))
    done = threading.Event()

    def stream() -> None:
        ask(gw, stream=True)
        done.set()

    threading.Thread(target=stream).start()
    wait_until(lambda: len(a.requests) == 1)
    assert ask(gw).status == 429  # mid-stream: the slot is still taken
    assert done.wait(5)
    assert ask(gw).status == 200


def test_fallback_takes_requests_a_full_deployment_refuses(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    cfg = capped(a, b, max_in_flight=1, max_queued=0)
    cfg["routing"]["fallbacks"] = {"one": ["secondary"]}
    gw = start_gateway(cfg)
    a.push(Script(json=completion(), delay=0.5))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(ask, gw)
        wait_until(lambda: len(a.requests) == 1)
        spill = ask(gw)
        assert spill.status == 200 and orjson.loads(spill.body)["model"] == "secondary"
        assert running.result().status == 200


# ---- timeouts --------------------------------------------------------------------------


def test_total_timeout_ends_a_slow_but_steady_stream(
    start_gateway: Any, a: FakeUpstream, b: FakeUpstream
) -> None:
    cfg = config(a, b)
    cfg["providers"]["a"]["timeouts"] = {"idle": 0.5, "total": 1}
    gw = start_gateway(cfg)
    a.push(Script(chunks=text_stream(["w"] * 12), chunk_delay=0.2))  # never idle for 0.5s
    started = time.monotonic()
    raw = ask(gw, stream=True)
    last = [line for line in raw.body.split(b"\n") if line.startswith(b"data: ")][-1]
    assert orjson.loads(last[6:])["error"]["type"] == "timeout_error"
    assert 0.9 < time.monotonic() - started < 2


# ---- model names the catalog does not know; ids published for pickers -----------------


def test_the_offline_default_takes_any_model_name(start_gateway: Any) -> None:
    """The reference document's Claude example, verbatim, on a fresh install."""
    from lmgate.config import default_config_dict

    gw = start_gateway(default_config_dict())
    body = {
        "model": "claude-opus-4-20250514",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    reply = gw.request("POST", "/api/v1/messages", body, api_key=None)
    assert reply.status == 200, reply.body
    assert reply.json()["content"][0]["text"]
    assert reply.json()["model"] == "echo"  # the model that answered


def test_an_unknown_model_is_a_404_unless_routing_says_auto(start_gateway: Any) -> None:
    config = {
        "providers": {"e": {"type": "echo"}},
        "models": [{"id": "only", "provider": "e"}],
        "routing": {"auto": ["only"]},
    }
    strict = start_gateway(config)
    ask = {"model": "made-up", "messages": [{"role": "user", "content": "hi"}]}
    refused = strict.request("POST", "/v1/chat/completions", ask, api_key=None)
    assert refused.status == 404 and refused.json()["error"]["code"] == "model_not_found"
    config["routing"]["unknown_model"] = "auto"
    lenient = start_gateway(config)
    reply = lenient.request("POST", "/v1/chat/completions", ask, api_key=None)
    assert reply.status == 200 and reply.json()["model"] == "only"


def test_published_aliases_are_listed_as_ids(start_gateway: Any) -> None:
    """Claude Code's /model picker lists ids that start with claude: an alias that
    does, published, makes a model appear there."""
    gw = start_gateway(
        {
            "server": {"api_keys": [API_KEY], "admin_key": "admin-key-for-aliases"},
            "providers": {"e": {"type": "echo"}},
            "models": [
                {"id": "deepseek-chat", "provider": "e", "aliases": ["claude-deepseek"],
                 "publish_aliases": True},
                {"id": "quiet", "provider": "e", "aliases": ["hidden-alias"]},
            ],
            "store": {"url": "none"},
        }
    )  # fmt: skip
    listed = [m.id for m in gw.client().models.list()]
    assert listed == ["deepseek-chat", "quiet", "claude-deepseek"]
    assert gw.client().models.retrieve("claude-deepseek").id == "claude-deepseek"
    answer = gw.anthropic().messages.create(
        model="claude-deepseek", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.content
    gemini = gw.request("GET", "/v1beta/models", api_key=API_KEY).json()
    assert "models/claude-deepseek" in [m["name"] for m in gemini["models"]]
