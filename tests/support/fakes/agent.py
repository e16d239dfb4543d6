"""A fake upstream model that does one small agentic task, for the real-client tests.

Given to ``FakeUpstream.route``, it answers each request in the request's own
protocol (OpenAI Chat Completions, Anthropic Messages or Gemini, by the path),
streamed or not as asked:

* a request with tools and no tool result yet: a call to the client's file-writing
  tool, found by its JSON schema (a path-like and a content-like property), with
  arguments built from that schema; failing that, its shell tool (a ``cmd`` string),
  with a command that writes the file;
* a request that carries a tool result: a final text;
* a request without tools (titles, summaries): a short text;
* a request that asks for aider's *file listing* (its ``whole`` edit format, which
  edits files by the reply's text rather than by tools): the file, listed whole.

``reasoning`` makes it think first: ``"deepseek"`` streams ``reasoning_content`` and
enforces DeepSeek's rule (every earlier assistant turn with tool calls must carry its
``reasoning_content`` back, else 400), ``"think_tags"`` writes ``<think>…</think>`` in
the text, ``"anthropic"`` sends signed thinking blocks.
"""

from __future__ import annotations

import math
import shlex
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support.fakes import bedrock, gemini
from tests.support.fakes.upstream import Recorded, Script, anthropic_events, chunk

_PATH_KEYS = ("file_path", "filePath", "filepath", "path", "filename", "file")
_CONTENT_KEYS = ("content", "contents", "text", "data", "new_text")  # new_text: Cline
THOUGHT = "The user wants a file; I will write it with the tool."
SIGNATURE = "sig-fake-upstream-0001"
FINAL = "Done: the file is written."


@dataclass
class Agent:
    path: str  # the file the model writes (absolute)
    content: str = "hello from lmgate\n"
    reasoning: str | None = None  # None | "deepseek" | "think_tags" | "anthropic"
    calls: int = 0  # tool calls made
    finals: int = 0  # final answers given
    refused: list[str] = field(default_factory=list)  # DeepSeek-rule violations seen

    def __call__(self, request: Recorded) -> Script:
        body = request.body if isinstance(request.body, dict) else {}
        if request.path.endswith("/embeddings"):
            return _embeddings(body)
        if "Content" in request.path:  # models/…:generateContent, :streamGenerateContent
            return self._gemini(body, request.path)
        if request.path.startswith("/model/"):  # Bedrock's Converse
            return self._converse(body, request.path)
        anthropic = request.path.endswith(("/messages", "RawPredict"))  # Vertex: rawPredict
        if self.reasoning == "deepseek" and not anthropic:
            missing = _missing_reasoning(body.get("messages") or [])
            if missing:
                self.refused.append(missing)
                return Script(
                    status=400,
                    json={
                        "error": {
                            "message": "The reasoning_content in the thinking mode must be "
                            f"passed back to the API. ({missing})",
                            "type": "invalid_request_error",
                        }
                    },
                )
        tool = _write_tool(body.get("tools") or [], anthropic)
        done = _has_tool_result(body.get("messages") or [], anthropic)
        if tool is None and _asks_for_a_file_listing(body):
            self.finals += 1
            listing = f"{self.path}\n```\n{self.content}```\n\n{FINAL}"
            reply: tuple[str | None, dict[str, Any] | None] = (listing, None)
        elif tool is None or done or _compacted(body):
            if tool is not None:
                self.finals += 1
            reply = (FINAL if tool else "OK", None)
        else:
            self.calls += 1
            reply = (None, {"name": tool[0], "arguments": tool[1](self.path, self.content)})
        stream = bool(body.get("stream"))
        if anthropic:
            return _anthropic(reply, stream, self.reasoning == "anthropic")
        return _openai(reply, stream, self.reasoning)

    def _gemini(self, body: dict[str, Any], path: str) -> Script:
        """As a Gemini model, refusing (400) what the real API refuses."""
        problem = gemini.refusal(body)
        if problem:
            self.refused.append(problem)
            error = {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}
            return Script(status=400, json={"error": error})
        declarations = [
            {"name": d.get("name"), "input_schema": d.get("parameters") or {}}
            for tool in body.get("tools") or []
            for d in tool.get("functionDeclarations") or []
        ]
        tool = _write_tool(declarations, anthropic=True)
        answered = any(
            "functionResponse" in part
            for content in body.get("contents") or []
            for part in content.get("parts") or []
        )
        usage = {"promptTokenCount": 40, "candidatesTokenCount": 12, "totalTokenCount": 52}
        if tool is None or answered:
            if tool is not None:
                self.finals += 1
            parts: list[dict[str, Any]] = [{"text": FINAL if tool else "OK"}]
        else:
            self.calls += 1
            args = orjson.loads(tool[1](self.path, self.content))
            parts = [{"functionCall": {"name": tool[0], "args": args}}]
        if ":streamGenerateContent" not in path:
            return Script(json=gemini.response(parts, usage=usage))
        return gemini.stream(gemini.response([], finish=None), gemini.response(parts, usage=usage))

    def _converse(self, body: dict[str, Any], path: str) -> Script:
        """As a model on Bedrock's Converse API."""
        declarations = [
            {"name": spec["name"], "input_schema": spec["inputSchema"]["json"]}
            for tool in (body.get("toolConfig") or {}).get("tools") or []
            if (spec := tool.get("toolSpec"))
        ]
        tool = _write_tool(declarations, anthropic=True)
        answered = any(
            "toolResult" in block
            for message in body.get("messages") or []
            for block in message["content"]
        )
        usage = {"inputTokens": 40, "outputTokens": 12, "totalTokens": 52}
        if tool is None or answered:
            if tool is not None:
                self.finals += 1
            block: dict[str, Any] = {"text": FINAL if tool else "OK"}
            stop = "end_turn"
        else:
            self.calls += 1
            arguments = orjson.loads(tool[1](self.path, self.content))
            block = {"toolUse": {"toolUseId": "toolu_fake_1", "name": tool[0], "input": arguments}}
            stop = "tool_use"
        if not path.endswith("/converse-stream"):
            return bedrock.reply([block], stop=stop, usage=usage)
        frames = [bedrock.event("messageStart", {"role": "assistant"})]
        if "text" in block:
            delta = {"contentBlockIndex": 0, "delta": {"text": block["text"]}}
            frames.append(bedrock.event("contentBlockDelta", delta))
        else:
            use = block["toolUse"]
            start = {"toolUseId": use["toolUseId"], "name": use["name"]}
            frames.append(bedrock.event("contentBlockStart",
                                        {"contentBlockIndex": 0, "start": {"toolUse": start}}))  # fmt: skip
            delta = {"toolUse": {"input": orjson.dumps(use["input"]).decode()}}
            frames.append(
                bedrock.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
            )
        frames += [
            bedrock.event("contentBlockStop", {"contentBlockIndex": 0}),
            bedrock.event("messageStop", {"stopReason": stop}),
            bedrock.event("metadata", {"usage": usage}),
        ]
        return bedrock.stream(*frames)


