"""lmgate beside claude-code-router on the path it serves, in one run: Anthropic's
Messages API in (what Claude Code sends), an OpenAI-compatible upstream out (the
same canned bench/upstream.py), non-stream and stream, at c=1 and c=16. Each router
runs alone on CPU 0, one process, started fresh; wrk and the upstream on CPU 1. The
upstream's own OpenAI chat throughput is the reference (what a client would get
without a translating router). Rounds in A B B A order; the best requests/s of each.

    bash bench/install_peers.sh      # once: claude-code-router from npm (and the others)
    python bench/ccr.py [--rounds 2] [--seconds 4]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import arguments, free_port, have_wrk, stop, wait_listening, wait_ready
from run import BODY, STREAM_BODY, pinned, serve_bench, start_upstream, wrk

HERE = Path(__file__).resolve().parent
CCR = HERE / ".peers" / "node_modules" / "@musistudio" / "claude-code-router" / "dist" / "cli.js"
MESSAGES = json.dumps(
    {"model": "bench", "max_tokens": 100,
     "messages": [{"role": "user", "content": "Say twenty words."}], "stream": False},
    separators=(",", ":"),
)  # fmt: skip
MESSAGES_STREAM = MESSAGES.replace('"stream":false', '"stream":true')


def start_lmgate(up_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port), "BENCH_STORE_URL": "none"}
    process = serve_bench(port, env)
    wait_ready(f"http://127.0.0.1:{port}/ready")
    return process, port


def start_ccr(up_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """claude-code-router with a config of its own (in a home of its own): every request
    routed to the bench upstream, no logs."""
    port, home = free_port(), Path(tempfile.mkdtemp(prefix="lmgate-ccr-"))
    (home / ".claude-code-router").mkdir()
    (home / ".claude-code-router" / "config.json").write_text(json.dumps({
        "LOG": False, "PORT": port, "HOST": "127.0.0.1", "NON_INTERACTIVE_MODE": True,
        "Providers": [{"name": "bench", "api_key": "bench-key", "models": ["bench-model"],
                       "api_base_url": f"http://127.0.0.1:{up_port}/v1/chat/completions"}],
        "Router": {"default": "bench,bench-model"},
    }))  # fmt: skip
    process = subprocess.Popen(
        pinned(0, ["node", str(CCR), "start"]),
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    return process, port


def main() -> int:
    args = arguments(__doc__, rounds=2).parse_args()
    if not have_wrk():
        return 2
    if not CCR.exists():
        print("claude-code-router is not installed: bash bench/install_peers.sh", file=sys.stderr)
        return 2
    up_port = free_port()
    upstream = start_upstream(up_port)
    wait_listening(up_port)
    starters = {"lmgate": start_lmgate, "claude-code-router": start_ccr}
    best: dict[tuple[str, str, int], float] = {}

    def measure(name: str, url: str, bodies: dict[str, str]) -> None:
        for kind, body in bodies.items():
            for connections in (1, 16):
                found = wrk(url, body, connections, args.seconds)["rps"]
                key = (name, kind, connections)
                best[key] = max(best.get(key, 0.0), found)

    try:
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for number in range(args.rounds):
            order = ["lmgate", "claude-code-router", "claude-code-router", "lmgate"]
            measure("direct", direct, {"chat": BODY, "stream": STREAM_BODY})
            for name in order[:2] if number % 2 == 0 else order[2:]:
                process, port = starters[name](up_port)
                try:
                    url = f"http://127.0.0.1:{port}/v1/messages"
                    wrk(url, MESSAGES, 4, 1)  # warm-up
                    measure(name, url, {"chat": MESSAGES, "stream": MESSAGES_STREAM})
                finally:
                    stop(process)
    finally:
        stop(upstream)
    print(f"\nAnthropic Messages in, OpenAI-compatible out: requests/s, best of {args.rounds}")
    print(
        f"{'':<20}{'chat c=1':>10}{'c=16':>9}{'ratio':>8}{'stream c=1':>12}{'c=16':>9}{'ratio':>8}"
    )
    for name in ("direct", "lmgate", "claude-code-router"):
        row = [best[name, kind, c] for kind in ("chat", "stream") for c in (1, 16)]
        chat16, stream16 = best["direct", "chat", 16], best["direct", "stream", 16]
        print(f"{name:<20}{row[0]:>10.0f}{row[1]:>9.0f}{row[1] / chat16:>8.3f}"
              f"{row[2]:>12.0f}{row[3]:>9.0f}{row[3] / stream16:>8.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
