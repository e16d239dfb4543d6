"""Two versions of lmgate side by side, in one run: the working tree against a git
revision (a change that should cost nothing is checked here).

    python bench/ab.py [--base REV] [--rounds 3] [--seconds 4] [--loads "chat,responses"]

Both gateways run bench/bench.yaml in front of one bench/upstream.py, each pinned
to CPU 0 in turn (one at a time: they never share the core), the load generator to
CPU 1. Every protocol is driven at concurrency 16, streamed and not, in alternating
rounds; the table gives each version's best requests/s and the ratio new / base, and
its least CPU time per request (from /proc: what the machine's noise moves least). Each
round also starts each version on the built-in default (each in a home of its own,
kept across rounds: the first start makes its store and caches, later ones are
restarts) and times it from the process's start to its first answered chat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import arguments, cpu_seconds, free_port, have_wrk, stop, wait_ready
from run import (
    BODY,
    GEMINI_BODY,
    MESSAGES_BODY,
    RESPONSES_BODY,
    RESPONSES_STREAM_BODY,
    STREAM_BODY,
    pinned,
    start_upstream,
    wrk,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOADS = {
    "chat": ("/v1/chat/completions", BODY),
    "chat stream": ("/v1/chat/completions", STREAM_BODY),
    "messages": ("/v1/messages", MESSAGES_BODY.replace('"stream":true', '"stream":false')),
    "messages stream": ("/v1/messages", MESSAGES_BODY),
    "responses": ("/v1/responses", RESPONSES_BODY),
    "responses stream": ("/v1/responses", RESPONSES_STREAM_BODY),
    "gemini": ("/v1beta/models/bench:generateContent", GEMINI_BODY),
    "gemini stream": ("/v1beta/models/bench:streamGenerateContent?alt=sse", GEMINI_BODY),
}


def start(source: Path, env: dict[str, str], store: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # Each version with its own bench.yaml: an older one may not know a newer's providers.
    config = source / "bench" / "bench.yaml"
    command = [sys.executable, "-m", "lmgate", "serve", "--config", str(config),
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(
        pinned(0, command),
        env={**env, "PYTHONPATH": str(source), "BENCH_STORE_URL": store},
        cwd=source,
    )
    wait_ready(f"http://127.0.0.1:{port}/ready")
    return process, port


def first_answer(source: Path, home: Path) -> float:
    """Seconds from starting ``lmgate serve`` (the built-in default, on CPU 0, in
    ``home``) to its first answered chat."""
    port = free_port()
    home.mkdir(exist_ok=True)
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    chat = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    began = time.monotonic()
    process = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "lmgate", "serve", "--port", str(port)]),
        env={**os.environ, "PYTHONPATH": str(source), "HOME": str(home)},
        cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while time.monotonic() - began < 60:
            try:
                with urllib.request.urlopen(chat, timeout=5) as answer:
                    answer.read()
                return time.monotonic() - began
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"{source}: no answer within 60 s")
    finally:
        stop(process)


def main() -> int:
    parser = arguments(__doc__, rounds=3)
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--loads", default=",".join(LOADS), help="which loads, comma-separated")
    args = parser.parse_args()
    loads = {name: LOADS[name] for name in args.loads.split(",")}
    if not have_wrk():
        return 2
    work = Path(tempfile.mkdtemp(prefix="lmgate-ab-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base),
                    args.base], check=True)  # fmt: skip
    up_port = free_port()
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port)}
    upstream = start_upstream(up_port)
    best: dict[str, dict[str, float]] = {"base": {}, "new": {}}
    cpu: dict[str, dict[str, float]] = {"base": {}, "new": {}}  # seconds per request
    starts: dict[str, list[float]] = {"base": [], "new": []}
    try:
        for round_number in range(args.rounds):
            order = [("base", base), ("new", ROOT)]
            if round_number % 2:
                order.reverse()
            for name, source in order:
                starts[name].append(first_answer(source, work / f"home-{name}"))
                process, port = start(source, env, f"sqlite:///{work}/{name}.db")
                try:
                    url = f"http://127.0.0.1:{port}"
                    wrk(url + "/v1/chat/completions", BODY, 16, 1)  # warm-up
                    for load, (path, body) in loads.items():
                        before = cpu_seconds(process.pid)
                        rps = wrk(url + path, body, 16, args.seconds)["rps"]
                        used = (cpu_seconds(process.pid) - before) / (rps * args.seconds)
                        best[name][load] = max(best[name].get(load, 0.0), rps)
                        cpu[name][load] = min(cpu[name].get(load, used), used)
                finally:
                    stop(process)
    finally:
        stop(upstream)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       check=False)  # fmt: skip
    print(f"\nrequests/s at c=16, best of {args.rounds} rounds (base: {args.base})")
    print(f"{'load':<18}{'base':>10}{'new':>10}{'new/base':>10}   CPU µs: base   new  new/base")
    for load in loads:
        old, new = best["base"][load], best["new"][load]
        used = cpu["base"][load] * 1e6, cpu["new"][load] * 1e6
        print(f"{load:<18}{old:>10.0f}{new:>10.0f}{new / old:>10.3f}   "
              f"{used[0]:>11.0f}{used[1]:>6.0f}{used[1] / used[0]:>10.3f}")  # fmt: skip
    old, new = min(starts["base"]), min(starts["new"])
    print(f"{'start (s), best':<18}{old:>10.3f}{new:>10.3f}{new / old:>10.3f}")
    print(
        "  every start (s):", {name: [round(s, 3) for s in found] for name, found in starts.items()}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
