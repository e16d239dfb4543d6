"""The real client programs as the tests run them: each in a fresh home and work
directory, every proxy pointed at a closed port, against the scripted fake agent."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fakes.agent import Agent
from tests.support.fakes.upstream import FakeUpstream
from tests.support.gateway import RunningGateway

# tests/clients: the npm programs, and the scripts that drive the Python clients.
HERE = Path(__file__).parent.parent / "clients"
BIN = HERE / "node_modules" / ".bin"
CLOSED = "http://127.0.0.1:9"  # nothing listens: a client that tries the internet fails


@dataclass
class Task:
    """One run of a client: its work directory, the agent, and what it must write."""

    work: Path
    home: Path
    agent: Agent
    gateway: RunningGateway
    upstream: FakeUpstream

    @property
    def target(self) -> Path:
        return Path(self.agent.path)

    def env(self, **extra: str) -> dict[str, str]:
        home = str(self.home)
        return {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_DATA_HOME": f"{home}/.local/share",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "XDG_STATE_HOME": f"{home}/.local/state",
            "PWD": str(self.work),
            "TMPDIR": str(self.home),
            **{
                name: CLOSED
                for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")
            },
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "NO_COLOR": "1",
            **extra,
        }

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv, cwd=self.work, env=env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            print("stdout:", done.stdout[-4000:], "\nstderr:", done.stderr[-4000:], sep="\n")
        return done

    def bodies(self, path_end: str = "") -> list[dict[str, Any]]:
        """What the upstream received (for requests whose path ends with ``path_end``)."""
        return [
            r.body
            for r in self.upstream.requests
            if r.path.endswith(path_end) and isinstance(r.body, dict)
        ]

    def assert_done(self) -> None:
        """The file is written, and the upstream saw the whole loop: the call's result
        came back with the call's id, and no turn lost its reasoning."""
        assert self.target.read_text() == self.agent.content
        assert self.agent.calls >= 1 and self.agent.finals >= 1
        assert self.agent.refused == []
        last = [body for body in self.bodies() if body.get("tools") or "toolConfig" in body][-1]
        if "toolConfig" in last:  # Bedrock's Converse: results by the call's id
            results = [
                block["toolResult"]["toolUseId"]
                for message in last["messages"]
                for block in message["content"]
                if "toolResult" in block
            ]
            assert results and set(results) == {"toolu_fake_1"}, results
            return
        if "contents" in last:  # a Gemini upstream: results go back by the call's name
            responses = [
                part["functionResponse"]["name"]
                for content in last["contents"]
                for part in content["parts"]
                if "functionResponse" in part
            ]
            assert responses, last["contents"]
            return
        results = [
            block.get("tool_use_id") or block.get("tool_call_id")
            for message in last["messages"]
            for block in (message["content"] if isinstance(message["content"], list) else [message])
            if isinstance(block, dict)
            and (block.get("type") == "tool_result" or block.get("role") == "tool")
        ]
        assert results and set(results) <= {"call_fake_1", "toolu_fake_1"}, results


def npm_bin(name: str) -> str:
    path = BIN / name
    assert path.exists(), (
        f"{path} is missing: scripts/test.sh installs the client programs (npm ci)"
    )
    return str(path)


def aider_bin() -> str:
    path = HERE / ".aider" / "bin" / "aider"
    assert path.exists(), f"{path} is missing: scripts/test.sh installs aider (its own venv)"
    return str(path)
