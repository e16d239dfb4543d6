"""Embeddings through lmgate against the same upstream directly, in one run: OpenAI's
``/v1/embeddings`` with 8 inputs and 1536-float vectors (text-embedding-3-small's size),
the float reply and the base64 one (the OpenAI SDK's default, which lmgate packs
itself); one gateway worker with the SQLite store (CPU 0), wrk on CPU 1, rounds in
A B B A order; the best requests/s of each and the gateway's ratio to direct.

    python bench/embeddings.py [--rounds 2] [--seconds 4]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import orjson
from common import arguments, free_port, have_wrk, stop, wait_ready
from run import serve_bench, start_upstream, wrk
from upstream import EMBED_INPUTS

HERE = Path(__file__).resolve().parent
TEXTS = [f"a passage of a document to index, number {n}" for n in range(EMBED_INPUTS)]


def body(model: str, encoding: str) -> str:
    return orjson.dumps({"model": model, "input": TEXTS, "encoding_format": encoding}).decode()


def main() -> int:
    args = arguments(__doc__, rounds=2).parse_args()
    if not have_wrk():
        return 2
    up_port, port = free_port(), free_port()
    store = tempfile.mkdtemp(prefix="lmgate-embed-")
    env = {**os.environ, "BENCH_UPSTREAM_PORT": str(up_port),
           "BENCH_STORE_URL": f"sqlite:///{store}/u.db"}  # fmt: skip
    upstream, gateway = start_upstream(up_port), serve_bench(port, env)
    targets = {
        "direct": (f"http://127.0.0.1:{up_port}/v1/embeddings", "bench-embed"),
        "gateway": (f"http://127.0.0.1:{port}/v1/embeddings", "bench-embed"),
    }
    best: dict[tuple[str, str, int], float] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready")
        wrk(targets["gateway"][0], body("bench-embed", "float"), 4, 1)  # warm-up
        for number in range(args.rounds):
            order = ["direct", "gateway", "gateway", "direct"]
            for name in order if number % 2 == 0 else order[::-1]:
                url, model = targets[name]
                for encoding in ("float", "base64"):
                    if name == "direct" and encoding == "base64":
                        continue  # the canned upstream answers floats only
                    for connections in (1, 16):
                        found = wrk(url, body(model, encoding), connections, args.seconds)
                        key = (name, encoding, connections)
                        best[key] = max(best.get(key, 0.0), found["rps"])
    finally:
        stop(gateway, upstream)
    print(f"\n/v1/embeddings, {EMBED_INPUTS} inputs, 1536-float vectors: requests/s, best of "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"{'':<22}{'c=1':>8}{'ratio':>8}{'c=16':>9}{'ratio':>8}")
    for label, key in (("direct", ("direct", "float")), ("gateway, float", ("gateway", "float")),
                       ("gateway, base64", ("gateway", "base64"))):  # fmt: skip
        one, many = best[(*key, 1)], best[(*key, 16)]
        base_one, base_many = best["direct", "float", 1], best["direct", "float", 16]
        print(f"{label:<22}{one:>8.0f}{one / base_one:>8.3f}{many:>9.0f}{many / base_many:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
