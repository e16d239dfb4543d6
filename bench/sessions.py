"""Agent sessions through lmgate, measured in one run:

* a Codex CLI task (two model turns and one tool run) over the Responses WebSocket
  (the built-in provider at ``openai_base_url``), over HTTP (a custom provider with
  ``wire_api = "responses"``), and with the socket refused (``responses.websocket:
  false``, 426), alternating, the median of each;
* sticky sessions: 50 sessions of 10 turns each on a model with two deployments, with
  ``routing.affinity: session`` and ``none`` — how many later turns reach the
  deployment that served the session's first (the one holding its prompt cache).

    python bench/sessions.py [--runs 5]

Needs the client programs (``scripts/test.sh`` installs them in tests/clients).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.clients.conftest import client_config  # noqa: E402
from tests.support.fakes.agent import Agent  # noqa: E402
from tests.support.fakes.upstream import FakeUpstream  # noqa: E402
from tests.support.gateway import API_KEY, RunningGateway, upstream_config  # noqa: E402
from tests.support.programs import CLOSED, npm_bin  # noqa: E402

HEAD = 'model = "deepseek-chat"\ncheck_for_update_on_startup = false\n'
TAIL = "[analytics]\nenabled = false\n"
SOCKET = HEAD + 'openai_base_url = "{url}/v1"\n' + TAIL
HTTP = (
    HEAD
    + 'model_provider = "lmgate"\n'
    + TAIL
    + '[model_providers.lmgate]\nname = "lmgate"\nbase_url = "{url}/v1"\n'
    + 'env_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
)


def codex_task(upstream: FakeUpstream, gateway: RunningGateway, config: str) -> float:
    """Seconds for one Codex task, start to exit."""
    work = Path(tempfile.mkdtemp(prefix="lmgate-codex-"))
    codex_home = work / "home" / "codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(config.format(url=gateway.url))
    upstream.route = Agent(str(work / "hello.txt"))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work / "home"),
        "CODEX_HOME": str(codex_home),
        "OPENAI_API_KEY": API_KEY,  # the custom provider's env_key
        "CODEX_API_KEY": API_KEY,  # the built-in provider's, in exec
        "HTTP_PROXY": CLOSED,
        "HTTPS_PROXY": CLOSED,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    prompt = f"Write the file {work}/hello.txt with the text: hi"
    argv = [npm_bin("codex"), "exec", "--skip-git-repo-check", "-s", "workspace-write", prompt]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    took = time.perf_counter() - start
    if done.returncode != 0 or not (work / "hello.txt").exists():
        raise SystemExit(f"codex failed: {done.stderr[-2000:]}")
    return took


def codex_turns(runs: int) -> None:
    upstream = FakeUpstream().start()
    refusing_config = client_config(upstream)
    refusing_config["responses"] = {"websocket": False}
    gateway, refusing = RunningGateway(client_config(upstream)), RunningGateway(refusing_config)
    times: dict[str, list[float]] = {"WebSocket": [], "HTTP": [], "socket refused (426)": []}
    try:
        for _ in range(runs):
            times["WebSocket"].append(codex_task(upstream, gateway, SOCKET))
            times["HTTP"].append(codex_task(upstream, gateway, HTTP))
            times["socket refused (426)"].append(codex_task(upstream, refusing, SOCKET))
        opened = gateway.app.state.gateway.pipeline.sockets_opened
    finally:
        gateway.stop()
        refusing.stop()
        upstream.stop()
    base = statistics.median(times["WebSocket"])
    print(f"\nCodex task through lmgate, median of {runs} (sockets opened: {opened})")
    print(f"{'transport':<24}{'median s':>10}{'vs socket':>11}")
    for name, runs_taken in times.items():
        median = statistics.median(runs_taken)
        print(f"{name:<24}{median:>10.3f}{median / base:>11.2f}")


def affinity() -> None:
    upstream = FakeUpstream().start()
    sessions, turns = 50, 10
    print(f"\n{sessions} sessions x {turns} turns, a model with two deployments")
    print(f"{'routing.affinity':<18}{'later turns on the first deployment':>38}  split")
    try:
        for mode in ("session", "none"):
            config: dict[str, Any] = upstream_config(upstream)
            config["models"] = [{"id": "shared", "deployments": [
                {"provider": "up", "model": "deployment-a"},
                {"provider": "up", "model": "deployment-b"}]}]  # fmt: skip
            config["routing"] = {"retries": 1, "auto": [], "affinity": mode}
            config["store"] = {"url": "none"}
            gateway = RunningGateway(config)
            upstream.reset()
            try:
                body = {"model": "shared", "messages": [{"role": "user", "content": "Hi"}]}
                for _ in range(turns):
                    for session in range(sessions):
                        headers = {"session_id": f"session-{session}"}
                        answer = gateway.request("POST", "/v1/chat/completions", body, headers)
                        assert answer.status == 200, answer.body
            finally:
                gateway.stop()
            served = [r.body["model"] for r in upstream.requests if isinstance(r.body, dict)]
            by_session = collections.defaultdict(list)
            for index, deployment in enumerate(served):
                by_session[index % sessions].append(deployment)
            later = sessions * (turns - 1)
            same = sum(t == turns_[0] for turns_ in by_session.values() for t in turns_[1:])
            split = dict(collections.Counter(served))
            print(f"{mode:<18}{same:>26} of {later} ({100 * same / later:.0f} %)  {split}")
    finally:
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    codex_turns(args.runs)
    affinity()
    return 0


if __name__ == "__main__":
    sys.exit(main())
