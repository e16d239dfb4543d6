"""The Responses API over WebSocket, as Codex speaks it: response.create messages,
the stream's events as text frames, several responses on one connection continuing
each other without the store, warm-ups, errors as error events, auth and origin checks
on the upgrade, the same usage records, and a client that leaves mid-response."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.fakes.upstream import FakeUpstream, Script, text_stream
from tests.support.gateway import API_KEY, RunningGateway, upstream_config, wait_until


def socket(gw: RunningGateway, key: str | None = API_KEY, **headers: str) -> ClientConnection:
    url = gw.url.replace("http://", "ws://") + "/v1/responses"
    given = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(url, additional_headers={**given, **headers}, open_timeout=10)


def create(connection: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    """Send a response.create; the events up to its end (completed, failed or error)."""
    body = {"type": "response.create", "model": "chat-model", "store": False, **fields}
    connection.send(orjson.dumps(body).decode())
    events = []
    while True:
        event = orjson.loads(connection.recv(timeout=10))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


@pytest.fixture
def gw(start_gateway: Any, upstream: FakeUpstream, tmp_path: Any) -> RunningGateway:
    config = upstream_config(upstream)
    config["store"] = {"url": f"sqlite:///{tmp_path / 'ws.db'}", "flush_interval": 0.05}
    return start_gateway(config)  # type: ignore[no-any-return]


def test_two_turns_on_one_socket_continue_without_the_store(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(
        Script(chunks=text_stream(["Hello ", "there."])),
        Script(chunks=text_stream(["Second ", "turn."])),
    )
    with socket(gw, session_id="codex-session-9") as connection:
        first = create(connection, input="hi", instructions="be brief")
        assert [first[0]["type"], first[-1]["type"]] == ["response.created", "response.completed"]
        assert text_of(first) == "Hello there."
        response_id = first[-1]["response"]["id"]
        connection.send(orjson.dumps({"type": "response.processed", "response_id": response_id}))
        # Codex sends only what is new, with the id of the response it continues.
        new = [{"role": "user", "content": [{"type": "input_text", "text": "and again"}]}]
        second = create(connection, input=new, previous_response_id=response_id)
        assert text_of(second) == "Second turn."
    sent = upstream.requests[-1].body["messages"]
    said = [m["content"] for m in sent if m["role"] != "system"]
    assert said[0] == "hi" and said[1] == "Hello there." and "and again" in str(said[2])
    usage = gw.request("GET", "/metrics").body.decode()
    assert 'lmgate_requests_total{deployment="up/up-model",model="chat-model"' in usage
    assert 'protocol="responses"' in usage


def test_a_warm_up_answers_without_the_model_and_is_continued(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    with socket(gw) as connection:
        warm = create(connection, input="the whole prompt", generate=False)
        assert [e["type"] for e in warm] == ["response.created", "response.completed"]
        assert upstream.requests == []
        upstream.push(Script(chunks=text_stream(["ok"])))
        answer = create(connection, input=[], previous_response_id=warm[-1]["response"]["id"])
        assert text_of(answer) == "ok"
    said = [m["content"] for m in upstream.requests[-1].body["messages"]]
    assert said == ["the whole prompt"]


def test_errors_are_error_events_and_the_socket_stays_open(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    with socket(gw) as connection:
        [missing] = create(connection, model="no-such-model", input="hi")
        assert missing["type"] == "error" and missing["status"] == 404
        assert "no-such-model" in missing["error"]["message"]
        connection.send("not json")
        assert orjson.loads(connection.recv(timeout=10))["status"] == 400
        upstream.push(
            Script(status=429, json={"error": {"message": "slow"}}, headers={"Retry-After": "7"})
        )
        [limited] = create(connection, input="hi")
        assert limited["status"] == 429 and limited["headers"]["retry-after"] == "7"
        upstream.push(Script(chunks=text_stream(["still here"])))
        assert text_of(create(connection, input="hi")) == "still here"


def test_the_upgrade_needs_a_key_and_a_page_elsewhere_cannot_open_it(gw: RunningGateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        socket(gw, key="wrong-key")
    assert refused.value.response.status_code == 401
    assert b"invalid API key" in refused.value.response.body
    with pytest.raises(InvalidStatus) as foreign:
        socket(gw, Origin="http://evil.example")
    assert foreign.value.response.status_code == 403


def test_websocket_off_answers_426(start_gateway: Any, upstream: FakeUpstream) -> None:
    config = upstream_config(upstream)
    config["responses"] = {"websocket": False}
    gw = start_gateway(config)
    with pytest.raises(InvalidStatus) as refused:
        socket(gw)
    assert refused.value.response.status_code == 426


def test_a_client_that_leaves_mid_response_cuts_the_upstream(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.push(Script(chunks=text_stream([f"w{n} " for n in range(200)]), chunk_delay=0.05))
    connection = socket(gw)
    body = {"type": "response.create", "model": "chat-model", "input": "long", "store": False}
    connection.send(orjson.dumps(body).decode())
    while orjson.loads(connection.recv(timeout=10))["type"] != "response.output_text.delta":
        pass
    connection.close()
    wait_until(lambda: upstream.cancelled == 1)
    recorder = gw.app.state.gateway.accounts.recorder
    wait_until(lambda: recorder.written >= 1)


# ---- remote compaction (POST /v1/responses/compact) -----------------------------------


def test_compaction_summarises_and_a_later_request_continues_from_it(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    from tests.support.fakes.upstream import completion

    conversation: list[Any] = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "fix the bug"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "main.py"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Looking."}],
        },
    ]
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}}]
    upstream.push(Script(json=completion("NOTES: the bug is in main.py; next, patch it.")))
    compacted = gw.request(
        "POST",
        "/v1/responses/compact",
        {
            "model": "chat-model",
            "input": conversation,
            "instructions": "be a coder",
            "tools": tools,
        },
    )
    assert compacted.status == 200, compacted.body
    asked = upstream.requests[-1].body
    assert "carry on from your notes" in asked["messages"][-1]["content"]
    assert asked["tool_choice"] == "none"
    output = compacted.json()["output"]
    assert output[0]["role"] == "user" and output[-1]["type"] == "compaction"
    assert "main.py" not in output[-1]["encrypted_content"]  # sealed
    assert compacted.json()["usage"]["input_tokens"] > 0
    upstream.push(Script(json=completion("Patched.")))
    follow = {
        "model": "chat-model",
        "store": False,
        "input": [*output, {"role": "user", "content": "go on"}],
    }
    assert gw.request("POST", "/v1/responses", follow).status == 200
    sent = [m["content"] for m in upstream.requests[-1].body["messages"]]
    assert any("NOTES: the bug is in main.py" in str(content) for content in sent)
    altered = dict(output[-1], encrypted_content=output[-1]["encrypted_content"][:-4] + "AAAA")
    refused = gw.request(
        "POST", "/v1/responses", {**follow, "input": [altered, *follow["input"][-1:]]}
    )
    assert refused.status == 400 and "cannot be opened" in refused.json()["error"]["message"]


def test_a_compaction_trigger_on_the_socket(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """What Codex sends to compact a session over the socket: a create whose input ends
    with the trigger; its one output item is the compaction, continued from after."""
    from tests.support.fakes.upstream import completion

    upstream.push(Script(json=completion("NOTES: half done.")), Script(chunks=text_stream(["ok"])))
    with socket(gw) as connection:
        history: Any = [{"role": "user", "content": "do the thing"}, {"type": "compaction_trigger"}]
        events = create(connection, input=history)
        assert [e["type"] for e in events][-1] == "response.completed"
        [item] = events[-1]["response"]["output"]
        assert item["type"] == "compaction" and "half done" not in item["encrypted_content"]
        answer = create(connection, input=[item, {"role": "user", "content": "go on"}])
        assert text_of(answer) == "ok"
    said = str(upstream.requests[-1].body["messages"])
    assert "NOTES: half done." in said and "go on" in said