def _asks_for_a_file_listing(body: dict[str, Any]) -> bool:
    """aider's whole-file edit format: its prompt asks for a *file listing*."""
    for message in [*(body.get("messages") or []), {"content": body.get("system")}]:
        content = message.get("content") if isinstance(message, dict) else None
        blocks = content if isinstance(content, list) else [{"text": content}]
        if any("*file listing*" in str(block.get("text") or "") for block in blocks):
            return True
    return False


def _write_tool(tools: list[Any], anthropic: bool) -> tuple[str, Any] | None:
    """The file-writing tool's name and a function building its arguments."""
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool if anthropic else tool.get("function") or {}
        schema = function.get("input_schema" if anthropic else "parameters") or {}
        properties = schema.get("properties") or {}
        path_key = next((key for key in _PATH_KEYS if key in properties), None)
        content_key = next((key for key in _CONTENT_KEYS if key in properties), None)
        if path_key and content_key and "old_string" not in properties:
            required = [key for key in schema.get("required") or () if key in properties]

            def build(
                path: str, content: str, p=path_key, c=content_key, r=required, s=properties
            ) -> str:  # type: ignore[no-untyped-def]
                arguments: dict[str, Any] = {p: path, c: content}
                for key in r:  # anything else the schema insists on
                    arguments.setdefault(key, _example(s[key]))
                return orjson.dumps(arguments).decode()

            return str(function.get("name")), build
    for tool in tools:  # no file-writing tool: a shell one (Codex's exec_command)
        function = (
            tool if anthropic else (tool.get("function") or {}) if isinstance(tool, dict) else {}
        )
        schema = function.get("input_schema" if anthropic else "parameters") or {}
        properties = schema.get("properties") or {}
        key = next((k for k in ("cmd", "command") if k in properties), None)
        if key and (properties[key].get("type") == "string"):

            def shell(path: str, content: str, k: str = key) -> str:
                command = f"printf %s {shlex.quote(content)} > {shlex.quote(path)}"
                return orjson.dumps({k: command}).decode()

            return str(function.get("name")), shell
    return None


def _example(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "x", "number": 0, "integer": 0, "boolean": False, "array": []}.get(
        kind if isinstance(kind, str) else "", {}
    )


