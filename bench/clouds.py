"""What each cloud provider adds, in one run: the same canned upstream (bench/upstream.py)
answered as an OpenAI-compatible API, as Bedrock's Converse (signed with SigV4, streams
in event-stream frames), as Gemini on Vertex and as Azure OpenAI; one gateway worker
in front (CPU 0), wrk at c=16 (CPU 1), OpenAI chat requests, stream and not, rounds
alternating the models; the best requests/s of each and its ratio to the
OpenAI-compatible upstream's.

    python bench/clouds.py [--rounds 3] [--seconds 4]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from common import arguments, free_port, have_wrk, stop, wait_ready
from run import BODY, STREAM_BODY, serve_bench, start_upstream, wrk

HERE = Path(__file__).resolve().parent
MODELS = {"OpenAI-compatible": "bench", "Bedrock": "bench-bedrock", "Vertex": "bench-vertex",
          "Azure": "bench-azure"}  # fmt: skip


def main() -> int:
    args = arguments(__doc__, rounds=3).parse_args()
    if not have_wrk():
        return 2
    up_port, port = free_port(), free_port()
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port),
           "BENCH_STORE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='lmgate-clouds-')}/u.db"}  # fmt: skip
    upstream, gateway = start_upstream(up_port), serve_bench(port, env)
    best: dict[tuple[str, str], float] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        for model in MODELS.values():  # warm-up: connections, tokens, imports
            wrk(url, BODY.replace('"bench"', f'"{model}"'), 4, 1)
        for number in range(args.rounds):
            order = list(MODELS.items())
            if number % 2:
                order.reverse()
            for name, model in order:
                for kind, body in (("chat", BODY), ("stream", STREAM_BODY)):
                    rps = wrk(url, body.replace('"bench"', f'"{model}"'), 16, args.seconds)["rps"]
                    best[name, kind] = max(best.get((name, kind), 0.0), rps)
    finally:
        stop(gateway, upstream)
    print(f"\nrequests/s at c=16 through one gateway worker, best of {args.rounds}")
    print(f"{'upstream':<20}{'chat':>8}{'ratio':>8}{'stream':>9}{'ratio':>8}")
    for name in MODELS:
        chat, stream = best[name, "chat"], best[name, "stream"]
        base_chat, base_stream = (
            best["OpenAI-compatible", "chat"],
            best["OpenAI-compatible", "stream"],
        )
        print(
            f"{name:<20}{chat:>8.0f}{chat / base_chat:>8.3f}{stream:>9.0f}{stream / base_stream:>8.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
