"""Reasoning given back for clients that drop it: Continue sends its tool-calling
turns back without their reasoning_content, which DeepSeek's thinking models refuse;
lmgate restores it, for the key that got it only."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import API_KEY


def test_dropped_reasoning_is_restored_for_the_same_key_only(
    start_gateway: Any, upstream: FakeUpstream, tmp_path: Any
) -> None:
    from tests.support.fakes.agent import FINAL, Agent
    from tests.support.gateway import upstream_config

    other_key = "sk-another-team-key"
    config = upstream_config(upstream)
    config["server"]["api_keys"] = [API_KEY, other_key]
    config["models"] = [{"id": "thinker", "provider": "up", "model": "deepseek-reasoner"}]
    config["routing"]["auto"] = []
    gw = start_gateway(config)
    agent = Agent(str(tmp_path / "out.txt"), reasoning="deepseek")
    upstream.route = agent  # type: ignore[assignment]
    tool = {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            },
        },
    }
    ask: Any = [{"role": "user", "content": "write the file"}]
    first = gw.client().chat.completions.create(model="thinker", messages=ask, tools=[tool])
    call = first.choices[0].message.tool_calls[0]
    # What Continue sends back: the tool call, without the reasoning that came with it.
    follow_up: Any = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "written"},
    ]
    second = gw.client().chat.completions.create(model="thinker", messages=follow_up, tools=[tool])
    assert second.choices[0].message.content == FINAL
    assert agent.refused == []  # the upstream got the reasoning back
    assert "lmgate_reasoning_restored_total 1.0" in gw.request("GET", "/metrics").body.decode()
    with pytest.raises(openai.BadRequestError):  # another key's turn: nothing of the first's
        gw.client(other_key).chat.completions.create(
            model="thinker", messages=follow_up, tools=[tool]
        )
    assert len(agent.refused) == 1