def _has_tool_result(messages: list[Any], anthropic: bool) -> bool:
    for message in messages:
        if not isinstance(message, dict):
            continue
        if not anthropic and message.get("role") == "tool":
            return True
        content = message.get("content")
        blocks = content if anthropic and isinstance(content, list) else ()
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            return True
    return False


def _missing_reasoning(messages: list[Any]) -> str:
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if message.get("tool_calls") and message.get("reasoning_content") != THOUGHT:
            return f"messages[{index}] has tool_calls but no reasoning_content"
    return ""


_USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


def _openai(
    reply: tuple[str | None, dict[str, Any] | None], stream: bool, reasoning: str | None
) -> Script:
    text, call = reply
    thought = THOUGHT if reasoning == "deepseek" else None
    if reasoning == "think_tags" and text is not None:
        text = f"<think>{THOUGHT}</think>{text}"
    elif reasoning == "think_tags":
        text = f"<think>{THOUGHT}</think>"
    finish = "tool_calls" if call else "stop"
    calls = [{"id": "call_fake_1", "type": "function", "function": call}] if call else None
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thought:
            message["reasoning_content"] = thought
        if calls:
            message["tool_calls"] = calls
        return Script(
            json={
                "id": "up-1",
                "object": "chat.completion",
                "created": 1,
                "model": "up-model",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": _USAGE,
            }
        )
    chunks: list[Any] = [chunk(delta={"role": "assistant", "content": ""})]
    if thought:
        chunks += [chunk(delta={"reasoning_content": piece}) for piece in _pieces(thought)]
    if text:
        chunks += [chunk(delta={"content": piece}) for piece in _pieces(text)]
    if call:
        arguments = call["arguments"]
        head = {"index": 0, "id": "call_fake_1", "type": "function"}
        chunks.append(
            chunk(
                delta={
                    "tool_calls": [{**head, "function": {"name": call["name"], "arguments": ""}}]
                }
            )
        )
        middle = len(arguments) // 2
        for part in (arguments[:middle], arguments[middle:]):
            chunks.append(
                chunk(delta={"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            )
    chunks.append(chunk(finish_reason=finish))
    chunks.append({**chunk(), "choices": [], "usage": _USAGE})
    return Script(chunks=chunks)


def _anthropic(
    reply: tuple[str | None, dict[str, Any] | None], stream: bool, thinking: bool
) -> Script:
    text, call = reply
    blocks: list[dict[str, Any]] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": THOUGHT, "signature": SIGNATURE})
    if text:
        blocks.append({"type": "text", "text": text})
    if call:
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_fake_1",
                "name": call["name"],
                "input": orjson.loads(call["arguments"]),
            }
        )
    stop = "tool_use" if call else "end_turn"
    usage = {"input_tokens": 40, "output_tokens": 12}
    message = {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-up"}
    if not stream:
        return Script(
            json={
                **message,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
        )
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 40, "output_tokens": 1},
            },
        }
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(THOUGHT)]
            deltas.append({"type": "signature_delta", "signature": SIGNATURE})
        elif block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        else:
            start = {**block, "input": {}}
            arguments = orjson.dumps(block["input"]).decode()
            middle = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in (arguments[:middle], arguments[middle:])
            ]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 12},
        }
    )
    events.append({"type": "message_stop"})
    return Script(chunks=anthropic_events(*events), done=False)


def _pieces(text: str) -> list[str]:
    """A text in a few stream deltas."""
    size = max(1, len(text) // 3)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _compacted(body: dict[str, Any]) -> bool:
    """The conversation was compacted after the tool ran: its summary stands for it."""
    return b"Another language model started this task" in orjson.dumps(body.get("messages"))


def _embeddings(body: dict[str, Any]) -> Script:
    """OpenAI's /embeddings: a bag of words (or of token ids) per input, normalised, so
    that a retrieval over them finds the text that shares words with the question."""
    inputs = body.get("input")
    if not isinstance(inputs, list) or body.get("encoding_format") != "float":
        return Script(
            status=400, json={"error": {"message": "input: a list, encoding_format: float"}}
        )
    vectors = []
    for item in inputs:
        words = item.lower().split() if isinstance(item, str) else [str(t) for t in item]
        vector = [0.0] * 64
        for word in words:
            vector[zlib.crc32(word.encode()) % 64] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vectors.append([v / norm for v in vector])
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    used = sum(len(item) if isinstance(item, list) else len(item.split()) for item in inputs)
    return Script(json={"object": "list", "data": data, "model": body.get("model"),
                        "usage": {"prompt_tokens": used, "total_tokens": used}})  # fmt: skip
