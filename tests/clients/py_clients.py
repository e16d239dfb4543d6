"""The Python client libraries as their users run them, one tool loop each, in a
process of their own (their environment, their warnings). Prints the final text as JSON.

usage: python py_clients.py CLIENT MODE MODEL BASE_URL API_KEY FILE
CLIENT: agents | agents-responses | langchain-openai | langchain-responses |
        langchain-retrieval (MODEL URL KEY) |
        langchain-anthropic | litellm-openai | litellm-anthropic
MODE: invoke | stream
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = "Write a text file"


def write_file(path: str, content: str) -> str:
    """Write a text file."""
    Path(path).write_text(content)
    return "written"


WRITE_TOOL = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}


async def agents(mode: str, model: str, url: str, key: str, prompt: str, kind: str) -> str:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    # The SDK's default model class speaks the Responses API.
    model_class = OpenAIResponsesModel if kind == "responses" else OpenAIChatCompletionsModel
    agent = Agent(
        name="writer",
        instructions="You write files when asked.",
        tools=[function_tool(write_file)],
        model=model_class(model=model, openai_client=client),
    )
    if mode == "stream":
        run = Runner.run_streamed(agent, prompt)
        async for _ in run.stream_events():
            pass
        return str(run.final_output)
    return str((await Runner.run(agent, prompt)).final_output)


def langchain(mode: str, model: str, url: str, key: str, prompt: str, kind: str) -> str:
    from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool

    if kind in ("openai", "responses"):
        from langchain_openai import ChatOpenAI

        llm: Any = ChatOpenAI(
            model=model,
            base_url=f"{url}/v1",
            api_key=key,
            max_retries=0,
            use_responses_api=kind == "responses",
        )
    else:
        from langchain_anthropic import ChatAnthropic

        llm = ChatAnthropic(model=model, base_url=url, api_key=key, max_retries=0, max_tokens=1024)
    writer = tool(write_file)
    # A plain call first (no tools): the fake model answers "OK".
    plain = (
        llm.invoke("Say OK") if mode == "invoke" else "".join(c.text for c in llm.stream("Say OK"))
    )
    assert (plain.text if mode == "invoke" else plain) == "OK", plain
    bound = llm.bind_tools([writer])
    messages: list[BaseMessage] = [HumanMessage(prompt)]
    for _ in range(4):
        if mode == "stream":
            reply: Any = None
            for part in bound.stream(messages):
                reply = part if reply is None else reply + part
        else:
            reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return str(reply.text)
        for call in reply.tool_calls:
            messages.append(ToolMessage(writer.invoke(call["args"]), tool_call_id=call["id"]))
    raise AssertionError("no final answer")


def litellm_loop(mode: str, model: str, url: str, key: str, prompt: str, kind: str) -> str:
    import litellm

    base = f"{url}/v1" if kind == "openai" else url
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    for _ in range(4):
        options = dict(
            model=f"{kind}/{model}", api_base=base, api_key=key, messages=messages,
            tools=[WRITE_TOOL], max_tokens=1024, num_retries=0,
        )  # fmt: skip
        if mode == "stream":
            chunks = list(litellm.completion(**options, stream=True))
            response: Any = litellm.stream_chunk_builder(chunks, messages=messages)
        else:
            response = litellm.completion(**options)
        message = response.choices[0].message
        calls = message.tool_calls or []
        messages.append(
            {
                "role": "assistant",
                "content": message.content,
                **({"tool_calls": [c.model_dump() for c in calls]} if calls else {}),
            }
        )
        if not calls:
            return str(message.content)
        for call in calls:
            result = write_file(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise AssertionError("no final answer")


def langchain_retrieval(model: str, url: str, key: str) -> str:
    """LangChain's retrieval over lmgate's embeddings: OpenAIEmbeddings (which sends
    token arrays, as it does to OpenAI) into an in-memory vector store, then a search."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=model, base_url=url + "/v1", api_key=key, max_retries=0)
    store = InMemoryVectorStore.from_texts(
        ["the cat sat on the mat", "stock markets fell sharply today",
         "rain is expected over the weekend"],
        embeddings,
    )  # fmt: skip
    return store.similarity_search("where is the cat sat", k=1)[0].page_content


def main() -> None:
    if sys.argv[1] == "langchain-retrieval":
        print(json.dumps({"text": langchain_retrieval(*sys.argv[2:5])}))
        return
    client, mode, model, url, key, file = sys.argv[1:7]
    prompt = f"Write the file {file} with the text: hello from lmgate"
    family, _, kind = client.partition("-")
    if family == "agents":
        text = asyncio.run(agents(mode, model, url, key, prompt, kind))
    elif family == "langchain":
        text = langchain(mode, model, url, key, prompt, kind)
    else:
        text = litellm_loop(mode, model, url, key, prompt, kind)
    print(json.dumps({"text": text}))


if __name__ == "__main__":
    main()
